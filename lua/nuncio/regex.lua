-- RE2-style regular expressions for route matching, on PCRE2 through the LuaJIT FFI.
--
-- Emissary hands every route regex to Envoy's RE2 (`safe_regex`): prefix_regex paths,
-- regex_headers, host_regex and method_regex. We do not link RE2; PCRE2 ships with every
-- Debian system and is close enough once it is configured to behave like RE2 where a route
-- config can notice:
--   * UTF-8 mode (RE2 default) with PCRE2_MATCH_INVALID_UTF, so a request path that is not
--     valid UTF-8 simply fails to match instead of raising a UTF error;
--   * `$` only matches at the very end (RE2 has no "before a final newline" rule);
--   * \d \w \s \b stay ASCII (no PCRE2_UCP), as in RE2;
--   * constructs RE2 rejects (backreferences, lookaround, atomic groups, recursion,
--     conditionals, backtracking verbs, \C) are rejected here too, so a config that Envoy
--     would refuse is not silently accepted by nuncio.
-- PCRE2 backtracks where RE2 does not, so each match runs under a match limit: a
-- pathological pattern fails to match (with an error string) instead of stalling a worker.

local ffi = require("ffi")

local ffi_new = ffi.new
local ffi_gc = ffi.gc
local ffi_string = ffi.string
local ffi_typeof = ffi.typeof
local byte = string.byte
local sub = string.sub
local find = string.find
local format = string.format
local tonumber = tonumber
local type = type
local pcall = pcall
local setmetatable = setmetatable
local tostring = tostring
local error = error

-- Declared once per Lua state: a second ffi.cdef of the same struct raises an error, which
-- would bite a spec that drops package.loaded to reload this module.
if not pcall(ffi_typeof, "struct pcre2_real_code_8") then
  ffi.cdef[[
struct pcre2_real_code_8;
struct pcre2_real_match_data_8;
struct pcre2_real_match_context_8;
struct pcre2_real_compile_context_8;
struct pcre2_real_general_context_8;

struct pcre2_real_code_8 *pcre2_compile_8(const char *pattern, size_t length, uint32_t options,
    int *errorcode, size_t *erroroffset, struct pcre2_real_compile_context_8 *ccontext);
void pcre2_code_free_8(struct pcre2_real_code_8 *code);
int pcre2_jit_compile_8(struct pcre2_real_code_8 *code, uint32_t options);
int pcre2_pattern_info_8(const struct pcre2_real_code_8 *code, uint32_t what, void *where);
int pcre2_get_error_message_8(int errorcode, unsigned char *buffer, size_t bufflen);

struct pcre2_real_match_data_8 *pcre2_match_data_create_8(uint32_t ovecsize,
    struct pcre2_real_general_context_8 *gcontext);
void pcre2_match_data_free_8(struct pcre2_real_match_data_8 *match_data);
size_t *pcre2_get_ovector_pointer_8(struct pcre2_real_match_data_8 *match_data);

struct pcre2_real_match_context_8 *pcre2_match_context_create_8(
    struct pcre2_real_general_context_8 *gcontext);
void pcre2_match_context_free_8(struct pcre2_real_match_context_8 *mcontext);
int pcre2_set_match_limit_8(struct pcre2_real_match_context_8 *mcontext, uint32_t value);

int pcre2_match_8(const struct pcre2_real_code_8 *code, const char *subject, size_t length,
    size_t startoffset, uint32_t options, struct pcre2_real_match_data_8 *match_data,
    struct pcre2_real_match_context_8 *mcontext);
]]
end

-- The development symlink (libpcre2-8.so) is only installed with libpcre2-dev; the soname
-- is what every Debian system has.
local lib
do
  local ok, l = pcall(ffi.load, "libpcre2-8.so.0")
  if not ok then
    ok, l = pcall(ffi.load, "pcre2-8")
  end
  if not ok then
    error("nuncio.regex: cannot load PCRE2 (libpcre2-8.so.0): " .. tostring(l))
  end
  lib = l
end

local C_compile = lib.pcre2_compile_8
local C_match = lib.pcre2_match_8
local C_code_free = lib.pcre2_code_free_8
local C_md_free = lib.pcre2_match_data_free_8

