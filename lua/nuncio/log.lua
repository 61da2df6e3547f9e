-- Logging for Lua code: one line per call into the proxy's error log.
local nffi = require("nuncio.ffi")

local C = nffi.C
local select, tostring, string_format = select, tostring, string.format

local M = { DEBUG = 0, INFO = 1, WARN = 2, ERROR = 3 }

local levels = { debug = 0, info = 1, warn = 2, error = 3 }

-- log.write("warn", fmt, ...): the message is formatted only as text; a
-- format error is reported rather than raised, so logging never breaks a request.
function M.write(level, fmt, ...)
  local lv = levels[level] or 1
  local msg = fmt
  if select("#", ...) > 0 then
    local ok, s = pcall(string_format, fmt, ...)
    msg = ok and s or (tostring(fmt) .. " (bad log format: " .. tostring(s) .. ")")
  end
  msg = tostring(msg)
  C.nu_ffi_log_write(lv, msg, #msg)
end

function M.debug(...) M.write("debug", ...) end
function M.info(...) M.write("info", ...) end
function M.warn(...) M.write("warn", ...) end
function M.error(...) M.write("error", ...) end

return M
