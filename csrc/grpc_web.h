/* gRPC-Web translation without I/O (Envoy's grpc_web filter, behaviour notes
 * §6). One `struct grpc_web` per stream that carries a gRPC-Web request: it
 * decodes the request body (base64 for -text) and re-frames the gRPC response
 * for the browser. stream.c owns the state and feeds it; nothing here knows a
 * socket, a codec or a stream. */
#ifndef NUNCIO_GRPC_WEB_H
#define NUNCIO_GRPC_WEB_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "exchange.h"
#include "hdr.h"

/* Envoy turns at most this much of a non-gRPC response body into grpc-message. */
#define GRPC_WEB_MESSAGE_LIMIT 16384

enum grpc_web_kind {
    GRPC_WEB_NONE = 0,
    GRPC_WEB_BINARY = 1, /* application/grpc-web, application/grpc-web+proto */
    GRPC_WEB_TEXT = 2,   /* application/grpc-web-text, application/grpc-web-text+proto: base64 body */
};

/* How the response is being translated, decided when its head is sent. */
enum grpc_web_resp {
    GRPC_WEB_RESP_UNDECIDED = 0,
    GRPC_WEB_RESP_FRAMES,  /* a gRPC response: frames re-encoded, trailers become the 0x80 frame */
    GRPC_WEB_RESP_COLLECT, /* not gRPC: the body is collected into grpc-message, headers wait for the end */
    GRPC_WEB_RESP_PASS,    /* the collected reply went out: anything after it passes as it is */
};

/* A gRPC frame prefix: flag byte + 4-byte big-endian length. */
struct grpc_web_framer {
    uint8_t hdr[5];
    uint8_t hdr_n;   /* prefix bytes seen of the current frame (5: in its payload) */
    uint32_t left;   /* payload bytes still to come in the current frame */
};

struct grpc_web {
    unsigned text_request : 1;  /* the request body is base64 */
    unsigned text_response : 1; /* `accept` asked for -text: each response frame base64 on its own */
    unsigned failed : 1;        /* the request body was rejected: later bytes are dropped */
    int resp;                   /* enum grpc_web_resp */
    /* Request side. */
    uint8_t dec_left[4]; /* base64 characters of an incomplete 4-char group */
    uint8_t dec_n;
    struct grpc_web_framer req_frames; /* checks the decoded request is whole frames */
    uint8_t *scratch;                  /* decoded bytes handed back to the caller; owned here */
    size_t scratch_cap;
    /* Response side. */
    struct grpc_web_framer resp_frames; /* text mode: where each frame ends */
    uint8_t enc_left[3];                /* text mode: bytes of the current frame not yet a 3-byte group */
    uint8_t enc_n;
    struct buf collect;   /* COLLECT: the non-gRPC body, at most GRPC_WEB_MESSAGE_LIMIT bytes; owned here */
    uint64_t in, out;     /* upstream bytes translated into the response queue, and what they became */
    uint64_t taken;       /* queue bytes the downstream codec took */
    uint64_t credited;    /* upstream bytes credited back so far */
    char status[12];      /* the grpc-status moved into the body, for the access log ("" none) */
    int status_override;  /* COLLECT: a grpc-status nuncio chose for its own reply (-1: map the HTTP status) */
};

/* The gRPC-Web kind of a request content-type: an exact match of the four
 * names (parameters such as "; charset" do not match, as in Envoy). */
int grpc_web_kind(const char *ct, size_t n);

/* New state for a request of that kind; accept is the request's `accept`
 * header (may be NULL). NULL when out of memory. */
struct grpc_web *grpc_web_new(int kind, const char *accept, size_t alen);
void grpc_web_free(struct grpc_web *g);

/* The request head as the gRPC upstream must see it: no content-length,
 * content-type application/grpc, te: trailers, grpc-accept-encoding default. */
int grpc_web_request_headers(struct hdr_map *h);

/* Request body bytes as received. On success *out and *outn are the gRPC bytes to
 * pass on (borrowed from g: valid until the next call). A -text body is
 * decoded by 4-character groups; up to 3 characters wait for the next call.
 * NU_ERR_PROTO: bad base64 (g->failed is set). */
int grpc_web_request_data(struct grpc_web *g, const uint8_t *p, size_t n, const uint8_t **out, size_t *outn);
/* The request body ended. NU_ERR_PROTO when base64 characters are left over
 * (the total is not a multiple of 4); NU_ERR_LIMIT when the last gRPC frame is
 * cut short (its length runs past the body). */
int grpc_web_request_end(struct grpc_web *g);

/* The response head is about to go to the client. headers_only: no body and
 * no trailers follow. Removes content-length, sets the gRPC-Web content-type,
 * and decides g->resp: COLLECT for a non-gRPC response that has a body
 * (Envoy: not 200 + a gRPC content-type, not trailers-only, not already
 * gRPC-Web), FRAMES otherwise. */
int grpc_web_response_headers(struct grpc_web *g, struct hdr_map *h, int headers_only);

/* The whole head step for a response in m about to be sent: decides the
 * mode (once), moves a body already queued in m (a local reply's text, or
 * bytes held for a filter, already credited) through the translation, and
 * for a complete non-gRPC answer writes grpc-message/grpc-status. Sets *wait
 * when the head must wait for the rest of the body (COLLECT). */
int grpc_web_head(struct grpc_web *g, struct msg *m, int *wait);

/* COLLECT: keeps body bytes for grpc-message, up to GRPC_WEB_MESSAGE_LIMIT. */
int grpc_web_collect(struct grpc_web *g, const uint8_t *p, size_t n);
/* COLLECT, at the end: grpc-message (percent-encoded body), grpc-status (from
 * the HTTP status), content-length: 0. The HTTP status is kept, as Envoy does. */
int grpc_web_collected_headers(struct grpc_web *g, struct hdr_map *h);

/* FRAMES: response body bytes from the upstream, appended to out as the client
 * must see them. Binary: as they are. Text: each gRPC frame base64-encoded on
 * its own, streamed in 3-byte groups so '=' padding only ends a frame. */
int grpc_web_response_data(struct grpc_web *g, const uint8_t *p, size_t n, struct chunkq *out);
/* FRAMES, at the end: flushes a frame cut short, then appends the trailers as
 * the 0x80 frame ("key:value\r\n" each) and clears them. */
int grpc_web_response_end(struct grpc_web *g, struct hdr_map *trailers, struct chunkq *out);

/* The trailer frame of a trailer map, appended raw (not base64) to out. */
int grpc_web_trailer_frame(const struct hdr_map *trailers, struct buf *out);

/* n bytes of the translated response were taken by the client: how many
 * upstream bytes that frees (never more than arrived; exact once the queue is
 * drained). */
size_t grpc_web_credit(struct grpc_web *g, size_t n);
/* n upstream bytes translated into the queue were credited already (held for a filter). */
void grpc_web_count_credited(struct grpc_web *g, size_t n);

/* Resets the response side (a local reply or another attempt replaces it). */
void grpc_web_reset_response(struct grpc_web *g);

#endif
