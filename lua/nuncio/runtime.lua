-- The entry points the C core calls (csrc/lua_bridge.c): configure once, then
-- one call per phase per exchange with the stream's address as a number.
local config = require("nuncio.config")
local tonumber = tonumber
local nffi = require("nuncio.ffi")

local M = {}

-- A request's Lua path (request_headers through the chain, the filters, the
-- router and set_upstream) is one LuaJIT trace when it fits: with the
-- default maxrecord (4000 IR instructions) it did not, the trace aborted
-- ("trace too long") and the path ran interpreted, 4k more instructions a
-- request (bench/profile). Twice the default fits it with room.
if jit and jit.opt then jit.opt.start("maxrecord=8000", "maxirconst=1000") end

-- Which phases have work; lua_bridge.c reads this after configure().
M.wants = { request_headers = true, response_headers = false, response_trailers = false, log = true }

local installed -- the chain requests run through
local live = {} -- stream address (number) -> stream object, from first phase to the log phase
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
  if s._chain and s._chain.wants.log then return end -- live[] holds it and the log phase releases it
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

-- Modules loaded when the runtime itself was: the standard libraries and
-- nuncio's own. Everything required later (filters and what they use) is
-- forgotten before each load, so a reload runs the filter files as they are
-- now; exchanges in flight keep the instances their chain holds.
local baseline = {}
for name in pairs(package.loaded) do baseline[name] = true end

local function forget_filter_modules()
  for name in pairs(package.loaded) do
    if not baseline[name] and name:sub(1, 7) ~= "nuncio." then
      package.loaded[name] = nil
    end
  end
end

