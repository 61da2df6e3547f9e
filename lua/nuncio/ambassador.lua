-- nuncio.ambassador: Emissary/Ambassador resources -> nuncio's normalized model.
--
-- Public API (every function returns value_or_nil, errs, warns; errs and warns
-- are arrays of "FILE:LINE: Kind NAME: FIELD: message" strings, always present):
--
--   amb.load(paths, opts)                -> model_part | nil, errs, warns
--       load_paths + build_model in one call (what nuncio.config uses)
--   amb.load_paths(paths, opts)          -> resources | nil, errs, warns
--       paths: a file or folder, or a list of them; folders are read
--       recursively, every *.yaml / *.yml, in sorted order
--   amb.load_text(text, filename, opts)  -> resources | nil, errs, warns
--   amb.build_model(resources, opts)     -> model_part | nil, errs, warns
--       model_part = { listeners, hosts, clusters, policies, routes, module, http, tls_contexts,
--                      resources, diagnostics }
--       resources: { {kind, name, namespace, source, api_version, ok, ignored}, ... } (what was read)
--       diagnostics: { enabled, allow_non_local } (Module diagnostics, for the admin listener)
--       (docs/internals.md §2 and §6)
--   amb.hostglob_matches(glob_a, glob_b) -> boolean
--
-- opts (all optional):
--   ambassador_id  this instance's id; default $AMBASSADOR_ID, else "default"
--   namespace      Ambassador's own namespace; default $AMBASSADOR_NAMESPACE, else "default"
--   secrets_dir    folder of secrets no Secret in the YAML defines (NAME/tls.crt + tls.key,
--                  or NAME.crt + NAME.key); default none
--   admin          { address, port } of the admin listener: Emissary's internal Mappings
--                  (/ambassador/v0/check_alive, check_ready, /ambassador/v0/) route there;
--                  nil or false: no internal Mappings (nuncio.config always passes it)
--
-- Input forms (behaviour notes §0): getambassador.io/v3alpha1, v2, v1 CRDs
-- (metadata + spec), flat ambassador/v0, ambassador/v1 and annotation-style
-- documents (name and fields at top level), multi-document streams, files whose
-- top level is a list, Kubernetes "kind: List" with items, and the
-- getambassador.io/config annotation of a Kubernetes Service, and Kubernetes
-- Secrets of type kubernetes.io/tls (certificates for Hosts and TLSContexts).
-- Other Kubernetes objects are skipped without a word. Nothing is half-loaded:
-- any error and the caller gets nil.

local yaml = require("nuncio.yaml")
local fs = require("nuncio.ambassador.fs")
local check = require("nuncio.ambassador.check")
local mapping = require("nuncio.ambassador.mapping")
local kinds = require("nuncio.ambassador.kinds")
local tls = require("nuncio.ambassador.tls")
local route_order = require("nuncio.ambassador.order")
local diag_routes = require("nuncio.ambassador.diag_routes") -- diag: internal Mappings (§8)

local type = type
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local os_getenv = os.getenv
local string_format = string.format
local string_sub = string.sub
local table_sort = table.sort

local NULL = yaml.null

local M = {}

M.hostglob_matches = mapping.hostglob_matches
M.default_http = kinds.default_http

local ANNOTATION = "getambassador.io/config"
local MAX_NESTING = 8 -- lists of lists of Services...: enough for real files, bounded for hostile ones

local NOT_IMPLEMENTED = check.set {
  "AuthService", "RateLimitService", "TCPMapping", "TracingService", "LogService",
  "KubernetesEndpointResolver", "KubernetesServiceResolver", "ConsulResolver", "DevPortal",
  "Filter", "FilterPolicy", "ExternalFilter", "RateLimit", "WebApplicationFirewall",
  "WebApplicationFirewallPolicy", "Project", "ProjectController", "ProjectRevision",
}

local HANDLED_KINDS = check.set { "Mapping", "Host", "Listener", "Module", "TLSContext" }

-- keys a flat (annotation-style) document carries beside its fields
local FLAT_META = check.set { "apiVersion", "kind", "name", "namespace", "metadata_labels", "ambassador_id" }

local value = check.value

local function env_or(name, default)
  local v = os_getenv(name)
  if v == nil or v == "" then
    return default
  end
  return v
end

---------------------------------------------------------------------------
-- reading documents

