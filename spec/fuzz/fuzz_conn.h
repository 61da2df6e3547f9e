/* What the connection harnesses (fuzz_h2s, fuzz_h1s, fuzz_authority) share:
 * a worker without a network, an accepted conn whose socket is /dev/null, and
 * a stub in place of stream.c (which needs a configuration generation, Lua
 * and upstreams) that answers each exchange the way the stream would drive
 * the codec: a reply at once, a reset, a reply in two steps a tick later, a
 * body that is credited late. The request's :path picks the behaviour, so
 * the fuzzer reaches each of them from the bytes alone.
 *
 * One input is one connection: its bytes go to the codec's on_read in pieces
 * of a fixed cycle of sizes (as read_some would hand them over), each followed
 * by the worker sweep (the codec's fill, frees) and a stub tick (the
 * "upstream" answering). Then the shutdown notice and the final drain, and
 * the connection is closed and swept away. Every exchange opened must have
 * been closed by then (abort otherwise); leaks are LeakSanitizer's.
 * Deterministic: no clock is read by the harness, no timer is run. */
#ifndef NUNCIO_FUZZ_CONN_H
#define NUNCIO_FUZZ_CONN_H

#include <arpa/inet.h>
#include <ev.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "buf.h"
#include "conn.h"
#include "exchange.h"
#include "h1s.h"
#include "h2s.h"
#include "hdr.h"
#include "log.h"
#include "nuncio.h"
#include "worker.h"

#define FZ_ASSERT(cond)                                                                                                \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond);                          \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static struct ev_loop *fz_loop;
static struct worker fz_w;

/* ------------------------------------------------------------ the stub stream */

struct fz_x {
    struct exchange x; /* first: codecs hold &f->x */
    struct worker_defer defer;
    struct fz_x *next_pending;
    int mode;    /* the byte after '/' in :path */
    int stage;   /* 0: nothing sent; 1: head sent, more to come; 2: the answer is all queued */
    int pending; /* on fz_pending */
    int closed;
};

static struct fz_x *fz_pending; /* exchanges with work for the next tick */
static long fz_live;            /* stubs opened and not yet freed */
/* Optional oracle run on every request head (fuzz_authority's). */
static void (*fz_on_head)(struct exchange *x);

static struct fz_x *fz_of(struct exchange *x)
{
    return (struct fz_x *)x;
}

static void fz_free(struct worker_defer *d)
{
    struct fz_x *f = nu_container_of(d, struct fz_x, defer);
    hdr_clear(&f->x.req.hdrs);
    hdr_clear(&f->x.req.trailers);
    hdr_clear(&f->x.resp.hdrs);
    hdr_clear(&f->x.resp.trailers);
    chunkq_clear(&f->x.req.body);
    chunkq_clear(&f->x.resp.body);
    free(f);
    fz_live--;
}

static void fz_want_tick(struct fz_x *f)
{
    if (f->pending || f->closed)
        return;
    f->pending = 1;
    f->next_pending = fz_pending;
    fz_pending = f;
}

static void fz_body(struct exchange *x, size_t n)
{
    static const char pat[] = "0123456789abcdefghijklmnopqrstuvwxyz\n";
    uint8_t tmp[4096];
    for (size_t i = 0; i < sizeof tmp; i++)
        tmp[i] = (uint8_t)pat[i % (sizeof pat - 1)];
    while (n > 0) {
        size_t k = n < sizeof tmp ? n : sizeof tmp;
        if (chunkq_append(&x->resp.body, tmp, k) != NU_OK)
            return;
        n -= k;
    }
}

