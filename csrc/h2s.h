/* Downstream HTTP/2 codec: an nghttp2 server session on an accepted conn. */
#ifndef NUNCIO_H2S_H
#define NUNCIO_H2S_H

struct conn;
struct exchange;

/* Makes the exchange for a new downstream stream; NULL refuses it. */
typedef struct exchange *(*h2s_open_fn)(void *arg, struct conn *c);

#include <stdint.h>

/* What a listener asks of its HTTP/2 connections. */
struct h2s_opts {
    unsigned max_concurrent_streams; /* SETTINGS_MAX_CONCURRENT_STREAMS */
    uint32_t max_header_list_size; /* bytes of one header block, as HPACK decodes it (Module max_request_headers_kb) */
    double idle_timeout;           /* a connection without a stream that long gets GOAWAY and is closed (s; 0: never) */
    double header_timeout;         /* the longest a client may take over the preface and SETTINGS, and over each
                                    * header block (s; 0: no limit) */
};

int h2s_attach(struct conn *c, h2s_open_fn open, void *arg, const struct h2s_opts *o);

#endif
