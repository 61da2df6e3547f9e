local bounded = require("nuncio.bounded")

-- Runs the script's top level in an environment like envoy_scripts' (the
-- library tables copied) and checks its entry points.
local function check(code)
  local function copy(t)
    local o = {}
    for k, v in pairs(t) do o[k] = v end
    return o
  end
  local env = {
    string = copy(string), table = copy(table), math = copy(math), os = { time = os.time, clock = os.clock },
    tostring = tostring, tonumber = tonumber, type = type, error = error, select = select,
    pcall = pcall, xpcall = xpcall, coroutine = copy(coroutine), debug = { traceback = debug.traceback,
    getinfo = debug.getinfo }, setmetatable = setmetatable, loadstring = loadstring, next = next,
  }
  env._G = env
  local f = assert(loadstring(code, "=script"))
  setfenv(f, env)
  f()
  return bounded.check({ env.envoy_on_request, env.envoy_on_response }, env)
end

local function proved(code)
  local ok, why = check(code)
  assert(ok, "expected a proof, got: " .. tostring(why))
end

local function refused(code, reason)
  local ok, why = check(code)
  assert.is_false(ok)
  assert.matches(reason, why, 1, true)
end

local GUIDE = io.open("spec/fixtures/ambassador/guide-lua-module.yaml"):read("*a")
  :match("lua_scripts: |\n(.*)$"):gsub("\n      ", "\n"):gsub("^      ", "")

describe("nuncio.bounded", function()
  it("proves the Ambassador guide's port-strip snippet ends", function()
    assert.matches("envoy_on_request", GUIDE, 1, true)
    proved(GUIDE)
  end)

  it("proves straight-line scripts with branches, helpers, tail calls and constant upvalues", function()
    proved([[
local HEADER, LIMIT = "x-tenant", 3
local BLOCKED = { ["/admin"] = true, nested = { "a", "b" } }
local find, sub = string.find, string.sub
local function first_label(host)
  local dot = find(host, ".", 1, true)
  if dot then return sub(host, 1, dot - 1) end
  return host
end
function tenant(h) return first_label(h:headers():get(":authority") or "") end
function envoy_on_request(h)
  if BLOCKED[h:headers():get(":path")] then
    return h:respond({ [":status"] = "403" }, "no")
  end
  h:headers():add(HEADER, tenant(h) .. tostring(LIMIT))
end
function envoy_on_response(h) h:headers():add("x-seen", os.time()) end
]])
  end)

  for name, code in pairs({
    ["while"] = "function envoy_on_request(h) while h do end end",
    ["numeric for"] = "function envoy_on_request(h) for i = 1, 3 do end end",
    ["generic for"] = "function envoy_on_request(h) for k in h do end end",
    ["repeat"] = "function envoy_on_request(h) repeat until h end",
    ["goto"] = "function envoy_on_request(h) ::again:: if h then goto again end end",
  }) do
    it("refuses a loop (" .. name .. ")", function()
      local ok, why = check(code)
      assert.is_false(ok)
      assert.truthy(why:find("loop", 1, true) or why:find("backward jump", 1, true), why)
    end)
  end

  it("refuses a backward jump", function()
    local ok, why = check("function envoy_on_request(h) do goto b end ::a:: do return end ::b:: goto a end")
    assert.is_false(ok)
    assert.truthy(why:find("loop", 1, true) or why:find("backward jump", 1, true), why)
  end)

  it("refuses recursion, direct and through another function", function()
    refused("function envoy_on_request(h) envoy_on_request(h) end", "recursion")
    refused("function a(h) b(h) end function b(h) a(h) end function envoy_on_request(h) a(h) end", "recursion")
    refused("local function f(n) if n > 0 then return f(n - 1) end end function envoy_on_request(h) f(3) end",
      "recursion")
  end)

  it("refuses a script function handed on as a value (it could be called back)", function()
    refused("local function a(f, n) f(f, n) end function envoy_on_request(h) a(a, 1) end", "used as a value")
    refused("local t = {} function g() end function envoy_on_request(h) t.f = g end", "used as a value")
  end)

  it("refuses what could catch an error or resume: pcall, xpcall, coroutines, load, _G", function()
    refused("function envoy_on_request(h) pcall(error) end", "global pcall")
    refused("function envoy_on_request(h) xpcall(error, error) end", "global xpcall")
    refused("function envoy_on_request(h) coroutine.wrap(error)() end", "global coroutine")
    refused("function envoy_on_request(h) loadstring('x = 1')() end", "global loadstring")
    refused("function envoy_on_request(h) local g = _G end", "global _G")
    refused("local p = pcall function envoy_on_request(h) p(error) end", "upvalue p")
  end)

  it("refuses library tables the top level changed, and tables holding functions", function()
    refused("function string.strip(s) return s end function envoy_on_request(h) string.strip('x') end",
      "global string holds functions")
    refused("local T = { f = print } function envoy_on_request(h) end T.g = function() end " ..
      "function envoy_on_response(h) local x = T end", "upvalue T holds functions")
    refused("local M = setmetatable({}, {}) function envoy_on_request(h) local x = M end", "metatable")
  end)

  it("refuses functions made inside a function", function()
    refused("function envoy_on_request(h) local f = function() end end", "defines functions")
  end)

  it("refuses reading the handle objects' internals", function()
    refused("function envoy_on_request(h) local r = h._run end", "field _run")
  end)

  it("needs an entry point", function()
    refused("x = 1", "no entry point")
  end)
end)

