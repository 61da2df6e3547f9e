#include "worker.h"
#include "access_log.h"
#include "config.h"
#include "conn.h"
#include "control.h"
#include "gen.h"
#include "h1s.h"
#include "h2_mem.h"
#include "h2s.h"
#include "hdr.h"
#include "listener.h"
#include "log.h"
#include "lua_bridge.h"
#include "nuncio.h"
#include "stats.h"
#include "stream.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
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
    /* This iteration's access log lines go to the writer thread in one batch. */
    if (w->albuf)
        access_log_flush(w->albuf);
}

/* Calls in flight from which a worker batches its polls (io_batch_us). Below
 * it a call mostly waits on one peer at a time, and a delayed poll would only
 * delay that call. Bulk data batches too: WORKER_BATCH_BULK_TURNS turns in a
 * row that each read WORKER_BATCH_BULK_BYTES or more. A lone call of up to
 * 128 KiB, even back to back, stays below that (its latency measured the same
 * with and without), a 1 MiB upload does not. */
#define WORKER_BATCH_MIN_STREAMS 16
#define WORKER_BATCH_BULK_BYTES (8 * 1024)
#define WORKER_BATCH_BULK_TURNS 8

static void on_prepare(struct ev_loop *loop, ev_prepare *p, int revents)
{
    struct worker *w = nu_container_of(p, struct worker, sweep);
    worker_sweep(w);
    /* A busy loop that wakes for every packet spends its time waking: with
     * 256 calls in flight nuncio polled once per request, and each wake-up
     * and each small write cost more than the request's own work (bench/profile,
     * docs/internals.md). libev's collect interval makes the next poll wait
     * until io_batch_us after the last one, so it returns more events and the
     * writes they cause leave together. The wait only happens when polls come
     * closer than that, i.e. under load; output queued this turn is already
     * written (the sweep above runs first). Busy is many exchanges, or bulk
     * data: a 1 MiB upload through nuncio then reads and forwards ~50 µs of
     * data at a time instead of each 16 KiB segment as it lands, with a
     * quarter of the polls, reads and writes; the load generator's core, the
     * bench's limit, is woken that much less (upload +25 %). */
    if (w->index >= 0 && w->gen) {
        if (w->turn_bytes < WORKER_BATCH_BULK_BYTES)
            w->bulk_turns = 0;
        else if (w->bulk_turns < WORKER_BATCH_BULK_TURNS)
            w->bulk_turns++;
        int busy = w->live_streams >= WORKER_BATCH_MIN_STREAMS || w->bulk_turns >= WORKER_BATCH_BULK_TURNS;
        ev_set_io_collect_interval(loop, busy ? w->gen->cfg.io_batch_us / 1e6 : 0.);
    }
    w->turn_bytes = 0;
}

/* ------------------------------------------------------------ mailbox */

int worker_post(struct worker *w, const struct mail *m)
{
    struct mail *copy = malloc(sizeof *copy);
    if (!copy)
        return NU_ERR_NOMEM;
    *copy = *m;
    copy->next = NULL;
    pthread_mutex_lock(&w->mail_lock);
    if (w->mail_tail)
        w->mail_tail->next = copy;
    else
        w->mail_head = copy;
    w->mail_tail = copy;
    pthread_mutex_unlock(&w->mail_lock);
    ev_async_send(w->loop, &w->wake);
    return NU_OK;
}

static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    struct worker *w = nu_container_of(a, struct worker, wake);
    pthread_mutex_lock(&w->mail_lock);
    struct mail *m = w->mail_head;
    w->mail_head = w->mail_tail = NULL;
    pthread_mutex_unlock(&w->mail_lock);
    while (m) {
        struct mail *next = m->next;
        if (w->on_mail)
            w->on_mail(w, m);
        free(m);
        m = next;
    }
}

int worker_init(struct worker *w, struct ev_loop *loop, int index)
{
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->index = index;
    pthread_mutex_init(&w->mail_lock, NULL);
    ev_prepare_init(&w->sweep, on_prepare);
    ev_prepare_start(loop, &w->sweep);
    /* The sweep must not keep the loop alive on its own. */
    ev_unref(loop);
    ev_async_init(&w->wake, on_wake);
    ev_async_start(loop, &w->wake);
    return NU_OK;
}

