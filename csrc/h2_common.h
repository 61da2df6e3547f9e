/* What the two HTTP/2 codecs share: session options and header lists. */
#ifndef NUNCIO_H2_COMMON_H
#define NUNCIO_H2_COMMON_H

#include <nghttp2/nghttp2.h>

#include "buf.h"
#include "conn.h"
#include "hdr.h"

/* Per-stream receive window we advertise. Bytes are acknowledged only once
 * passed on, so this bounds what one stream can make the proxy buffer. */
#define H2_STREAM_WINDOW (1 << 20)
#define H2_CONN_WINDOW (16 << 20)

/* Fills nv from m: pseudo-headers first (HTTP/2 demands it), then the rest
 * minus connection-specific ones. nv must hold m->n entries. Borrowed: nv
 * points into m, and nghttp2 copies on submit. Returns the count. */
size_t h2_nv_from_hdrs(const struct hdr_map *m, nghttp2_nv *nv);
/* Options both codecs use: manual window updates (back-pressure). */
nghttp2_option *h2_new_option(void);
int h2_send_settings(nghttp2_session *ng, uint32_t max_streams);
/* The DATA path without nghttp2's own copy: the data providers answer with
 * NGHTTP2_DATA_FLAG_NO_COPY (a frame never spans chunks, see
 * h2_data_length) and this puts the whole frame (header, any padding,
 * `length` body bytes taken from q) on c's output: a cleartext conn gets the
 * chunk itself, else the bytes are copied into c->wbuf. Returns 0 or
 * NGHTTP2_ERR_PAUSE (the output reached CONN_WBUF_HIGH, so
 * nghttp2_session_mem_send returns and the conn writes before more frames are
 * made) for the nghttp2_send_data_callback to return;
 * NGHTTP2_ERR_CALLBACK_FAILURE when out of memory (nothing was written then)
 * or q holds less than length. */
int h2_write_data_frame(struct conn *c, const nghttp2_frame *frame, const uint8_t *framehd, struct chunkq *q,
                        size_t length);
/* How many bytes of q the next DATA frame (at most max) carries: no more than
 * the head chunk holds, so that a cleartext conn can take the chunk whole. */
static inline size_t h2_data_length(const struct chunkq *q, size_t max)
{
    size_t n = chunkq_head_len(q);
    return n < max ? n : max;
}
int h2_is_hop_by_hop(const char *name, size_t n, const char *value, size_t vlen);

#endif
