-- envoy_scripts: runs an Envoy Lua filter script (Ambassador's Module
-- `lua_scripts`) unchanged: envoy_on_request(handle) before routing,
-- envoy_on_response(handle) on the response, with Envoy's handle API
-- (lua/nuncio/envoy.lua).
--
--   { name = "envoy_scripts", config = { code = "...", name = "label",
--                                        fail_closed = false, max_instructions = 10000000 } }
--
-- * The script is compiled and its top level run once, at new(); a script
--   that does not compile (or whose top level fails) makes new() raise
--   "lua_scripts: <Lua message with line>", which the chain reports as a
--   config error.
-- * It runs in its own environment: the standard libraries a script needs
--   (base functions, string, table, math, bit, coroutine, os.time/clock/date/
--   difftime/getenv, debug.traceback/getinfo) and Envoy's
--   EnvoyTimestampResolution, none of nuncio's modules. Globals a script sets
--   stay in that environment (shared by the exchanges of one worker, as
--   Envoy's per-worker globals). Left out on purpose, as they would let a
--   script stop the proxy or leave its sandbox: io, ffi, jit, package,
--   dofile/loadfile, os.exit/execute/remove/rename, getfenv/setfenv,
--   debug.sethook and the other debug functions, collectgarbage other than
--   "count", and binary chunks in load/loadstring.
-- * A script error (or a used-up budget) is logged with its traceback and
--   counted (M.errors, the metrics' lua.errors), and the exchange goes on
--   with whatever the script changed before failing (fail open, as Envoy).
--   With fail_closed = true the request is answered 500 (gRPC: INTERNAL)
--   instead; after the response headers have gone, a gRPC response gets
--   grpc-status 13 in its trailers.
-- * Instruction budget: each call of envoy_on_request / envoy_on_response
--   may run max_instructions VM instructions (default 10 000 000, some tens
--   of milliseconds), counted by a debug count hook. LuaJIT calls hooks only
--   in interpreted code, so the script's functions are compiled with the JIT
--   off (jit.off on the chunk and everything it defines or loads). The limit
--   does not see time spent inside one C library call (string.rep of a huge
--   count, a pathological pattern in string.find). max_instructions = 0
--   turns the budget off and lets the JIT compile the script.
-- * A script proved to end (nuncio.bounded: no loops, no recursion, no
--   pcall, ...; the guide's snippet is one) needs no budget: it runs without
--   the hook, JIT on (inst.proved). The hook, once set, makes every
--   interpreted bytecode of the worker's VM go through a C call, which cost
--   more than the snippet itself.
local envoy = require("nuncio.envoy")
local bounded = require("nuncio.bounded")
local log = require("nuncio.log")
local nffi = require("nuncio.ffi")

local type, tostring, error, pcall, xpcall, select, unpack, setmetatable, rawget, next, ipairs =
  type, tostring, error, pcall, xpcall, select, unpack, setmetatable, rawget, next, ipairs
local _G, string, table, math, bit, os, debug, coroutine, jit = _G, string, table, math, bit, os, debug, coroutine, jit
local loadstring, setfenv, getmetatable, collectgarbage = loadstring, setfenv, getmetatable, collectgarbage
local string_byte, string_format, table_concat = string.byte, string.format, table.concat
local co_create, co_resume, co_status = coroutine.create, coroutine.resume, coroutine.status
local gethook, sethook, getinfo = debug.gethook, debug.sethook, debug.getinfo
local jit_off, jit_on = jit and jit.off, jit and jit.on

local schema_name = (... or "envoy_scripts.handler"):gsub("%.handler$", "") .. ".schema"
local ok_schema, schema = pcall(require, schema_name)
if not ok_schema then schema = require("envoy_scripts.schema") end

local M = {
  VERSION = "1.0",
  schema = schema,
  errors = 0, -- script errors since start, every instance (Envoy's lua.errors)
}

local DEFAULT_BUDGET = 10000000
local GRAIN = 1000 -- instructions between two hook calls

local function pack(...) return { n = select("#", ...), ... } end

---------------------------------------------------------------------------
-- instruction budget

-- LuaJIT keeps one hook for the whole VM, not one per coroutine: it is set
-- only while a script's coroutine runs, and `current` is that call's budget
-- ({ limit, used, err }: the call's envoy run, or the top level's table).
local current

local function hook()
  local b = current
  if not b then return end
  b.used = b.used + GRAIN
  if b.used > b.limit then
    if not b.err then
      local info = getinfo(2, "Sl")
      local where = info and info.currentline and info.currentline > 0
        and (info.short_src .. ":" .. info.currentline .. ": ") or ""
      b.err = where .. string_format("script exceeded its instruction budget (%d instructions)", b.limit)
    end
    error(b.err, 0)
  end
end

-- The hook is set once and stays set: setting or clearing a hook aborts any
-- trace LuaJIT is recording and (on/off) rewrites its dispatch table, which
-- cost more than a small script itself. Outside a script's call `current`
-- is nil and the hook returns at once; it runs once per GRAIN interpreted
-- bytecodes (compiled code never calls it), so the rest of the proxy pays a
-- counter decrement per interpreted bytecode and a call per thousand. The
-- first grain of a call may be partly used up before it: a budget ends at
-- most GRAIN instructions early. Another hook already set (a coverage tool
-- under busted) is put back after each call instead, as a hook of its own
-- would be lost.
local function unhook(co, outer, oh, om, oc, ...)
  current = outer
  if oh ~= nil and oh ~= hook then
    sethook(co)
    sethook(oh, om, oc)
  end
  return ...
end

-- coroutine.resume(co, ...) under budget (a table with limit > 0 and used),
-- restoring whatever hook and budget were there before. No closure or
-- packing per call: it runs for every script call.
local function budgeted_resume(budget, co, ...)
  local oh, om, oc = gethook()
  local outer = current
  current = budget
  if oh ~= hook then sethook(co, hook, "", GRAIN) end
  return unhook(co, outer, oh, om, oc, co_resume(co, ...))
end

local function unbudgeted_resume(_, co, ...)
  return co_resume(co, ...)
end

-- After the budget is used up, a script cannot catch that error and go on.
local function rethrow_if_exhausted()
  local b = current
  if b and b.err then error(b.err, 0) end
end

---------------------------------------------------------------------------
-- the script's environment

local function copy(t, only)
  local out = {}
  if only then
    for _, k in ipairs(only) do out[k] = t[k] end
  else
    for k, v in next, t do out[k] = v end
  end
  return out
end

local function make_env(name, no_jit)
  local env = {}
  for _, k in ipairs({ "assert", "error", "ipairs", "next", "select", "tonumber", "tostring", "type",
                       "unpack", "rawequal", "rawget", "rawset", "setmetatable", "_VERSION" }) do
    env[k] = _G[k]
  end
  env._G = env
  env.pairs = envoy.pairs -- honours __pairs (header maps, metadata)

  env.string = copy(string)
  env.table = copy(table)
  env.math = copy(math)
  env.bit = bit and copy(bit) or nil
  env.os = copy(os, { "clock", "date", "difftime", "getenv", "time" })
  env.debug = copy(debug, { "traceback", "getinfo" })
  env.coroutine = copy(coroutine)
  env.EnvoyTimestampResolution = copy(envoy.TIMESTAMP_RESOLUTION)

  local string_mt = { __index = env.string }
  function env.getmetatable(v)
    if type(v) == "string" then return string_mt end
    return getmetatable(v)
  end

  function env.pcall(f, ...)
    local r = pack(pcall(f, ...))
    rethrow_if_exhausted()
    return unpack(r, 1, r.n)
  end
  function env.xpcall(f, handler, ...)
    local r = pack(xpcall(f, handler, ...))
    rethrow_if_exhausted()
    return unpack(r, 1, r.n)
  end
  function env.coroutine.resume(co, ...)
    local r = pack(co_resume(co, ...))
    rethrow_if_exhausted()
    return unpack(r, 1, r.n)
  end

  local function load_text(chunk, chunkname)
    if type(chunk) == "function" then
      local parts = {}
      while true do
        local p = chunk()
        if p == nil or p == "" then break end
        parts[#parts + 1] = tostring(p)
      end
      chunk = table_concat(parts)
    end
    if type(chunk) ~= "string" then return nil, "load: a string or a reader function expected" end
    if string_byte(chunk, 1) == 27 then return nil, "binary chunks are not allowed in lua_scripts" end
    local f, err = loadstring(chunk, chunkname)
    if not f then return nil, err end
    setfenv(f, env)
    if no_jit and jit_off then jit_off(f, true) end
    return f
  end
  env.loadstring = load_text
  env.load = load_text

  function env.print(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    log.info("lua_scripts %s: print: %s", name, table_concat(parts, "\t"))
  end

  function env.collectgarbage(opt)
    if opt == "count" then return collectgarbage("count") end
    error("collectgarbage(" .. tostring(opt) .. ") is not available to lua_scripts", 2)
  end

  local libs = { string = true, table = true, math = true, bit = true, os = true, debug = true, coroutine = true }
  function env.require(modname)
    if libs[modname] and env[modname] then return env[modname] end
    error("module '" .. tostring(modname) .. "' is not available to lua_scripts", 2)
  end
  return env
end

---------------------------------------------------------------------------
-- the filter

local function script_error(inst, s, fname, where, err, tb)
  M.errors = M.errors + 1
  nffi.C.nu_ffi_stats_add(0, 1) -- the core's lua_errors (admin /stats)
  inst.errors = inst.errors + 1
  inst.last_error = err
  s:log("error", "script log: %s (lua_scripts %s, %s)\n%s", err, inst.name, fname, tb or "")
  if not inst.fail_closed then return end
  if where == "request" or where == "response" then
    local ok, rerr = pcall(s.respond, s, 500, "lua_scripts: script error", nil, "lua_script_error", 13)
    if ok then return end
    s:log("error", "lua_scripts %s: fail_closed: cannot answer 500: %s", inst.name, tostring(rerr))
  elseif where == "trailers" and s:is_grpc() then
    pcall(s.trailers.set, s.trailers, "grpc-status", "13")
    pcall(s.trailers.set, s.trailers, "grpc-message", "lua_scripts: script error")
  end
end

-- Reusable runs of a confined script, free for the next call (a call that
-- waits for a body holds its own meanwhile, so there may be several).
local REUSE_MAX = 16

local function run_phase(inst, s, dir, fn, fname)
  local run, st, err, tb
  if inst.confined and dir == "request" then
    local free, n = inst.free, inst.n_free
    if n > 0 then
      run = free[n]
      free[n] = nil
      inst.n_free = n - 1
    else
      run = envoy.new_reusable_run()
    end
    envoy.reuse_run(run, s)
    st, err, tb = envoy.call(run, fn)
    envoy.release_run(run)
    n = inst.n_free
    if n < REUSE_MAX then
      free[n + 1] = run
      inst.n_free = n + 1
    end
  elseif inst.proved and dir == "request" then
    run = envoy.new_direct_run(s)
    st, err, tb = envoy.call(run, fn) -- no coroutine of its own: see envoy.call
  else
    run = envoy.new_run(s, dir, inst.run_opts, inst.limit) -- the run holds the call's budget
    st, err, tb = envoy.start(run, fn)
  end
  if st == "failed" then
    script_error(inst, s, fname, dir, err, tb)
  elseif st == "waiting" then
    inst.pending[s] = run
  end
end

local function resume_waiting(inst, s, has_trailers, where)
  local run = inst.pending[s]
  if not run then return end
  inst.pending[s] = nil
  local st, err, tb = envoy.resume_trailers(run, has_trailers)
  if st == "failed" then script_error(inst, s, "envoy_on_response", where, err, tb) end
end

--- new(config) -> filter instance; raises "lua_scripts: ..." when the script
--- does not compile or its top level fails.
function M.new(config)
  local ok, verr = schema.validate(config)
  if not ok then error("lua_scripts: " .. tostring(verr), 0) end
  local name = config.name or "script"
  local limit = config.max_instructions or DEFAULT_BUDGET
  local env = make_env(name, limit > 0)

  local chunk, cerr = loadstring(config.code, "=" .. name)
  if not chunk then error("lua_scripts: " .. tostring(cerr), 0) end
  setfenv(chunk, env)
  if limit > 0 and jit_off then jit_off(chunk, true) end

  -- The top level runs once, like Envoy's load, under the same budget.
  local co = co_create(chunk)
  local rok, rerr
  if limit > 0 then
    rok, rerr = budgeted_resume({ limit = limit, used = 0 }, co)
  else
    rok, rerr = co_resume(co)
  end
  -- The hook stays set after a budgeted call (see unhook); the top level is
  -- not a call, and a budgeted instance sets it again on its first call.
  if gethook() == hook then sethook() end
  if not rok then error("lua_scripts: " .. tostring(rerr), 0) end
  if co_status(co) ~= "dead" then error("lua_scripts: script performed an unexpected yield", 0) end

  local on_request, on_response = rawget(env, "envoy_on_request"), rawget(env, "envoy_on_response")
  if on_request ~= nil and type(on_request) ~= "function" then
    error("lua_scripts: envoy_on_request must be a function, not " .. type(on_request), 0)
  end
  if on_response ~= nil and type(on_response) ~= "function" then
    error("lua_scripts: envoy_on_response must be a function, not " .. type(on_response), 0)
  end
  -- Envoy's notes when a hook is missing: at debug level when the other one
  -- exists (the guide's snippet has only envoy_on_request), else at info.
  local level = (on_request or on_response) and "debug" or "info"
  if not on_request then
    log.write(level, "lua_scripts %s: envoy_on_request() function not found. "
      .. "Lua filter will not hook requests.", name)
  end
  if not on_response then
    log.write(level, "lua_scripts %s: envoy_on_response() function not found. "
      .. "Lua filter will not hook responses.", name)
  end

  -- A script that provably ends (nuncio.bounded: no loops, no recursion, no
  -- pcall) needs no budget: it runs without the count hook, JIT on.
  local proved, why = false, "max_instructions = 0"
  if limit > 0 then
    proved, why = bounded.check({ on_request, on_response }, env, { [env.print] = true })
    if proved then
      limit = 0
      if jit_on then jit_on(chunk, true) end
    end
  end
  log.write("debug", "lua_scripts %s: %s", name, proved
    and "the script ends on every path: it runs without the instruction budget"
    or ("instruction budget " .. (limit > 0 and tostring(limit) or "off") .. " (" .. tostring(why) .. ")"))
  -- A proved request script that keeps nothing of a call (bounded.confined)
  -- gets its handle and header map reused, not made per call: for the
  -- guide's snippet those tables were half of what it cost.
  local confined = false
  if proved and on_request then
    local cwhy
    confined, cwhy = bounded.confined(on_request)
    log.write("debug", "lua_scripts %s: %s", name, confined
      and "envoy_on_request keeps nothing of a call: its handle objects are reused"
      or ("handle objects made per call (" .. tostring(cwhy) .. ")"))
  end

  local inst = {
    name = name, fail_closed = config.fail_closed == true, limit = limit, env = env, proved = proved,
    confined = confined, free = {}, n_free = 0,
    errors = 0, last_error = nil,
    run_opts = { resume = limit > 0 and budgeted_resume or unbudgeted_resume },
    pending = setmetatable({}, { __mode = "k" }), -- stream -> response script waiting for trailers
  }
  -- Only the phases the script hooks: the chain skips the others.
  if on_request then
    function inst.on_request_headers(self, s)
      run_phase(self, s, "request", on_request, "envoy_on_request")
    end
  end
  if on_response then
    function inst.on_response_headers(self, s)
      run_phase(self, s, "response", on_response, "envoy_on_response")
    end
    function inst.on_response_trailers(self, s)
      resume_waiting(self, s, true, "trailers")
    end
    function inst.on_log(self, s)
      resume_waiting(self, s, false, "log")
    end
  end
  return inst
end

return M
