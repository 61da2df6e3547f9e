/* Upstream clusters: their endpoints, the balancer that picks one per
 * request, passive health (ejection, connect backoff) and the per-endpoint
 * connection pools: HTTP/2 (h2c, many streams each) for clusters with http2,
 * HTTP/1.1 (h1c, one exchange each, kept alive) for the rest. */
#ifndef NUNCIO_UPSTREAM_H
#define NUNCIO_UPSTREAM_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct worker;
struct exchange;
struct h2c;
struct h1c;
struct nu_config;
struct upstream_cluster;

/* Connections per endpoint before new streams queue on the least busy one. */
#define UPSTREAM_MAX_CONNS 16
/* HTTP/1.1 connections per endpoint, busy or idle (Envoy's circuit-breaker
 * default max_connections). A request finding every one of them busy fails
 * at once with 503 "overflow" rather than queueing: Envoy's own pending queue
 * would hold it, but a stalled endpoint with 1024 requests in flight is
 * better answered now than in a route timeout. */
#define UPSTREAM_MAX_H1_CONNS 1024
/* Addresses per cluster (a name's records plus configured endpoints). */
#define UPSTREAM_MAX_ENDPOINTS 256

struct upstream_endpoint {
    struct upstream_cluster *c;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char label[128]; /* "cluster (host:port)" for logs */
    /* Pooled HTTP/2 connections taking new streams. A connection leaves the
     * pool when it stops taking streams (GOAWAY, failure, close); it lives on
     * until its streams finish. */
    struct h2c *pool[UPSTREAM_MAX_CONNS];
    size_t n_pool;
    /* HTTP/1.1: every open connection (for the cap and for detaching), and
     * the idle ones, most recently used last (taken LIFO: the warmest). */
    struct h1c **h1_all, **h1_idle;
    size_t n_h1, n_h1_idle, cap_h1;
    uint32_t active;           /* calls in flight here (least request) */
    uint32_t failures;         /* consecutive failed calls (passive health) */
    uint32_t ejections;        /* times ejected: each ejection lasts longer */
    ev_tstamp ejected_until;   /* 0: in rotation */
    uint32_t connect_failures; /* consecutive failed dials */
    ev_tstamp dial_after;      /* connect backoff: no new dial before this */
    uint64_t requests;
};

struct upstream_cluster {
    struct upstream_set *set;
    char *name;
    char *host;
    int port;
    int http2;
    int connect_timeout_ms;
    int idle_timeout_ms; /* a pooled connection without streams this long is closed; 0: never */
    struct upstream_endpoint *ep;
    size_t n_ep, cap_ep;
    ev_tstamp resolve_after; /* a name that did not resolve is tried again from then */
    int lb_policy;           /* enum nu_lb_policy */
    char *hash_header, *hash_cookie;
    int hash_source_ip;
    size_t rr;               /* round robin cursor */
    struct tls_client *tls;  /* originate TLS (NULL: cleartext) */
    uint64_t connects;       /* connections opened, for /stats */
};

struct upstream_set {
    struct worker *w;
    struct upstream_cluster *v;
    size_t n;
    const struct nu_config *cfg;
    uint64_t rng; /* xorshift state: least request's two choices, backoff jitter */
    uint64_t ejections;
    uint64_t retries; /* attempts after the first, for /stats */
};

/* What the request offers the balancer. */
struct upstream_pick {
    const char *peer;                /* client "ip:port", for hash source_ip */
    const struct upstream_endpoint *avoid; /* the previous attempt's endpoint (a retry) */
};

/* How an attempt on an endpoint ended, for passive health. */
enum upstream_outcome {
    UPSTREAM_OK = 0,      /* the endpoint answered */
    UPSTREAM_FAILED = 1,  /* 5xx, a gRPC server error, a reset or a connect failure */
    UPSTREAM_NEUTRAL = 2, /* ended by us or the client: says nothing about the endpoint */
};

/* NULL on failure, with the reason in err (e.g. a bad client certificate). */
struct upstream_set *upstream_set_new(struct worker *w, const struct nu_config *cfg, char *err, size_t errlen);
void upstream_set_free(struct upstream_set *u);
/* Picks an endpoint of the cluster and binds the exchange's upstream side to
 * a stream on one of its pooled connections (dialing one if needed); *ep is
 * the endpoint, to hand back to upstream_done. On failure *why says what to
 * tell the client; NU_ERR_AGAIN means every endpoint is backing off after
 * failed connects. */
int upstream_attach(struct upstream_set *u, int cluster, struct exchange *x, const struct upstream_pick *pick,
                    struct upstream_endpoint **ep, const char **why);
/* A random number from the set's generator (backoff jitter). */
uint64_t upstream_rand(struct upstream_set *u);
/* The attempt that upstream_attach started on ep is over. */
void upstream_done(struct upstream_set *u, struct upstream_endpoint *ep, int outcome);

#endif