describe("nuncio.bounded.confined", function()
  -- The script's envoy_on_request, after its top level ran (proved first, as
  -- envoy_scripts asks only then).
  local function entry(code)
    local env = setmetatable({}, { __index = _G })
    local f = assert(loadstring(code, "=script"))
    setfenv(f, env)
    f()
    return env.envoy_on_request
  end

  local function confined(code)
    local ok, why = bounded.confined(entry(code))
    assert(ok, "expected confined, got: " .. tostring(why))
  end

  local function escapes(code, reason)
    local ok, why = bounded.confined(entry(code))
    assert.is_false(ok)
    assert.matches(reason, why, 1, true)
  end

  it("the guide's snippet keeps nothing of its call", function()
    confined(GUIDE)
  end)

  it("objects may be method receivers, copied, tested and compared; method results that are values are free", function()
    confined([[
local seen
function envoy_on_request(h)
  local m = h:headers()
  local same = m
  local p = same:get(":path")
  seen = p -- a string, not an object
  if m and m == h:headers() and p ~= nil then
    m:add("x-len", tostring(h:body(true):length()) .. p)
  end
  local n = m:getNumValues("x") + 1
  h:streamInfo():dynamicMetadata():set("f", "k", string.format("%d", n))
  h:logInfo(h:streamInfo():protocol())
  return h:respond({ [":status"] = "403" }, "no")
end
]])
    confined("function envoy_on_request(h) local f = h.headers f(h):get('x') end") -- h:headers() spelt out
    confined("function envoy_on_request() end")
    confined("function envoy_on_request(h) end")
  end)

  it("refuses every way an object could outlive the call", function()
    escapes("function envoy_on_request(h) saved = h end", "stored in a global")
    escapes("local kept function envoy_on_request(h) kept = h:headers() end", "stored in an upvalue")
    escapes("function envoy_on_request(h) local t = { h:body() } end", "stored in a table")
    escapes("local T = {} function envoy_on_request(h) T.m = h:headers() end", "stored in a table")
    escapes("function envoy_on_request(h) h.count = 1 end", "given a field")
    escapes("function envoy_on_request(h) h:headers().x = 1 end", "given a field")
    escapes("function envoy_on_request(h) print(h) end", "passed as an argument")
    escapes("function envoy_on_request(h) tostring(h:streamInfo()) end", "passed as an argument")
    escapes("function envoy_on_request(h) h:headers():add('x', h:headers()) end", "passed as an argument")
    escapes("function envoy_on_request(h) return h:headers() end", "returned")
    escapes("function envoy_on_request(h) return h end", "returned")
    escapes("function envoy_on_request(h) local x = 'a' .. h end", "used by CAT")
    escapes("function envoy_on_request(h) h() end", "is called")
    escapes("function envoy_on_request(h) local f = h.headers f(h, h) end", "passed as an argument")
    escapes("function envoy_on_request(h) local t = {} t[h] = 1 end", "stored in a table")
    escapes("function envoy_on_request(...) local h = ... x = h end", "varargs")
  end)

  it("follows both sides of a branch", function()
    escapes("function envoy_on_request(h, x) local a = x if x then a = h:headers() end print(a) end",
      "passed as an argument")
    escapes("function envoy_on_request(h) local a = h:headers():get('x') or h:headers() print(a) end",
      "passed as an argument")
    confined("function envoy_on_request(h) local a = h:headers() if a then a = 'x' else a = 'y' end print(a) end")
  end)
end)