void worker_destroy(struct worker *w)
{
    worker_sweep(w);
    ev_ref(w->loop);
    ev_prepare_stop(w->loop, &w->sweep);
    ev_async_stop(w->loop, &w->wake);
    h2_mem_free(w);
    struct mail *m = w->mail_head;
    while (m) {
        struct mail *next = m->next;
        if (m->alog)
            access_log_unref(m->alog);
        free(m);
        m = next;
    }
    w->mail_head = w->mail_tail = NULL;
    pthread_mutex_destroy(&w->mail_lock);
}

/* ------------------------------------------------------------ accepting */

static int attach_h2(struct conn *c, void *arg)
{
    struct front *f = arg;
    struct h2s_opts o = {
        .max_concurrent_streams = f->max_concurrent_streams,
        .max_header_list_size = f->max_header_list_size,
        .idle_timeout = f->idle_timeout,
        .header_timeout = f->header_timeout,
    };
    return h2s_attach(c, stream_open, f->w, &o);
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
    struct h1s_opts o = {
        .idle_timeout = f->idle_timeout,
        .header_timeout = f->header_timeout,
        .enable_http10 = f->enable_http10,
        .server_name = f->server_name,
        .to_h2 = alpn ? NULL : attach_h2, /* ALPN http/1.1 was a promise: no sniffing */
        .to_h2_arg = f,
        .max_header_bytes = f->max_header_list_size, /* Module max_request_headers_kb */
        .body_window = f->body_window,               /* Module buffer_limit_bytes */
    };
    return h1s_attach(c, stream_open, f->w, &o);
}

static void release_front(void *f)
{
    front_unref(f);
}

static int attach_front(struct conn *c, void *arg)
{
    struct front *f = front_ref(arg);
    c->owner = f; /* the conn's reference: its TLS context and options outlive reloads */
    c->owner_release = release_front;
    conn_accept_with(c, f->tls, f->header_timeout, ready_front, f);
    return NU_OK;
}

/* ------------------------------------------------------------ generations */

static struct listener *find_listener(struct worker *w, const struct nu_listener_cfg *lc)
{
    for (struct listener *l = w->listeners; l; l = l->next)
        if (l->attach == attach_front && l->want_port == lc->port && strcmp(l->address, lc->address) == 0)
            return l;
    return NULL;
}

static void close_listener(struct worker *w, struct listener *l)
{
    struct listener **pp = &w->listeners;
    while (*pp != l)
        pp = &(*pp)->next;
    *pp = l->next;
    if (l->attach == attach_front)
        front_unref(l->arg);
    listener_close(l);
}

/* Makes the worker's listeners those of g: sockets whose address and port
 * stay are kept (no connection is refused during a reload), new ones are
 * opened first so that a port that cannot be bound fails the reload before
 * anything changed, and the rest are closed. */
static int sync_listeners(struct worker *w, struct gen *g, char *err, size_t errlen)
{
    const struct nu_config *cfg = &g->cfg;
    struct listener *opened[64];
    size_t n_opened = 0;
    int rc = NU_OK;
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct nu_listener_cfg *lc = &cfg->listeners[i];
        if (find_listener(w, lc))
            continue;
        if (n_opened == NU_ARRAY_LEN(opened)) {
            snprintf(err, errlen, "more than %zu new listeners in one reload", NU_ARRAY_LEN(opened));
            rc = NU_ERR_CONFIG;
            break;
        }
        struct listener *l =
            listener_open(w, lc->name, lc->address, lc->port, attach_front, front_ref(g->fronts[i]), &rc);
        if (!l) {
            front_unref(g->fronts[i]);
            snprintf(err, errlen, "listener %s: cannot listen on %s:%d", lc->name, lc->address, lc->port);
            break;
        }
        opened[n_opened++] = l;
        if (w->index == 0)
            nu_log(NU_LOG_INFO, "listener %s on %s:%d (%s)", lc->name, lc->address, l->port,
                   lc->tls ? "HTTPS: TLS with ALPN, and cleartext HTTP/1.1 and HTTP/2"
                           : "cleartext HTTP/1.1 and HTTP/2");
    }
    if (rc != NU_OK) {
        for (size_t i = 0; i < n_opened; i++)
            close_listener(w, opened[i]);
        return rc;
    }
    /* Every listener now serves g: kept ones take its front, the others close. */
    struct listener *l = w->listeners;
    while (l) {
        struct listener *next = l->next;
        if (l->attach == attach_front) {
            size_t i = 0;
            while (i < cfg->n_listeners &&
                   !(l->want_port == cfg->listeners[i].port && strcmp(l->address, cfg->listeners[i].address) == 0))
                i++;
            if (i == cfg->n_listeners) {
                if (w->index == 0)
                    nu_log(NU_LOG_INFO, "listener %s on %s:%d closed (not in generation %llu)", l->name, l->address,
                           l->port, (unsigned long long)g->id);
                close_listener(w, l);
            } else if (l->arg != g->fronts[i]) {
                front_unref(l->arg);
                l->arg = front_ref(g->fronts[i]);
            }
        }
        l = next;
    }
    return NU_OK;
}

