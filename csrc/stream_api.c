/* The nu_ffi_* exports that act on a stream: thin checks, then hdr_* and
 * stream_* calls. Declared once in ffi.h. */
#include "config.h"
#include "ffi.h"
#include "hdr.h"
#include "log.h"
#include "lua_bridge.h"
#include "nuncio.h"
#include "stream.h"
#include "gen.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static struct hdr_map *map_of(struct stream *st, int which)
{
    switch (which) {
    case STREAM_MAP_REQUEST:
        return &st->x.req.hdrs;
    case STREAM_MAP_RESPONSE:
        return &st->x.resp.hdrs;
    case STREAM_MAP_TRAILERS:
        return &st->x.resp.trailers;
    case STREAM_MAP_REQUEST_TRAILERS:
        return &st->x.req.trailers;
    default:
        return NULL;
    }
}

/* A map may change only until it has been handed to the codec that sends it. */
static int writable(struct stream *st, int which)
{
    if (!stream_is_alive(st))
        return 0;
    switch (which) {
    case STREAM_MAP_REQUEST:
    case STREAM_MAP_REQUEST_TRAILERS:
        return !(st->flags & ST_F_PROXYING);
    case STREAM_MAP_RESPONSE:
        return !(st->flags & ST_F_RESP_STARTED);
    case STREAM_MAP_TRAILERS:
        return !(st->flags & ST_F_RESP_STARTED) || st->lua_phase == LB_PHASE_RESPONSE_TRAILERS;
    default:
        return 0;
    }
}

int nu_ffi_hdr_count(struct stream *st, int which, const char *name, size_t nlen)
{
    struct hdr_map *m = map_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    return name ? hdr_count(m, name, nlen) : (int)m->n;
}

int nu_ffi_hdr_get(struct stream *st, int which, const char *name, size_t nlen, int k, const char **value, size_t *vlen)
{
    struct hdr_map *m = map_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    int i = hdr_find(m, name, nlen, k);
    if (i < 0)
        return NU_FFI_DECLINED;
    *value = m->v[i].value;
    *vlen = m->v[i].vlen;
    return NU_FFI_OK;
}

/* The first value and how many there are, in one call: Envoy's get() joins
 * repeated values, and a second FFI call per get() cost more than the scan. */
int nu_ffi_hdr_get_n(struct stream *st, int which, const char *name, size_t nlen, const char **value, size_t *vlen)
{
    struct hdr_map *m = map_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    int i = hdr_find(m, name, nlen, 0);
    if (i < 0)
        return 0;
    *value = m->v[i].value;
    *vlen = m->v[i].vlen;
    return hdr_count(m, name, nlen);
}

int nu_ffi_hdr_at(struct stream *st, int which, int i, const char **name, size_t *nlen, const char **value,
                  size_t *vlen)
{
    struct hdr_map *m = map_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    if (i < 0 || (uint32_t)i >= m->n)
        return NU_FFI_DECLINED;
    *name = m->v[i].name;
    *nlen = m->v[i].nlen;
    *value = m->v[i].value;
    *vlen = m->v[i].vlen;
    return NU_FFI_OK;
}

int nu_ffi_hdr_set(struct stream *st, int which, const char *name, size_t nlen, const char *value, size_t vlen)
{
    struct hdr_map *m = map_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    if (!writable(st, which))
        return NU_FFI_BAD_CONTEXT;
    return hdr_set(m, name, nlen, value, vlen) == NU_OK ? NU_FFI_OK : NU_FFI_ERROR;
}

int nu_ffi_hdr_add(struct stream *st, int which, const char *name, size_t nlen, const char *value, size_t vlen)
{
    struct hdr_map *m = map_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    if (!writable(st, which))
        return NU_FFI_BAD_CONTEXT;
    return hdr_add(m, name, nlen, value, vlen) == NU_OK ? NU_FFI_OK : NU_FFI_ERROR;
}

int nu_ffi_hdr_remove(struct stream *st, int which, const char *name, size_t nlen)
{
    struct hdr_map *m = map_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    if (!writable(st, which))
        return NU_FFI_BAD_CONTEXT;
    return hdr_remove(m, name, nlen);
}

/* x-request-id as Envoy makes it: a random UUID v4. Made here rather than in
 * Lua (string.format over six math.random calls, then a new interned string)
 * because it runs for every request: ~160 ns there, a few ns here. Each
 * thread has its own xoshiro256** state, seeded from getrandom(). */
static _Thread_local uint64_t rid_state[4];

