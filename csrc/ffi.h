/* The C <-> Lua contract. lua/nuncio/ffi.lua carries the same text between
 * the markers in its ffi.cdef, and spec/02-core/ffi_contract_spec.lua checks
 * that they match. Rules: every export returns an int (NU_FFI_*), never
 * raises, never longjmps, never calls back into Lua. Pointers handed to Lua
 * are borrowed until the next call on the same stream; Lua copies them with
 * ffi.string. Bytes Lua hands to C are copied before the call returns. */
#ifndef NUNCIO_FFI_H
#define NUNCIO_FFI_H

#include <stddef.h>
#include <stdint.h>

#define NU_FFI_OK 0
#define NU_FFI_ERROR (-1)
#define NU_FFI_AGAIN (-2) /* will complete later: yield, then call again */
#define NU_FFI_DECLINED (-5)
#define NU_FFI_BAD_CONTEXT (-101)

/* FFI-BEGIN */
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
/* FFI-END */

#endif