-- Values from pcre2.h (10.42, Debian 12). Kept as plain sums of distinct bits: bit.bor
-- would return a negative int32 for PCRE2_ANCHORED.
local PCRE2_CASELESS          = 0x00000008
local PCRE2_DOLLAR_ENDONLY    = 0x00000010
local PCRE2_UTF               = 0x00080000
local PCRE2_NEVER_BACKSLASH_C = 0x00100000
local PCRE2_MATCH_INVALID_UTF = 0x04000000
local PCRE2_ENDANCHORED       = 0x20000000
local PCRE2_ANCHORED          = 0x80000000
local PCRE2_JIT_COMPLETE      = 0x00000001
local PCRE2_INFO_BACKREFMAX   = 2
local PCRE2_ERROR_NOMATCH     = -1

local BASE_OPTIONS = PCRE2_UTF + PCRE2_MATCH_INVALID_UTF + PCRE2_DOLLAR_ENDONLY
  + PCRE2_NEVER_BACKSLASH_C
-- Anchoring is compiled in rather than passed to pcre2_match: match-time ANCHORED and
-- ENDANCHORED make PCRE2 bypass the JIT.
local FULL_OPTIONS = BASE_OPTIONS + PCRE2_ANCHORED + PCRE2_ENDANCHORED

local _M = {
  -- Emissary caps RE2 *program size* (Module regex_max_size, default 200). PCRE2 has no
  -- comparable number, so we cap the pattern text instead; generous on purpose, the point
  -- is only to refuse absurd input.
  MAX_PATTERN = 4096,
  -- Backtracking budget per match (PCRE2 default is 10,000,000, seconds of CPU on a bad
  -- pattern). A route regex on a real path needs a few hundred.
  MATCH_LIMIT = 200000,
}

local size_t_1 = ffi_typeof("size_t[1]")
local int_1 = ffi_typeof("int[1]")
local uint32_1 = ffi_typeof("uint32_t[1]")
local errbuf = ffi_new("unsigned char[256]")

-- One match context for every regex: it only carries the match limit.
local match_context = lib.pcre2_match_context_create_8(nil)
if match_context == nil then
  error("nuncio.regex: pcre2_match_context_create failed (out of memory)")
end
ffi_gc(match_context, lib.pcre2_match_context_free_8)
lib.pcre2_set_match_limit_8(match_context, _M.MATCH_LIMIT)

local function pcre2_message(code)
  local n = lib.pcre2_get_error_message_8(code, errbuf, 256)
  if n < 0 then
    return "PCRE2 error " .. code
  end
  return ffi_string(errbuf, n)
end

-- PCRE2's own text already says which limit was hit ("match limit exceeded", ...).
local function match_error(rc)
  return "regex: " .. pcre2_message(rc)
end

