-- nuncio.ambassador.access_log: Module envoy_log_type / envoy_log_format /
-- envoy_log_path (Emissary's ir/irambassador.py and envoy/v3/v3listener.py) and
-- the native config's access_log key -> model.http.access_log:
--
--   { enabled = bool, type = "text" | "json", path = "...",
--     format = "... %OPERATOR% ...\n"   (text),
--     json = { { key = "k", fmt = "%OPERATOR%" }, ... } (json, in the YAML's order) }
--
-- The C core (csrc/access_log.c) compiles the format again; this module refuses
-- a bad one at load, where the file and line are known. OPERATORS below and
-- opdefs[] in access_log.c must list the same operators.

local check = require("nuncio.ambassador.check")
local yaml = require("nuncio.yaml")

local type = type
local ipairs = ipairs
local pairs = pairs
local tostring = tostring
local string_format = string.format
local table_sort = table.sort

local M = {}

M.DEFAULT_PATH = "/dev/stdout" -- Emissary's /dev/fd/1

-- What Emissary configures when the Module names no text format: Envoy's default
-- with an "ACCESS " prefix (v3listener.py), and like every text format a newline.
-- The model leaves format nil instead, which the core reads as Envoy's default
-- (no prefix); this constant is here for whoever decides to match Emissary to the byte.
M.EMISSARY_TEXT_FORMAT = 'ACCESS [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
  .. "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
  .. '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" '
  .. '"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'

-- Emissary's JSON keys when envoy_log_type is json and no format is given
-- (V3Listener.json_helper), in its order.
M.DEFAULT_JSON = {
  { key = "start_time", fmt = "%START_TIME%" },
  { key = "method", fmt = "%REQ(:METHOD)%" },
  { key = "path", fmt = "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%" },
  { key = "protocol", fmt = "%PROTOCOL%" },
  { key = "response_code", fmt = "%RESPONSE_CODE%" },
  { key = "response_flags", fmt = "%RESPONSE_FLAGS%" },
  { key = "bytes_received", fmt = "%BYTES_RECEIVED%" },
  { key = "bytes_sent", fmt = "%BYTES_SENT%" },
  { key = "duration", fmt = "%DURATION%" },
  { key = "upstream_service_time", fmt = "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%" },
  { key = "x_forwarded_for", fmt = "%REQ(X-FORWARDED-FOR)%" },
  { key = "user_agent", fmt = "%REQ(USER-AGENT)%" },
  { key = "request_id", fmt = "%REQ(X-REQUEST-ID)%" },
  { key = "authority", fmt = "%REQ(:AUTHORITY)%" },
  { key = "upstream_host", fmt = "%UPSTREAM_HOST%" },
  { key = "upstream_cluster", fmt = "%UPSTREAM_CLUSTER%" },
  { key = "upstream_local_address", fmt = "%UPSTREAM_LOCAL_ADDRESS%" },
  { key = "downstream_local_address", fmt = "%DOWNSTREAM_LOCAL_ADDRESS%" },
  { key = "downstream_remote_address", fmt = "%DOWNSTREAM_REMOTE_ADDRESS%" },
  { key = "requested_server_name", fmt = "%REQUESTED_SERVER_NAME%" },
  { key = "istio_policy_status", fmt = "%DYNAMIC_METADATA(istio.mixer:status)%" },
  { key = "upstream_transport_failure_reason", fmt = "%UPSTREAM_TRANSPORT_FAILURE_REASON%" },
}

-- arg: "no" | "optional" | "required"; len: accepts :Z. nodata: an Envoy
-- operator nuncio has nothing for (always "-"); a user's format using it warns.
local NO, OPT, REQ = "no", "optional", "required"
M.OPERATORS = {
  START_TIME = { arg = OPT },
  REQ = { arg = REQ, len = true },
  RESP = { arg = REQ, len = true },
  TRAILER = { arg = REQ, len = true },
  REQ_WITHOUT_QUERY = { arg = REQ, len = true },
  PROTOCOL = { arg = NO },
  RESPONSE_CODE = { arg = NO },
  RESPONSE_FLAGS = { arg = NO },
  RESPONSE_CODE_DETAILS = { arg = NO },
  BYTES_RECEIVED = { arg = NO },
  BYTES_SENT = { arg = NO },
  DURATION = { arg = NO },
  RESPONSE_DURATION = { arg = NO },
  UPSTREAM_HOST = { arg = NO },
  UPSTREAM_CLUSTER = { arg = NO },
  UPSTREAM_LOCAL_ADDRESS = { arg = NO },
  UPSTREAM_TRANSPORT_FAILURE_REASON = { arg = NO },
  ROUTE_NAME = { arg = NO },
  DOWNSTREAM_REMOTE_ADDRESS = { arg = NO },
  DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT = { arg = NO },
  DOWNSTREAM_LOCAL_ADDRESS = { arg = NO },
  DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT = { arg = NO },
  REQUESTED_SERVER_NAME = { arg = NO },
  GRPC_STATUS = { arg = OPT },
  GRPC_STATUS_NUMBER = { arg = NO },
  HOSTNAME = { arg = NO },
  CONNECTION_ID = { arg = NO },
  UPSTREAM_REQUEST_ATTEMPT_COUNT = { arg = NO },
  DYNAMIC_METADATA = { arg = REQ, len = true, nodata = true },
}

local GRPC_STYLES = check.set { "CAMEL_STRING", "SNAKE_STRING", "NUMBER" }

-- check_format(s) -> nil | error message, warning | nil. The same grammar and
-- wording as compile() in csrc/access_log.c: %NAME%, %NAME(ARG)%, %NAME(ARG):Z%,
-- %% for a literal percent sign.
function M.check_format(s)
  local warning
  local i, n = 1, #s
  while i <= n do
    local pct = s:find("%", i, true)
    if not pct then
      break
    end
    if s:sub(pct + 1, pct + 1) == "%" then
      i = pct + 2
    else
      local name, after = s:match("^([A-Z0-9_]+)()", pct + 1)
      if not name then
        return "'%' that starts no command operator (write %% for a literal %)"
      end
      local arg
      local j = after
      if s:sub(j, j) == "(" then
        local close = s:find(")", j + 1, true)
        if not close then
          return string_format("%%%s(: missing ')'", name)
        end
        arg = s:sub(j + 1, close - 1)
        j = close + 1
      end
      local has_len = false
      if s:sub(j, j) == ":" then
        local digits, k = s:match("^(%d*)()", j + 1)
        if digits == "" then
          return string_format("%%%s: ':' must be followed by a length", name)
        end
        has_len = true
        j = k
      end
      if s:sub(j, j) ~= "%" then
        return string_format("%%%s: missing the closing '%%'", name)
      end
      local def = M.OPERATORS[name]
      if not def then
        return string_format("unknown command operator %%%s%%", name)
      end
      if def.arg == NO and arg then
        return string_format("%%%s%%: takes no argument", name)
      end
      if def.arg == REQ and (not arg or arg == "") then
        return string_format("%%%s%%: needs an argument", name)
      end
      if has_len and not def.len then
        return string_format("%%%s%%: takes no :length", name)
      end
      if arg and (name == "REQ" or name == "RESP" or name == "TRAILER" or name == "REQ_WITHOUT_QUERY") then
        if arg:find("?", 1, true) and not arg:match("^[^?]+%?[^?]+$") then
          return string_format("%%%s(%s)%%: expected HEADER or HEADER?ALTERNATIVE", name, arg)
        end
      end
      if name == "GRPC_STATUS" and arg and not GRPC_STYLES[arg] then
        return string_format("%%GRPC_STATUS(%s)%%: expected CAMEL_STRING, SNAKE_STRING or NUMBER", arg)
      end
      if def.nodata then
        warning = string_format("%%%s%%: nuncio has no such data; always logged as -", name)
      end
      i = j + 1
    end
  end
  return nil, warning
end

local function copy_json(list)
  local out = {}
  for i, f in ipairs(list) do
    out[i] = { key = f.key, fmt = f.fmt }
  end
  return out
end

-- The log when nothing configures it (format nil: the core's default, Envoy's).
function M.default()
  return { enabled = true, type = "text", path = M.DEFAULT_PATH }
end

local function with_newline(s)
  -- Emissary appends one to every text format; one already there is kept single
  if s:sub(-1) == "\n" then
    return s
  end
  return s .. "\n"
end

-- The keys of a YAML mapping in the order they were written (line order; keys
-- sharing a line, as in a one-line flow mapping, by name).
local function keys_in_yaml_order(tbl)
  local keys = {}
  for k in pairs(tbl) do
    keys[#keys + 1] = k
  end
  table_sort(keys, function(a, b)
    local la, lb = yaml.line(tbl, a) or 0, yaml.line(tbl, b) or 0
    if la ~= lb then
      return la < lb
    end
    return tostring(a) < tostring(b)
  end)
  return keys
end

-- partial(raw, names, report) -> { type, path, format, json } with nil for what
-- was not given. raw = { type =, path =, format = } as written (YAML null
-- already nil); names = the caller's field names for them; report =
-- { fail(name, msg), fail_sub(name, tbl, key, msg), warn(name, msg), warn_sub(...) }.
local function partial(raw, names, report)
  local out = {}
  local t = raw.type
  if t ~= nil then
    local lt = type(t) == "string" and t:lower() or nil
    if lt == "json" or lt == "typed_json" then
      out.type = "json" -- Envoy renders json_format typed since its v3 API: the two are one
    elseif lt == "text" then
      out.type = "text"
    else
      report.fail(names.type, "must be text or json, not " .. check.describe(t))
    end
  end
  local p = raw.path
  if p ~= nil then
    if type(p) ~= "string" or p == "" then
      report.fail(names.path, "must be a file path, not " .. check.describe(p))
    else
      out.path = p
    end
  end
  local f = raw.format
  if f == nil then
    return out
  end
  -- the Module's type defaults to text (Emissary); the native key may let a mapping say json
  local as_json = out.type == "json" or (out.type == nil and names.auto_json and type(f) == "table")
  if not as_json then
    if type(f) ~= "string" then
      report.fail(names.format, "must be a string of command operators (envoy_log_type text), not "
        .. check.describe(f))
      return out
    end
    local err, warning = M.check_format(f)
    if err then
      report.fail(names.format, err)
    else
      if warning then
        report.warn(names.format, warning)
      end
      out.format = with_newline(f)
    end
    return out
  end
  if type(f) ~= "table" or not check.is_map(f) then
    report.fail(names.format, 'must be a mapping of key: "%OPERATOR%" (envoy_log_type json), not ' .. check.describe(f))
    return out
  end
  out.type = "json"
  local json = {}
  for _, k in ipairs(keys_in_yaml_order(f)) do
    local v = check.value(f[k])
    if type(v) ~= "string" then
      report.fail_sub(names.format, f, k, type(v) == "table" and "nested JSON formats are not supported"
        or "must be a string of command operators, not " .. check.describe(v))
    else
      local err, warning = M.check_format(v)
      if err then
        report.fail_sub(names.format, f, k, err)
      else
        if warning then
          report.warn_sub(names.format, f, k, warning)
        end
        json[#json + 1] = { key = k, fmt = v }
      end
    end
  end
  out.json = json
  return out
end

-- The whole model from a partial one, Emissary's defaults filling the gaps.
local function finish(p, base)
  local out = base or M.default()
  out.enabled = true
  if p.path then
    out.path = p.path
  end
  if p.type ~= nil or p.format ~= nil or p.json ~= nil then
    out.type = p.type or "text"
    if out.type == "json" then
      out.format = nil
      out.json = p.json or copy_json(M.DEFAULT_JSON)
    else
      out.json = nil
      out.format = p.format -- nil: the default
    end
  end
  return out
end

-- read(c): the Module's access log; c is the Module config's cursor. nil when
-- the Module says nothing about it: the core's defaults then (model.http stays
-- as it was before access logs were configurable).
function M.read(c)
  if not (c:has("envoy_log_type") or c:has("envoy_log_path") or c:has("envoy_log_format")) then
    return nil
  end
  local names = { type = "envoy_log_type", path = "envoy_log_path", format = "envoy_log_format" }
  local report = {
    fail = function(name, msg)
      c:fail(name, msg)
    end,
    warn = function(name, msg)
      c:warn(name, msg)
    end,
    fail_sub = function(name, tbl, key, msg)
      c.failed = true
      c.rep:error(c.res, c:field(name) .. "." .. tostring(key), msg, tbl, key)
    end,
    warn_sub = function(name, tbl, key, msg)
      c.rep:warning(c.res, c:field(name) .. "." .. tostring(key), msg, tbl, key)
    end,
  }
  local p = partial({ type = c:raw("envoy_log_type"), path = c:raw("envoy_log_path"),
    format = c:raw("envoy_log_format") }, names, report)
  return finish(p)
end

-- read_native(v, r, sub) -> override: the native config's access_log value
-- (false, true, or a mapping {path, type, format, json}) as an override for
-- apply_native. r is nuncio.config's reader over the top level, sub(tbl, path)
-- makes one over a nested mapping. nil when v is invalid (errors reported).
function M.read_native(v, r, sub)
  if v == true then
    return { enabled = true }
  end
  if v == false then
    return { enabled = false }
  end
  if type(v) ~= "table" or not check.is_map(v) then
    r.fail("access_log", "must be false or a mapping {path, type, format}, not " .. check.describe(v))
    return nil
  end
  local a = sub(v, "access_log.")
  local failed = false
  local report = {
    fail = function(name, msg)
      failed = true
      a.fail(name, msg)
    end,
    warn = function(name, msg)
      a.warn(name, msg)
    end,
    fail_sub = function(name, tbl, key, msg)
      failed = true
      sub(tbl, "access_log." .. name .. ".").fail(key, msg)
    end,
    warn_sub = function(name, tbl, key, msg)
      sub(tbl, "access_log." .. name .. ".").warn(key, msg)
    end,
  }
  local raw = { type = a.get("type"), path = a.get("path"), format = a.get("format") }
  local names = { type = "type", path = "path", format = "format", auto_json = true }
  if a.get("json") ~= nil then -- json: {...} is format: {...} with type json
    if raw.format ~= nil then
      report.fail("json", "give the JSON keys in format or in json, not both")
    else
      raw.format, names.format = a.get("json"), "json"
      if raw.type == nil then
        raw.type = "json"
      end
    end
  end
  a.unknown(check.set { "enabled", "path", "type", "format", "json" })
  local enabled = a.get("enabled")
  if enabled ~= nil and type(enabled) ~= "boolean" then
    report.fail("enabled", "must be true or false, not " .. check.describe(enabled))
  end
  local p = partial(raw, names, report)
  if failed then
    return nil
  end
  p.enabled = enabled ~= false
  return p
end

-- apply_native(model_access_log, override) -> the access log the core gets: the
-- native config's fields replace the Module's (its path alone keeps the
-- Module's format; its type or format replaces the whole format).
function M.apply_native(base, ov)
  if not ov then
    return base
  end
  base = base or M.default()
  if ov.enabled == false then
    base.enabled = false
    return base
  end
  return finish(ov, base)
end

return M
