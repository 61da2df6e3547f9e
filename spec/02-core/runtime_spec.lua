-- nuncio.runtime's request phase as the C core calls it: a stream's address,
-- the installed chain, and the stream object made for it (or reused).
local ffi = require("ffi")
local nffi = require("nuncio.ffi")
local runtime = require("nuncio.runtime")
local stream = require("nuncio.stream")

local C, OK = nffi.C, nffi.OK

local ROUTES = [[
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: greeter}
spec: {hostname: "*", prefix: /helloworld.Greeter/, rewrite: "", grpc: true, service: "127.0.0.1:50051"}
---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: any}
spec: {hostname: "*", requestPolicy: {insecure: {action: Route}}}
]]
local GUIDE = assert(io.open("spec/fixtures/ambassador/guide-lua-module.yaml")):read("*a")

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "'") == 0, "cannot make " .. dir)

local function write(name, text)
  local path = dir .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

-- A user's filter that does nothing: the runtime cannot know that.
write("idle.lua", [[
return { new = function() return { on_request_headers = function() end } end }
]])

-- A user's filter that keeps every stream it is given (which it must not).
write("keeper.lua", [[
local M = { kept = {} }
function M.new()
  return { on_request_headers = function(_, s) M.kept[#M.kept + 1] = s end }
end
return M
]])

local function configure(ambassador, native)
  local opts = { ambassador = { write("ambassador.yaml", ambassador) } }
  if native then opts.config = write("nuncio.yaml", native) end
  local model, errs = runtime.configure(opts)
  assert(model, errs and table.concat(errs, "\n"))
end

-- The request headers (false: the authority and path asked for). No table is
-- made per request here, so that bytes_per_request sees the runtime's alone.
local H = { ":method", "POST", ":scheme", "http", ":authority", false, ":path", false,
  "content-type", "application/grpc", "te", "trailers" }

-- One request phase as the core runs it; -> rc, the C stream (the caller frees it).
local function request(path, authority)
  local out = nffi.stream_out
  assert(C.nu_ffi_test_stream_new(out, 1) == OK)
  local st = out[0]
  for i = 1, #H, 2 do
    local v = H[i + 1]
    if v == false then v = i == 5 and authority or path end
    C.nu_ffi_hdr_add(st, nffi.REQUEST, H[i], #H[i], v, #v)
  end
  return runtime.request_headers(tonumber(ffi.cast("uintptr_t", st))), st
end

local function routed(st)
  return C.nu_ffi_stream_get_upstream(st, nffi.int_out, nffi.int_out + 1) == OK
end

local function authority(st)
  assert(C.nu_ffi_hdr_get_n(st, nffi.REQUEST, ":authority", 10, nffi.str_out, nffi.len_out) == 1)
  return ffi.string(nffi.str_out[0], nffi.len_out[0])
end

local function reply_status(st)
  local buf = ffi.new("char[64]")
  if C.nu_ffi_stream_get_reply(st, nffi.int_out, buf, 64, nffi.len_out) ~= OK then return nil end
  return tonumber(nffi.int_out[0])
end

-- The object kept for the next request (false: none), nuncio.stream's.
local function spare()
  for i = 1, 100 do
    local name, value = debug.getupvalue(stream.take, i)
    if name == nil then break end
    if name == "spare" then return value end
  end
  error("stream.take has no upvalue 'spare'")
end

-- Bytes the Lua heap grew by per request, the collector stopped. The JIT is
-- off meanwhile: a trace compiled inside the window is a heap object too, and
-- when that happens depends on what ran before in this Lua state.
local function bytes_per_request(n, path)
  jit.off()
  jit.flush()
  for _ = 1, 200 do -- warm: pools, interned strings
    local _, st = request(path, "example.com:8080")
    C.nu_ffi_test_stream_free(st)
  end
  collectgarbage("collect")
  collectgarbage("stop")
  local before = collectgarbage("count")
  for _ = 1, n do
    local _, st = request(path, "example.com:8080")
    C.nu_ffi_test_stream_free(st)
  end
  local grew = (collectgarbage("count") - before) * 1024 / n
  collectgarbage("restart")
  jit.on()
  return grew
end

describe("nuncio.runtime request phase", function()
  teardown(function() os.execute("rm -rf '" .. dir .. "'") end)

  it("reuses one stream object when the chain allows it: each request as if alone", function()
    configure(ROUTES .. GUIDE)
    -- Routed and unrouted requests in turn: nothing of one may reach the next.
    for i = 1, 50 do
      local rc, st = request("/helloworld.Greeter/SayHello", "example.com:" .. (8000 + i))
      assert.are.equal(0, rc)
      assert.is_true(routed(st))
      assert.are.equal("example.com", authority(st)) -- the guide's script ran
      C.nu_ffi_test_stream_free(st)
      rc, st = request("/nowhere", "example.com")
      assert.are.equal(1, rc)
      assert.is_false(routed(st))
      assert.are.equal(404, reply_status(st))
      C.nu_ffi_test_stream_free(st)
    end
  end)

  it("makes no tables per request when it reuses the stream object", function()
    configure(ROUTES .. GUIDE)
    local _, st = request("/helloworld.Greeter/SayHello", "example.com:8080")
    C.nu_ffi_test_stream_free(st)
    local first = spare()
    assert.are.equal("table", type(first))
    for _ = 1, 100 do
      _, st = request("/helloworld.Greeter/SayHello", "example.com:8080")
      C.nu_ffi_test_stream_free(st)
      _, st = request("/nowhere", "example.com")
      C.nu_ffi_test_stream_free(st)
    end
    assert.are.equal(first, spare()) -- one object served all 200

    -- The heap's growth per request, the same chain but for a user's filter
    -- (which does nothing, but the runtime cannot know that): the two
    -- tables of a stream object and its request map, ~270 bytes.
    configure(ROUTES)
    local reused = bytes_per_request(2000, "/helloworld.Greeter/SayHello")
    configure(ROUTES, "lua_path: [" .. dir .. "]\nchain: [idle]\n")
    local made = bytes_per_request(2000, "/helloworld.Greeter/SayHello")
    assert.is_true(made - reused > 250, ("%.0f vs %.0f bytes a request"):format(made, reused))
  end)

  it("lets a stream a user's filter kept die with its exchange", function()
    configure(ROUTES, "lua_path: [" .. dir .. "]\nchain: [keeper]\n")
    local keeper = require("keeper")
    keeper.kept = {}
    local rc1, st1 = request("/helloworld.Greeter/A", "example.com")
    local rc2, st2 = request("/helloworld.Greeter/B", "example.com")
    assert.are.equal(0, rc1)
    assert.are.equal(0, rc2)
    assert.are.equal(2, #keeper.kept)
    assert.are_not.equal(keeper.kept[1], keeper.kept[2])
    for _, s in ipairs(keeper.kept) do
      assert.has_error(function() s:path() end, "this stream has ended; a filter kept it past its exchange")
    end
    C.nu_ffi_test_stream_free(st1)
    C.nu_ffi_test_stream_free(st2)
  end)

  it("hands the reused object across a reload to a chain that may not reuse it, and it dies there", function()
    configure(ROUTES .. GUIDE) -- reuses: its last request leaves the object spare
    local _, st = request("/helloworld.Greeter/A", "example.com:8080")
    C.nu_ffi_test_stream_free(st)
    local handed = spare()
    assert.are.equal("table", type(handed))
    configure(ROUTES, "lua_path: [" .. dir .. "]\nchain: [keeper]\n")
    local keeper = require("keeper")
    keeper.kept = {}
    local rc
    rc, st = request("/helloworld.Greeter/B", "example.com")
    assert.are.equal(0, rc)
    assert.is_true(routed(st))
    assert.are.equal(1, #keeper.kept)
    assert.are.equal(handed, keeper.kept[1]) -- the new chain's first request took it...
    assert.has_error(function() keeper.kept[1]:path() end,
      "this stream has ended; a filter kept it past its exchange")
    assert.is_false(spare()) -- ...and it is not handed on: the filter still holds it
    C.nu_ffi_test_stream_free(st)
    -- Back to a chain that reuses: requests are routed as before.
    configure(ROUTES .. GUIDE)
    rc, st = request("/helloworld.Greeter/C", "example.com:8080")
    assert.are.equal(0, rc)
    assert.are.equal("example.com", authority(st))
    C.nu_ffi_test_stream_free(st)
  end)
end)
