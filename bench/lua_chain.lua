-- What the Lua chain costs per request, in process: no sockets, no kernel,
-- no load generator, so the figure holds still where `make bench`'s
-- nuncio minus nuncio-bare (two noisy ~20 µs figures) cannot.
--
--   luajit bench/lua_chain.lua [requests per round] [rounds]
--   (bench/run runs it; NUNCIO_SRC / NUNCIO_CORE as for the specs)
--
-- Both chains are the benchmark's own configuration (the routing the rows
-- use; "nuncio" adds the Ambassador guide's lua_scripts Module) loaded
-- through the real loader, the real core library and the real filters. Each
-- request is what a unary gRPC call brings (h2load's headers, authority with
-- a port): a fresh core stream, its headers, then the chain's request phase
-- (filters, router, set_upstream). Rounds alternate the two chains and the
-- medians are subtracted: the difference is the port-strip script and its
-- filter, which is target 2.
local src = os.getenv("NUNCIO_SRC") or "."
package.path = table.concat({ src .. "/lua/?.lua", src .. "/filters/?.lua", src .. "/spec/helpers/?.lua",
  package.path }, ";")
local core = os.getenv("NUNCIO_CORE") or (src .. "/build/libnuncio_core.so")
package.preload["nuncio.yaml"] = assert(package.loadlib(core, "luaopen_nuncio_yaml"))

local ffi = require("ffi")
require("nuncio.runtime") -- the proxy's LuaJIT settings (jit.opt) come with it
local nffi = require("nuncio.ffi")
local stream_mod = require("nuncio.stream")
local testing = require("nuncio.testing")
local C, OK = nffi.C, nffi.OK

local N = tonumber(arg and arg[1]) or 200000
local ROUNDS = tonumber(arg and arg[2]) or 7

local ROUTES = [[
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: bench}
spec: {hostname: "*", prefix: /bench.Bench/, rewrite: "", grpc: true, service: "127.0.0.1:50051", timeout_ms: 0}
---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: bench}
spec: {hostname: "*", requestPolicy: {insecure: {action: Route}}}
]]
local GUIDE = assert(io.open(src .. "/spec/fixtures/ambassador/guide-lua-module.yaml")):read("*a")

local function new_chain(with_script)
  return testing.chain({ ambassador = with_script and (ROUTES .. GUIDE) or ROUTES }).chain
end

local HEADERS = {
  { ":method", "POST" }, { ":scheme", "http" }, { ":authority", "127.0.0.1:8443" },
  { ":path", "/bench.Bench/Unary" }, { "content-type", "application/grpc" }, { "te", "trailers" },
  { "user-agent", "h2load nghttp2/1.52.0" },
}

local out = ffi.new("struct stream *[1]")
local function one(chain)
  assert(C.nu_ffi_test_stream_new(out, 1) == OK)
  local st = out[0]
  local s = stream_mod.take(st, chain) -- as nuncio.runtime: reused when the chain allows
  local rq = s.request
  for i = 1, #HEADERS do rq:add(HEADERS[i][1], HEADERS[i][2]) end
  local rc = chain:request_headers(s)
  stream_mod.put(s)
  C.nu_ffi_test_stream_free(st)
  return rc
end

local function round(chain)
  local t0 = os.clock()
  for _ = 1, N do
    if one(chain) ~= 0 then error("the request was not routed") end
  end
  return (os.clock() - t0) * 1e6 / N
end

local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)], t[1], t[#t]
end

local bare, lua = new_chain(false), new_chain(true)
-- The script must do its work: the authority loses its port.
do
  assert(C.nu_ffi_test_stream_new(out, 1) == OK)
  local s = stream_mod.new(out[0], lua)
  for i = 1, #HEADERS do s.request:add(HEADERS[i][1], HEADERS[i][2]) end
  assert(lua:request_headers(s) == 0)
  assert(s.request:get(":authority") == "127.0.0.1", "the port-strip script did not run")
  s:_release()
  C.nu_ffi_test_stream_free(out[0])
end
round(bare) -- warm-up: traces compiled, pools filled
round(lua)
local tb, tl, diff = {}, {}, {}
for r = 1, ROUNDS do
  tb[r] = round(bare)
  tl[r] = round(lua)
  diff[r] = tl[r] - tb[r]
end
local mb, lb, hb = median(tb)
local ml, ll, hl = median(tl)
local md, ld, hd = median(diff)
print(string.format("lua_chain: %d requests x %d rounds", N, ROUNDS))
print(string.format("router only:        %.3f us/request (%.3f..%.3f)", mb, lb, hb))
print(string.format("with lua_scripts:   %.3f us/request (%.3f..%.3f)", ml, ll, hl))
print(string.format("the Lua chain costs %.3f us/request (%.3f..%.3f)", md, ld, hd))
