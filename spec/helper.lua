-- busted helper: makes the bundled modules and the real core library reachable
-- from plain LuaJIT, the way the proxy's own Lua state sees them.
local src = os.getenv("NUNCIO_SRC") or "."
package.path = table.concat({
  src .. "/lua/?.lua", src .. "/lua/?/init.lua",
  src .. "/filters/?.lua", src .. "/filters/?/init.lua",
  src .. "/spec/helpers/?.lua",
  package.path,
}, ";")

local core = os.getenv("NUNCIO_CORE") or (src .. "/build/libnuncio_core.so")
local open_yaml, err = package.loadlib(core, "luaopen_nuncio_yaml")
package.preload["nuncio.yaml"] = open_yaml or function()
  error("cannot load the nuncio core library (" .. core .. "): " .. tostring(err)
        .. "; build first (make build) or set NUNCIO_CORE", 2)
end
