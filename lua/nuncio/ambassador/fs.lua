-- nuncio.ambassador.fs: reading configuration files and walking folders.
--
-- The proxy's Lua state has no lfs, so folders are listed through the FFI
-- (opendir/readdir). Where the dirent layout is not the 64-bit glibc one we
-- know, lfs is used if present; otherwise folders are refused with a clear error.

local io_open = io.open
local table_sort = table.sort
local table_concat = table.concat
local string_sub = string.sub
local pcall = pcall
local tostring = tostring
local require = require

local M = {}

local MAX_DEPTH = 32 -- symlink loops end here instead of recursing forever

local ffi_ok, ffi = pcall(require, "ffi")
local dir_backend

if ffi_ok and ffi.os == "Linux" and ffi.abi("64bit") then
  -- struct dirent as glibc lays it out on every 64-bit Linux target.
  -- pcall: another module may already have declared the same names.
  pcall(ffi.cdef, [[
    typedef struct nu_dir_s nu_dir_t;
    struct nu_dirent {
      uint64_t d_ino;
      int64_t d_off;
      unsigned short d_reclen;
      unsigned char d_type;
      char d_name[256];
    };
    nu_dir_t *opendir(const char *name);
    struct nu_dirent *readdir(nu_dir_t *dirp);
    int closedir(nu_dir_t *dirp);
  ]])
  local C = ffi.C
  local ffi_string = ffi.string
  dir_backend = {
    is_dir = function(path)
      local d = C.opendir(path)
      if d == nil then
        return false
      end
      C.closedir(d)
      return true
    end,
    entries = function(path)
      local d = C.opendir(path)
      if d == nil then
        return nil
      end
      local names = {}
      while true do
        local e = C.readdir(d)
        if e == nil then
          break
        end
        names[#names + 1] = ffi_string(e.d_name)
      end
      C.closedir(d)
      return names
    end,
  }
else
  local lfs_ok, lfs = pcall(require, "lfs")
  if lfs_ok then
    dir_backend = {
      is_dir = function(path)
        return lfs.attributes(path, "mode") == "directory"
      end,
      entries = function(path)
        local ok, iter, state = pcall(lfs.dir, path)
        if not ok then
          return nil
        end
        local names = {}
        for name in iter, state do
          names[#names + 1] = name
        end
        return names
      end,
    }
  end
end

-- read(path) -> text | nil, err
function M.read(path)
  local f, err = io_open(path, "rb")
  if not f then
    return nil, err
  end
  local text, rerr = f:read("*a")
  f:close()
  if not text then
    return nil, path .. ": " .. tostring(rerr)
  end
  return text
end

function M.is_dir(path)
  return dir_backend ~= nil and dir_backend.is_dir(path)
end

local function is_yaml_name(name)
  return name:match("%.ya?ml$") ~= nil
end

local function walk(path, depth, out)
  if depth > MAX_DEPTH then
    return nil, path .. ": folders nested deeper than " .. MAX_DEPTH .. " levels (symlink loop?)"
  end
  local names = dir_backend.entries(path)
  if not names then
    return nil, path .. ": cannot list folder"
  end
  for i = 1, #names do
    local name = names[i]
    -- dot files are editor swap files and the like, never configuration
    if string_sub(name, 1, 1) ~= "." then
      local full = path .. "/" .. name
      if dir_backend.is_dir(full) then
        local ok, err = walk(full, depth + 1, out)
        if not ok then
          return nil, err
        end
      elseif is_yaml_name(name) then
        out[#out + 1] = full
      end
    end
  end
  return true
end

-- yaml_files(dir) -> { path, ... } sorted byte-wise, or nil, err
function M.yaml_files(dir)
  if not dir_backend then
    return nil, dir .. ": listing folders is not supported on this platform"
  end
  local out = {}
  local ok, err = walk((dir:gsub("/+$", "")), 1, out)
  if not ok then
    return nil, err
  end
  table_sort(out)
  return out
end

-- dirname("a/b/c.yaml") -> "a/b"; dirname("c.yaml") -> "."
function M.dirname(path)
  local d = path:match("^(.*)/[^/]*$")
  if d == nil then
    return "."
  end
  if d == "" then
    return "/"
  end
  return d
end

-- normalize("conf/../examples/./a.yaml") -> "examples/a.yaml" (text only, no symlinks)
function M.normalize(path)
  local absolute = string_sub(path, 1, 1) == "/"
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." and #parts > 0 and parts[#parts] ~= ".." then
      parts[#parts] = nil
    elseif part == ".." and absolute then
      -- "/.." is "/"
    elseif part ~= "." then
      parts[#parts + 1] = part
    end
  end
  local out = table_concat(parts, "/")
  if absolute then
    return "/" .. out
  end
  return out == "" and "." or out
end

-- join(base, rel): rel itself when absolute; the result is normalized
function M.join(base, rel)
  if string_sub(rel, 1, 1) == "/" or base == "." or base == "" then
    return M.normalize(rel)
  end
  return M.normalize(base .. "/" .. rel)
end

return M