static uint64_t rid_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rid_next(void)
{
    uint64_t *s = rid_state;
    if (!(s[0] | s[1] | s[2] | s[3])) {
        if (getrandom(s, sizeof rid_state, 0) != (ssize_t)sizeof rid_state || !(s[0] | s[1] | s[2] | s[3])) {
            /* No entropy source: ids need only be unique, not secret. splitmix64 spreads the seed. */
            uint64_t z = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)s;
            for (int i = 0; i < 4; i++) {
                z += 0x9e3779b97f4a7c15ull;
                uint64_t x = z;
                x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
                x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
                s[i] = x ^ (x >> 31);
            }
        }
    }
    uint64_t out = rid_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rid_rotl(s[3], 45);
    return out;
}

int nu_ffi_hdr_set_request_id(struct stream *st)
{
    if (!writable(st, STREAM_MAP_REQUEST))
        return NU_FFI_BAD_CONTEXT;
    uint8_t b[16];
    uint64_t hi = rid_next(), lo = rid_next();
    memcpy(b, &hi, 8);
    memcpy(b + 8, &lo, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hex[] = "0123456789abcdef";
    char id[36];
    for (int i = 0, k = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            id[k++] = '-';
        id[k++] = hex[b[i] >> 4];
        id[k++] = hex[b[i] & 15];
    }
    return hdr_set(&st->x.req.hdrs, "x-request-id", 12, id, sizeof id) == NU_OK ? NU_FFI_OK : NU_FFI_ERROR;
}

int nu_ffi_stream_info(struct stream *st, struct nu_stream_info *out)
{
    out->stream_id = st->id;
    out->conn_id = st->conn_id;
    out->grpc = (st->flags & ST_F_GRPC) != 0;
    out->secure = (st->flags & ST_F_SECURE) != 0;
    out->phase = st->lua_phase;
    out->local_port = st->local_port;
    memcpy(out->peer, st->peer, sizeof out->peer);
    return NU_FFI_OK;
}

/* NU_FFI flag bits (lua/nuncio/ffi.lua FLAG_*): 1 gRPC request, 2 secure. */
int nu_ffi_stream_flags(struct stream *st)
{
    return ((st->flags & ST_F_GRPC) ? 1 : 0) | ((st->flags & ST_F_SECURE) ? 2 : 0) | (st->x.down.http1 ? 4 : 0);
}

int nu_ffi_stream_set_upstream(struct stream *st, int cluster, int timeout_ms, int policy, int route)
{
    if (st->lua_phase != LB_PHASE_REQUEST_HEADERS || (st->flags & (ST_F_PROXYING | ST_F_REPLIED)))
        return NU_FFI_BAD_CONTEXT;
    if (cluster < 0 || timeout_ms < 0 || policy < 0 || (st->gen && (size_t)policy >= st->gen->cfg.n_policies))
        return NU_FFI_ERROR;
    st->route = st->gen && route >= 0 && (size_t)route < st->gen->cfg.n_routes ? route : -1;
    st->cluster = cluster;
    st->timeout_ms = timeout_ms;
    st->policy = policy;
    return NU_FFI_OK;
}

int nu_ffi_stream_get_upstream(struct stream *st, int *cluster, int *timeout_ms)
{
    *cluster = st->cluster;
    *timeout_ms = st->timeout_ms;
    return st->cluster < 0 ? NU_FFI_DECLINED : NU_FFI_OK;
}

int nu_ffi_stream_respond(struct stream *st, int status, int grpc_status, const char *body, size_t blen,
                          const char *details, size_t dlen)
{
    if (st->lua_phase != LB_PHASE_REQUEST_HEADERS && st->lua_phase != LB_PHASE_RESPONSE_HEADERS)
        return NU_FFI_BAD_CONTEXT;
    if ((st->flags & ST_F_RESP_STARTED) || !stream_is_alive(st))
        return NU_FFI_BAD_CONTEXT;
    if (status < 200 || status > 599)
        return NU_FFI_ERROR;
    if (grpc_status < -1 || grpc_status > 16)
        return NU_FFI_ERROR;
    return stream_prepare_reply(st, status, grpc_status, body, blen, details, dlen) == NU_OK ? NU_FFI_OK : NU_FFI_ERROR;
}

int nu_ffi_stream_get_reply(struct stream *st, int *status, char *body, size_t cap, size_t *blen)
{
    if (!(st->flags & ST_F_REPLIED))
        return NU_FFI_DECLINED;
    *status = st->reply_status;
    /* Peek without draining: copy chunk by chunk. */
    size_t n = 0;
    for (struct chunk *c = st->x.resp.body.head; c && n < cap; c = c->next) {
        size_t k = c->len - c->off;
        if (k > cap - n)
            k = cap - n;
        memcpy(body + n, c->data + c->off, k);
        n += k;
    }
    *blen = st->x.resp.body.bytes;
    return NU_FFI_OK;
}

static struct msg *msg_of(struct stream *st, int which)
{
    return which == 0 ? &st->x.req : which == 1 ? &st->x.resp : NULL;
}

int nu_ffi_stream_body_wait(struct stream *st, int which, size_t *len)
{
    struct msg *m = msg_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    int phase = which == 0 ? LB_PHASE_REQUEST_HEADERS : LB_PHASE_RESPONSE_HEADERS;
    if (st->lua_phase != phase || !stream_is_alive(st))
        return NU_FFI_BAD_CONTEXT;
    if (m->end || (st->flags & ST_F_TEST)) {
        *len = m->body.bytes;
        return NU_FFI_OK;
    }
    /* The stream resumes the phase's coroutine when the body has ended. */
    st->flags |= ST_F_WAIT_BODY;
    st->wait_msg = which;
    return NU_FFI_AGAIN;
}

int nu_ffi_stream_body_copy(struct stream *st, int which, char *dst, size_t cap, size_t *n)
{
    struct msg *m = msg_of(st, which);
    if (!m)
        return NU_FFI_ERROR;
    size_t k = 0;
    for (struct chunk *c = m->body.head; c && k < cap; c = c->next) {
        size_t len = c->len - c->off;
        if (len > cap - k)
            len = cap - k;
        memcpy(dst + k, c->data + c->off, len);
        k += len;
    }
    *n = k;
    return NU_FFI_OK;
}

/* Counters Lua code reports; per thread, since each worker runs its own VM. */
static _Thread_local uint64_t lua_counters[STREAM_API_COUNTERS];

int nu_ffi_stats_add(int counter, int n)
{
    if (counter < 0 || counter >= STREAM_API_COUNTERS || n < 0)
        return NU_FFI_ERROR;
    lua_counters[counter] += (uint64_t)n;
    return NU_FFI_OK;
}

uint64_t stream_api_counter(int counter)
{
    return counter >= 0 && counter < STREAM_API_COUNTERS ? lua_counters[counter] : 0;
}

int nu_ffi_log_write(int level, const char *msg, size_t len)
{
    if (level < NU_LOG_DEBUG || level > NU_LOG_ERROR)
        level = NU_LOG_INFO;
    if (nu_log_enabled(level))
        nu_log(level, "%.*s", (int)(len > 4000 ? 4000 : len), msg);
    return NU_FFI_OK;
}

int nu_ffi_test_stream_new(struct stream **out, int grpc)
{
    *out = stream_new_test(grpc);
    return *out ? NU_FFI_OK : NU_FFI_ERROR;
}

int nu_ffi_test_stream_set_phase(struct stream *st, int phase)
{
    if (!(st->flags & ST_F_TEST))
        return NU_FFI_BAD_CONTEXT;
    st->lua_phase = phase;
    if (phase == LB_PHASE_RESPONSE_HEADERS) {
        /* In specs the "upstream" response is whatever the spec put in the map. */
        st->flags |= ST_F_PROXYING;
    }
    return NU_FFI_OK;
}

int nu_ffi_test_stream_set_body(struct stream *st, int which, const char *data, size_t len)
{
    struct msg *m = msg_of(st, which);
    if (!(st->flags & ST_F_TEST) || !m)
        return NU_FFI_BAD_CONTEXT;
    chunkq_clear(&m->body);
    if (chunkq_append(&m->body, (const uint8_t *)data, len) != NU_OK)
        return NU_FFI_ERROR;
    m->end = 1;
    return NU_FFI_OK;
}

int nu_ffi_test_stream_set_conn(struct stream *st, int local_port, int secure)
{
    if (!(st->flags & ST_F_TEST))
        return NU_FFI_BAD_CONTEXT;
    st->local_port = local_port;
    if (secure)
        st->flags |= ST_F_SECURE | ST_F_TLS;
    else
        st->flags &= ~(ST_F_SECURE | ST_F_TLS);
    return NU_FFI_OK;
}

int nu_ffi_test_stream_free(struct stream *st)
{
    if (!(st->flags & ST_F_TEST))
        return NU_FFI_BAD_CONTEXT;
    stream_free(st);
    return NU_FFI_OK;
}
