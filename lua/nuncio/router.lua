-- The router: picks the Mapping (model route) for a request the way Emissary's generated
-- Envoy config would (reference/ambassador-behaviour.md §1.1-1.7, §2.2-2.4).
--
--   local r = router.new(model)            -- compile once per config generation
--   local route, why = r:match(req)         -- per request; why: no_route|rejected|redirect
--   local path = router.rewrite(route, req.path)
--
-- Everything that can be decided from the config is decided in new(): routes are sorted,
-- canary groups formed and their cumulative weights computed, hostnames lowercased, regexes
-- compiled and each virtual host gets its own array of candidate routes, indexed (see
-- "Candidate index") so that match() looks only at the routes that could match the request's
-- exact authority and first path segment: with 10 000 Mappings on distinct hosts or prefixes
-- a request costs about what it costs with 10. match() creates no tables; per request it
-- makes one short string (the first path segment) and compares strings per candidate route
-- (plus one random draw when a canary group is reached, exactly as the linear scan would).

local regex = require("nuncio.regex")
local order = require("nuncio.ambassador.order")

local lower = string.lower
local sub = string.sub
local byte = string.byte
local find = string.find
local format = string.format
local sort = table.sort
local type = type
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local error = error
local random = math.random

local _M = {}

-- Emissary's "ACME hole-puncher": a route with exactly this prefix is routed for insecure
-- requests even on Reject/Redirect Hosts (v3listener.py compute_http_routes). It compares
-- Envoy's match.prefix, so prefix_exact and prefix_regex routes never qualify.
local ACME_PREFIX = "/.well-known/acme-challenge/"

local PATH_PREFIX, PATH_EXACT, PATH_REGEX = 1, 2, 3
local HOST_EXACT, HOST_SUFFIX, HOST_PREFIX, HOST_REGEX = 1, 2, 3, 4
local HDR_EXACT, HDR_REGEX, HDR_PRESENT = 1, 2, 3

local ACTIONS = { Route = true, Redirect = true, Reject = true }

local HUGE = math.huge
local EMPTY = {} -- an index list with no routes (never written to)

---------------------------------------------------------------------------------------------
-- Route order and canary groups (nuncio.ambassador.order: the loader shares them)
---------------------------------------------------------------------------------------------

_M.route_weight = order.route_weight
_M.group_key = order.group_key
_M.canary_weights = order.canary_weights

-- Python list comparison, descending; equal weights keep the model's order (Emissary's
-- sorted(..., reverse=True) is stable too). Each position holds the same type in every
-- weight, and LuaJIT compares strings bytewise, which for UTF-8 is Python's code point order.
local function evaluated_before(a, b)
  local wa, wb = a.weight, b.weight
  local na, nb = #wa, #wb
  for i = 1, (na < nb) and na or nb do
    local x, y = wa[i], wb[i]
    if x ~= y then
      return x > y
    end
  end
  if na ~= nb then
    return na > nb -- Python ranks a list that extends an equal one higher
  end
  return a.index < b.index
end

---------------------------------------------------------------------------------------------
-- Compiling routes
---------------------------------------------------------------------------------------------

local function route_error(route, field, msg)
  return format("%s: Mapping %s: %s: %s", route.source or "?", route.name or "?", field, msg)
end

local function compile_regex(route, field, pattern)
  if type(pattern) ~= "string" then
    return nil, route_error(route, field, "regex must be a string")
  end
  local re, err = regex.compile(pattern)
  if not re then
    return nil, route_error(route, field, err)
  end
  return re
end

-- The route's own :authority constraint, as Envoy's header matcher would apply it. glob
-- follows v3route.py: "*" -> no matcher, "*suffix" -> suffix match, "prefix*" -> prefix
-- match, else exact. Hostnames are case-insensitive, so glob and exact values are compared
-- lowercased against the lowercased authority; a regex sees the authority as sent.
local function compile_host(c, route)
  local host = route.host
  if not host then
    return true
  end
  local kind, value = host.kind, host.value
  if type(value) ~= "string" then
    return nil, route_error(route, "host", "value must be a string")
  end
  if kind == "regex" then
    local re, err = compile_regex(route, "host", value)
    if not re then
      return nil, err
    end
    c.host_kind, c.host_re = HOST_REGEX, re
  elseif kind == "glob" then
    if value == "*" or value == "" then
      return true
    elseif byte(value, 1) == 42 then -- '*'
      c.host_kind, c.host_value = HOST_SUFFIX, lower(sub(value, 2))
    elseif byte(value, -1) == 42 then
      c.host_kind, c.host_value = HOST_PREFIX, lower(sub(value, 1, -2))
    else
      c.host_kind, c.host_value = HOST_EXACT, lower(value)
    end
  elseif kind == "exact" then
    c.host_kind, c.host_value = HOST_EXACT, lower(value)
  else
    return nil, route_error(route, "host", "unknown kind " .. tostring(kind))
  end
  return true
