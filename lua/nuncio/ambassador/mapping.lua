-- nuncio.ambassador.mapping: one Emissary Mapping -> one nuncio route record.
--
-- Behaviour follows reference/ambassador-behaviour.md §1 (what Emissary's IR
-- really does, which is not always what its docs say). Also home of the two
-- host helpers the loader needs: service parsing (§1.3) and DNS-glob
-- compatibility (Emissary's hostglob_matches, §2.3).

local check = require("nuncio.ambassador.check")
local order = require("nuncio.ambassador.order")
local policy = require("nuncio.ambassador.policy")
local format = require("nuncio.ambassador.format")
local yaml = require("nuncio.yaml")

local type = type
local ipairs = ipairs
local pairs = pairs
local next = next
local tonumber = tonumber
local tostring = tostring
local string_format = string.format
local string_sub = string.sub
local string_lower = string.lower
local table_sort = table.sort
local table_concat = table.concat
local yaml_line = yaml.line

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
  return { host = host, port = port, tls = tls, port_given = port_s ~= nil }
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
  "precedence", "timeout_ms", "connect_timeout_ms", "cluster_idle_timeout_ms", "ambassador_id", "generation", "tls",
  "query_parameters", "regex_query_parameters", "weight", "add_request_headers",
  "add_response_headers", "remove_request_headers", "remove_response_headers", "host_rewrite",
  "add_linkerd_headers", "retry_policy", "load_balancer", "idle_timeout_ms", "cors",
}

