-- The stream object filters receive: request/response header maps that live
-- in C (read through FFI without copying the map), route lookup, local
-- replies and a per-exchange ctx table. Phase rules are enforced in C; a
-- call the current phase does not allow raises an error naming the call.
local ffi = require("ffi")
local nffi = require("nuncio.ffi")
local log = require("nuncio.log")

local C = nffi.C
local ffi_string = ffi.string
local str_out, len_out, int_out = nffi.str_out, nffi.len_out, nffi.int_out
local setmetatable, rawset, rawget, tostring, tonumber, type, error, pairs = setmetatable, rawset, rawget, tostring,
  tonumber, type, error, pairs
local string_format, string_byte, table_concat = string.format, string.byte, table.concat

local OK, DECLINED, BAD_CONTEXT, AGAIN = nffi.OK, nffi.DECLINED, nffi.BAD_CONTEXT, nffi.AGAIN
local ffi_new, coroutine_yield = ffi.new, coroutine.yield

local M = {}

local Headers = {}
Headers.__index = Headers

local function cptr(self)
  local st = self._s._st
  if not st then
    error("this stream has ended; a filter kept it past its exchange", 3)
  end
  return st
end

local function sptr(s)
  local st = s._st
  if not st then
    error("this stream has ended; a filter kept it past its exchange", 3)
  end
  return st
end

local function check_write(rc, what, name)
  if rc == OK then return end
  if rc == BAD_CONTEXT then
    error(string_format("%s(%q): these headers were already sent and can no longer change", what, name), 3)
  end
  error(string_format("%s(%q) failed (out of memory?)", what, name), 3)
end