end

-- Matchers of headers / query parameters: presence (value true), regex, or exact.
-- name_field / regex_field name the Mapping fields in errors; names are lower-cased
-- for headers (HTTP/2 names are), kept for query parameters (Envoy compares them exactly).
-- -> the matcher list (nil when there is none), or nil, err
local function compile_matchers(route, list, name_field, regex_field, lower_names)
  if not list or #list == 0 then
    return nil
  end
  local out = {}
  for i = 1, #list do
    local h = list[i]
    if type(h.name) ~= "string" then
      local what = lower_names and "header" or "parameter"
      return nil, route_error(route, name_field, what .. " name must be a string")
    end
    local m = { name = lower_names and lower(h.name) or h.name }
    if h.value == true then
      m.kind = HDR_PRESENT
    elseif h.regex then
      local re, err = compile_regex(route, regex_field, h.value)
      if not re then
        return nil, err
      end
      m.kind, m.re = HDR_REGEX, re
    else
      m.kind, m.value = HDR_EXACT, tostring(h.value)
    end
    out[i] = m
  end
  return out
end

local function compile_headers(c, route)
  local out, err = compile_matchers(route, route.headers, "headers", "headers", true)
  if err then
    return nil, err
  end
  c.headers = out
  return true
end

-- query_parameters / regex_query_parameters (Envoy QueryParameterMatcher): names compare
-- exactly, values as sent (not percent-decoded), presence for value true.
local function compile_query(c, route)
  local out, err = compile_matchers(route, route.query, "query_parameters", "regex_query_parameters", false)
  if err then
    return nil, err
  end
  c.query = out
  return true
end

-- compile_route(route, index) -> the record match() walks, or nil, err
local function compile_route(route, index)
  if type(route) ~= "table" then
    error("router.new: model.routes[" .. index .. "] is not a table", 3)
  end
  local prefix = route.prefix
  if type(prefix) ~= "string" then
    return nil, route_error(route, "prefix", "must be a string")
  end

  local c = {
    route = route,
    index = index,
    weight = _M.route_weight(route),
    prefix = prefix,
    plen = #prefix,
    -- Envoy's case_sensitive = false compares prefix/path case-insensitively; it has no
    -- effect on safe_regex (route.proto), so regex paths stay case-sensitive.
    ci = route.case_sensitive == false,
    lprefix = lower(prefix),
  }

  if route.prefix_regex then  -- wins over prefix_exact (envoy/common.py)
    local re, err = compile_regex(route, "prefix", prefix)
    if not re then
      return nil, err
    end
    c.path_kind, c.path_re = PATH_REGEX, re
  elseif route.prefix_exact then
    c.path_kind = PATH_EXACT
  else
    c.path_kind = PATH_PREFIX
  end
  c.acme = c.path_kind == PATH_PREFIX and prefix == ACME_PREFIX

  local ok, err = compile_host(c, route)
  if not ok then
    return nil, err
  end

  if route.method ~= nil then
    if type(route.method) ~= "string" then
      return nil, route_error(route, "method", "must be a string")
    end
    if route.method_regex then
      local re
      re, err = compile_regex(route, "method", route.method)
      if not re then
        return nil, err
      end
      c.method_re = re
    else
      c.method = route.method
    end
  end

  ok, err = compile_headers(c, route)
  if not ok then
    return nil, err
  end
  ok, err = compile_query(c, route)
  if not ok then
    return nil, err
  end
  c.cum = 100 -- the cumulative canary weight; new() lowers it for members of a canary group
  return c
end

---------------------------------------------------------------------------------------------
-- Virtual hosts (Envoy VirtualHost.domains search order)
---------------------------------------------------------------------------------------------

