-- The spec a user writes for their filter: the real chain (loader, router,
-- filter runner, C header maps) with nuncio.testing, no network.
-- Run from the repo root:
--   luajit /usr/bin/busted --helper=spec/helper.lua examples/custom-filter/spec
local testing = require("nuncio.testing")

local here = (os.getenv("NUNCIO_SRC") or ".") .. "/examples/custom-filter"
package.path = here .. "/filters/?.lua;" .. here .. "/filters/?/handler.lua;" .. package.path

-- The same spec runs twice: in-process, and live (nuncio.testing.live starts the
-- real binary with this YAML and a recording upstream and sends each request
-- over the network), so the filter is proven both ways.
for _, mode in ipairs({ "in-process", "live" }) do
local open = {}
local function chain(config)
  local opts = {
    ambassador = { here .. "/ambassador.yaml" },
    filters = { { name = "require_auth", config = config or { exempt = { "/grpc.health.v1.Health/" } } } },
  }
  if mode == "in-process" then return testing.chain(opts) end
  opts.lua_path = { here .. "/filters" }
  local c = testing.live(opts)
  open[#open + 1] = c
  return c
end

describe("require_auth (" .. mode .. ")", function()
  after_each(function()
    for i = #open, 1, -1 do
      assert.is_true(table.remove(open, i):close(), "the proxy should stop cleanly")
    end
  end)

  it("refuses a gRPC call without authorization with UNAUTHENTICATED, before routing", function()
    local r = chain():request({ path = "/helloworld.Greeter/SayHello", grpc = true })
    assert.are.equal(401, r.reply.status)
    assert.are.equal(16, r.reply.grpc_status)
    assert.are.equal("missing authorization header", r.reply.grpc_message)
    assert.is_nil(r.cluster)
  end)

  it("lets an authorized call through to the Greeter, with the service and method as headers", function()
    local r = chain():request({ path = "/helloworld.Greeter/SayHello", grpc = true,
                                headers = { authorization = "Bearer token" } })
    assert.is_nil(r.reply)
    assert.are.equal("127.0.0.1", r.cluster.host)
    assert.are.equal(50051, r.cluster.port)
    assert.are.equal("helloworld.Greeter", r.headers["x-grpc-service"])
    assert.are.equal("SayHello", r.headers["x-grpc-method"])
  end)

  it("does not ask exempt paths for authorization", function()
    local r = chain():request({ path = "/grpc.health.v1.Health/Check", grpc = true })
    -- not refused by the filter; no Mapping covers it, so the router says UNIMPLEMENTED
    assert.are.equal(404, r.reply.status)
    assert.are.equal(12, r.reply.grpc_status)
  end)

  it("leaves plain HTTP requests alone", function()
    local r = chain():request({ path = "/helloworld.Greeter/SayHello", method = "GET" })
    assert.is_nil(r.error)
    assert.are_not.equal(401, r.reply and r.reply.status)
  end)

  it("rejects a bad config when the chain is built", function()
    local ok, err = pcall(chain, { exempt = { "no-slash" } })
    assert.is_false(ok)
    assert.matches("filter require_auth: config: exempt%[1%] must be a path prefix starting with /", err)
  end)
end)
end
