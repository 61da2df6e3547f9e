-- The entry points the C core calls (csrc/lua_bridge.c): configure once, then
-- one call per phase per exchange with the stream as light userdata.
local config = require("nuncio.config")
local tonumber = tonumber
local nffi = require("nuncio.ffi")

local M = {}

-- Which phases have work; lua_bridge.c reads this after configure().
M.wants = { request_headers = true, response_headers = false, response_trailers = false, log = true }

local installed -- the chain requests run through
local live = {} -- light userdata -> stream object, from first phase to the log phase
local stream_mod, chain_mod -- loaded after lua_path is applied, so user copies win

-- With a filter in a later phase (response, trailers, log) the exchange's
-- object lives in `live` from its first phase to the log phase, which the
-- chain then asks for. Without one (the common case: request filters and the
-- router only) it lives just for the request phase: no table entry, no log
-- phase, and it is released as soon as that phase ends.
local keep = true
-- Stream objects whose request phase waits for a body (stream.read_body
-- parks them), by the C stream's address, while no later phase holds them.
local parked, n_parked = {}, 0 -- (a count: next() would keep the JIT off this path)
local ffi_cast = require("ffi").cast

local function addr(p) return tonumber(ffi_cast("uintptr_t", p)) end

-- The object whose request phase is running (not parked): if the chain
-- raises, the core calls abandon() and finds it here. (A pcall around the
-- chain would do the same but keeps LuaJIT from compiling this path: +20k
-- instructions per request.)
local inflight = false

local function park(s)
  if keep then return end -- live[] holds it and the log phase releases it
  if inflight == s then inflight = false end
  local k = addr(s._st)
  if not parked[k] then n_parked = n_parked + 1 end
  parked[k] = s
end

local function unpark(k)
  if parked[k] then
    parked[k] = nil
    n_parked = n_parked - 1
  end
end

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
  stream_mod.park = park
  local ch, cerrs = chain_mod.new(model)
  if not ch then return nil, cerrs, warns end
  if not opts.validate_only then
    installed = ch
    M.wants = ch.wants
    keep = ch.wants.log == true
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

function M.request_headers(ud)
  if keep then return installed:request_headers(get(ud)) end
  local s = stream_mod.new(cast(ud), installed)
  inflight = s
  local rc, err = installed:request_headers(s)
  if n_parked > 0 then unpark(addr(ud)) end
  inflight = false
  s:_release()
  return rc, err
end
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

--- The C core drops a phase that waits for a body (the exchange ended or the
--- body went over the limit), or a phase raised past the chain. Without a
--- later phase nothing else will release the stream object: do it here, so a
--- filter that kept it gets an error, not freed memory.
function M.abandon(ud)
  local k = addr(ud)
  local s = parked[k]
  if s then
    unpark(k)
    s:_release()
    return
  end
  s = inflight
  if s and s._st ~= nil and addr(s._st) == k then
    inflight = false
    s:_release()
  end
end

--- Number of exchanges holding a Lua object (specs check it returns to zero).
function M.live_count()
  local n = 0
  for _ in pairs(live) do n = n + 1 end
  for _ in pairs(parked) do n = n + 1 end
  return n
end

return M
