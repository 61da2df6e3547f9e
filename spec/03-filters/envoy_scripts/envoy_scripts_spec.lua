-- The envoy_scripts filter: Ambassador's lua_scripts run unchanged through
-- the real chain (loader, router, C header maps), and Envoy's error rules.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local helpers = dofile(here .. "helpers.lua")
local testing = require("nuncio.testing")
local yaml = require("nuncio.yaml")

local handler = helpers.handler

-- shared/reference/ambassador-behaviour.md §5.1: the Module from the
-- Ambassador gRPC guide ("Working with Host headers that include the port"),
-- verbatim.
local GUIDE_MODULE = require("ambassador_fixtures").guide_lua_module()

local function guide_script()
  local docs = assert(yaml.load(GUIDE_MODULE, "guide.yaml"))
  return docs[1].spec.config.lua_scripts
end

describe("envoy_scripts: the Ambassador guide's port-stripping snippet", function()
  it("is the text the guide pastes, byte for byte", function()
    local code = guide_script()
    assert.are.equal(table.concat({
      "function envoy_on_request(request_handle)",
      "  local authority = request_handle:headers():get(\":authority\")",
      "  if(string.find(authority, \":\") ~= nil)",
      "  then",
      "    local authority_index = string.find(authority, \":\")",
      "    local stripped_authority = string.sub(authority, 1, authority_index - 1)",
      "    request_handle:headers():replace(\":authority\", stripped_authority)",
      "  end",
      "end",
      "",
    }, "\n"), code)
  end)

  it("without it, api.example.com:443 does not match a hostname: api.example.com Mapping (404)", function()
    local chain = testing.chain({ ambassador = helpers.YAML })
    local r = chain:request({ path = "/api/users", authority = "api.example.com:443" })
    assert.is_nil(r.route)
    assert.are.equal(404, r.reply.status)
  end)

  it("with it, the port is stripped and the router selects the Mapping again", function()
    local chain, inst = helpers.chain(guide_script())
    local r = chain:request({ path = "/api/users", authority = "api.example.com:443" })
    assert.is_nil(r.reply)
    assert.are.equal("api", r.route.name)
    assert.are.equal("api.example.com", r.authority)
    assert.are.equal(8080, r.cluster.port)
    assert.are.equal(0, inst.errors)
  end)

  it("works pasted as the Module's lua_scripts (the loader runs it through this filter)", function()
    local chain = testing.chain({ ambassador = GUIDE_MODULE .. "---\n" .. helpers.YAML })
    local names = {}
    for _, f in ipairs(chain.chain.filters) do names[#names + 1] = f.name end
    assert.are.same({ "envoy_scripts" }, names)
    local r = chain:request({ path = "/api/users", authority = "api.example.com:443" })
    assert.is_nil(r.reply)
    assert.are.equal("api", r.route.name)
    assert.are.equal("api.example.com", r.authority)
  end)

  it("strips any port, for gRPC calls too, and leaves a bare authority alone", function()
    local chain = helpers.chain(guide_script())
    local r = chain:request({ path = "/api/users", authority = "api.example.com:8443" })
    assert.are.equal("api", r.route.name)
    local bare = chain:request({ path = "/api/users", authority = "api.example.com" })
    assert.are.equal("api", bare.route.name)
    assert.are.equal("api.example.com", bare.authority)
    local g = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true, authority = "grpc.local:50051" })
    assert.are.equal("greeter", g.route.name)
    assert.are.equal("grpc.local", g.authority)
  end)
end)

describe("envoy_scripts: Emissary's LuaTest (t_lua_scripts.py)", function()
  -- The KAT sets Lua-Scripts-Enabled from $LUA_SCRIPTS_ENABLED (= Processed);
  -- expanding it is the Module loader's job, so the value is written out here.
  local LUA_TEST = [[
function envoy_on_response(response_handle)
  response_handle:headers():add("Lua-Scripts-Enabled", "Processed")
end
]]

  it("adds Lua-Scripts-Enabled: Processed to the response of /target/", function()
    local chain = helpers.chain(LUA_TEST)
    local r = chain:request({ path = "/target/", authority = "kat.example.com" })
    assert.are.equal("target", r.route.name)
    local resp = r:respond_upstream({ status = 200, headers = { ["content-type"] = "text/plain" } })
    assert.is_nil(resp.error)
    assert.are.equal("Processed", resp.headers["lua-scripts-enabled"])
    assert.are.equal("200", resp.headers[":status"])
  end)

  it("leaves the request alone (the script hooks responses only)", function()
    local chain, inst = helpers.chain(LUA_TEST)
    assert.is_nil(inst.on_request_headers)
    local r = chain:request({ path = "/target/x", authority = "kat.example.com" })
    assert.is_nil(r.headers["lua-scripts-enabled"])
  end)
end)

