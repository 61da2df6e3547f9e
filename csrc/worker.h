/* One event-loop thread: its loop, Lua state, listeners, upstream clusters
 * and the configuration generation in use. Nothing here is shared with other
 * workers, so the request path takes no locks. */
#ifndef NUNCIO_WORKER_H
#define NUNCIO_WORKER_H

#include <ev.h>
#include <stdint.h>

struct conn;
struct lua_State;
struct upstream_set;
struct listener;
struct nu_config;
struct front;
struct h2_mem_pool;

/* Objects freed from the loop's prepare sweep, never inside a library callback. */
struct worker_defer {
    struct worker_defer *next;
    void (*fn)(struct worker_defer *d);
};

struct worker {
    struct ev_loop *loop;
    ev_prepare sweep;
    struct conn *pending;       /* connections with output to flush (Redis "pending writes") */
    struct conn *conns;         /* every live connection, for shutdown */
    struct worker_defer *defer; /* objects to free at the next sweep */
    struct lua_State *L;
    struct upstream_set *ups;
    struct listener *listeners;
    struct front *fronts; /* per data listener: TLS and security settings */
    const struct nu_config *cfg;
    uint64_t next_conn_id;
    uint64_t next_stream_id;
    uint64_t live_streams; /* exchanges allocated and not yet freed */
    uint64_t live_conns;
    uint64_t live_upstream_conns; /* h2c connections not yet closed (part of live_conns) */
    int ready; /* listeners are bound and Lua is loaded */
    unsigned char lua_wants[4]; /* per lb_phase: does any filter run in it */
    struct h2_mem_pool *h2_mem; /* owned: nghttp2's big session buffers (h2_mem.c); NULL until first used */
};

int worker_init(struct worker *w, struct ev_loop *loop, const struct nu_config *cfg);
/* Opens the upstream clusters, the listeners and the admin port of cfg. */
int worker_start(struct worker *w);
/* Closes listeners and every connection (streams end with them). */
void worker_stop(struct worker *w);
void worker_defer(struct worker *w, struct worker_defer *d);
void worker_want_flush(struct worker *w, struct conn *c);
/* Runs one sweep now (tests and shutdown). */
void worker_sweep(struct worker *w);
void worker_destroy(struct worker *w);

#endif
