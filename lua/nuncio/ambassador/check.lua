-- nuncio.ambassador.check: error/warning collection and typed field access
-- for Ambassador resources.
--
-- Every message has the shape   FILE:LINE: Kind NAME: FIELD: message
-- (FIELD left out when the message is about the whole resource). LINE is the
-- YAML line of the field when the loader knows it, else the resource's line.
--
-- A "resource" here is the envelope built by nuncio.ambassador:
--   { kind, name, namespace, file, line, line_map = fn|nil, note = str|nil, ... }
-- line_map turns a line inside an annotation's YAML into a line of the file
-- (nil result = unknown, the resource's own line is used instead).

local yaml = require("nuncio.yaml")

local type = type
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local string_format = string.format
local math_floor = math.floor
local HUGE = math.huge
local table_sort = table.sort
local table_concat = table.concat

local NULL = yaml.null
local yaml_line = yaml.line

local M = { NULL = NULL }

-- The longest duration in milliseconds the C core can hold (an int).
M.MAX_MS = 2147483647

-- A YAML value with YAML's null turned into nil ("key:" with nothing after it).
function M.value(v)
  if v == NULL then
    return nil
  end
  return v
end

-- The YAML line of tbl[key] (or of tbl), mapped into the resource's file.
function M.line_of(res, tbl, key)
  local l
  if type(tbl) == "table" then
    if key ~= nil then
      l = yaml_line(tbl, key)
    end
    l = l or yaml_line(tbl)
  end
  if l and res.line_map then
    l = res.line_map(l)
  end
  return l or res.line or 0
end

function M.format(res, line, field, msg)
  if res.note then
    msg = msg .. " (" .. res.note .. ")"
  end
  local who = res.kind .. " " .. tostring(res.name or "<unnamed>")
  if field then
    return string_format("%s:%d: %s: %s: %s", res.file, line, who, field, msg)
  end
  return string_format("%s:%d: %s: %s", res.file, line, who, msg)
end

---------------------------------------------------------------------------
-- reporter: collects errors and warnings of one load

local Reporter = {}
Reporter.__index = Reporter

function M.reporter()
  return setmetatable({ errs = {}, warns = {} }, Reporter)
end

function Reporter:error(res, field, msg, tbl, key)
  local errs = self.errs
  errs[#errs + 1] = M.format(res, M.line_of(res, tbl, key), field, msg)
end

function Reporter:warning(res, field, msg, tbl, key)
  local warns = self.warns
  warns[#warns + 1] = M.format(res, M.line_of(res, tbl, key), field, msg)
end

function Reporter:raw_error(s)
  self.errs[#self.errs + 1] = s
end

function Reporter:raw_warning(s)
  self.warns[#self.warns + 1] = s
end

---------------------------------------------------------------------------
-- helpers on plain values

-- true when t came from a non-empty YAML sequence: mapping keys are always strings
function M.is_list(t)
  for k in pairs(t) do
    if type(k) ~= "string" then
      return true
    end
  end
  return false
end

function M.is_map(t)
  for k in pairs(t) do
    if type(k) ~= "string" then
      return false
    end
  end
  return true
end

function M.is_integer(v)
  return type(v) == "number" and v == v and v ~= HUGE and v ~= -HUGE and math_floor(v) == v
end

function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table_sort(keys, function(a, b)
    return tostring(a) < tostring(b)
  end)
  return keys
end

local function describe(v)
  if v == NULL then
    return "null"
  end
  local t = type(v)
  if t == "table" then
    return M.is_list(v) and "a list" or "a mapping"
  elseif t == "string" then
    return string_format("the string %q", v)
  end
  return string_format("%s %s", t, tostring(v))
end
M.describe = describe

---------------------------------------------------------------------------
-- cursor: typed reads of one mapping of a resource; records its own errors

local Cursor = {}
Cursor.__index = Cursor

-- fields(rep, res, tbl, path) reads tbl; path ("spec.x.") prefixes field names in messages
function M.fields(rep, res, tbl, path)
  return setmetatable({ rep = rep, res = res, tbl = tbl or {}, path = path or "", failed = false }, Cursor)
end

function Cursor:field(key)
  return self.path .. key
end

function Cursor:fail(key, msg)
  self.failed = true
  self.rep:error(self.res, self:field(key), msg, self.tbl, key)
end

-- a missing field has no line of its own: point at the resource
function Cursor:missing(key, msg)
  self.failed = true
  self.rep:error(self.res, self:field(key), msg or "required")
end

function Cursor:warn(key, msg)
  self.rep:warning(self.res, self:field(key), msg, self.tbl, key)
end

-- value of key, with YAML null read as absent
function Cursor:raw(key)
  local v = self.tbl[key]
  if v == NULL then
    return nil
  end
  return v
end

function Cursor:has(key)
  return self:raw(key) ~= nil
end

function Cursor:line(key)
  return M.line_of(self.res, self.tbl, key)
end

function Cursor:string(key, required)
  local v = self:raw(key)
  if v == nil then
    if required then
      self:missing(key)
    end
    return nil
  end
  if type(v) ~= "string" then
    self:fail(key, "must be a string, not " .. describe(v))
    return nil
  end
  return v
end

function Cursor:bool(key, default)
  local v = self:raw(key)
  if v == nil then
    return default
  end
  if type(v) ~= "boolean" then
    self:fail(key, "must be true or false, not " .. describe(v))
    return default
  end
  return v
end

-- int(key, default, min, max): integers only; "3000" (a string) is refused
function Cursor:int(key, default, min, max)
  local v = self:raw(key)
  if v == nil then
    return default
  end
  if not M.is_integer(v) then
    self:fail(key, "must be an integer, not " .. describe(v))
    return default
  end
  if (min and v < min) or (max and v > max) then
    local range
    if min and max then
      range = string_format("between %d and %d", min, max)
    elseif min then
      range = string_format(">= %d", min)
    else
      range = string_format("<= %d", max)
    end
    self:fail(key, string_format("must be %s, not %d", range, v))
    return default
  end
  return v
end

-- a YAML mapping (string keys); nil when absent
function Cursor:map(key)
  local v = self:raw(key)
  if v == nil then
    return nil
  end
  if type(v) ~= "table" or not M.is_map(v) then
    self:fail(key, "must be a mapping, not " .. describe(v))
    return nil
  end
  return v
end

-- a nested cursor over the mapping at key (an empty one when absent)
function Cursor:sub(key)
  local m = self:map(key)
  return M.fields(self.rep, self.res, m or {}, self.path .. key .. "."), m ~= nil
end

-- a list of strings; a single string is accepted and wrapped (Ambassador does the same)
function Cursor:string_list(key)
  local v = self:raw(key)
  if v == nil then
    return nil
  end
  if type(v) == "string" then
    return { v }
  end
  if type(v) ~= "table" or not M.is_list(v) then
    self:fail(key, "must be a list of strings, not " .. describe(v))
    return nil
  end
  local out = {}
  for i = 1, #v do
    if type(v[i]) ~= "string" then
      self.failed = true
      self.rep:error(self.res, self:field(key) .. "[" .. i .. "]", "must be a string, not " .. describe(v[i]), v, i)
      return nil
    end
    out[i] = v[i]
  end
  return out
end

-- a mapping of string -> string (labels, matchLabels). Label values that YAML
-- typed (version: 1) are compared as text, as Kubernetes would have them.
function Cursor:string_map(key)
  local m = self:map(key)
  if not m then
    return nil
  end
  local out = {}
  for k, v in pairs(m) do
    local t = type(v)
    if t == "string" then
      out[k] = v
    elseif t == "number" or t == "boolean" then
      out[k] = tostring(v)
    else
      self.failed = true
      self.rep:error(self.res, self:field(key) .. "." .. k, "must be a string, not " .. describe(v), m, k)
    end
  end
  return out
end

-- Warns about the keys of this mapping that are neither handled (known) nor
-- planned (todo: field -> message); "unknown field" for the rest.
function Cursor:check_keys(known, todo, todo_msg)
  local keys = M.sorted_keys(self.tbl)
  -- flat (annotation-style) resources keep apiVersion, kind, name... beside their fields
  local meta = self.path == "" and self.res.meta_keys or nil
  for i = 1, #keys do
    local k = keys[i]
    if not known[k] and not (meta and meta[k]) then
      if todo and todo[k] then
        self:warn(k, todo_msg or "not implemented yet, ignored")
      else
        self:warn(k, "unknown field, ignored")
      end
    end
  end
end

function M.set(list)
  local s = {}
  for i = 1, #list do
    s[list[i]] = true
  end
  return s
end

function M.join(list, sep)
  return table_concat(list, sep or ", ")
end

return M