-- Scan for syntax PCRE2 accepts but RE2 does not. Returns nil or a description.
-- Backreferences are found afterwards from the compiled code (PCRE2_INFO_BACKREFMAX),
-- which covers every spelling (\1, \g{1}, \k<n>, (?P=n)).
local function re2_unsupported(p)
  local i, n = 1, #p
  while i <= n do
    local c = byte(p, i)
    if c == 92 then -- '\'
      local e = byte(p, i + 1)
      if e == 81 then -- \Q...\E is literal text (RE2 has it too)
        local stop = find(p, "\\E", i + 2, true)
        if not stop then return nil end
        i = stop + 2
      elseif e == 75 then -- \K
        return "\\K (match reset)"
      else
        i = i + 2
      end
    elseif c == 91 then -- '[': a class; '(' inside is literal
      i = i + 1
      if byte(p, i) == 94 then i = i + 1 end  -- '^'
      if byte(p, i) == 93 then i = i + 1 end  -- leading ']' is literal
      while i <= n do
        local d = byte(p, i)
        if d == 92 then
          i = i + 2
        elseif d == 91 and byte(p, i + 1) == 58 then -- '[:' POSIX class
          local stop = find(p, ":]", i + 2, true)
          i = stop and stop + 2 or i + 1
        elseif d == 93 then
          break
        else
          i = i + 1
        end
      end
      i = i + 1
    elseif c == 40 then -- '('
      local d = byte(p, i + 1)
      if d == 42 then -- (*VERB)
        return "backtracking control verb '(*'"
      elseif d == 63 then -- '(?'
        local e, f = byte(p, i + 2), byte(p, i + 3)
        if e == 61 or e == 33 then -- (?= (?!
          return "lookahead '(?" .. sub(p, i + 2, i + 2) .. "'"
        elseif e == 60 and (f == 61 or f == 33) then -- (?<= (?<!
          return "lookbehind '(?<" .. sub(p, i + 3, i + 3) .. "'"
        elseif e == 62 then
          return "atomic group '(?>'"
        elseif e == 124 then
          return "branch reset group '(?|'"
        elseif e == 40 then
          return "conditional group '(?('"
        elseif e == 67 then
          return "callout '(?C'"
        elseif e == 82 or e == 38 or e == 43 or (e and e >= 48 and e <= 57)
            or (e == 45 and f and f >= 48 and f <= 57)
            or (e == 80 and f == 62) then -- (?R (?& (?+1 (?1 (?-1 (?P>
          return "recursion '(?" .. sub(p, i + 2, i + 2) .. "'"
        end
      end
      i = i + 1
    else
      i = i + 1
    end
  end
  return nil
end

local function compile_code(pattern, options)
  local errcode, erroff = int_1(), size_t_1()
  local code = C_compile(pattern, #pattern, options, errcode, erroff, nil)
  if code == nil then
    return nil, format("invalid regex %q: %s at offset %d", pattern,
                       pcre2_message(errcode[0]), tonumber(erroff[0]))
  end
  ffi_gc(code, C_code_free)
  -- The JIT is an optimisation only: it can be missing (some architectures, SELinux
  -- execmem policies) and the interpreter gives the same answers.
  lib.pcre2_jit_compile_8(code, PCRE2_JIT_COMPLETE)
  return code
end

local Regex = {}
Regex.__index = Regex

function Regex:__tostring()
  return "regex(" .. self.pattern .. ")"
end

-- Does the whole of s (or its first len bytes) match? len lets the router test the path
-- without its query string without creating the substring.
-- Returns true, or false [, err] (err only when PCRE2 gave up, e.g. the match limit).
function Regex:full_match(s, len)
  if len == nil or len > #s then
    len = #s
  end
  local rc = C_match(self.code, s, len, 0, 0, self.md, match_context)
  if rc >= 0 then
    -- rc == 0 only means the one-pair ovector was too small for the captures: still a match.
    return true
  end
  if rc == PCRE2_ERROR_NOMATCH then
    return false
  end
  return false, match_error(rc)
end

-- Unanchored search, like string.find: returns the 1-based start and end of the first
-- match at or after init (default 1), or nil [, err].
function Regex:find(s, init)
  local code = self.search_code
  if code == nil then
    -- Compiled lazily: routes only ever need full matches.
    local err
    code, err = compile_code(self.pattern, self.search_options)
    if not code then
      return nil, err
    end
    self.search_code = code
  end
  init = init or 1
  if init < 1 then init = 1 end
  if init > #s + 1 then return nil end
  local rc = C_match(code, s, #s, init - 1, 0, self.md, match_context)
  if rc >= 0 then
    local ov = self.ov
    return tonumber(ov[0]) + 1, tonumber(ov[1])
  end
  if rc == PCRE2_ERROR_NOMATCH then
    return nil
  end
  return nil, match_error(rc)
end

-- regex.compile(pattern [, opts]) -> regex | nil, err
-- opts.caseless = true compiles a case-insensitive regex (RE2's (?i)).
function _M.compile(pattern, opts)
  if type(pattern) ~= "string" then
    error("regex.compile: pattern must be a string", 2)
  end
  if #pattern > _M.MAX_PATTERN then
    return nil, format("invalid regex: pattern is %d bytes, the limit is %d",
                       #pattern, _M.MAX_PATTERN)
  end
  local extra = (opts and opts.caseless) and PCRE2_CASELESS or 0

  local code, err = compile_code(pattern, FULL_OPTIONS + extra)
  if not code then
    return nil, err
  end

  local what = re2_unsupported(pattern)
  if not what then
    local refs = uint32_1()
    if lib.pcre2_pattern_info_8(code, PCRE2_INFO_BACKREFMAX, refs) == 0 and refs[0] > 0 then
      what = "backreference"
    end
  end
  if what then
    return nil, format("invalid regex %q: %s is not supported (RE2 syntax)", pattern, what)
  end

  -- One pair is all we read; a larger ovector would only cost memory. The match data is
  -- reused by every match on this regex (a Lua state runs one match at a time).
  local md = lib.pcre2_match_data_create_8(1, nil)
  if md == nil then
    return nil, "regex: out of memory"
  end
  ffi_gc(md, C_md_free)

  return setmetatable({
    pattern = pattern,
    code = code,
    md = md,
    ov = lib.pcre2_get_ovector_pointer_8(md),
    search_code = nil,
    search_options = BASE_OPTIONS + extra,
  }, Regex)
end

return _M
