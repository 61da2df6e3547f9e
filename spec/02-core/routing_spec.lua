-- Routing and loading as a user checks them: Ambassador YAML in, a request
-- through nuncio.testing, the chosen Mapping and rewritten path out.
local testing = require("nuncio.testing")

local function mappings(list)
  local docs = {}
  for _, m in ipairs(list) do
    local lines = { "apiVersion: getambassador.io/v3alpha1", "kind: Mapping",
      "metadata: {name: " .. m.name .. "}", "spec:" }
    for k, v in pairs(m) do
      if k ~= "name" then lines[#lines + 1] = "  " .. k .. ": " .. v end
    end
    docs[#docs + 1] = table.concat(lines, "\n")
  end
  return table.concat(docs, "\n---\n")
end

describe("routing through the chain", function()
  it("prefers the longer prefix whatever the file order", function()
    local chain = testing.chain({ ambassador = mappings({
      { name = "short", hostname = '"*"', prefix = "/api/", service = "short:1" },
      { name = "long", hostname = '"*"', prefix = "/api/v2/", service = "long:2" },
    }) })
    assert.are.equal("long", chain:request({ path = "/api/v2/x" }).route.name)
    assert.are.equal("short", chain:request({ path = "/api/v1/x" }).route.name)
  end)

  it("puts a higher precedence first, even with a shorter prefix", function()
    local chain = testing.chain({ ambassador = mappings({
      { name = "long", hostname = '"*"', prefix = "/api/v2/", service = "long:2" },
      { name = "boss", hostname = '"*"', prefix = "/api/", service = "boss:1", precedence = 10 },
    }) })
    assert.are.equal("boss", chain:request({ path = "/api/v2/x" }).route.name)
  end)

  it("tries a header-constrained Mapping before the plain one with the same prefix", function()
    local chain = testing.chain({ ambassador = mappings({
      { name = "plain", hostname = '"*"', prefix = "/svc/", service = "plain:1" },
      { name = "canary", hostname = '"*"', prefix = "/svc/", service = "canary:1", headers = '{x-canary: "yes"}' },
    }) })
    assert.are.equal("canary", chain:request({ path = "/svc/a", headers = { ["x-canary"] = "yes" } }).route.name)
    assert.are.equal("plain", chain:request({ path = "/svc/a", headers = { ["x-canary"] = "no" } }).route.name)
  end)

  it("rewrites the matched prefix: default '/', '' keeps the path, gRPC keeps the service", function()
    local chain = testing.chain({ ambassador = mappings({
      { name = "default", hostname = '"*"', prefix = "/backend-api/", service = "a:1" },
      { name = "keep", hostname = '"*"', prefix = "/keep/", service = "b:1", rewrite = '""' },
      { name = "grpc", hostname = '"*"', prefix = "/helloworld.Greeter/", service = "c:1",
        rewrite = "/helloworld.Greeter/", grpc = "true" },
    }) })
    assert.are.equal("/foo/bar", chain:request({ path = "/backend-api/foo/bar" }).path)
    assert.are.equal("/keep/x?y=1", chain:request({ path = "/keep/x?y=1" }).path)
    local g = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true })
    assert.are.equal("/helloworld.Greeter/SayHello", g.path)
    assert.is_true(g.cluster.http2)
  end)

  it("matches hostname globs case-insensitively, port included", function()
    local chain = testing.chain({ ambassador = mappings({
      { name = "wild", hostname = '"*.example.com"', prefix = "/", service = "w:1" },
      { name = "exact", hostname = "api.example.com", prefix = "/", service = "e:1" },
    }) .. "\n---\napiVersion: getambassador.io/v3alpha1\nkind: Host\nmetadata: {name: h}\n" ..
      "spec: {hostname: '*', requestPolicy: {insecure: {action: Route}}}\n" })
    assert.are.equal("exact", chain:request({ authority = "API.Example.com" }).route.name)
    assert.are.equal("wild", chain:request({ authority = "www.example.com" }).route.name)
    local with_port = chain:request({ authority = "api.example.com:443" })
    assert.is_nil(with_port.route)
    assert.are.equal(404, with_port.reply.status)
  end)

  it("redirects insecure requests on a Redirect Host and rejects them on a Reject Host", function()
    local chain = testing.chain({ ambassador = mappings({
      { name = "r", hostname = "r.example.com", prefix = "/", service = "r:1" },
      { name = "j", hostname = "j.example.com", prefix = "/", service = "j:1" },
    }) .. [[

---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: redirect}
spec: {hostname: r.example.com, requestPolicy: {insecure: {action: Redirect}}}
---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: reject}
spec: {hostname: j.example.com, requestPolicy: {insecure: {action: Reject}}}
]] })
    local r = chain:request({ authority = "r.example.com", path = "/p" })
    assert.are.equal(301, r.reply.status)
    assert.are.equal("https://r.example.com/p", r.reply.headers.location)
    assert.are.equal(404, chain:request({ authority = "j.example.com", path = "/p" }).reply.status)
    -- secure requests (TLS, or a SECURE listener) are routed on both Hosts
    assert.are.equal("r", chain:request({ authority = "r.example.com", path = "/p", secure = true }).route.name)
    assert.are.equal("j", chain:request({ authority = "j.example.com", path = "/p", secure = true }).route.name)
  end)

  it("reads an unquoted yes as YAML 1.1 true, as Ambassador does: a presence match", function()
    local chain = testing.chain({ ambassador = mappings({
      { name = "plain", hostname = '"*"', prefix = "/svc/", service = "plain:1" },
      { name = "present", hostname = '"*"', prefix = "/svc/", service = "p:1", headers = "{x-flag: yes}" },
    }) })
    assert.are.equal("present", chain:request({ path = "/svc/a", headers = { ["x-flag"] = "anything" } }).route.name)
    assert.are.equal("plain", chain:request({ path = "/svc/a" }).route.name)
  end)

  it("reports every configuration error with file, line, kind, name and field", function()
    local ok, err = pcall(testing.chain, { ambassador = mappings({
      { name = "nosvc", hostname = '"*"', prefix = "/a/" },
      { name = "badport", hostname = '"*"', prefix = "/b/", service = "x:99999" },
    }) })
    assert.is_false(ok)
    assert.matches(":1: Mapping nosvc: service: required", err, 1, true)
    assert.matches(":%d+: Mapping badport: service: port must be an integer between 1 and 65535, not \"99999\"", err)
  end)
end)