describe("envoy_scripts: scripts that do not compile", function()
  it("are a config error with the Lua message and line", function()
    local err = helpers.config_error("function envoy_on_request(h)\n  local x = = 1\nend\n")
    assert.is_not_nil(err)
    assert.matches("filter envoy_scripts: new() failed: lua_scripts: script:2: unexpected symbol near '='",
      err, 1, true)
  end)

  it("name the script with config.name", function()
    local err = helpers.config_error("function envoy_on_request(h)\n\n  if x then\nend\n", { name = "lua_scripts" })
    assert.matches("lua_scripts: lua_scripts:5: 'end' expected (to close 'function' at line 1) near '<eof>'",
      err, 1, true)
  end)

  it("fail at load when their top level fails, naming the line", function()
    local err = helpers.config_error("local t = nil\nlocal n = #t\n")
    assert.matches("lua_scripts: script:2: attempt to get length of local 't' (a nil value)", err, 1, true)
  end)

  it("reject a script whose envoy_on_request is not a function", function()
    local err = helpers.config_error("envoy_on_request = 42\n")
    assert.matches("lua_scripts: envoy_on_request must be a function, not number", err, 1, true)
  end)

  it("and a config the schema refuses", function()
    local err = helpers.config_error("x = 1", { fail_closed = "yes" })
    assert.matches("filter envoy_scripts: config: fail_closed must be a boolean", err, 1, true)
  end)
end)

describe("envoy_scripts: a script that throws", function()
  local THROWS = [[
function envoy_on_request(request_handle)
  request_handle:headers():add("x-before", "kept")
  if request_handle:headers():get(":path") == "/api/boom" then
    error("boom")
  end
end
]]

  it("is logged and counted, and the request goes on (fail open, as Envoy)", function()
    local chain, inst = helpers.chain(THROWS)
    local before = handler.errors
    local r = chain:request({ path = "/api/boom", authority = "api.example.com" })
    assert.is_nil(r.reply)
    assert.is_nil(r.error)
    assert.are.equal("api", r.route.name)
    assert.are.equal("kept", r.headers["x-before"]) -- edits made before the error stay
    assert.are.equal(before + 1, handler.errors)
    assert.are.equal(1, inst.errors)
    assert.are.equal("script:4: boom", inst.last_error)
    -- the next request is not affected
    local ok = chain:request({ path = "/api/fine", authority = "api.example.com" })
    assert.are.equal("api", ok.route.name)
    assert.are.equal(1, inst.errors)
  end)

  it("answers 500 with fail_closed = true", function()
    local chain, inst = helpers.chain(THROWS, { fail_closed = true })
    local r = chain:request({ path = "/api/boom", authority = "api.example.com" })
    assert.is_nil(r.cluster)
    assert.are.equal(500, r.reply.status)
    assert.are.equal(1, inst.errors)
  end)

  it("answers gRPC INTERNAL with fail_closed = true", function()
    local code = "function envoy_on_request(h) error('nope') end"
    local chain = helpers.chain(code, { fail_closed = true })
    local r = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true })
    assert.are.equal(13, r.reply.grpc_status)
    assert.are.equal(200, r.reply.http_status)
    assert.is_nil(r.cluster)
  end)

  it("in envoy_on_response: fail open keeps the response, fail closed answers 500", function()
    local code = [[
function envoy_on_response(h)
  h:headers():add("x-resp", "1")
  local t = nil
  return t.field
end
]]
    local chain, inst = helpers.chain(code)
    local r = chain:request({ path = "/target/", authority = "x" })
    local resp = r:respond_upstream({ status = 200 })
    assert.is_nil(resp.error)
    assert.is_nil(resp.reply)
    assert.are.equal("1", resp.headers["x-resp"])
    assert.matches("script:4: attempt to index local 't' (a nil value)", inst.last_error, 1, true)

    local closed = helpers.chain(code, { fail_closed = true })
    local r2 = closed:request({ path = "/target/", authority = "x" })
    local resp2 = r2:respond_upstream({ status = 200 })
    assert.are.equal(500, resp2.reply.status)
  end)

  it("that yields by itself raises Envoy's error", function()
    local chain, inst = helpers.chain("function envoy_on_request(h) coroutine.yield() end")
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("target", r.route.name)
    assert.are.equal("script performed an unexpected yield", inst.last_error)
  end)

  it("may still use coroutines of its own", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
  h:headers():add("x-gen", gen() .. gen() .. gen())
end
]])
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("123", r.headers["x-gen"])
    assert.are.equal(0, inst.errors)
  end)
