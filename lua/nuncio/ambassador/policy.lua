-- nuncio.ambassador.policy: the per-route upstream policies of a Mapping (or
-- the Module's defaults for them): retry_policy and load_balancer
-- (behaviour notes §1.12). Each reader takes a check cursor and a key and
-- returns the normalized value, or nil when absent or broken (errors are on
-- the cursor).

local check = require("nuncio.ambassador.check")

local type = type
local ipairs = ipairs
local tonumber = tonumber
local math_floor = math.floor
local string_format = string.format

local M = {}

-- Emissary's six, plus Envoy's `reset` and the gRPC conditions Emissary
-- refuses and Envoy's router knows (nuncio retries them: docs/ambassador.md).
M.RETRY_ON = {
  "5xx", "gateway-error", "connect-failure", "retriable-4xx", "refused-stream", "retriable-status-codes",
  "reset", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
}
local RETRY_ON = check.set(M.RETRY_ON)
local RETRY_KEYS = check.set { "retry_on", "num_retries", "per_try_timeout", "retriable_status_codes" }

M.LB_POLICIES = { "round_robin", "least_request", "ring_hash", "maglev" }
local LB_POLICIES = check.set(M.LB_POLICIES)

local UNITS = { ms = 1, s = 1000, m = 60000, h = 3600000 }

-- "0.5s", "250ms", "2s", "1m" (protobuf Duration and Go duration forms) -> ms
function M.parse_duration_ms(s)
  if type(s) ~= "string" then
    return nil
  end
  local num, unit = s:match("^%s*(%d+%.?%d*)%s*(%a+)%s*$")
  if not num or not UNITS[unit] then
    return nil
  end
  local ms = tonumber(num) * UNITS[unit]
  return math_floor(ms + 0.5)
end

-- retry_policy: { retry_on = {..}, num_retries, per_try_timeout_ms, retriable_status_codes = {..} }
function M.read_retry_policy(c, key)
  if not c:has(key) then
    return nil
  end
  local rc, present = c:sub(key)
  if not present then
    return nil
  end
  local ok = true
  local on = {}
  local raw = rc:string("retry_on")
  if raw == nil then
    if not rc:has("retry_on") then
      rc:missing("retry_on", "required: when to retry (" .. check.join(M.RETRY_ON, ", ") .. ")")
    end
    ok = false
  else
    -- Envoy takes a comma-separated list; Emissary one value
    for word in raw:gmatch("[^,]+") do
      word = word:match("^%s*(.-)%s*$")
      if not RETRY_ON[word] then
        rc:fail("retry_on", string_format("%q is not a retry condition (one of %s)", word,
          check.join(M.RETRY_ON, ", ")))
        ok = false
      else
        on[#on + 1] = word
      end
    end
    if #on == 0 and ok then
      rc:fail("retry_on", "names no retry condition")
      ok = false
    end
  end
  local num = rc:int("num_retries", 1, 0, 10)
  local per_try_ms = 0
  local per_try = rc:raw("per_try_timeout")
  if per_try ~= nil then
    per_try_ms = M.parse_duration_ms(per_try)
    if not per_try_ms or per_try_ms <= 0 then
      rc:fail("per_try_timeout", "must be a duration such as \"0.5s\" or \"250ms\", not "
        .. check.describe(per_try))
      ok, per_try_ms = false, 0
    end
  end
  local codes = {}
  local raw_codes = rc:raw("retriable_status_codes")
  if raw_codes ~= nil then
    if type(raw_codes) ~= "table" or not check.is_list(raw_codes) then
      rc:fail("retriable_status_codes", "must be a list of HTTP status codes, not " .. check.describe(raw_codes))
      ok = false
    else
      for i = 1, #raw_codes do
        local v = raw_codes[i]
        if not check.is_integer(v) or v < 100 or v > 599 then
          rc:fail("retriable_status_codes", "must hold HTTP status codes (100..599), not " .. check.describe(v))
          ok = false
        else
          codes[#codes + 1] = v
        end
      end
    end
  end
  rc:check_keys(RETRY_KEYS)
  if not ok or rc.failed then
    c.failed = true
    return nil
  end
  return { retry_on = on, num_retries = num, per_try_timeout_ms = per_try_ms, retriable_status_codes = codes }
end

-- load_balancer: { policy, hash = nil | { header = name } | { cookie = name } | { source_ip = true } }
function M.read_load_balancer(c, key)
  if not c:has(key) then
    return nil
  end
  local lc, present = c:sub(key)
  if not present then
    return nil
  end
  local policy = lc:string("policy", true)
  if policy and not LB_POLICIES[policy] then
    lc:fail("policy", string_format("%q is not a load balancer policy (one of %s)", policy,
      check.join(M.LB_POLICIES, ", ")))
    policy = nil
  end
  local out = { policy = policy }
  if policy == "round_robin" or policy == "least_request" then
    -- Emissary: exactly the one key
    lc:check_keys(check.set { "policy" })
    for _, k in ipairs(check.sorted_keys(lc.tbl)) do
      if k ~= "policy" then
        lc:fail(k, "is only read with policy ring_hash or maglev")
      end
    end
  elseif policy then
    local header = lc:string("header")
    local cookie
    if lc:has("cookie") then
      local cc = lc:sub("cookie")
      cookie = cc:string("name", true)
      cc:check_keys(check.set { "name", "path", "ttl" })
    end
    local source_ip = lc:bool("source_ip", false)
    local n = (header and 1 or 0) + (cookie and 1 or 0) + (source_ip and 1 or 0)
    if n ~= 1 then
      lc:fail("policy", policy .. " needs exactly one of header, cookie or source_ip")
    elseif header then
      out.hash = { header = header:lower() }
    elseif cookie then
      out.hash = { cookie = cookie }
    else
      out.hash = { source_ip = true }
    end
    lc:check_keys(check.set { "policy", "header", "cookie", "source_ip" })
  end
  if lc.failed or not policy then
    c.failed = true
    return nil
  end
  return out
end

-- cors (behaviour notes §1.12, Emissary's ir/ircors.py): { origins = { exact.. }, methods, headers,
-- exposed_headers (lists joined with ", "), max_age (string), credentials (bool) }
local CORS_KEYS = check.set { "origins", "methods", "headers", "credentials", "exposed_headers", "max_age" }

-- a list of strings, or one string split on commas (v2 and Emissary accept both)
local function cors_list(cc, key)
  local v = cc:raw(key)
  if v == nil then
    return nil
  end
  if type(v) == "string" then
    local out = {}
    for word in v:gmatch("[^,]+") do
      word = word:match("^%s*(.-)%s*$")
      if word ~= "" then
        out[#out + 1] = word
      end
    end
    return out
  end
  return cc:string_list(key)
end

function M.read_cors(c, key)
  if not c:has(key) then
    return nil
  end
  local cc, present = c:sub(key)
  if not present then
    return nil
  end
  local cors = {}
  cors.origins = cors_list(cc, "origins") or {}
  for _, k in ipairs({ "methods", "headers", "exposed_headers" }) do
    local l = cors_list(cc, k)
    if l and #l > 0 then
      cors[k] = table.concat(l, ", ")
    end
  end
  local age = cc:raw("max_age")
  if age ~= nil then
    if type(age) == "string" and age:match("^%s*%d+%s*$") then
      cors.max_age = age:match("%d+")
    elseif check.is_integer(age) and age >= 0 then
      cors.max_age = tostring(age)
    else
      cc:fail("max_age", "must be a number of seconds (\"86400\")")
    end
  end
  cors.credentials = cc:bool("credentials", false)
  cc:check_keys(CORS_KEYS)
  if cc.failed then
    return nil
  end
  return cors
end

return M
