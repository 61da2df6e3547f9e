-- nuncio.ambassador.observe: the Module keys about watching the proxy rather
-- than routing through it: grpc_stats (behaviour notes §5.2, Emissary's
-- ir/irambassador.py and envoy/v3/v3httpfilter.py).

local check = require("nuncio.ambassador.check")

local type = type
local ipairs = ipairs

local M = {}

local GRPC_STATS_KEYS = check.set { "all_methods", "services", "upstream_stats" }

-- grpc_stats: {all_methods, services: [{name, method_names}], upstream_stats} ->
-- { all_methods = bool, upstream_stats = bool, allow = { "pkg.Service/Method" | "pkg.Service/" } }
-- or nil when absent. Present but empty (or null) turns the filter on with
-- Envoy's defaults, as Emissary does. `services` present makes an allowlist and
-- all_methods is then ignored (Envoy's oneof). Unknown keys warn: Emissary
-- passes them through to a filter that ignores them.
function M.read_grpc_stats(c, key)
  if c.tbl[key] == nil then
    return nil
  end
  local gc = c:sub(key)
  local out = {
    all_methods = gc:bool("all_methods", false),
    upstream_stats = gc:bool("upstream_stats", false),
    allow = {},
  }
  local services = gc:raw("services")
  if services ~= nil then
    if type(services) ~= "table" or not check.is_list(services) then
      gc:fail("services", "must be a list of {name, method_names}")
    else
      out.all_methods = false
      for i, s in ipairs(services) do
        local sc = check.fields(c.rep, c.res, type(s) == "table" and s or {}, gc:field("services") .. "[" .. i .. "].")
        local name = sc:string("name", true)
        local methods = sc:string_list("method_names")
        sc:check_keys(check.set { "name", "method_names" })
        if name then
          if methods and #methods > 0 then
            for _, m in ipairs(methods) do
              out.allow[#out.allow + 1] = name .. "/" .. m
            end
          else
            out.allow[#out.allow + 1] = name .. "/"
          end
        end
        if sc.failed then gc.failed = true end
      end
    end
  end
  gc:check_keys(GRPC_STATS_KEYS)
  if gc.failed then
    c.failed = true
    return nil
  end
  return out
end

return M
