-- strip_host_port: Envoy's strip_matching_host_port (Module `strip_matching_host_port: true`,
-- behaviour notes §5.1), as a native filter. The chain puts it first when the Module asks.
--
-- Before routing, ":authority" loses its ":port" only when that port is the port of the
-- listener the request came in on (stream:info().local_port): "api.example.com:8080" on the
-- 8080 listener becomes "api.example.com"; ":443" stays when a load balancer maps 443 to
-- 8443. As Envoy (HeaderUtility::stripPortFromHost):
--   * the port is what follows the last ":", unless a "]" comes after it: "[::1]:8080"
--     strips to "[::1]", "[::1]" has no port;
--   * a port that is not a number ("host:", "host:abc") leaves the authority alone;
--   * CONNECT requests keep their port (RFC 2817);
--   * an empty or missing authority is left alone.
-- The upstream then sees the stripped authority too.
--
-- It is a filter like any other: copy it under your lua_path with the same name to change it.

local find = string.find
local sub = string.sub
local byte = string.byte
local tonumber = tonumber

local M = { VERSION = "1.0" }

-- port_start(authority) -> index of the ":" before the port, or nil
local function port_start(a)
  local colon
  local i = 0
  while true do
    local j = find(a, ":", i + 1, true)
    if not j then
      break
    end
    colon, i = j, j
  end
  if not colon then
    return nil
  end
  if byte(a, 1) == 91 then -- '[': an IPv6 literal; its ':'s are inside the brackets
    local close = find(a, "]", 2, true)
    if not close or close > colon then
      return nil
    end
  end
  return colon
end

--- strip(authority, listener_port) -> the authority without ":port" when the port equals
--- listener_port, else the authority unchanged.
function M.strip(authority, listener_port)
  if not authority or authority == "" or not listener_port or listener_port <= 0 then
    return authority
  end
  local at = port_start(authority)
  if not at then
    return authority
  end
  local digits = sub(authority, at + 1)
  if digits == "" or find(digits, "[^0-9]") or #digits > 5 then
    return authority
  end
  if tonumber(digits) ~= listener_port then
    return authority
  end
  return sub(authority, 1, at - 1)
end

function M.new()
  local strip = M.strip
  -- confined: keeps nothing of a stream past its call (nuncio.chain: reuse_stream)
  local self = { confined = true }
  function self.on_request_headers(_, s)
    local rq = s.request
    local a = rq:get(":authority")
    -- no ":" -> nothing to do, and no stream:info() call for the common case
    if not a or not find(a, ":", 1, true) then
      return
    end
    if rq:get(":method") == "CONNECT" then
      return
    end
    local stripped = strip(a, s:info().local_port)
    if stripped ~= a then
      rq:set(":authority", stripped)
    end
  end
  return self
end

return M
