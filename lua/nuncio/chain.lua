-- The filter chain, in Envoy's order (behaviour notes §5.3):
--   1. what Envoy's connection manager does before any filter (model.http, from the
--      Module): reject escaped slashes (400), merge slashes, x-request-id;
--   2. bundled filters the Module asks for: strip_host_port (strip_matching_host_port),
--      then envoy_scripts (lua_scripts), then cors (when a route has a cors policy);
--   3. the user's native filters in configured order;
--   4. the router (terminal, like Envoy's router filter): route, the route's header
--      rewrites, host and path rewrite, upstream.
-- Responses: the route's response header rewrites, then the filters in reverse order (the
-- `server` header, Module server_name, is written by the C core). Every filter call is guarded: an error becomes
-- a 500 (gRPC: INTERNAL) for that request only, logged with the filter's name and the Lua
-- traceback.
local router_mod = require("nuncio.router")
local header_rewrite = require("nuncio.header_rewrite")

local xpcall, pcall, require, type, tostring, tonumber = xpcall, pcall, require, type, tostring, tonumber
local traceback = debug.traceback
local string_format = string.format
local find, sub, gsub = string.find, string.sub, string.gsub

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
  return { name = name, inst = inst, bundled = entry.bundled == true }
end

-- The bundled filters the Module switches on, ahead of the user's chain.
local function bundled_entries(http, routes)
  local list = {}
  if http.strip_matching_host_port then
    list[#list + 1] = { name = "strip_host_port", config = {},
      source = "(Module ambassador: strip_matching_host_port)", bundled = true }
  end
  local ls = http.lua_scripts
  if ls then
    list[#list + 1] = { name = "envoy_scripts", config = { code = ls.code, name = "lua_scripts", fail_closed = false },
      source = ls.source, lua_scripts = ls, bundled = true }
  end
  -- Envoy's CORS filter comes after the Lua filter (behaviour notes §5.3); Emissary always
  -- installs it, nuncio only when a route has a cors policy (it does nothing otherwise).
  for _, route in ipairs(routes or {}) do
    if route.cors then
      list[#list + 1] = { name = "cors", config = {}, source = "(Mapping/Module cors)" }
      break
    end
  end
  return list
end

-- The Module's lua_scripts could not start (envoy_scripts' new() raised): a config error
-- naming the Module's file:line and field, at the script's own line when the file shows it.
local function script_error(ls, err)
  local msg = gsub(tostring(err), "^filter [^:]+: new%(%) failed: ", "")
  msg = gsub(msg, "^[^%s:]+%.lua:%d+: ", "") -- a position inside the filter means nothing here
  msg = gsub(msg, "^lua_scripts: ", "")
  local n, rest = msg:match("^lua_scripts:(%d+): (.*)$")
  if n and ls.first_line and ls.file then
    return string_format("%s:%d: Module %s: config.lua_scripts: line %s of the script: %s", ls.file,
      ls.first_line + tonumber(n) - 1, tostring(ls.module or "ambassador"), n, rest)
  elseif n then
    return string_format("%s: line %s of the script: %s", ls.where, n, rest)
  end
  return ls.where .. ": " .. msg
end

