#include "upstream.h"
#include "config.h"
#include "exchange.h"
#include "h1c.h"
#include "h2c.h"
#include "log.h"
#include "nuncio.h"
#include "tls.h"
#include "worker.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Envoy's max_ejection_time: repeated ejections grow up to this. */
#define MAX_EJECTION_S 300.0
/* Connect backoff after the second failed dial in a row: 100 ms, doubling, capped. */
#define BACKOFF_BASE_S 0.1
#define BACKOFF_MAX_S 10.0
/* A name that did not resolve is not looked up again for this long (the lookup blocks). */
#define RESOLVE_RETRY_S 1.0

static uint64_t next_rand(struct upstream_set *u)
{
    uint64_t x = u->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return u->rng = x;
}

uint64_t upstream_rand(struct upstream_set *u)
{
    return next_rand(u);
}

static ev_tstamp now_of(struct upstream_set *u)
{
    return ev_now(u->w->loop);
}

/* A connection of ep is gone: connect backoff from how it ended. connected:
 * it came up; failed: its dial failed (not merely abandoned). */
static void conn_gone(struct upstream_endpoint *ep, int connected, int failed)
{
    if (connected) {
        ep->connect_failures = 0;
        return;
    }
    if (!failed)
        return;
    /* Repeated connect failures hold further dials off, so a dead endpoint is
     * not hammered by every request (jittered, so workers do not sync up). */
    if (++ep->connect_failures < 2)
        return;
    struct upstream_set *u = ep->c->set;
    double delay = BACKOFF_BASE_S * (double)(1u << (ep->connect_failures - 2 < 10 ? ep->connect_failures - 2 : 10));
    if (delay > BACKOFF_MAX_S)
        delay = BACKOFF_MAX_S;
    delay *= 0.5 + (double)(next_rand(u) % 1000) / 2000.0;
    ep->dial_after = now_of(u) + delay;
    nu_log(NU_LOG_INFO, "upstream %s: %u connects failed in a row: no new connection for %.0f ms", ep->label,
           ep->connect_failures, delay * 1000);
}

static void on_conn_gone(void *owner, struct h2c *h)
{
    struct upstream_endpoint *ep = owner;
    for (size_t i = 0; i < ep->n_pool; i++) {
        if (ep->pool[i] == h) {
            ep->pool[i] = ep->pool[--ep->n_pool];
            break;
        }
    }
    conn_gone(ep, h2c_was_connected(h), 1);
}

static void remove_h1(struct h1c **v, size_t *n, struct h1c *h)
{
    for (size_t i = *n; i-- > 0;) {
        if (v[i] == h) {
            memmove(&v[i], &v[i + 1], (*n - i - 1) * sizeof *v);
            (*n)--;
            return;
        }
    }
}

/* An HTTP/1.1 connection of ep finished an exchange (back to the idle list)
 * or is gone (out of both lists). */
static void on_h1_event(void *owner, struct h1c *h, int event)
{
    struct upstream_endpoint *ep = owner;
    if (event == H1C_IDLE) {
        /* cap_h1 bounds both lists, and the idle one is a subset of all. */
        ep->h1_idle[ep->n_h1_idle++] = h;
        return;
    }
    remove_h1(ep->h1_idle, &ep->n_h1_idle, h);
    remove_h1(ep->h1_all, &ep->n_h1, h);
    conn_gone(ep, h1c_was_connected(h), h1c_connect_failed(h));
}

/* Appends the addresses host:port resolves to (IPv4 ones when it has any, as
 * Emissary's default enable_ipv6: false does). Blocks: done at load, and for a
 * name that failed, at most once a second from a request. */