/* Loads the configuration into this worker's Lua state and makes it the
 * current generation, or leaves the current one serving. */
static int load_generation(struct worker *w, uint64_t id, struct access_log *alog, char *err, size_t errlen)
{
    struct nu_config cfg;
    if (lua_bridge_load_config(w->L, w->opts, &cfg, LB_LOAD_STAGE_QUIET) != NU_OK) {
        snprintf(err, errlen, "the configuration did not load (errors logged)");
        return NU_ERR_CONFIG;
    }
    struct gen *g = gen_new(w, id, &cfg, alog, err, errlen);
    if (!g) {
        config_free(&cfg);
        lua_bridge_discard(w->L);
        return NU_ERR_CONFIG;
    }
    int rc = sync_listeners(w, g, err, errlen);
    if (rc != NU_OK) {
        lua_bridge_discard(w->L);
        gen_unref(g);
        return rc;
    }
    /* Lua and C switch together, between two events: every exchange from
     * here routes with the new chain into the new clusters. */
    lua_bridge_commit(w->L, g->lua_wants);
    struct gen *old = w->gen;
    w->gen = g;
    if (old)
        gen_unref(old);
    return NU_OK;
}

/* ------------------------------------------------------------ shutdown */

static void finish_drain(struct worker *w)
{
    ev_timer_stop(w->loop, &w->drain_timer);
    ev_break(w->loop, EVBREAK_ALL);
}

/* A downstream conn is one accepted here; upstream ones are counted apart. */
static uint64_t downstream_conns(const struct worker *w)
{
    return w->live_conns - w->live_upstream_conns;
}

static void on_drain_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct worker *w = nu_container_of(t, struct worker, drain_timer);
    if (w->draining == 1) {
        /* The shutdown notice had its round trip: now the real GOAWAY. */
        w->draining = 2;
        for (struct conn *c = w->conns; c; c = c->all_next)
            if (!c->closing && c->h && c->h->drain)
                c->h->drain(c, 1);
        ev_timer_set(t, 0.05, 0.05);
        ev_timer_start(loop, t);
        return;
    }
    if (w->live_streams == 0 && downstream_conns(w) == 0)
        finish_drain(w);
}

static void start_drain(struct worker *w)
{
    if (w->draining)
        return;
    w->draining = 1;
    while (w->listeners)
        close_listener(w, w->listeners);
    nu_log(NU_LOG_INFO, "[w%d] draining: %llu exchange(s) in flight on %llu connection(s)", w->index,
           (unsigned long long)w->live_streams, (unsigned long long)downstream_conns(w));
    for (struct conn *c = w->conns; c; c = c->all_next) {
        if (c->closing)
            continue;
        if (c->h && c->h->drain)
            c->h->drain(c, 0);
        else if (!c->h)
            conn_close(c, NU_ERR_CLOSED); /* still in its TLS handshake or first-byte wait */
    }
    ev_timer_init(&w->drain_timer, on_drain_timer, 0.2, 0.);
    ev_timer_start(w->loop, &w->drain_timer);
}

/* ------------------------------------------------------------ the thread */

static void post_control(struct worker *w, int kind, int ok, uint64_t gen, void *ptr, const char *msg)
{
    struct mail m = {.kind = kind, .worker = w->index, .ok = ok, .gen = gen, .ptr = ptr};
    if (msg)
        snprintf(m.msg, sizeof m.msg, "%s", msg);
    if (worker_post(w->control, &m) != NU_OK)
        nu_log(NU_LOG_ERROR, "[w%d] out of memory reporting to the control thread", w->index);
}

static void fill_gauges(struct worker *w, struct stats_gauges *g)
{
    memset(g, 0, sizeof *g);
    g->worker = w->index;
    g->downstream_conns_active = downstream_conns(w);
    g->downstream_conns_total = w->accepted;
    g->upstream_conns_active = w->live_upstream_conns;
    g->streams_active = w->live_streams;
    g->lua_errors = stream_api_counter(STREAM_API_LUA_ERRORS);
    g->upstream_conns_total = w->upstream_connects;
    g->upstream_retries = w->upstream_retries;
    g->upstream_ejections = w->upstream_ejections;
    memcpy(g->h2_abuse, w->h2_abuse, sizeof g->h2_abuse);
}

