/* Upstream clusters and their connection pools. */
#ifndef NUNCIO_UPSTREAM_H
#define NUNCIO_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

struct worker;
struct exchange;
struct h2c;
struct nu_config;

/* Connections per cluster before new streams queue on the least busy one. */
#define UPSTREAM_MAX_CONNS 16

struct upstream_cluster {
    char *name;
    char *host;
    int port;
    int http2;
    int connect_timeout_ms;
    /* Pooled HTTP/2 connections taking new streams. A connection leaves the
     * pool when it stops taking streams (GOAWAY, failure, close); it lives on
     * until its streams finish. */
    struct h2c *pool[UPSTREAM_MAX_CONNS];
    size_t n_pool;
    struct tls_client *tls; /* originate TLS (NULL: cleartext) */
    uint64_t connects;   /* connections opened, for /stats */
};

struct upstream_set {
    struct worker *w;
    struct upstream_cluster *v;
    size_t n;
};

/* NULL on failure, with the reason in err (e.g. a bad client certificate). */
struct upstream_set *upstream_set_new(struct worker *w, const struct nu_config *cfg, char *err, size_t errlen);
void upstream_set_free(struct upstream_set *u);
/* Binds the exchange's upstream side to a stream on a pooled connection of
 * the cluster (dialing one if needed). On failure *why says what to tell the client. */
int upstream_attach(struct upstream_set *u, int cluster, struct exchange *x, const char **why);

#endif
