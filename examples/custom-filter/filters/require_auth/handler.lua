-- require_auth: a user-written native filter for nuncio.
--
-- * gRPC calls without an `authorization` header are refused with
--   UNAUTHENTICATED (HTTP 401 mapped the way Envoy maps it), before routing.
-- * Every request that goes on gets `x-grpc-service` / `x-grpc-method` taken
--   from its `:path` (/<package>.<Service>/<Method>), so the upstream (and its
--   logs) see them without parsing paths.
-- * config.exempt: a list of path prefixes that need no authorization
--   (health checks, reflection...).
local type, ipairs = type, ipairs
local string_sub, string_match = string.sub, string.match

return {
  VERSION = "1.0",

  new = function(config)
    local exempt = config.exempt or {}
    local self = {}

    function self:on_request_headers(stream)
      local path = stream:path() or "/"
      local service, method = string_match(path, "^/([^/]+)/([^/?]+)")
      if service then
        stream.request:set("x-grpc-service", service)
        stream.request:set("x-grpc-method", method)
      end
      if not stream:is_grpc() or stream.request:get("authorization") then
        return
      end
      for _, prefix in ipairs(exempt) do
        if string_sub(path, 1, #prefix) == prefix then
          return
        end
      end
      stream:log("info", "refusing %s: no authorization header", path)
      return stream:respond(401, "missing authorization header")
    end

    return self
  end,
}