static int add_endpoints(struct upstream_cluster *c, const char *host, int port)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int gai = getaddrinfo(host, ps, &hints, &res);
    if (gai != 0) {
        nu_log(NU_LOG_WARN, "upstream %s: cannot resolve %s: %s", c->name, host, gai_strerror(gai));
        return NU_ERR_IO;
    }
    int have_v4 = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next)
        have_v4 |= a->ai_family == AF_INET;
    int rc = NU_OK;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        if ((have_v4 && a->ai_family != AF_INET) || a->ai_addrlen > sizeof(struct sockaddr_storage))
            continue;
        int dup = 0;
        for (size_t i = 0; i < c->n_ep && !dup; i++)
            dup = c->ep[i].addrlen == a->ai_addrlen && memcmp(&c->ep[i].addr, a->ai_addr, a->ai_addrlen) == 0;
        if (dup)
            continue;
        if (c->n_ep == UPSTREAM_MAX_ENDPOINTS) {
            nu_log(NU_LOG_WARN, "upstream %s: more than %d addresses: the rest are not used", c->name,
                   UPSTREAM_MAX_ENDPOINTS);
            break;
        }
        if (c->n_ep == c->cap_ep) {
            /* Safe to move: endpoints are only added while none has a connection. */
            size_t cap = c->cap_ep ? c->cap_ep * 2 : 1;
            struct upstream_endpoint *v = realloc(c->ep, cap * sizeof *v);
            if (!v) {
                rc = NU_ERR_NOMEM;
                break;
            }
            c->ep = v;
            c->cap_ep = cap;
        }
        struct upstream_endpoint *ep = &c->ep[c->n_ep++];
        memset(ep, 0, sizeof *ep);
        ep->c = c;
        memcpy(&ep->addr, a->ai_addr, a->ai_addrlen);
        ep->addrlen = a->ai_addrlen;
        char ip[INET6_ADDRSTRLEN] = "?";
        const void *in = a->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
                                                 : (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
        inet_ntop(a->ai_family, in, ip, sizeof ip);
        snprintf(ep->label, sizeof ep->label, "%s (%s%s%s%s:%d)", c->name, c->tls ? "https://" : "",
                 a->ai_family == AF_INET6 ? "[" : "", ip, a->ai_family == AF_INET6 ? "]" : "", port);
    }
    freeaddrinfo(res);
    return rc;
}

/* The cluster's endpoints: the configured ones, else what its host resolves to. */
static void resolve(struct upstream_set *u, struct upstream_cluster *c, const struct nu_cluster_cfg *cc)
{
    if (cc->n_endpoints) {
        for (size_t i = 0; i < cc->n_endpoints; i++)
            add_endpoints(c, cc->endpoints[i].host, cc->endpoints[i].port);
    } else {
        add_endpoints(c, c->host, c->port);
    }
    if (!c->n_ep)
        c->resolve_after = now_of(u) + RESOLVE_RETRY_S;
    else if (c->n_ep > 1)
        nu_log(NU_LOG_DEBUG, "upstream %s: %zu endpoints", c->name, c->n_ep);
}

struct upstream_set *upstream_set_new(struct worker *w, const struct nu_config *cfg, char *err, size_t errlen)
{
    struct upstream_set *u = calloc(1, sizeof *u);
    snprintf(err, errlen, "out of memory creating upstream clusters");
    if (!u)
        return NULL;
    u->w = w;
    u->cfg = cfg;
    u->rng = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)u;
    if (!u->rng)
        u->rng = 88172645463325252ull;
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
        struct upstream_cluster *c = &u->v[i];
        c->set = u;
        c->name = strdup(cc->name);
        c->host = strdup(cc->host);
        c->hash_header = cc->hash_header ? strdup(cc->hash_header) : NULL;
        c->hash_cookie = cc->hash_cookie ? strdup(cc->hash_cookie) : NULL;
        if (!c->name || !c->host || (cc->hash_header && !c->hash_header) || (cc->hash_cookie && !c->hash_cookie)) {
            upstream_set_free(u);
            return NULL;
        }
        c->port = cc->port;
        c->http2 = cc->http2;
        c->connect_timeout_ms = cc->connect_timeout_ms;
        c->idle_timeout_ms = cc->idle_timeout_ms;
        c->lb_policy = cc->lb_policy;
        c->hash_source_ip = cc->hash_source_ip;
        if (cc->tls && !(c->tls = tls_client_new(cc->tls, cc->http2, err, errlen))) {
            upstream_set_free(u);
            return NULL;
        }
        resolve(u, c, cc);
    }
    return u;
}

void upstream_set_free(struct upstream_set *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < u->n; i++) {
        struct upstream_cluster *c = &u->v[i];
        for (size_t e = 0; e < c->n_ep; e++) {
            struct upstream_endpoint *ep = &c->ep[e];
            for (size_t k = 0; k < ep->n_pool; k++)
                h2c_detach_owner(ep->pool[k]);
            /* Detaching may close an idle one, which reports nothing now. */
            for (size_t k = 0; k < ep->n_h1; k++)
                h1c_detach_owner(ep->h1_all[k]);
            free(ep->h1_all);
            free(ep->h1_idle);
        }
        free(c->ep);
        free(c->name);
        free(c->host);
        free(c->hash_header);
        free(c->hash_cookie);
        tls_client_free(c->tls);
    }
    free(u->v);
    free(u);
}

