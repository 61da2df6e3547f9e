-- Proves, from LuaJIT bytecode, that every call of a script's entry points
-- ends, so envoy_scripts can run it without the instruction budget's count
-- hook. The hook is what makes a runaway script stop, but LuaJIT calls hooks
-- only from the interpreter and, once set, sends every interpreted bytecode of
-- the whole VM through a C call (lj_dispatch_ins): for the guide's port-strip
-- snippet that was most of the Lua chain's cost. A script that provably ends
-- needs no hook, and its functions may be JIT-compiled.
--
--   local ok, why = bounded.check(roots, env, trusted)
--
-- roots: the entry points (envoy_on_request / envoy_on_response) after the
-- script's top level has run; env: the script's globals; trusted: functions
-- of nuncio's own the script may call (they end; their bytecode is not the
-- script's). ok = true, or false and the first reason, "<where>: <why>".
--
-- A call ends when, in every Lua function it can reach:
--   * there is no loop: no loop bytecode and no backward jump (so a function
--     body runs each instruction at most once);
--   * no function is created (FNEW): closures come only from the top level;
--   * script functions reach each other only as direct calls of a global or
--     upvalue whose value is fixed by the top level (the loaded register goes
--     straight into CALL, never passed on), and these calls form no cycle;
--   * every other value it loads by name is data, or a C library function
--     that neither catches errors nor resumes coroutines (string, table, math,
--     bit, os.time & co, tostring, error, ...): no pcall, xpcall, coroutine,
--     load, require, debug, setmetatable, getmetatable, rawget, next, _G;
--   * no field whose name starts with "_" is read or written by a constant
--     key (the handle objects keep their internals there).
-- Then the calls form a finite tree of finite bodies: no loop, no recursion,
-- and no error can be caught to start over. (As with the hook, time spent
-- inside one C call, such as string.rep of a huge count, is not bounded.)
-- Anything else falls back to the budget: the check only ever says "proved"
-- or "not proved".
local ok_ju, jutil = pcall(require, "jit.util")
local ok_vm, vmdef = pcall(require, "jit.vmdef")
local bit = require("bit")

local band, rshift = bit.band, bit.rshift
local type, next, rawget, getmetatable, tostring = type, next, rawget, getmetatable, tostring
local string_format, string_sub, string_byte = string.format, string.sub, string.byte
local getupvalue = debug.getupvalue

local M = {}

-- C functions a bounded script may call: none catches an error, resumes a
-- coroutine or reaches a function the check did not see (the callbacks of
-- string.gsub, table.sort and table.foreach would have to be script functions
-- passed as values, which the check refuses).
local SAFE_C = {}
do
  for _, lib in ipairs({ string, table, math, bit }) do
    for _, v in next, lib do
      if type(v) == "function" then SAFE_C[v] = true end
    end
  end
  for _, name in ipairs({ "clock", "date", "difftime", "getenv", "time" }) do
    SAFE_C[os[name]] = true
  end
  for _, name in ipairs({ "tostring", "tonumber", "type", "error", "assert", "select", "unpack", "rawequal" }) do
    SAFE_C[_G[name]] = true
  end
  SAFE_C[debug.traceback] = true
end

local BCMjump = 13
local REG_MODES = { [1] = true, [2] = true, [3] = true, [4] = true } -- dst, base, var, rbase
local LOOP_OPS = {
  FORI = true, JFORI = true, FORL = true, IFORL = true, JFORL = true, ITERC = true, ITERN = true,
  ITERL = true, IITERL = true, JITERL = true, LOOP = true, ILOOP = true, JLOOP = true, ISNEXT = true,
}

local function opname(ins)
  local o = 6 * band(ins, 0xff)
  local s = string_sub(vmdef.bcnames, o + 1, o + 6)
  local e = #s
  while e > 0 and string_byte(s, e) == 32 do e = e - 1 end
  return string_sub(s, 1, e)
end

local function where(f, pc)
  local fi = jutil.funcinfo(f, pc)
  return string_format("%s:%s", tostring(fi.source):gsub("^[=@]", ""), tostring(fi.currentline or fi.linedefined))
end

