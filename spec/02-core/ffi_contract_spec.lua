-- The C <-> Lua contract is written twice (csrc/ffi.h for C, the ffi.cdef in
-- lua/nuncio/ffi.lua for LuaJIT); this spec keeps the two identical and
-- checks that the core library really exports every declared function.
local src = os.getenv("NUNCIO_SRC") or "."

local function read(path)
  local f = assert(io.open(src .. "/" .. path, "r"))
  local s = f:read("*a")
  f:close()
  return s
end

local function c_block()
  local h = read("csrc/ffi.h")
  return assert(h:match("/%* FFI%-BEGIN %*/\n(.-)/%* FFI%-END %*/"), "FFI markers missing in csrc/ffi.h")
end

local function lua_block()
  local l = read("lua/nuncio/ffi.lua")
  return assert(l:match("%-%- FFI%-BEGIN\nffi%.cdef%[%[\n(.-)%]%]\n%-%- FFI%-END"), "FFI markers missing in ffi.lua")
end

describe("the FFI contract", function()
  it("declares the same text in csrc/ffi.h and lua/nuncio/ffi.lua", function()
    assert.are.equal(c_block(), lua_block())
  end)

  it("names every export nu_ffi_<noun>_<verb> returning an int", function()
    local n = 0
    for line in c_block():gmatch("[^\n]+") do
      local ret, name = line:match("^(%w+) (nu_ffi_[%w_]+)%(")
      if name then
        n = n + 1
        assert.are.equal("int", ret, name .. " must return int")
        assert.truthy(name:match("^nu_ffi_%l+_%l+"), name .. " is not nu_ffi_<noun>_<verb>")
      end
    end
    assert.is_true(n >= 10)
  end)

  it("is exported by the core library", function()
    local nffi = require("nuncio.ffi")
    for name in c_block():gmatch("(nu_ffi_[%w_]+)%(") do
      assert.is_not_nil(nffi.C[name], name)
    end
  end)
end)