/* ------------------------------------------------------------ balancing */

static int ejected(struct upstream_endpoint *ep, ev_tstamp now)
{
    if (ep->ejected_until == 0)
        return 0;
    if (now < ep->ejected_until)
        return 1;
    /* Back in rotation: it gets a fresh count, as in Envoy. */
    ep->ejected_until = 0;
    ep->failures = 0;
    nu_log(NU_LOG_INFO, "upstream %s: back in rotation after its ejection", ep->label);
    return 0;
}

static int backing_off(const struct upstream_endpoint *ep, ev_tstamp now)
{
    return ep->n_pool == 0 && ep->n_h1_idle == 0 && now < ep->dial_after;
}

/* Candidates, best class first: healthy and not the previous attempt's;
 * healthy; ejected but dialable (Envoy's panic mode: when nothing healthy is
 * left, every host takes traffic). Backing-off endpoints never. */
static size_t candidates(struct upstream_cluster *c, const struct upstream_endpoint *avoid, ev_tstamp now,
                         uint16_t *out)
{
    size_t n = 0, n_avoid = 0;
    int avoided = 0;
    for (size_t i = 0; i < c->n_ep; i++) {
        struct upstream_endpoint *ep = &c->ep[i];
        if (ejected(ep, now) || backing_off(ep, now))
            continue;
        if (ep == avoid) {
            avoided = 1;
            n_avoid = i;
            continue;
        }
        out[n++] = (uint16_t)i;
    }
    if (n)
        return n;
    if (avoided) {
        out[0] = (uint16_t)n_avoid;
        return 1;
    }
    for (size_t i = 0; i < c->n_ep; i++)
        if (!backing_off(&c->ep[i], now))
            out[n++] = (uint16_t)i;
    return n;
}

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t fnv1a(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h;
}

/* value of cookie name in the request's cookie headers */
static const char *find_cookie(const struct hdr_map *m, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    for (int k = 0;; k++) {
        int at = hdr_find(m, HDR_LIT("cookie"), k);
        if (at < 0)
            return NULL;
        const char *v = m->v[at].value;
        size_t len = m->v[at].vlen;
        const char *end = v + len, *p = v;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';'))
                p++;
            const char *eq = memchr(p, '=', (size_t)(end - p));
            const char *semi = memchr(p, ';', (size_t)(end - p));
            if (!semi)
                semi = end;
            if (eq && eq < semi && (size_t)(eq - p) == nl && memcmp(p, name, nl) == 0) {
                *vlen = (size_t)(semi - eq - 1);
                return eq + 1;
            }
            p = semi;
        }
    }
}

/* The request's hash key for ring_hash / maglev; 0 when it has none. */
static int hash_key(struct upstream_cluster *c, const struct exchange *x, const struct upstream_pick *pick,
                    uint64_t *key)
{
    const char *v = NULL;
    size_t n = 0;
    if (c->hash_header)
        v = hdr_get(&x->req.hdrs, c->hash_header, strlen(c->hash_header), &n);
    else if (c->hash_cookie)
        v = find_cookie(&x->req.hdrs, c->hash_cookie, &n);
    else if (c->hash_source_ip && pick->peer) {
        const char *colon = strrchr(pick->peer, ':');
        v = pick->peer;
        n = colon ? (size_t)(colon - v) : strlen(v);
    }
    if (!v)
        return 0;
    *key = fnv1a(v, n);
    return 1;
}

static struct upstream_endpoint *pick_endpoint(struct upstream_set *u, struct upstream_cluster *c,
                                               const struct exchange *x, const struct upstream_pick *pick)
{
    uint16_t cand[UPSTREAM_MAX_ENDPOINTS];
    size_t n = candidates(c, pick->avoid, now_of(u), cand);
    if (n == 0)
        return NULL;
    if (n == 1)
        return &c->ep[cand[0]];
    uint64_t key;
    if (c->lb_policy == NU_LB_HASH && hash_key(c, x, pick, &key)) {
        /* Rendezvous hashing: the same key lands on the same endpoint while
         * it is healthy, and only its keys move when one leaves. */
        size_t best = cand[0];
        uint64_t best_score = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t s = mix64(key ^ mix64(cand[i] + 1));
            if (i == 0 || s > best_score) {
                best_score = s;
                best = cand[i];
            }
        }
        return &c->ep[best];
    }
    if (c->lb_policy == NU_LB_LEAST_REQUEST) {
        /* Envoy's default: the less busy of two drawn at random. */
        struct upstream_endpoint *a = &c->ep[cand[next_rand(u) % n]];
        struct upstream_endpoint *b = &c->ep[cand[next_rand(u) % n]];
        return b->active < a->active ? b : a;
    }
    /* Round robin over the candidates in endpoint order, from the cursor on. */
    size_t best = cand[0];
    for (size_t i = 0; i < n; i++) {
        if (cand[i] >= c->rr % c->n_ep) {
            best = cand[i];
            break;
        }
    }
    c->rr = best + 1;
    return &c->ep[best];
}

