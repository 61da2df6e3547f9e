-- Envoy's CORS filter (Emissary always installs it; behaviour notes §1.12), driven by the
-- route's `cors` policy:
--   * a preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed
--     origin is answered here: 200 with access-control-allow-origin (the request's Origin),
--     -allow-methods, -allow-headers, -max-age, -allow-credentials; no upstream call;
--   * a preflight from an origin the policy does not allow goes on to the upstream, as
--     Envoy forwards non-matching preflights;
--   * any other request with an allowed Origin gets access-control-allow-origin (+
--     -allow-credentials, + -expose-headers) on its response.
-- Origins match exactly; a "*" entry matches any origin (Envoy's isOriginAllowed).
local type = type

local M = { VERSION = "1.0" }

local function origin_allowed(policy, origin)
  local list = policy.origins
  if type(list) ~= "table" then return false end
  for i = 1, #list do
    local o = list[i]
    if o == "*" or o == origin then return true end
  end
  return false
end

function M.new(config)
  local default = config.default
  local self = {}

  function self:on_request_headers(s)
    local origin = s.request:get("origin")
    if not origin or origin == "" then return end
    local route = s:route()
    local policy = route and route.cors or default
    if not policy or not origin_allowed(policy, origin) then return end
    if s:method() == "OPTIONS" then
      local wanted = s.request:get("access-control-request-method")
      if wanted and wanted ~= "" then
        local h = { ["access-control-allow-origin"] = origin }
        if policy.credentials then h["access-control-allow-credentials"] = "true" end
        if policy.methods then h["access-control-allow-methods"] = policy.methods end
        if policy.headers then h["access-control-allow-headers"] = policy.headers end
        if policy.max_age then h["access-control-max-age"] = policy.max_age end
        s:respond(200, "", h, "cors_preflight")
        return
      end
    end
    -- an actual request: its response carries the CORS headers
    s.ctx.cors = { origin = origin, policy = policy }
  end

  function self:on_response_headers(s)
    local c = s.ctx.cors
    if not c then return end
    local rs = s.response
    rs:set("access-control-allow-origin", c.origin)
    if c.policy.credentials then rs:set("access-control-allow-credentials", "true") end
    if c.policy.exposed_headers then rs:set("access-control-expose-headers", c.policy.exposed_headers) end
  end

  return self
end

return M