end)

describe("envoy_scripts: the instruction budget", function()
  it("stops a runaway loop; the request goes on and the proxy keeps serving", function()
    local chain, inst = helpers.chain("function envoy_on_request(h)\n  while true do end\nend\n")
    local t0 = os.clock()
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.is_true(os.clock() - t0 < 2)
    assert.are.equal("target", r.route.name)
    assert.are.equal("script:2: script exceeded its instruction budget (10000000 instructions)", inst.last_error)
    local again = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("target", again.route.name)
    assert.are.equal(2, inst.errors)
  end)

  it("cannot be caught by pcall, xpcall or coroutine.resume", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  while true do
    pcall(function() while true do end end)
    xpcall(function() while true do end end, debug.traceback)
    coroutine.resume(coroutine.create(function() while true do end end))
  end
end
]], { max_instructions = 100000 })
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("target", r.route.name)
    assert.matches("script exceeded its instruction budget (100000 instructions)", inst.last_error, 1, true)
  end)

  it("answers 500 when fail_closed", function()
    local chain = helpers.chain("function envoy_on_request(h) while true do end end",
      { fail_closed = true, max_instructions = 50000 })
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal(500, r.reply.status)
  end)

  it("holds for a runaway top level too: a config error", function()
    local err = helpers.config_error("local i = 0\nwhile true do i = i + 1 end\n", { max_instructions = 50000 })
    assert.matches("lua_scripts: script:2: script exceeded its instruction budget (50000 instructions)", err, 1, true)
  end)

  it("covers code a script loads with loadstring", function()
    local chain, inst = helpers.chain([[
local spin = loadstring("while true do end")
function envoy_on_request(h) spin() end
]], { max_instructions = 50000 })
    chain:request({ path = "/target/", authority = "x" })
    assert.matches("script exceeded its instruction budget", inst.last_error, 1, true)
  end)

  it("is per call: ordinary scripts never hit it", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  local n = 0
  for i = 1, 1000 do n = n + i end
  h:headers():add("x-sum", n)
end
]], { max_instructions = 20000 })
    for _ = 1, 50 do
      local r = chain:request({ path = "/target/", authority = "x" })
      assert.are.equal("500500", r.headers["x-sum"])
    end
    assert.are.equal(0, inst.errors)
  end)
end)

describe("envoy_scripts: scripts proved to end run without the budget", function()
  it("the guide's snippet is proved: no budget, no hook, the same behaviour, many calls", function()
    local had_hook, had_mask, had_count = debug.gethook() -- a coverage tool's, or a budgeted spec's above
    debug.sethook()
    local chain, inst = helpers.chain(guide_script())
    assert.is_true(inst.proved)
    assert.are.equal(0, inst.limit)
    for i = 1, 300 do -- enough calls for the JIT to compile the script
      local r = chain:request({ path = "/api/users", authority = "api.example.com:" .. (8000 + i) })
      assert.are.equal("api", r.route.name)
      assert.are.equal("api.example.com", r.authority)
    end
    assert.are.equal(0, inst.errors)
    -- It keeps nothing of a call, so one handle and map object served all 300.
    assert.is_true(inst.confined)
    assert.are.equal(1, inst.n_free)
    assert.is_nil(debug.gethook()) -- loading and running it left no count hook behind
    if had_hook then debug.sethook(had_hook, had_mask, had_count) end
  end)

  it("a script with a loop keeps its budget; max_instructions = 0 turns the budget off without a proof", function()
    local _, looping = helpers.chain("function envoy_on_request(h) for i = 1, 3 do end end",
      { max_instructions = 5000 })
    assert.is_false(looping.proved)
    assert.are.equal(5000, looping.limit)
    local _, off = helpers.chain(guide_script(), { max_instructions = 0 })
    assert.is_false(off.proved)
    assert.are.equal(0, off.limit)
  end)

  it("a script calling pcall is not proved, so the budget still cannot be caught", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  pcall(spin)
end
function spin() while true do end end
]], { max_instructions = 50000 })
    assert.is_false(inst.proved)
    chain:request({ path = "/target/", authority = "x" })
    assert.matches("script exceeded its instruction budget (50000 instructions)", inst.last_error, 1, true)
  end)
