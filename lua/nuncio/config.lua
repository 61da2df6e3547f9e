-- nuncio.config: the native configuration (conf/nuncio.yaml) plus the
-- Ambassador resources it names -> the normalized model (docs/internals.md §2).
--
--   config.load{ config = path_or_nil, ambassador = { path, ... } }
--     -> model | nil, errs, warns
--
-- config = nil means built-in defaults. Ambassador paths from the caller (the
-- command line: relative to the working directory) come after the ones the
-- native config lists (relative to the config file's folder). errs/warns are
-- arrays of "file:line: ..." strings, always present. Optional extra keys
-- ambassador_id and namespace are handed to nuncio.ambassador; secrets_dir
-- (relative to the working directory) replaces the native config's.

local yaml = require("nuncio.yaml")
local fs = require("nuncio.ambassador.fs")
local check = require("nuncio.ambassador.check")
local ambassador = require("nuncio.ambassador")
local access_log = require("nuncio.ambassador.access_log") -- access_log: native override

local type = type
local next = next
local pairs = pairs
local tonumber = tonumber
local ipairs = ipairs
local tostring = tostring
local string_format = string.format
local HUGE = math.huge

local NULL = yaml.null
local yaml_line = yaml.line

local M = {}

M.DEFAULTS = {
  workers = 0, -- "auto": one per CPU the process may use
  drain_timeout_ms = 30000, -- SIGTERM: in-flight calls get this long
  log_level = "info",
  admin_address = "127.0.0.1",
  admin_port = 8877,
  -- Envoy has no limit unless told; a client that stalls mid-headers should not hold a connection
  request_headers_timeout_ms = 10000,
  -- Downstream connections the whole process holds (every worker together); at the limit new
  -- connections wait in the kernel's accept queue until one closes. Envoy has no default limit.
  max_connections = 100000,
  -- From accept to a finished TLS handshake (Envoy's transport_socket_connect_timeout is 10 s too)
  tls_handshake_timeout_ms = 10000,
  -- A busy worker (16+ calls in flight) polls at most once per this many microseconds, so each
  -- wake-up handles more events (docs/internals.md, "Event batching"); 0: poll at every turn.
  io_batch_us = 50,
}

local LOG_LEVELS = check.set { "debug", "info", "warn", "error" }
local KEYS = check.set { "workers", "log_level", "admin", "lua_path", "chain", "ambassador", "secrets_dir",
  "overrides", "endpoints", "outlier_detection", "request_headers_timeout_ms", "drain_timeout_ms",
  "max_connections", "tls_handshake_timeout_ms", "io_batch_us" }

KEYS.access_log = true -- access_log: read below, applied over the Module's in M.load

local value = check.value

-- model[key] = the native config's integer at key if lo <= it <= hi; else a "file:line: key:
-- <must>, not <what it is>" error. An absent key keeps the default.
local function int_key(r, model, key, lo, hi, must)
  local v = r.get(key)
  if v == nil then
    return
  end
  if not check.is_integer(v) or v < lo or v > hi then
    r.fail(key, must .. ", not " .. check.describe(v))
  else
    model[key] = v
  end
end

-- a reader over one mapping of the native config; messages "file:line: key: msg"
local function reader(file, tbl, path, errs, warns)
  local r = { file = file, tbl = tbl, path = path or "", errs = errs, warns = warns }

  local function line(key)
    return (key ~= nil and yaml_line(tbl, key)) or yaml_line(tbl) or 1
  end

  function r.fail(key, msg)
    errs[#errs + 1] = string_format("%s:%d: %s%s: %s", file, line(key), r.path, key, msg)
  end

  function r.warn(key, msg)
    warns[#warns + 1] = string_format("%s:%d: %s%s: %s", file, line(key), r.path, key, msg)
  end

  function r.source(key)
    return string_format("%s:%d", file, line(key))
  end

  function r.get(key)
    return value(tbl[key])
  end

  -- list of strings; one string is taken as a list of one
  function r.strings(key)
    local v = r.get(key)
    if v == nil then
      return {}
    end
    if type(v) == "string" then
      return { v }
    end
    if type(v) ~= "table" or not check.is_list(v) and next(v) ~= nil then
      r.fail(key, "must be a list of strings, not " .. check.describe(v))
      return {}
    end
    local out = {}
    for i = 1, #v do
      if type(v[i]) ~= "string" then
        errs[#errs + 1] = string_format("%s:%d: %s%s[%d]: must be a string, not %s", file,
          yaml_line(v, i) or line(key), r.path, key, i, check.describe(v[i]))
      else
        out[#out + 1] = v[i]
      end
    end
    return out
  end

  function r.unknown(known)
    local keys = check.sorted_keys(tbl)
    for _, k in ipairs(keys) do
      if not known[k] then
        r.warn(k, "unknown key, ignored")
      end
    end
  end

  return r
end

local function read_admin(r, model)
  local v = r.get("admin")
  if v == nil or v == true then
    return
  end
  if v == false then
    model.admin = false
    return
  end
  if type(v) ~= "table" or not check.is_map(v) then
    r.fail("admin", "must be a mapping {address, port} or false, not " .. check.describe(v))
    return
  end
  local a = reader(r.file, v, "admin.", r.errs, r.warns)
  local address, port = a.get("address"), a.get("port")
  if address ~= nil then
    if type(address) ~= "string" or address == "" then
      a.fail("address", "must be a non-empty string, not " .. check.describe(address))
    else
      model.admin.address = address
    end
  end
  if port ~= nil then
    if not check.is_integer(port) or port < 1 or port > 65535 then
      a.fail("port", "must be an integer between 1 and 65535, not " .. check.describe(port))
    else
      model.admin.port = port
    end
  end
  a.unknown(check.set { "address", "port" })
end

local function read_chain(r, model)
  local v = r.get("chain")
  if v == nil then
    return
  end
  if type(v) ~= "table" or not check.is_list(v) and next(v) ~= nil then
    r.fail("chain", "must be a list of {name, config}, not " .. check.describe(v))
    return
  end
  for i = 1, #v do
    local item = v[i]
    local field = "chain[" .. i .. "]"
    if type(item) == "string" then
      -- "- my.filter" is short for "- name: my.filter"
      model.chain[#model.chain + 1] = { name = item, config = {},
        source = string_format("%s:%d", r.file, yaml_line(v, i) or 1) }
    elseif type(item) ~= "table" or not check.is_map(item) then
      r.errs[#r.errs + 1] = string_format("%s:%d: %s: must be a mapping {name, config}, not %s", r.file,
        yaml_line(v, i) or 1, field, check.describe(item))
    else
      local f = reader(r.file, item, field .. ".", r.errs, r.warns)
      local name, conf = f.get("name"), f.get("config")
      local ok = true
      if type(name) ~= "string" or name == "" then
        f.fail("name", name == nil and "required" or "must be a module name, not " .. check.describe(name))
        ok = false
      end
      if conf == nil then
        conf = {}
      elseif type(conf) ~= "table" or not check.is_map(conf) then
        f.fail("config", "must be a mapping, not " .. check.describe(conf))
        ok = false
      end
      f.unknown(check.set { "name", "config" })
      if ok then
        model.chain[#model.chain + 1] = { name = name, config = conf,
          source = string_format("%s:%d", r.file, yaml_line(item) or 1) }
      end
    end
  end
end

-- "host:port" / "[v6]:port" -> host, port
local function split_endpoint(s)
  if type(s) ~= "string" then
    return nil
  end
  local host, port = s:match("^%[([%x:%.]+)%]:(%d+)$")
  if not host then
    host, port = s:match("^([^:]+):(%d+)$")
  end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then
    return nil
  end
  return host, port
end

-- a list of "host:port" (one string is a list of one) -> { {host, port}, ... } | nil, err
local function endpoint_list(v)
  if type(v) == "string" then
    v = { v }
  end
  if type(v) ~= "table" or not check.is_list(v) or #v == 0 then
    return nil, "must be a non-empty list of host:port, not " .. check.describe(v)
  end
  local out = {}
  for i = 1, #v do
    local host, port = split_endpoint(value(v[i]))
    if not host then
      return nil, string_format("[%d]: not host:port: %s", i, check.describe(v[i]))
    end
    out[i] = { host = host, port = port }
  end
  return out
end

-- endpoints: { <a Mapping's service "host:port" or "host", or a cluster name>: [host:port, ...] }
-- the addresses behind a service, as Emissary's endpoint resolver would give them
local function read_endpoints(r, model)
  local v = r.get("endpoints")
  if v == nil then
    return
  end
  if type(v) ~= "table" or not check.is_map(v) and next(v) ~= nil then
    r.fail("endpoints", "must be a mapping of service -> list of host:port, not " .. check.describe(v))
    return
  end
  local e = reader(r.file, v, "endpoints.", r.errs, r.warns)
  for _, name in ipairs(check.sorted_keys(v)) do
    local list, err = endpoint_list(value(v[name]))
    if not list then
      e.fail(name, err)
    else
      model.endpoints[#model.endpoints + 1] = { service = name, list = list, source = e.source(name) }
    end
  end
end

-- outlier_detection: passive health of the endpoints of every cluster
local function read_outlier(r, model)
  local v = r.get("outlier_detection")
  if v == nil then
    return
  end
  if type(v) ~= "table" or not check.is_map(v) then
    r.fail("outlier_detection", "must be a mapping, not " .. check.describe(v))
    return
  end
  local o = reader(r.file, v, "outlier_detection.", r.errs, r.warns)
  local limits = { consecutive_failures = { 0, 1000 }, base_ejection_time_ms = { 1, 3600000 },
    max_ejection_percent = { 0, 100 } }
  for key, range in pairs(limits) do
    local x = o.get(key)
    if x ~= nil then
      if not check.is_integer(x) or x < range[1] or x > range[2] then
        o.fail(key, string_format("must be an integer between %d and %d, not %s", range[1], range[2],
          check.describe(x)))
      else
        model.outlier_detection[key] = x
      end
    end
  end
  o.unknown(limits)
end

-- secrets_dir: a folder of certificates for secret names no Secret defines
local function read_secrets_dir(r, dir)
  local v = r.get("secrets_dir")
  if v == nil then
    return nil
  end
  if type(v) ~= "string" or v == "" then
    r.fail("secrets_dir", "must be a folder path, not " .. check.describe(v))
    return nil
  end
  local path = fs.join(dir, v)
  if not fs.is_dir(path) then
    r.warn("secrets_dir", path .. " is not a folder: no secret can come from it")
  end
  return path
end

-- reads the native config file into model; returns the Ambassador paths it
-- lists and the secrets folder
local function read_native(path, model, errs, warns)
  local text, err = fs.read(path)
  if not text then
    errs[#errs + 1] = tostring(err)
    return {}
  end
  local docs, yerr = yaml.load(text, path)
  if not docs then
    errs[#errs + 1] = yerr
    return {}
  end
  if #docs == 0 then
    return {}
  end
  if #docs > 1 then
    errs[#errs + 1] = string_format("%s:%d: one YAML document expected, found %d", path,
      type(docs[2]) == "table" and yaml_line(docs[2]) or 1, #docs)
    return {}
  end
  local top = docs[1]
  if type(top) ~= "table" or not check.is_map(top) then
    errs[#errs + 1] = string_format("%s:1: the configuration must be a mapping of keys, not %s", path,
      check.describe(top))
    return {}
  end

  local r = reader(path, top, "", errs, warns)
  local dir = fs.dirname(path)

  local workers = r.get("workers")
  if workers ~= nil then
    if workers == "auto" then
      model.workers = 0
    elseif not check.is_integer(workers) or workers < 1 or workers > 64 then
      r.fail("workers", "must be auto or an integer from 1 to 64, not " .. check.describe(workers))
    else
      model.workers = workers
    end
  end

  int_key(r, model, "drain_timeout_ms", 0, HUGE, "must be an integer >= 0 (milliseconds)")

  local level = r.get("log_level")
  if level ~= nil then
    if type(level) ~= "string" or not LOG_LEVELS[level] then
      r.fail("log_level", "must be one of debug, info, warn, error, not " .. check.describe(level))
    else
      model.log_level = level
    end
  end

  int_key(r, model, "request_headers_timeout_ms", 0, check.MAX_MS,
    "must be an integer between 0 and " .. check.MAX_MS .. " (0: no limit)")
  int_key(r, model, "max_connections", 0, 2147483647, "must be an integer between 0 and 2147483647 (0: no limit)")
  int_key(r, model, "tls_handshake_timeout_ms", 1, check.MAX_MS, "must be an integer between 1 and " .. check.MAX_MS)
  int_key(r, model, "io_batch_us", 0, 1000, "must be an integer from 0 to 1000 (microseconds; 0: off)")

  read_admin(r, model)

  for _, p in ipairs(r.strings("lua_path")) do
    model.lua_path[#model.lua_path + 1] = fs.join(dir, p)
  end

  read_chain(r, model)

  local amb = {}
  for _, p in ipairs(r.strings("ambassador")) do
    amb[#amb + 1] = fs.join(dir, p)
  end

  local secrets_dir = read_secrets_dir(r, dir)
  read_endpoints(r, model)
  read_outlier(r, model)

  -- overrides: { clusters: {name: "host:port"}, listeners: {name: port} } re-points
  -- what the Ambassador resources say (nuncio.testing's live mode uses it to run a
  -- spec's YAML on free ports against a recording upstream).
  local ov = r.get("overrides")
  if ov ~= nil then
    if type(ov) ~= "table" then
      r.fail("overrides", "must be a mapping with clusters and/or listeners")
    else
      model.overrides = { clusters = ov.clusters or {}, listeners = ov.listeners or {} }
    end
  end

  -- access_log: false, or {path, type, format, json}: overrides the Module's
  -- envoy_log_* (nuncio.ambassador.access_log); applied in M.load
  local alog = r.get("access_log")
  if alog ~= nil then
    model.access_log_override = access_log.read_native(alog, r, function(tbl, path)
      return reader(r.file, tbl, path, r.errs, r.warns)
    end)
  end
  -- end access_log

  r.unknown(KEYS)
  return amb, secrets_dir
end

function M.defaults()
  return {
    workers = M.DEFAULTS.workers,
    drain_timeout_ms = M.DEFAULTS.drain_timeout_ms,
    log_level = M.DEFAULTS.log_level,
    request_headers_timeout_ms = M.DEFAULTS.request_headers_timeout_ms,
    max_connections = M.DEFAULTS.max_connections,
    tls_handshake_timeout_ms = M.DEFAULTS.tls_handshake_timeout_ms,
    io_batch_us = M.DEFAULTS.io_batch_us,
    admin = { address = M.DEFAULTS.admin_address, port = M.DEFAULTS.admin_port },
    lua_path = {},
    chain = {},
    listeners = {},
    hosts = {},
    clusters = {},
    routes = {},
    module = {},
    http = ambassador.default_http(),
    tls_contexts = {},
    policies = {},
    endpoints = {}, -- native config: { {service, list = { {host, port} }, source} }
    -- Envoy's outlier detection defaults (consecutive_5xx, base_ejection_time, max_ejection_percent)
    outlier_detection = { consecutive_failures = 5, base_ejection_time_ms = 30000, max_ejection_percent = 10 },
  }
end

-- Gives each cluster the endpoints the native config lists for its service.
local function apply_endpoints(model, errs, warns)
  for _, e in ipairs(model.endpoints) do
    local used = false
    for _, c in ipairs(model.clusters) do
      if e.service == c.name or e.service == c.host or e.service == c.host .. ":" .. c.port then
        c.endpoints = e.list
        used = true
      end
    end
    if not used then
      warns[#warns + 1] = string_format("%s: endpoints: %s: no Mapping uses this service", e.source, e.service)
    end
  end
  model.endpoints = nil
end

function M.load(args)
  args = args or {}
  local errs, warns = {}, {}
  local model = M.defaults()

  local paths, secrets_dir = {}, nil
  if args.config ~= nil then
    paths, secrets_dir = read_native(args.config, model, errs, warns)
  end
  if args.secrets_dir ~= nil then
    secrets_dir = args.secrets_dir
  end
  local extra = args.ambassador
  if type(extra) == "string" then
    extra = { extra }
  end
  for _, p in ipairs(extra or {}) do
    paths[#paths + 1] = p
  end

  local opts = { ambassador_id = args.ambassador_id, namespace = args.namespace, secrets_dir = secrets_dir,
    admin = model.admin } -- diag: the internal Mappings route to the admin listener (false: none)
  local part, aerrs, awarns
  if #paths > 0 then
    part, aerrs, awarns = ambassador.load(paths, opts)
  else
    part, aerrs, awarns = ambassador.build_model({}, opts)
  end
  for _, e in ipairs(aerrs) do
    errs[#errs + 1] = e
  end
  for _, w in ipairs(awarns) do
    warns[#warns + 1] = w
  end

  if #errs > 0 or not part then
    return nil, errs, warns
  end
  model.listeners = part.listeners
  model.hosts = part.hosts
  model.clusters = part.clusters
  model.routes = part.routes
  model.module = part.module
  model.http = part.http
  -- access_log: the native config's key over the Module's envoy_log_*
  model.http.access_log = access_log.apply_native(model.http.access_log, model.access_log_override)
  model.access_log_override = nil
  model.tls_contexts = part.tls_contexts
  model.policies = part.policies
  model.resources = part.resources -- diag: for the diagnostics page
  model.diagnostics = part.diagnostics -- diag: Module diagnostics {enabled, allow_non_local}
  -- What a reload watches (the control thread's inotify): every path resources came from.
  model.watch = { config = args.config, ambassador = paths, secrets_dir = secrets_dir }
  apply_endpoints(model, errs, warns)
  local ov = model.overrides
  if ov then
    model.overrides = nil
    local by_name = {}
    for _, c in ipairs(model.clusters) do by_name[c.name] = c end
    for name, target in pairs(ov.clusters) do
      local c = by_name[name]
      local list, err = endpoint_list(value(target))
      if not c or not list then
        errs[#errs + 1] = string.format("%s: overrides: clusters: %s", args.config,
          not c and ("no cluster named " .. tostring(name)) or (tostring(name) .. ": " .. err))
      else
        -- one target re-points the cluster; several become its endpoints
        c.host, c.port, c.tls = list[1].host, list[1].port, false
        c.endpoints = #list > 1 and list or nil
      end
    end
    for _, l in ipairs(model.listeners) do
      local port = ov.listeners[l.name]
      if port then
        l.port, l.address, l.tls = tonumber(port), "127.0.0.1", false
      end
    end
    if #errs > 0 then return nil, errs, warns end
  end
  return model, errs, warns
end

return M
