#include "upstream.h"
#include "config.h"
#include "h2c.h"
#include "log.h"
#include "nuncio.h"
#include "tls.h"
#include "worker.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_conn_gone(void *owner, struct h2c *h)
{
    struct upstream_cluster *c = owner;
    for (size_t i = 0; i < c->n_pool; i++) {
        if (c->pool[i] == h) {
            c->pool[i] = c->pool[--c->n_pool];
            return;
        }
    }
}

struct upstream_set *upstream_set_new(struct worker *w, const struct nu_config *cfg, char *err, size_t errlen)
{
    struct upstream_set *u = calloc(1, sizeof *u);
    snprintf(err, errlen, "out of memory creating upstream clusters");
    if (!u)
        return NULL;
    u->w = w;
    if (cfg->n_clusters) {
        u->v = calloc(cfg->n_clusters, sizeof *u->v);
        if (!u->v) {
            free(u);
            return NULL;
        }
    }
    u->n = cfg->n_clusters;
    for (size_t i = 0; i < u->n; i++) {
        const struct nu_cluster_cfg *cc = &cfg->clusters[i];
        u->v[i].name = strdup(cc->name);
        u->v[i].host = strdup(cc->host);
        if (!u->v[i].name || !u->v[i].host) {
            upstream_set_free(u);
            return NULL;
        }
        u->v[i].port = cc->port;
        u->v[i].http2 = cc->http2;
        u->v[i].connect_timeout_ms = cc->connect_timeout_ms;
        if (cc->tls && !(u->v[i].tls = tls_client_new(cc->tls, cc->http2, err, errlen))) {
            upstream_set_free(u);
            return NULL;
        }
    }
    return u;
}

void upstream_set_free(struct upstream_set *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < u->n; i++) {
        for (size_t k = 0; k < u->v[i].n_pool; k++)
            h2c_detach_owner(u->v[i].pool[k]);
        free(u->v[i].name);
        free(u->v[i].host);
        tls_client_free(u->v[i].tls);
    }
    free(u->v);
    free(u);
}

static struct h2c *dial(struct upstream_set *u, struct upstream_cluster *c, const char **why)
{
    /* Resolution happens per dial, so a changed address is picked up on reconnect.
     * getaddrinfo blocks: fine for IP literals and /etc/hosts names. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", c->port);
    int gai = getaddrinfo(c->host, port, &hints, &res);
    if (gai != 0) {
        nu_log(NU_LOG_WARN, "upstream %s: cannot resolve %s: %s", c->name, c->host, gai_strerror(gai));
        *why = "no healthy upstream";
        return NULL;
    }
    char label[96];
    snprintf(label, sizeof label, "%s (%s%s:%d)", c->name, c->tls ? "https://" : "", c->host, c->port);
    int err;
    struct h2c *h = h2c_connect(u->w, res->ai_addr, res->ai_addrlen, c->connect_timeout_ms / 1000.0, c->tls, label,
                                on_conn_gone, c, &err);
    freeaddrinfo(res);
    if (!h) {
        nu_log(NU_LOG_WARN, "upstream %s: cannot open a connection: %s", c->name, nu_strerror(err));
        *why = "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
        return NULL;
    }
    c->connects++;
    return h;
}

int upstream_attach(struct upstream_set *u, int cluster, struct exchange *x, const char **why)
{
    if (cluster < 0 || (size_t)cluster >= u->n) {
        *why = "no healthy upstream";
        return NU_ERR_CONFIG;
    }
    struct upstream_cluster *c = &u->v[cluster];
    /* The first pooled connection with room under the peer's
     * MAX_CONCURRENT_STREAMS; else a new one; at the cap, the least busy
     * (nghttp2 queues the stream until one of its streams ends). */
    struct h2c *h = NULL, *least = NULL;
    uint32_t learned = 0; /* the peer's stream limit, as its connections told it */
    for (size_t i = 0; i < c->n_pool; i++) {
        struct h2c *p = c->pool[i];
        if (h2c_knows_peer_limit(p) && h2c_peer_max_streams(p) > learned)
            learned = h2c_peer_max_streams(p);
        if (!h2c_usable(p))
            continue;
        if (h2c_has_room(p)) {
            h = p;
            break;
        }
        if (!least || h2c_streams(p) < h2c_streams(least))
            least = p;
    }
    if (!h && (c->n_pool < UPSTREAM_MAX_CONNS || !least)) {
        h = dial(u, c, why);
        if (!h)
            return NU_ERR_IO;
        if (learned)
            h2c_assume_max_streams(h, learned);
        if (c->n_pool < UPSTREAM_MAX_CONNS)
            c->pool[c->n_pool++] = h;
        else
            h2c_detach_owner(h); /* unpooled: serves this stream, then closes when idle */
    }
    if (!h)
        h = least;
    int rc = h2c_submit(h, x);
    if (rc != NU_OK)
        *why = "upstream connect error or disconnect/reset before headers. reset reason: overflow";
    return rc;
}