end)

describe("envoy_scripts: Envoy's API rules", function()
  it("a handle kept past its call raises 'object used outside of proper scope'", function()
    local chain, inst = helpers.chain([[
saved = nil
function envoy_on_request(request_handle)
  saved = request_handle
end
function envoy_on_response(response_handle)
  local ok, err = pcall(function() local m = saved:headers() return m end)
  response_handle:headers():add("x-err", err)
  saved:logInfo("never")
end
]])
    local r = chain:request({ path = "/target/", authority = "x" })
    local resp = r:respond_upstream({ status = 200 })
    assert.are.equal("script:6: object used outside of proper scope", resp.headers["x-err"])
    assert.are.equal("script:8: object used outside of proper scope", inst.last_error)
  end)

  it("header maps kept past their call die too", function()
    local chain, inst = helpers.chain([[
local kept
function envoy_on_request(h)
  if kept then kept:get(":path") end
  kept = h:headers()
end
]])
    assert.is_true(inst.proved)
    assert.is_false(inst.confined) -- it keeps a map: its objects are made per call
    chain:request({ path = "/target/", authority = "x" })
    assert.are.equal(0, inst.errors)
    chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("script:3: object used outside of proper scope", inst.last_error)
  end)

  it("a confined script's reused objects act on each call's own stream, after a failed call too", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  local p = h:headers():get(":path")
  if p == "/target/fail" then error("boom") end
  h:headers():add("x-p", p)
end
]])
    assert.is_true(inst.confined)
    for i = 1, 50 do
      local path = i % 3 == 0 and "/target/fail" or ("/target/" .. i)
      local r = chain:request({ path = path, authority = "x" })
      if i % 3 == 0 then
        assert.is_nil(r.headers["x-p"])
      else
        assert.are.equal(path, r.headers["x-p"])
      end
    end
    assert.are.equal(16, inst.errors)
    assert.are.equal("script:3: boom", inst.last_error)
    assert.are.equal(1, inst.n_free)
  end)

  it("respond() on the response path raises Envoy's error", function()
    local chain, inst = helpers.chain([[
function envoy_on_response(h)
  h:respond({[":status"] = "403"}, "nope")
end
]])
    local r = chain:request({ path = "/target/", authority = "x" })
    local resp = r:respond_upstream({ status = 200 })
    assert.is_nil(resp.reply)
    assert.are.equal("script:2: respond not currently supported in the response path", inst.last_error)
  end)

  it("respond() needs a :status in 200-599", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  h:respond({[":status"] = "100"}, "nope")
end
]])
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("target", r.route.name)
    assert.are.equal("script:2: :status must be between 200-599", inst.last_error)
    local chain2, inst2 = helpers.chain("function envoy_on_request(h) h:respond({['x-a'] = 'b'}) end")
    chain2:request({ path = "/target/", authority = "x" })
    assert.are.equal("script:1: :status must be between 200-599", inst2.last_error)
  end)

  it("response headers freeze once the script waits for the trailers", function()
    local chain, inst = helpers.chain([[
function envoy_on_response(h)
  h:headers():add("x-early", "yes")
  local trailers = h:trailers()
  trailers:replace("grpc-message", "seen by lua")
  h:headers():add("x-late", "no")
end
]])
    local r = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true })
    local resp = r:respond_upstream({ status = 200, headers = { ["content-type"] = "application/grpc" },
      trailers = { ["grpc-status"] = "0", ["grpc-message"] = "ok" } })
    assert.are.equal("yes", resp.headers["x-early"])
    assert.is_nil(resp.headers["x-late"])
    assert.are.equal("seen by lua", resp.trailers["grpc-message"])
    assert.are.equal("script:5: header map can no longer be modified", inst.last_error)
  end)

  it("trailers() gives nil when the response ends without trailers", function()
    local chain, inst = helpers.chain([[
function envoy_on_response(h)
  local t = h:trailers()
  got = t == nil and "nil" or "trailers"
end
]])
    local r = chain:request({ path = "/target/", authority = "x" })
    r:respond_upstream({ status = 204 })
    assert.is_nil(inst.env.got) -- still waiting: the exchange has not ended
    r:finish()
    assert.are.equal("nil", inst.env.got)
    assert.are.equal(0, inst.errors)
  end)

  it("a map being iterated cannot change, nor after a loop left with break", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  local mode = h:headers():get("x-mode")
  if mode == "during" then
    for k, v in pairs(h:headers()) do h:headers():add("x-copy", v) end
  elseif mode == "break" then
    for k, v in pairs(h:headers()) do break end
    h:headers():add("x-after", "1")
  elseif mode == "second" then
    for k in pairs(h:headers()) do
      for k2 in pairs(h:headers()) do end
    end
  else
    for k, v in pairs(h:headers()) do end
    h:headers():add("x-after", "1")
  end
end
]])
    chain:request({ path = "/target/", authority = "x", headers = { ["x-mode"] = "during" } })
    assert.are.equal("script:4: header map cannot be modified while iterating", inst.last_error)
    chain:request({ path = "/target/", authority = "x", headers = { ["x-mode"] = "break" } })
    assert.are.equal("script:7: header map cannot be modified while iterating", inst.last_error)
    chain:request({ path = "/target/", authority = "x", headers = { ["x-mode"] = "second" } })
    assert.are.equal("script:10: cannot create a second iterator before completing the first", inst.last_error)
    local errors = inst.errors
    local r = chain:request({ path = "/target/", authority = "x", headers = { ["x-mode"] = "done" } })
    assert.are.equal("1", r.headers["x-after"])
    assert.are.equal(errors, inst.errors)
  end)

  it("reports bad arguments the way luaL_check* does", function()
    local chain, inst = helpers.chain("function envoy_on_request(h) h:headers():add('x-a', {}) end")
    chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("script:1: bad argument #2 to 'add' (string expected, got table)", inst.last_error)
  end)

  it("calls Envoy has and nuncio does not raise 'not supported'", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  h:httpCall("auth", {[":method"] = "GET", [":path"] = "/", [":authority"] = "auth"}, "", 100)
end
]])
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("target", r.route.name)
    assert.are.equal("script:2: httpCall() is not supported by nuncio", inst.last_error)
    local chain2, inst2 = helpers.chain("function envoy_on_request(h) h:importPublicKey('k', 1) end")
    chain2:request({ path = "/target/", authority = "x" })
    assert.are.equal("script:1: importPublicKey() is not supported by nuncio", inst2.last_error)
  end)