/* ------------------------------------------------------------ passive health */

static void maybe_eject(struct upstream_set *u, struct upstream_endpoint *ep)
{
    const struct nu_outlier_cfg *o = &u->cfg->outlier;
    struct upstream_cluster *c = ep->c;
    if (o->consecutive_failures <= 0 || ep->failures < (uint32_t)o->consecutive_failures || c->n_ep < 2)
        return;
    ev_tstamp now = now_of(u);
    if (ejected(ep, now))
        return;
    size_t out = 0;
    for (size_t i = 0; i < c->n_ep; i++)
        out += ejected(&c->ep[i], now);
    /* Envoy's max_ejection_percent, but one may always go. */
    if (out > 0 && (out + 1) * 100 > (size_t)o->max_ejection_percent * c->n_ep) {
        nu_log(NU_LOG_INFO, "upstream %s: %u failures in a row, not ejected: %zu of %zu endpoints already are",
               ep->label, ep->failures, out, c->n_ep);
        return;
    }
    ep->ejections++;
    double secs = o->base_ejection_time_ms / 1000.0 * ep->ejections;
    if (secs > MAX_EJECTION_S)
        secs = MAX_EJECTION_S;
    ep->ejected_until = now + secs;
    u->ejections++;
    u->w->upstream_ejections++;
    nu_log(NU_LOG_WARN, "upstream %s: ejected for %.0f ms after %u failures in a row", ep->label, secs * 1000,
           ep->failures);
}

void upstream_done(struct upstream_set *u, struct upstream_endpoint *ep, int outcome)
{
    if (!ep)
        return;
    if (ep->active)
        ep->active--;
    if (outcome == UPSTREAM_OK) {
        ep->failures = 0;
        ep->connect_failures = 0;
    } else if (outcome == UPSTREAM_FAILED) {
        ep->failures++;
        maybe_eject(u, ep);
    }
}

/* ------------------------------------------------------------ connections */

static struct h2c *dial(struct upstream_set *u, struct upstream_endpoint *ep, const char **why)
{
    struct upstream_cluster *c = ep->c;
    int err;
    struct h2c *h = h2c_connect(u->w, (const struct sockaddr *)&ep->addr, ep->addrlen, c->connect_timeout_ms / 1000.0,
                                c->tls, ep->label, on_conn_gone, ep, &err);
    if (!h) {
        nu_log(NU_LOG_WARN, "upstream %s: cannot open a connection: %s", ep->label, nu_strerror(err));
        *why = "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
        return NULL;
    }
    c->connects++;
    u->w->upstream_connects++;
    h2c_set_idle_timeout(h, c->idle_timeout_ms / 1000.0);
    return h;
}

/* Room for one more HTTP/1.1 connection in ep's lists. */
static int h1_reserve(struct upstream_endpoint *ep)
{
    if (ep->n_h1 < ep->cap_h1)
        return NU_OK;
    size_t cap = ep->cap_h1 ? ep->cap_h1 * 2 : 4;
    if (cap > UPSTREAM_MAX_H1_CONNS)
        cap = UPSTREAM_MAX_H1_CONNS;
    struct h1c **all = realloc(ep->h1_all, cap * sizeof *all);
    if (!all)
        return NU_ERR_NOMEM;
    ep->h1_all = all;
    struct h1c **idle = realloc(ep->h1_idle, cap * sizeof *idle);
    if (!idle)
        return NU_ERR_NOMEM; /* h1_all stays grown: cap_h1 only moves when both did */
    ep->h1_idle = idle;
    ep->cap_h1 = cap;
    return NU_OK;
}

