/* A buffered byte stream over a socket: read/write watchers, connect, and a
 * write buffer flushed from the worker's sweep. Knows no HTTP. */
#ifndef NUNCIO_CONN_H
#define NUNCIO_CONN_H

#include <ev.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

#include "buf.h"
#include "worker.h"

struct conn;
struct tls;
struct tls_server;
struct tls_client;

/* Attaches a codec once the transport is ready (after the first-byte sniff
 * and, for TLS, the handshake). Returns 0 or an nu_err. */
typedef int (*conn_ready_fn)(struct conn *c, void *arg);

/* How long a downstream client may take from accept to a finished TLS
 * handshake, unless conn.handshake_timeout says otherwise (native
 * tls_handshake_timeout_ms; its default is this). */
#define CONN_HANDSHAKE_TIMEOUT 10.0

/* What a protocol codec plugs into a conn. */
struct conn_handler {
    /* Bytes arrived (borrowed for the call). Negative return: close the connection. */
    int (*on_read)(struct conn *c, const uint8_t *p, size_t n);
    /* Move pending output into c->wbuf. 0: ok; 1: the codec is finished, close
     * once written; negative: close now. */
    int (*fill)(struct conn *c);
    /* Outgoing connect finished (err 0) or failed. */
    void (*on_connect)(struct conn *c, int err);
    /* The connection is closed; the codec must let go of its streams now. */
    void (*on_close)(struct conn *c, int err);
    /* Free the codec object (called from the sweep). */
    void (*free)(void *codec);
    /* Shutting down (downstream codecs): finish what is in flight, take
     * nothing new. Called twice: first a warning (final 0; HTTP/2's shutdown
     * notice), then final 1 a moment later. NULL: the conn is simply closed. */
    void (*drain)(struct conn *c, int final);
};

#define CONN_WBUF_HIGH (256 * 1024)

struct conn {
    struct worker *w;
    int fd;
    uint64_t id;
    ev_io rio, wio;
    ev_timer connect_timer;
    struct buf wbuf; /* owned: socket output not yet written */
    /* owned: body chunks handed over whole (cleartext only), written with
     * writev after the wbuf bytes each chunk's gap counts; wbuf bytes past the
     * gaps go out after the last chunk. */
    struct chunkq out;
    size_t out_gaps; /* wbuf bytes counted in the queued chunks' gaps */
    const struct conn_handler *h;
    void *codec;
    struct conn *pending_next;
    struct conn *all_prev, *all_next; /* the worker's list of live conns */
    struct worker_defer defer;
    struct tls *tls;               /* NULL: cleartext */
    struct tls_server *sniff_tls;  /* HTTPS listener: TLS when the first byte is a handshake record */
    struct tls_client *tls_client; /* upstream: TLS after the TCP connect */
    conn_ready_fn ready;
    void *ready_arg;
    /* What the conn holds a reference on (its listener's front); released when it is freed. */
    void *owner;
    void (*owner_release)(void *owner);
    /* Called when the conn is freed (the listener's connection count); NULL: nothing. */
    void (*on_free)(struct conn *c);
    unsigned in_pending : 1;
    unsigned connecting : 1;
    unsigned closing : 1;
    unsigned finishing : 1;   /* close once wbuf is written */
    unsigned sniffing : 1;    /* waiting for the first byte */
    unsigned handshaking : 1; /* TLS handshake in progress */
    unsigned secure : 1;      /* requests on it count as secure (listener securityModel) */
    unsigned trust_xfp : 1;   /* a client's x-forwarded-proto is believed (l7Depth > 0) */
    unsigned read_paused : 1; /* the codec's consumer is behind: leave input in the socket */
    int local_port;
    double accepted_at;        /* downstream: ev_now() at accept */
    double first_byte_timeout; /* downstream: how long the client may stay silent after accept */
    double handshake_timeout;  /* downstream: accept to a finished TLS handshake (0: CONN_HANDSHAKE_TIMEOUT);
                                * set before conn_accept_with */
    double connect_timeout;    /* upstream: for the TCP connect, then again for the TLS handshake */
    char peer[64];             /* "ip:port" for logs */
    char detail[200];          /* why a connect or handshake failed, for replies and logs */
};

struct conn *conn_accepted(struct worker *w, int fd, const struct sockaddr *sa);
/* tc: TLS to the upstream after connecting (NULL: cleartext). */
struct conn *conn_connect(struct worker *w, const struct sockaddr *sa, socklen_t salen, double timeout_s,
                          struct tls_client *tc, int *err);
/* Downstream: wait for the first byte; a TLS handshake record starts TLS with
 * ts (NULL: cleartext only), anything else is cleartext. ready attaches the codec.
 * first_byte_timeout: a client silent that long is cut (0: only the handshake
 * deadline, c->handshake_timeout, applies; it is never longer than that). */
void conn_accept_with(struct conn *c, struct tls_server *ts, double first_byte_timeout, conn_ready_fn ready, void *arg);
const char *conn_alpn(struct conn *c);
void conn_set_handler(struct conn *c, const struct conn_handler *h, void *codec);
void conn_start(struct conn *c);
/* Stop (1) or restart (0) reading: back-pressure for a codec without a
 * protocol-level window (HTTP/1), so the socket buffer holds the rest. */
void conn_pause_read(struct conn *c, int paused);
/* Output not yet written: wbuf plus queued chunks. */
static inline size_t conn_pending(const struct conn *c)
{
    return buf_size(&c->wbuf) + c->out.bytes;
}
/* Queues a whole body chunk after what wbuf holds now; the conn owns it from
 * here. Cleartext only (the caller checks c->tls): mbedTLS writes from wbuf. */
void conn_queue_chunk(struct conn *c, struct chunk *ck);
/* Ask for a flush at the next sweep. */
void conn_want_write(struct conn *c);
/* Write out what the codec has; called by the worker sweep. */
void conn_flush(struct conn *c);
void conn_close(struct conn *c, int err);
void conn_format_addr(const struct sockaddr *sa, char *dst, size_t cap);

#endif
