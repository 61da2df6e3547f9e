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
  return setmetatable({ chain = ch, model = model, warnings = warns or {}, local_port = opts.local_port,
    secure = opts.secure }, { __index = M.TestChain }), warns
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

--- chain:request{ method?, path?, authority?, scheme?, headers?, body?, grpc?, local_port?, secure? } -> result
--- (local_port / secure default to the chain's options of the same names)
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
  -- What the connection would say: the listener's port (strip_matching_host_port)
  -- and whether the request counts as secure (a Host's insecure action).
  C.nu_ffi_test_stream_set_conn(st, req.local_port or self.local_port or 0,
    (req.secure == nil and self.secure or req.secure) and 1 or 0)
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

------------------------------------------------------------------------------
-- Live mode: the same requests against a real nuncio process. The spec's YAML
-- runs in the binary on free ports, every cluster pinned to a recording
-- upstream (nuncio-h2record), requests go over the network with nghttp, and
-- the result holds what the upstream received (or the reply the client got).
--
--   local chain = testing.live({ ambassador = yaml, lua_path = { "my/filters" },
--                                filters = { { name = "my_filter", config = {...} } } })
--   local r = chain:request({ path = "/pkg.Svc/M", grpc = true })
--   chain:close()
--
-- Differences from in-process results: `route` is nil (the network does not
-- say which Mapping matched); `reply.status` for a gRPC call is the HTTP status
-- nuncio maps that grpc-status from (12 -> 404, 16 -> 401, 7 -> 403, 13 -> 500,
-- 14 -> 503); filters are given by module name (with lua_path), not as tables.
------------------------------------------------------------------------------

pcall(ffi.cdef, [[
struct nu_t_sockaddr_in { uint16_t family; uint16_t port; uint32_t addr; uint8_t zero[8]; };
int socket(int domain, int type, int protocol);
int bind(int fd, const void *addr, uint32_t len);
int getsockname(int fd, void *addr, uint32_t *len);
int close(int fd);
]])

local function free_port()
  local fd = ffi.C.socket(2, 1, 0)
  assert(fd >= 0, "socket() failed")
  local sa = ffi.new("struct nu_t_sockaddr_in")
  sa.family = 2
  sa.addr = 0x0100007f -- 127.0.0.1, network order on little-endian hosts
  local len = ffi.new("uint32_t[1]", ffi.sizeof(sa))
  assert(ffi.C.bind(fd, sa, len[0]) == 0 and ffi.C.getsockname(fd, sa, len) == 0, "bind() failed")
  ffi.C.close(fd)
  local p = sa.port
  return bit.bor(bit.rshift(p, 8), bit.lshift(bit.band(p, 0xff), 8))
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- Helper programs run without LD_PRELOAD: under the ASan build the spec's
-- luajit preloads the ASan runtime, which deadlocks threaded tools like curl.
local CLEAN = "env -u LD_PRELOAD "

local function run_ok(cmd)
  local r = os.execute(CLEAN .. cmd)
  return r == true or r == 0
end

local function json(v)
  local t = type(v)
  if t == "table" then
    if #v > 0 or next(v) == nil then
      local out = {}
      for i, x in ipairs(v) do out[i] = json(x) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local out = {}
    for k, x in pairs(v) do out[#out + 1] = string.format("%q", tostring(k)) .. ":" .. json(x) end
    return "{" .. table.concat(out, ",") .. "}"
  elseif t == "string" then
    return (string.format("%q", v):gsub("\\\n", "\\n"))
  end
  return tostring(v)
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function binaries()
  local src = os.getenv("NUNCIO_SRC") or "."
  local bin = os.getenv("NUNCIO_BIN") or (src .. "/build/nuncio")
  local rec = bin:gsub("nuncio$", "nuncio-h2record")
  return bin, rec
end

-- A background process started through sh is re-parented when sh exits, and
-- its zombie may linger: "alive" means running, not merely present.
local function alive(pid)
  local p = io.popen(CLEAN .. "ps -o stat= -p " .. tostring(pid) .. " 2>/dev/null")
  local st = p and p:read("*l")
  if p then p:close() end
  return st ~= nil and not st:match("^%s*Z")
end

local GRPC_TO_HTTP = { [12] = 404, [16] = 401, [7] = 403, [13] = 500, [14] = 503 }

local function unescape_record(s)
  return (s:gsub("\\x(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function percent_decode(s)
  return s and (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local Live = {}
Live.__index = Live

function M.live(opts)
  opts = opts or {}
  local bin, rec = binaries()
  local dir = os.tmpname()
  os.remove(dir)
  assert(run_ok("mkdir -p " .. shell_quote(dir)), "cannot make " .. dir)
  local amb = dir .. "/ambassador.yaml"
  write(amb, type(opts.ambassador) == "string" and opts.ambassador or "")
  local cwd = os.getenv("PWD") or "."
  local function absolute(path)
    return path:sub(1, 1) == "/" and path or (cwd .. "/" .. path)
  end
  local paths = { amb }
  if type(opts.ambassador) == "table" then
    paths = {}
    for i, path in ipairs(opts.ambassador) do paths[i] = absolute(path) end
  end
  -- The model in-process first: its cluster and listener names are what get re-pointed.
  local model, errs = config.load({ ambassador = paths })
  if not model then error("configuration errors:\n  " .. table.concat(errs or {}, "\n  "), 2) end

  -- The internal diag/probe Mappings route to the admin port, which the live
  -- proxy moves: their clusters are not the spec's to re-point.
  local internal = {}
  for _, r in ipairs(model.routes) do
    if r.internal then internal[r.cluster] = true end
  end
  for _, r in ipairs(model.routes) do
    if not r.internal then internal[r.cluster] = nil end
  end
  local spec_clusters = {}
  for i, c in ipairs(model.clusters) do
    if not internal[i] then spec_clusters[#spec_clusters + 1] = c end
  end
  local self = setmetatable({ dir = dir, model = model }, Live)
  local n = math.max(#spec_clusters, 1)
  self.rec = assert(io.popen(CLEAN .. shell_quote(rec) .. " " .. n .. " --no-stdin", "r"))
  local line = self.rec:read("*l") or ""
  local ports = {}
  for p in line:gmatch("%d+") do ports[#ports + 1] = tonumber(p) end
  self.rec_pid = table.remove(ports)
  assert(#ports == n, "nuncio-h2record did not start: " .. line)
  self.cluster_of_port = {}
  local clusters, listeners = {}, {}
  for i, c in ipairs(spec_clusters) do
    clusters[c.name] = "127.0.0.1:" .. ports[i]
    self.cluster_of_port[ports[i]] = c
  end
  self.port = free_port()
  for i, l in ipairs(model.listeners) do listeners[l.name] = i == 1 and self.port or free_port() end
  self.admin_port = free_port()
  local chain = {}
  for _, f in ipairs(opts.filters or {}) do
    assert(not f.module, "live mode loads filters by module name (give lua_path), not module tables")
    chain[#chain + 1] = { name = f.name, config = f.config or {} }
  end
  local native = {
    log_level = "info",
    workers = 1, -- one worker: the spec's requests share one set of upstream connections
    admin = { address = "127.0.0.1", port = self.admin_port },
    lua_path = (function()
      local out = {}
      for i, d in ipairs(opts.lua_path or {}) do out[i] = absolute(d) end
      return out
    end)(),
    chain = chain,
    ambassador = paths,
    overrides = { clusters = clusters, listeners = listeners },
  }
  self.config = dir .. "/nuncio.json"
  write(self.config, json(native))
  self.log = dir .. "/nuncio.log"
  local pidfile = dir .. "/nuncio.pid"
  assert(run_ok(string.format("sh -c %s", shell_quote(string.format("%s -c %s >%s 2>&1 & echo $! >%s",
    shell_quote(bin), shell_quote(self.config), shell_quote(self.log), shell_quote(pidfile))))),
    "cannot start " .. bin)
  local pf = io.open(pidfile)
  self.pid = pf and tonumber(pf:read("*l"))
  if pf then pf:close() end
  -- Readiness: poll the admin /ready (bounded), failing fast if the process died.
  for _ = 1, 200 do
    if run_ok("curl -sf -m 2 -o /dev/null http://127.0.0.1:" .. self.admin_port .. "/ready") then return self end
    if not alive(self.pid) then break end
    run_ok("sleep 0.05")
  end
  local f = io.open(self.log)
  local log = f and f:read("*a") or ""
  if f then f:close() end
  self:close()
  error("nuncio did not become ready:\n" .. log, 2)
end

--- Same request table as the in-process chain:request.
function Live:request(req)
  req = req or {}
  local grpc = req.grpc
  local headers = {}
  for k, v in pairs(req.headers or {}) do headers[string.lower(k)] = v end
  if grpc == nil then
    local ct = headers["content-type"]
    grpc = type(ct) == "string" and ct:match("^application/grpc") ~= nil and ct:sub(17, 17) ~= "-"
  end
  if grpc then
    headers["content-type"] = headers["content-type"] or "application/grpc"
    headers["te"] = headers["te"] or "trailers"
  end
  local method = req.method or (grpc and "POST" or "GET")
  local args = { "timeout", "30", "nghttp", "-v", "-H", ":method: " .. method, "-H", ":authority: " .. (req.authority or "localhost") }
  for k, v in pairs(headers) do
    local list = type(v) == "table" and v or { v }
    for _, one in ipairs(list) do
      args[#args + 1] = "-H"
      args[#args + 1] = k .. ": " .. tostring(one)
    end
  end
  local body = req.body
  if body == nil and method ~= "GET" and method ~= "HEAD" then body = "" end
  if body then
    local bf = self.dir .. "/body"
    write(bf, body)
    args[#args + 1] = "-d"
    args[#args + 1] = bf
  end
  args[#args + 1] = "http://127.0.0.1:" .. self.port .. (req.path or "/")
  for i, a in ipairs(args) do args[i] = shell_quote(a) end
  local p = assert(io.popen(CLEAN .. table.concat(args, " ") .. " 2>&1", "r"))
  local out = p:read("*a")
  p:close()
  local got = {}
  for name, value in out:gmatch("recv %(stream_id=%d+%) (:?[^:\n]+): ([^\n]*)") do
    got[name] = got[name] and (got[name] .. "," .. value) or value
  end
  local r = { raw = out }
  local record = got["x-h2record"]
  if record then
    local fields = {}
    for f in (record .. "\t"):gmatch("([^\t]*)\t") do fields[#fields + 1] = unescape_record(f) end
    r.cluster = self.cluster_of_port[tonumber(fields[1])]
    r.headers = {}
    for i = 2, #fields - 1, 2 do
      local k, v = fields[i], fields[i + 1]
      r.headers[k] = r.headers[k] and (r.headers[k] .. "," .. v) or v
    end
    r.path, r.authority, r.method = r.headers[":path"], r.headers[":authority"], r.headers[":method"]
    r.timeout_ms = nil
    return r
  end
  local status = tonumber(got[":status"])
  local gs = tonumber(got["grpc-status"])
  r.reply = {
    http_status = status,
    status = (grpc and gs and GRPC_TO_HTTP[gs]) or status,
    grpc_status = gs,
    grpc_message = percent_decode(got["grpc-message"]),
    headers = got,
  }
  return r
end

--- The proxy's log so far (for failure messages).
function Live:proxy_log()
  local f = io.open(self.log)
  local s = f and f:read("*a") or ""
  if f then f:close() end
  return s
end

--- Stops the proxy (SIGTERM, waits for it) and the recorder; returns true if
--- the proxy stopped cleanly.
function Live:close()
  local clean = true
  if self.pid then
    run_ok("kill -TERM " .. self.pid .. " 2>/dev/null")
    for _ = 1, 200 do
      if not alive(self.pid) then break end
      run_ok("sleep 0.05")
    end
    clean = self:proxy_log():find("] stopped", 1, true) ~= nil
    self.pid = nil
  end
  if self.rec_pid then
    run_ok("kill -TERM " .. self.rec_pid .. " 2>/dev/null")
    self.rec:close()
    self.rec_pid = nil
  end
  run_ok("rm -rf " .. shell_quote(self.dir))
  return clean
end

return M
