-- The only module that declares the C <-> Lua contract and touches the core
-- library. The cdef text below is csrc/ffi.h's FFI block, character for
-- character (spec/02-core/ffi_contract_spec.lua checks it).
local ffi = require("ffi")

local M = {}

-- FFI-BEGIN
ffi.cdef[[
struct stream;
struct nu_stream_info {
    uint64_t stream_id;
    uint64_t conn_id;
    int grpc;
    int secure;
    int phase;
    int local_port;
    char peer[64];
};
int nu_ffi_hdr_count(struct stream *st, int which, const char *name, size_t nlen);
int nu_ffi_hdr_get(struct stream *st, int which, const char *name, size_t nlen, int k, const char **value, size_t *vlen);
int nu_ffi_hdr_get_n(struct stream *st, int which, const char *name, size_t nlen, const char **value, size_t *vlen);
int nu_ffi_hdr_at(struct stream *st, int which, int i, const char **name, size_t *nlen, const char **value, size_t *vlen);
int nu_ffi_hdr_set(struct stream *st, int which, const char *name, size_t nlen, const char *value, size_t vlen);
int nu_ffi_hdr_add(struct stream *st, int which, const char *name, size_t nlen, const char *value, size_t vlen);
int nu_ffi_hdr_remove(struct stream *st, int which, const char *name, size_t nlen);
int nu_ffi_hdr_set_request_id(struct stream *st);
int nu_ffi_stream_info(struct stream *st, struct nu_stream_info *out);
int nu_ffi_stream_flags(struct stream *st);
int nu_ffi_stream_set_upstream(struct stream *st, int cluster, int timeout_ms, int policy, int route);
int nu_ffi_stream_get_upstream(struct stream *st, int *cluster, int *timeout_ms);
int nu_ffi_stream_respond(struct stream *st, int status, int grpc_status, const char *body, size_t blen, const char *details, size_t dlen);
int nu_ffi_stream_get_reply(struct stream *st, int *status, char *body, size_t cap, size_t *blen);
int nu_ffi_stream_body_wait(struct stream *st, int which, size_t *len);
int nu_ffi_stream_body_copy(struct stream *st, int which, char *dst, size_t cap, size_t *n);
int nu_ffi_log_write(int level, const char *msg, size_t len);
int nu_ffi_stats_add(int counter, int n);
int nu_ffi_test_stream_new(struct stream **out, int grpc);
int nu_ffi_test_stream_set_phase(struct stream *st, int phase);
int nu_ffi_test_stream_free(struct stream *st);
int nu_ffi_test_stream_set_body(struct stream *st, int which, const char *data, size_t len);
int nu_ffi_test_stream_set_conn(struct stream *st, int local_port, int secure);
]]
-- FFI-END

M.OK = 0
M.ERROR = -1
M.AGAIN = -2
M.DECLINED = -5
M.BAD_CONTEXT = -101

-- nu_ffi_stream_flags bits: what route() and is_grpc() need, without
-- copying the whole nu_stream_info.
M.FLAG_GRPC = 1
M.FLAG_SECURE = 2
M.FLAG_HTTP1 = 4 -- the client speaks HTTP/1.x

-- Header map selectors (enum stream_map in csrc/stream.h).
M.REQUEST = 0
M.RESPONSE = 1
M.TRAILERS = 2
M.REQUEST_TRAILERS = 3

-- Phases (enum lb_phase in csrc/lua_bridge.h).
M.PHASE_REQUEST_HEADERS = 0
M.PHASE_RESPONSE_HEADERS = 1
M.PHASE_RESPONSE_TRAILERS = 2
M.PHASE_LOG = 3

-- Inside the proxy the core is part of the process (ffi.C); under busted it
-- is loaded from the build folder.
local function load_core()
  local ok = pcall(function() return ffi.C.nu_ffi_log_write end)
  if ok then return ffi.C end
  local path = os.getenv("NUNCIO_CORE")
  if not path or path == "" then
    local src = os.getenv("NUNCIO_SRC") or "."
    path = src .. "/build/libnuncio_core.so"
  end
  return ffi.load(path)
end

M.C = load_core()

-- Scratch out-parameters, reused: no allocation per header read.
M.str_out = ffi.new("const char *[2]")
M.len_out = ffi.new("size_t[2]")
M.int_out = ffi.new("int[2]")
M.info = ffi.new("struct nu_stream_info")
M.stream_out = ffi.new("struct stream *[1]")

--- The C stream behind a phase: the core passes its address as a number
--- (csrc/lua_bridge.c push_stream), which LuaJIT can cast in compiled code.
function M.cast_stream(ud)
  local st = ffi.cast("struct stream *", ud) -- not a tail call (see stream.lua's Headers:get)
  return st
end

return M
