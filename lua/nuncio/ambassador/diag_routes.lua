-- nuncio.ambassador.diag_routes: Module diagnostics / readiness_probe /
-- liveness_probe and the internal Mappings Emissary attaches for them
-- (behaviour notes §5.2, §8; Emissary ir/irambassador.py finalize and add_mappings).
--
--   diag_routes.read(cc)            -> probes (cc: the Module's config cursor)
--   diag_routes.defaults()          -> probes when the Module says nothing
--   diag_routes.resources(probes, admin, module_res) -> synthesized Mapping resources
--
-- probes = { liveness = P, readiness = P, diagnostics = P }, each
--   P = { enabled = bool, prefix = str?, rewrite = str?, service = str?, line = n? }
--   and diagnostics.allow_non_local = bool.
--
-- Emissary turns each enabled probe into an IRHTTPMapping (kind InternalMapping,
-- hostname "*", timeout_ms 10000, service 127.0.0.1:8877 = diagd) that goes through
-- the same grouping, sorting and Host association as user Mappings. nuncio does the
-- same: resources() returns resource envelopes that nuncio.ambassador hands to
-- mapping.build like any Mapping, pointing at nuncio's admin listener instead of diagd.
--
-- allow_non_local (Emissary diagd.py _allow_diag_ui): it does NOT change the Mappings.
-- diagd refuses the diag UI (404 "Not found") only when diagnostics.enabled is false,
-- the client is not 127.0.0.1, and allow_non_local is false; with enabled: true every
-- client that reaches port 8877 is served. nuncio keeps both flags in
-- model.diagnostics so the admin listener (nuncio.diag.render, state.peer_local)
-- applies the same rule to its own port.

local check = require("nuncio.ambassador.check")
local mapping = require("nuncio.ambassador.mapping")

local ipairs = ipairs
local tostring = tostring

local M = {}

-- Emissary's names, defaults and order (liveness, readiness, diagnostics)
M.PROBES = {
  { key = "liveness_probe", name = "liveness", prefix = "/ambassador/v0/check_alive",
    rewrite = "/ambassador/v0/check_alive" },
  { key = "readiness_probe", name = "readiness", prefix = "/ambassador/v0/check_ready",
    rewrite = "/ambassador/v0/check_ready" },
  { key = "diagnostics", name = "diagnostics", prefix = "/ambassador/v0/", rewrite = "/ambassador/v0/" },
}

M.TIMEOUT_MS = 10000 -- irambassador.py add_mappings: timeout_ms=10000

local PROBE_KEYS = check.set { "enabled", "prefix", "rewrite", "service" }
local DIAG_KEYS = check.set { "enabled", "prefix", "rewrite", "service", "allow_non_local" }

function M.defaults()
  return {
    liveness = { enabled = true },
    readiness = { enabled = true },
    diagnostics = { enabled = true, allow_non_local = false },
  }
end

-- Emissary tests `not cur.get("prefix")`: an empty string means the default, so
-- an empty prefix/rewrite/service is read as absent rather than refused.
local function nonempty(pc, key)
  local v = pc:string(key)
  if v == "" then
    return nil
  end
  return v
end

function M.read(c)
  local out = M.defaults()
  for _, p in ipairs(M.PROBES) do
    if c:has(p.key) then
      local pc = c:sub(p.key)
      local probe = out[p.name]
      probe.enabled = pc:bool("enabled", true)
      probe.prefix = nonempty(pc, "prefix")
      probe.rewrite = nonempty(pc, "rewrite")
      probe.service = nonempty(pc, "service")
      probe.line = c:line(p.key)
      if probe.service then
        -- checked here so a bad service is reported against the Module field
        -- (mapping.build would name a Mapping the user never wrote)
        local _, err = mapping.parse_service(probe.service, nil, {})
        if err then
          pc:fail("service", err)
          probe.service = nil
        end
      end
      if p.name == "diagnostics" then
        probe.allow_non_local = pc:bool("allow_non_local", false)
        pc:check_keys(DIAG_KEYS)
      else
        pc:check_keys(PROBE_KEYS)
      end
      if pc.failed then
        c.failed = true
      end
    end
  end
  return out
end

-- the service string of nuncio's admin listener, as a Mapping service: a wildcard
-- bind address is reached on loopback, an IPv6 literal needs brackets
local function admin_service(admin)
  local addr = admin.address or "127.0.0.1"
  if addr == "0.0.0.0" or addr == "" then
    addr = "127.0.0.1"
  elseif addr == "::" or addr == "[::]" then
    addr = "[::1]"
  elseif addr:find(":", 1, true) and addr:sub(1, 1) ~= "[" then
    addr = "[" .. addr .. "]"
  end
  return addr .. ":" .. tostring(admin.port or 8877)
end
M.admin_service = admin_service

-- resources(probes, admin, module_res, namespace) -> list of resource envelopes
--   admin: { address, port } (the native config's); false or nil: no admin listener,
--   so nothing to route to and no internal Mappings.
--   module_res: the Module ambassador's envelope, if any: a probe configured there
--   gets that file and the key's line as its source; the others are "(internal)".
function M.resources(probes, admin, module_res, namespace)
  local out = {}
  if not admin then
    return out
  end
  probes = probes or M.defaults()
  local default_service = admin_service(admin)
  for _, p in ipairs(M.PROBES) do
    local probe = probes[p.name]
    if probe and probe.enabled then
      local name = "internal_" .. p.name .. "_probe_mapping" -- Emissary's names
      local res = {
        kind = "InternalMapping", -- Emissary's kind for these; also keeps them out of user name clashes
        name = name,
        namespace = namespace or "default",
        labels = {},
        legacy = false,
        internal = true,
        spec = {
          hostname = "*",
          prefix = probe.prefix or p.prefix,
          rewrite = probe.rewrite or p.rewrite,
          service = probe.service or default_service,
          timeout_ms = M.TIMEOUT_MS,
        },
      }
      if module_res and probe.line then
        res.file, res.line = module_res.file, probe.line
        res.source = res.file .. ":" .. res.line
      else
        res.file, res.line = "(internal)", 0
        res.source = "(internal)"
      end
      out[#out + 1] = res
    end
  end
  return out
end

return M
