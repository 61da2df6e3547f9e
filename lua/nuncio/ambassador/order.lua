-- Emissary's route order and canary groups, shared by the loader (nuncio.ambassador, which
-- reports bad weights with their file line) and the router (which evaluates routes in this
-- order). Kept apart from nuncio.router so that a user's own router (lua_path) does not
-- change how the configuration loads.
--
--   order.route_weight(route) -> the weight list Emissary sorts on (descending)
--   order.group_key(route)    -> equal for routes with identical match criteria
--   order.canary_weights(weights, n) -> order, cumulative weights | nil, index, message
--
-- route: the model route (docs/internals.md §2) or the loader's record, same field names.

local lower = string.lower
local format = string.format
local sort = table.sort
local concat = table.concat
local floor = math.floor
local tostring = tostring

local _M = {}

-- Route weight (Emissary ir/irhttpmapping.py _route_weight, ir/ir.py ordered_groups)

-- One header constraint's share of the weight. Emissary's KeyValueDecorator uses
-- `value or "*"`, so a presence match (value true, stored as None) and an empty value both
-- count as "*"; a regex costs one more.
local function header_weight(name, value, is_regex)
  if value == true or value == nil or value == "" then
    value = "*"
  else
    value = tostring(value)
  end
  return #name + #value + (is_regex and 1 or 0), name .. "-" .. value
end

-- route_weight(route) -> { precedence, #prefix, Σheader lengths, Σquery lengths, prefix,
--                          method, header keys..., query keys... }
--
-- Header keys follow the model's headers array; Emissary's own list is exact and presence
-- headers, then regex_headers, so config.load should keep that order. Then comes the
-- :authority constraint Emissary synthesizes from hostname/host (even hostname "*", which
-- Envoy then drops from the matcher), then :method. Query parameters (route.query, exact and
-- presence first, then regex) count the same way in their own slots. A missing method
-- counts as "GET".
function _M.route_weight(route)
  local sum = 0
  local keys = {}
  local headers = route.headers
  if headers then
    for i = 1, #headers do
      local h = headers[i]
      local len, key = header_weight(h.name, h.value, h.value ~= true and h.regex)
      sum = sum + len
      keys[#keys + 1] = key
    end
  end
  local host = route.host
  if host and host.value and host.value ~= "" then
    local len, key = header_weight(":authority", host.value, host.kind == "regex")
    sum = sum + len
    keys[#keys + 1] = key
  end
  if route.method then
    local len, key = header_weight(":method", route.method, route.method_regex)
    sum = sum + len
    keys[#keys + 1] = key
  end
  local qsum = 0
  local query = route.query
  if query then
    for i = 1, #query do
      local q = query[i]
      local len, key = header_weight(q.name, q.value, q.value ~= true and q.regex)
      qsum = qsum + len
      keys[#keys + 1] = key
    end
  end

  local prefix = route.prefix or ""
  local w = { route.precedence or 0, #prefix, sum, qsum, prefix, route.method or "GET" }
  for i = 1, #keys do
    w[#w + 1] = keys[i]
  end
  return w
end

---------------------------------------------------------------------------------------------
-- Canary groups and weights (Emissary ir/irbasemappinggroup.py normalize_weights_in_mappings)
---------------------------------------------------------------------------------------------

-- Mappings with identical match criteria form one group; Envoy gets one route per Mapping,
-- each with runtime_fraction = the *cumulative* weight, and draws one random value per
-- request, so Mapping i wins with probability (cum_i - cum_{i-1})%.
--
-- group_key(route) -> string: equal for routes whose match criteria are identical. Emissary's
-- group id hashes method (default GET), prefix, every header (the :authority from
-- host/hostname and :method included), query parameters and precedence; its group also
-- insists on equal prefix_regex/prefix_exact, so those (and case_sensitive) are part of the
-- key here: two routes that match differently are never one group.
local function kv_key(name, value, is_regex)
  if value == true or value == nil or value == "" then
    value = "*"
  end
  return name .. "=" .. tostring(value) .. (is_regex and "~" or "")
end

function _M.group_key(route)
  local parts = {}
  local headers = route.headers
  if headers then
    for i = 1, #headers do
      local h = headers[i]
      parts[#parts + 1] = kv_key(lower(h.name), h.value, h.value ~= true and h.regex)
    end
  end
  local host = route.host
  if host and host.value and host.value ~= "" then
    local v = host.kind == "regex" and host.value or lower(host.value)
    parts[#parts + 1] = kv_key(":authority", v, host.kind == "regex")
  end
  if route.method then
    parts[#parts + 1] = kv_key(":method", route.method, route.method_regex)
  end
  sort(parts)
  local q = {}
  local query = route.query
  if query then
    for i = 1, #query do
      local p = query[i]
      q[#q + 1] = kv_key(p.name, p.value, p.value ~= true and p.regex)
    end
  end
  sort(q)
  -- Emissary's group id also holds the mappingSelector labels of the Hosts a host-less
  -- Mapping is selected by: here, the set of Hosts the route is attached to.
  local attached = {}
  local hosts = route.hosts
  if hosts then
    for i = 1, #hosts do
      attached[i] = tostring(hosts[i])
    end
    sort(attached)
  end
  return concat({
    route.method or "GET", route.prefix or "", route.prefix_regex and "R" or "-",
    route.prefix_exact and "E" or "-", route.case_sensitive == false and "i" or "-",
    tostring(route.precedence or 0), concat(parts, "\0"), concat(q, "\0"),
    concat(attached, ","),
  }, "\1")
end

-- Python 3 round(): halves go to the even neighbour.
local function round_half_even(x)
  local f = floor(x)
  local d = x - f
  if d > 0.5 or (d == 0.5 and f % 2 == 1) then
    return f + 1
  end
  return f
end

-- canary_weights(weights, n) -> order, cums | nil, index, message
-- weights[i] is the i-th group member's configured weight (a number) or false (none), in
-- group order (the order the Mappings were loaded). order lists member indexes in the order
-- Emissary emits them (weighted ones first, then the weightless); cums[i] is member i's
-- cumulative weight, 0..100. A lone member gets 100 whatever its weight. Errors as
-- Emissary's: a weight over 100, or weights adding up to more than 100 (index: the member
-- where the total went over).
function _M.canary_weights(weights, n)
  n = n or #weights
  if n == 1 then
    return { 1 }, { 100 }
  end
  local order, cums, weightless = {}, {}, {}
  local current, over_at = 0, nil
  for i = 1, n do
    local w = weights[i]
    if w then
      if w > 100 then
        return nil, i, format("weight %s is over 100", tostring(w))
      end
      current = current + round_half_even(w)
      if current > 100 and not over_at then
        over_at = i
      end
      cums[i] = current
      order[#order + 1] = i
    else
      weightless[#weightless + 1] = i
    end
  end
  if over_at then
    return nil, over_at, format("the weights of Mappings with the same match add up to %d, over 100", current)
  end
  local nw = #weightless
  if nw > 0 then
    local per = round_half_even((100 - current) / nw)
    for j = 1, nw do
      if j == nw then
        current = 100
      else
        current = current + per
      end
      cums[weightless[j]] = current
      order[#order + 1] = weightless[j]
    end
  end
  return order, cums
end

return _M
