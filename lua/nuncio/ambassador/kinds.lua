-- nuncio.ambassador.kinds: Host, Listener and Module resources -> their part
-- of the normalized model (docs/internals.md §2). Mapping lives in
-- nuncio.ambassador.mapping, TLSContext, Secrets and TLS in nuncio.ambassador.tls.

local check = require("nuncio.ambassador.check")
local mapping = require("nuncio.ambassador.mapping")
local policy = require("nuncio.ambassador.policy")
local observe = require("nuncio.ambassador.observe")
local diag_routes = require("nuncio.ambassador.diag_routes")
local access_log = require("nuncio.ambassador.access_log")

local next = next
local ipairs = ipairs
local type = type
local tostring = tostring
local tonumber = tonumber
local loadstring = loadstring
local table_sort = table.sort
local table_concat = table.concat
local string_format = string.format

local M = {}

-- The largest byte count the core takes (a C int).
local MAX_BYTES = 2147483647

---------------------------------------------------------------------------
-- Module (behaviour notes §5)

-- Keys acted on now.
local MODULE_DONE = check.set {
  "cluster_request_timeout_ms", "use_ambassador_namespace_for_service_resolution",
  "lua_scripts", "strip_matching_host_port", "merge_slashes", "reject_requests_with_escaped_slashes",
  "server_name", "add_linkerd_headers", "preserve_external_request_id", "defaults",
  "retry_policy", "load_balancer", "cluster_idle_timeout_ms", "listener_idle_timeout_ms",
  "enable_http10", "enable_grpc_web", "enable_grpc_http11_bridge", "cors",
  "grpc_stats", "diagnostics", "readiness_probe", "liveness_probe",
  "envoy_log_type", "envoy_log_format", "envoy_log_path",
  "max_request_headers_kb", "buffer", "buffer_limit_bytes",
}

-- Keys Emissary knows; later issues implement them.
local MODULE_TODO = check.set {
  "use_remote_address", "xff_num_trusted_hops",
  "cluster_max_connection_lifetime_ms",
  "regex_type", "regex_max_size", "header_case_overrides",
  "proper_case", "default_label_domain", "default_labels",
  "circuit_breakers", "keepalive", "ip_allow", "ip_deny", "gzip", "enable_ipv4",
  "enable_ipv6", "forward_client_cert_details",
  "set_current_client_cert_details", "suppress_envoy_headers", "headers_with_underscores_action",
  "allow_chunked_length", "admin_port",
  "error_response_overrides", "use_proxy_proto", "x_forwarded_proto_redirect", "service_port",
  "resolver", "envoy_validation_timeout", "statsd", "auth_service", "rate_limit_service",
  "tracing_service", "x_num_trusted_hops", "strip_matching_host_port_from_authority",
  "http3_enabled", "circuit_breaker", "add_response_headers", "add_request_headers",
  "health_check", "access_log", "respect_dns_ttl", "dns_type", "use_websocket", "allow_upgrade",
}

-- Module defaults nuncio applies to Mappings (Emissary's lookup_default: first
-- defaults.httpmapping.KEY, then defaults.KEY).
local DEFAULT_KEYS = { "add_request_headers", "add_response_headers", "remove_request_headers",
  "remove_response_headers" }
local DEFAULT_TODO = check.set { "stats_name" }

---------------------------------------------------------------------------
-- $NAME / ${NAME} in Module config strings (behaviour notes §0: Emissary's LuaTest relies
-- on it): expanded from the environment at load; an unset variable becomes "" with a warning.

