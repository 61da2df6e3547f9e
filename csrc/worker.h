/* One event-loop thread: its loop, Lua state, listeners, upstream clusters
 * and the configuration generation in use. Nothing here is shared with other
 * workers, so the request path takes no locks. */
#ifndef NUNCIO_WORKER_H
#define NUNCIO_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdint.h>

#include "h2_guard.h"

struct conn;
struct lua_State;
struct upstream_set;
struct listener;
struct nu_config;
struct front;
struct h2_mem_pool;
struct gen;
struct stats;
struct access_log;
struct access_log_buf;
struct lua_bridge_opts;

/* Objects freed from the loop's prepare sweep, never inside a library callback. */
struct worker_defer {
    struct worker_defer *next;
    void (*fn)(struct worker_defer *d);
};

/* Messages between the control thread and the workers: the only thing they
 * share, off the request path (a mutex-guarded list and an ev_async wakeup). */
enum mail_kind {
    MAIL_STARTED = 1,   /* worker -> control: first generation serving (ok) or not */
    MAIL_RELOAD,        /* control -> worker: load generation `gen` */
    MAIL_RELOADED,      /* worker -> control: it is serving (ok) or the old one still is */
    MAIL_SNAPSHOT,      /* control -> worker: copy your counters for `token` */
    MAIL_SNAPSHOT_DONE, /* worker -> control: `ptr` is a struct stats_snap (receiver frees) */
    MAIL_DRAIN,         /* control -> worker: stop accepting, finish in-flight exchanges, exit */
    MAIL_STOP,          /* control -> worker: close everything now and exit */
    MAIL_EXITED,        /* worker -> control: its loop has ended */
};

struct mail {
    struct mail *next;
    int kind;
    int worker; /* the sender's index (-1: control) */
    int ok;
    uint64_t gen;
    struct access_log *alog; /* RELOAD: the access log for the new generation (a reference goes with it) */
    void *ptr;
    void *token;
    char msg[256];
};

struct worker {
    struct ev_loop *loop;
    ev_prepare sweep;
    struct conn *pending;       /* connections with output to flush (Redis "pending writes") */
    struct conn *conns;         /* every live connection, for shutdown */
    struct worker_defer *defer; /* objects to free at the next sweep */
    struct lua_State *L;
    struct listener *listeners;
    struct gen *gen; /* current generation: new exchanges start on it (holds a reference) */
    int index;       /* 0.. for data workers; -1 for the control thread */
    pthread_t thread;
    ev_async wake;
    pthread_mutex_t mail_lock;
    struct mail *mail_head, *mail_tail;
    void (*on_mail)(struct worker *w, struct mail *m); /* runs on this worker's thread; m is freed after */
    struct worker *control;                            /* where a data worker reports */
    const struct lua_bridge_opts *opts;
    struct stats *stats;           /* request metrics; only this thread writes them */
    struct access_log_buf *albuf;  /* this thread's access log lines until the sweep hands them over */
    uint64_t accepted;             /* downstream connections accepted */
    uint64_t start_gen;            /* generation id to load at start */
    struct access_log *start_alog; /* its access log (a reference the thread takes) */
    uint64_t upstream_connects, upstream_retries, upstream_ejections; /* over every generation */
    uint64_t h2_abuse[H2_ABUSE_KINDS]; /* HTTP/2 connections answered for breaking a budget, by kind (h2_guard.h) */
    int draining;
    ev_timer drain_timer;
    uint64_t next_conn_id;
    uint64_t next_stream_id;
    uint64_t live_streams; /* exchanges allocated and not yet freed */
    size_t turn_bytes;     /* read since the last prepare: bulk data in flight (on_prepare) */
    unsigned bulk_turns;   /* turns in a row that read bulk data */
    uint64_t live_conns;
    uint64_t live_upstream_conns; /* h2c connections not yet closed (part of live_conns) */
    int ready;                    /* listeners are bound and Lua is loaded */
    unsigned char lua_wants[4];   /* per lb_phase: does any filter run in it */
    struct h2_mem_pool *h2_mem;   /* owned: nghttp2's big session buffers (h2_mem.c); NULL until first used */
};

/* Sets up w on loop (the calling thread's) with its mailbox. */
int worker_init(struct worker *w, struct ev_loop *loop, int index);
/* Starts a data worker's thread: it loads the configuration in its own Lua
 * state, opens its listeners (SO_REUSEPORT) and reports MAIL_STARTED. */
int worker_spawn(struct worker *w, int index, struct worker *control, const struct lua_bridge_opts *opts, uint64_t gen,
                 struct access_log *alog);
/* Queues a copy of m for w's thread and wakes it; safe from any thread. */
int worker_post(struct worker *w, const struct mail *m);
/* Closes listeners and every connection (streams end with them). */
void worker_stop(struct worker *w);
void worker_defer(struct worker *w, struct worker_defer *d);
void worker_want_flush(struct worker *w, struct conn *c);
/* Runs one sweep now (tests and shutdown). */
void worker_sweep(struct worker *w);
void worker_destroy(struct worker *w);

#endif
