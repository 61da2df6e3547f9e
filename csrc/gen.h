/* A configuration generation inside one worker: the C half of a loaded
 * config (clusters and their pools, route policies, listener settings) that
 * the Lua chain of the same load routes into. A reload builds a new one and
 * makes it current; exchanges keep the generation they started on (they hold
 * a reference) and the old one is freed once the last of them ends, so
 * in-flight calls finish on the config they were routed with. */
#ifndef NUNCIO_GEN_H
#define NUNCIO_GEN_H

#include <stdint.h>

#include "config.h"
#include "stats.h"
#include "lua_bridge.h"
#include "worker.h"

struct upstream_set;
struct tls_server;
struct access_log;

/* What a data listener hands each connection it accepts. Refcounted: the
 * listener holds one reference and every connection accepted through it
 * another, since a connection's TLS context and codec options must outlive
 * the generation that configured them (HTTP/2 connections span reloads). */
struct front {
    unsigned refs;
    struct worker *w;
    struct tls_server *tls; /* NULL: cleartext only */
    int security_model;
    int l7_depth;
    double idle_timeout, header_timeout; /* seconds; 0: off */
    unsigned max_concurrent_streams;     /* HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS */
    uint32_t max_header_list_size;       /* bytes of a request's header block */
    uint32_t body_window;                /* request body bytes held per stream before the client is not
                                          * read (Module buffer_limit_bytes): HTTP/1.1's window */
    int enable_http10;
    char *server_name; /* owned */
};

struct front *front_new(struct worker *w, const struct nu_config *cfg, const struct nu_listener_cfg *lc, char *err,
                        size_t errlen);
static inline struct front *front_ref(struct front *f)
{
    f->refs++;
    return f;
}
void front_unref(struct front *f);

struct gen {
    struct worker *w;
    uint64_t id;
    unsigned refs; /* the worker's current pointer, and each exchange started on it */
    struct nu_config cfg;
    struct upstream_set *ups;
    struct front **fronts;                   /* one per cfg.listeners[i] */
    unsigned char lua_wants[LB_PHASE_COUNT]; /* which filter phases have work */
    struct access_log *alog;                 /* shared with the other workers; NULL: no access log */
    struct stats_grpc_cfg grpc;              /* cfg.grpc_stats as the metrics take it */
    struct worker_defer defer;
};

/* Builds the C side of a loaded config: takes cfg (its contents move into
 * the generation, cfg is zeroed) and a reference on alog. NULL with err
 * filled on failure (a client certificate that does not load, out of memory). */
struct gen *gen_new(struct worker *w, uint64_t id, struct nu_config *cfg, struct access_log *alog, char *err,
                    size_t errlen);
static inline struct gen *gen_ref(struct gen *g)
{
    g->refs++;
    return g;
}
/* The last reference frees the generation from the worker's sweep: its
 * pooled upstream connections close then, never inside a library callback. */
void gen_unref(struct gen *g);

#endif
