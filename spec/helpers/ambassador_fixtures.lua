-- Shared by the loader specs: load Ambassador YAML text the way nuncio.config
-- does, and write one resource as YAML with known line numbers.
local amb = require("nuncio.ambassador")
local assert = require("luassert")

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

--- A Listener on 8080 serving every Host, so specs get no default-listener warning.
M.LISTENER = M.doc("Listener", "l", { "port: 8080", "protocol: HTTP", "securityModel: XFP",
  "hostBinding: {namespace: {from: ALL}}" })

--- A Mapping named name on every host, prefix /name/, service name; body lines go under spec:.
function M.mapping(name, body)
  local lines = { 'hostname: "*"', "prefix: /" .. name .. "/", "service: " .. name }
  for _, l in ipairs(body or {}) do
    lines[#lines + 1] = l
  end
  return M.doc("Mapping", name, lines)
end

--- The model's route made from the Mapping named name (nil if none).
function M.route(model, name)
  for _, r in ipairs(model.routes) do
    if r.name == name then
      return r
    end
  end
end

--- The Module `ambassador` with these lines under config:.
function M.module(lines)
  local body = { "config:" }
  for _, l in ipairs(lines) do
    body[#body + 1] = "  " .. l
  end
  return M.doc("Module", "ambassador", body)
end

--- text plus M.LISTENER, loaded; asserts it has no errors -> model, warnings.
function M.ok(text)
  local model, errs, warns = M.load(text .. M.LISTENER)
  assert.same({}, errs)
  return model, warns
end

--- text plus M.LISTENER, loaded; asserts it fails -> errors.
function M.errors_of(text)
  local model, errs = M.load(text .. M.LISTENER)
  assert.is_nil(model)
  return errs
end

--- Temporary files for one describe block: files(text) writes one and returns its
--- path; files.clean() (for after_each) removes them all.
function M.temp_files()
  local paths = {}
  local files = setmetatable({}, { __call = function(_, text)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
    paths[#paths + 1] = path
    return path
  end })
  function files.clean()
    for _, p in ipairs(paths) do
      os.remove(p)
    end
    paths = {}
  end
  return files
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
