-- Header rewrites a route asks for after routing (behaviour notes §1.9), done the way
-- Emissary's Envoy route config does them:
--
--   local hr = require("nuncio.header_rewrite")
--   local rw = hr.compile(route, model)   -- once per route (chain.new); nil when nothing to do
--   hr.apply_request(rw, stream)          -- after the router chose the route
--   hr.apply_response(rw, stream)         -- on the upstream response, before the filters
--   hr.check(value) -> unknown_names      -- for load-time warnings (nuncio.ambassador)
--
-- Route fields read (docs/ambassador.md, the loader fills them):
--   route.request_headers_to_add / response_headers_to_add = { { name, value, append }, ... }
--   route.request_headers_to_remove / response_headers_to_remove = { name, ... }
--   route.host_rewrite = "name"
-- Removal comes before addition (Envoy's HeaderParser). append = true adds one more value;
-- false replaces every value. A value that formats to "" is not added (Envoy skips empty
-- values).
--
-- Values may hold Envoy's %…% variables. Everything that can be decided at load is: a value
-- without variables stays a plain string, %UPSTREAM_CLUSTER% and %HOSTNAME% are filled in
-- at compile time, and stream:info() (one C call and a table) is fetched only for values
-- that need the peer, the listener port or the protocol.

local type = type
local tostring = tostring
local find = string.find
local sub = string.sub
local byte = string.byte
local lower = string.lower
local concat = table.concat
local floor = math.floor

local format_mod = require("nuncio.ambassador.format")

local M = {}

---------------------------------------------------------------------------------------------
-- Randomness: LuaJIT's math.random starts from a fixed seed, so two workers (or two runs)
-- would make the same random choices (the router's canary draws). Seed once per Lua state
-- from the kernel. (x-request-id is made in C: nu_ffi_hdr_set_request_id.)
---------------------------------------------------------------------------------------------

local seeded = false

local function seed()
  if seeded then
    return
  end
  seeded = true
  local n = 0
  local f = io.open("/dev/urandom", "rb")
  if f then
    local b = f:read(6)
    f:close()
    if b and #b == 6 then
      for i = 1, 6 do
        n = n * 256 + byte(b, i)
      end
    end
  end
  if n == 0 then
    n = os.time() + floor(os.clock() * 1e6)
  end
  math.randomseed(n)
end
M.seed = seed

---------------------------------------------------------------------------------------------
-- %…% variables
---------------------------------------------------------------------------------------------

-- peer "1.2.3.4:5678" or "[::1]:5678" (csrc/conn.c) -> address without the port; IPv6
-- without brackets, as Envoy prints it.
local function without_port(peer)
  if byte(peer, 1) == 91 then -- '['
    local close = find(peer, "]", 2, true)
    if close then
      return sub(peer, 2, close - 1)
    end
    return peer
  end
  local colon = find(peer, ":", 1, true)
  if colon then
    return sub(peer, 1, colon - 1)
  end
  return peer
end

local function port_of(peer)
  local p = peer:match(":(%d+)$")
  return p or ""
end

-- The variables nuncio.ambassador.format knows. Each: function(s, info) -> string; info is
-- stream:info(), fetched once per exchange for the values that need it.
local DYNAMIC = {
  DOWNSTREAM_REMOTE_ADDRESS = function(_, info) return info.peer end,
  DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT = function(_, info) return without_port(info.peer) end,
  DOWNSTREAM_REMOTE_PORT = function(_, info) return port_of(info.peer) end,
  DOWNSTREAM_DIRECT_REMOTE_ADDRESS = function(_, info) return info.peer end,
  DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT = function(_, info) return without_port(info.peer) end,
  DOWNSTREAM_LOCAL_PORT = function(_, info) return tostring(info.local_port) end,
  -- The core reports no protocol yet and speaks HTTP/2 downstream; use it once it does.
  PROTOCOL = function(_, info) return info.protocol or "HTTP/2" end,
}

local hostname
local function system_hostname()
  if hostname == nil then
    local f = io.open("/proc/sys/kernel/hostname", "r")
    local h = f and f:read("*l") or nil
    if f then
      f:close()
    end
    hostname = h or os.getenv("HOSTNAME") or ""
  end
  return hostname
end

-- Fixed for the life of a configuration: filled in at compile time.
local STATIC = {
  UPSTREAM_CLUSTER = function(ctx) return ctx.cluster_name or "" end,
  HOSTNAME = system_hostname,
}

M.DYNAMIC, M.STATIC = DYNAMIC, STATIC

-- %REQ(a?b):N% / %RESP(a?b):N%: the first value of a (else b), cut to N; "" when absent.
local function header_var(t)
  local main, alt, maxlen = t.main, t.alt, t.maxlen
  local request = t.header == "REQ"
  return function(s)
    local map = request and s.request or s.response
    local v = map:get(main)
    if v == nil and alt then
      v = map:get(alt)
    end
    if v == nil then
      return ""
    end
    if maxlen and #v > maxlen then
      v = sub(v, 1, maxlen)
    end
    return v
  end
end

-- parse(value, ctx) -> parts: literal strings (static variables filled in, adjacent ones
-- merged) and { fn = f, info = bool } for what depends on the exchange. Unknown variables
-- stay as written (the loader warned about them). ctx: { side, cluster_name }.
local function parse(value, ctx)
  local tokens = format_mod.tokenize(value, ctx.side)
  local parts, buf = {}, {}
  local function flush()
    local text = concat(buf)
    if text ~= "" then
      parts[#parts + 1] = text
    end
    buf = {}
  end
  for i = 1, #tokens do
    local t = tokens[i]
    if type(t) == "string" then
      buf[#buf + 1] = t
    elseif t.header then
      flush()
      parts[#parts + 1] = { fn = header_var(t), info = false }
    elseif STATIC[t.var] then
      buf[#buf + 1] = STATIC[t.var](ctx)
    elseif DYNAMIC[t.var] then
      flush()
      parts[#parts + 1] = { fn = DYNAMIC[t.var], info = true }
    else
      buf[#buf + 1] = "%" .. t.var .. "%"
    end
  end
  flush()
  return parts
end

--- check(value, side?) -> an array of the %…% this value holds that nuncio does not know
--- (they are sent as written), or nil.
function M.check(value, side)
  return format_mod.unknown(value, side or "request")
end

-- A compiled value: a string, or { parts..., info = bool } evaluated per exchange.
local function compile_value(value, ctx)
  value = tostring(value)
  if not find(value, "%", 1, true) then
    return value, false
  end
  local parts = parse(value, ctx)
  if #parts == 0 then
    return "", false
  end
  if #parts == 1 and type(parts[1]) == "string" then
    return parts[1], false
  end
  local needs_info = false
  for i = 1, #parts do
    if type(parts[i]) == "table" and parts[i].info then
      needs_info = true
    end
  end
  parts.needs_info = needs_info
  return parts, needs_info
end

local scratch = {}

local function evaluate(parts, s, info)
  local n = #parts
  if n == 1 then
    return parts[1].fn(s, info)
  end
  for i = 1, n do
    local p = parts[i]
    if type(p) == "string" then
      scratch[i] = p
    else
      scratch[i] = p.fn(s, info)
    end
  end
  local v = concat(scratch, "", 1, n)
  for i = 1, n do
    scratch[i] = nil
  end
  return v
end

local function compile_adds(list, ctx)
  if not list or #list == 0 then
    return nil, false
  end
  local out, any_info = {}, false
  for i = 1, #list do
    local h = list[i]
    local v, info = compile_value(h.value, ctx)
    any_info = any_info or info
    out[i] = { name = lower(h.name), value = v, append = h.append ~= false }
  end
  return out, any_info
end

local function compile_removes(list)
  if not list or #list == 0 then
    return nil
  end
  local out = {}
  for i = 1, #list do
    out[i] = lower(list[i])
  end
  return out
end

--- compile(route, model) -> rw | nil when the route rewrites nothing.
--- rw = { req_add, req_remove, host_rewrite, resp_add, resp_remove, req_info, resp_info }
function M.compile(route, model)
  local cluster = model and model.clusters and route.cluster and model.clusters[route.cluster]
  local base = cluster and cluster.name or nil
  local rw = {}
  local any = false
  rw.req_add, rw.req_info = compile_adds(route.request_headers_to_add,
    { side = "request", cluster_name = base })
  rw.resp_add, rw.resp_info = compile_adds(route.response_headers_to_add,
    { side = "response", cluster_name = base })
  rw.req_remove = compile_removes(route.request_headers_to_remove)
  rw.resp_remove = compile_removes(route.response_headers_to_remove)
  if type(route.host_rewrite) == "string" and route.host_rewrite ~= "" then
    rw.host_rewrite = route.host_rewrite
  end
  any = rw.req_add or rw.resp_add or rw.req_remove or rw.resp_remove or rw.host_rewrite
  if not any then
    return nil
  end
  rw.request = (rw.req_add or rw.req_remove or rw.host_rewrite) and true or false
  rw.response = (rw.resp_add or rw.resp_remove) and true or false
  return rw
end

local function apply(map, removes, adds, needs_info, s)
  if removes then
    for i = 1, #removes do
      map:remove(removes[i])
    end
  end
  if adds then
    local info = needs_info and s:info() or nil
    for i = 1, #adds do
      local h = adds[i]
      local v = h.value
      if type(v) ~= "string" then
        v = evaluate(v, s, info)
      end
      if v ~= "" then
        if h.append then
          map:add(h.name, v)
        else
          map:set(h.name, v)
        end
      end
    end
  end
end

--- Request side: removals, additions, then host_rewrite (Envoy's finalizeRequestHeaders).
function M.apply_request(rw, s)
  local rq = s.request
  apply(rq, rw.req_remove, rw.req_add, rw.req_info, s)
  if rw.host_rewrite then
    rq:set(":authority", rw.host_rewrite)
  end
end

--- Response side: removals, then additions.
function M.apply_response(rw, s)
  apply(s.response, rw.resp_remove, rw.resp_add, rw.resp_info, s)
end

return M
