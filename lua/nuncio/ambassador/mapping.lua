-- nuncio.ambassador.mapping: one Emissary Mapping -> one nuncio route record.
--
-- Behaviour follows reference/ambassador-behaviour.md §1 (what Emissary's IR
-- really does, which is not always what its docs say). Also home of the two
-- host helpers the loader needs: service parsing (§1.3) and DNS-glob
-- compatibility (Emissary's hostglob_matches, §2.3).

local check = require("nuncio.ambassador.check")

local type = type
local pairs = pairs
local tonumber = tonumber
local tostring = tostring
local string_format = string.format
local string_sub = string.sub
local string_lower = string.lower
local table_sort = table.sort
local table_concat = table.concat

local M = {}

---------------------------------------------------------------------------
-- service strings

-- parse_service(s, ns, opts) -> { host, port, tls } | nil, err
--   forms: host, host:port, scheme://host[:port], [ipv6]:port
--   tls: true for https:// (the scheme alone originates TLS)
--   opts.ambassador_namespace, opts.use_ambassador_namespace: §0 service name rules
--   opts.originate: TLS is originated anyway (Mapping tls), so the default port is 443
function M.parse_service(s, ns, opts)
  local rest, tls = s, false
  local scheme, after = s:match("^([%a][%w+.-]*)://(.*)$")
  if scheme then
    local lower = string_lower(scheme)
    if lower == "https" then
      tls = true
    elseif lower ~= "http" then
      return nil, string_format("unknown scheme %q (only http:// and https:// are supported)", scheme)
    end
    rest = after
  end

  local slash = rest:find("/", 1, true)
  if slash then
    -- Emissary drops the path with an error notice; refusing it avoids a config
    -- that silently routes somewhere else than its author thinks
    return nil, string_format("a path after the host is not supported (%q): use rewrite for paths",
      string_sub(rest, slash))
  end
  if rest == "" then
    return nil, "no host in " .. string_format("%q", s)
  end

  local host, port_s
  if string_sub(rest, 1, 1) == "[" then
    local h, tail = rest:match("^%[([^%]]*)%](.*)$")
    if not h or h == "" or not h:match("^[%x:%.]+$") then
      return nil, string_format("bad IPv6 address in %q", s)
    end
    host = h
    if tail ~= "" then
      port_s = tail:match("^:(.*)$")
      if not port_s then
        return nil, string_format("unexpected %q after the IPv6 address", tail)
      end
    end
  else
    local _, colons = rest:gsub(":", "")
    if colons == 1 then
      host, port_s = rest:match("^(.*):(.*)$")
    elseif colons == 0 then
      host = rest
    elseif rest:match("^[%x:%.]+$") then
      host = rest -- a bare IPv6 address: no port can be told apart, the default applies
    else
      return nil, string_format("cannot read host:port from %q (IPv6 addresses need [brackets])", s)
    end
    if host == "" then
      return nil, "no host in " .. string_format("%q", s)
    end
    if not host:match("^[%w%.%-_]+$") then
      return nil, string_format("bad host name %q", host)
    end
  end

  local port
  if port_s then
    port = port_s:match("^%d+$") and tonumber(port_s)
    if not port or port < 1 or port > 65535 then
      return nil, string_format("port must be an integer between 1 and 65535, not %q", port_s)
    end
  else
    port = (tls or (opts and opts.originate)) and 443 or 80 -- §1.3: from TLS origination, never from grpc
  end

  -- §0: an unqualified name in another namespace than Ambassador's means svc.ns
  opts = opts or {}
  local amb_ns = opts.ambassador_namespace or "default"
  if ns and ns ~= amb_ns and not opts.use_ambassador_namespace
      and not host:find("[.:]") and host ~= "localhost" then
    host = host .. "." .. ns
  end
  return { host = host, port = port, tls = tls }
end

---------------------------------------------------------------------------
-- host globs

local function ends_with(s, suffix)
  return #s >= #suffix and string_sub(s, #s - #suffix + 1) == suffix
end

local function starts_with(s, prefix)
  return string_sub(s, 1, #prefix) == prefix
end

-- g1 starts with "*", g2 does not end with one (it may start with one)
local function match_leading(g1, g2, g2_lead)
  local want, have = string_sub(g1, 2), g2_lead and string_sub(g2, 2) or g2
  if #g1 > #have then
    -- a "*" never matches the empty string, so g1 must be the shorter unless
    -- both are wildcards, in which case the longer suffix must contain the shorter
    if not g2_lead then
      return false
    end
    want, have = have, want
  end
  return ends_with(have, want)
end

local function match_trailing(g1, g2, g2_trail)
  local want, have = string_sub(g1, 1, -2), g2_trail and string_sub(g2, 1, -2) or g2
  if #g1 > #have then
    if not g2_trail then
      return false
    end
    want, have = have, want
  end
  return starts_with(have, want)
end

-- hostglob_matches(a, b): could some host name match both DNS globs?
-- (Emissary irutils.hostglob_matches, used to attach Mappings to Hosts.)
function M.hostglob_matches(g1, g2)
  if g1 == g2 or g1 == "*" or g2 == "*" then
    return true
  end
  if g1 == "" or g2 == "" or string_sub(g1, 1, 1) == "." or string_sub(g2, 1, 1) == "." then
    return false
  end
  local g1s, g1e = string_sub(g1, 1, 1) == "*", string_sub(g1, -1) == "*"
  local g2s, g2e = string_sub(g2, 1, 1) == "*", string_sub(g2, -1) == "*"
  if (g1s and g1e) or (g2s and g2e) then
    return false -- not a DNS glob; only equality (handled above) can match
  end
  if not (g1s or g1e or g2s or g2e) then
    return false
  end
  if (g1s and g2e) or (g2s and g1e) then
    return true -- "*.a.com" and "www.*" overlap on www.a.com
  end
  if g1s then
    return match_leading(g1, g2, g2s)
  elseif g2s then
    return match_leading(g2, g1, g1s)
  elseif g1e then
    return match_trailing(g1, g2, g2e)
  end
  return match_trailing(g2, g1, g1e)
end

-- A DNS glob as Envoy reads domains: "*", a leading "*" or a trailing "*".
function M.valid_glob(g)
  if g == "*" then
    return true
  end
  local lead, trail = string_sub(g, 1, 1) == "*", string_sub(g, -1) == "*"
  if lead and trail then
    return false
  end
  local inner = string_sub(g, lead and 2 or 1, trail and -2 or -1)
  return inner ~= "" and not inner:find("*", 1, true)
end

---------------------------------------------------------------------------
-- the Mapping itself

local HANDLED = check.set {
  "prefix", "prefix_regex", "prefix_exact", "case_sensitive", "rewrite", "grpc", "service",
  "hostname", "host", "host_regex", "headers", "regex_headers", "method", "method_regex",
  "precedence", "timeout_ms", "connect_timeout_ms", "ambassador_id", "generation", "tls",
}

-- Emissary Mapping fields (v0..v3alpha1) nuncio accepts but does not act on yet.
local TODO = check.set {
  "add_request_headers", "add_response_headers", "remove_request_headers", "remove_response_headers",
  "add_linkerd_headers", "host_rewrite", "auto_host_rewrite", "host_redirect", "path_redirect",
  "prefix_redirect", "regex_redirect", "redirect_response_code", "regex_rewrite", "cors",
  "retry_policy", "weight", "load_balancer", "shadow", "idle_timeout_ms", "labels", "docs",
  "bypass_auth", "bypass_error_response_overrides", "error_response_overrides", "allow_upgrade",
  "use_websocket", "circuit_breakers", "cluster_idle_timeout_ms", "cluster_max_connection_lifetime_ms",
  "cluster_tag", "dns_type", "enable_ipv4", "enable_ipv6", "envoy_override", "health_checks",
  "keepalive", "modules", "outlier_detection", "priority", "query_parameters",
  "regex_query_parameters", "resolver", "respect_dns_ttl", "stats_name", "auth_context_extensions",
  "rate_limits", "v2BoolHeaders", "v2BoolQueryParameters", "v2ExplicitTLS", "v3StatsName",
  "v3health_checks",
}

M.HANDLED_FIELDS = HANDLED
M.TODO_FIELDS = TODO

-- headers / regex_headers: name -> value. Returns a sorted list of
-- { name, value, regex } and the exact :authority value if one was given.
local function read_headers(c, key, regex)
  local m = c:map(key)
  if not m then
    return {}, nil
  end
  local out, authority = {}, nil
  local names = check.sorted_keys(m)
  table_sort(names, function(a, b)
    local la, lb = string_lower(a), string_lower(b)
    if la ~= lb then
      return la < lb
    end
    return a < b
  end)
  for i = 1, #names do
    local raw_name = names[i]
    local name = string_lower(raw_name)
    local v = m[raw_name]
    local field = c:field(key) .. "." .. raw_name
    if v == true and not regex then
      -- v1 "presence" form (Envoy present_match): value true in the model
      out[#out + 1] = { name = name, value = true, regex = false }
    elseif type(v) ~= "string" then
      c.failed = true
      c.rep:error(c.res, field, "must be a string, not " .. check.describe(v)
        .. (type(v) == "number" and " (quote it)" or ""), m, raw_name)
    elseif name == ":authority" and not regex then
      if v:find("*", 1, true) then
        c.failed = true
        c.rep:error(c.res, field, "a '*' in an exact :authority match cannot match anything; use hostname for globs",
          m, raw_name)
      else
        authority = { value = v, line = check.line_of(c.res, m, raw_name) }
      end
    else
      out[#out + 1] = { name = name, value = v, regex = regex }
    end
  end
  return out, authority
end

-- build(rep, res, ctx) -> record | nil
--   res: resource envelope (res.spec holds the fields, res.legacy for v0..v2)
--   ctx: { default_timeout_ms, ambassador_namespace, use_ambassador_namespace }
--   record.tls_ref: nil, or { kind = "https" | "true" | "name", name, field }:
--   how TLS is originated (nuncio.ambassador.tls turns it into clusters[i].tls)
function M.build(rep, res, ctx)
  local c = check.fields(rep, res, res.spec)

  local prefix = c:string("prefix", true)
  local prefix_regex = c:bool("prefix_regex", false)
  local prefix_exact = c:bool("prefix_exact", false)
  local case_sensitive = c:bool("case_sensitive", true)
  local rewrite = c:string("rewrite")
  local grpc = c:bool("grpc", false)
  local service_s = c:string("service", true)
  local hostname = c:string("hostname")
  local host = c:string("host")
  local host_regex = c:bool("host_regex", false)
  local method = c:string("method")
  local method_regex = c:bool("method_regex", false)
  local precedence = c:int("precedence", 0)
  local timeout_ms = c:int("timeout_ms", ctx.default_timeout_ms or 3000, 0)
  local connect_timeout_ms = c:int("connect_timeout_ms", 3000, 1)
  local headers, authority = read_headers(c, "headers", false)
  local regex_headers = read_headers(c, "regex_headers", true)

  if prefix == "" then
    c:fail("prefix", "must not be empty")
  elseif prefix and not prefix_regex and string_sub(prefix, 1, 1) ~= "/" then
    c:warn("prefix", "does not start with '/': it can never match a request path")
  end

  -- §1.11: tls names a TLSContext; v0..v2 also take tls: true (no context)
  local tls_ref
  local tls_v = c:raw("tls")
  if tls_v ~= nil then
    if type(tls_v) == "string" and tls_v ~= "" then
      tls_ref = { kind = "name", name = tls_v, field = "tls" }
    elseif type(tls_v) == "boolean" and res.legacy then
      tls_ref = tls_v and { kind = "true", field = "tls" } or nil
    elseif type(tls_v) == "boolean" then
      c:fail("tls", "must be the name of a TLSContext: tls: " .. tostring(tls_v)
        .. " is only read in getambassador.io/v2 and older")
    else
      c:fail("tls", "must be the name of a TLSContext, not " .. check.describe(tls_v))
    end
  end

  local service
  if service_s then
    local err
    service, err = M.parse_service(service_s, res.namespace, {
      ambassador_namespace = ctx.ambassador_namespace,
      use_ambassador_namespace = ctx.use_ambassador_namespace,
      originate = tls_ref ~= nil,
    })
    if not service then
      c:fail("service", err)
    elseif tls_ref and service_s:match("^[Hh][Tt][Tt][Pp]://") then
      c:fail("service", "both http:// and tls: http:// never originates TLS; use https:// or drop the scheme "
        .. "(Emissary reports this and originates TLS anyway)")
    elseif not tls_ref and service.tls then
      tls_ref = { kind = "https", field = "service" }
    end
  end

  -- §1.5: hostname beats host, host beats an exact :authority header
  local route_host, assoc
  if hostname then
    if host or authority then
      c:warn("hostname", "both host and hostname are set, using hostname")
    end
    if not M.valid_glob(hostname) then
      c:fail("hostname", string_format("%q is not a DNS glob: '*' may only be the first or the last character",
        hostname))
    end
    -- "*" stays in the model (Emissary counts its :authority in the route
    -- weight); the router drops it from the match, as Envoy does
    assoc = hostname
    route_host = { kind = "glob", value = hostname }
  elseif host then
    if host_regex then
      route_host = { kind = "regex", value = host }
      assoc = true -- a regex can match any Host
    elseif host:find("*", 1, true) then
      c:fail("host", "contains '*' but host_regex is not set: host is an exact match; use hostname for globs")
    else
      route_host = { kind = "exact", value = host }
      assoc = host
    end
  elseif authority then
    route_host = { kind = "exact", value = authority.value }
    assoc = authority.value
  elseif res.legacy then
    -- Ambassador 1.x served a host-less Mapping on every host; Emissary 2+
    -- only does so with hostname "*". v0..v2 resources keep the 1.x meaning.
    assoc = "*"
  end

  if not hostname and host_regex and not host then
    c:warn("host_regex", "has no effect without host")
  end
  if method_regex and not method then
    c:warn("method_regex", "has no effect without method")
  end

  c:check_keys(HANDLED, TODO)

  if c.failed then
    return nil
  end

  local all_headers = {}
  for i = 1, #headers do
    all_headers[#all_headers + 1] = headers[i]
  end
  for i = 1, #regex_headers do
    all_headers[#all_headers + 1] = regex_headers[i]
  end

  local rec = {
    res = res,
    name = res.name,
    namespace = res.namespace,
    source = res.source,
    labels = res.labels or {},
    legacy = res.legacy,
    prefix = prefix,
    prefix_regex = prefix_regex,
    prefix_exact = prefix_exact and not prefix_regex, -- §1.1: prefix_regex wins
    case_sensitive = case_sensitive,
    rewrite = rewrite == nil and "/" or rewrite, -- §1.2: absent means "/", "" means keep
    host = route_host,
    assoc = assoc,
    method = method,
    method_regex = method_regex,
    headers = all_headers,
    precedence = precedence,
    grpc = grpc,
    service = service,
    tls_ref = tls_ref, -- resolved into service.tls by nuncio.ambassador
    timeout_ms = timeout_ms,
    connect_timeout_ms = connect_timeout_ms,
  }
  M.compute_weight(rec)
  return rec
end

---------------------------------------------------------------------------
-- evaluation order (§1.7)

-- Emissary's route weight: [precedence, len(prefix), header lengths, query
-- lengths (always 0 here), prefix, method, header keys...], sorted descending.
-- The :authority from hostname/host and the :method count as headers.
function M.compute_weight(rec)
  local hdrs = {}
  for i = 1, #rec.headers do
    local h = rec.headers[i]
    -- a presence match counts as "*", like Emissary's `value or "*"`
    hdrs[#hdrs + 1] = { name = h.name, value = h.value == true and "*" or h.value, regex = h.regex }
  end
  if rec.host then
    hdrs[#hdrs + 1] = { name = ":authority", value = rec.host.value, regex = rec.host.kind == "regex" }
  end
  if rec.method then
    hdrs[#hdrs + 1] = { name = ":method", value = rec.method, regex = rec.method_regex }
  end
  local len, keys = 0, {}
  for i = 1, #hdrs do
    local h = hdrs[i]
    len = len + #h.name + #h.value + (h.regex and 1 or 0)
    keys[i] = h.name .. "-" .. h.value
  end
  local w = { rec.precedence, #rec.prefix, len, 0, rec.prefix, rec.method or "GET" }
  for i = 1, #keys do
    w[#w + 1] = keys[i]
  end
  rec.weight = w
  -- Mappings with the same key form one canary group in Emissary
  local gk = { rec.method or "GET", rec.prefix, tostring(rec.prefix_regex), tostring(rec.prefix_exact),
    tostring(rec.precedence) }
  local sorted = {}
  for i = 1, #keys do
    sorted[i] = keys[i] .. (hdrs[i].regex and "~" or "")
  end
  table_sort(sorted)
  rec.group_key = table_concat(gk, "\0") .. "\0" .. table_concat(sorted, "\0")
end

-- true when a must be tried before b
function M.before(a, b)
  local wa, wb = a.weight, b.weight
  local n = #wa > #wb and #wa or #wb
  for i = 1, n do
    local x, y = wa[i], wb[i]
    if x == nil then
      return false -- Python list order: a proper prefix sorts lower
    elseif y == nil then
      return true
    elseif x ~= y then
      return x > y
    end
  end
  return a.index < b.index
end

-- a Host's label selector (empty = every Mapping)
local function selector_matches(selector, labels)
  for k, v in pairs(selector) do
    if labels[k] == nil or tostring(labels[k]) ~= v then
      return false
    end
  end
  return true
end

-- attaches(host, rec): Emissary 3.2+ strict association (§2.3)
function M.attaches(host, rec)
  local host_match
  if rec.assoc == true then
    host_match = true
  elseif rec.assoc then
    host_match = M.hostglob_matches(host.hostname, rec.assoc)
  end
  if host.selector then
    local sel = selector_matches(host.selector, rec.labels)
    if host_match == nil then
      return sel
    end
    return sel and host_match
  end
  return host_match == true
end

return M
