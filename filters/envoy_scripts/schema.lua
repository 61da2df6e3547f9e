-- Config of the envoy_scripts filter (Module `lua_scripts`):
--   code             (string, required)  the Envoy Lua script
--   name             (string)            label for logs and error positions ("script")
--   fail_closed      (boolean, false)    a script error answers 500 / gRPC INTERNAL
--                                        instead of letting the request go on
--   max_instructions (integer >= 0)      per-call instruction budget for scripts not proved
--                                        to end (nuncio.bounded); 0 = no budget
--                                        (and the script may be JIT-compiled)
local type, pairs, tostring, math_floor = type, pairs, tostring, math.floor

local M = {}

local FIELDS = { code = "string", name = "string", fail_closed = "boolean", max_instructions = "number" }

function M.validate(config)
  if type(config) ~= "table" then return false, "config must be a table" end
  for k, v in pairs(config) do
    local want = FIELDS[k]
    if not want then return false, "unknown field " .. tostring(k) end
    if type(v) ~= want then return false, k .. " must be a " .. want .. ", not " .. type(v) end
  end
  if config.code == nil then return false, "code (the script text) is required" end
  local n = config.max_instructions
  if n ~= nil and (n < 0 or n ~= math_floor(n)) then
    return false, "max_instructions must be an integer >= 0"
  end
  return true
end

return M