-- the n-th line of text (1-based), computed once per file
local function text_line(src, n)
  if not src.lines then
    local lines = {}
    for l in (src.text .. "\n"):gmatch("([^\n]*)\n") do
      lines[#lines + 1] = l
    end
    src.lines = lines
  end
  return src.lines[n]
end

-- Only a literal block scalar ("key: |") keeps the annotation's lines 1:1 with
-- the file's, so only then can positions inside it be given as file lines.
local function is_literal_block(src, key_line)
  if not src.text or not key_line then
    return false
  end
  local l = text_line(src, key_line)
  if not l then
    return false
  end
  l = l:gsub("%s+#.*$", "")
  return l:match(":%s*|[%-+%d]*%s*$") ~= nil
end

local function legacy_api(api)
  if api:match("^ambassador/") then
    return true
  end
  local major = tonumber(api:match("/v(%d+)"))
  return major ~= nil and major < 3
end

local add_doc

local function add_resource(st, doc, src, api)
  local res = {
    api_version = api,
    file = src.file,
    line = src.fallback_line,
    line_map = src.line_map,
    note = src.note,
    legacy = legacy_api(api),
    doc = doc,
    text = src.text, -- the file's text (nil inside an annotation): block scalars map to file lines
  }
  res.line = check.line_of(res, doc)
  res.source = res.file .. ":" .. res.line

  local kind = value(doc.kind)
  if type(kind) ~= "string" or kind == "" then
    res.kind = "Resource"
    st.rep:error(res, "kind", "required", doc, "kind")
    return
  end
  res.kind = kind

  local flat = value(doc.spec) == nil and value(doc.metadata) == nil
  local c = check.fields(st.rep, res, doc)
  if flat then
    res.meta_keys = FLAT_META
    res.name = c:string("name")
    res.namespace = c:string("namespace") or src.namespace
    res.labels = c:string_map("metadata_labels") or src.labels
    res.spec = doc
    res.name_field = "name"
  else
    local mc = c:sub("metadata")
    res.name = mc:string("name")
    res.namespace = mc:string("namespace") or src.namespace
    res.labels = mc:string_map("labels") or src.labels
    res.spec = c:map("spec") or {}
    res.name_field = "metadata.name"
  end
  if c.failed then
    return
  end
  if res.name == nil or res.name == "" then
    st.rep:error(res, res.name_field, "required")
    return
  end
  if res.namespace == "" then
    res.namespace = nil -- Kubernetes reads an empty namespace as the default one
  end
  res.namespace = res.namespace or st.namespace
  res.labels = res.labels or {}
  res.ambassador_id = value(res.spec.ambassador_id)
  st.resources[#st.resources + 1] = res
end

-- a Kubernetes Secret: kept (as a resource of kind "Secret") when it holds a
-- TLS certificate; it is not an Ambassador resource, so no ambassador_id applies
local function add_secret(st, doc, src)
  local res = { kind = "Secret", file = src.file, line = src.fallback_line, line_map = src.line_map, note = src.note }
  res.line = check.line_of(res, doc)
  res.source = res.file .. ":" .. res.line
  local c = check.fields(st.rep, res, doc)
  if c:raw("type") ~= "kubernetes.io/tls" then
    return -- Opaque, service-account tokens...: not ours
  end
  local mc = c:sub("metadata")
  res.name = mc:string("name")
  res.namespace = mc:string("namespace") or src.namespace
  if c.failed or mc.failed then
    return
  end
  if res.name == nil or res.name == "" then
    st.rep:error(res, "metadata.name", "required")
    return
  end
  if res.namespace == "" then
    res.namespace = nil
  end
  res.namespace = res.namespace or st.namespace
  local secret = tls.read_secret(st.rep, res, doc)
  if secret then
    res.secret = secret
    st.resources[#st.resources + 1] = res
  end
end

-- resources inside a Service's getambassador.io/config annotation (§0)
local function add_annotation(st, doc, src, depth)
  local meta = value(doc.metadata)
  local ann = type(meta) == "table" and value(meta.annotations) or nil
  local text = type(ann) == "table" and value(ann[ANNOTATION]) or nil
  if text == nil then
    return -- a plain Service: not ours
  end
  local svc = {
    kind = "Service",
    name = value(meta.name),
    file = src.file,
    line = src.fallback_line,
    line_map = src.line_map,
    note = src.note,
  }
  local key_line = check.line_of(svc, ann, ANNOTATION)
  if type(text) ~= "string" then
    st.rep:error(svc, "metadata.annotations." .. ANNOTATION, "must be a string (a YAML document stream)",
      ann, ANNOTATION)
    return
  end
  local block = src.text and not src.line_map and is_literal_block(src, key_line)
  local inner = {
    file = src.file,
    text = nil, -- positions inside the string are not positions of the file
    fallback_line = key_line,
    line_map = function(l)
      if block then
        return key_line + l
      end
      return nil
    end,
    note = "in the " .. ANNOTATION .. " annotation of Service " .. tostring(svc.name),
    namespace = type(meta.namespace) == "string" and meta.namespace or nil,
    labels = type(value(meta.labels)) == "table" and meta.labels or nil,
  }
  local docs, err = yaml.load(text, src.file)
  if not docs then
    -- err is "FILE:L:C: problem"; L counts inside the annotation
    local l, col, problem = string_sub(err, #src.file + 2):match("^(%d+):(%d+): (.*)$")
    local line = l and block and key_line + tonumber(l) or key_line
    if problem and block then
      problem = problem:gsub(" at line (%d+)%)$", function(n)
        return " at line " .. (key_line + tonumber(n)) .. ")"
      end)
    end
    st.rep:raw_error(check.format(svc, line, "metadata.annotations." .. ANNOTATION,
      (problem or err) .. (l and not block and string_format(" at line %s, column %s of the annotation", l, col)
        or "")))
    return
  end
  for i = 1, #docs do
    add_doc(st, docs[i], inner, depth + 1)
  end
end

add_doc = function(st, doc, src, depth)
  if type(doc) ~= "table" or depth > MAX_NESTING then
    return
  end
  if check.is_list(doc) then
    -- a file (or List) whose top level is a sequence of objects
    for i = 1, #doc do
      add_doc(st, doc[i], src, depth + 1)
    end
    return
  end
  local api, kind = value(doc.apiVersion), value(doc.kind)
  if kind == "List" and type(value(doc.items)) == "table" then
    local items = doc.items
    for i = 1, #items do
      add_doc(st, items[i], src, depth + 1)
    end
    return
  end
  if type(api) ~= "string" then
    return
  end
  if api:match("^getambassador%.io/") or api:match("^ambassador/") then
    add_resource(st, doc, src, api)
  elseif kind == "Secret" and api == "v1" then
    add_secret(st, doc, src)
  elseif kind == "Service" then
    add_annotation(st, doc, src, depth)
  end
end

local function new_state(opts)
  opts = opts or {}
  return {
    rep = check.reporter(),
    resources = {},
    namespace = opts.namespace or env_or("AMBASSADOR_NAMESPACE", "default"),
  }
end

local function read_text(st, text, filename)
  local docs, err = yaml.load(text, filename)
  if not docs then
    st.rep:raw_error(err)
    return
  end
  local src = { file = filename, text = text }
  for i = 1, #docs do
    add_doc(st, docs[i], src, 1)
  end
end

local function finish(st, result)
  if #st.rep.errs > 0 then
    return nil, st.rep.errs, st.rep.warns
  end
  return result, st.rep.errs, st.rep.warns
end

function M.load_text(text, filename, opts)
  local st = new_state(opts)
  read_text(st, text, filename or "<string>")
  return finish(st, st.resources)
end

-- reads every path; the state keeps what could be read even when some could not
local function read_paths(paths, opts)
  local st = new_state(opts)
  if type(paths) == "string" then
    paths = { paths }
  end
  for _, path in ipairs(paths or {}) do
    local files = { path }
    if fs.is_dir(path) then
      local list, err = fs.yaml_files(path)
      if not list then
        st.rep:raw_error(err)
        list = {}
      elseif #list == 0 then
        st.rep:raw_warning(path .. ": no .yaml or .yml files in this folder")
      end
      files = list
    end
    for _, file in ipairs(files) do
      local text, err = fs.read(file)
      if not text then
        st.rep:raw_error(tostring(err))
      else
        read_text(st, text, file)
      end
    end
  end
  return st
end

function M.load_paths(paths, opts)
  local st = read_paths(paths, opts)
  return finish(st, st.resources)
end

---------------------------------------------------------------------------
-- building the model

-- true when this instance should use res (§0 ambassador_id)
local function ours(rep, res, my_id)
  local ids = res.ambassador_id
  if ids == nil then
    return my_id == "default"
  end
  if type(ids) == "string" then
    return ids == my_id
  end
  if type(ids) == "table" and check.is_list(ids) then
    local found = false
    for i = 1, #ids do
      if type(ids[i]) ~= "string" then
        rep:error(res, "ambassador_id", "must be a string or a list of strings", ids, i)
        return false
      end
      found = found or ids[i] == my_id
    end
    return found
  end
  rep:error(res, "ambassador_id", "must be a string or a list of strings, not " .. check.describe(ids),
    res.spec, "ambassador_id")
  return false
end

-- Two resources of one kind may not share a name in a namespace (the second
-- would silently replace the first in Kubernetes).
local function unique(rep, seen, res)
  local key = res.kind .. "\0" .. res.namespace .. "\0" .. res.name
  local first = seen[key]
  if first then
    rep:error(res, nil, string_format("duplicate %s name in namespace %s (first defined at %s)",
      res.kind, res.namespace, first.source))
    return false
  end
  seen[key] = res
  return true
end

local function sanitize(s)
  return (s:gsub("[^%w]", "_"))
end

-- One cluster per (host, port, http2, TLS context). Names are host_port
-- (+ _tls) and stay the same whatever order the Mappings come in; TLS twins
-- with other contexts get _<context>, an HTTP/1 twin of an HTTP/2 cluster
-- _http1, and leftover clashes a numeric suffix.
local function build_clusters(rep, recs)
  local clusters, by_key = {}, {}
  for _, rec in ipairs(recs) do
    local s = rec.service
    local ctx = s.tls and s.tls.context or "-"
    -- the balancer is a property of the cluster, as in Emissary (its cluster names hash it in)
    local lb = rec.load_balancer or { policy = "round_robin" }
    local hash = lb.hash or {}
    local lb_key = string_format("%s\0%s\0%s\0%s", lb.policy, hash.header or "", hash.cookie or "",
      tostring(hash.source_ip or false))
    local key = string_format("%s\0%d\0%s\0%s\0%s", s.host, s.port, tostring(rec.grpc), ctx, lb_key)
    local idx = by_key[key]
    if not idx then
      clusters[#clusters + 1] = {
        host = s.host, port = s.port, http2 = rec.grpc, tls = s.tls, lb = lb, lb_key = lb_key,
        connect_timeout_ms = rec.connect_timeout_ms, first = rec, ctx = ctx,
        idle_timeout_ms = rec.cluster_idle_timeout_ms,
      }
      idx = #clusters
      by_key[key] = idx
    else
      local cl = clusters[idx]
      if cl.connect_timeout_ms ~= rec.connect_timeout_ms then
        rep:warning(rec.res, "connect_timeout_ms", string_format(
          "Mapping %s uses the same upstream with connect_timeout_ms %d; nuncio keeps one value per upstream: %d",
          cl.first.name, cl.connect_timeout_ms, cl.connect_timeout_ms), rec.res.spec, "connect_timeout_ms")
      end
      if cl.idle_timeout_ms ~= rec.cluster_idle_timeout_ms then
        local kept = cl.idle_timeout_ms or "unset (1 h)"
        rep:warning(rec.res, "cluster_idle_timeout_ms", string_format(
          "Mapping %s uses the same upstream with cluster_idle_timeout_ms %s; nuncio keeps one value per upstream: %s",
          cl.first.name, kept, kept), rec.res.spec, "cluster_idle_timeout_ms")
      end
    end
    rec.cluster = idx
  end
  local bases, taken = {}, {}
  for _, cl in ipairs(clusters) do
    cl.base = sanitize(cl.host) .. "_" .. cl.port .. (cl.tls and "_tls" or "")
    local b = bases[cl.base] or { contexts = {}, n_contexts = 0, http2 = {}, lbs = {}, n_lbs = 0 }
    bases[cl.base] = b
    if not b.contexts[cl.ctx] then
      b.contexts[cl.ctx] = true
      b.n_contexts = b.n_contexts + 1
    end
    if not b.lbs[cl.lb_key] then
      b.lbs[cl.lb_key] = true
      b.n_lbs = b.n_lbs + 1
    end
    b.http2[cl.http2] = true
  end
  for _, cl in ipairs(clusters) do
    local name = cl.base
    local b = bases[cl.base]
    if b.n_contexts > 1 then
      name = name .. "_" .. sanitize(cl.ctx)
    end
    if b.http2[true] and b.http2[false] and not cl.http2 then
      name = name .. "_http1"
    end
    if b.n_lbs > 1 and cl.lb.policy ~= "round_robin" then
      name = name .. "_" .. cl.lb.policy
    end
    local n, candidate = 1, name
    while taken[candidate] do
      n = n + 1
      candidate = name .. "_" .. n
    end
    taken[candidate] = true
    cl.name = candidate
    cl.base, cl.first, cl.ctx, cl.lb_key = nil, nil, nil, nil
  end
  return clusters
end

local function route_of(rec)
  local headers = {}
  for i, h in ipairs(rec.headers) do
    headers[i] = { name = h.name, value = h.value, regex = h.regex }
  end
  local query = {}
  for i, q in ipairs(rec.query) do
    query[i] = { name = q.name, value = q.value, regex = q.regex }
  end
  return {
    name = rec.name,
    namespace = rec.namespace,
    source = rec.source,
    prefix = rec.prefix,
    prefix_regex = rec.prefix_regex,
    prefix_exact = rec.prefix_exact,
    case_sensitive = rec.case_sensitive,
    rewrite = rec.rewrite,
    host = rec.host,
    method = rec.method,
    method_regex = rec.method_regex,
    headers = headers,
    query = query,
    precedence = rec.precedence,
    weight = rec.weight,
    grpc = rec.grpc,
    cluster = rec.cluster,
    cors = rec.cors,
    timeout_ms = rec.timeout_ms,
    hosts = rec.hosts,
    host_rewrite = rec.host_rewrite,
    request_headers_to_add = rec.request_headers_to_add,
    response_headers_to_add = rec.response_headers_to_add,
    request_headers_to_remove = rec.request_headers_to_remove,
    response_headers_to_remove = rec.response_headers_to_remove,
    policy = rec.policy,
    internal = rec.internal, -- diag: an Emissary internal Mapping (diagnostics, probes)
  }
end

-- The upstream policies of the routes (retries, stream idle timeout), each
-- distinct one once: the C core keeps them in an array and a route names its
-- index. Policy 1 is the default (no retries, the default stream idle timeout).
local function build_policies(recs)
  local policies = { { retry_on = {}, num_retries = 0, per_try_timeout_ms = 0, retriable_status_codes = {} } }
  local by_key = { [""] = 1 }
  for _, rec in ipairs(recs) do
    local rp = rec.retry_policy
    local key = ""
    if rp or rec.idle_timeout_ms then
      key = string_format("%s|%d|%d|%s|%s", rp and table.concat(rp.retry_on, ",") or "", rp and rp.num_retries or 0,
        rp and rp.per_try_timeout_ms or 0, rp and table.concat(rp.retriable_status_codes, ",") or "",
        tostring(rec.idle_timeout_ms))
    end
    local idx = by_key[key]
    if not idx then
      policies[#policies + 1] = {
        retry_on = rp and rp.retry_on or {},
        num_retries = rp and rp.num_retries or 0,
        per_try_timeout_ms = rp and rp.per_try_timeout_ms or 0,
        retriable_status_codes = rp and rp.retriable_status_codes or {},
        idle_timeout_ms = rec.idle_timeout_ms,
      }
      idx = #policies
      by_key[key] = idx
    end
    rec.policy = idx
  end
  return policies
end

local function attach(rep, recs, hosts)
  for _, rec in ipairs(recs) do
    local list = {}
    for i, h in ipairs(hosts) do
      if mapping.attaches(h, rec) then
        list[#list + 1] = i
      end
    end
    rec.hosts = list
    if #list == 0 then
      if rec.assoc == nil then
        rep:warning(rec.res, nil, 'attaches to no Host: a v3alpha1 Mapping without hostname, host or '
          .. 'headers[":authority"] is only served by a Host whose mappingSelector selects it; '
          .. 'add hostname: "*" to serve it on every Host')
      else
        local field = rec.res.spec.hostname ~= nil and "hostname" or (rec.res.spec.host ~= nil and "host" or nil)
        rep:warning(rec.res, field, "matches no Host: this Mapping is never used", rec.res.spec, field)
      end
    end
  end
end

-- Canary groups (behaviour notes §1.8, §1.9): Mappings with identical matches split the
-- traffic by weight (nuncio.router draws; here bad weights are reported with their line),
-- and Emissary builds the group's header rewrites from all its Mappings: the add_* lists
-- merged (a later Mapping's value for a name wins), remove_* from the last Mapping that has
-- one. routes[i] is the route of recs[i].
local function merge_adds(members, key)
  local out, pos = {}, {}
  for _, route in ipairs(members) do
    for _, h in ipairs(route[key] or {}) do
      local at = pos[h.name]
      if at then
        out[at] = h
      else
        out[#out + 1] = h
        pos[h.name] = #out
      end
    end
  end
  return #out > 0 and out or nil
end

local function canary_groups(rep, recs, routes)
  -- Members of a group share their prefix (part of the key): a Mapping whose prefix no other
  -- has is alone, and alone there is nothing to check, so its key is never built.
  local prefixes = {}
  for i = 1, #routes do
    local p = routes[i].prefix or ""
    prefixes[p] = (prefixes[p] or 0) + 1
  end
  local groups, order = {}, {}
  for i = 1, #recs do
    if prefixes[routes[i].prefix or ""] > 1 then
      local key = route_order.group_key(routes[i])
      local g = groups[key]
      if not g then
        g = {}
        groups[key] = g
        order[#order + 1] = key
      end
      g[#g + 1] = i
    end
  end
  for _, key in ipairs(order) do
    local g = groups[key]
    if #g > 1 then
      table_sort(g, function(a, b) return recs[a].index < recs[b].index end)
      local weights, members = {}, {}
      for j, i in ipairs(g) do
        weights[j] = recs[i].weight or false
        members[j] = routes[i]
      end
      local list, cums, msg = route_order.canary_weights(weights, #g)
      if not list then
        local res = recs[g[cums]].res
        rep:error(res, "weight", msg, res.spec, "weight")
      else
        local total, weightless, names = 0, false, {}
        for j, i in ipairs(g) do
          names[j] = recs[i].name
          if weights[j] then
            total = cums[j] > total and cums[j] or total
          else
            weightless = true
          end
        end
        if not weightless and total < 100 then
          local res = recs[g[#g]].res
          rep:warning(res, "weight", string_format("the Mappings with this match (%s) have weights adding up to "
            .. "%d: %d%% of their requests match none of them and go on to the next route",
            table.concat(names, ", "), total, 100 - total), res.spec, "weight")
        end
        local add_req = merge_adds(members, "request_headers_to_add")
        local add_resp = merge_adds(members, "response_headers_to_add")
        local rm_req, rm_resp
        for _, route in ipairs(members) do
          rm_req = route.request_headers_to_remove or rm_req
          rm_resp = route.response_headers_to_remove or rm_resp
        end
        for _, route in ipairs(members) do
          route.request_headers_to_add = add_req
          route.response_headers_to_add = add_resp
          route.request_headers_to_remove = rm_req
          route.response_headers_to_remove = rm_resp
        end
      end
    end
  end
end

-- Redirect (a Host's default) answers cleartext requests with a 301 to
-- https://. Say so when no listener here can ever see a secure request: no
-- TLS, and no SECURE or trusted-XFP (l7Depth > 0) listener behind a balancer.
local function warn_redirects(rep, hosts, host_res, listeners, with_tls)
  if with_tls then
    return
  end
  for _, l in ipairs(listeners) do
    if l.security_model == "SECURE" or (l.security_model == "XFP" and l.l7_depth > 0) then
      return
    end
  end
  for i, h in ipairs(hosts) do
    local res = host_res[i]
    if res and h.insecure_action == "Redirect" then
      rep:warning(res, "requestPolicy.insecure.action", "Redirect (the default) answers every request with a "
        .. "301 to https://, but nothing here terminates TLS; set action: Route to serve cleartext",
        check.value(res.spec.requestPolicy) ~= nil and res.spec or nil, "requestPolicy")
    end
  end
end

-- Messages are produced kind by kind; readers want them in file order.
local function by_position(list)
  local keyed = {}
  for i, msg in ipairs(list) do
    local file, line = msg:match("^(.-):(%d+): ")
    keyed[i] = { msg = msg, file = file or "", line = tonumber(line) or 0, i = i }
  end
  table_sort(keyed, function(a, b)
    if a.file ~= b.file then
      return a.file < b.file
    elseif a.line ~= b.line then
      return a.line < b.line
    end
    return a.i < b.i
  end)
  for i, k in ipairs(keyed) do
    list[i] = k.msg
  end
  return list
end

function M.build_model(resources, opts)
  opts = opts or {}
  local rep = check.reporter()
  local my_id = opts.ambassador_id or env_or("AMBASSADOR_ID", "default")
  local amb_ns = opts.namespace or env_or("AMBASSADOR_NAMESPACE", "default")

  local by_kind = { Mapping = {}, Host = {}, Listener = {}, Module = {}, TLSContext = {} }
  local secrets = {}
  -- >>> diag: what was loaded, for the diagnostics page (model.resources)
  local summary = {}
  local function summarize(res, ignored)
    summary[#summary + 1] = { kind = res.kind, name = res.name, namespace = res.namespace, source = res.source,
      api_version = res.api_version, ok = ignored == nil, ignored = ignored }
  end
  -- <<< diag
  for _, res in ipairs(resources or {}) do
    if res.kind == "Secret" then
      secrets[#secrets + 1] = res.secret -- Kubernetes objects carry no ambassador_id
      summarize(res) -- diag
    elseif ours(rep, res, my_id) then
      if HANDLED_KINDS[res.kind] then
        local list = by_kind[res.kind]
        list[#list + 1] = res
        summarize(res, res.kind == "Module" and res.name ~= "ambassador" and "not named ambassador" or nil) -- diag
      elseif NOT_IMPLEMENTED[res.kind] then
        rep:warning(res, nil, "not implemented yet, ignored")
        summarize(res, "not implemented yet") -- diag
      else
        rep:warning(res, nil, "unknown kind, ignored")
        summarize(res, "unknown kind") -- diag
      end
    else
      summarize(res, "ambassador_id") -- diag: meant for another instance
    end
  end

  local seen = {}
  local module, settings = kinds.module(rep, by_kind.Module)

  local listeners, ports, listener_res = {}, {}, {}
  for _, res in ipairs(by_kind.Listener) do
    if unique(rep, seen, res) then
      local l = kinds.listener(rep, res)
      if l then
        listener_res[l] = res
        local key = l.address .. "\0" .. l.port
        if ports[key] then
          rep:error(res, "port", string_format("%d is already used by Listener %s (%s)", l.port,
            ports[key].name, ports[key].source), res.spec, "port")
        else
          ports[key] = l
          listeners[#listeners + 1] = l
        end
      end
    end
  end

  -- certificates: Secrets (YAML, then secrets_dir), TLSContexts, then Hosts
  local store = tls.store(rep, secrets, opts.secrets_dir)
  local contexts, broken = {}, {}
  for _, res in ipairs(by_kind.TLSContext) do
    if unique(rep, seen, res) then
      local ctx = tls.context(rep, res, store)
      if ctx then
        contexts[#contexts + 1] = ctx
      else
        broken[res.name] = true -- its errors are reported; users of it stay quiet
      end
    end
  end
  local builder = tls.builder(rep, store, contexts, broken)

  local hosts, host_res, cleartext_ports = {}, {}, {}
  for _, res in ipairs(by_kind.Host) do
    if unique(rep, seen, res) then
      local h, extra = kinds.host(rep, res)
      if h then
        hosts[#hosts + 1] = h
        host_res[#hosts] = res
        builder:host(res, h, extra)
        local p = extra.additional_port
        if p and #by_kind.Listener > 0 then
          rep:warning(res, "requestPolicy.insecure.additionalPort", "ignored: the Listener resources decide "
            .. "which ports nuncio listens on", extra.additional_port_tbl, "additionalPort")
        elseif p ~= -1 then
          cleartext_ports[#cleartext_ports + 1] = p or kinds.DEFAULT_HTTP_PORT
        end
      end
    end
  end
  if #by_kind.Host == 0 then
    hosts[1] = kinds.default_host(amb_ns)
    cleartext_ports[1] = kinds.DEFAULT_HTTP_PORT
    if builder:fallback_host(hosts[1], amb_ns) then
      hosts[1].insecure_action = "Redirect" -- §2.5: TLS with the fallback certificate
    end
  end
  local tls_contexts = builder:finish(#by_kind.Host == 0)

  if #by_kind.Listener == 0 then
    if #cleartext_ports == 0 and #tls_contexts == 0 then
      -- every Host said additionalPort: -1, but without TLS nothing else would listen
      cleartext_ports[1] = kinds.DEFAULT_HTTP_PORT
      rep:raw_warning("every Host sets requestPolicy.insecure.additionalPort: -1 and nothing terminates TLS: "
        .. "nuncio listens on 8080 in cleartext anyway")
    end
    local defaults, warning = kinds.default_listeners(cleartext_ports, #tls_contexts > 0)
    for i, l in ipairs(defaults) do
      listeners[i] = l
    end
    rep:raw_warning(warning)
  elseif #tls_contexts == 0 then
    for _, l in ipairs(listeners) do
      if l.tls then
        -- Emissary serves cleartext there too; mbedTLS would have no certificate
        l.tls = false
        local res = listener_res[l]
        local field = check.value(res.spec.protocolStack) ~= nil and "protocolStack" or "protocol"
        rep:warning(res, field, "nothing terminates TLS (no Host tlsSecret, no TLSContext with hosts): "
          .. "this HTTPS Listener serves cleartext only", res.spec, field)
      end
    end
  end
  warn_redirects(rep, hosts, host_res, listeners, #tls_contexts > 0)

  local ctx = {
    default_timeout_ms = settings.default_timeout_ms,
    ambassador_namespace = amb_ns,
    use_ambassador_namespace = settings.use_ambassador_namespace,
    defaults = settings.defaults,
    add_linkerd_headers = settings.add_linkerd_headers,
    cluster_idle_timeout_ms = settings.cluster_idle_timeout_ms,
    retry_policy = settings.retry_policy,
    load_balancer = settings.load_balancer,
    cors = settings.cors,
  }
  local recs = {}
  for _, res in ipairs(by_kind.Mapping) do
    if unique(rep, seen, res) then
      local rec = mapping.build(rep, res, ctx)
      if rec then
        rec.service.tls = false
        if rec.tls_ref then
          rec.service.tls = builder:origination(res, rec.tls_ref) or false
        end
        rec.index = #recs + 1
        recs[#recs + 1] = rec
      end
    end
  end

  -- >>> diag: Emissary's internal Mappings (behaviour notes §8: check_alive, check_ready,
  -- /ambassador/v0/) routed to the admin listener (opts.admin = {address, port}; nil or
  -- false: no admin, no internal Mappings). Built, clustered, attached and sorted exactly
  -- like user Mappings, as Emissary's IRAmbassador.add_mappings does.
  local module_res
  for _, res in ipairs(by_kind.Module) do
    if res.name == "ambassador" then
      module_res = res
      break
    end
  end
  for _, res in ipairs(diag_routes.resources(settings.probes, opts.admin, module_res, amb_ns)) do
    local rec = mapping.build(rep, res, ctx)
    if rec then
      rec.service.tls = false
      if rec.tls_ref then
        rec.service.tls = builder:origination(res, rec.tls_ref) or false
      end
      rec.internal = true
      rec.index = #recs + 1
      recs[#recs + 1] = rec
    end
  end
  -- <<< diag

  if #rep.errs > 0 then
    return nil, by_position(rep.errs), by_position(rep.warns)
  end

  local clusters = build_clusters(rep, recs)
  local policies = build_policies(recs)
  attach(rep, recs, hosts)
  table_sort(recs, mapping.before)

  local routes = {}
  for i, rec in ipairs(recs) do
    routes[i] = route_of(rec)
  end
  canary_groups(rep, recs, routes)
  if #rep.errs > 0 then
    return nil, by_position(rep.errs), by_position(rep.warns)
  end
  return {
    listeners = listeners,
    hosts = hosts,
    clusters = clusters,
    policies = policies,
    routes = routes,
    module = module,
    http = settings.http,
    tls_contexts = tls_contexts,
    resources = summary, -- diag
    diagnostics = { -- diag: the admin applies allow_non_local (nuncio.ambassador.diag_routes)
      enabled = (settings.probes or diag_routes.defaults()).diagnostics.enabled,
      allow_non_local = (settings.probes or diag_routes.defaults()).diagnostics.allow_non_local,
    },
  }, rep.errs, by_position(rep.warns)
end

-- load(paths, opts): both steps. Resources that could be read are checked even
-- when another file is broken, so one run reports every mistake.
function M.load(paths, opts)
  local st = read_paths(paths, opts)
  local model, merrs, mwarns = M.build_model(st.resources, opts)
  local errs, warns = st.rep.errs, st.rep.warns
  for i = 1, #merrs do
    errs[#errs + 1] = merrs[i]
  end
  for i = 1, #mwarns do
    warns[#warns + 1] = mwarns[i]
  end
  if #errs > 0 then
    return nil, by_position(errs), by_position(warns)
  end
  return model, errs, by_position(warns)
end

return M