--- The first value of a header, or nil.
function Headers:get(name)
  local rc = C.nu_ffi_hdr_get(cptr(self), self._which, name, #name, 0, str_out, len_out)
  if rc ~= OK then return nil end
  -- Not a tail call: a root trace cannot tail-call ffi.string and return
  -- below its start ("leaving loop in root trace"), so it never compiled.
  local v = ffi_string(str_out[0], len_out[0])
  return v
end

--- The value of a header, repeated values joined with "," (Envoy's get), or nil.
--- The common single value costs no table.
function Headers:get_joined(name)
  local n = C.nu_ffi_hdr_get_n(cptr(self), self._which, name, #name, str_out, len_out)
  if n <= 0 then return nil end
  if n == 1 then
    local v = ffi_string(str_out[0], len_out[0]) -- not a tail call: see get()
    return v
  end
  return table_concat(self:get_all(name), ",")
end

--- Every value of a header, in order (an empty table if none).
function Headers:get_all(name)
  local st = cptr(self)
  local out, k = {}, 0
  while C.nu_ffi_hdr_get(st, self._which, name, #name, k, str_out, len_out) == OK do
    k = k + 1
    out[k] = ffi_string(str_out[0], len_out[0])
  end
  return out
end

function Headers:count(name)
  local st = cptr(self)
  if name then return C.nu_ffi_hdr_count(st, self._which, name, #name) end
  return C.nu_ffi_hdr_count(st, self._which, nil, 0)
end

local function changed(self)
  if self._which == nffi.REQUEST then
    -- Envoy clears the route cache when a filter edits request headers;
    -- the next route() call (and the router) selects again.
    self._s._route = nil
  end
end

function Headers:set(name, value)
  value = tostring(value)
  check_write(C.nu_ffi_hdr_set(cptr(self), self._which, name, #name, value, #value), "set", name)
  changed(self)
end

--- Request headers only: x-request-id becomes a new random UUID v4 (made in C:
--- the chain does this for every request, and a Lua-made id cost ~160 ns).
function Headers:set_request_id()
  if self._which ~= nffi.REQUEST then error("set_request_id: request headers only", 2) end
  check_write(C.nu_ffi_hdr_set_request_id(cptr(self)), "set", "x-request-id")
  changed(self)
end

function Headers:add(name, value)
  value = tostring(value)
  check_write(C.nu_ffi_hdr_add(cptr(self), self._which, name, #name, value, #value), "add", name)
  changed(self)
end

function Headers:remove(name)
  local rc = C.nu_ffi_hdr_remove(cptr(self), self._which, name, #name)
  if rc < 0 then check_write(rc, "remove", name) end
  if rc > 0 then changed(self) end
  return rc
end

--- Iterates (name, value) over a snapshot of the map, in order.
function Headers:pairs()
  local st = cptr(self)
  local n = C.nu_ffi_hdr_count(st, self._which, nil, 0)
  local names, values = {}, {}
  for i = 0, n - 1 do
    if C.nu_ffi_hdr_at(st, self._which, i, str_out, len_out, str_out + 1, len_out + 1) == OK then
      names[#names + 1] = ffi_string(str_out[0], len_out[0])
      values[#values + 1] = ffi_string(str_out[1], len_out[1])
    end
  end
  local i = 0
  return function()
    i = i + 1
    if names[i] then return names[i], values[i] end
  end
end

--- A plain table name -> value (repeated names: the values joined with ",").
function Headers:to_table()
  local t = {}
  for k, v in self:pairs() do
    t[k] = t[k] and (t[k] .. "," .. v) or v
  end
  return t
end

local REQUEST, RESPONSE, TRAILERS, REQUEST_TRAILERS = nffi.REQUEST, nffi.RESPONSE, nffi.TRAILERS,
  nffi.REQUEST_TRAILERS
local FLAG_GRPC, FLAG_SECURE = nffi.FLAG_GRPC, nffi.FLAG_SECURE
local band = require("bit").band

local Stream = {}

--- s = stream.new(cdata_stream, chain): chain gives route() its router.
-- Each table costs hundreds of instructions to make and collect, so an
-- exchange starts with two (the stream and its request map); the other maps
-- and ctx are made when first touched.
local LAZY_MAP = { response = RESPONSE, trailers = TRAILERS, request_trailers = REQUEST_TRAILERS }
local StreamMT = {
  __index = function(s, k)
    local m = Stream[k]
    if m ~= nil then return m end
    local which = LAZY_MAP[k]
    if which then
      local h = setmetatable({ _s = s, _which = which }, Headers)
      rawset(s, k, h)
      return h
    end
    if k == "ctx" then
      local c = {}
      rawset(s, "ctx", c)
      return c
    end
    return nil
  end,
}

--- s = stream.new(cdata_stream, chain): chain gives route() its router.
function M.new(st, chain)
  local s = setmetatable({ _st = st, _chain = chain, request = false, _replied = false }, StreamMT)
  s.request = setmetatable({ _s = s, _which = REQUEST }, Headers)
  return s
end

--- Ends an exchange's use of s so that a later one can take it (M.take):
--- what new() made stays, everything an exchange added goes. Each field an
--- exchange may add is listed here; stream_spec checks that none is left.
function M.recycle(s)
  s._st, s._replied = nil, false
  -- rawget first: assigning nil to an absent key would add it to the table
  if rawget(s, "_route") ~= nil then s._route = nil end
  if rawget(s, "_route_why") ~= nil then s._route_why = nil end
  if rawget(s, "response") ~= nil then s.response = nil end
  if rawget(s, "trailers") ~= nil then s.trailers = nil end
  if rawget(s, "request_trailers") ~= nil then s.request_trailers = nil end
  if rawget(s, "ctx") ~= nil then s.ctx = nil end
end

-- The object a finished request phase left for the next one (M.put). One is
-- enough: a phase that waits for a body keeps its own meanwhile.
local spare = false

--- s = stream.take(cdata_stream, chain): a request phase's stream object,
--- the one the last phase left (M.put) or a new one.
function M.take(st, chain)
  local s = spare
  if not s then return M.new(st, chain) end
  spare = false
  s._st, s._chain = st, chain
  return s
end

--- After the request phase of an exchange with no later phase: s is kept
--- for the next request when its chain says nothing can have kept it
--- (chain.reuse_stream: bundled filters proved to keep nothing), else
--- released. Requests then make no tables; their garbage was over half of
--- the Lua request path's cost at 10 000 Mappings (bench/README.md, target 4).
function M.put(s)
  if s._chain.reuse_stream then
    M.recycle(s)
    spare = s
  else
    s:_release()
  end
end

function Stream:method() return self.request:get(":method") end
function Stream:path() return self.request:get(":path") end
function Stream:authority() return self.request:get(":authority") end
function Stream:scheme() return self.request:get(":scheme") end
function Stream:set_path(p) self.request:set(":path", p) end
function Stream:set_authority(a) self.request:set(":authority", a) end

--- Facts about the exchange: ids, peer address, gRPC, TLS, phase.
function Stream:info()
  local st = sptr(self)
  local i = nffi.info
  C.nu_ffi_stream_info(st, i)
  return {
    stream_id = tonumber(i.stream_id), conn_id = tonumber(i.conn_id), grpc = i.grpc ~= 0,
    secure = i.secure ~= 0, phase = i.phase, local_port = i.local_port, peer = ffi_string(i.peer),
  }
end

function Stream:is_grpc()
  return band(C.nu_ffi_stream_flags(sptr(self)), FLAG_GRPC) ~= 0
end

--- The client's protocol, as Envoy's streamInfo():protocol() names it.
function Stream:protocol()
  return band(C.nu_ffi_stream_flags(sptr(self)), nffi.FLAG_HTTP1) ~= 0 and "HTTP/1.1" or "HTTP/2"
end

-- The request route() hands the router, reused: the router reads it during
-- match() and keeps nothing, and match() never re-enters route().
local match_req = { authority = "", path = "/", method = "GET", header = false, secure = false }
local match_stream
match_req.header = function(name) return match_stream.request:get(name) end

--- The route the current request headers select, or nil and why
--- ("no_route", "rejected", "redirect"). Cached until a request header changes.
function Stream:route()
  local r = self._route
  if r == nil then
    local router = self._chain and self._chain.router
    if not router then return nil, "no_route" end
    local flags = C.nu_ffi_stream_flags(sptr(self))
    local rq = self.request
    local req = match_req
    req.authority = rq:get(":authority") or ""
    req.path = rq:get(":path") or "/"
    req.method = rq:get(":method") or "GET"
    req.secure = band(flags, FLAG_SECURE) ~= 0
    match_stream = self
    local why
    r, why = router:match(req)
    match_stream = nil
    if not r then
      r = false
      self._route_why = why
    end
    self._route = r
  end
  if r == false then return nil, self._route_why end
  return r
end

--- Ends the exchange with a local reply. For gRPC requests the core turns it
--- into a trailers-only response with the mapped grpc-status, as Envoy does.
function Stream:respond(status, body, headers, details, grpc_status)
  if type(status) ~= "number" then error("respond: status must be a number", 2) end
  body = body and tostring(body) or ""
  details = details or "filter_local_reply"
  local rc = C.nu_ffi_stream_respond(sptr(self), status, grpc_status or -1, body, #body, details, #details)
  if rc == BAD_CONTEXT then error("respond: the response has already started", 2) end
  if rc ~= OK then error("respond: invalid status " .. tostring(status), 2) end
  if headers then
    for k, v in pairs(headers) do
      if string_byte(k, 1) ~= 58 then -- ':' pseudo-headers belong to the core
        self.response:set(k, v)
      end
    end
  end
  self._replied = true
  return true
end

function Stream:replied() return self._replied == true end

--- The whole body of the message this phase is about (the request in the
--- request phase, the response in the response phase), as a string. The
--- filter waits for it without blocking the proxy: the exchange goes on once
--- the body has ended. Bodies over the buffer limit (1 MiB) end the exchange
--- with 413 and this call never returns.
function Stream:read_body(which)
  local st = sptr(self)
  local info = nffi.info
  if which == nil then
    C.nu_ffi_stream_info(st, info)
    which = info.phase == nffi.PHASE_RESPONSE_HEADERS and 1 or 0
  end
  while true do
    local rc = C.nu_ffi_stream_body_wait(st, which, len_out)
    if rc == OK then break end
    if rc == AGAIN then
      -- The runtime must find this object if the core gives up the wait.
      local park = M.park
      if park then park(self) end
      coroutine_yield()
      st = sptr(self)
    elseif rc == BAD_CONTEXT then
      error("read_body: the body can only be read in the request or response headers phase", 2)
    else
      return nil, "read_body failed"
    end
  end
  local n = tonumber(len_out[0])
  if n == 0 then return "" end
  local buf = ffi_new("char[?]", n)
  C.nu_ffi_stream_body_copy(st, which, buf, n, len_out)
  return ffi_string(buf, len_out[0])
end

--- The upstream the router chose: cluster index (0-based, as C has it) and timeout.
function Stream:upstream()
  local rc = C.nu_ffi_stream_get_upstream(sptr(self), int_out, int_out + 1)
  if rc ~= OK then return nil end
  return int_out[0], int_out[1]
end

-- policy: the route's upstream policy (retries, idle timeout), 0-based; 0 = default
function Stream:set_upstream(cluster, timeout_ms, policy, route)
  local rc = C.nu_ffi_stream_set_upstream(sptr(self), cluster, timeout_ms or 0, policy or 0, route or -1)
  if rc ~= OK then error("set_upstream: not allowed now (rc " .. rc .. ")", 2) end
end

function Stream:log(level, fmt, ...)
  local id = self._st and tonumber(self:info().stream_id) or 0
  log.write(level, "[s" .. id .. "] " .. tostring(fmt), ...)
end

--- Called by the runtime when the exchange ends: later use raises instead of
--- touching freed memory.
function Stream:_release()
  self._st = nil
end

M.Stream = Stream
M.Headers = Headers
M.DECLINED = DECLINED
return M
