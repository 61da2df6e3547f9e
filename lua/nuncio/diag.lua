-- nuncio.diag: Ambassador's diagnostics (/ambassador/v0/diag/) rendered from what the
-- admin listener knows. The admin runs in its own thread and Lua VM and calls
--
--   local status, content_type, body = require("nuncio.diag").render(state, query)
--
-- state (every field optional unless said):
--   model        the last model that loaded (nuncio.config.load's), nil before any did
--   errors       { "file:line: Kind name: field: message", ... } of the LAST load attempt
--                (a failed reload's errors stay visible while the old model serves)
--   warnings     { string, ... } of the last load attempt
--   generation   integer; reloads = { ok = n, failed = n }; last_reload = { time = unix s, ok = bool }
--   started, now unix seconds (now defaults to os.time()); version = "0.x"; workers = n
--   route_stats  live counters summed over workers, per route: keyed by the route's index in
--                model.routes, or "name.namespace", or name (tried in that order):
--                { requests = n, errors_5xx = n, grpc_errors = n, seconds_sum = x }
--   admin        { address, port }; hostname (default: the kernel's); ambassador_id
--   ready        false while the core is not ready (draining): shown as envoy_status.ready
--   peer_local   false when the client is not on loopback: with Module diagnostics
--                {enabled: false, allow_non_local: false} the page is then a 404, as diagd
--                does (diagd.py _allow_diag_ui); nil or true: served
-- query: the parsed query string, e.g. { json = "true", filter = "errors" }.
--
-- Output follows diagd (Emissary python/ambassador_diag/diagd.py show_overview and
-- diagnostics/diagnostics.py): ?json=<anything but false/0/no/empty> gives the JSON object
-- (diagd tests the parameter for truth, so json=bogus is JSON too); &filter=KEY gives only
-- that key's value (null when there is none), so filter=errors is the list of config
-- errors, [] when clean (Emissary's gRPC KAT asserts that). Without json: one HTML page,
-- self-contained, every user-supplied string escaped.

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local pcall = pcall
local string_format = string.format
local string_byte = string.byte
local string_gsub = string.gsub
local table_concat = table.concat
local table_sort = table.sort
local math_floor = math.floor
local math_huge = math.huge
local os_date = os.date
local os_time = os.time

local M = {}

M.VERSION = "0.x"

---------------------------------------------------------------------------
-- JSON. Arrays and objects are decided by the caller (M.array / M.object), never
-- guessed from the keys: an empty list must still be [] (filter=errors on a clean
-- config), an empty map {}.

local ARRAY = {}
local OBJECT = {}

function M.array(t)
  return setmetatable(t or {}, ARRAY)
end

function M.object(t)
  return setmetatable(t or {}, OBJECT)
end

local ESC = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
  ["\t"] = "\\t",
}

local function json_string(s)
  return '"' .. string_gsub(s, '[%c"\\]', function(c)
    return ESC[c] or string_format("\\u%04x", string_byte(c))
  end) .. '"'
end

local function json_number(n)
  if n ~= n or n == math_huge or n == -math_huge then
    return "null" -- JSON has no NaN or infinity
  end
  if math_floor(n) == n and n > -2 ^ 53 and n < 2 ^ 53 then
    return string_format("%d", n)
  end
  return string_format("%.17g", n)
end

local encode

local function encode_table(t, out, depth)
  if depth > 64 then
    out[#out + 1] = "null" -- a cycle or absurd nesting: cut, never loop
    return
  end
  local mt = getmetatable(t)
  local is_array = mt == ARRAY
  if mt ~= ARRAY and mt ~= OBJECT then
    -- unmarked (should not happen): a non-empty 1..n sequence is a list, else a map
    local n, count = #t, 0
    for _ in pairs(t) do
      count = count + 1
    end
    is_array = n > 0 and count == n
  end
  if is_array then
    out[#out + 1] = "["
    for i = 1, #t do
      if i > 1 then
        out[#out + 1] = ","
      end
      encode(t[i], out, depth + 1)
    end
    out[#out + 1] = "]"
    return
  end
  local keys = {}
  for k, v in pairs(t) do
    if type(k) == "string" or type(k) == "number" then
      if v ~= nil then
        keys[#keys + 1] = tostring(k)
      end
    end
  end
  table_sort(keys) -- stable output: diffs of two dumps show real changes
  out[#out + 1] = "{"
  for i, k in ipairs(keys) do
    if i > 1 then
      out[#out + 1] = ","
    end
    out[#out + 1] = json_string(k)
    out[#out + 1] = ":"
    local v = t[k]
    if v == nil then
      v = t[tonumber(k)]
    end
    encode(v, out, depth + 1)
  end
  out[#out + 1] = "}"
end

encode = function(v, out, depth)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = json_string(v)
  elseif t == "number" then
    out[#out + 1] = json_number(v)
  elseif t == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif t == "table" then
    encode_table(v, out, depth)
  else
    out[#out + 1] = "null" -- nil, YAML null (lightuserdata), functions, cdata
  end
end

function M.json(v)
  local out = {}
  encode(v, out, 0)
  return table_concat(out)
end

---------------------------------------------------------------------------
-- pieces of the state, turned into plain data once for both outputs

-- diagd's td_format: "1 hour, 2 minutes"; "0s" under a second
local PERIODS = { { "year", 31536000 }, { "month", 2592000 }, { "day", 86400 }, { "hour", 3600 },
  { "minute", 60 }, { "second", 1 } }

function M.duration(seconds)
  seconds = math_floor(tonumber(seconds) or 0)
  local parts = {}
  for _, p in ipairs(PERIODS) do
    if seconds >= p[2] then
      local n = math_floor(seconds / p[2])
      seconds = seconds - n * p[2]
      parts[#parts + 1] = string_format("%d %s%s", n, p[1], n == 1 and "" or "s")
    end
  end
  if #parts == 0 then
    return "0s"
  end
  return table_concat(parts, ", ")
end

local function iso(t)
  if type(t) ~= "number" then
    return nil
  end
  return os_date("!%Y-%m-%dT%H:%M:%SZ", math_floor(t))
end

local function hostname(state)
  if type(state.hostname) == "string" then
    return state.hostname
  end
  local f = io.open("/proc/sys/kernel/hostname", "r")
  if not f then
    return nil
  end
  local h = f:read("*l")
  f:close()
  return h
end

-- "file:line: Kind name: field: message" -> { source, kind, name, error, text }. YAML parse
-- errors ("file:L:C: problem") and messages about a path keep what they have.
function M.parse_error(s)
  s = tostring(s)
  local src, rest = s:match("^(.-:%d+):%d+: (.*)$")
  if not src then
    src, rest = s:match("^(.-:%d+): (.*)$")
  end
  local e = { text = s, source = src or "", error = rest or s }
  if rest then
    local kind, name, msg = rest:match("^(%u[%w]*) ([^%s:]+): (.*)$")
    if kind then
      e.kind, e.name, e.error = kind, name, msg
    end
  end
  return e
end

local function errors_list(state)
  local out = M.array()
  for _, s in ipairs(state.errors or {}) do
    out[#out + 1] = M.object(M.parse_error(s))
  end
  return out
end

local function stats_of(state, route, i)
  local rs = state.route_stats
  if type(rs) ~= "table" then
    return nil
  end
  local s = rs[i]
  if s == nil and route.name then
    s = rs[tostring(route.name) .. "." .. tostring(route.namespace)] or rs[route.name]
  end
  if type(s) ~= "table" then
    return nil
  end
  local requests = tonumber(s.requests) or 0
  local sum = tonumber(s.seconds_sum) or 0
  return M.object({
    requests = requests,
    errors_5xx = tonumber(s.errors_5xx) or 0,
    grpc_errors = tonumber(s.grpc_errors) or 0,
    seconds_sum = sum,
    mean_ms = requests > 0 and sum * 1000 / requests or nil,
  })
end

local function cluster_service(c)
  local host = tostring(c.host)
  if host:find(":", 1, true) then
    host = "[" .. host .. "]"
  end
  return host .. ":" .. tostring(c.port)
end

local function host_text(h)
  if type(h) ~= "table" or h.value == nil then
    return "*"
  end
  if h.kind == "regex" then
    return "~" .. tostring(h.value)
  end
  return tostring(h.value)
end

-- the match as diagd shows it: prefix, or the regex; "=" marks an exact path
local function match_text(r)
  if r.prefix_regex then
    return "~" .. tostring(r.prefix)
  elseif r.prefix_exact then
    return "=" .. tostring(r.prefix)
  end
  return tostring(r.prefix)
end

local function headers_of(r)
  local out = M.array()
  for _, h in ipairs(r.headers or {}) do
    out[#out + 1] = M.object({ name = h.name, value = h.value == true and "*" or h.value, regex = h.regex and true
      or false, present = h.value == true or nil })
  end
  return out
end

local function query_of(r)
  local out = M.array()
  for _, q in ipairs(r.query or {}) do
    out[#out + 1] = M.object({ name = q.name, value = q.value == true and "*" or q.value, regex = q.regex and true
      or false, present = q.value == true or nil })
  end
  return out
end

-- route_info as diagd builds it (DiagResult.include_httpgroup), one entry per model route,
-- in evaluation order, plus nuncio's own keys (name, source, stats...)
local function route_info(state, model)
  local out = M.array()
  local clusters, hosts = model.clusters or {}, model.hosts or {}
  for i, r in ipairs(model.routes or {}) do
    local c = clusters[r.cluster] or {}
    local host = host_text(r.host)
    local prefix = tostring(r.prefix)
    local key = string_format("http://%s%s%s", host == "*" and "*" or host, prefix:sub(1, 1) == "/" and "" or "/",
      prefix)
    local host_names = M.array()
    for _, hi in ipairs(r.hosts or {}) do
      host_names[#host_names + 1] = hosts[hi] and hosts[hi].name or tostring(hi)
    end
    out[#out + 1] = M.object({
      index = i,
      key = key,
      name = r.name,
      namespace = r.namespace,
      _source = r.source,
      source = r.source,
      internal = r.internal and true or false,
      diag_class = r.internal and "private" or nil, -- diagd's label for routes that are not the user's
      prefix = not r.prefix_regex and r.prefix or nil,
      regex = r.prefix_regex and r.prefix or nil,
      prefix_exact = r.prefix_exact and true or false,
      match = match_text(r),
      rewrite = r.rewrite,
      method = r.method or "*",
      method_regex = r.method_regex and true or false,
      headers = headers_of(r),
      query_parameters = query_of(r),
      host = host,
      hosts = host_names,
      precedence = r.precedence or 0,
      grpc = r.grpc and true or false,
      timeout_ms = r.timeout_ms,
      clusters = M.array({ M.object({
        name = c.name,
        service = c.host and cluster_service(c) or nil,
        weight = r.weight or 100,
        type_label = c.tls and "tls" or nil,
      }) }),
      stats = stats_of(state, r, i),
    })
  end
  return out
end

local function cluster_list(model)
  local out = M.array()
  local info = M.object()
  local used = {}
  for _, r in ipairs(model.routes or {}) do
    if r.cluster then
      used[r.cluster] = (used[r.cluster] or 0) + 1
    end
  end
  for i, c in ipairs(model.clusters or {}) do
    local endpoints = M.array()
    for _, e in ipairs(c.endpoints or {}) do
      endpoints[#endpoints + 1] = cluster_service(e)
    end
    local tls = nil
    if type(c.tls) == "table" then
      -- only what names the TLS setup: certificates and keys stay out of the page
      tls = M.object({ context = c.tls.context, sni = c.tls.sni, source = c.tls.source })
    end
    local entry = M.object({
      name = c.name,
      service = cluster_service(c),
      host = c.host,
      port = c.port,
      http2 = c.http2 and true or false,
      tls = tls or false,
      lb_policy = type(c.lb) == "table" and c.lb.policy or "round_robin",
      connect_timeout_ms = c.connect_timeout_ms,
      endpoints = endpoints,
      routes = used[i] or 0,
    })
    out[#out + 1] = entry
    if c.name then
      info[c.name] = entry
    end
  end
  return out, info
end

local function listener_list(model)
  local out = M.array()
  for _, l in ipairs(model.listeners or {}) do
    out[#out + 1] = M.object({ name = l.name, namespace = l.namespace, address = l.address, port = l.port,
      protocol = l.protocol, tls = l.tls and true or false, security_model = l.security_model,
      l7_depth = l.l7_depth, source = l.source })
  end
  return out
end

local function host_list(model)
  local out = M.array()
  for _, h in ipairs(model.hosts or {}) do
    out[#out + 1] = M.object({ name = h.name, namespace = h.namespace, hostname = h.hostname,
      insecure_action = h.insecure_action, source = h.source })
  end
  return out
end

local function tls_list(model)
  local out = M.array()
  for _, t in ipairs(model.tls_contexts or {}) do
    local names = M.array()
    for _, n in ipairs(t.hostnames or {}) do
      names[#names + 1] = n
    end
    local alpn = M.array()
    for _, a in ipairs(t.alpn_protocols or {}) do
      alpn[#alpn + 1] = a
    end
    -- never the PEM fields: this page may be public (diagnostics enabled)
    out[#out + 1] = M.object({ name = t.name, hosts = names, alpn_protocols = alpn,
      cert_required = t.cert_required and true or false, min_tls_version = t.min_tls_version,
      max_tls_version = t.max_tls_version, source = t.source })
  end
  return out
end

local function resources_of(model)
  local list, by_source, source_map = M.array(), M.object(), M.object()
  for _, r in ipairs(model.resources or {}) do
    local e = M.object({ kind = r.kind, name = r.name, namespace = r.namespace, source = r.source,
      api_version = r.api_version, ok = r.ok and true or false, ignored = r.ignored })
    list[#list + 1] = e
    local key = tostring(r.source)
    local n, k = 1, key
    while by_source[k] do
      n = n + 1
      k = key .. "#" .. n -- two resources one line (inside an annotation): both kept
    end
    by_source[k] = e
    local file = key:match("^(.*):%d+$") or key
    local m = source_map[file] or M.object()
    m[k] = true
    source_map[file] = m
  end
  return list, by_source, source_map
end

-- settings with plain values only (lua_scripts' code and tables stay out)
local function http_settings(model)
  local out = M.object()
  for k, v in pairs(model.http or {}) do
    local t = type(v)
    if t == "boolean" or t == "number" or t == "string" then
      out[k] = v
    end
  end
  if type(model.http) == "table" and type(model.http.lua_scripts) == "table" then
    out.lua_scripts = model.http.lua_scripts.source or true
  end
  return out
end

local function string_list(list)
  local out = M.array()
  for _, s in ipairs(list or {}) do
    out[#out + 1] = tostring(s)
  end
  return out
end

-- the whole diagd-shaped object
function M.overview(state)
  state = state or {}
  local model = state.model
  local now = tonumber(state.now) or os_time()
  local started = tonumber(state.started) or now
  local errors = errors_list(state)
  local by_source = M.object()
  for _, e in ipairs(errors) do
    local l = by_source[e.source ~= "" and e.source or "-global-"] or M.array()
    l[#l + 1] = M.object({ error = e.error, kind = e.kind, name = e.name })
    by_source[e.source ~= "" and e.source or "-global-"] = l
  end
  local notices = M.array()
  for _, w in ipairs(state.warnings or {}) do
    notices[#notices + 1] = M.object({ level = "WARNING", message = tostring(w) })
  end
  local reloads = state.reloads or {}
  local last = state.last_reload
  local failures = M.array()
  if not model then
    failures[1] = "no configuration loaded"
  end
  if last and last.ok == false then
    failures[#failures + 1] = "the last reload failed: the previous configuration is serving"
  end
  local o = M.object({
    system = M.object({
      version = state.version or M.VERSION,
      hostname = hostname(state),
      ambassador_id = state.ambassador_id or os.getenv("AMBASSADOR_ID") or "default",
      boot_time = iso(started),
      boot_time_unix = started,
      hr_uptime = M.duration(now - started),
      uptime_seconds = now - started,
      env_good = model ~= nil and #errors == 0,
      env_failures = failures,
    }),
    envoy_status = M.object({ -- diagd reports its Envoy; here the proxy is nuncio itself
      alive = true,
      ready = model ~= nil and state.ready ~= false, -- state.ready: the core's (false while draining)
      uptime = M.duration(now - started),
      since_update = last and type(last.time) == "number" and (M.duration(now - last.time) .. " ago")
        or "Never updated",
    }),
    errors = errors,
    errors_by_source = by_source,
    notices = notices,
    warnings = string_list(state.warnings),
    nuncio = M.object({
      generation = state.generation,
      reloads = M.object({ ok = tonumber(reloads.ok) or 0, failed = tonumber(reloads.failed) or 0 }),
      last_reload = last and M.object({ time = last.time, time_iso = iso(last.time), ok = last.ok and true or false })
        or nil,
      workers = state.workers or (model and model.workers),
      started = started,
      now = now,
      config_loaded = model ~= nil,
      admin = type(state.admin) == "table" and M.object({ address = state.admin.address, port = state.admin.port })
        or nil,
    }),
  })
  if model then
    local clusters, info = cluster_list(model)
    local res_list, res_by_source, source_map = resources_of(model)
    o.route_info = route_info(state, model)
    o.clusters = clusters
    o.cluster_info = info
    o.listeners = listener_list(model)
    o.hosts = host_list(model)
    o.tlscontexts = tls_list(model)
    o.resources = res_list
    o.ambassador_resources = res_by_source
    o.source_map = source_map
    o.http = http_settings(model)
    o.diagnostics = type(model.diagnostics) == "table"
      and M.object({ enabled = model.diagnostics.enabled, allow_non_local = model.diagnostics.allow_non_local })
      or nil
  else
    o.route_info = M.array()
    o.clusters = M.array()
    o.cluster_info = M.object()
    o.listeners = M.array()
    o.hosts = M.array()
    o.tlscontexts = M.array()
    o.resources = M.array()
    o.ambassador_resources = M.object()
    o.source_map = M.object()
  end
  return o
end

---------------------------------------------------------------------------
-- HTML

local HTML_ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

local function esc(v)
  if v == nil then
    return ""
  end
  return (string_gsub(tostring(v), "[&<>\"']", HTML_ESC))
end
M.escape = esc

local CSS = [[
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 20px}
header h1{margin:0 0 4px;font-size:20px}
header dl{margin:0;display:flex;flex-wrap:wrap;gap:4px 18px}
header dt{opacity:.7}header dd{margin:0 0 0 4px;font-weight:600}
header dl div{display:flex}
main{padding:12px 20px}
section{margin:0 0 18px}
h2{font-size:16px;margin:12px 0 6px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #d8dce3;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eceff3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code,td.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
#errors{border:2px solid #c62828;background:#fdecea;padding:8px 12px;border-radius:4px}
#errors h2{color:#c62828;margin-top:0}
#errors ul,#warnings ul{margin:0;padding-left:18px}
#errors .source,#warnings .source{font-weight:600}
#no-errors{color:#2e7d32}
#warnings{border:1px solid #e0a800;background:#fff8e1;padding:8px 12px;border-radius:4px}
tr.internal td{color:#66707f}
tr.bad td.err{color:#c62828;font-weight:600}
.muted{color:#66707f}
]]

local function dl_item(out, label, value, id)
  out[#out + 1] = string_format('<div><dt>%s</dt><dd id="%s">%s</dd></div>', esc(label), esc(id), esc(value))
end

local function fmt_ms(x)
  if type(x) ~= "number" then
    return ""
  end
  return string_format("%.1f ms", x)
end

local function error_items(out, errors, class)
  for _, e in ipairs(errors) do
    out[#out + 1] = string_format('<li class="%s"><span class="source">%s</span> <span class="message">%s%s</span></li>',
      class, esc(e.source ~= "" and e.source or "-"), e.kind and esc(e.kind .. " " .. tostring(e.name) .. ": ") or "",
      esc(e.error))
  end
end

function M.html(o)
  local out = {}
  local sys, nu = o.system, o.nuncio
  out[#out + 1] = '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
  out[#out + 1] = '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
  out[#out + 1] = "<title>nuncio diagnostics</title><style>" .. CSS .. "</style></head><body>"
  out[#out + 1] = '<header id="summary"><h1>nuncio diagnostics</h1><dl>'
  dl_item(out, "version", sys.version, "version")
  dl_item(out, "host", sys.hostname, "hostname")
  dl_item(out, "uptime", sys.hr_uptime, "uptime")
  dl_item(out, "generation", nu.generation, "generation")
  dl_item(out, "reloads ok", nu.reloads.ok, "reloads-ok")
  dl_item(out, "reloads failed", nu.reloads.failed, "reloads-failed")
  if nu.last_reload then
    dl_item(out, "last reload", (nu.last_reload.time_iso or "?") .. (nu.last_reload.ok and " (ok)" or " (FAILED)"),
      "last-reload")
  end
  dl_item(out, "workers", nu.workers, "workers")
  out[#out + 1] = '</dl></header><main>'

  -- errors first and loud: a failed reload leaves the old config serving, which is easy to miss
  if #o.errors > 0 then
    out[#out + 1] = string_format('<section id="errors" class="errors"><h2>Configuration errors (%d)</h2>',
      #o.errors)
    if nu.config_loaded then
      out[#out + 1] = '<p>The last load failed; the configuration below (the last one that loaded) is serving.</p>'
    end
    out[#out + 1] = "<ul>"
    error_items(out, o.errors, "error")
    out[#out + 1] = "</ul></section>"
  else
    out[#out + 1] = '<p id="no-errors">No configuration errors.</p>'
  end
  if #o.warnings > 0 then
    out[#out + 1] = string_format('<section id="warnings"><h2>Warnings (%d)</h2><ul>', #o.warnings)
    for _, w in ipairs(o.warnings) do
      local e = M.parse_error(w)
      out[#out + 1] = string_format('<li class="warning"><span class="source">%s</span> <span class="message">%s</span></li>',
        esc(e.source ~= "" and e.source or "-"), esc(e.source ~= "" and w:sub(#e.source + 3) or w))
    end
    out[#out + 1] = "</ul></section>"
  end
  if not nu.config_loaded then
    out[#out + 1] = '<p id="no-config">No configuration has loaded yet.</p>'
  end

  out[#out + 1] = '<section><h2>Routes, in evaluation order</h2><table id="routes"><thead><tr>'
    .. "<th>#</th><th>prefix / match</th><th>host</th><th>method / headers</th><th>cluster</th>"
    .. "<th>weight</th><th>source</th><th>requests</th><th>5xx</th><th>gRPC errors</th><th>mean latency</th>"
    .. "</tr></thead><tbody>"
  for _, r in ipairs(o.route_info) do
    local hdrs = {}
    for _, h in ipairs(r.headers) do
      hdrs[#hdrs + 1] = h.name .. (h.regex and " ~ " or ": ") .. tostring(h.value)
    end
    for _, q in ipairs(r.query_parameters) do
      hdrs[#hdrs + 1] = "?" .. q.name .. (q.regex and "~" or "=") .. tostring(q.value)
    end
    local c = r.clusters[1] or {}
    local s = r.stats or {}
    local bad = (s.errors_5xx or 0) > 0 or (s.grpc_errors or 0) > 0
    out[#out + 1] = string_format(
      '<tr class="route%s%s" data-index="%d" data-name="%s"><td class="idx num">%d</td><td class="match mono">%s%s</td>'
      .. '<td class="host mono">%s</td><td class="method mono">%s%s</td><td class="cluster mono">%s%s</td>'
      .. '<td class="weight num">%s</td><td class="source mono">%s</td><td class="requests num">%s</td>'
      .. '<td class="errors-5xx num err">%s</td><td class="grpc-errors num err">%s</td><td class="latency num">%s</td></tr>',
      r.internal and " internal" or "", bad and " bad" or "", r.index, esc(r.name), r.index, esc(r.match),
      r.rewrite ~= nil and (' <span class="muted">&rarr; ' .. esc(r.rewrite == "" and '""' or r.rewrite) .. "</span>")
      or "", esc(r.host), esc(r.method), #hdrs > 0 and ("<br>" .. esc(table_concat(hdrs, ", "))) or "",
      esc(c.name), c.service and (' <span class="muted">(' .. esc(c.service) .. ")</span>") or "", esc(c.weight),
      esc(r.source), esc(s.requests or 0), esc(s.errors_5xx or 0), esc(s.grpc_errors or 0), esc(fmt_ms(s.mean_ms)))
  end
  out[#out + 1] = "</tbody></table></section>"

  out[#out + 1] = '<section><h2>Listeners</h2><table id="listeners"><thead><tr><th>name</th><th>address</th>'
    .. "<th>protocol</th><th>security model</th><th>source</th></tr></thead><tbody>"
  for _, l in ipairs(o.listeners) do
    out[#out + 1] = string_format('<tr class="listener"><td>%s</td><td class="mono">%s:%s</td><td>%s%s</td>'
      .. '<td>%s</td><td class="mono">%s</td></tr>', esc(l.name), esc(l.address), esc(l.port), esc(l.protocol),
      l.tls and " (TLS)" or "", esc(l.security_model), esc(l.source))
  end
  out[#out + 1] = "</tbody></table></section>"

  out[#out + 1] = '<section><h2>Hosts</h2><table id="hosts"><thead><tr><th>name</th><th>hostname</th>'
    .. "<th>insecure action</th><th>source</th></tr></thead><tbody>"
  for _, h in ipairs(o.hosts) do
    out[#out + 1] = string_format('<tr class="host"><td>%s</td><td class="mono">%s</td><td>%s</td>'
      .. '<td class="mono">%s</td></tr>', esc(h.name), esc(h.hostname), esc(h.insecure_action), esc(h.source))
  end
  out[#out + 1] = "</tbody></table></section>"

  out[#out + 1] = '<section><h2>Clusters</h2><table id="clusters"><thead><tr><th>name</th><th>service</th>'
    .. "<th>protocol</th><th>balancer</th><th>endpoints</th><th>routes</th></tr></thead><tbody>"
  for _, c in ipairs(o.clusters) do
    local eps = {}
    for _, e in ipairs(c.endpoints) do
      eps[#eps + 1] = e
    end
    out[#out + 1] = string_format('<tr class="cluster"><td class="mono">%s</td><td class="mono">%s</td>'
      .. '<td>%s%s</td><td>%s</td><td class="mono">%s</td><td class="num">%s</td></tr>', esc(c.name),
      esc(c.service), c.http2 and "HTTP/2" or "HTTP/1.1", c.tls and " + TLS" or "", esc(c.lb_policy),
      esc(table_concat(eps, ", ")), esc(c.routes))
  end
  out[#out + 1] = "</tbody></table></section>"

  if #o.tlscontexts > 0 then
    out[#out + 1] = '<section><h2>TLS contexts</h2><table id="tlscontexts"><thead><tr><th>name</th><th>hosts</th>'
      .. "<th>ALPN</th><th>source</th></tr></thead><tbody>"
    for _, t in ipairs(o.tlscontexts) do
      local hs, al = {}, {}
      for _, h in ipairs(t.hosts) do hs[#hs + 1] = h end
      for _, a in ipairs(t.alpn_protocols) do al[#al + 1] = a end
      out[#out + 1] = string_format('<tr class="tlscontext"><td>%s</td><td class="mono">%s</td><td>%s</td>'
        .. '<td class="mono">%s</td></tr>', esc(t.name), esc(table_concat(hs, ", ")), esc(table_concat(al, ", ")),
        esc(t.source))
    end
    out[#out + 1] = "</tbody></table></section>"
  end

  out[#out + 1] = '<section><h2>Resources</h2><table id="resources"><thead><tr><th>kind</th><th>name</th>'
    .. "<th>namespace</th><th>source</th><th>status</th></tr></thead><tbody>"
  for _, r in ipairs(o.resources) do
    out[#out + 1] = string_format('<tr class="resource"><td>%s</td><td>%s</td><td>%s</td><td class="mono">%s</td>'
      .. "<td>%s</td></tr>", esc(r.kind), esc(r.name), esc(r.namespace), esc(r.source),
      r.ok and "ok" or esc("ignored: " .. tostring(r.ignored)))
  end
  out[#out + 1] = "</tbody></table></section>"

  out[#out + 1] = '<p class="muted">JSON: <a href="?json=true">?json=true</a> &middot; '
    .. '<a href="?json=true&amp;filter=errors">?json=true&amp;filter=errors</a></p>'
  out[#out + 1] = "</main></body></html>\n"
  return table_concat(out)
end

---------------------------------------------------------------------------
-- entry point

local FALSE = { [""] = true, ["false"] = true, ["0"] = true, ["no"] = true, ["off"] = true }

local function wants_json(query)
  local j = query and query.json
  if j == nil or j == false then
    return false
  end
  if j == true then
    return true
  end
  return not FALSE[tostring(j):lower()]
end

-- diagd.py _allow_diag_ui: diagnostics disabled, not allow_non_local, client not local
local function refused(state)
  local d = state.model and state.model.diagnostics
  return state.peer_local == false and type(d) == "table" and d.enabled == false and not d.allow_non_local
end

function M.render(state, query)
  state = state or {}
  query = query or {}
  if refused(state) then
    return 404, "text/plain; charset=utf-8", "Not found\n"
  end
  -- a bug here must cost one page, never the admin thread
  local ok, status, ctype, body = pcall(function()
    local o = M.overview(state)
    -- diagd answers 503 before the first configuration; the body still says why
    local code = state.model and 200 or 503
    if wants_json(query) then
      local filter = query.filter
      if filter ~= nil and filter ~= "" then
        local v = o[tostring(filter)]
        return code, "application/json", M.json(v) .. "\n"
      end
      return code, "application/json", M.json(o) .. "\n"
    end
    return code, "text/html; charset=utf-8", M.html(o)
  end)
  if not ok then
    return 500, "text/plain; charset=utf-8", "diagnostics failed: " .. tostring(status) .. "\n"
  end
  return status, ctype, body
end

return M
