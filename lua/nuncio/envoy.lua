-- Envoy's Lua filter API (envoy.filters.http.lua) over a nuncio stream, so
-- the envoy_on_request / envoy_on_response scripts Ambassador users paste into
-- Module `lua_scripts` run unchanged. Built only on the stream object
-- (lua/nuncio/stream.lua): no C of its own.
--
-- Envoy's rules, copied (shared/reference/lua-api-study.md §1):
--   * each call of envoy_on_request / envoy_on_response is one coroutine; the
--     handle and every object it hands out work only while that coroutine
--     runs: used later (a handle saved in a global, say) they raise
--     "object used outside of proper scope". Objects obtained before a wait
--     (body(), bodyChunks(), trailers()) die at the wait; ask again after it.
--   * header maps: get() joins repeated values with ","; getAtIndex() is
--     0-based; add/replace/remove lower-case the name; replace() adds when
--     missing. Request/response headers freeze once the body has streamed
--     past the script ("header map can no longer be modified"); a map being
--     iterated cannot change ("header map cannot be modified while
--     iterating"), and a loop left with `break` keeps it so, as in Envoy.
--   * on the request path every header change makes the router select again
--     (the stream clears its route cache on any request header change).
--   * respond(headers, body): request path only, before the headers were
--     continued, `:status` in 200-599; the script never runs again after it.
--   * a bare coroutine.yield() in a script: "script performed an unexpected yield".
--
-- `pairs(headers)`: this LuaJIT (OpenResty's 2.1, built without
-- LUAJIT_ENABLE_LUA52COMPAT) ignores __pairs, so the script environment
-- (filters/envoy_scripts) gets a `pairs` that honours __pairs and otherwise
-- is the standard one: `for k, v in pairs(handle:headers())` works as in
-- Envoy. Code outside a script environment can call `M.pairs(obj)`.
--
-- Waiting: body(), bodyChunks() and (request path) trailers() wait for the
-- whole body with stream:read_body(); the driver below calls it outside the
-- script's coroutine, so a wait never mixes with the script's own yields.
-- bodyChunks() therefore yields the body as one chunk. On the response path
-- trailers() without body() suspends the script until the upstream trailers
-- arrive (the filter's on_response_trailers), or the exchange ends without
-- any (on_log: nil), as Envoy does.
local ffi = require("ffi")

local setmetatable, getmetatable, type, tostring, tonumber, error, pcall =
  setmetatable, getmetatable, type, tostring, tonumber, error, pcall
local next, rawget, ipairs, pairs = next, rawget, ipairs, pairs
local string_lower, string_byte, string_format = string.lower, string.byte, string.format
local table_concat = table.concat
local math_floor = math.floor
local co_create, co_yield, co_resume = coroutine.create, coroutine.yield, coroutine.resume
local os_time = os.time
local traceback = debug.traceback

local M = {}

-- What a script's coroutine yields to the driver (never visible to scripts).
local WAIT_BODY, WAIT_TRAILERS, RESPONDED = {}, {}, {}

M.TIMESTAMP_RESOLUTION = { MILLISECOND = 0, MICROSECOND = 1 } -- Envoy's enum values

local SCOPE = "object used outside of proper scope"
local FROZEN = "header map can no longer be modified"
local ITERATING = "header map cannot be modified while iterating"
local SECOND_ITER = "cannot create a second iterator before completing the first"

---------------------------------------------------------------------------
-- helpers

local function typename(v)
  if v == nil then return "no value" end
  return type(v)
end

-- Errors carry the position of the script line that made the call, as
-- luaL_error does in Envoy: `lvl` counts from the helper raising (default 3:
-- helper <- API method <- script).

-- luaL_checkstring: strings, and numbers converted.
local function checkstring(v, n, fname, lvl)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return tostring(v) end
  error(string_format("bad argument #%d to '%s' (string expected, got %s)", n, fname, typename(v)), lvl or 3)
end

local function checknumber(v, n, fname, lvl)
  local x = tonumber(v)
  if x == nil then
    error(string_format("bad argument #%d to '%s' (number expected, got %s)", n, fname, typename(v)), lvl or 3)
  end
  return x
end

--- pairs() that honours __pairs (what scripts get as `pairs`).
function M.pairs(t)
  local mt = getmetatable(t)
  local p = type(mt) == "table" and rawget(mt, "__pairs")
  if p then
    local f, s, c = p(t)
    return f, s, c
  end
  return next, t, nil
end

-- base64, absl::Base64Escape's alphabet and padding.
local B64 = {}
do
  local abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  for i = 1, 64 do B64[i - 1] = abc:sub(i, i) end
end

function M.base64(s)
  local out, n, len = {}, 0, #s
  local i = 1
  while i + 2 <= len do
    local a, b, c = string_byte(s, i, i + 2)
    local v = a * 65536 + b * 256 + c
    n = n + 1
    out[n] = B64[math_floor(v / 262144)] .. B64[math_floor(v / 4096) % 64]
      .. B64[math_floor(v / 64) % 64] .. B64[v % 64]
    i = i + 3
  end
  local rest = len - i + 1
  if rest == 1 then
    local v = string_byte(s, i) * 65536
    n = n + 1
    out[n] = B64[math_floor(v / 262144)] .. B64[math_floor(v / 4096) % 64] .. "=="
  elseif rest == 2 then
    local a, b = string_byte(s, i, i + 1)
    local v = a * 65536 + b * 256
    n = n + 1
    out[n] = B64[math_floor(v / 262144)] .. B64[math_floor(v / 4096) % 64] .. B64[math_floor(v / 64) % 64] .. "="
  end
  return table_concat(out)
end

-- Wall clock in microseconds (clock_gettime through the FFI; os.time() if
-- this process declared clock_gettime differently).
local now_us
do
  local ok = pcall(ffi.cdef, [[
    typedef struct { long tv_sec; long tv_nsec; } nuncio_envoy_timespec;
    int clock_gettime(int clk_id, nuncio_envoy_timespec *tp);
  ]])
  local ts = ok and ffi.new("nuncio_envoy_timespec")
  local C = ffi.C
  if ts and pcall(function() return C.clock_gettime(0, ts) end) then
    now_us = function()
      C.clock_gettime(0, ts) -- CLOCK_REALTIME
      return tonumber(ts.tv_sec) * 1000000 + math_floor(tonumber(ts.tv_nsec) / 1000)
    end
  else
    now_us = function() return os_time() * 1000000 end
  end
end
M.now_us = now_us

---------------------------------------------------------------------------
-- the state of one script call (Envoy's StreamHandleWrapper)

-- run = { s, dir = "request"|"response", live, gen, headers_continued,
--         body (string once read), body_streamed, chunks_done, co, resume,
--         cache = { per-generation wrappers } }

local function alive(obj, lvl)
  local run = obj._run
  if not run.live or obj._gen ~= run.gen then error(SCOPE, lvl or 3) end
  return run
end

local function handle_alive(h, lvl)
  local run = h._run
  if not run.live then error(SCOPE, lvl or 3) end
  return run
end

-- Objects are cached per generation: asking twice gives the same object
-- (Envoy hands back the same wrapper), a wait starts a new generation.
-- The cache table is made on first use: most calls ask for headers() only.
local function cached(run, key, make)
  local c = run.cache
  if not c then
    c = {}
    run.cache = c
  end
  local o = c[key]
  if not o then
    o = make()
    c[key] = o
  end
  return o
end

-- Header names in lower case, remembered: a script asks for the same few
-- names on every call, and string.lower makes a new string each time only
-- for the string table to find it is there already. Bounded: cleared when
-- it holds LOWER_MAX names.
local lowered, n_lowered, LOWER_MAX = {}, 0, 512
local function lower(name)
  local l = lowered[name]
  if l then return l end
  l = string_lower(name)
  if n_lowered >= LOWER_MAX then
    lowered, n_lowered = {}, 0
  end
  lowered[name] = l
  n_lowered = n_lowered + 1
  return l
end

---------------------------------------------------------------------------
-- header maps

local HeaderMap = {}
HeaderMap.__index = HeaderMap
local ReadOnlyHeaderMap = {}
ReadOnlyHeaderMap.__index = ReadOnlyHeaderMap

-- kind: "headers" (freezes once continued) or "trailers" (always modifiable,
-- as far as the core allows).
local function new_map(run, map, kind, readonly)
  return setmetatable({ _run = run, _gen = run.gen, _map = map, _kind = kind },
    readonly and ReadOnlyHeaderMap or HeaderMap)
end

local function get_joined(self, name)
  alive(self)
  name = lower(checkstring(name, 1, "get"))
  return self._map:get_joined(name)
end

local function get_at(self, name, index)
  alive(self)
  name = lower(checkstring(name, 1, "getAtIndex"))
  index = checknumber(index, 2, "getAtIndex")
  index = index >= 0 and math_floor(index) or -1
  if index < 0 then return nil end
  local v = self._map:get_all(name)[index + 1]
  if v == nil or v == "" then return nil end
  return v
end

local function num_values(self, name)
  alive(self)
  name = lower(checkstring(name, 1, "getNumValues"))
  return self._map:count(name)
end

-- Called through pairs(): __pairs <- pairs <- script.
local function map_pairs(self)
  alive(self, 4)
  if self._iter then error(SECOND_ITER, 3) end
  local names, values, n = {}, {}, 0
  for k, v in self._map:pairs() do
    n = n + 1
    names[n], values[n] = k, v
  end
  self._iter = true
  local i = 0
  return function()
    alive(self)
    i = i + 1
    if i > n then
      self._iter = nil
      return nil
    end
    return names[i], values[i]
  end
end

HeaderMap.get = get_joined
HeaderMap.getAtIndex = get_at
HeaderMap.getNumValues = num_values
HeaderMap.__pairs = map_pairs

local function check_modifiable(self)
  local run = alive(self, 4)
  if self._iter then error(ITERATING, 3) end
  if self._kind == "headers" and run.headers_continued then error(FROZEN, 3) end
end

-- The core refuses a change to a map already sent: Envoy's words for it.
local function write(self, op, name, value)
  local map = self._map
  local ok, err = pcall(map[op], map, name, value)
  if not ok then
    if tostring(err):find("can no longer change", 1, true) then error(FROZEN, 3) end
    error(err, 3)
  end
end

function HeaderMap:add(name, value)
  check_modifiable(self)
  name = lower(checkstring(name, 1, "add"))
  value = checkstring(value, 2, "add")
  write(self, "add", name, value)
end

function HeaderMap:replace(name, value)
  check_modifiable(self)
  name = lower(checkstring(name, 1, "replace"))
  value = checkstring(value, 2, "replace")
  write(self, "set", name, value)
end

function HeaderMap:remove(name)
  check_modifiable(self)
  name = lower(checkstring(name, 1, "remove"))
  write(self, "remove", name)
end

--- HTTP/1 reason phrase: nuncio's clients speak HTTP/2, so nothing to set
--- (Envoy ignores it for HTTP/2 too).
function HeaderMap:setHttp1ReasonPhrase(phrase)
  check_modifiable(self)
  checkstring(phrase, 1, "setHttp1ReasonPhrase")
end

-- downstreamRequestHeaders(): get/getAtIndex/getNumValues/pairs only; the
-- mutating names are absent, so calling one fails as a call to nil (as in Envoy).
ReadOnlyHeaderMap.get = get_joined
ReadOnlyHeaderMap.getAtIndex = get_at
ReadOnlyHeaderMap.getNumValues = num_values
ReadOnlyHeaderMap.__pairs = map_pairs

---------------------------------------------------------------------------
-- body buffer

local Buffer = {}
Buffer.__index = Buffer

function Buffer:length()
  alive(self)
  return #self._run.body
end

function Buffer:getBytes(index, length)
  local run = alive(self)
  index = math_floor(checknumber(index, 1, "getBytes"))
  length = math_floor(checknumber(length, 2, "getBytes"))
  local body = run.body
  if index < 0 or length < 0 or index + length > #body then
    error("index/length must be >= 0 and (index + length) must be <= buffer size", 2)
  end
  return body:sub(index + 1, index + length)
end

--- Replaces the body and sets content-length, when the stream can replace a
--- body (stream:set_body); otherwise raises "not supported".
function Buffer:setBytes(str)
  local run = alive(self)
  str = checkstring(str, 1, "setBytes")
  local s = run.s
  if type(s.set_body) ~= "function" then
    error("setBytes() is not supported by this nuncio: the stream cannot replace a body", 2)
  end
  s:set_body(str)
  run.body = str
  local map = run.dir == "request" and s.request or s.response
  pcall(map.set, map, "content-length", #str)
  return #str
end

---------------------------------------------------------------------------
-- metadata (route metadata: nuncio routes carry none, so always empty)

local Metadata = {}
Metadata.__index = Metadata

function Metadata:get(key)
  alive(self)
  checkstring(key, 1, "get")
  return nil
end

function Metadata:__pairs()
  alive(self, 4)
  return function() return nil end
end

local function new_metadata(run)
  return setmetatable({ _run = run, _gen = run.gen }, Metadata)
end

---------------------------------------------------------------------------
-- dynamic metadata: stream.ctx.dynamic_metadata = { [filter name] = { key = value } },
-- shared with native filters and kept from the request to the response path.

local DynamicMetadata = {}
DynamicMetadata.__index = DynamicMetadata

-- Raises without a position: set() re-raises at the script's line.
local function copy_value(v, depth)
  local t = type(v)
  if t == "table" then
    if depth > 32 then error("dynamicMetadata value nested too deep", 0) end
    local out = {}
    for k, x in next, v do
      local kt = type(k)
      if kt ~= "string" and kt ~= "number" then
        error("unexpected type '" .. kt .. "' in dynamicMetadata", 0)
      end
      out[k] = copy_value(x, depth + 1)
    end
    return out
  elseif t == "string" or t == "number" or t == "boolean" or t == "nil" then
    return v
  end
  error("unexpected type '" .. t .. "' in dynamicMetadata", 0)
end

local function dm_store(run)
  local ctx = run.s.ctx
  local dm = ctx.dynamic_metadata
  if type(dm) ~= "table" then
    dm = {}
    ctx.dynamic_metadata = dm
  end
  return dm
end

function DynamicMetadata:get(filter_name)
  local run = alive(self)
  filter_name = checkstring(filter_name, 1, "get")
  local ns = dm_store(run)[filter_name]
  if ns == nil then return nil end
  return copy_value(ns, 0)
end

function DynamicMetadata:set(filter_name, key, value)
  local run = alive(self)
  if self._iter then error("dynamic metadata map cannot be modified while iterating", 2) end
  filter_name = checkstring(filter_name, 1, "set")
  key = checkstring(key, 2, "set")
  local dm = dm_store(run)
  local ns = dm[filter_name]
  if type(ns) ~= "table" then
    ns = {}
    dm[filter_name] = ns
  end
  local ok, v = pcall(copy_value, value, 0)
  if not ok then error(v, 2) end
  ns[key] = v
end

function DynamicMetadata:__pairs()
  local run = alive(self, 4)
  if self._iter then error(SECOND_ITER, 3) end
  local dm = dm_store(run)
  local names, n = {}, 0
  for k in next, dm do
    n = n + 1
    names[n] = k
  end
  self._iter = true
  local i = 0
  return function()
    alive(self)
    i = i + 1
    if i > n then
      self._iter = nil
      return nil
    end
    local name = names[i]
    return name, copy_value(dm[name] or {}, 0)
  end
end

---------------------------------------------------------------------------
-- connection and TLS

local Ssl = {}
Ssl.__index = Ssl

-- The core hands Lua no TLS details yet (certificates, SNI, cipher), only
-- whether the connection is TLS: every SSL query says so instead of guessing.
for _, m in ipairs({
  "peerCertificatePresented", "peerCertificateValidated", "uriSanLocalCertificate",
  "sha256PeerCertificateDigest", "serialNumberPeerCertificate", "issuerPeerCertificate",
  "subjectPeerCertificate", "parsedSubjectPeerCertificate", "uriSanPeerCertificate",
  "subjectLocalCertificate", "urlEncodedPemEncodedPeerCertificate",
  "urlEncodedPemEncodedPeerCertificateChain", "dnsSansPeerCertificate", "dnsSansLocalCertificate",
  "oidsPeerCertificate", "oidsLocalCertificate", "validFromPeerCertificate",
  "expirationPeerCertificate", "sessionId", "ciphersuiteId", "ciphersuiteString", "tlsVersion",
}) do
  Ssl[m] = function(self)
    alive(self)
    error(m .. "() is not supported by nuncio yet: TLS details do not reach Lua", 2)
  end
end

local function ssl_of(run)
  if not run.s:info().secure then return nil end
  return cached(run, "ssl", function() return setmetatable({ _run = run, _gen = run.gen }, Ssl) end)
end

local Connection = {}
Connection.__index = Connection

function Connection:ssl()
  local run = alive(self)
  return ssl_of(run)
end

---------------------------------------------------------------------------
-- stream info

local StreamInfo = {}
StreamInfo.__index = StreamInfo

local function not_supported(obj, name)
  alive(obj, 4)
  error(name .. "() is not supported by nuncio", 3)
end

function StreamInfo:protocol()
  local run = alive(self)
  return run.s:protocol()
end

function StreamInfo:dynamicMetadata()
  local run = alive(self)
  return cached(run, "dynmeta", function() return setmetatable({ _run = run, _gen = run.gen }, DynamicMetadata) end)
end

-- The local address: the core reports the port the connection came in on;
-- the IP is the matching listener's bind address (0.0.0.0 for a wildcard
-- listener: which interface accepted it does not reach Lua).
local function local_address(run)
  local info = run.s:info()
  local port = info.local_port or 0
  local addr = "0.0.0.0"
  local chain = rawget(run.s, "_chain")
  local model = type(chain) == "table" and chain.model
  if type(model) == "table" and type(model.listeners) == "table" then
    for _, l in ipairs(model.listeners) do
      if l.port == port and type(l.address) == "string" then
        addr = l.address
        break
      end
    end
  end
  if addr:find(":", 1, true) and addr:sub(1, 1) ~= "[" then addr = "[" .. addr .. "]" end
  return addr .. ":" .. tostring(port)
end

function StreamInfo:downstreamLocalAddress() return local_address(alive(self)) end
function StreamInfo:downstreamDirectLocalAddress() return local_address(alive(self)) end

--- The peer as "ip:port" ("[ip6]:port"). With use_remote_address and no
--- trusted hops (Ambassador's defaults) the remote address is the peer too.
function StreamInfo:downstreamDirectRemoteAddress() return alive(self).s:info().peer end
function StreamInfo:downstreamRemoteAddress() return alive(self).s:info().peer end

--- SNI does not reach Lua yet: "" (what Envoy returns without SNI).
function StreamInfo:requestedServerName()
  alive(self)
  return ""
end

function StreamInfo:downstreamSslConnection() return ssl_of(alive(self)) end

function StreamInfo:routeName()
  local run = alive(self)
  local ok, r = pcall(run.s.route, run.s)
  return ok and r and r.name or ""
end

function StreamInfo:virtualClusterName()
  alive(self)
  return ""
end

function StreamInfo:dynamicTypedMetadata() not_supported(self, "dynamicTypedMetadata") end
function StreamInfo:filterState() not_supported(self, "filterState") end
function StreamInfo:drainConnectionUponCompletion() not_supported(self, "drainConnectionUponCompletion") end

---------------------------------------------------------------------------
-- the handle

local Handle = {}
Handle.__index = Handle
local ResponseHandle = setmetatable({}, { __index = Handle })
ResponseHandle.__index = ResponseHandle

-- No closure for cached(): a script asks for headers() on every call, often twice.
function Handle:headers()
  local run = handle_alive(self)
  local o = run.hmap
  if o then return o end
  local map = run.dir == "request" and run.s.request or run.s.response
  o = run.spare
  if o then
    -- A reused run's map object, at most once per call: after a wait the
    -- call gets a new one, as the one before the wait must stay dead.
    run.spare = false
    o._gen, o._map, o._iter = run.gen, map, nil
  else
    o = new_map(run, map, "headers")
  end
  run.hmap = o
  return o
end

--- The request headers, read-only, from the response path (Envoy 1.33+).
function ResponseHandle:downstreamRequestHeaders()
  local run = handle_alive(self)
  return cached(run, "reqheaders", function() return new_map(run, run.s.request, "headers", true) end)
end

local function buffer_of(run)
  return cached(run, "body", function() return setmetatable({ _run = run, _gen = run.gen }, Buffer) end)
end

-- A wait (or the end of a call) starts a new generation: objects handed out
-- before it die.
local function new_generation(run)
  run.gen = run.gen + 1
  run.cache = false
  run.hmap = false
end

-- stream:read_body() for a run: it may wait (yielding the phase's own
-- coroutine) or, over the buffer limit, end the exchange with 413 and not
-- return, as Envoy's body() does. An empty body means the request ended with
-- its headers: Envoy does not wait then, so the script's objects stay valid.
local function read_body(run)
  local s = run.s
  local body, err
  if type(s.read_body) ~= "function" then
    err = "body access is not supported by this nuncio (the stream has no read_body)"
  else
    local rok, b, e = pcall(s.read_body, s)
    if rok then body, err = b, e else err = b end
  end
  if body ~= "" then new_generation(run) end
  return body, err
end

-- Waits for the whole body: a script in its own coroutine asks the driver
-- (settle) to read it; a direct call (M.call) reads it here.
local function wait_body(run)
  local body, err
  if run.direct then
    body, err = read_body(run)
  else
    body, err = co_yield(WAIT_BODY)
  end
  if body == nil then
    error("body: " .. tostring(err or "the body could not be read"), 0)
  end
  run.body = body
  return body
end

function Handle:body(always_wrap_body)
  local run = handle_alive(self)
  if always_wrap_body ~= nil and type(always_wrap_body) ~= "boolean" then
    error(string_format("bad argument #1 to 'body' (boolean expected, got %s)", type(always_wrap_body)), 2)
  end
  if run.body_streamed then error("cannot call body() after body has been streamed", 2) end
  if run.body == nil then wait_body(run) end
  if run.body == "" and not always_wrap_body then return nil end
  return buffer_of(run)
end

function Handle:bodyChunks()
  local run = handle_alive(self)
  if run.body_streamed or run.body ~= nil then
    error("cannot call bodyChunks after body processing has begun", 2)
  end
  return function()
    handle_alive(self)
    if run.chunks_done then return nil end
    run.chunks_done = true
    local body = run.body or wait_body(run)
    if body == "" then return nil end -- ended with the headers: nothing streamed
    -- The body went past the script: the headers are continued (frozen).
    run.body_streamed = true
    run.headers_continued = true
    return buffer_of(run)
  end
end

function Handle:trailers()
  local run = handle_alive(self)
  local s = run.s
  local map = run.dir == "request" and s.request_trailers or s.trailers
  if run.body == nil then
    if run.dir == "request" then
      if wait_body(run) ~= "" then
        run.body_streamed = true
        run.headers_continued = true
      end
    else
      -- Suspends until on_response_trailers (true) or the end of the exchange (false).
      run.body_streamed = true
      run.headers_continued = true
      if not co_yield(WAIT_TRAILERS) then return nil end
    end
  end
  if map:count() == 0 then return nil end
  return cached(run, "trailers", function() return new_map(run, map, "trailers") end)
end

function Handle:metadata()
  local run = handle_alive(self)
  return cached(run, "metadata", function() return new_metadata(run) end)
end

--- LuaPerRoute filter_context: Ambassador has no per-route Lua config, so empty.
function Handle:filterContext()
  local run = handle_alive(self)
  return cached(run, "filtercontext", function() return new_metadata(run) end)
end

local HasMetadata = {}
HasMetadata.__index = HasMetadata
function HasMetadata:metadata()
  local run = alive(self)
  return cached(run, self._key .. ".metadata", function() return new_metadata(run) end)
end

function Handle:virtualHost()
  local run = handle_alive(self)
  return cached(run, "vhost", function()
    return setmetatable({ _run = run, _gen = run.gen, _key = "vhost" }, HasMetadata)
  end)
end

function Handle:route()
  local run = handle_alive(self)
  return cached(run, "route", function()
    return setmetatable({ _run = run, _gen = run.gen, _key = "route" }, HasMetadata)
  end)
end

function Handle:streamInfo()
  local run = handle_alive(self)
  return cached(run, "streaminfo", function() return setmetatable({ _run = run, _gen = run.gen }, StreamInfo) end)
end

function Handle:connection()
  local run = handle_alive(self)
  return cached(run, "connection", function() return setmetatable({ _run = run, _gen = run.gen }, Connection) end)
end

-- Builds { {name, value}, ... } from Envoy's headers table (values: string
-- or array of strings).
local function headers_from_table(t)
  local list, n = {}, 0
  for k, v in next, t do
    local key = string_lower(checkstring(k, 1, "respond", 4))
    if type(v) == "table" then
      for _, one in ipairs(v) do
        n = n + 1
        list[n] = { key, checkstring(one, 1, "respond", 4) }
      end
    else
      n = n + 1
      list[n] = { key, checkstring(v, 1, "respond", 4) }
    end
  end
  return list
end

function Handle:respond(headers, body)
  local run = handle_alive(self)
  if run.headers_continued then error("respond() cannot be called if headers have been continued", 2) end
  if type(headers) ~= "table" then
    error(string_format("bad argument #1 to 'respond' (table expected, got %s)", typename(headers)), 2)
  end
  if body ~= nil then body = checkstring(body, 2, "respond") end
  local list = headers_from_table(headers)
  local status
  for _, kv in ipairs(list) do
    if kv[1] == ":status" then status = kv[2] break end
  end
  status = status and status:match("^%d+$") and tonumber(status)
  if not status or status < 200 or status >= 600 then error(":status must be between 200-599", 2) end
  if run.dir ~= "request" then error("respond not currently supported in the response path", 2) end
  local s = run.s
  s:respond(status, body or "", nil, "lua_response")
  -- The core builds the reply (gRPC: trailers-only, grpc-status mapped from
  -- the status, grpc-message = body); the script's headers go on top, except
  -- pseudo-headers and the framing ones the core owns.
  -- A script's header replaces the core's default of that name (Envoy
  -- applies them before defaulting content-type); repeated values add.
  local grpc = s:is_grpc()
  local resp, seen = s.response, {}
  for _, kv in ipairs(list) do
    local k = kv[1]
    if string_byte(k, 1) ~= 58 and k ~= "content-length" and not (grpc and k == "content-type") then
      pcall(seen[k] and resp.add or resp.set, resp, k, kv[2])
      seen[k] = true
    end
  end
  if run.direct then error(RESPONDED, 0) end -- M.call catches it: the script ends here
  run.state = "responded"
  co_yield(RESPONDED) -- never resumed: the script ends here
end

for name, level in pairs({ logTrace = "debug", logDebug = "debug", logInfo = "info", logWarn = "warn",
                           logErr = "error", logCritical = "error" }) do
  Handle[name] = function(self, msg)
    local run = handle_alive(self)
    msg = checkstring(msg, 1, name)
    run.s:log(level, "script log: %s", msg)
  end
end

function Handle:base64Escape(s)
  handle_alive(self)
  return M.base64(checkstring(s, 1, "base64Escape"))
end

local function resolution_arg(v, fname)
  if v == nil then return "" end
  local s = checkstring(v, 1, fname, 4)
  return s
end

function Handle:timestamp(format)
  handle_alive(self)
  local f = resolution_arg(format, "timestamp")
  if f ~= "" and tonumber(f) ~= M.TIMESTAMP_RESOLUTION.MILLISECOND then
    error("timestamp format must be MILLISECOND.", 2)
  end
  return math_floor(now_us() / 1000)
end

function Handle:timestampString(resolution)
  handle_alive(self)
  local f = resolution_arg(resolution, "timestampString")
  local us = now_us()
  if f == "" or tonumber(f) == M.TIMESTAMP_RESOLUTION.MILLISECOND then
    return string_format("%.0f", math_floor(us / 1000))
  elseif tonumber(f) == M.TIMESTAMP_RESOLUTION.MICROSECOND then
    return string_format("%.0f", us)
  end
  error("timestamp format must be MILLISECOND or MICROSECOND.", 2)
end

--- nuncio's route depends on the headers only, and any request header change
--- already clears the route cache: nothing left to clear.
function Handle:clearRouteCache()
  handle_alive(self)
end

for _, name in ipairs({ "httpCall", "importPublicKey", "verifySignature", "setUpstreamOverrideHost",
                        "connectionStreamInfo", "stats" }) do
  Handle[name] = function(self)
    handle_alive(self)
    error(name .. "() is not supported by nuncio", 2)
  end
end

---------------------------------------------------------------------------
-- the driver

-- What a pooled script coroutine yields when the script returned: the
-- coroutine then waits for the next call's function instead of dying, so a
-- call does not create one (that was most of a small script's cost).
local DONE = {}
local function trampoline(fn, h)
  while true do
    fn(h)
    fn, h = co_yield(DONE)
  end
end
local idle, n_idle = {}, 0 -- coroutines parked at co_yield(DONE)
local POOL_MAX = 32

local function plain_resume(_, co, ...) return co_resume(co, ...) end

--- run = envoy.new_run(stream, "request"|"response", { resume = fn? })
--- opts.resume(run, co, ...) replaces coroutine.resume(co, ...) (the filter
--- wraps it in the call's instruction budget, which it may keep in run).
--- limit: the call's instruction budget, kept in the run as { limit, used,
--- err } for opts.resume. The fields every call sets are in the
--- constructor (adding keys later rehashes the table); the body fields only
--- body()/trailers() calls add.
function M.new_run(s, dir, opts, limit)
  return {
    s = s, dir = dir, live = false, gen = 0, cache = false, hmap = false, headers_continued = false,
    resume = opts and opts.resume or plain_resume, state = "new", co = false,
    limit = limit or 0, used = 0, err = false,
  }
end

-- After each resume: "done" | "responded" | "waiting" | "failed", err,
-- traceback. Takes resume's results as they come (no packing).
local function settle(run, ok, what, ...)
  run.live = false
  local co = run.co
  if not ok then
    run.state = "failed"
    run.headers_continued = true
    local msg = what
    if type(msg) ~= "string" then msg = tostring(msg) end
    return "failed", msg, traceback(co)
  end
  if what == DONE then
    run.state = "done"
    run.headers_continued = true
    new_generation(run)
    run.co = false
    if n_idle < POOL_MAX then
      n_idle = n_idle + 1
      idle[n_idle] = co
    end
    return "done"
  elseif what == RESPONDED then
    run.state = "responded"
    new_generation(run)
    return "responded"
  elseif what == WAIT_TRAILERS then
    run.state = "waiting"
    new_generation(run)
    return "waiting"
  elseif what == WAIT_BODY then
    -- read_body yields the phase's own coroutine, outside the script's.
    local body, err = read_body(run)
    run.live = true
    return settle(run, run.resume(run, co, body, err))
  end
  -- A script's own bare yield: its coroutine stays suspended, never pooled.
  run.state = "failed"
  run.headers_continued = true
  return "failed", "script performed an unexpected yield", traceback(co)
end

-- Resumes until the script ends, responds, fails or waits for the response
-- trailers (see settle).
local function drive(run, ...)
  run.live = true
  run.state = "running"
  return settle(run, run.resume(run, run.co, ...))
end

--- Starts fn(handle) for this run: see drive() for the results.
function M.start(run, fn)
  local co
  if n_idle > 0 then
    co = idle[n_idle]
    idle[n_idle] = nil
    n_idle = n_idle - 1
  else
    co = co_create(trampoline)
  end
  run.co = co
  return drive(run, fn, setmetatable({ _run = run }, run.dir == "request" and Handle or ResponseHandle))
end

-- A direct call's error handler: respond()'s way out passes through, an
-- error gets the traceback of where it was raised.
local function direct_error(e)
  if e == RESPONDED then return e end
  return { e, traceback(nil, 2) }
end

--- run = envoy.new_direct_run(stream): the run of a direct call (M.call),
--- request path. Eight fields, so its table is half the size of new_run's:
--- at some hundred thousand calls a second its garbage was a third of the
--- script's cost (bench/lua_chain.lua under jit.p).
function M.new_direct_run(s)
  return { s = s, dir = "request", live = false, gen = 0, cache = false, hmap = false,
    headers_continued = false, direct = true }
end

--- run = envoy.new_reusable_run(): a direct run whose handle and header map
--- object serve call after call (envoy.reuse_run before each), for scripts
--- proved confined (nuncio.bounded.confined: nothing of a call outlives it),
--- so such a call makes no table at all. The generation only ever grows, so
--- an object of an earlier call could not pass for a live one either.
function M.new_reusable_run()
  local run = { s = false, dir = "request", live = false, gen = 0, cache = false, hmap = false,
    headers_continued = false, direct = true, handle = false, spare = false, map = false }
  run.handle = setmetatable({ _run = run }, Handle)
  run.map = new_map(run, false, "headers")
  return run
end

--- Readies a reusable run for its next call, on stream s.
function M.reuse_run(run, s)
  run.s, run.cache, run.hmap, run.headers_continued, run.spare = s, false, false, false, run.map
  run.body, run.body_streamed, run.chunks_done = nil, nil, nil
end

--- After the call: the run no longer holds the stream alive.
function M.release_run(run)
  run.s, run.map._map = false, false
end

--- Calls fn(handle) directly, in the calling (phase) coroutine: for request
--- scripts proved to end (nuncio.bounded), which cannot yield on their own,
--- catch errors or reach coroutines, so no coroutine of their own is needed;
--- body() waits in the phase's coroutine. run: new_direct_run's. Results as
--- drive()'s, never "waiting" (only response scripts wait for trailers).
function M.call(run, fn)
  run.live = true
  local ok, e = xpcall(fn, direct_error, run.handle or setmetatable({ _run = run }, Handle))
  run.live = false
  if ok then
    run.headers_continued = true
    new_generation(run)
    return "done"
  end
  if e == RESPONDED then
    new_generation(run)
    return "responded"
  end
  run.headers_continued = true
  local msg = e[1]
  if type(msg) ~= "string" then msg = tostring(msg) end
  return "failed", msg, e[2]
end

--- Resumes a script waiting in trailers(): has = the trailers arrived.
function M.resume_trailers(run, has)
  if run.state ~= "waiting" then return "done" end
  return drive(run, has and true or false)
end

M.Handle = Handle
M.ResponseHandle = ResponseHandle
M.HeaderMap = HeaderMap
return M
