-- The filter chain as a user tests it: nuncio.testing builds the real chain
-- (loader, router, filter runner, C header maps) from Ambassador YAML.
local testing = require("nuncio.testing")

local GREETER = [[
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: grpc-py}
spec:
  hostname: "*"
  prefix: /helloworld.Greeter/
  rewrite: /helloworld.Greeter/
  grpc: true
  service: 127.0.0.1:50051
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: api}
spec:
  hostname: "api.example.com"
  prefix: /api/
  service: http://api-backend:8080
  timeout_ms: 1500
---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: any}
spec:
  hostname: "*"
  requestPolicy: {insecure: {action: Route}}
]]

-- A filter module defined inline, as a user's spec would.
local function recorder(log, tag)
  return {
    name = tag,
    module = {
      new = function(config)
        return {
          on_request_headers = function(_, s)
            log[#log + 1] = tag .. ":req"
            s.request:add("x-seen", tag)
          end,
          on_response_headers = function(_, s)
            log[#log + 1] = tag .. ":resp"
          end,
        }
      end,
    },
  }
end

describe("the chain", function()
  it("routes the Greeter with its prefix rewrite to the right cluster", function()
    local chain = testing.chain({ ambassador = GREETER })
    local r = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true, authority = "localhost:8080" })
    assert.is_nil(r.reply)
    assert.are.equal("grpc-py", r.route.name)
    assert.are.equal("/helloworld.Greeter/SayHello", r.path)
    assert.are.equal("127.0.0.1", r.cluster.host)
    assert.are.equal(50051, r.cluster.port)
    assert.is_true(r.cluster.http2)
    assert.are.equal(3000, r.timeout_ms)
  end)

  it("applies the default rewrite / and records the original path", function()
    local chain = testing.chain({ ambassador = GREETER })
    local r = chain:request({ path = "/api/v1/users?x=1", authority = "api.example.com" })
    assert.are.equal("api", r.route.name)
    assert.are.equal("/v1/users?x=1", r.path)
    assert.are.equal("/api/v1/users?x=1", r.headers["x-envoy-original-path"])
    assert.are.equal(8080, r.cluster.port)
    assert.are.equal(1500, r.timeout_ms)
  end)

  it("matches the hostname including the port, as Envoy does", function()
    local chain = testing.chain({ ambassador = GREETER })
    local r = chain:request({ path = "/api/x", authority = "api.example.com:443" })
    assert.is_nil(r.route)
    assert.are.equal(404, r.reply.status)
    assert.are.equal("", r.reply.body)
  end)

  it("answers an unrouted gRPC method with UNIMPLEMENTED, trailers-only", function()
    local chain = testing.chain({ ambassador = GREETER })
    local r = chain:request({ path = "/other.Service/Do", grpc = true })
    assert.are.equal(404, r.reply.status)
    assert.are.equal(200, r.reply.http_status)
    assert.are.equal(12, r.reply.grpc_status)
    assert.matches("no route for POST /other.Service/Do", r.reply.grpc_message, 1, true)
  end)

  it("runs filters in order on requests and in reverse on responses", function()
    local log = {}
    local chain = testing.chain({ ambassador = GREETER, filters = { recorder(log, "a"), recorder(log, "b") } })
    local r = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true })
    assert.are.same({ "a:req", "b:req" }, log)
    assert.are.equal("a,b", r.headers["x-seen"])
    local resp = r:respond_upstream({ status = 200, headers = { ["content-type"] = "application/grpc" } })
    assert.is_nil(resp.error)
    assert.are.same({ "a:req", "b:req", "b:resp", "a:resp" }, log)
  end)

  it("stops at a filter that responds: later filters and the router do not run", function()
    local log = {}
    local deny = {
      name = "deny",
      module = { new = function() return {
        on_request_headers = function(_, s)
          if s.request:get("authorization") == nil then s:respond(401, "who are you?") end
        end } end },
    }
    local chain = testing.chain({ ambassador = GREETER, filters = { deny, recorder(log, "after") } })
    local r = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true })
    assert.are.same({}, log)
    assert.is_nil(r.cluster)
    assert.are.equal(16, r.reply.grpc_status) -- 401 -> UNAUTHENTICATED
    assert.are.equal("who are you?", r.reply.grpc_message)
    local ok = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true,
      headers = { authorization = "Bearer x" } })
    assert.is_nil(ok.reply)
    assert.are.same({ "after:req" }, log)
  end)

  it("turns a throwing filter into 500 / INTERNAL naming the filter, and keeps going", function()
    local boom = {
      name = "boom",
      module = { new = function() return {
        on_request_headers = function(_, s)
          if s:path():find("explode", 1, true) then error("kaboom") end
        end } end },
    }
    local chain = testing.chain({ ambassador = GREETER, filters = { boom } })
    local r = chain:request({ path = "/helloworld.Greeter/explode", grpc = true })
    assert.matches("filter boom: on_request_headers failed: .*kaboom", r.error)
    assert.matches("stack traceback", r.error, 1, true)
    assert.are.equal(13, r.reply.grpc_status)
    local next_one = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true })
    assert.is_nil(next_one.error)
    assert.is_nil(next_one.reply)
    assert.are.equal("grpc-py", next_one.route.name)
  end)

  it("selects the route again when a filter changes request headers (Envoy's route cache)", function()
    local strip_port = {
      name = "strip-port",
      module = { new = function() return {
        on_request_headers = function(_, s)
          local before = s:route() -- routing once, on the original authority
          s.ctx.before = before and before.name or "none"
          local a = s:authority()
          local i = a:find(":", 1, true)
          if i then s:set_authority(a:sub(1, i - 1)) end
        end } end },
    }
    local chain = testing.chain({ ambassador = GREETER, filters = { strip_port } })
    local r = chain:request({ path = "/api/users", authority = "api.example.com:443" })
    assert.are.equal("none", r.stream.ctx.before)
    assert.are.equal("api", r.route.name)
    assert.are.equal("api.example.com", r.authority)
  end)

  it("gives each exchange its own ctx and releases it at the end", function()
    local f = {
      name = "ctx",
      module = { new = function() return {
        on_request_headers = function(_, s) s.ctx.n = (s.ctx.n or 0) + 1 end,
        on_log = function(_, s) s.ctx.logged = true end,
      } end },
    }
    local chain = testing.chain({ ambassador = GREETER, filters = { f } })
    local r1 = chain:request({ path = "/helloworld.Greeter/A", grpc = true })
    local r2 = chain:request({ path = "/helloworld.Greeter/B", grpc = true })
    assert.are.equal(1, r1.stream.ctx.n)
    assert.are.equal(1, r2.stream.ctx.n)
    assert.are.equal(0, (r1:finish()))
    assert.is_true(r1.stream.ctx.logged)
    assert.has_error(function() r1.stream:path() end, "this stream has ended; a filter kept it past its exchange")
  end)

  it("reports a filter module that cannot be loaded, naming it", function()
    assert.has_error(function()
      testing.chain({ ambassador = GREETER, filters = { { name = "no.such.filter" } } })
    end)
    local ok, err = pcall(testing.chain, { ambassador = GREETER, filters = { { name = "no.such.filter" } } })
    assert.is_false(ok)
    assert.matches("filter no.such.filter: cannot load", err, 1, true)
  end)
