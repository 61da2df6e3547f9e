/* What the two HTTP/2 codecs share: session options and header lists. */
#ifndef NUNCIO_H2_COMMON_H
#define NUNCIO_H2_COMMON_H

#include <nghttp2/nghttp2.h>

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
int h2_is_hop_by_hop(const char *name, size_t n, const char *value, size_t vlen);

#endif