-- Data (no function, no metatable, anywhere inside) or SAFE_C functions.
local function plain(v, seen)
  local t = type(v)
  if t == "function" then return SAFE_C[v] == true end
  if t ~= "table" then return t ~= "userdata" and t ~= "thread" end
  if seen[v] then return true end
  seen[v] = true
  if getmetatable(v) ~= nil then return false end
  for k, x in next, v do
    if not plain(k, seen) or not plain(x, seen) then return false end
  end
  return true
end

-- The loaded register r must be the callee of the next instruction that
-- touches it, on every path from the load (jumps go forward only: loops are
-- refused anyway), so a script function is only ever called (a tail call
-- too: with no cycle in the calls, tail calls end as well), never passed on
-- or stored.
local RET_OPS = { RET = true, RET0 = true, RET1 = true, RETM = true }

local function touches(ins, m, r)
  local ma, mb, mc = band(m, 7), rshift(band(m, 15 * 8), 3), rshift(band(m, 15 * 128), 7)
  local a = band(rshift(ins, 8), 0xff)
  if REG_MODES[ma] and (a == r or ((ma == 2 or ma == 4) and a < r)) then return true end
  if REG_MODES[mb] then
    local b = rshift(ins, 24)
    if b == r or (mb == 4 and b <= r) then return true end
  end
  if REG_MODES[mc] then
    local d = mb ~= 0 and band(rshift(ins, 16), 0xff) or rshift(ins, 16)
    if d == r or (mc == 4 and d >= r) then return true end
  end
  return false
end

local function called_directly(f, pc, r)
  local todo, n, seen = { pc + 1 }, 1, {}
  while n > 0 do
    local p = todo[n]
    todo[n] = nil
    n = n - 1
    if not seen[p] then
      seen[p] = true
      local ins, m = jutil.funcbc(f, p)
      if not ins then return false end
      local op = opname(ins)
      local callee = (op == "CALL" or op == "CALLM" or op == "CALLT" or op == "CALLMT")
        and band(rshift(ins, 8), 0xff) == r
      if not callee then
        if touches(ins, m, r) then return false end
        if not RET_OPS[op] then
          n = n + 1
          todo[n] = p + 1
          if rshift(band(m, 15 * 128), 7) == BCMjump then
            local target = p + rshift(ins, 16) - 0x7fff
            if target <= p then return false end
            n = n + 1
            todo[n] = target
          end
        end
      end
    end
  end
  return true
end

--- ok | false, why: see the top of this file.
function M.check(roots, env, trusted)
  if not (ok_ju and ok_vm) then return false, "no jit.util in this Lua" end
  trusted = trusted or {}
  local state = {} -- Lua function -> "visiting" | "done"
  local visit

  -- A value loaded by name into register r at pc of f.
  local function loaded(f, pc, r, v, name)
    if type(v) == "function" then
      if SAFE_C[v] or trusted[v] then return true end
      if jutil.funcinfo(v).addr or jutil.funcinfo(v).ffid then
        return false, string_format("%s: %s is a function the check cannot follow", where(f, pc), name)
      end
      if not called_directly(f, pc, r) then
        return false, string_format("%s: the script function %s is used as a value, not called", where(f, pc), name)
      end
      return visit(v)
    end
    if not plain(v, {}) then
      return false, string_format("%s: %s holds functions or a metatable", where(f, pc), name)
    end
    return true
  end

  function visit(f)
    if state[f] == "done" then return true end
    if state[f] == "visiting" then
      return false, string_format("%s: recursion", where(f, 0))
    end
    local fi = jutil.funcinfo(f)
    if fi.children then return false, string_format("%s: defines functions inside a function", where(f, 0)) end
    state[f] = "visiting"
    for pc = 1, 1e9 do
      local ins, m = jutil.funcbc(f, pc)
      if not ins then break end
      local op = opname(ins)
      local a = band(rshift(ins, 8), 0xff)
      local d = rshift(ins, 16)
      if LOOP_OPS[op] then return false, string_format("%s: a loop", where(f, pc)) end
      if rshift(band(m, 15 * 128), 7) == BCMjump and d - 0x7fff <= 0 then
        return false, string_format("%s: a backward jump", where(f, pc))
      end
      if op == "FNEW" then return false, string_format("%s: creates a function", where(f, pc)) end
      if op == "GGET" then
        local name = jutil.funck(f, -d - 1)
        local ok, why = loaded(f, pc, a, rawget(env, name), "global " .. tostring(name))
        if not ok then return false, why end
      elseif op == "UGET" then
        local name, v = getupvalue(f, d + 1)
        local ok, why = loaded(f, pc, a, v, "upvalue " .. tostring(name))
        if not ok then return false, why end
      elseif op == "TGETS" or op == "TSETS" then
        local k = jutil.funck(f, -band(d, 0xff) - 1) -- C: the key's string constant
        if type(k) == "string" and string_byte(k, 1) == 95 then -- "_"
          return false, string_format("%s: field %s", where(f, pc), k)
        end
      end
    end
    state[f] = "done"
    return true
  end

  local any = false
  for _, f in ipairs(roots) do
    if f ~= nil then
      any = true
      local ok, why = visit(f)
      if not ok then return false, why end
    end
  end
  if not any then return false, "no entry point" end
  return true
