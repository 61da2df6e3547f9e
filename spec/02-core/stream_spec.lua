-- The stream object over the real C header map (a test stream made by the core).
local ffi = require("ffi")
local nffi = require("nuncio.ffi")
local stream = require("nuncio.stream")

local C = nffi.C

local function new_stream(grpc)
  local out = ffi.new("struct stream *[1]")
  assert.are.equal(0, C.nu_ffi_test_stream_new(out, grpc and 1 or 0))
  local st = ffi.gc(out[0], C.nu_ffi_test_stream_free)
  return stream.new(st, nil), st
end

describe("nuncio.stream", function()
  it("reads and writes request headers held in C", function()
    local s = new_stream()
    s.request:add(":path", "/a/b")
    s.request:add("X-Multi", "1")
    s.request:add("x-multi", "2")
    assert.are.equal("/a/b", s:path())
    assert.are.equal("1", s.request:get("x-multi"))
    assert.are.same({ "1", "2" }, s.request:get_all("X-MULTI"))
    assert.are.equal(2, s.request:count("x-multi"))
    s.request:set("x-multi", "3")
    assert.are.same({ "3" }, s.request:get_all("x-multi"))
    assert.are.equal(1, s.request:remove("x-multi"))
    assert.is_nil(s.request:get("x-multi"))
    assert.are.equal(0, s.request:remove("x-multi"))
  end)

  it("iterates headers in order with pairs()", function()
    local s = new_stream()
    s.request:add(":method", "GET")
    s.request:add("a", "1")
    s.request:add("b", "2")
    local seen = {}
    for k, v in s.request:pairs() do seen[#seen + 1] = k .. "=" .. v end
    assert.are.same({ ":method=GET", "a=1", "b=2" }, seen)
    assert.are.same({ [":method"] = "GET", a = "1", b = "2" }, s.request:to_table())
  end)

  it("keeps binary values intact", function()
    local s = new_stream()
    s.request:set("x-bin", "a\0b")
    assert.are.equal("a\0b", s.request:get("x-bin"))
  end)

  it("sets x-request-id to a new UUID v4 made by the core, replacing any", function()
    local UUID4 = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"
    local seen, nibbles = {}, {}
    for _ = 1, 2000 do
      local s = new_stream()
      s.request:add("x-request-id", "client")
      s.request:add("x-request-id", "client-2")
      s._route = { name = "cached" }
      s.request:set_request_id()
      assert.is_nil(s._route)
      local ids = s.request:get_all("x-request-id")
      assert.are.equal(1, #ids)
      local id = ids[1]
      assert.matches(UUID4, id)
      assert.is_nil(seen[id])
      seen[id] = true
      nibbles[id:sub(1, 1)] = true -- the random digits take every value
    end
    local n = 0
    for _ in pairs(nibbles) do n = n + 1 end
    assert.are.equal(16, n)
    assert.has_error(function() (new_stream()).response:set_request_id() end,
      "set_request_id: request headers only")
  end)

  it("reports gRPC-ness from the core", function()
    assert.is_true((new_stream(true)):is_grpc())
    assert.is_false((new_stream(false)):is_grpc())
  end)

  it("forgets the cached route when a request header changes", function()
    local s = new_stream()
    s._route = { name = "cached" }
    s.request:set(":authority", "example.com")
    assert.is_nil(s._route)
  end)

  it("refuses request header changes once the request went upstream", function()
    local s, st = new_stream()
    s.request:add(":path", "/")
    C.nu_ffi_test_stream_set_phase(st, nffi.PHASE_RESPONSE_HEADERS)
    assert.has_error(function() s.request:set(":path", "/x") end,
      'set(":path"): these headers were already sent and can no longer change')
    -- the response map is still open in this phase
    s.response:set("x-r", "1")
    assert.are.equal("1", s.response:get("x-r"))
  end)

  it("makes local replies visible to the core", function()
    local s, st = new_stream(false)
    s:respond(403, "go away", { ["x-why"] = "test" })
    local status, cap = ffi.new("int[1]"), 64
    local buf, len = ffi.new("char[?]", cap), ffi.new("size_t[1]")
    assert.are.equal(0, C.nu_ffi_stream_get_reply(st, status, buf, cap, len))
    assert.are.equal(403, status[0])
    assert.are.equal("go away", ffi.string(buf, len[0]))
    assert.are.equal("403", s.response:get(":status"))
    assert.are.equal("test", s.response:get("x-why"))
  end)

  it("turns a reply to a gRPC request into trailers-only with the mapped status", function()
    local s = new_stream(true)
    s:respond(503, "down for maintenance")
    assert.are.equal("200", s.response:get(":status"))
    assert.are.equal("application/grpc", s.response:get("content-type"))
    assert.are.equal("14", s.response:get("grpc-status"))
    assert.are.equal("down for maintenance", s.response:get("grpc-message"))
  end)

  it("raises a clear error when used after the exchange ended", function()
    local s = new_stream()
    s:_release()
    assert.has_error(function() s.request:get("x") end,
      "this stream has ended; a filter kept it past its exchange")
  end)

  it("rejects a bad status in respond", function()
    local s = new_stream()
    assert.has_error(function() s:respond(99) end, "respond: invalid status 99")
    assert.has_error(function() s:respond("200") end, "respond: status must be a number")
  end)
end)

describe("nuncio.stream read_body", function()
  local testing = require("nuncio.testing")
  local YAML = [[
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: m}
spec: {hostname: "*", prefix: /, service: up:1}
]]

  it("gives a filter the whole request body, and the response body in the response phase", function()
    local seen = {}
    local f = { name = "body", module = { new = function() return {
      on_request_headers = function(_, s)
        seen.req = s:read_body()
        if seen.req:find("forbidden", 1, true) then s:respond(403, "no") end
      end,
      on_response_headers = function(_, s) seen.resp = s:read_body() end,
    } end } }
    local chain = testing.chain({ ambassador = YAML, filters = { f } })
    local r = chain:request({ method = "POST", path = "/x", body = "hello body" })
    assert.are.equal("hello body", seen.req)
    assert.is_nil(r.reply)
    r:respond_upstream({ status = 200, body = "response bytes" })
    assert.are.equal("response bytes", seen.resp)
    local denied = chain:request({ method = "POST", path = "/x", body = "a forbidden word" })
    assert.are.equal(403, denied.reply.status)
  end)

  it("reads an empty body as an empty string", function()
    local got
    local f = { name = "b", module = { new = function() return {
      on_request_headers = function(_, s) got = s:read_body() end } end } }
    testing.chain({ ambassador = YAML, filters = { f } }):request({ path = "/" })
    assert.are.equal("", got)
  end)
end)

describe("nuncio.stream recycle and reuse", function()
  local testing = require("nuncio.testing")
  local YAML = [[
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: x}
spec: {hostname: "*", prefix: /x/, service: up:1}
]]

  local function keys(t)
    local out = {}
    for k in pairs(t) do out[#out + 1] = k end
    table.sort(out)
    return out
  end

  it("leaves only what new() made, whatever an exchange added", function()
    local chain = testing.chain({ ambassador = YAML }).chain
    local _, st = new_stream(true)
    local s = stream.new(st, chain)
    local made = keys(s) -- _chain, _replied, _st, request
    local request = s.request
    -- Everything an exchange can add to its stream object:
    s.request:add(":path", "/nowhere")
    assert.is_nil(s:route()) -- _route_why
    s.request:set(":path", "/x/1")
    assert.are.equal("x", s:route().name) -- _route
    s.ctx.mine = true
    local _ = s.response, s.trailers, s.request_trailers -- the lazy maps
    s:respond(404, "") -- _replied
    assert.is_true(s:replied())

    stream.recycle(s)
    local left = {}
    for _, k in ipairs(made) do if k ~= "_st" then left[#left + 1] = k end end
    assert.are.same(left, keys(s))
    assert.is_false(s:replied())
    assert.are.equal(request, s.request) -- the request map object stays, bound to s
    assert.are.equal(s, s.request._s)
    -- Between exchanges it is as dead as a released stream.
    assert.has_error(function() s:path() end, "this stream has ended; a filter kept it past its exchange")
  end)

  it("serves the next exchange from its own C stream, with nothing of the last one", function()
    local chain = testing.chain({ ambassador = YAML }).chain
    assert.is_true(chain.reuse_stream)
    local _, st1 = new_stream(true)
    local first = stream.take(st1, chain)
    first.request:add(":path", "/x/first")
    assert.are.equal("x", first:route().name)
    first.ctx.seen = 1
    stream.put(first)

    local _, st2 = new_stream(true)
    local s = stream.take(st2, chain)
    assert.are.equal(first, s) -- the same object
    s.request:add(":path", "/other")
    assert.are.equal("/other", s:path())
    assert.is_nil(s:route()) -- routed afresh, not the last exchange's route
    assert.is_nil(s.ctx.seen)
    assert.is_nil(s.response:get(":status"))
  end)

  it("releases, not keeps, an object whose chain may not reuse it", function()
    local f = { name = "f", module = { new = function() return { on_request_headers = function() end } end } }
    local chain = testing.chain({ ambassador = YAML, filters = { f } }).chain
    assert.is_false(chain.reuse_stream)
    local _, st1 = new_stream(true)
    local first = stream.take(st1, chain)
    stream.put(first)
    assert.has_error(function() first:path() end, "this stream has ended; a filter kept it past its exchange")
    local _, st2 = new_stream(true)
    local s = stream.take(st2, chain)
    assert.are_not.equal(first, s)
    stream.put(s)
  end)
end)