end)

describe("nuncio.chain reuse_stream (the runtime's one stream object for every request)", function()
  local GUIDE = assert(io.open("spec/fixtures/ambassador/guide-lua-module.yaml")):read("*a")
  local function module(config)
    return GREETER .. "\n---\napiVersion: getambassador.io/v3alpha1\nkind: Module\nmetadata: {name: ambassador}\n"
      .. "spec:\n  config:\n" .. config
  end
  local function script(code)
    return module("    lua_scripts: |\n      " .. code:gsub("\n", "\n      ") .. "\n")
  end

  it("is on when only bundled filters that keep nothing of a stream run", function()
    assert.is_true(testing.chain({ ambassador = GREETER }).chain.reuse_stream) -- the router alone
    assert.is_true(testing.chain({ ambassador = module("    strip_matching_host_port: true\n") }).chain.reuse_stream)
    assert.is_true(testing.chain({ ambassador = GREETER .. "\n" .. GUIDE }).chain.reuse_stream)
  end)

  it("is off with a user's filter: it gets the stream itself and could keep it", function()
    local f = { name = "nothing", module = { new = function() return { on_request_headers = function() end } end } }
    assert.is_false(testing.chain({ ambassador = GREETER, filters = { f } }).chain.reuse_stream)
    -- Saying so does not count either: only a bundled filter's word does.
    local says = { name = "says", module = { new = function() return { confined = true,
      on_request_headers = function() end } end } }
    assert.is_false(testing.chain({ ambassador = GREETER, filters = { says } }).chain.reuse_stream)
  end)

  it("is off with a script not proved to keep nothing, and when a later phase runs", function()
    local keeps = testing.chain({ ambassador = script("local kept\nfunction envoy_on_request(h) kept = h end") })
    assert.is_false(keeps.chain.reuse_stream)
    -- Its request half keeps nothing, but the object lives on to the response phase.
    local response = testing.chain({ ambassador = script("function envoy_on_request(h) h:headers():add(\"x-q\", \"1\") end\n"
      .. "function envoy_on_response(h) h:headers():add(\"x-r\", \"1\") end") })
    assert.is_true(response.chain.filters[1].inst.confined)
    assert.is_true(response.chain.wants.log)
    assert.is_false(response.chain.reuse_stream)
  end)
end)