end

---------------------------------------------------------------------------
-- Confinement: no object of the call outlives it.
--
--   local ok, why = bounded.confined(f)
--
-- f: an entry point already proved to end. ok = true when nothing it is
-- handed (the handle in its first parameter) or gets from the handle's
-- methods (header maps, body buffers, stream info, ...) can be reached once
-- the call has returned: each such object is only ever the receiver of a
-- method call, copied between registers or compared, never stored (global,
-- upvalue, table field), passed as an argument, returned, concatenated or
-- called. envoy_scripts then reuses the call's objects for the next call
-- instead of making them anew: a kept object would come back to life, which
-- this rules out. The results of the methods in SCALAR are strings, numbers,
-- copies or nothing; any other method's result counts as an object too.
-- Forward jumps only (the proof refused loops), so one pass in bytecode order
-- sees every path; where paths meet, a register is what either path left.
local SCALAR = {}
for _, name in ipairs({
  "get", "getAtIndex", "getNumValues", "length", "getBytes", "setBytes", "add", "replace", "remove",
  "set", "setHttp1ReasonPhrase", "respond", "clearRouteCache", "base64Escape", "timestamp",
  "timestampString", "protocol", "requestedServerName", "downstreamLocalAddress",
  "downstreamDirectLocalAddress", "downstreamRemoteAddress", "downstreamDirectRemoteAddress",
  "routeName", "virtualClusterName", "logTrace", "logDebug", "logInfo", "logWarn", "logErr", "logCritical",
}) do SCALAR[name] = true end

-- Where a call's arguments start, past its base register: 2 with LuaJIT's
-- two-slot frames (64-bit), else 1. Read off a method call's bytecode.
local ARG0
do
  local probe = loadstring("return function(o) o:m() end")()
  if ok_ju then
    local mov, call
    for pc = 1, 8 do
      local ins = jutil.funcbc(probe, pc)
      if not ins then break end
      if opname(ins) == "MOV" then mov = band(rshift(ins, 8), 0xff) end
      if opname(ins) == "CALL" then call = band(rshift(ins, 8), 0xff) end
    end
    ARG0 = mov and call and mov - call
  end
end

-- Register states: nil (not an object), true (an object), a string (a method
-- looked up on an object, by name) or 1 (looked up by a computed key).
local function join(x, y)
  if x == y or y == nil then return x end
  if x == nil then return y end
  if type(x) == "string" and type(y) == "string" then return 1 end
  if x ~= true and y ~= true then return 1 end
  return true
end

local STORES = {
  GSET = "is stored in a global", USETV = "is stored in an upvalue", TSETV = "is stored in a table or given a field",
  TSETS = "is stored in a table or given a field", TSETB = "is stored in a table or given a field",
  TSETR = "is stored in a table",
}
local READ_ONLY = { -- tests: they read registers and write none
  ISLT = true, ISGE = true, ISLE = true, ISGT = true, ISEQV = true, ISNEV = true, ISEQS = true,
  ISNES = true, ISEQN = true, ISNEN = true, ISEQP = true, ISNEP = true, IST = true, ISF = true,
  ISTYPE = true, ISNUM = true, JMP = true, UCLO = true,
}