local function prepend_paths(dirs)
  if type(dirs) ~= "table" or #dirs == 0 then return end
  local parts = {}
  for _, d in ipairs(dirs) do
    if not package.path:find(d .. "/?.lua;", 1, true) then -- reloads add nothing twice
      parts[#parts + 1] = d .. "/?.lua;" .. d .. "/?/init.lua"
    end
  end
  if #parts == 0 then return end
  package.path = table.concat(parts, ";") .. ";" .. package.path
end

--- configure{ config = path, ambassador = {paths}, validate_only = bool, stage = bool }
--- -> model | nil, errs, warns
--- validate_only checks and keeps the result for diagnostics (M.last); stage
--- builds the chain and holds it until commit() installs it (or discard()
--- drops it), so the core switches Lua and C to a new generation together;
--- neither installs at once (the first load of a process).
function M.configure(opts)
  forget_filter_modules()
  local model, errs, warns = config.load({ config = opts.config, ambassador = opts.ambassador })
  warns = warns or {}
  local function remember(ok)
    if opts.validate_only then
      if ok then M.good_model = model end
      M.last = { model = model or (M.last and M.last.model), errors = errs or {}, warnings = warns, ok = ok }
    end
  end
  if not model then
    remember(false)
    return nil, errs, warns
  end
  prepend_paths(model.lua_path)
  chain_mod = chain_mod or require("nuncio.chain")
  stream_mod = stream_mod or require("nuncio.stream")
  stream_mod.park = park
  local ch, cerrs = chain_mod.new(model)
  if not ch then
    errs = cerrs
    model = nil
    remember(false)
    return nil, cerrs, warns
  end
  remember(true)
  if opts.stage then
    M.pending = ch
  elseif not opts.validate_only then
    M.pending = ch
    M.commit()
  end
  return model, nil, warns
end

--- Installs the staged chain: new exchanges run through it; the ones in
--- flight keep the chain they started with (their stream objects hold it).
function M.commit()
  local ch = M.pending
  if not ch then return false end
  M.pending = nil
  installed = ch
  M.wants = ch.wants
  keep = ch.wants.log == true
  return true
end

function M.discard() M.pending = nil end

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
  local s = stream_mod.take(cast(ud), installed) -- reused when the chain allows (stream.put)
  inflight = s
  local rc, err = s._chain:request_headers(s)
  if n_parked > 0 then unpark(ud) end
  inflight = false
  stream_mod.put(s)
  return rc, err
end
-- Later phases run through the chain the exchange started on (a reload may
-- have installed another since).
function M.response_headers(ud)
  local s = get(ud)
  return s._chain:response_headers(s)
end
function M.response_trailers(ud)
  local s = get(ud)
  return s._chain:response_trailers(s)
end

function M.log(ud)
  local s = live[ud]
  if not s then return 0 end
  live[ud] = nil
  local rc, err = s._chain:log(s)
  s:_release()
  return rc, err
end

--- The C core drops a phase that waits for a body (the exchange ended or the
--- body went over the limit), or a phase raised past the chain. Without a
--- later phase nothing else will release the stream object: do it here, so a
--- filter that kept it gets an error, not freed memory.
function M.abandon(ud)
  local k = ud
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

--- The control thread found a problem the Lua checks cannot see (TLS
--- material that does not load): the last load counts as failed, for diagnostics.
function M.reject(msg)
  local last = M.last
  if not last then return end
  local errors = {}
  for i, e in ipairs(last.errors or {}) do errors[i] = e end
  errors[#errors + 1] = msg
  last.errors = errors
  if last.ok then
    last.model = M.good_model
    last.ok = false
  end
end

--- Paths the control thread watches for changes (files or folders).
function M.watch_list()
  local m = M.last and M.last.model
  local out = {}
  if not m then return out end
  local w = m.watch or {}
  if w.config then out[#out + 1] = w.config end
  for _, p in ipairs(w.ambassador or {}) do out[#out + 1] = p end
  if w.secrets_dir then out[#out + 1] = w.secrets_dir end
  for _, p in ipairs(m.lua_path or {}) do out[#out + 1] = p end
  return out
end

local function parse_query(q)
  local t = {}
  for pair in (q or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    if k and k ~= "" then
      t[k:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)] =
        v:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    end
  end
  return t
end

--- Diagnostics (the admin's /ambassador/v0/diag/): live numbers from the
--- core in `state`, the configuration from the last check. -> status, content type, body
function M.diag(state, query)
  local last = M.last or {}
  state.model = last.model
  state.errors = last.errors or {}
  state.warnings = last.warnings or {}
  state.last_reload = { time = state.last_reload_ok, ok = last.ok ~= false }
  return require("nuncio.diag").render(state, parse_query(query))
end

--- nuncio -t: a summary of what the configuration routes (every route with dump).
function M.route_summary(dump)
  local m = M.last and M.last.model
  if not m then return "" end
  local out = {}
  local routes = m.routes or {}
  local by_cluster = {}
  for _, r in ipairs(routes) do
    local c = m.clusters[r.cluster]
    local name = c and c.name or "?"
    by_cluster[name] = (by_cluster[name] or 0) + 1
  end
  out[#out + 1] = string.format("routes: %d, in evaluation order%s", #routes, dump and ":" or
    " (--dump-routes lists them)")
  if dump then
    for i, r in ipairs(routes) do
      local c = m.clusters[r.cluster]
      local match = r.prefix or "?"
      if r.prefix_regex then match = "~" .. match elseif r.prefix_exact then match = "=" .. match end
      local host = r.host and (type(r.host) == "table" and (r.host.value or r.host[1]) or r.host) or "*"
      out[#out + 1] = string.format("  %4d  %-40s %-28s host=%-16s %-6s -> %s  (%s)", i, match,
        r.name or "?", tostring(host), r.method or "*", c and c.name or "?", r.source or "?")
    end
  else
    local names = {}
    for name in pairs(by_cluster) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
      out[#out + 1] = string.format("  %-50s %d route(s)", name, by_cluster[name])
    end
  end
  return table.concat(out, "\n") .. "\n"
end

--- Number of exchanges holding a Lua object (specs check it returns to zero).
function M.live_count()
  local n = 0
  for _ in pairs(live) do n = n + 1 end
  for _ in pairs(parked) do n = n + 1 end
  return n
end

return M