-- Emissary Mapping fields (v0..v3alpha1) nuncio accepts but does not act on yet.
local TODO = check.set {
  "auto_host_rewrite", "host_redirect", "path_redirect",
  "prefix_redirect", "regex_redirect", "redirect_response_code", "regex_rewrite",
  "shadow", "labels", "docs",
  "bypass_auth", "bypass_error_response_overrides", "error_response_overrides", "allow_upgrade",
  "use_websocket", "circuit_breakers", "cluster_max_connection_lifetime_ms",
  "cluster_tag", "dns_type", "enable_ipv4", "enable_ipv6", "envoy_override", "health_checks",
  "keepalive", "modules", "outlier_detection", "priority",
  "resolver", "respect_dns_ttl", "stats_name", "auth_context_extensions",
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

-- query_parameters / regex_query_parameters: name -> value (true = present). Names keep
-- their case (Envoy compares query parameter names exactly).
local function read_query(c, key, regex)
  local m = c:map(key)
  if not m then
    return {}
  end
  local out = {}
  local names = check.sorted_keys(m)
  for i = 1, #names do
    local name = names[i]
    local v = m[name]
    local field = c:field(key) .. "." .. name
    if v == true and not regex then
      out[#out + 1] = { name = name, value = true, regex = false }
    elseif type(v) ~= "string" then
      c.failed = true
      c.rep:error(c.res, field, "must be a string" .. (regex and "" or " (or true: the parameter is present)")
        .. ", not " .. check.describe(v) .. (type(v) == "number" and " (quote it)" or ""), m, name)
    else
      out[#out + 1] = { name = name, value = v, regex = regex }
    end
  end
  return out
end

-- the keys of a YAML mapping in file order (name order when lines are unknown)
local function keys_in_file_order(m)
  local keys = check.sorted_keys(m)
  table_sort(keys, function(a, b)
    local la, lb = yaml_line(m, a) or 0, yaml_line(m, b) or 0
    if la ~= lb then
      return la < lb
    end
    return a < b
  end)
  return keys
end

local function warn_format(c, field, value, tbl, key)
  local unknown = format.unknown(value, field:find("response", 1, true) and "response" or "request")
  if unknown then
    c.rep:warning(c.res, field, "unknown " .. table_concat(unknown, ", ")
      .. ": sent as written (nuncio fills in %DOWNSTREAM_REMOTE_ADDRESS%, "
      .. "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, %PROTOCOL%, %REQ(name)%, %UPSTREAM_CLUSTER%, ...)",
      tbl, key)
  end
end

-- add_request_headers / add_response_headers (behaviour notes §1.9): name -> "value"
-- (appended) or { value = "...", append = bool } (append: false replaces). Returns the list
-- { { name, value, append }, ... } in file order, or nil when the key is absent. Exported
-- for the Module's defaults (nuncio.ambassador.kinds).
function M.read_added_headers(c, key)
  local m = c:map(key)
  if not m then
    return nil
  end
  local out = {}
  local names = keys_in_file_order(m)
  for i = 1, #names do
    local name = names[i]
    local v = check.value(m[name])
    local field = c:field(key) .. "." .. name
    local value, append
    if type(v) == "string" or type(v) == "number" then
      value, append = tostring(v), true
      warn_format(c, field, value, m, name)
    elseif type(v) == "table" and check.is_map(v) then
      local hc = check.fields(c.rep, c.res, v, field .. ".")
      local hv = hc:raw("value")
      if hv == nil then
        hc.failed = true
        c.rep:error(c.res, field .. ".value", "required", m, name)
      elseif type(hv) ~= "string" and type(hv) ~= "number" then
        hc:fail("value", "must be a string, not " .. check.describe(hv))
      else
        value = tostring(hv)
        warn_format(c, field .. ".value", value, v, "value")
      end
      append = hc:bool("append", true)
      hc:check_keys(check.set { "value", "append" })
      if hc.failed then
        c.failed = true
      end
    else
      c.failed = true
      c.rep:error(c.res, field, "must be a string or {value, append}, not " .. check.describe(v)
        .. (type(v) == "boolean" and " (quote it)" or ""), m, name)
    end
    if value then
      out[#out + 1] = { name = string_lower(name), value = value, append = append }
    end
  end
  return out
end

-- remove_request_headers / remove_response_headers: a name or a list of names (an empty
-- list is a list). nil when absent.
function M.read_removed_headers(c, key)
  local v = c:raw(key)
  if v == nil then
    return nil
  end
  if type(v) == "table" and next(v) == nil then
    return {}
  end
  local list = c:string_list(key)
  if not list then
    c.failed = true
    return nil
  end
  for i = 1, #list do
    list[i] = string_lower(list[i])
  end
  return list
end

-- l5d-dst-override's value: Emissary's ParsedService.hostname_port, the qualified service
-- host and its port (80 unless given, 443 for https://).
local function linkerd_target(service, scheme_https)
  local port = service.port_given and service.port or (scheme_https and 443 or 80)
  local host = service.host
  if host:find(":", 1, true) then
    host = "[" .. host .. "]"
  end
  return host .. ":" .. port
end

-- build(rep, res, ctx) -> record | nil
--   res: resource envelope (res.spec holds the fields, res.legacy for v0..v2)
--   ctx: { default_timeout_ms, ambassador_namespace, use_ambassador_namespace,
--          defaults = { add_request_headers = list?, ... } (the Module's defaults.httpmapping),
--          add_linkerd_headers = bool (the Module's),
--          cluster_idle_timeout_ms = nil | ms (the Module's) }
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
  -- nil: the core's default, Envoy's 1 h
  local cluster_idle_timeout_ms = c:int("cluster_idle_timeout_ms", ctx.cluster_idle_timeout_ms, 0, check.MAX_MS)
  local headers, authority = read_headers(c, "headers", false)
  local regex_headers = read_headers(c, "regex_headers", true)
  local query = read_query(c, "query_parameters", false)
  local regex_query = read_query(c, "regex_query_parameters", true)
  local host_rewrite = c:string("host_rewrite")
  local add_linkerd = c:bool("add_linkerd_headers", nil)
  -- retry_policy / load_balancer: the Mapping's own, else the Module's (§1.12)
  local retry_policy = policy.read_retry_policy(c, "retry_policy")
  if retry_policy == nil and not c:has("retry_policy") then
    retry_policy = ctx.retry_policy
  end
  local load_balancer = policy.read_load_balancer(c, "load_balancer")
  if load_balancer == nil and not c:has("load_balancer") then
    load_balancer = ctx.load_balancer
  end
  local idle_timeout_ms = c:int("idle_timeout_ms", nil, 0)
  -- cors: the Mapping's own, else the Module's (§1.12)
  local cors = policy.read_cors(c, "cors")
  if cors == nil and not c:has("cors") then
    cors = ctx.cors
  end

  -- weight: a share of the traffic of the Mappings with the same match (§1.8)
  local weight = c:raw("weight")
  if weight ~= nil then
    if type(weight) ~= "number" then
      c:fail("weight", "must be a number between 0 and 100, not " .. check.describe(weight))
      weight = nil
    elseif weight < 0 or weight > 100 then
      c:fail("weight", "must be between 0 and 100, not " .. tostring(weight))
      weight = nil
    end
  end

  -- header rewrites (§1.9): the Mapping's own value wins, an explicit {} / [] included;
  -- else the Module's defaults.httpmapping (or defaults) value
  local defaults = ctx.defaults or {}
  local function rewrite_list(key, reader)
    local v = reader(c, key)
    if v == nil and not c:has(key) then
      v = defaults[key]
    end
    if v ~= nil and #v == 0 then
      return nil
    end
    return v
  end
  local add_request = rewrite_list("add_request_headers", M.read_added_headers)
  local add_response = rewrite_list("add_response_headers", M.read_added_headers)
  local remove_request = rewrite_list("remove_request_headers", M.read_removed_headers)
  local remove_response = rewrite_list("remove_response_headers", M.read_removed_headers)

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
  if host_rewrite == "" then
    host_rewrite = nil
  end

  -- add_linkerd_headers: the Mapping's, else the Module's (not a defaults key in Emissary)
  if add_linkerd == nil then
    add_linkerd = ctx.add_linkerd_headers == true
  end
  if add_linkerd and service then
    local target = linkerd_target(service, service_s:match("^[Hh][Tt][Tt][Pp][Ss]://") ~= nil)
    local list = {}
    for i, h in ipairs(add_request or {}) do
      list[i] = h
    end
    local replaced = false
    for i, h in ipairs(list) do
      if h.name == "l5d-dst-override" then
        list[i] = { name = h.name, value = target, append = true }
        replaced = true
      end
    end
    if not replaced then
      list[#list + 1] = { name = "l5d-dst-override", value = target, append = true }
    end
    add_request = list
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
  local all_query = {}
  for i = 1, #query do
    all_query[#all_query + 1] = query[i]
  end
  for i = 1, #regex_query do
    all_query[#all_query + 1] = regex_query[i]
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
    query = all_query,
    precedence = precedence,
    weight = weight,
    host_rewrite = host_rewrite,
    request_headers_to_add = add_request,
    response_headers_to_add = add_response,
    request_headers_to_remove = remove_request,
    response_headers_to_remove = remove_response,
    grpc = grpc,
    service = service,
    tls_ref = tls_ref, -- resolved into service.tls by nuncio.ambassador
    timeout_ms = timeout_ms,
    connect_timeout_ms = connect_timeout_ms,
    cluster_idle_timeout_ms = cluster_idle_timeout_ms,
    retry_policy = retry_policy,
    load_balancer = load_balancer,
    idle_timeout_ms = idle_timeout_ms,
    cors = cors,
  }
  M.compute_weight(rec)
  return rec
end

---------------------------------------------------------------------------
-- evaluation order (§1.7)

-- Emissary's route weight (nuncio.ambassador.order.route_weight: precedence, prefix length, header
-- and query parameter lengths, prefix, method, keys), sorted descending. The :authority
-- from hostname/host and the :method count as headers.
function M.compute_weight(rec)
  rec.route_weight = order.route_weight(rec)
end

-- true when a must be tried before b
function M.before(a, b)
  local wa, wb = a.route_weight, b.route_weight
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