local function expand(s, missing)
  return (s:gsub("%$({?)([%a_][%w_]*)(}?)", function(open, name, close)
    if open == "{" and close ~= "}" then
      return nil -- "${NAME" without its brace: left as written
    end
    local v = os.getenv(name)
    if v == nil then
      missing[#missing + 1] = name
      v = ""
    end
    if open == "" then
      return v .. close
    end
    return v
  end))
end

local function expand_env(rep, res, tbl, path, depth)
  if depth > 16 then
    return
  end
  for _, k in ipairs(check.sorted_keys(tbl)) do
    local v = tbl[k]
    local field = type(k) == "number" and (path .. "[" .. k .. "]") or (path .. (path == "" and "" or ".") .. k)
    if type(v) == "string" and v:find("$", 1, true) then
      local missing = {}
      tbl[k] = expand(v, missing)
      for _, name in ipairs(missing) do
        rep:warning(res, "config." .. field, "$" .. name .. " is not set in the environment: replaced by an "
          .. "empty string", tbl, k)
      end
    elseif type(v) == "table" then
      expand_env(rep, res, v, field, depth + 1)
    end
  end
end

-- The file line of a literal block scalar's first content line ("key: |"), or nil when the
-- value is not one (then script lines cannot be mapped to file lines).
local function block_start(res, key_line)
  if not res.text or res.line_map or not key_line then
    return nil
  end
  local n = 0
  for l in (res.text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if n == key_line then
      l = l:gsub("%s+#.*$", "")
      if l:match(":%s*|[%-+%d]*%s*$") then
        return key_line + 1
      end
      return nil
    end
  end
  return nil
end

-- lua_scripts: compiled here so a syntax error is a config error naming the file line.
local function read_lua_scripts(rep, res, cc)
  local code = cc:string("lua_scripts")
  if code == nil then
    return nil
  end
  local key_line = cc:line("lua_scripts")
  local where = string_format("%s:%d: Module %s: config.lua_scripts", res.file, key_line, tostring(res.name))
  local fn, err = loadstring(code, "=lua_scripts")
  if not fn then
    local n, msg = tostring(err):match("^lua_scripts:(%d+): (.*)$")
    local first = block_start(res, key_line)
    local line = (n and first) and (first + tonumber(n) - 1) or key_line
    -- the line is the script's own line when the file shows the script as a block
    rep:raw_error(check.format(res, line, "config.lua_scripts", "does not compile: "
      .. (n and ("line " .. n .. " of the script: " .. msg) or tostring(err))))
    return nil
  end
  -- where: the prefix of any later error about the script (a failure when it starts);
  -- first_line: the file line of the script's line 1 when the file shows it as a block
  return { code = code, source = res.file .. ":" .. key_line, where = where, file = res.file,
    first_line = block_start(res, key_line), module = res.name }
end

local function read_defaults(rep, res, cc)
  local out = {}
  if not cc:has("defaults") then
    return out
  end
  local dc = cc:sub("defaults")
  local hc = dc:sub("httpmapping")
  for _, key in ipairs(DEFAULT_KEYS) do
    local reader = key:match("^add_") and mapping.read_added_headers or mapping.read_removed_headers
    local v = reader(hc, key)
    if v == nil and not hc:has(key) then
      v = reader(dc, key)
    end
    out[key] = v
  end
  local known = check.set(DEFAULT_KEYS)
  hc:check_keys(known, DEFAULT_TODO)
  known.httpmapping = true
  dc:check_keys(known, check.set { "tcpmapping", "stats_name" })
  return out
end

-- Request limits (behaviour notes §5.2; issue 9). An absent key leaves the core's default, which
-- is Envoy's: 60 KiB of request headers, 1 MiB held per stream, no buffer filter.
--   max_request_headers_kb -> http.max_request_headers_kb: a request's header block (HTTP/1.1: the
--     request line and headers; HTTP/2: the header list as HPACK decodes it); above it HTTP/1.1
--     gets 431, HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE says it and the stream is refused.
--   buffer.max_request_bytes -> http.max_request_bytes: Envoy's buffer filter: the request body is
--     held until complete (the upstream sees the request only then); above N bytes: 413.
--   buffer_limit_bytes -> http.buffer_limit_bytes: Envoy's per_connection_buffer_limit_bytes: how much
--     request body the proxy holds per stream before it stops reading from the client, and the
--     most a filter waiting for a whole body may make it hold (413 above).
local function read_limits(rep, res, cc, config, http)
  http.max_request_headers_kb = cc:int("max_request_headers_kb", nil, 1, 8192)
  http.buffer_limit_bytes = cc:int("buffer_limit_bytes", nil, 1, MAX_BYTES)
  if not cc:has("buffer") then
    return
  end
  local bc, present = cc:sub("buffer")
  if not present then
    return -- not a mapping: cc:sub said so
  end
  if not bc:has("max_request_bytes") then
    -- Emissary (IRBuffer) refuses a buffer without it; Envoy's filter needs it
    bc.failed = true
    rep:error(res, "config.buffer.max_request_bytes", "required when buffer is set", config, "buffer")
  else
    http.max_request_bytes = bc:int("max_request_bytes", nil, 1, MAX_BYTES)
  end
  bc:check_keys(check.set { "max_request_bytes" })
end

-- module(rep, modules) -> config, settings
--   settings: { default_timeout_ms, use_ambassador_namespace, http, defaults, retry_policy, load_balancer,
--               add_linkerd_headers, cluster_idle_timeout_ms }
--   settings.http: what nuncio's connection manager does with every request (model.http)
function M.module(rep, modules)
  local chosen
  for i = 1, #modules do
    local res = modules[i]
    if res.name ~= "ambassador" then
      rep:warning(res, nil, 'ignored: only the Module named "ambassador" is used')
    elseif chosen then
      rep:warning(res, nil, "ignored: the Module ambassador from " .. chosen.source .. " is already in use")
    else
      chosen = res
    end
  end
  local settings = { http = M.default_http(), defaults = {} }
  if not chosen then
    return {}, settings
  end
  local c = check.fields(rep, chosen, chosen.spec)
  local config = c:map("config")
  c:check_keys(check.set { "config", "ambassador_id", "generation" })
  if not config then
    return {}, settings
  end
  expand_env(rep, chosen, config, "", 1)
  local cc = check.fields(rep, chosen, config, "config.")
  settings.default_timeout_ms = cc:int("cluster_request_timeout_ms", nil, 0)
  settings.use_ambassador_namespace = cc:bool("use_ambassador_namespace_for_service_resolution", false)
  local http = settings.http
  http.strip_matching_host_port = cc:bool("strip_matching_host_port", false)
  http.merge_slashes = cc:bool("merge_slashes", false)
  http.reject_requests_with_escaped_slashes = cc:bool("reject_requests_with_escaped_slashes", false)
  http.preserve_external_request_id = cc:bool("preserve_external_request_id", false)
  local server_name = cc:string("server_name")
  if server_name and server_name ~= "" then
    http.server_name = server_name
  end
  http.listener_idle_timeout_ms = cc:int("listener_idle_timeout_ms", http.listener_idle_timeout_ms, 0, check.MAX_MS)
  http.enable_http10 = cc:bool("enable_http10", false)
  -- Emissary checks `"enable_grpc_web" in amod`: the key's presence installs the filter, even as false.
  http.enable_grpc_web = cc:has("enable_grpc_web")
  http.enable_grpc_http11_bridge = cc:has("enable_grpc_http11_bridge") -- the same presence rule
  settings.cluster_idle_timeout_ms = cc:int("cluster_idle_timeout_ms", nil, 0, check.MAX_MS)
  http.lua_scripts = read_lua_scripts(rep, chosen, cc)
  settings.add_linkerd_headers = cc:bool("add_linkerd_headers", false)
  settings.defaults = read_defaults(rep, chosen, cc)
  settings.retry_policy = policy.read_retry_policy(cc, "retry_policy")
  settings.load_balancer = policy.read_load_balancer(cc, "load_balancer")
  settings.cors = policy.read_cors(cc, "cors")
  http.grpc_stats = observe.read_grpc_stats(cc, "grpc_stats")
  settings.probes = diag_routes.read(cc)
  http.access_log = access_log.read(cc)
  read_limits(rep, chosen, cc, config, http)
  cc:check_keys(MODULE_DONE, MODULE_TODO, "accepted, not implemented yet")
  return config, settings
end

-- What nuncio does with every request when the Module says nothing (Envoy's and
-- Emissary's defaults).
function M.default_http()
  return {
    strip_matching_host_port = false,
    merge_slashes = false,
    reject_requests_with_escaped_slashes = false,
    preserve_external_request_id = false,
    server_name = "envoy", -- Emissary's default server_name
    listener_idle_timeout_ms = 3600000, -- Envoy's connection manager idle_timeout: 1 h; 0: none
    enable_http10 = false, -- HTTP/1.0 requests get 426 unless the Module turns this on
    enable_grpc_web = false, -- Module enable_grpc_web present: gRPC-Web requests are translated
    enable_grpc_http11_bridge = false, -- present: HTTP/1.1 gRPC clients get grpc-status in headers
    lua_scripts = nil,
  }
end

---------------------------------------------------------------------------
-- Listener (behaviour notes §3)

local STACKS = {
  ["HTTP,TCP"] = "HTTP",
  ["TLS,HTTP,TCP"] = "HTTPS",
  ["PROXY,HTTP,TCP"] = "HTTPPROXY",
  ["TLS,PROXY,HTTP,TCP"] = "HTTPSPROXY",
  ["TCP"] = "TCP",
  ["TLS,TCP"] = "TLS",
}
local PROTOCOLS = check.set { "HTTP", "HTTPS", "HTTPPROXY", "HTTPSPROXY", "TCP", "TLS" }
local SECURITY_MODELS = check.set { "XFP", "SECURE", "INSECURE" }
local LISTENER_FIELDS = check.set {
  "port", "protocol", "protocolStack", "securityModel", "l7Depth", "bind_address", "hostBinding",
  "ambassador_id", "generation", "http2MaxConcurrentStreams",
}
local LISTENER_TODO = check.set { "statsPrefix", "http3Enabled" }

-- listener(rep, res) -> model listener | nil
function M.listener(rep, res)
  local c = check.fields(rep, res, res.spec)
  local port = c:int("port", nil, 1, 65535)
  if not c:has("port") then
    c:missing("port")
  end
  local protocol = c:string("protocol")
  local stack = c:string_list("protocolStack")
  if stack then
    if protocol then
      c:warn("protocolStack", "both protocol and protocolStack are set, using protocolStack")
    end
    protocol = STACKS[check.join(stack, ",")]
    if not protocol then
      c:fail("protocolStack", "[" .. check.join(stack) .. "] is not a stack nuncio supports")
    end
  elseif protocol then
    if not PROTOCOLS[protocol] then
      c:fail("protocol", string_format("must be one of HTTP, HTTPS, HTTPPROXY, HTTPSPROXY, TCP, TLS, not %q",
        protocol))
      protocol = nil
    end
  else
    c:missing("protocol", "required (or protocolStack)")
  end
  if protocol and protocol ~= "HTTP" and protocol ~= "HTTPS" then
    c:fail(stack and "protocolStack" or "protocol", protocol .. " listeners are not supported by nuncio yet")
  end

  local security = c:string("securityModel", true)
  if security and not SECURITY_MODELS[security] then
    c:fail("securityModel", string_format("must be one of XFP, SECURE, INSECURE, not %q", security))
  end
  local l7 = c:int("l7Depth", 0, 0)
  -- http2MaxConcurrentStreams: a nuncio extension. Emissary's Listener CRD has no such field (its
  -- Envoy keeps http2_protocol_options.max_concurrent_streams at the default); nuncio advertises
  -- it as SETTINGS_MAX_CONCURRENT_STREAMS on this Listener's HTTP/2 connections. Absent: 1000.
  local max_streams = c:int("http2MaxConcurrentStreams", nil, 1, 2147483647)
  local address = c:string("bind_address") or "0.0.0.0"
  -- nuncio serves every Host on every Listener: exactly "namespace.from: ALL"
  -- without a selector. Anything narrower is said to be unenforced.
  if not c:has("hostBinding") then
    rep:warning(res, "hostBinding", "missing (Emissary requires it); every Host is served on this Listener")
  else
    local hb = c:sub("hostBinding")
    local ns = hb:sub("namespace")
    local from = ns:string("from")
    if from ~= nil and from ~= "ALL" and from ~= "SELF" then
      ns:fail("from", string_format("must be ALL or SELF, not %q", from))
    elseif from == "SELF" then
      ns:warn("from", "SELF is not enforced yet: Hosts of every namespace are served on this Listener")
    end
    if hb:has("selector") then
      hb:warn("selector", "not enforced yet: every Host is served on this Listener")
    end
    ns:check_keys(check.set { "from" })
    hb:check_keys(check.set { "namespace", "selector" })
  end
  c:check_keys(LISTENER_FIELDS, LISTENER_TODO)
  if c.failed then
    return nil
  end
  return {
    name = res.name,
    namespace = res.namespace,
    address = address,
    port = port,
    protocol = protocol,
    -- HTTPS takes TLS and cleartext on one port; nuncio.ambassador turns tls
    -- off again when nothing terminates TLS (there is no certificate to serve)
    tls = protocol == "HTTPS",
    security_model = security,
    l7_depth = l7,
    http2_max_concurrent_streams = max_streams,
    source = res.source,
  }
end

M.DEFAULT_HTTP_PORT = 8080
M.DEFAULT_HTTPS_PORT = 8443

local function default_listener(name, port, tls)
  return {
    name = name,
    address = "0.0.0.0",
    port = port,
    protocol = tls and "HTTPS" or "HTTP",
    tls = tls,
    security_model = "XFP",
    l7_depth = 0,
    source = "(default)",
  }
end

-- default_listeners(cleartext_ports, with_tls) -> listeners, warning
--   Without Listener resources nuncio listens like Ambassador's quick-start:
--   cleartext on 8080 (or the Hosts' additionalPorts), and 8443 HTTPS (TLS and
--   cleartext by first byte) when something terminates TLS.
function M.default_listeners(ports, with_tls)
  local sorted, seen = {}, {}
  for _, p in ipairs(ports) do
    if not seen[p] and not (with_tls and p == M.DEFAULT_HTTPS_PORT) then
      seen[p] = true
      sorted[#sorted + 1] = p
    end
  end
  table_sort(sorted)
  local out, said = {}, {}
  for _, p in ipairs(sorted) do
    out[#out + 1] = default_listener(p == M.DEFAULT_HTTP_PORT and "default-listener" or "default-listener-" .. p, p,
      false)
  end
  if with_tls then
    out[#out + 1] = default_listener("default-https-listener", M.DEFAULT_HTTPS_PORT, true)
  end
  for i, l in ipairs(out) do
    said[i] = string_format("%s:%d (protocol %s, securityModel XFP)", l.address, l.port, l.protocol)
  end
  local warning = "no Listener resource: Emissary itself would listen nowhere; nuncio defaults to "
    .. table_concat(said, " and ") .. " like Ambassador's quick-start"
  return out, warning
end

---------------------------------------------------------------------------
-- Host (behaviour notes §2)

local INSECURE_ACTIONS = check.set { "Redirect", "Route", "Reject" }
local HOST_FIELDS = check.set {
  "hostname", "requestPolicy", "mappingSelector", "selector", "ambassador_id", "generation",
  "tlsSecret", "tls", "tlsContext", "acmeProvider",
}
local HOST_TODO = check.set { "previewUrl" }

local function read_selector(c, key)
  local sc = c:sub(key)
  if next(sc.tbl) == nil then
    return nil -- Emissary tests the selector for truth: an empty one counts as none
  end
  local labels = sc:string_map("matchLabels")
  if sc:has("matchExpressions") then
    sc:warn("matchExpressions", "not implemented yet, ignored (only matchLabels is used)")
  end
  sc:check_keys(check.set { "matchLabels" }, check.set { "matchExpressions" })
  return labels or {}
end

-- host(rep, res) -> model host, extra | nil
--   extra: { additional_port, tls_secret = {name, namespace, tbl}, tls_context, tls_inline }
--   for nuncio.ambassador.tls (Builder:host)
function M.host(rep, res)
  local c = check.fields(rep, res, res.spec)
  local hostname = c:string("hostname")
  if hostname == nil or hostname == "" then
    hostname = "*"
  elseif not mapping.valid_glob(hostname) then
    c:fail("hostname", string_format("%q is not a DNS glob: '*' may only be the first or the last character",
      hostname))
  end

  local rp = c:sub("requestPolicy")
  local ins = rp:sub("insecure")
  local action = ins:string("action")
  if action == nil then
    action = "Redirect"
  elseif not INSECURE_ACTIONS[action] then
    ins:fail("action", string_format("must be Redirect, Route or Reject (case-sensitive), not %q", action))
  end
  local additional_port = ins:int("additionalPort", nil, -1, 65535)
  if additional_port == 0 then
    ins:fail("additionalPort", "must be -1 (no cleartext port) or a port between 1 and 65535, not 0")
    additional_port = nil
  end
  rp:check_keys(check.set { "insecure" })
  ins:check_keys(check.set { "action", "additionalPort" })

  local selector
  if c:has("mappingSelector") then
    if c:has("selector") then
      c:warn("selector", "both mappingSelector and selector are set, using mappingSelector")
    end
    selector = read_selector(c, "mappingSelector")
  elseif c:has("selector") then
    selector = read_selector(c, "selector")
  end

  -- TLS (resolved by nuncio.ambassador.tls once every TLSContext is known)
  local extra = { additional_port = additional_port, additional_port_tbl = ins.tbl }
  if c:has("tlsSecret") then
    local sc = c:sub("tlsSecret")
    local name = sc:string("name", true)
    local ns = sc:string("namespace")
    if name == "" then
      sc:fail("name", "must not be empty")
      name = nil
    end
    sc:check_keys(check.set { "name", "namespace" })
    if name then
      extra.tls_secret = { name = name, namespace = ns ~= "" and ns or nil, tbl = sc.tbl }
    end
  end
  if c:has("tlsContext") then
    local tc = c:sub("tlsContext")
    local name = tc:string("name", true)
    tc:check_keys(check.set { "name" })
    if name and name ~= "" then
      extra.tls_context = name
      extra.tls_context_tbl = tc.tbl
    elseif name == "" then
      tc:fail("name", "must not be empty")
    end
  end
  extra.tls_inline = c:map("tls")
  if c:has("acmeProvider") then
    local ac = c:sub("acmeProvider")
    if ac:raw("authority") ~= "none" then
      c:warn("acmeProvider", "ACME is not implemented (an Edge Stack feature), ignored; "
        .. "acmeProvider: {authority: none} says so without a warning")
    end
  end
  c:check_keys(HOST_FIELDS, HOST_TODO)
  if c.failed then
    return nil
  end
  return {
    name = res.name,
    namespace = res.namespace,
    hostname = hostname,
    insecure_action = action,
    selector = selector,
    source = res.source,
  }, extra
end

-- §2.5: no Host -> a "*" Host; cleartext (Route) unless the fallback
-- certificate exists, then TLS and Redirect (nuncio.ambassador decides)
function M.default_host(namespace)
  return {
    name = "default-host",
    namespace = namespace,
    hostname = "*",
    insecure_action = "Route",
    source = "(default)",
  }
end

return M