/* HTTP/1.1: the most recently idle connection, else a new one, else overflow. */
static int attach_h1(struct upstream_set *u, struct upstream_endpoint *ep, struct exchange *x,
                     struct upstream_endpoint **epp, const char **why)
{
    struct upstream_cluster *c = ep->c;
    struct h1c *h = NULL;
    while (ep->n_h1_idle && !h) {
        struct h1c *p = ep->h1_idle[--ep->n_h1_idle];
        if (!h1c_usable(p))
            continue; /* closing: its gone event removes it from the other list */
        if (h1c_submit(p, x) != NU_OK) {
            /* The request's fault (bytes HTTP/1.1 cannot carry), not the connection's. */
            ep->h1_idle[ep->n_h1_idle++] = p;
            *why = "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
            return NU_ERR_PROTO;
        }
        h = p;
    }
    if (!h) {
        if (ep->n_h1 >= UPSTREAM_MAX_H1_CONNS) {
            nu_log(NU_LOG_WARN, "upstream %s: all %d HTTP/1.1 connections busy: overflow", ep->label,
                   UPSTREAM_MAX_H1_CONNS);
            *why = "upstream connect error or disconnect/reset before headers. reset reason: overflow";
            return NU_ERR_LIMIT;
        }
        *why = "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
        if (h1_reserve(ep) != NU_OK)
            return NU_ERR_NOMEM;
        int err;
        h = h1c_connect(u->w, (const struct sockaddr *)&ep->addr, ep->addrlen, c->connect_timeout_ms / 1000.0, c->tls,
                        ep->label, on_h1_event, ep, &err);
        if (!h) {
            nu_log(NU_LOG_WARN, "upstream %s: cannot open a connection: %s", ep->label, nu_strerror(err));
            return NU_ERR_IO;
        }
        c->connects++;
        u->w->upstream_connects++;
        ep->h1_all[ep->n_h1++] = h;
        h1c_set_idle_timeout(h, c->idle_timeout_ms / 1000.0);
        if (h1c_submit(h, x) != NU_OK) {
            /* A request HTTP/1.1 cannot carry (a method or path with spaces): the new connection idles. */
            ep->h1_idle[ep->n_h1_idle++] = h;
            *why = "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
            return NU_ERR_PROTO;
        }
    }
    ep->active++;
    ep->requests++;
    *epp = ep;
    return NU_OK;
}

int upstream_attach(struct upstream_set *u, int cluster, struct exchange *x, const struct upstream_pick *pick,
                    struct upstream_endpoint **epp, const char **why)
{
    *epp = NULL;
    if (cluster < 0 || (size_t)cluster >= u->n) {
        *why = "no healthy upstream";
        return NU_ERR_CONFIG;
    }
    struct upstream_cluster *c = &u->v[cluster];
    if (c->n_ep == 0 && now_of(u) >= c->resolve_after)
        resolve(u, c, &u->cfg->clusters[cluster]);
    if (c->n_ep == 0) {
        *why = "no healthy upstream";
        return NU_ERR_CONFIG;
    }
    struct upstream_endpoint *ep = pick_endpoint(u, c, x, pick);
    if (!ep) {
        *why = "upstream connect error or disconnect/reset before headers. reset reason: connection failure "
               "(backing off after failed connects)";
        return NU_ERR_AGAIN;
    }
    if (!c->http2)
        return attach_h1(u, ep, x, epp, why);
    /* The first pooled connection with room under the peer's
     * MAX_CONCURRENT_STREAMS; else a new one; at the cap, the least busy
     * (nghttp2 queues the stream until one of its streams ends). */
    struct h2c *h = NULL, *least = NULL;
    uint32_t learned = 0; /* the peer's stream limit, as its connections told it */
    for (size_t i = 0; i < ep->n_pool; i++) {
        struct h2c *p = ep->pool[i];
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
    if (!h && (ep->n_pool < UPSTREAM_MAX_CONNS || !least)) {
        h = dial(u, ep, why);
        if (!h)
            return NU_ERR_IO;
        if (learned)
            h2c_assume_max_streams(h, learned);
        if (ep->n_pool < UPSTREAM_MAX_CONNS)
            ep->pool[ep->n_pool++] = h;
        else
            h2c_detach_owner(h); /* unpooled: serves this stream, then closes when idle */
    }
    if (!h)
        h = least;
    int rc = h2c_submit(h, x);
    if (rc != NU_OK) {
        *why = "upstream connect error or disconnect/reset before headers. reset reason: overflow";
        return rc;
    }
    ep->active++;
    ep->requests++;
    *epp = ep;
    return NU_OK;
}
