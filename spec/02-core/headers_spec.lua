-- Header routing and rewrites as a user checks them: Ambassador YAML in, requests through
-- nuncio.testing, what the upstream (and the client) would get out
-- (reference/ambassador-behaviour.md §1.6-§1.9, §5.1-§5.2).
local testing = require("nuncio.testing")
local strip_host_port = require("strip_host_port")

local HOST = [[
---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: any}
spec: {hostname: "*", requestPolicy: {insecure: {action: Route}}}
]]

local function yaml_doc(kind, name, lines)
  return "---\napiVersion: getambassador.io/v3alpha1\nkind: " .. kind .. "\nmetadata: {name: " .. name
    .. "}\nspec:\n  " .. table.concat(lines, "\n  ") .. "\n"
end

local function mapping(name, lines)
  local body = { 'hostname: "*"', "prefix: /" .. name .. "/", "service: " .. name .. "-svc" }
  for _, l in ipairs(lines or {}) do
    body[#body + 1] = l
  end
  return yaml_doc("Mapping", name, body)
end

local function module(lines)
  local body = { "config:" }
  for _, l in ipairs(lines) do
    body[#body + 1] = "  " .. l
  end
  return yaml_doc("Module", "ambassador", body)
end

local function chain_of(text, filters)
  return testing.chain({ ambassador = text .. HOST, filters = filters })
end

local function count(list, want)
  local n = 0
  for _, v in ipairs(list) do
    if v == want then
      n = n + 1
    end
  end
  return n
end

describe("header routing", function()
  it("routes on query parameters: exact, presence and regex", function()
    local chain = chain_of(mapping("q", {}) .. yaml_doc("Mapping", "beta", { 'hostname: "*"', "prefix: /q/",
      "service: beta", "query_parameters: {beta: true}" }) .. yaml_doc("Mapping", "v2", { 'hostname: "*"',
      "prefix: /q/", "service: v2", "query_parameters: {version: '2'}", "regex_query_parameters: {user: '^u[0-9]+$'}" }))
    assert.equal("beta", chain:request({ path = "/q/x?beta" }).route.name)
    assert.equal("v2", chain:request({ path = "/q/x?user=u7&version=2" }).route.name)
    assert.equal("q", chain:request({ path = "/q/x?user=bob&version=2" }).route.name)
    assert.equal("q", chain:request({ path = "/q/x" }).route.name)
  end)

  it("routes on pseudo-headers and header presence", function()
    local chain = chain_of(mapping("p", {}) .. yaml_doc("Mapping", "del", { 'hostname: "*"', "prefix: /p/",
      "service: del", "headers: {':method': DELETE}" }) .. yaml_doc("Mapping", "api", { 'hostname: "*"',
      "prefix: /p/", "service: api", "regex_headers: {':authority': '^api\\..*'}" })
      .. yaml_doc("Mapping", "flag", { 'hostname: "*"', "prefix: /p/", "service: flag", "headers: {x-flag: true}" }))
    assert.equal("del", chain:request({ path = "/p/1", method = "DELETE" }).route.name)
    assert.equal("api", chain:request({ path = "/p/1", authority = "api.example.com" }).route.name)
    assert.equal("flag", chain:request({ path = "/p/1", headers = { ["x-flag"] = "whatever" } }).route.name)
    assert.equal("p", chain:request({ path = "/p/1" }).route.name)
  end)

  it("splits 10 000 requests by weight within 2 %", function()
    local chain = chain_of(yaml_doc("Mapping", "stable", { 'hostname: "*"', "prefix: /svc/", "service: stable" })
      .. yaml_doc("Mapping", "canary", { 'hostname: "*"', "prefix: /svc/", "service: canary", "weight: 30" })
      .. yaml_doc("Mapping", "tiny", { 'hostname: "*"', "prefix: /svc/", "service: tiny", "weight: 5" }))
    local n, seen = 10000, { stable = 0, canary = 0, tiny = 0 }
    for _ = 1, n do
      local r = chain:request({ path = "/svc/x" })
      seen[r.route.name] = seen[r.route.name] + 1
      assert.equal(r.route.name, r.cluster.host)
      r:finish()
    end
    assert.is_true(math.abs(seen.canary / n - 0.30) < 0.02, "canary " .. seen.canary)
    assert.is_true(math.abs(seen.tiny / n - 0.05) < 0.02, "tiny " .. seen.tiny)
    assert.is_true(math.abs(seen.stable / n - 0.65) < 0.02, "stable " .. seen.stable)
  end)

  it("splits evenly between weightless twins", function()
    local chain = chain_of(yaml_doc("Mapping", "a", { 'hostname: "*"', "prefix: /svc/", "service: a" })
      .. yaml_doc("Mapping", "b", { 'hostname: "*"', "prefix: /svc/", "service: b" }))
    local a = 0
    for _ = 1, 4000 do
      local r = chain:request({ path = "/svc/x" })
      if r.route.name == "a" then a = a + 1 end
      r:finish()
    end
    assert.is_true(math.abs(a / 4000 - 0.5) < 0.03, "a " .. a)
  end)
end)

describe("header rewrites", function()
  it("appends, replaces and removes request headers; removal comes first", function()
    local chain = chain_of(mapping("m", { "add_request_headers:", "    x-tag: added",
      "    x-mode: {value: forced, append: false}", "    x-clean: {value: new, append: false}",
      "remove_request_headers: [x-secret, x-clean]" }))
    local r = chain:request({ path = "/m/x", headers = { ["x-tag"] = "client", ["x-mode"] = { "a", "b" },
      ["x-secret"] = "s", ["x-clean"] = "old" } })
    local got = r.stream.request:get_all("x-tag")
    assert.same({ "client", "added" }, got)
    assert.same({ "forced" }, r.stream.request:get_all("x-mode"))
    assert.is_nil(r.headers["x-secret"])
    assert.same({ "new" }, r.stream.request:get_all("x-clean"))
  end)

  it("fills in Envoy's %…% variables; unknown ones go as written, empty values are not sent", function()
    local chain = chain_of(mapping("m", { "add_request_headers:",
      "    x-client-ip: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%'",
      "    x-client: '%DOWNSTREAM_REMOTE_ADDRESS%'",
      "    x-proto: 'via %PROTOCOL%'",
      "    x-who: 'user=%REQ(X-User)%'",
      "    x-maybe: '%REQ(x-missing)%'",
      "    x-cluster: '%UPSTREAM_CLUSTER%'",
      "    x-odd: '%NOT_A_VAR% 100%%'" }))
    local r = chain:request({ path = "/m/x", headers = { ["x-user"] = "ann" } })
    assert.equal("127.0.0.1", r.headers["x-client-ip"])
    assert.equal("127.0.0.1:0", r.headers["x-client"])
    assert.equal("via HTTP/2", r.headers["x-proto"])
    assert.equal("user=ann", r.headers["x-who"])
    assert.is_nil(r.headers["x-maybe"])
    assert.equal("m_svc_80", r.headers["x-cluster"])
    assert.equal("%NOT_A_VAR% 100%", r.headers["x-odd"])
  end)

  it("rewrites the host after routing, without routing again", function()
    local chain = chain_of(mapping("m", { "host_rewrite: backend.internal", "rewrite: /v1/" }))
    local r = chain:request({ path = "/m/x", authority = "api.example.com" })
    assert.equal("m", r.route.name)
    assert.equal("backend.internal", r.authority)
    assert.equal("/v1/x", r.path)
  end)

  it("rewrites response headers before the filters see them", function()
    local seen = {}
    local spy = { name = "spy", module = { new = function() return {
      on_response_headers = function(_, s)
        seen.added = s.response:get("x-served-by")
        seen.removed = s.response:get("x-internal")
        seen.server = s.response:get("server")
      end } end } }
    local chain = chain_of(mapping("m", { "add_response_headers: {x-served-by: '%UPSTREAM_CLUSTER%', "
      .. "x-echo: '%RESP(x-upstream)%/%REQ(x-user)%'}", "remove_response_headers: x-internal" }), { spy })
    assert.is_true(chain.chain.wants.response_headers)
    local r = chain:request({ path = "/m/x", headers = { ["x-user"] = "ann" } })
    local resp = r:respond_upstream({ status = 200, headers = { ["x-internal"] = "1", ["x-upstream"] = "up",
      server = "gunicorn" } })
    assert.is_nil(resp.error)
    assert.same({ added = "m_svc_80", server = "gunicorn" }, seen)
    assert.equal("m_svc_80", resp.headers["x-served-by"])
    assert.equal("up/ann", resp.headers["x-echo"])
    assert.is_nil(resp.headers["x-internal"])
    -- `server` is written by the C core as the response goes out (after every filter), so
    -- the chain leaves the upstream's alone; test_grpc / test_authority check the header
    -- clients get (Emissary's default "envoy", Module server_name, local replies too).
    assert.equal("gunicorn", resp.headers.server)
  end)

  it("hands Module server_name to the core (default: Emissary's envoy)", function()
    -- the header itself is the core's (see test_authority.ServerNameTest)
    assert.equal("edge-7", chain_of(module({ "server_name: edge-7" }) .. mapping("m")).model.http.server_name)
    assert.equal("envoy", chain_of(mapping("m")).model.http.server_name)
    -- and no response phase runs just for it
    assert.is_false(chain_of(mapping("m")).chain.wants.response_headers)
  end)

  it("applies the Module's defaults unless the Mapping overrides them", function()
    local chain = chain_of(module({ "defaults:", "  httpmapping:",
      "    add_request_headers: {x-team: {value: platform, append: false}}",
      "    remove_response_headers: [x-powered-by]" })
      .. mapping("a") .. mapping("b", { "add_request_headers: {}", "remove_response_headers: []" }))
    local a = chain:request({ path = "/a/x", headers = { ["x-team"] = "client" } })
    assert.equal("platform", a.headers["x-team"])
    assert.is_nil(a:respond_upstream({ headers = { ["x-powered-by"] = "php" } }).headers["x-powered-by"])
    local b = chain:request({ path = "/b/x", headers = { ["x-team"] = "client" } })
    assert.equal("client", b.headers["x-team"])
    assert.equal("php", b:respond_upstream({ headers = { ["x-powered-by"] = "php" } }).headers["x-powered-by"])
  end)
end)

describe("x-request-id", function()
  local UUID4 = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

  it("is a new UUID v4 for every request, replacing the client's", function()
    local chain = chain_of(mapping("m"))
    local ids = {}
    for i = 1, 50 do
      local r = chain:request({ path = "/m/x", headers = i % 2 == 0 and { ["x-request-id"] = "mine" } or nil })
      local id = r.headers["x-request-id"]
      assert.matches(UUID4, id)
      assert.is_nil(ids[id])
      ids[id] = true
    end
  end)

  it("keeps the client's with preserve_external_request_id", function()
    local chain = chain_of(module({ "preserve_external_request_id: true" }) .. mapping("m"))
    assert.equal("mine", chain:request({ path = "/m/x", headers = { ["x-request-id"] = "mine" } })
      .headers["x-request-id"])
    assert.matches(UUID4, chain:request({ path = "/m/x" }).headers["x-request-id"])
  end)
end)

describe("strip_matching_host_port", function()
  it("strips only the listener's port, IPv6 literals included (the filter alone)", function()
    local strip = strip_host_port.strip
    assert.equal("api.example.com", strip("api.example.com:8080", 8080))
    assert.equal("api.example.com:443", strip("api.example.com:443", 8080))
    assert.equal("[::1]", strip("[::1]:8080", 8080))
    assert.equal("[::1]", strip("[::1]", 8080))
    assert.equal("[::1]:443", strip("[::1]:443", 8080))
    assert.equal("api.example.com", strip("api.example.com", 8080))
    assert.equal("api.example.com:", strip("api.example.com:", 8080))
    assert.equal("api.example.com:80x", strip("api.example.com:80x", 8080))
    assert.equal("api.example.com:008080", strip("api.example.com:008080", 8080))
    assert.equal("", strip(":8080", 8080))
    assert.equal("", strip("", 8080))
    assert.is_nil(strip(nil, 8080))
    assert.equal("[::1:8080", strip("[::1:8080", 8080)) -- no closing bracket: no port to find
    assert.equal("a:8080", strip("a:8080", 0))          -- no listener port known
  end)

  it("runs first in the chain when the Module sets it, before user filters and routing", function()
    local seen
    local spy = { name = "spy", module = { new = function() return {
      on_request_headers = function(_, s) seen = s:authority() end } end } }
    local chain = chain_of(module({ "strip_matching_host_port: true" })
      .. yaml_doc("Mapping", "api", { "hostname: api.example.com", "prefix: /", "service: api" }), { spy })
    chain.local_port = 8443
    do
      local r = chain:request({ authority = "api.example.com:8443" })
      assert.equal("api", r.route.name)
      assert.equal("api.example.com", r.authority) -- the upstream sees the stripped authority
      assert.equal("api.example.com", seen)
      assert.equal(404, chain:request({ authority = "api.example.com:443" }).reply.status)
      assert.equal("[::1]", chain:request({ authority = "[::1]:8443" }).authority)
      assert.equal("", chain:request({ authority = "" }).authority)
      assert.equal("host:", chain:request({ authority = "host:" }).authority)
    end
  end)

  it("is not in the chain without the Module setting", function()
    local chain = chain_of(yaml_doc("Mapping", "api", { "hostname: api.example.com", "prefix: /", "service: api" }))
    chain.local_port = 8443
    do
      assert.equal(404, chain:request({ authority = "api.example.com:8443" }).reply.status)
    end
  end)
end)

describe("merge_slashes and reject_requests_with_escaped_slashes", function()
  it("merges runs of slashes in the path (not the query) before routing; the upstream gets it too", function()
    local chain = chain_of(module({ "merge_slashes: true" }) .. mapping("a", { 'rewrite: ""' }))
    local r = chain:request({ path = "//a///b//c?next=//x" })
    assert.equal("a", r.route.name)
    assert.equal("/a/b/c?next=//x", r.path)
  end)

  it("answers 400 for %2F or %5C in the path, not in the query", function()
    local chain = chain_of(module({ "reject_requests_with_escaped_slashes: true" }) .. mapping("a"))
    assert.equal(400, chain:request({ path = "/a/%2Fetc" }).reply.status)
    assert.equal(400, chain:request({ path = "/a/x%5cy" }).reply.status)
    assert.equal(400, chain:request({ path = "/a/x%2f" }).reply.status)
    local g = chain:request({ path = "/a/x%2F", grpc = true })
    assert.equal(400, g.reply.status)
    assert.equal(200, g.reply.http_status) -- a trailers-only gRPC answer
    assert.equal(13, g.reply.grpc_status)  -- 400 -> INTERNAL, as Envoy
    local ok = chain:request({ path = "/a/x?to=%2F" })
    assert.is_nil(ok.reply)
    assert.equal("a", ok.route.name)
    assert.is_nil(chain:request({ path = "/a/%20" }).reply)
  end)
end)

describe("Module lua_scripts", function()
  local calls
  -- A stand-in for filters/envoy_scripts: the chain's wiring, not the Envoy API, is tested here.
  local stub = {
    new = function(config)
      if config.code:find("BOOM", 1, true) then
        error("the script failed to start: BOOM")
      end
      calls[#calls + 1] = "new:" .. config.name .. ":" .. tostring(config.fail_closed)
      return {
        on_request_headers = function(_, s)
          calls[#calls + 1] = "script:" .. s:authority()
          s.request:set("x-script", config.code)
        end,
      }
    end,
  }

  before_each(function()
    calls = {}
    package.loaded["envoy_scripts"] = stub
  end)
  after_each(function()
    package.loaded["envoy_scripts"] = nil
  end)

  it("runs the script after strip_host_port and before the user's filters", function()
    local user = { name = "user", module = { new = function() return {
      on_request_headers = function(_, s) calls[#calls + 1] = "user:" .. tostring(s.request:get("x-script")) end,
    } end } }
    local chain = chain_of(module({ "strip_matching_host_port: true", "lua_scripts: 'x = 1'" }) .. mapping("a"),
      { user })
    chain.local_port = 8080
    do
      local r = chain:request({ path = "/a/x", authority = "h:8080" })
      assert.equal("a", r.route.name)
    end
    assert.same({ "new:lua_scripts:false", "script:h", "user:x = 1" }, calls)
  end)

  it("turns a script that cannot start into a config error naming the Module's line and field", function()
    local ok, err = pcall(chain_of, module({ "lua_scripts: 'BOOM = 1'" }) .. mapping("a"))
    assert.is_false(ok)
    assert.matches("%S+:7: Module ambassador: config.lua_scripts: the script failed to start: BOOM", err)
  end)
end)