local function sorted_lengths_desc(map)
  local lens = {}
  for len in pairs(map) do
    lens[#lens + 1] = len
  end
  sort(lens, function(a, b) return a > b end)
  return lens
end

-- Indexes the vhosts by their lowercased hostname. Two Hosts with the same hostname share
-- one Emissary chain entry (v3listener.py V3Chain.add_httphost: hosts[hostname] = host),
-- so the later Host replaces the earlier one and only its Mappings are served.
local function build_vhosts(self, hosts)
  local by_key = {}
  for i = 1, #hosts do
    local h = hosts[i]
    if type(h) ~= "table" then
      error("router.new: model.hosts[" .. i .. "] is not a table", 3)
    end
    local action = h.insecure_action
    if action == nil then
      -- A hand-built model (specs, tools) may leave it out; nuncio's synthesized default
      -- Host routes cleartext (behaviour notes §2.5, no fallback cert).
      action = "Route"
    elseif not ACTIONS[action] then
      return nil, format("%s: Host %s: insecure_action: must be Route, Redirect or Reject, not %s",
                         h.source or "?", h.name or "?", tostring(action))
    end
    local hostname = h.hostname
    if hostname == nil or hostname == "" then
      hostname = "*"
    end
    local key = lower(hostname)
    by_key[key] = { host = h, index = i, hostname = key, action = action, routes = {}, acme = {} }
  end

  local exact, suffix, prefix = {}, {}, {}
  local by_index = {}
  for key, vh in pairs(by_key) do
    by_index[vh.index] = vh
    if key == "*" then
      self.star = vh
    elseif byte(key, 1) == 42 then
      local s = sub(key, 2)
      suffix[#s] = suffix[#s] or {}
      suffix[#s][s] = vh
    elseif byte(key, -1) == 42 then
      local p = sub(key, 1, -2)
      prefix[#p] = prefix[#p] or {}
      prefix[#p][p] = vh
    else
      exact[key] = vh
    end
  end
  self.exact, self.suffix, self.prefix = exact, suffix, prefix
  self.suffix_lens = sorted_lengths_desc(suffix)
  self.prefix_lens = sorted_lengths_desc(prefix)
  return by_index
end

-- Exact, then the longest "*suffix", then the longest "prefix*", then "*". A wildcard
-- must stand for at least one character (Envoy: "*.foo.com" does not match ".foo.com").
-- la is the lowercased authority, port included: "api.example.com:443" is its own name.
local function find_vhost(self, la)
  local vh = self.exact[la]
  if vh then
    return vh
  end
  local n = #la
  local lens = self.suffix_lens
  for i = 1, #lens do
    local len = lens[i]
    if len < n then
      vh = self.suffix[len][sub(la, n - len + 1)]
      if vh then
        return vh
      end
    end
  end
  lens = self.prefix_lens
  for i = 1, #lens do
    local len = lens[i]
    if len < n then
      vh = self.prefix[len][sub(la, 1, len)]
      if vh then
        return vh
      end
    end
  end
  return self.star
end

---------------------------------------------------------------------------------------------
-- Candidate index
---------------------------------------------------------------------------------------------

-- A vhost's routes are split by two keys a request gives at once:
--  * host: the exact (lowercased) authority a route requires (HOST_EXACT), or "any" for
--    routes without one (no host, "*", suffix/prefix globs, regexes);
--  * seg: the prefix up to and including its first "/" after the first character, e.g.
--    "/pkg.Service/" (case-sensitive prefix and exact-path routes whose prefix has one), or
--    "rest" (regex paths, case-insensitive ones, and prefixes like "/" or "/api").
-- A route with seg S can only match a path whose own seg is S: the path starts with the
-- route's prefix, so its first "/" after the first character is at the same place. Lists
-- keep evaluation order; match() merges the four lists a request selects by c.order.
local function index_part()
  return { seg = {}, rest = {} }
end

local function route_seg(c)
  if c.path_kind == PATH_REGEX or c.ci then
    return nil
  end
  local k = find(c.prefix, "/", 2, true)
  return k and sub(c.prefix, 1, k) or nil
end

local function build_index(list)
  local idx = { any = index_part(), host = {}, first_canary = HUGE }
  for i = 1, #list do
    local c = list[i]
    local part
    if c.host_kind == HOST_EXACT then
      part = idx.host[c.host_value]
      if not part then
        part = index_part()
        idx.host[c.host_value] = part
      end
    else
      part = idx.any
    end
    local seg = route_seg(c)
    local l
    if seg then
      l = part.seg[seg]
      if not l then
        l = {}
        part.seg[seg] = l
      end
    else
      l = part.rest
    end
    l[#l + 1] = c
    if c.cum < 100 and c.order < idx.first_canary then
      idx.first_canary = c.order
    end
  end
  return idx
end

---------------------------------------------------------------------------------------------
-- Matching
---------------------------------------------------------------------------------------------

-- Envoy keeps pseudo-headers in the same map as the others, so a header constraint on
-- ":authority" (regex_headers) or ":method" must see them.
local function header_value(req, name)
  if byte(name, 1) == 58 then -- ':'
    if name == ":authority" then
      return req.authority
    elseif name == ":method" then
      return req.method
    elseif name == ":path" then
      return req.path
    end
  end
  local get = req.header
  if get then
    return get(name)
  end
  return nil
end

-- The first value of query parameter name in path (whose query string starts after plen),
-- "" for a parameter without "=", or nil. Envoy splits on "&" and the first "=", and keeps
-- the first of repeated names.
local function query_value(path, plen, name)
  local n = #path
  local nlen = #name
  local i = plen + 2 -- after the "?"
  while i <= n do
    local amp = find(path, "&", i, true)
    local stop = amp and amp - 1 or n
    local eq = find(path, "=", i, true)
    if eq and eq <= stop then
      if eq - i == nlen and sub(path, i, eq - 1) == name then
        return sub(path, eq + 1, stop)
      end
    elseif stop - i + 1 == nlen and sub(path, i, stop) == name then
      return ""
    end
    i = stop + 2
  end
  return nil
end

-- Does compiled route c match? path is the full :path, plen its length without the query
-- string (the query never takes part in path matching); la is the lowercased authority.
local function route_matches(c, req, path, plen, authority, la)
  local kind = c.path_kind
  if kind == PATH_REGEX then
    if not c.path_re:full_match(path, plen) then
      return false
    end
  else
    local n = c.plen
    if plen < n or (kind == PATH_EXACT and plen ~= n) then
      return false
    end
    if c.ci then
      if lower(sub(path, 1, n)) ~= c.lprefix then
        return false
      end
    elseif sub(path, 1, n) ~= c.prefix then
      return false
    end
  end

  local hk = c.host_kind
  if hk then
    if hk == HOST_EXACT then
      if la ~= c.host_value then
        return false
      end
    elseif hk == HOST_SUFFIX then
      local v = c.host_value
      if #la < #v or sub(la, #la - #v + 1) ~= v then
        return false
      end
    elseif hk == HOST_PREFIX then
      local v = c.host_value
      if sub(la, 1, #v) ~= v then
        return false
      end
    elseif not c.host_re:full_match(authority) then
      return false
    end
  end

  if c.method then
    if req.method ~= c.method then
      return false
    end
  elseif c.method_re then
    if not c.method_re:full_match(req.method or "") then
      return false
    end
  end

  local headers = c.headers
  if headers then
    for i = 1, #headers do
      local h = headers[i]
      local v = header_value(req, h.name)
      if v == nil then
        return false
      end
      local k = h.kind
      if k == HDR_EXACT then
        if v ~= h.value then
          return false
        end
      elseif k == HDR_REGEX then
        if not h.re:full_match(v) then
          return false
        end
      end
    end
  end

  local query = c.query
  if query then
    if plen >= #path then
      return false -- no query string: every parameter constraint fails
    end
    for i = 1, #query do
      local q = query[i]
      local v = query_value(path, plen, q.name)
      if v == nil then
        return false
      end
      local k = q.kind
      if k == HDR_EXACT then
        if v ~= q.value then
          return false
        end
      elseif k == HDR_REGEX then
        if not q.re:full_match(v) then
          return false
        end
      end
    end
  end
  return true
end

local Router = {}
Router.__index = Router

-- r:match(req) -> route | nil, why
-- req = { authority, path, method, header = function(name), secure = bool, random = 0..99? }
-- why: "no_route" (no vhost or no route: 404), "rejected" (insecure on a Reject Host: 404,
-- Emissary simply does not install those routes), "redirect" (insecure on a Redirect Host
-- and a route matched: 301 to https).
-- Canary groups: like Envoy, one random value in 0..99 per selection (req.random if given),
-- drawn only when a group member is reached; member i is taken when value < its cumulative
-- weight (and its match criteria hold).
-- match_linear is the plain scan of the vhost's routes in evaluation order: the reference
-- the index must agree with (spec/01-unit/router_index_spec.lua compares them).
function Router:match_linear(req)
  local authority = req.authority or ""
  local la = lower(authority)
  local vh = find_vhost(self, la)
  if not vh then
    return nil, "no_route"
  end

  local path = req.path or ""
  local q = find(path, "?", 1, true)
  local plen = q and q - 1 or #path
  local list = vh.routes
  local action = req.secure and "Route" or vh.action

  if action == "Reject" then
    -- Only the ACME routes exist for insecure requests on this Host.
    list = vh.acme
  end
  local rv = req.random
  for i = 1, #list do
    local c = list[i]
    local cum = c.cum
    if cum < 100 then
      if not rv then
        rv = random(0, 99)
      end
      if rv >= cum then
        goto continue
      end
    end
    if route_matches(c, req, path, plen, authority, la) then
      -- Redirect turns each route into an https redirect with the same match, so the
      -- redirect happens only where a route matches; ACME challenges are still served.
      if action == "Redirect" and not c.acme then
        return nil, "redirect"
      end
      return c.route
    end
    ::continue::
  end
  if action == "Reject" then
    return nil, "rejected"
  end
  return nil, "no_route"
end

-- r:match(req) -> route | nil, why: the same answer as match_linear, found through the
-- vhost's candidate index. The candidates are the (up to) four index lists of the request's
-- authority and first path segment, merged by evaluation order (c.order), so routes are
-- tried in exactly the order the linear scan tries them; the ones left out cannot match.
function Router:match(req)
  local authority = req.authority or ""
  local la = lower(authority)
  local vh = find_vhost(self, la)
  if not vh then
    return nil, "no_route"
  end

  local path = req.path or ""
  local q = find(path, "?", 1, true)
  local plen = q and q - 1 or #path
  local action = req.secure and "Route" or vh.action
  local idx = vh.index
  if action == "Reject" then
    -- Only the ACME routes exist for insecure requests on this Host.
    idx = vh.acme_index
  end

  local seg
  local k = find(path, "/", 2, true)
  if k and k <= plen then
    seg = sub(path, 1, k)
  end
  local any = idx.any
  local l1, l2, l3, l4 = any.rest, EMPTY, EMPTY, EMPTY
  if seg then
    l2 = any.seg[seg] or EMPTY
  end
  local hb = idx.host[la]
  if hb then
    l3 = hb.rest
    if seg then
      l4 = hb.seg[seg] or EMPTY
    end
  end

  local rv = req.random
  local i1, i2, i3, i4 = 1, 1, 1, 1
  local found = nil
  while true do
    -- The head with the lowest evaluation order goes next (a route is in one list only).
    local c, o, w = l1[i1], HUGE, 1
    if c then o = c.order end
    local x = l2[i2]
    if x and x.order < o then c, o, w = x, x.order, 2 end
    x = l3[i3]
    if x and x.order < o then c, o, w = x, x.order, 3 end
    x = l4[i4]
    if x and x.order < o then c, o, w = x, x.order, 4 end
    if not c then
      break
    end
    if w == 1 then i1 = i1 + 1 elseif w == 2 then i2 = i2 + 1
    elseif w == 3 then i3 = i3 + 1 else i4 = i4 + 1 end

    local cum = c.cum
    if cum < 100 then
      if not rv then
        rv = random(0, 99)
      end
      if rv < cum and route_matches(c, req, path, plen, authority, la) then
        found = c
        break
      end
    elseif route_matches(c, req, path, plen, authority, la) then
      found = c
      break
    end
  end

  -- The linear scan draws its one random value when it passes the first canary member,
  -- whether or not that member could match; draw (and drop) it here too so that the
  -- random sequence, and so every later selection, is the same.
  if not rv and idx.first_canary < (found and found.order + 1 or HUGE) then
    random(0, 99)
  end
  if found then
    -- Redirect turns each route into an https redirect with the same match, so the
    -- redirect happens only where a route matches; ACME challenges are still served.
    if action == "Redirect" and not found.acme then
      return nil, "redirect"
    end
    return found.route
  end
  if action == "Reject" then
    return nil, "rejected"
  end
  return nil, "no_route"
end

-- r:routes() -> the model routes in evaluation order (a copy: for diagnostics).
function Router:routes()
  local out = {}
  local ordered = self.ordered
  for i = 1, #ordered do
    out[i] = ordered[i].route
  end
  return out
end

local function by_index(a, b)
  return a.index < b.index
end

-- Puts the members of each canary group together, in the order Emissary emits them (the
-- group sits where its first member sorted; inside it, weighted members first), and sets
-- each member's cumulative weight. Members come in model order (stable sort), which is the
-- order the Mappings were loaded.
local function group_canaries(ordered)
  -- Members of a group share their prefix (it is part of the key): a route whose prefix no
  -- other route has is a group of its own, keyed by itself, without building its key.
  local prefixes = {}
  for i = 1, #ordered do
    local p = ordered[i].prefix
    prefixes[p] = (prefixes[p] or 0) + 1
  end
  local groups, keys = {}, {}
  for i = 1, #ordered do
    local c = ordered[i]
    local key = c
    if prefixes[c.prefix] > 1 then
      key = _M.group_key(c.route)
    end
    keys[i] = key
    local g = groups[key]
    if not g then
      g = {}
      groups[key] = g
    end
    g[#g + 1] = c
  end
  local out, done = {}, {}
  for i = 1, #ordered do
    local key = keys[i]
    if not done[key] then
      done[key] = true
      local g = groups[key]
      if #g == 1 then
        out[#out + 1] = g[1]
      else
        sort(g, by_index)
        local weights = {}
        for j = 1, #g do
          local w = g[j].route.weight
          weights[j] = type(w) == "number" and w or false
        end
        local order, cums, msg = _M.canary_weights(weights, #g)
        if not order then
          return nil, route_error(g[cums].route, "weight", msg)
        end
        for j = 1, #order do
          local c = g[order[j]]
          c.cum = cums[order[j]]
          c.group = key
          out[#out + 1] = c
        end
      end
    end
  end
  return out
end

-- router.new(model) -> r | nil, err
-- err is "file:line: Mapping name: field: message" for a route that cannot be compiled
-- (a bad regex), or "file:line: Host name: ..." for a Host.
function _M.new(model)
  if type(model) ~= "table" then
    error("router.new: model must be a table", 2)
  end
  local hosts, routes = model.hosts or {}, model.routes or {}

  local self = setmetatable({}, Router)
  local by_index, err = build_vhosts(self, hosts)
  if not by_index then
    return nil, err
  end

  local ordered = {}
  for i = 1, #routes do
    local c
    c, err = compile_route(routes[i], i)
    if not c then
      return nil, err
    end
    ordered[i] = c
  end
  -- config.load hands the routes over already in this order: check in one pass and skip
  -- table.sort's n log n weight comparisons (10 000 Mappings: ~130 000 of them).
  local sorted = true
  for i = 2, #ordered do
    if evaluated_before(ordered[i], ordered[i - 1]) then
      sorted = false
      break
    end
  end
  if not sorted then
    sort(ordered, evaluated_before)
  end
  for i = 1, #ordered do
    ordered[i].weight = nil -- only the sort needs it; 10 000 routes hold ~2 MB of them
  end
  ordered, err = group_canaries(ordered)
  if not ordered then
    return nil, err
  end
  self.ordered = ordered
  for i = 1, #ordered do
    ordered[i].order = i -- the index merges its lists by this
  end

  -- Per-vhost candidate lists, in evaluation order. route.hosts may name a Host twice or a
  -- Host whose vhost was replaced by a later one with the same hostname.
  for i = 1, #ordered do
    local c = ordered[i]
    local attached = c.route.hosts
    if attached then
      for j = 1, #attached do
        local vh = by_index[attached[j]]
        if vh and vh.routes[#vh.routes] ~= c then
          vh.routes[#vh.routes + 1] = c
          if c.acme then
            vh.acme[#vh.acme + 1] = c
          end
        end
      end
    end
  end
  for _, vh in pairs(by_index) do
    vh.index = build_index(vh.routes)
    vh.acme_index = build_index(vh.acme)
  end
  return self
end

-- router.rewrite(route, path) -> upstream path, with Envoy prefix_rewrite semantics:
--  * rewrite "" (Emissary emits no prefix_rewrite at all) keeps the path unchanged;
--  * otherwise the matched prefix, i.e. the first #route.prefix characters, is replaced and
--    the rest of the path, query string included, is kept. Envoy replaces plainly, which
--    gives a known surprise (behaviour notes §1.2): prefix "/foo" (no trailing slash) with
--    the default rewrite "/" turns "/foo/bar" into "//bar". We reproduce it on purpose:
--    the backend must see what it would see behind Emissary;
--  * for prefix_regex routes the matched "prefix" is the whole path, so the path (not the
--    query string) is replaced by rewrite.
-- The path must be one this route matched.
function _M.rewrite(route, path)
  local rw = route.rewrite
  if rw == nil or rw == "" then
    return path
  end
  if route.prefix_regex then
    local q = find(path, "?", 1, true)
    return q and (rw .. sub(path, q)) or rw
  end
  return rw .. sub(path, #route.prefix + 1)
end

return _M