static void worker_on_mail(struct worker *w, struct mail *m)
{
    char err[512];
    switch (m->kind) {
    case MAIL_RELOAD: {
        int rc = w->draining ? NU_ERR_CLOSED : load_generation(w, m->gen, m->alog, err, sizeof err);
        if (m->alog)
            access_log_unref(m->alog); /* the generation took its own reference */
        if (rc != NU_OK && !w->draining)
            nu_log(NU_LOG_ERROR, "[w%d] generation %llu refused: %s; generation %llu keeps serving", w->index,
                   (unsigned long long)m->gen, err, (unsigned long long)(w->gen ? w->gen->id : 0));
        post_control(w, MAIL_RELOADED, rc == NU_OK, m->gen, NULL, rc == NU_OK ? NULL : err);
        break;
    }
    case MAIL_SNAPSHOT: {
        struct worker_report *r = calloc(1, sizeof *r);
        if (r) {
            fill_gauges(w, &r->gauges);
            r->snap = w->stats ? stats_snapshot(w->stats, &r->gauges) : NULL;
        }
        /* NULL goes back too: the scrape must not wait for a report that cannot come. */
        struct mail reply = {
            .kind = MAIL_SNAPSHOT_DONE, .worker = w->index, .ok = r != NULL, .ptr = r, .token = m->token};
        if (worker_post(w->control, &reply) != NU_OK && r) {
            stats_snap_free(r->snap);
            free(r);
        }
        break;
    }
    case MAIL_DRAIN:
        start_drain(w);
        break;
    case MAIL_STOP:
        if (w->draining || w->live_streams)
            nu_log(NU_LOG_WARN, "[w%d] stopping now: %llu exchange(s) cut", w->index,
                   (unsigned long long)w->live_streams);
        finish_drain(w);
        break;
    default:
        break;
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    /* Signals are the control thread's: block them here. */
    sigset_t set;
    sigfillset(&set);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    char err[512];
    int rc = NU_ERR_NOMEM;
    w->stats = stats_new();
    w->L = lua_bridge_new(w->opts);
    if (w->stats && w->L) {
        struct access_log *alog = w->start_alog;
        w->start_alog = NULL;
        if (alog)
            w->albuf = access_log_buf_new();
        rc = load_generation(w, w->start_gen, alog, err, sizeof err);
        if (alog)
            access_log_unref(alog);
    } else {
        snprintf(err, sizeof err, "out of memory (Lua state or metrics)");
    }
    if (rc != NU_OK) {
        post_control(w, MAIL_STARTED, 0, w->start_gen, NULL, err);
    } else {
        post_control(w, MAIL_STARTED, 1, w->start_gen, NULL, NULL);
        ev_run(w->loop, 0);
    }
    worker_stop(w);
    if (w->gen) {
        gen_unref(w->gen);
        w->gen = NULL;
    }
    worker_sweep(w);
    if (w->albuf) {
        access_log_flush(w->albuf);
        access_log_buf_free(w->albuf);
        w->albuf = NULL;
    }
    lua_bridge_close(w->L);
    w->L = NULL;
    buf_pool_release();
    hdr_cache_release();
    stream_cache_release();
    stats_free(w->stats);
    w->stats = NULL;
    struct worker *control = w->control;
    int index = w->index;
    worker_destroy(w);
    struct ev_loop *loop = w->loop;
    ev_loop_destroy(loop);
    struct mail m = {.kind = MAIL_EXITED, .worker = index, .ok = rc == NU_OK};
    worker_post(control, &m);
    return NULL;
}

int worker_spawn(struct worker *w, int index, struct worker *control, const struct lua_bridge_opts *opts, uint64_t gen,
                 struct access_log *alog)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    if (!loop)
        return NU_ERR_NOMEM;
    worker_init(w, loop, index);
    w->control = control;
    w->opts = opts;
    w->start_gen = gen;
    w->on_mail = worker_on_mail;
    w->start_alog = alog ? access_log_ref(alog) : NULL; /* the thread's first generation takes it */
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        if (alog)
            access_log_unref(alog);
        w->start_alog = NULL;
        worker_destroy(w);
        ev_loop_destroy(loop);
        return NU_ERR_NOMEM;
    }
    return NU_OK;
}

void worker_stop(struct worker *w)
{
    while (w->listeners)
        close_listener(w, w->listeners);
    for (struct conn *c = w->conns; c; c = c->all_next)
        conn_close(c, NU_ERR_CLOSED);
    worker_sweep(w);
}
