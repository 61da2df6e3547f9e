-- Helpers for users' busted specs: build the real chain (real loader, real
-- router, real filter runner, header maps in the real C core) and push a
-- request through it in-process, without a network.
--
--   local testing = require("nuncio.testing")
--   local chain = testing.chain({ ambassador = [[ ...YAML... ]], filters = { { name = "my-filter" } } })
--   local r = chain:request({ path = "/helloworld.Greeter/SayHello", grpc = true })
--   assert.equal("/helloworld.Greeter/SayHello", r.path)
--   assert.equal(50051, r.cluster.port)
local ffi = require("ffi")
local nffi = require("nuncio.ffi")
local config = require("nuncio.config")
local chain_mod = require("nuncio.chain")
local stream_mod = require("nuncio.stream")

local C = nffi.C
local OK = nffi.OK

local M = {}

local function write_temp(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

--- testing.chain{ ambassador = yaml_text | { file, ... }, config = native_yaml_path?,
---                filters = { { name = "module", config = {...} } | { module = tbl, name = "x", config = {...} } } }
--- -> chain, warns   (raises with every configuration error listed)
function M.chain(opts)
  opts = opts or {}
  local paths, temp = {}, nil
  if type(opts.ambassador) == "string" then
    temp = write_temp(opts.ambassador)
    paths[1] = temp
  elseif type(opts.ambassador) == "table" then
    for i, p in ipairs(opts.ambassador) do paths[i] = p end
  end
  local model, errs, warns = config.load({ config = opts.config, ambassador = paths })
  if temp then os.remove(temp) end
  if not model then
    error("configuration errors:\n  " .. table.concat(errs or {}, "\n  "), 2)
  end
  if opts.filters then
    local list = {}
    for i, f in ipairs(model.chain or {}) do list[i] = f end
    for _, f in ipairs(opts.filters) do list[#list + 1] = f end
    model.chain = list
  end
  local ch, cerrs = chain_mod.new(model)
  if not ch then error("chain errors:\n  " .. table.concat(cerrs, "\n  "), 2) end
  return setmetatable({ chain = ch, model = model, warnings = warns or {} }, { __index = M.TestChain }), warns
end

M.TestChain = {}

local function new_test_stream(grpc)
  local out = nffi.stream_out
  assert(C.nu_ffi_test_stream_new(out, grpc and 1 or 0) == OK, "out of memory")
  return ffi.gc(out[0], C.nu_ffi_test_stream_free)
end

local function add_headers(s, map, headers)
  for k, v in pairs(headers or {}) do
    if type(v) == "table" then
      for _, one in ipairs(v) do map:add(k, one) end
    else
      map:add(k, v)
    end
  end
end

local Result = {}
Result.__index = Result

--- chain:request{ method?, path?, authority?, scheme?, headers?, body?, grpc? } -> result
--- result fields: route, cluster (model cluster table), path, authority, headers
--- (request headers as the upstream would get them), reply ({status, body,
--- headers, grpc_status, grpc_message} when a local reply was made), error.
function M.TestChain:request(req)
  req = req or {}
  local grpc = req.grpc
  if grpc == nil then
    local ct = req.headers and (req.headers["content-type"] or req.headers["Content-Type"])
    grpc = type(ct) == "string" and ct:match("^application/grpc") ~= nil and ct:sub(17, 17) ~= "-"
  end
  local st = new_test_stream(grpc)
  local s = stream_mod.new(st, self.chain)
  local rq = s.request
  rq:add(":method", req.method or (grpc and "POST" or "GET"))
  rq:add(":scheme", req.scheme or "http")
  rq:add(":authority", req.authority or "localhost")
  rq:add(":path", req.path or "/")
  if grpc then
    if not (req.headers and req.headers["content-type"]) then rq:add("content-type", "application/grpc") end
    if not (req.headers and req.headers["te"]) then rq:add("te", "trailers") end
  end
  add_headers(s, rq, req.headers)
  if req.body then
    assert(C.nu_ffi_test_stream_set_body(st, 0, req.body, #req.body) == OK, "out of memory")
  end

  local rc, err = self.chain:request_headers(s)
  local r = setmetatable({ stream = s, _st = st, _chain = self }, Result)
  if rc < 0 then
    -- What the proxy does with a throwing filter: reply 500 (gRPC: INTERNAL).
    r.error = err
    C.nu_ffi_stream_respond(st, 500, 13, "filter error", 12, "lua_filter_error", 16)
  end
  r.route = s._route or nil
  local cluster, timeout = s:upstream()
  if cluster then
    r.cluster = self.model.clusters[cluster + 1]
    r.timeout_ms = timeout
  end
  r.path = rq:get(":path")
  r.authority = rq:get(":authority")
  r.method = rq:get(":method")
  r.headers = rq:to_table()
  r.reply = M.reply_of(s, st)
  return r
end

--- The local reply a stream made, as a table, or nil.
function M.reply_of(s, st)
  local status = nffi.int_out
  local cap = 65536
  local buf = ffi.new("char[?]", cap)
  if C.nu_ffi_stream_get_reply(st, status, buf, cap, nffi.len_out) ~= OK then return nil end
  local n = tonumber(nffi.len_out[0]) -- read before to_table() reuses the scratch
  local headers = s.response:to_table()
  return {
    status = tonumber(status[0]),
    http_status = tonumber(headers[":status"]),
    body = ffi.string(buf, n < cap and n or cap),
    headers = headers,
    grpc_status = tonumber(headers["grpc-status"]),
    grpc_message = headers["grpc-message"],
  }
end

--- result:respond_upstream{ status = 200, headers = {...}, body = "...", trailers = {...} }
--- runs the response phases as if the upstream had answered; returns
--- { headers = ..., trailers = ..., error = ... } as the client would get them.
function Result:respond_upstream(resp)
  resp = resp or {}
  local s, st = self.stream, self._st
  assert(C.nu_ffi_test_stream_set_phase(st, nffi.PHASE_RESPONSE_HEADERS) == OK)
  s.response:add(":status", tostring(resp.status or 200))
  add_headers(s, s.response, resp.headers)
  add_headers(s, s.trailers, resp.trailers)
  if resp.body then
    assert(C.nu_ffi_test_stream_set_body(st, 1, resp.body, #resp.body) == OK, "out of memory")
  end
  local out = {}
  local rc, err = self._chain.chain:response_headers(s)
  if rc < 0 then out.error = err end
  if resp.trailers then
    C.nu_ffi_test_stream_set_phase(st, nffi.PHASE_RESPONSE_TRAILERS)
    local rc2, err2 = self._chain.chain:response_trailers(s)
    if rc2 < 0 then out.error = out.error or err2 end
  end
  out.headers = s.response:to_table()
  out.trailers = s.trailers:to_table()
  out.reply = M.reply_of(s, st)
  return out
end

--- Runs the log phase and ends the exchange (the stream object is released).
function Result:finish()
  C.nu_ffi_test_stream_set_phase(self._st, nffi.PHASE_LOG)
  local rc, err = self._chain.chain:log(self.stream)
  self.stream:_release()
  return rc, err
end

return M
