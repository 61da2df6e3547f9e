-- Config of the bundled cors filter. Each route's own policy is `route.cors`
-- (Mapping or Module `cors`, read by nuncio.ambassador.policy.read_cors);
-- `default` applies to routes without one (useful in a native chain):
--   default = { origins = { "https://a.example", "*" },   -- exact origins; "*" allows any
--               methods = "GET, POST", headers = "content-type", exposed_headers = "grpc-status",
--               max_age = "86400", credentials = false }
local type, pairs, tostring = type, pairs, tostring

local M = {}

local POLICY = { origins = "table", methods = "string", headers = "string", exposed_headers = "string",
  max_age = "string", credentials = "boolean" }

function M.validate(config)
  if type(config) ~= "table" then return false, "config must be a table" end
  for k in pairs(config) do
    if k ~= "default" then return false, "unknown field " .. tostring(k) end
  end
  local d = config.default
  if d == nil then return true end
  if type(d) ~= "table" then return false, "default must be a table" end
  for k, v in pairs(d) do
    local want = POLICY[k]
    if not want then return false, "default: unknown field " .. tostring(k) end
    if type(v) ~= want then return false, "default." .. k .. " must be a " .. want .. ", not " .. type(v) end
  end
  for i, o in pairs(d.origins or {}) do
    if type(o) ~= "string" then return false, "default.origins[" .. tostring(i) .. "] must be a string" end
  end
  return true
end

return M
