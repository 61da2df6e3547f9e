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

return M
