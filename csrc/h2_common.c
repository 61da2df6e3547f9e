#include "h2_common.h"
#include "nuncio.h"

#include <string.h>

/* value (8 bytes) is "trailers" in any case, inline: strncasecmp's call
 * cost more than the compare, for every gRPC request's te. Setting bit 0x20
 * maps a byte onto a lower-case letter only from that letter or its upper
 * case, so this is exact. */
static int is_trailers(const char *value)
{
    uint64_t v, want;
    memcpy(&v, value, 8);
    memcpy(&want, "trailers", 8);
    return (v | 0x2020202020202020ull) == want;
}

int h2_is_hop_by_hop(const char *name, size_t n, const char *value, size_t vlen)
{
    /* Dispatched on length: it runs for every header of every message, and
     * most names have a length no hop-by-hop name has. */
    switch (n) {
    case 2: /* te is allowed in HTTP/2 only as "trailers", which gRPC needs. */
        return memcmp(name, "te", 2) == 0 && !(vlen == 8 && is_trailers(value));
    case 7:
        return memcmp(name, "upgrade", 7) == 0;
    case 10:
        return memcmp(name, "connection", 10) == 0 || memcmp(name, "keep-alive", 10) == 0;
    case 14:
        return memcmp(name, "http2-settings", 14) == 0;
    case 16:
        return memcmp(name, "proxy-connection", 16) == 0;
    case 17:
        return memcmp(name, "transfer-encoding", 17) == 0;
    default:
        return 0;
    }
}

/* NO_COPY: nghttp2 reads the strings from the map when it serializes the
 * frame (at the next flush) instead of copying every header at submit. The
 * maps stay put until then: a map no longer changes once handed to its codec
 * (stream_api.c's writable(), and the stream only rebuilds a response before
 * it started), and an exchange is freed only after nghttp2 closed its stream,
 * when no frame of it is left to serialize (a closed stream's queued frames
 * are dropped unread). */
static void set_nv(nghttp2_nv *nv, const struct hdr_entry *e)
{
    nv->name = (uint8_t *)e->name;
    nv->namelen = e->nlen;
    nv->value = (uint8_t *)e->value;
    nv->valuelen = e->vlen;
    nv->flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    /* A fresh UUID every request: indexing it (nghttp2 would) only churns
     * both HPACK tables, an insert and an eviction each side per request,
     * and pushes out entries that do repeat. Sent as a literal instead. */
    if (e->nlen == 12 && memcmp(e->name, "x-request-id", 12) == 0)
        nv->flags |= NGHTTP2_NV_FLAG_NO_INDEX;
}

size_t h2_nv_from_hdrs(const struct hdr_map *m, nghttp2_nv *nv)
{
    /* Pseudo-headers go first. They mostly come first in the map already
     * (decoded that way, and filters add regular fields at the end), so one
     * pass does; a pseudo-header after a regular field starts over in two. */
    size_t k = 0;
    int regular = 0;
    for (uint32_t i = 0; i < m->n; i++) {
        const struct hdr_entry *e = &m->v[i];
        if (e->nlen == 0)
            continue;
        if (e->name[0] == ':') {
            if (regular)
                goto two_passes;
            set_nv(&nv[k++], e);
        } else if (!h2_is_hop_by_hop(e->name, e->nlen, e->value, e->vlen)) {
            regular = 1;
            set_nv(&nv[k++], e);
        }
    }
    return k;
two_passes:
    k = 0;
    for (uint32_t i = 0; i < m->n; i++)
        if (m->v[i].nlen > 0 && m->v[i].name[0] == ':')
            set_nv(&nv[k++], &m->v[i]);
    for (uint32_t i = 0; i < m->n; i++) {
        const struct hdr_entry *e = &m->v[i];
        if (e->nlen == 0 || e->name[0] == ':' || h2_is_hop_by_hop(e->name, e->nlen, e->value, e->vlen))
            continue;
        set_nv(&nv[k++], e);
    }
    return k;
}

#define H2_MOVE_MIN 4096

int h2_write_data_frame(struct conn *c, const nghttp2_frame *frame, const uint8_t *framehd, struct chunkq *q,
                        size_t length)
{
    struct buf *wb = &c->wbuf;
    size_t padlen = frame->data.padlen;
    /* Small bodies (unary gRPC) are cheaper copied than written as an iovec of their own. */
    if (!c->tls && padlen == 0 && length >= H2_MOVE_MIN && length == chunkq_head_len(q)) {
        if (buf_append(wb, framehd, 9) != NU_OK)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        conn_queue_chunk(c, chunkq_take_head(q));
        return conn_pending(c) >= CONN_WBUF_HIGH ? NGHTTP2_ERR_PAUSE : 0;
    }
    /* Reserve the whole frame first: a frame cut short would corrupt the connection. */
    if (q->bytes < length || buf_reserve(wb, 9 + padlen + length) != NU_OK)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    uint8_t *p = wb->data + wb->len;
    memcpy(p, framehd, 9);
    p += 9;
    if (padlen > 0)
        *p++ = (uint8_t)(padlen - 1);
    p += chunkq_read(q, p, length);
    if (padlen > 1) {
        memset(p, 0, padlen - 1);
        p += padlen - 1;
    }
    wb->len = (size_t)(p - wb->data);
    return conn_pending(c) >= CONN_WBUF_HIGH ? NGHTTP2_ERR_PAUSE : 0;
}

nghttp2_option *h2_new_option(void)
{
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0)
        return NULL;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    return opt;
}

int h2_send_settings(nghttp2_session *ng, uint32_t max_streams)
{
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    int rv = nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, iv, NU_ARRAY_LEN(iv));
    if (rv != 0)
        return NU_ERR_PROTO;
    if (nghttp2_session_set_local_window_size(ng, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) != 0)
        return NU_ERR_PROTO;
    return NU_OK;
}