function M.confined(f)
  if not (ok_ju and ok_vm and ARG0) then return false, "no jit.util in this Lua" end
  local fi = jutil.funcinfo(f)
  if fi.isvararg then return false, where(f, 0) .. ": takes varargs (the handle could be among them)" end
  if (fi.params or 0) == 0 then return true end
  local reg = { [0] = true } -- the handle
  local multres = false -- the last open call's results (CALL with C = 0) are objects
  local merge = {} -- pc -> register states a forward jump brings there
  local function escapes(pc, what)
    return false, string_format("%s: an object of the call %s", where(f, pc), what)
  end
  for pc = 1, 1e9 do
    local ins, m = jutil.funcbc(f, pc)
    if not ins then break end
    local into = merge[pc]
    if into then
      for r, v in next, into do reg[r] = join(reg[r], v) end
      merge[pc] = nil
    end
    local op = opname(ins)
    local a = band(rshift(ins, 8), 0xff)
    local b, c = rshift(ins, 24), band(rshift(ins, 16), 0xff)
    local d = rshift(ins, 16)
    local ma, mb, mc = band(m, 7), rshift(band(m, 15 * 8), 3), rshift(band(m, 15 * 128), 7)
    if mc == BCMjump then
      local target, to = pc + d - 0x7fff, {}
      for r, v in next, reg do to[r] = v end
      local had = merge[target]
      if had then
        for r, v in next, had do to[r] = join(to[r], v) end
      end
      merge[target] = to
    end
    if op == "MOV" then
      reg[a] = reg[d]
    elseif op == "ISTC" or op == "ISFC" then
      reg[a] = join(reg[a], reg[d])
    elseif op == "TGETS" or op == "TGETB" or op == "TGETV" then
      if op == "TGETV" and reg[c] then return escapes(pc, "is used as a key") end
      if reg[b] then
        reg[a] = op == "TGETS" and jutil.funck(f, -c - 1) or 1
      else
        reg[a] = nil
      end
    elseif op == "CALL" or op == "CALLM" or op == "CALLT" or op == "CALLMT" then
      local tail = op == "CALLT" or op == "CALLMT"
      local nargs = (tail and d or c) - 1 -- CALLM/CALLMT: the fixed ones, then the open results
      local fn = reg[a]
      if fn == true then return escapes(pc, "is called") end
      local first = a + ARG0
      for r = first, first + nargs - 1 do
        if reg[r] and not (fn and r == first and reg[r] == true) then
          return escapes(pc, "is passed as an argument")
        end
      end
      if (op == "CALLM" or op == "CALLMT") and multres then return escapes(pc, "is passed as an argument") end
      local object = fn and not SCALAR[fn] -- a method of an object (any other call gives no object)
      if tail then
        if object then return escapes(pc, "is returned") end
      else
        local nres = b - 1
        for r = a, a + nres - 1 do reg[r] = object or nil end
        if nres < 0 then multres = object and true or false end
      end
    elseif op == "RET" or op == "RET1" or op == "RETM" then
      local n = op == "RET1" and 1 or (op == "RET" and d - 1 or d)
      for r = a, a + n - 1 do
        if reg[r] then return escapes(pc, "is returned") end
      end
      if op == "RETM" and multres then return escapes(pc, "is returned") end
    elseif op == "TSETM" then
      if reg[a - 1] or multres then return escapes(pc, "is stored in a table") end
    elseif op == "KNIL" then
      for r = a, d do reg[r] = nil end
    elseif not READ_ONLY[op] and op ~= "RET0" then
      -- Anything else that reads an object lets it out: a store, a
      -- concatenation, arithmetic (which would raise anyway).
      local how = STORES[op] or ("is used by " .. op)
      if (ma == 3 and reg[a]) or (REG_MODES[mb] and reg[b]) then return escapes(pc, how) end
      if mb == 4 and mc == 4 then -- CAT B..C
        for r = b, c do
          if reg[r] then return escapes(pc, how) end
        end
      elseif REG_MODES[mc] and reg[mb ~= 0 and c or d] then
        return escapes(pc, how)
      end
      if ma == 1 then reg[a] = nil end
    end
  end
  return true
end

return M
