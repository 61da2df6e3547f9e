-- Shared by the envoy_scripts specs: the Ambassador YAML they route against
-- and a chain with the filter running a given script.
local testing = require("nuncio.testing")

local M = {}

M.YAML = [[
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: api}
spec:
  hostname: "api.example.com"
  prefix: /api/
  service: http://api-backend:8080
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: target}
spec:
  hostname: "*"
  prefix: /target/
  service: http://target-backend:8080
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: greeter}
spec:
  hostname: "*"
  prefix: /helloworld.Greeter/
  rewrite: /helloworld.Greeter/
  grpc: true
  service: 127.0.0.1:50051
---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: any}
spec:
  hostname: "*"
  requestPolicy: {insecure: {action: Route}}
]]

--- chain, instance = helpers.chain(code, { fail_closed = ..., max_instructions = ... })
function M.chain(code, extra)
  local config = { code = code }
  for k, v in pairs(extra or {}) do config[k] = v end
  local ch = testing.chain({ ambassador = M.YAML, filters = { { name = "envoy_scripts", config = config } } })
  for _, f in ipairs(ch.chain.filters) do
    if f.name == "envoy_scripts" then return ch, f.inst end
  end
  error("no envoy_scripts filter in the chain")
end

--- The error a chain with this script fails with (or nil).
function M.config_error(code, extra)
  local ok, err = pcall(M.chain, code, extra)
  if ok then return nil end
  return tostring(err)
end

M.handler = require("envoy_scripts.handler")
return M
