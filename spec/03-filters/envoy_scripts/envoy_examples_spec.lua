-- Well-known Envoy Lua scripts, in the style of Envoy's lua_filter
-- documentation and the scripts Ambassador users paste into lua_scripts,
-- run unchanged through the handle.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local helpers = dofile(here .. "helpers.lua")

local function run(code, req, resp, extra)
  local chain, inst = helpers.chain(code, extra)
  req = req or {}
  req.path = req.path or "/target/"
  req.authority = req.authority or "kat.example.com"
  local r = chain:request(req)
  local out
  if resp then out = r:respond_upstream(resp) end
  return r, out, inst
end

describe("Envoy doc-style scripts", function()
  it("add a request header and a response header (the Lua sandbox example)", function()
    local r, resp, inst = run([[
function envoy_on_request(request_handle)
  request_handle:headers():add("foo", "bar")
end

function envoy_on_response(response_handle)
  body_size = response_handle:body():length()
  response_handle:headers():add("response-body-size", tostring(body_size))
end
]], nil, { status = 200, headers = { ["content-type"] = "application/json" }, body = "{\"path\":\"/\"}" })
    assert.are.equal("bar", r.headers["foo"])
    assert.are.equal("12", resp.headers["response-body-size"])
    assert.are.equal(0, inst.errors)
  end)

  it("read :path and refuse with respond({[\":status\"] = \"403\"}, \"nope\")", function()
    local code = [[
function envoy_on_request(request_handle)
  local path = request_handle:headers():get(":path")
  if path:find("^/target/admin") then
    request_handle:respond({[":status"] = "403", ["x-denied-by"] = "lua"}, "nope")
  end
  request_handle:headers():add("x-allowed", "yes")
end
]]
    local r = run(code, { path = "/target/admin/users" })
    assert.is_nil(r.cluster)
    assert.are.equal(403, r.reply.status)
    assert.are.equal("nope", r.reply.body)
    assert.are.equal("lua", r.reply.headers["x-denied-by"])
    assert.is_nil(r.headers["x-allowed"]) -- nothing after respond() runs
    local ok = run(code, { path = "/target/public" })
    assert.is_nil(ok.reply)
    assert.are.equal("yes", ok.headers["x-allowed"])
  end)

  it("respond() to a gRPC call is a trailers-only reply with the mapped status", function()
    local r = run([[
function envoy_on_request(request_handle)
  if request_handle:headers():get("authorization") == nil then
    request_handle:respond({[":status"] = "401", ["www-authenticate"] = {"Bearer", "Basic"}}, "missing token")
  end
end
]], { path = "/helloworld.Greeter/SayHello", grpc = true })
    assert.are.equal(200, r.reply.http_status)
    assert.are.equal(16, r.reply.grpc_status) -- UNAUTHENTICATED
    assert.are.equal("missing token", r.reply.grpc_message)
    assert.are.equal("application/grpc", r.reply.headers["content-type"])
  end)

  it("iterate the headers with pairs(), repeated names included", function()
    local r = run([[
function envoy_on_request(request_handle)
  local seen = {}
  for key, value in pairs(request_handle:headers()) do
    if key:sub(1, 1) == ":" or key:sub(1, 4) == "x-h-" then
      seen[#seen + 1] = key .. "=" .. value
    end
  end
  request_handle:headers():add("x-seen", table.concat(seen, ";"))
end
]], { method = "GET", headers = { ["x-h-a"] = { "1", "2" } } })
    local seen = r.headers["x-seen"]
    assert.matches(":method=GET", seen, 1, true)
    assert.matches(":authority=kat.example.com", seen, 1, true)
    assert.matches(":path=/target/", seen, 1, true)
    assert.matches("x-h-a=1;x-h-a=2", seen, 1, true)
  end)

  it("get() joins repeated values with ','; getAtIndex() (0-based) and getNumValues() split them", function()
    local r = run([[
function envoy_on_request(request_handle)
  local h = request_handle:headers()
  h:add("x-joined", h:get("X-Forwarded-Client"))
  h:add("x-count", h:getNumValues("x-forwarded-client"))
  h:add("x-first", h:getAtIndex("x-forwarded-client", 0))
  h:add("x-second", h:getAtIndex("x-forwarded-client", 1))
  h:add("x-third", tostring(h:getAtIndex("x-forwarded-client", 2)))
  h:add("x-none", h:getNumValues("x-absent") .. tostring(h:get("x-absent")))
end
]], { headers = { ["x-forwarded-client"] = { "a", "b,c" } } })
    assert.are.equal("a,b,c", r.headers["x-joined"])
    assert.are.equal("2", r.headers["x-count"])
    assert.are.equal("a", r.headers["x-first"])
    assert.are.equal("b,c", r.headers["x-second"])
    assert.are.equal("nil", r.headers["x-third"])
    assert.are.equal("0nil", r.headers["x-none"])
  end)

  it("replace() sets or adds, remove() drops every value, names in any case", function()
    local r = run([[
function envoy_on_request(request_handle)
  local h = request_handle:headers()
  h:replace("X-Multi", "one")
  h:replace("x-new", "added")
  h:remove("X-Secret")
end
]], { headers = { ["x-multi"] = { "1", "2" }, ["x-secret"] = { "s1", "s2" } } })
    assert.are.equal("one", r.headers["x-multi"])
    assert.are.equal("added", r.headers["x-new"])
    assert.is_nil(r.headers["x-secret"])
  end)

  it("rewrite :path and re-route (header changes clear the route cache)", function()
    local r = run([[
function envoy_on_request(request_handle)
  local path = request_handle:headers():get(":path")
  if path:sub(1, 8) == "/legacy/" then
    request_handle:headers():replace(":path", "/api/" .. path:sub(9))
    request_handle:headers():replace(":authority", "api.example.com")
  end
end
]], { path = "/legacy/users" })
    assert.are.equal("api", r.route.name)
    assert.are.equal("/users", r.path) -- the api Mapping's default rewrite "/"
  end)

  it("pass request data to the response with dynamicMetadata() set/get/pairs", function()
    local _, resp, inst = run([[
function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  request_handle:streamInfo():dynamicMetadata():set("envoy.filters.http.lua", "request.info", {
    auth = headers:get("authorization"),
    token = headers:get("x-request-token"),
  })
  request_handle:streamInfo():dynamicMetadata():set("envoy.filters.http.lua", "n", 7)
end

function envoy_on_response(response_handle)
  local meta = response_handle:streamInfo():dynamicMetadata():get("envoy.filters.http.lua")["request.info"]
  response_handle:logInfo("Auth: " .. meta.auth .. ", token: " .. meta.token)
  response_handle:headers():add("x-auth", meta.auth)
  response_handle:headers():add("x-token", meta.token)
  local names = {}
  for name, value in pairs(response_handle:streamInfo():dynamicMetadata()) do
    names[#names + 1] = name .. ":" .. value.n
  end
  response_handle:headers():add("x-meta", table.concat(names, ","))
end
]], { headers = { authorization = "Bearer t0k", ["x-request-token"] = "abc" } }, { status = 200 })
    assert.are.equal(0, inst.errors)
    assert.are.equal("Bearer t0k", resp.headers["x-auth"])
    assert.are.equal("abc", resp.headers["x-token"])
    assert.are.equal("envoy.filters.http.lua:7", resp.headers["x-meta"])
  end)

  it("dynamicMetadata() is stream.ctx.dynamic_metadata, shared with native filters", function()
    local r = run([[
function envoy_on_request(h)
  h:streamInfo():dynamicMetadata():set("my.filter", "user", "alice")
end
]])
    assert.are.same({ ["my.filter"] = { user = "alice" } }, r.stream.ctx.dynamic_metadata)
  end)

  it("base64Escape()", function()
    local r = run([[
function envoy_on_request(request_handle)
  local h = request_handle:headers()
  h:add("x-b64-1", request_handle:base64Escape("hello"))
  h:add("x-b64-2", request_handle:base64Escape("hello\0world!"))
  h:add("x-b64-3", request_handle:base64Escape("ab"))
  h:add("x-b64-4", "[" .. request_handle:base64Escape("") .. "]")
end
]])
    assert.are.equal("aGVsbG8=", r.headers["x-b64-1"])
    assert.are.equal("aGVsbG8Ad29ybGQh", r.headers["x-b64-2"])
    assert.are.equal("YWI=", r.headers["x-b64-3"])
    assert.are.equal("[]", r.headers["x-b64-4"])
  end)

  it("streamInfo(): protocol, addresses, SNI, route name, TLS", function()
    local r = run([[
function envoy_on_request(request_handle)
  local info = request_handle:streamInfo()
  local h = request_handle:headers()
  h:add("x-protocol", info:protocol())
  h:add("x-remote", info:downstreamDirectRemoteAddress())
  h:add("x-remote-xff", info:downstreamRemoteAddress())
  h:add("x-local", info:downstreamLocalAddress())
  h:add("x-sni", "[" .. info:requestedServerName() .. "]")
  h:add("x-route", info:routeName())
  h:add("x-tls", tostring(request_handle:connection():ssl() == nil and info:downstreamSslConnection() == nil))
end
]])
    assert.are.equal("HTTP/2", r.headers["x-protocol"])
    assert.are.equal("127.0.0.1:0", r.headers["x-remote"]) -- the in-process test stream's peer
    assert.are.equal("127.0.0.1:0", r.headers["x-remote-xff"])
    assert.matches("^[%d%.%[%]:a-f]+:%d+$", r.headers["x-local"])
    assert.are.equal("[]", r.headers["x-sni"])
    assert.are.equal("target", r.headers["x-route"])
    assert.are.equal("true", r.headers["x-tls"])
  end)

  it("replace and remove response headers in envoy_on_response", function()
    local _, resp = run([[
function envoy_on_response(response_handle)
  local h = response_handle:headers()
  h:replace("x-powered-by", "nuncio-lua")
  h:remove("x-internal-debug")
  if h:get(":status") == "200" then h:add("cache-control", "no-store") end
  h:setHttp1ReasonPhrase("Fine")
end
]], nil, { status = 200, headers = { ["x-powered-by"] = "express", ["x-internal-debug"] = "secret" } })
    assert.are.equal("nuncio-lua", resp.headers["x-powered-by"])
    assert.is_nil(resp.headers["x-internal-debug"])
    assert.are.equal("no-store", resp.headers["cache-control"])
  end)

  it("read request headers from the response path (downstreamRequestHeaders)", function()
    local _, resp = run([[
function envoy_on_response(response_handle)
  local req = response_handle:downstreamRequestHeaders()
  response_handle:headers():add("x-echo-path", req:get(":path"))
  response_handle:headers():add("x-original-path", req:get("x-envoy-original-path"))
  response_handle:headers():add("x-ro", tostring(req.add == nil))
end
]], { path = "/target/echo" }, { status = 200 })
    -- as the upstream got them: after the Mapping's rewrite (Envoy's router edits the map too)
    assert.are.equal("/echo", resp.headers["x-echo-path"])
    assert.are.equal("/target/echo", resp.headers["x-original-path"])
    assert.are.equal("true", resp.headers["x-ro"])
  end)

  it("rewrite grpc-message in the trailers of a gRPC response", function()
    local _, resp, inst = run([[
function envoy_on_response(response_handle)
  local trailers = response_handle:trailers()
  if trailers and trailers:get("grpc-status") ~= "0" then
    trailers:replace("grpc-message", "upstream said: " .. (trailers:get("grpc-message") or ""))
  end
end
]], { path = "/helloworld.Greeter/SayHello", grpc = true },
      { status = 200, headers = { ["content-type"] = "application/grpc" },
        trailers = { ["grpc-status"] = "7", ["grpc-message"] = "denied" } })
    assert.are.equal(0, inst.errors)
    assert.are.equal("7", resp.trailers["grpc-status"])
    assert.are.equal("upstream said: denied", resp.trailers["grpc-message"])
  end)

  it("timestamp() and timestampString()", function()
    local before = os.time() * 1000
    local r = run([[
function envoy_on_request(request_handle)
  local h = request_handle:headers()
  h:add("x-ts", string.format("%d", request_handle:timestamp()))
  h:add("x-ts-ms", string.format("%d", request_handle:timestamp(EnvoyTimestampResolution.MILLISECOND)))
  h:add("x-tss-ms", request_handle:timestampString())
  h:add("x-tss-us", request_handle:timestampString(EnvoyTimestampResolution.MICROSECOND))
  local ok, err = pcall(function()
    local t = request_handle:timestamp(EnvoyTimestampResolution.MICROSECOND)
    return t
  end)
  h:add("x-ts-err", err)
end
]])
    local ts = tonumber(r.headers["x-ts"])
    assert.is_true(ts >= before and ts < before + 60000)
    assert.is_true(tonumber(r.headers["x-ts-ms"]) >= ts)
    assert.are.equal(13, #r.headers["x-tss-ms"])
    assert.are.equal(16, #r.headers["x-tss-us"])
    assert.matches("timestamp format must be MILLISECOND.", r.headers["x-ts-err"], 1, true)
  end)

  it("log at every level, and read the (empty) route metadata", function()
    local r, _, inst = run([[
function envoy_on_request(request_handle)
  request_handle:logTrace("trace")
  request_handle:logDebug("debug")
  request_handle:logInfo("info")
  request_handle:logWarn("warn")
  request_handle:logErr("err")
  request_handle:logCritical("critical")
  local n = 0
  for k, v in pairs(request_handle:metadata()) do n = n + 1 end
  request_handle:headers():add("x-meta", tostring(request_handle:metadata():get("foo")) .. n)
  request_handle:clearRouteCache()
end
]])
    assert.are.equal(0, inst.errors)
    assert.are.equal("nil0", r.headers["x-meta"])
  end)
end)

describe("Envoy doc-style scripts with bodies", function()
  it("body() reads the whole request body; the headers can still change after it", function()
    local r, _, inst = run([[
function envoy_on_request(request_handle)
  local body = request_handle:body()
  local h = request_handle:headers()
  h:add("x-body-length", body:length())
  h:add("x-body-head", body:getBytes(0, 5))
  if body:getBytes(0, body:length()):find("forbidden", 1, true) then
    request_handle:respond({[":status"] = "400"}, "bad body")
  end
end
]], { method = "POST", body = "hello world" })
    assert.are.equal(0, inst.errors)
    assert.is_nil(r.reply)
    assert.are.equal("11", r.headers["x-body-length"])
    assert.are.equal("hello", r.headers["x-body-head"])
    local bad = run([[
function envoy_on_request(request_handle)
  if request_handle:body():getBytes(0, 9) == "forbidden" then
    request_handle:respond({[":status"] = "400"}, "bad body")
  end
end
]], { method = "POST", body = "forbidden stuff" })
    assert.are.equal(400, bad.reply.status)
  end)

  it("body() is nil without a body, an empty buffer with body(true)", function()
    local r = run([[
function envoy_on_request(h)
  h:headers():add("x-nil", tostring(h:body() == nil))
  h:headers():add("x-wrapped", h:body(true):length())
end
]])
    assert.are.equal("true", r.headers["x-nil"])
    assert.are.equal("0", r.headers["x-wrapped"])
  end)

  it("getBytes() out of range raises Envoy's error", function()
    local _, _, inst = run("function envoy_on_request(h)\n  h:body():getBytes(3, 10)\nend\n",
      { method = "POST", body = "short" })
    assert.are.equal("script:2: index/length must be >= 0 and (index + length) must be <= buffer size", inst.last_error)
  end)

  it("bodyChunks() gives the body; the headers are frozen after it", function()
    local r, _, inst = run([[
function envoy_on_request(request_handle)
  local total = 0
  for chunk in request_handle:bodyChunks() do
    total = total + chunk:length()
  end
  request_handle:logInfo("body bytes: " .. total)
  request_handle:headers():add("x-total", total)
end
]], { method = "POST", body = "0123456789" })
    assert.is_nil(r.headers["x-total"])
    assert.are.equal("script:7: header map can no longer be modified", inst.last_error)
    assert.are.equal("target", r.route.name) -- fail open
  end)

  it("objects obtained before a wait die at it, as in Envoy", function()
    local _, _, inst = run([[
function envoy_on_request(request_handle)
  local h = request_handle:headers()
  request_handle:body()
  h:add("x-a", "1")
end
]], { method = "POST", body = "data" })
    assert.are.equal("script:4: object used outside of proper scope", inst.last_error)
  end)

  it("body() after bodyChunks(), and bodyChunks() after body(), raise Envoy's errors", function()
    local _, _, inst = run([[
function envoy_on_request(h)
  for c in h:bodyChunks() do end
  h:body()
end
]], { method = "POST", body = "data" })
    assert.are.equal("script:3: cannot call body() after body has been streamed", inst.last_error)
    local _, _, inst2 = run([[
function envoy_on_request(h)
  h:body()
  h:bodyChunks()
end
]], { method = "POST", body = "data" })
    assert.are.equal("script:3: cannot call bodyChunks after body processing has begun", inst2.last_error)
  end)

  it("respond() after the body streamed raises Envoy's error", function()
    local _, _, inst = run([[
function envoy_on_request(request_handle)
  for chunk in request_handle:bodyChunks() do
    request_handle:respond({[":status"] = "400"}, "nope")
  end
end
]], { method = "POST", body = "data" })
    assert.are.equal("script:3: respond() cannot be called if headers have been continued", inst.last_error)
  end)

  it("a request script proved to end runs without a coroutine of its own: body() waits, respond() ends it", function()
    local code = [[
function envoy_on_request(h)
  local b = h:body()
  if b and b:length() > 3 then
    h:respond({ [":status"] = "413", ["x-why"] = "big" }, "too big")
  end
  h:headers():add("x-after", "reached")
end
]]
    local r, _, inst = run(code, { method = "POST", body = "0123456789" })
    assert.is_true(inst.proved)
    assert.are.equal(413, r.reply.status)
    assert.are.equal("too big", r.reply.body)
    assert.are.equal("big", r.reply.headers["x-why"])
    assert.is_nil(r.headers["x-after"]) -- respond() ended the script
    local small = run(code, { method = "POST", body = "ab" })
    assert.is_nil(small.reply)
    assert.are.equal("reached", small.headers["x-after"])
    local err_r, _, err_inst = run("function envoy_on_request(h)\n  h:headers():add(nil, 1)\nend\n")
    assert.is_true(err_inst.proved)
    assert.matches("script:2: bad argument #1 to 'add'", err_inst.last_error, 1, true)
    assert.are.equal("target", err_r.route.name) -- fail open, as with a coroutine
  end)

  it("setBytes() says it is not supported (the core cannot replace a body yet)", function()
    local _, _, inst = run("function envoy_on_request(h) h:body():setBytes('x') end",
      { method = "POST", body = "data" })
    assert.matches("setBytes() is not supported by this nuncio", inst.last_error, 1, true)
  end)
end)
