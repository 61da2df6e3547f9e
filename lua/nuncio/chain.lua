-- The filter chain: the user's native filters in configured order, then the
-- router (terminal, like Envoy's router filter). Every filter call is guarded:
-- an error becomes a 500 (gRPC: INTERNAL) for that request only, logged with
-- the filter's name and the Lua traceback.
local router_mod = require("nuncio.router")

local xpcall, pcall, require, type, tostring = xpcall, pcall, require, type, tostring
local traceback = debug.traceback
local string_format = string.format

local M = {}

local Chain = {}
Chain.__index = Chain

-- A filter name resolves to the module `name`, else `name.handler`
-- (filters/<name>/handler.lua, Kong's layout).
local function load_filter_module(name)
  local ok, mod = pcall(require, name)
  if ok and type(mod) == "table" then return mod end
  local first_err = mod
  local ok2, mod2 = pcall(require, name .. ".handler")
  if ok2 and type(mod2) == "table" then return mod2 end
  if ok2 or tostring(mod2):find("module '" .. name .. ".handler' not found", 1, true) then
    return nil, tostring(first_err)
  end
  return nil, tostring(mod2)
end

local function load_schema(name, mod)
  if type(mod.schema) == "table" then return mod.schema end
  local ok, s = pcall(require, name .. ".schema")
  if ok and type(s) == "table" then return s end
  return nil
end

--- Builds one filter instance from { name = "mod", config = {...}, source = "file:line" }
--- or { module = table, name = "label", config = {...} } (specs pass modules directly).
local function instantiate(entry)
  local name = entry.name or "anonymous"
  local mod, err = entry.module, nil
  if not mod then
    mod, err = load_filter_module(name)
    if not mod then return nil, string_format("filter %s: cannot load: %s", name, err) end
  end
  if type(mod.new) ~= "function" then
    return nil, string_format("filter %s: the module has no new(config) function", name)
  end
  local config = entry.config or {}
  local schema = entry.module == nil and load_schema(name, mod) or mod.schema
  if schema and type(schema.validate) == "function" then
    local ok, verr = schema.validate(config)
    if not ok then return nil, string_format("filter %s: config: %s", name, tostring(verr)) end
  end
  local ok, inst = pcall(mod.new, config)
  if not ok then return nil, string_format("filter %s: new() failed: %s", name, tostring(inst)) end
  if type(inst) ~= "table" then return nil, string_format("filter %s: new() must return a table", name) end
  return { name = name, inst = inst }
end

--- chain.new(model[, router]) -> chain | nil, errs
function M.new(model, router)
  local errs = {}
  if not router then
    local err
    router, err = router_mod.new(model)
    if not router then errs[#errs + 1] = tostring(err) end
  end
  local filters = {}
  for _, entry in ipairs(model.chain or {}) do
    local f, err = instantiate(entry)
    if f then
      filters[#filters + 1] = f
    else
      errs[#errs + 1] = (entry.source and (entry.source .. ": ") or "") .. err
    end
  end
  if #errs > 0 then return nil, errs end
  local self = setmetatable({ model = model, router = router, filters = filters }, Chain)
  local function any(method)
    for _, f in ipairs(filters) do
      if type(f.inst[method]) == "function" then return true end
    end
    return false
  end
  -- The log phase always runs: it also releases the exchange's Lua object.
  self.wants = {
    request_headers = true,
    response_headers = any("on_response_headers"),
    response_trailers = any("on_response_trailers"),
    log = true,
  }
  return self
end

local function call(f, method, s)
  local fn = f.inst[method]
  if not fn then return true end
  local ok, err = xpcall(fn, traceback, f.inst, s)
  if ok then return true end
  return false, string_format("filter %s: %s failed: %s", f.name, method, tostring(err))
end

-- Router outcomes as Envoy/Emissary answer them (behaviour notes §2.2, §7).
local function no_route(s, why)
  if why == "redirect" then
    local location = "https://" .. (s:authority() or "") .. (s:path() or "/")
    s:respond(301, "", { location = location }, "https_redirect")
    return 1
  end
  -- Envoy's 404 has no body; a gRPC client only sees grpc-message, so say
  -- there which request found no Mapping.
  local body = ""
  if s:is_grpc() then
    body = string_format("no route for %s %s (authority %s)", s:method() or "-", s:path() or "-",
      s:authority() or "-")
  end
  s:respond(404, body, nil, why == "rejected" and "insecure_rejected" or "route_not_found")
  return 1
end

--- Request headers: filters in order, then the router. Returns 0 (proxy) or
--- 1 (a local reply was made), or -1 and the error text.
function Chain:request_headers(s)
  local filters = self.filters
  for i = 1, #filters do
    local ok, err = call(filters[i], "on_request_headers", s)
    if not ok then return -1, err end
    if s._replied then return 1 end
  end
  local route, why = s:route()
  if not route then return no_route(s, why) end
  local path = s:path() or "/"
  local new_path = router_mod.rewrite(route, path)
  if new_path ~= path then
    -- Envoy keeps the client's path for the upstream's logs.
    s.request:set("x-envoy-original-path", path)
    s.request:set(":path", new_path)
    s._route = route -- the router already decided; the rewrite must not re-route
  end
  s:set_upstream(route.cluster - 1, route.timeout_ms or 0)
  return 0
end

--- Response phases run the filters in reverse order, as Envoy's encoders do.
local function reverse_phase(self, method, s)
  local filters = self.filters
  for i = #filters, 1, -1 do
    local ok, err = call(filters[i], method, s)
    if not ok then return -1, err end
    if s._replied then return 1 end
  end
  return 0
end

function Chain:response_headers(s) return reverse_phase(self, "on_response_headers", s) end
function Chain:response_trailers(s) return reverse_phase(self, "on_response_trailers", s) end

function Chain:log(s)
  local filters = self.filters
  local first_err
  for i = 1, #filters do
    local ok, err = call(filters[i], "on_log", s)
    if not ok and not first_err then first_err = err end
  end
  if first_err then return -1, first_err end
  return 0
end

M.Chain = Chain
return M
