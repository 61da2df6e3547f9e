#include "worker.h"
#include "admin.h"
#include "config.h"
#include "conn.h"
#include "h1s.h"
#include "h2_mem.h"
#include "h2s.h"
#include "listener.h"
#include "stream.h"
#include "tls.h"
#include "upstream.h"

#include <stdlib.h>
#include "log.h"
#include "nuncio.h"

#include <string.h>

void worker_defer(struct worker *w, struct worker_defer *d)
{
    d->next = w->defer;
    w->defer = d;
}

void worker_want_flush(struct worker *w, struct conn *c)
{
    if (c->in_pending)
        return;
    c->in_pending = 1;
    c->pending_next = w->pending;
    w->pending = c;
}

/* Runs just before the loop blocks (libev's "flush it before blocking",
 * Redis's beforeSleep): first write what every codec queued during this loop
 * iteration, then free what was closed, so no object dies inside a callback
 * of the library that still holds it. */
void worker_sweep(struct worker *w)
{
    /* Flushing one conn can make another pending (window updates travel the
     * other way), so drain until nothing is left. */
    while (w->pending) {
        struct conn *c = w->pending;
        w->pending = c->pending_next;
        c->in_pending = 0;
        c->pending_next = NULL;
        if (!c->closing)
            conn_flush(c);
    }
    while (w->defer) {
        struct worker_defer *d = w->defer;
        w->defer = NULL;
        /* Freeing one object may defer others (a conn's codec releases its
         * streams); take the list and loop until it stays empty. */
        while (d) {
            struct worker_defer *next = d->next;
            d->fn(d);
            d = next;
        }
        while (w->pending) {
            struct conn *c = w->pending;
            w->pending = c->pending_next;
            c->in_pending = 0;
            if (!c->closing)
                conn_flush(c);
        }
    }
}

static void on_prepare(struct ev_loop *loop, ev_prepare *p, int revents)
{
    struct worker *w = nu_container_of(p, struct worker, sweep);
    worker_sweep(w);
}

int worker_init(struct worker *w, struct ev_loop *loop, const struct nu_config *cfg)
{
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->cfg = cfg;
    ev_prepare_init(&w->sweep, on_prepare);
    ev_prepare_start(loop, &w->sweep);
    /* The sweep must not keep the loop alive on its own. */
    ev_unref(loop);
    return NU_OK;
}

void worker_destroy(struct worker *w)
{
    worker_sweep(w);
    ev_ref(w->loop);
    ev_prepare_stop(w->loop, &w->sweep);
    h2_mem_free(w);
}

/* What a data listener hands each of its connections. */
struct front {
    struct front *next;
    struct worker *w;
    struct tls_server *tls; /* NULL: cleartext only */
    int security_model;
    int l7_depth;
};

static int attach_h2(struct conn *c, void *arg)
{
    struct front *f = arg;
    const struct nu_config *cfg = f->w->cfg;
    return h2s_attach(c, stream_open, f->w, 1000, cfg->listener_idle_timeout_ms / 1000.0,
                      cfg->request_headers_timeout_ms / 1000.0);
}

/* The transport is ready (cleartext, or TLS after the handshake): decide
 * whether its requests count as secure, then pick the codec. ALPN decides
 * when the client offered it; otherwise HTTP/1.1, which hands the connection
 * to HTTP/2 if its first bytes are the client preface (h2c prior knowledge). */
static int ready_front(struct conn *c, void *arg)
{
    struct front *f = arg;
    c->secure = f->security_model == NU_SECURITY_SECURE || (f->security_model == NU_SECURITY_XFP && c->tls);
    c->trust_xfp = f->security_model == NU_SECURITY_XFP && f->l7_depth > 0;
    const char *alpn = conn_alpn(c);
    if (c->tls && nu_log_enabled(NU_LOG_DEBUG))
        nu_log(NU_LOG_DEBUG, "[c%llu] TLS from %s, ALPN %s", (unsigned long long)c->id, c->peer, alpn ? alpn : "none");
    if (alpn && strcmp(alpn, "h2") == 0)
        return attach_h2(c, f);
    const struct nu_config *cfg = f->w->cfg;
    struct h1s_opts o = {
        .idle_timeout = cfg->listener_idle_timeout_ms / 1000.0,
        .header_timeout = cfg->request_headers_timeout_ms / 1000.0,
        .enable_http10 = cfg->enable_http10,
        .server_name = cfg->server_name,
        .to_h2 = alpn ? NULL : attach_h2, /* ALPN http/1.1 was a promise: no sniffing */
        .to_h2_arg = f,
    };
    return h1s_attach(c, stream_open, f->w, &o);
}

static int attach_front(struct conn *c, void *arg)
{
    struct front *f = arg;
    conn_accept_with(c, f->tls, f->w->cfg->request_headers_timeout_ms / 1000.0, ready_front, f);
    return NU_OK;
}

int worker_start(struct worker *w)
{
    const struct nu_config *cfg = w->cfg;
    char err[512];
    w->ups = upstream_set_new(w, cfg, err, sizeof err);
    if (!w->ups) {
        nu_log(NU_LOG_ERROR, "config error: %s", err);
        return NU_ERR_CONFIG;
    }
    int rc;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct nu_listener_cfg *lc = &cfg->listeners[i];
        struct front *f = calloc(1, sizeof *f);
        if (!f)
            return NU_ERR_NOMEM;
        f->w = w;
        f->security_model = lc->security_model;
        f->l7_depth = lc->l7_depth;
        f->next = w->fronts;
        w->fronts = f;
        if (lc->tls && !(f->tls = tls_server_new(cfg->tls_contexts, cfg->n_tls_contexts, err, sizeof err))) {
            nu_log(NU_LOG_ERROR, "config error: listener %s: %s", lc->name, err);
            return NU_ERR_CONFIG;
        }
        struct listener *l = listener_open(w, lc->name, lc->address, lc->port, attach_front, f, &rc);
        if (!l)
            return rc;
        nu_log(NU_LOG_INFO, "listener %s on %s:%d (%s)", lc->name, lc->address, l->port,
               lc->tls ? "HTTPS: TLS with ALPN, and cleartext HTTP/1.1 and HTTP/2" : "cleartext HTTP/1.1 and HTTP/2");
    }
    if (cfg->admin_enabled) {
        struct listener *l = listener_open(w, "admin", cfg->admin_address, cfg->admin_port, admin_attach, w, &rc);
        if (!l)
            return rc;
        nu_log(NU_LOG_INFO, "admin on %s:%d (/ready, /ambassador/v0/check_ready, /ambassador/v0/check_alive, /stats)",
               cfg->admin_address, l->port);
    }
    w->ready = 1;
    return NU_OK;
}

void worker_stop(struct worker *w)
{
    w->ready = 0;
    while (w->listeners) {
        struct listener *l = w->listeners;
        w->listeners = l->next;
        listener_close(l);
    }
    for (struct conn *c = w->conns; c; c = c->all_next)
        conn_close(c, NU_ERR_CLOSED);
    worker_sweep(w);
    /* Connections are freed by now: the TLS configurations they used can go. */
    upstream_set_free(w->ups);
    w->ups = NULL;
    while (w->fronts) {
        struct front *f = w->fronts;
        w->fronts = f->next;
        tls_server_free(f->tls);
        free(f);
    }
}
