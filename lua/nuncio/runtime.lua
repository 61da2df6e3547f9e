-- The entry points the C core calls (csrc/lua_bridge.c): configure once, then
-- one call per phase per exchange with the stream as light userdata.
local config = require("nuncio.config")
local nffi = require("nuncio.ffi")

local M = {}

-- Which phases have work; lua_bridge.c reads this after configure().
M.wants = { request_headers = true, response_headers = false, response_trailers = false, log = true }

local installed -- the chain requests run through
local live = {} -- light userdata -> stream object, from first phase to the log phase
local stream_mod, chain_mod -- loaded after lua_path is applied, so user copies win

local function prepend_paths(dirs)
  if type(dirs) ~= "table" or #dirs == 0 then return end
  local parts = {}
  for _, d in ipairs(dirs) do
    parts[#parts + 1] = d .. "/?.lua;" .. d .. "/?/init.lua"
  end
  package.path = table.concat(parts, ";") .. ";" .. package.path
end

--- configure{ config = path, ambassador = {paths}, validate_only = bool }
--- -> model | nil, errs, warns
function M.configure(opts)
  local model, errs, warns = config.load({ config = opts.config, ambassador = opts.ambassador })
  warns = warns or {}
  if not model then return nil, errs, warns end
  prepend_paths(model.lua_path)
  chain_mod = chain_mod or require("nuncio.chain")
  stream_mod = stream_mod or require("nuncio.stream")
  local ch, cerrs = chain_mod.new(model)
  if not ch then return nil, cerrs, warns end
  if not opts.validate_only then
    installed = ch
    M.wants = ch.wants
  end
  return model, nil, warns
end

local cast = nffi.cast_stream

local function get(ud)
  local s = live[ud]
  if not s then
    s = stream_mod.new(cast(ud), installed)
    live[ud] = s
  end
  return s
end

function M.request_headers(ud) return installed:request_headers(get(ud)) end
function M.response_headers(ud) return installed:response_headers(get(ud)) end
function M.response_trailers(ud) return installed:response_trailers(get(ud)) end

function M.log(ud)
  local s = live[ud]
  if not s then return 0 end
  live[ud] = nil
  local rc, err = installed:log(s)
  s:_release()
  return rc, err
end

--- Number of exchanges holding a Lua object (specs check it returns to zero).
function M.live_count()
  local n = 0
  for _ in pairs(live) do n = n + 1 end
  return n
end

return M