end)

describe("envoy_scripts: the script's environment", function()
  it("keeps the script's globals there, across requests, out of the proxy's _G", function()
    local chain, inst = helpers.chain([[
count = 0
function envoy_on_request(h)
  count = count + 1
  h:headers():add("x-count", count)
end
]])
    chain:request({ path = "/target/", authority = "x" })
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("2", r.headers["x-count"])
    assert.are.equal(2, inst.env.count)
    assert.is_nil(rawget(_G, "count"))
    assert.is_nil(rawget(_G, "envoy_on_request"))
  end)

  it("has the standard libraries a script needs, not nuncio's internals", function()
    local chain, inst = helpers.chain([[
function envoy_on_request(h)
  local out = {}
  out[#out + 1] = string.format("%s-%d", string.upper("ok"), math.max(1, 2))
  out[#out + 1] = tostring(type(table.concat) == "function" and type(os.time()) == "number")
  out[#out + 1] = tostring(bit.band(6, 3))
  out[#out + 1] = tostring(io == nil and ffi == nil and jit == nil and package == nil)
  out[#out + 1] = tostring(os.exit == nil and os.execute == nil and getfenv == nil)
  out[#out + 1] = tostring(pcall(require, "nuncio.stream"))
  out[#out + 1] = tostring(require("string") == string)
  out[#out + 1] = tostring(EnvoyTimestampResolution.MILLISECOND)
  out[#out + 1] = tostring(select(2, loadstring(string.dump(function() end))))
  h:headers():add("x-env", table.concat(out, "|"))
end
]])
    local r = chain:request({ path = "/target/", authority = "x" })
    assert.are.equal(0, inst.errors)
    local parts = {}
    for p in (r.headers["x-env"] .. "|"):gmatch("(.-)|") do parts[#parts + 1] = p end
    assert.are.same({
      "OK-2", "true", "2", "true", "true", "false", "true", "0",
      "binary chunks are not allowed in lua_scripts",
    }, parts)
  end)

  it("a script cannot change the proxy's string library", function()
    local chain, inst = helpers.chain([[
string.upper = nil
getmetatable("").__index.lower = nil
function envoy_on_request(h) end
]])
    chain:request({ path = "/target/", authority = "x" })
    assert.are.equal("function", type(string.upper))
    assert.are.equal("function", type(("X").lower))
    assert.are.equal(0, inst.errors)
  end)
end)