--- chain.new(model[, router]) -> chain | nil, errs
function M.new(model, router)
  local errs = {}
  if not router then
    local err
    router, err = router_mod.new(model)
    if not router then errs[#errs + 1] = tostring(err) end
  end
  -- The core counts requests per route by this index into model.routes (its route names).
  for i, r in ipairs(model.routes or {}) do r.stat_index = i - 1 end
  local http = model.http or {}
  local filters = {}
  local entries = bundled_entries(http, model.routes)
  for _, entry in ipairs(model.chain or {}) do entries[#entries + 1] = entry end
  for _, entry in ipairs(entries) do
    local f, err = instantiate(entry)
    if f then
      filters[#filters + 1] = f
    elseif entry.lua_scripts then
      errs[#errs + 1] = script_error(entry.lua_scripts, err)
    else
      errs[#errs + 1] = (entry.source and (entry.source .. ": ") or "") .. err
    end
  end
  if #errs > 0 then return nil, errs end

  -- Header rewrites, compiled once per route.
  local rewrites, any_response_rewrite = {}, false
  for _, route in ipairs(model.routes or {}) do
    local rw = header_rewrite.compile(route, model)
    if rw then
      rewrites[route] = rw
      any_response_rewrite = any_response_rewrite or rw.response
    end
  end

  local self = setmetatable({ model = model, router = router, filters = filters, rewrites = rewrites }, Chain)
  self.escaped_slashes = http.reject_requests_with_escaped_slashes == true
  self.merge_slashes = http.merge_slashes == true
  self.preserve_request_id = http.preserve_external_request_id == true
  header_rewrite.seed() -- canary draws must differ between workers and runs

  local function any(method)
    for _, f in ipairs(filters) do
      if type(f.inst[method]) == "function" then return true end
    end
    return false
  end
  -- The log phase runs when a filter has on_log, or when a response phase may
  -- run: it then releases the exchange's Lua object, which lives from the
  -- request phase on. Otherwise the runtime releases it when the request phase
  -- ends, and exchanges cost no log call (nuncio.runtime).
  local response_headers = any("on_response_headers") or any_response_rewrite
  local response_trailers = any("on_response_trailers")
  self.wants = {
    request_headers = true,
    response_headers = response_headers,
    response_trailers = response_trailers,
    log = any("on_log") or response_headers or response_trailers,
  }
  -- The runtime may reuse one stream object for request after request when
  -- nothing can hold on to it past its request phase: no later phase (the
  -- object would live on to it), and only bundled filters whose instance says
  -- `confined` (strip_host_port; envoy_scripts when bounded.confined proved its
  -- script). A user's filter gets the stream itself and could keep it; it
  -- must then get an error on later use, not the next request's headers.
  local reuse = not self.wants.log
  for _, f in ipairs(filters) do
    if not (f.bundled and f.inst.confined == true) then reuse = false end
  end
  self.reuse_stream = reuse
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

-- Envoy's connection manager, before any filter (ConnectionUtility::maybeNormalizePath):
-- escaped slashes ("%2F", "%5C" in the path, not the query) -> 400 with
-- reject_requests_with_escaped_slashes; runs of "/" merged with merge_slashes (the upstream
-- gets the merged path too). Returns true when it replied.
local function normalize_path(self, s)
  local rq = s.request
  local path = rq:get(":path")
  if not path then return false end
  local q = find(path, "?", 1, true)
  local p = q and sub(path, 1, q - 1) or path
  if self.escaped_slashes and find(p, "%", 1, true) and (find(p, "%%2[fF]") or find(p, "%%5[cC]")) then
    s:respond(400, "", nil, "path_has_escaped_slashes")
    return true
  end
  if self.merge_slashes and find(p, "//", 1, true) then
    rq:set(":path", (gsub(p, "/+", "/")) .. (q and sub(path, q) or ""))
  end
  return false
end

-- (The `server` header of every response, local replies included, is the C
-- core's: it is written where the response goes out, as Envoy's connection
-- manager does, so responses without response filters never enter Lua.)
local function replied(self, s)
  return 1
end

--- Request headers: connection-manager steps, filters in order, then the router. Returns 0
--- (proxy) or 1 (a local reply was made), or -1 and the error text.
function Chain:request_headers(s)
  if self.escaped_slashes or self.merge_slashes then
    if normalize_path(self, s) then return replied(self, s) end
  end
  -- x-request-id as Envoy sets it at the edge: a new UUID v4 unless the client's is kept
  -- (Module preserve_external_request_id) and present.
  local rq = s.request
  if not (self.preserve_request_id and rq:get("x-request-id")) then
    rq:set_request_id()
  end

  -- The first filter outside the loop: a loop that runs once per request
  -- never forms a LuaJIT trace (it leaves at once), and with one filter (a
  -- Module's lua_scripts) the loop below is not entered at all.
  local filters = self.filters
  local n = #filters
  if n > 0 then
    local ok, err = call(filters[1], "on_request_headers", s)
    if not ok then return -1, err end
    if s._replied then return replied(self, s) end
    for i = 2, n do
      ok, err = call(filters[i], "on_request_headers", s)
      if not ok then return -1, err end
      if s._replied then return replied(self, s) end
    end
  end
  local route, why = s:route()
  if not route then
    no_route(s, why)
    return replied(self, s)
  end
  local rw = self.rewrites[route]
  if rw and rw.request then
    -- Envoy's finalizeRequestHeaders: the route's header rewrites, then host_rewrite
    header_rewrite.apply_request(rw, s)
  end
  local path = s:path() or "/"
  local new_path = router_mod.rewrite(route, path)
  if new_path ~= path then
    -- Envoy keeps the client's path for the upstream's logs.
    rq:set("x-envoy-original-path", path)
    rq:set(":path", new_path)
  end
  s._route = route -- the router already decided; the rewrites must not re-route
  s:set_upstream(route.cluster - 1, route.timeout_ms or 0, (route.policy or 1) - 1, route.stat_index or -1)
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

--- Response headers: the route's response rewrites first (Envoy's router is the first
--- encoder), then the filters in reverse order. (The server header is set by the C core.)
function Chain:response_headers(s)
  local route = s._route
  if route then
    local rw = self.rewrites[route]
    if rw and rw.response then
      header_rewrite.apply_response(rw, s)
    end
  end
  return reverse_phase(self, "on_response_headers", s)
end
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
