/* Downstream HTTP/1.1 codec: http-parser on an accepted conn, one exchange at
 * a time; pipelined requests wait, unparsed, until the one before is answered. */
#ifndef NUNCIO_H1S_H
#define NUNCIO_H1S_H

#include <stddef.h>

struct conn;
struct exchange;

/* Request heads (request line and headers together) above this are refused
 * with 431 unless h1s_opts says otherwise; Envoy's max_request_headers_kb default is 60. */
#define H1S_MAX_HEADER_BYTES (60 * 1024)
/* A request line above this is refused with 414 (Envoy counts it in the 60 KiB). */
#define H1S_MAX_REQUEST_LINE (60 * 1024)
/* More header fields than this: 431 (Envoy's max_request_headers_count). */
#define H1S_MAX_HEADERS 100
/* Request body bytes handed to the stream and not yet taken by the upstream:
 * above this the socket is not read (HTTP/2's per-stream window, for HTTP/1);
 * the default of h1s_opts.body_window (Envoy's 1 MiB buffer limit). */
#define H1S_BODY_WINDOW (1024 * 1024)

/* Makes the exchange for a new request; NULL refuses it (same as h2s_open_fn). */
typedef struct exchange *(*h1s_open_fn)(void *arg, struct conn *c);
/* The connection's first bytes are the HTTP/2 client preface: attach the
 * HTTP/2 codec to c (its handler replaces ours). Returns 0 or an nu_err. */
typedef int (*h1s_to_h2_fn)(struct conn *c, void *arg);

struct h1s_opts {
    double idle_timeout;   /* no request for this long: closed (s; 0: never) */
    double header_timeout; /* first byte of a request to the end of its headers (s; 0: no limit) */
    int enable_http10;     /* HTTP/1.0 requests are served; otherwise 426 */
    const char *server_name; /* `server` of the replies the codec makes itself (borrowed; NULL: none) */
    h1s_to_h2_fn to_h2;    /* non-NULL: hand the connection over when it starts with the h2 preface */
    void *to_h2_arg;
    size_t max_header_bytes; /* request line and headers (and, apart, trailers) above this: 431 (414 while
                              * still in the request line); 0: H1S_MAX_HEADER_BYTES (Module max_request_headers_kb) */
    size_t body_window;      /* request body handed on and not yet taken above this: the client is not read;
                              * 0: H1S_BODY_WINDOW (Module buffer_limit_bytes) */
};

int h1s_attach(struct conn *c, h1s_open_fn open, void *arg, const struct h1s_opts *o);

#endif
