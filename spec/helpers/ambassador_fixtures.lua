-- Shared by the loader specs: load Ambassador YAML text the way nuncio.config
-- does, and write one resource as YAML with known line numbers.
local amb = require("nuncio.ambassador")

local ipairs, table_concat = ipairs, table.concat

local M = {}

--- load_text + build_model, the warnings of both steps together.
function M.load(text, opts)
  local res, errs, warns = amb.load_text(text, "t.yaml", opts)
  if not res then
    return nil, errs, warns
  end
  local model, merrs, mwarns = amb.build_model(res, opts)
  for _, w in ipairs(mwarns) do
    warns[#warns + 1] = w
  end
  return model, merrs, warns
end

--- One resource (v3alpha1 unless api says otherwise); body lines go under
--- spec:. Without meta the first body line is line 7.
function M.doc(kind, name, body, meta, api)
  local lines = { "---", "apiVersion: " .. (api or "getambassador.io/v3alpha1"), "kind: " .. kind, "metadata:",
    "  name: " .. name }
  for _, l in ipairs(meta or {}) do
    lines[#lines + 1] = "  " .. l
  end
  lines[#lines + 1] = "spec:"
  for _, l in ipairs(body) do
    lines[#lines + 1] = "  " .. l
  end
  return table_concat(lines, "\n") .. "\n"
end

--- Is s one of list's values?
function M.contains(list, s)
  for _, v in ipairs(list) do
    if v == s then
      return true
    end
  end
  return false
end

--- The guide's Module with the port-stripping lua_scripts, as the guide prints it.
function M.guide_lua_module()
  local src = os.getenv("NUNCIO_SRC") or "."
  local f = assert(io.open(src .. "/spec/fixtures/ambassador/guide-lua-module.yaml"))
  local text = f:read("*a")
  f:close()
  return text
end

return M
