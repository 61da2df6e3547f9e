/* Types only: what a codec and the stream that owns an exchange say to each
 * other. Codecs include this, never stream.h: they report events through the
 * function pointers the stream registered, and the stream drives them through
 * the side-ops table, so no file calls into a file that calls back into it. */
#ifndef NUNCIO_EXCHANGE_H
#define NUNCIO_EXCHANGE_H

#include <stdint.h>

#include "buf.h"
#include "hdr.h"

struct exchange;

/* One direction of an exchange: what the receiving codec fills and the
 * sending codec drains. Owned by the stream. */
struct msg {
    struct hdr_map hdrs;
    struct hdr_map trailers;
    struct chunkq body;
    uint64_t body_bytes; /* total received, for logs and limits */
    unsigned end : 1;    /* the sender ended the message (END_STREAM seen) */
};

/* What the stream can ask of a codec for its side of the exchange. */
struct side_ops {
    /* Send the message head this side carries (request upstream, response downstream). */
    int (*submit_headers)(struct exchange *x);
    /* Body bytes, the end or trailers were queued in the message this side sends. */
    void (*resume)(struct exchange *x);
    /* Abort this side's stream with an HTTP/2 error code. */
    void (*reset)(struct exchange *x, uint32_t h2_error);
    /* n body bytes this side received were passed on: the peer may send n more. */
    void (*consume)(struct exchange *x, size_t n);
};

/* Events a codec reports about its side of an exchange. */
struct exchange_events {
    void (*on_headers)(struct exchange *x);
    void (*on_data)(struct exchange *x, const uint8_t *p, size_t n); /* borrowed: valid during the call */
    void (*on_end)(struct exchange *x);
    /* Optional. A codec that reports a read's request heads first (side.queued
     * set during on_headers) calls this for each before that request's later
     * events: the stream starts its upstream now, if it deferred that. */
    void (*on_start)(struct exchange *x);
    /* The codec's data provider handed n bytes of the message it sends to the wire. */
    void (*on_body_taken)(struct exchange *x, size_t n);
    /* The codec's stream is gone; it will not touch the exchange again.
     * reason is NU_OK for a normal close, else an nu_err category; detail
     * (borrowed, may be NULL) says what failed, e.g. a TLS verify error. */
    void (*on_close)(struct exchange *x, uint32_t h2_error, int reason, const char *detail);
};

struct side {
    const struct side_ops *ops; /* NULL while no codec is attached */
    void *codec;                /* the codec's connection object */
    int32_t id;                 /* HTTP/2 stream id on that connection, -1 before one exists */
    uint64_t unconsumed;        /* bytes this side received and has not yet credited back */
    unsigned headers_seen : 1;  /* the message head from this side arrived */
    unsigned http1 : 1;         /* the codec speaks HTTP/1.x (no trailers unless chunked) */
    unsigned queued : 1;        /* the codec holds events of this side it has not reported yet (see on_start) */
    struct side *prev, *next;   /* the codec's list of its open sides */
    struct exchange *x;
};

struct exchange {
    struct msg req;  /* downstream -> upstream */
    struct msg resp; /* upstream -> downstream */
    struct side down, up;
    const struct exchange_events *down_ev, *up_ev;
};

#endif
