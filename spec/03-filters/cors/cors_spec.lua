-- The bundled cors filter (Envoy's CORS filter semantics), driven by Mapping and Module
-- `cors`, through the chain the proxy runs.
local testing = require("nuncio.testing")

local function yaml(module_cors, mapping_cors)
  local parts = {}
  if module_cors then
    parts[#parts + 1] = "apiVersion: getambassador.io/v3alpha1\nkind: Module\nmetadata: {name: ambassador}\n" ..
      "spec:\n  config:\n" .. module_cors
  end
  parts[#parts + 1] = "apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: web}\n" ..
    "spec:\n  hostname: \"*\"\n  prefix: /web/\n  service: 127.0.0.1:9\n" .. (mapping_cors or "")
  parts[#parts + 1] = "apiVersion: getambassador.io/v3alpha1\nkind: Mapping\nmetadata: {name: plain}\n" ..
    "spec:\n  hostname: \"*\"\n  prefix: /plain/\n  service: 127.0.0.1:9\n"
  return table.concat(parts, "---\n")
end

local MAPPING_CORS = [[
  cors:
    origins: [https://app.example, https://other.example]
    methods: [POST, OPTIONS]
    headers: [content-type, x-grpc-web, x-user-agent]
    exposed_headers: [grpc-status, grpc-message]
    max_age: "86400"
    credentials: true
]]

local function preflight(chain, path, origin, extra)
  local h = { origin = origin, ["access-control-request-method"] = "POST" }
  for k, v in pairs(extra or {}) do h[k] = v end
  return chain:request({ method = "OPTIONS", path = path, authority = "x", headers = h })
end

describe("cors filter", function()
  local chain
  before_each(function()
    chain = testing.chain({ ambassador = yaml(nil, MAPPING_CORS) })
  end)

  it("answers a preflight from an allowed origin itself", function()
    local r = preflight(chain, "/web/echo.Echo/Get", "https://app.example")
    assert.is_nil(r.cluster) -- no upstream call
    assert.are.equal(200, r.reply.status)
    local h = r.reply.headers
    assert.are.equal("https://app.example", h["access-control-allow-origin"])
    assert.are.equal("POST, OPTIONS", h["access-control-allow-methods"])
    assert.are.equal("content-type, x-grpc-web, x-user-agent", h["access-control-allow-headers"])
    assert.are.equal("86400", h["access-control-max-age"])
    assert.are.equal("true", h["access-control-allow-credentials"])
    assert.are.equal("", r.reply.body)
  end)

  it("passes a preflight from an origin it does not allow to the upstream, as Envoy", function()
    local r = preflight(chain, "/web/x", "https://evil.example")
    assert.is_nil(r.reply)
    assert.is_not_nil(r.cluster)
    assert.are.equal("OPTIONS", r.method)
  end)

  it("passes an OPTIONS without access-control-request-method (not a preflight)", function()
    local r = chain:request({ method = "OPTIONS", path = "/web/x", authority = "x",
      headers = { origin = "https://app.example" } })
    assert.is_nil(r.reply)
    assert.is_not_nil(r.cluster)
  end)

  it("adds allow-origin, allow-credentials and expose-headers to an actual request's response", function()
    local r = chain:request({ method = "POST", path = "/web/x", authority = "x",
      headers = { origin = "https://other.example" } })
    assert.is_nil(r.reply)
    local out = r:respond_upstream({ status = 200, headers = { ["content-type"] = "text/plain" }, body = "ok" })
    assert.are.equal("https://other.example", out.headers["access-control-allow-origin"])
    assert.are.equal("true", out.headers["access-control-allow-credentials"])
    assert.are.equal("grpc-status, grpc-message", out.headers["access-control-expose-headers"])
    assert.is_nil(out.headers["access-control-allow-methods"]) -- preflight-only
  end)

  it("adds nothing for a disallowed origin, no origin, or a route without cors", function()
    for _, req in ipairs({
      { path = "/web/x", headers = { origin = "https://app.example.evil" } },
      { path = "/web/x", headers = {} },
      { path = "/plain/x", headers = { origin = "https://app.example" } },
    }) do
      local r = chain:request({ method = "POST", path = req.path, authority = "x", headers = req.headers })
      local out = r:respond_upstream({ status = 200, headers = {}, body = "" })
      assert.is_nil(out.headers["access-control-allow-origin"])
    end
    local r = preflight(chain, "/plain/x", "https://app.example")
    assert.is_nil(r.reply) -- no policy on that route: the upstream answers
  end)

  it("lets \"*\" allow any origin and echoes the request's origin", function()
    chain = testing.chain({ ambassador = yaml(nil, "  cors:\n    origins: \"*\"\n    methods: GET\n") })
    local r = preflight(chain, "/web/x", "https://anything.example")
    assert.are.equal(200, r.reply.status)
    assert.are.equal("https://anything.example", r.reply.headers["access-control-allow-origin"])
    assert.are.equal("GET", r.reply.headers["access-control-allow-methods"])
    assert.is_nil(r.reply.headers["access-control-allow-credentials"])
    assert.is_nil(r.reply.headers["access-control-max-age"])
  end)

  it("takes the Module's cors for Mappings without their own", function()
    chain = testing.chain({ ambassador = yaml(
      "    cors:\n      origins: https://a.example,https://b.example\n      headers: content-type\n", nil) })
    local r = preflight(chain, "/plain/x", "https://b.example")
    assert.are.equal(200, r.reply.status)
    assert.are.equal("content-type", r.reply.headers["access-control-allow-headers"])
    r = preflight(chain, "/web/x", "https://a.example")
    assert.are.equal(200, r.reply.status)
  end)

  it("validates its own config", function()
    local schema = require("cors.schema")
    assert.is_true(schema.validate({}))
    assert.is_true(schema.validate({ default = { origins = { "*" }, methods = "GET" } }))
    local ok, err = schema.validate({ default = { origins = "*" } })
    assert.is_false(ok)
    assert.matches("origins", err)
    assert.is_false(schema.validate({ frob = 1 }))
  end)

  it("applies a native chain's default policy", function()
    chain = testing.chain({ ambassador = yaml(nil, nil),
      filters = { { name = "cors", config = { default = { origins = { "https://n.example" }, max_age = "5" } } } } })
    local r = preflight(chain, "/plain/x", "https://n.example")
    assert.are.equal(200, r.reply.status)
    assert.are.equal("5", r.reply.headers["access-control-max-age"])
  end)
end)