/* The answer's head (and, unless partial, all of it), as stream.c hands it over. */
static void fz_reply(struct fz_x *f, int partial)
{
    struct exchange *x = &f->x;
    if (!x->down.ops || f->stage != 0)
        return;
    const char *status = f->mode == 'e' ? "204" : f->mode == 'n' ? "404" : f->mode == 'c' ? "100" : "200";
    int rc = hdr_add(&x->resp.hdrs, HDR_LIT(":status"), status, 3);
    rc |= hdr_add(&x->resp.hdrs, HDR_LIT("content-type"), HDR_LIT("application/grpc"));
    rc |= hdr_add(&x->resp.hdrs, HDR_LIT("x-fuzz"), HDR_LIT("stub"));
    if (f->mode == 'k')
        rc |= hdr_add(&x->resp.hdrs, HDR_LIT("connection"), HDR_LIT("close")); /* hop-by-hop: dropped */
    if (f->mode == 'L')
        rc |= hdr_add(&x->resp.hdrs, HDR_LIT("content-length"), HDR_LIT("3")); /* shorter than the body */
    if (rc != NU_OK) {
        x->down.ops->reset(x, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (f->mode != 'e' && f->mode != 'n')
        fz_body(x, f->mode == 'b' ? 70000 : 6);
    if (partial) {
        f->stage = 1;
        fz_want_tick(f);
    } else {
        if (f->mode == 't' || f->mode == 'b')
            hdr_add(&x->resp.trailers, HDR_LIT("grpc-status"), HDR_LIT("0"));
        x->resp.end = 1;
        f->stage = 2;
    }
    if (x->down.ops->submit_headers(x) != NU_OK) {
        if (x->down.ops)
            x->down.ops->reset(x, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (x->down.ops)
        x->down.ops->resume(x);
}

/* HTTP/1: what reaches the stream is a valid field (RFC 9110 5.5): no
 * control byte but HTAB in a value, so it can go on as HTTP/1 or HTTP/2. */
static void fz_check_values(const struct exchange *x, const struct hdr_map *m)
{
    if (!x->down.http1)
        return;
    for (uint32_t i = 0; i < m->n; i++)
        for (uint32_t k = 0; k < m->v[i].vlen; k++) {
            unsigned char b = (unsigned char)m->v[i].value[k];
            FZ_ASSERT(!((b < 0x20 && b != '\t') || b == 0x7f));
        }
}

static void fz_on_headers(struct exchange *x)
{
    struct fz_x *f = fz_of(x);
    fz_check_values(x, &x->req.hdrs);
    size_t pl = 0;
    const char *path = hdr_get(&x->req.hdrs, HDR_LIT(":path"), &pl);
    f->mode = path && pl > 1 ? (unsigned char)path[1] : 0;
    if (fz_on_head)
        fz_on_head(x);
    if (f->mode == 'r') {
        x->down.ops->reset(x, NGHTTP2_REFUSED_STREAM);
        return;
    }
    if (f->mode == 'h')
        fz_reply(f, 0); /* answered before the request body came (a filter's local reply) */
}

static void fz_on_data(struct exchange *x, const uint8_t *p, size_t n)
{
    struct fz_x *f = fz_of(x);
    if (f->mode == 'w') {
        fz_want_tick(f); /* credited a tick later */
        return;
    }
    x->down.ops->consume(x, n);
}

static void fz_on_end(struct exchange *x)
{
    struct fz_x *f = fz_of(x);
    fz_check_values(x, &x->req.trailers);
    if (f->mode == 'w' && x->down.ops)
        x->down.ops->consume(x, (size_t)x->down.unconsumed);
    if (f->mode == 'l' || f->mode == 'w')
        fz_want_tick(f);
    else if (f->mode != 'z') /* z: never answered; the connection's end closes it */
        fz_reply(f, 0);
}

static void fz_on_body_taken(struct exchange *x, size_t n)
{
    FZ_ASSERT(!fz_of(x)->closed);
}

static void fz_on_close(struct exchange *x, uint32_t h2_error, int reason, const char *detail)
{
    struct fz_x *f = fz_of(x);
    FZ_ASSERT(!f->closed); /* told once */
    FZ_ASSERT(x->down.ops == NULL);
    f->closed = 1;
    if (f->pending) {
        for (struct fz_x **pp = &fz_pending; *pp; pp = &(*pp)->next_pending)
            if (*pp == f) {
                *pp = f->next_pending;
                break;
            }
        f->pending = 0;
    }
    f->defer.fn = fz_free;
    worker_defer(&fz_w, &f->defer); /* the codec may still be on the stack */
}

static const struct exchange_events fz_events = {
    .on_headers = fz_on_headers,
    .on_data = fz_on_data,
    .on_end = fz_on_end,
    .on_body_taken = fz_on_body_taken,
    .on_close = fz_on_close,
};

static struct exchange *fz_open(void *arg, struct conn *c)
{
    struct fz_x *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->x.down.id = f->x.up.id = -1;
    f->x.down_ev = &fz_events;
    fz_live++;
    return &f->x;
}

/* The "upstream" answers: the second half of a two-step reply, late credit. */
static void fz_tick(void)
{
    struct fz_x *list = fz_pending;
    fz_pending = NULL;
    while (list) {
        struct fz_x *f = list;
        list = f->next_pending;
        f->pending = 0;
        struct exchange *x = &f->x;
        if (f->closed || !x->down.ops)
            continue;
        if (x->down.unconsumed)
            x->down.ops->consume(x, (size_t)x->down.unconsumed);
        if (!x->down.ops || !x->req.end)
            continue;
        if (f->stage == 0) {
            fz_reply(f, 1);
        } else if (f->stage == 1) {
            fz_body(x, 10);
            hdr_add(&x->resp.trailers, HDR_LIT("grpc-status"), HDR_LIT("0"));
            hdr_add(&x->resp.trailers, HDR_LIT("grpc-message"), HDR_LIT("late"));
            x->resp.end = 1;
            f->stage = 2;
            x->down.ops->resume(x);
        }
    }
    worker_sweep(&fz_w);
}

/* ------------------------------------------------------------ the connection */

static int fz_alive; /* the conn under test is not freed yet */

static void fz_released(void *p)
{
    *(int *)p = 0;
}

static const struct h2s_opts fz_h2_opts = {
    .max_concurrent_streams = 100,
    .max_header_list_size = 60 * 1024,
    .idle_timeout = 300,
    .header_timeout = 10,
};

static int fz_attach_h2(struct conn *c, void *arg)
{
    return h2s_attach(c, fz_open, NULL, &fz_h2_opts);
}

static void fz_init(void)
{
    if (fz_loop)
        return;
    fz_loop = ev_loop_new(EVFLAG_AUTO);
    if (!fz_loop || worker_init(&fz_w, fz_loop, 0) != NU_OK)
        abort();
    /* Every log line formatted (its arguments read); -close_fd_mask=2 keeps them off the terminal. */
    nu_log_level = getenv("NUNCIO_FUZZ_QUIET") ? NU_LOG_ERROR + 1 : NU_LOG_DEBUG;
}

/* An accepted cleartext connection whose output goes to /dev/null. */
static struct conn *fz_conn(void)
{
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        abort();
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(40000)};
    sa.sin_addr.s_addr = htonl(0x7f000001);
    struct conn *c = conn_accepted(&fz_w, fd, (const struct sockaddr *)&sa);
    if (!c)
        abort();
    fz_alive = 1;
    c->owner = &fz_alive;
    c->owner_release = fz_released;
    return c;
}

/* Feeds p to the conn's codec as read_some would, then shuts the connection
 * down and checks that every exchange was let go. c has its codec attached. */
static void fz_run(struct conn *c, const uint8_t *p, size_t n)
{
    static const size_t cuts[] = {1, 9, 64, 512, 4096, 3, 16384};
    conn_start(c);
    worker_sweep(&fz_w);
    size_t off = 0;
    unsigned i = 0;
    while (off < n && fz_alive && !c->closing) {
        /* The codec stopped reading (HTTP/1 back-pressure): the upstream's
         * progress may restart it; else the client waits for a timeout. */
        for (int t = 0; t < 3 && !ev_is_active(&c->rio) && fz_alive && !c->closing; t++)
            fz_tick();
        if (!fz_alive || c->closing || !ev_is_active(&c->rio) || c->read_paused)
            break;
        size_t k = cuts[i++ % NU_ARRAY_LEN(cuts)];
        if (k > n - off)
            k = n - off;
        if (c->h->on_read(c, p + off, k) < 0)
            conn_close(c, NU_ERR_PROTO);
        else
            conn_want_write(c);
        off += k;
        worker_sweep(&fz_w);
        if (fz_alive)
            fz_tick();
    }
    for (int t = 0; t < 4 && fz_alive && fz_pending; t++)
        fz_tick();
    /* Shutting down: the notice, then the final drain, as control.c sends them. */
    for (int final = 0; final < 2 && fz_alive && !c->closing; final++) {
        if (c->h->drain)
            c->h->drain(c, final);
        worker_sweep(&fz_w);
        if (fz_alive)
            fz_tick();
    }
    if (fz_alive && !c->closing)
        conn_close(c, NU_OK); /* the client went away */
    worker_sweep(&fz_w);
    FZ_ASSERT(!fz_alive);
    FZ_ASSERT(fz_pending == NULL);
    FZ_ASSERT(fz_live == 0); /* every exchange was closed and freed */
    FZ_ASSERT(fz_w.pending == NULL && fz_w.defer == NULL);
}

#endif
