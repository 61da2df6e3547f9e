-- Envoy's %…% header value variables, as text: which ones nuncio fills in, and a tokenizer.
-- nuncio.header_rewrite builds values from the tokens; the loader (nuncio.ambassador) warns
-- about unknown variables with their file line. Kept here, apart from nuncio.header_rewrite,
-- so that a user's own header_rewrite (lua_path) does not change how the configuration
-- loads.
--
--   format.tokenize(value, side) -> tokens, unknown
--     tokens: array of literal strings (adjacent ones merged), { var = "NAME" } and
--       { header = "REQ"|"RESP", main = "name", alt = "name"|nil, maxlen = n|nil }
--     unknown: array of the "%…%" kept as written (nil when none)
--   side: "request" (default) or "response" (%RESP(…)% exists only there)

local find = string.find
local sub = string.sub
local byte = string.byte
local lower = string.lower
local concat = table.concat
local tonumber = tonumber
local type = type

local M = {}

-- Variables nuncio fills in (nuncio.header_rewrite implements each), besides %REQ(…)% and
-- %RESP(…)%.
M.KNOWN = {
  DOWNSTREAM_REMOTE_ADDRESS = true,
  DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT = true,
  DOWNSTREAM_REMOTE_PORT = true,
  DOWNSTREAM_DIRECT_REMOTE_ADDRESS = true,
  DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT = true,
  DOWNSTREAM_LOCAL_PORT = true,
  PROTOCOL = true,
  UPSTREAM_CLUSTER = true,
  HOSTNAME = true,
}

-- REQ(a?b) or REQ(a?b):N
local function header_token(token, which)
  local args, maxlen = token:match("^" .. which .. "%(([^)]+)%)$")
  if not args then
    args, maxlen = token:match("^" .. which .. "%(([^)]+)%):(%d+)$")
  end
  if not args then
    return nil
  end
  local main, alt = args:match("^([^?]+)%?(.+)$")
  return { header = which, main = lower(main or args), alt = alt and lower(alt), maxlen = tonumber(maxlen) }
end

function M.tokenize(value, side)
  local tokens, unknown = {}, nil
  local buf = {}
  local function flush()
    local text = concat(buf)
    if text ~= "" then
      tokens[#tokens + 1] = text
    end
    buf = {}
  end
  local function keep(text)
    unknown = unknown or {}
    unknown[#unknown + 1] = text
    buf[#buf + 1] = text
  end
  local i, n = 1, #value
  while i <= n do
    local pct = find(value, "%", i, true)
    if not pct then
      buf[#buf + 1] = sub(value, i)
      break
    end
    buf[#buf + 1] = sub(value, i, pct - 1)
    if byte(value, pct + 1) == 37 then -- "%%" is one "%"
      buf[#buf + 1] = "%"
      i = pct + 2
    else
      local close = find(value, "%", pct + 1, true)
      if not close then
        keep(sub(value, pct)) -- an unterminated "%…" (Envoy refuses the config)
        break
      end
      local token = sub(value, pct + 1, close - 1)
      local t = header_token(token, "REQ") or (side == "response" and header_token(token, "RESP"))
      if t then
        flush()
        tokens[#tokens + 1] = t
      elseif M.KNOWN[token] then
        flush()
        tokens[#tokens + 1] = { var = token }
      else
        keep("%" .. token .. "%")
      end
      i = close + 1
    end
  end
  flush()
  return tokens, unknown
end

--- unknown(value, side) -> array of the "%…%" nuncio does not know in value, or nil.
function M.unknown(value, side)
  if type(value) ~= "string" or not find(value, "%", 1, true) then
    return nil
  end
  local _, unknown = M.tokenize(value, side)
  return unknown
end

return M
