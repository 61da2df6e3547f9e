/* Metrics without I/O: per-worker counters and histograms, snapshots another
 * thread may read, and the Prometheus text format (0.0.4) they render to.
 *
 * Threading: each worker owns one `struct stats` and is the only thread that
 * touches it (no locks, no atomics on the request path). The admin asks each
 * worker for a snapshot (made on the worker's thread), then merges and renders
 * them on its own. A snapshot is one immutable allocation: any thread may read
 * it and free it. */
#ifndef NUNCIO_STATS_H
#define NUNCIO_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "h2_guard.h"

struct buf;
struct stats;      /* one per worker */
struct stats_snap; /* an immutable copy another thread may read and free */

/* Series a worker keeps at most (all families together). Past it, new label
 * combinations are counted in nuncio_stats_series_dropped_total instead. */
#define STATS_MAX_SERIES 100000
/* Bytes of label strings a worker keeps at most: with grpc_stats all_methods the
 * gRPC method comes from the client, so the series cap alone would not bound memory. */
#define STATS_MAX_STRING_BYTES (16u << 20)

struct stats_req {                /* one finished request (exchange) */
    const char *route;            /* route name (Mapping name); NULL or "" when no route matched */
    const char *cluster;          /* upstream cluster name; NULL or "" when none */
    const char *grpc_path;        /* gRPC requests: the :path "/pkg.Service/Method"; NULL for non-gRPC */
    int status;                   /* HTTP status sent downstream; 0 when none was (reset) */
    int grpc_status;              /* 0..16; -1 when not gRPC or none seen */
    double seconds;               /* downstream duration */
    double upstream_seconds;      /* from the upstream request start to its end; < 0: no upstream */
    uint64_t bytes_in, bytes_out; /* request / response body bytes */
    uint32_t req_msgs, resp_msgs; /* gRPC messages seen each way */
};

struct stats_gauges { /* a worker's live numbers, filled by the worker when it snapshots */
    int worker;       /* index 0.. */
    uint64_t downstream_conns_active, downstream_conns_total, upstream_conns_active, upstream_conns_total,
        streams_active, upstream_retries, upstream_ejections, lua_errors;
    uint64_t h2_abuse[H2_ABUSE_KINDS]; /* HTTP/2 connections answered for abuse, by kind (h2_guard.h) */
};

struct stats_process { /* process-wide, filled by the admin when rendering */
    uint64_t config_generation, reloads_ok, reloads_failed, workers;
    uint64_t access_log_dropped;                 /* lines the current access log dropped */
    double start_time, last_reload_success_time; /* unix seconds; 0: never */
};

/* grpc_stats (Ambassador Module grpc_stats -> Envoy's grpc_stats filter), per worker/config */
struct stats_grpc_cfg {
    int enabled;
    int all_methods;          /* stats_for_all_methods */
    int upstream_stats;       /* enable_upstream_stats: the _upstream_rq_time histogram */
    const char *const *allow; /* "pkg.Service/Method" entries from services[].method_names; a "pkg.Service/"
                                 entry (no method) allows all its methods; n_allow > 0 means an allowlist
                                 and all_methods is ignored */
    size_t n_allow;
};

/* Adds g's numbers into sum (the worker index is left alone). */
void stats_gauges_add(struct stats_gauges *sum, const struct stats_gauges *g);

struct stats *stats_new(void); /* NULL when out of memory */
void stats_free(struct stats *s);
/* Lowers the series cap (tests; default STATS_MAX_SERIES). */
void stats_set_max_series(struct stats *s, size_t max);
/* Counts one finished request. NU_OK or NU_ERR_NOMEM (the request is then not
 * counted). g may be NULL (grpc_stats off). No allocation once its series exist. */
int stats_request(struct stats *s, const struct stats_req *r, const struct stats_grpc_cfg *g);
/* A deep copy of s plus the worker's gauges (g may be NULL: zeros); NULL on NOMEM. One malloc
 * and a few memcpy: call it on the worker's thread. */
struct stats_snap *stats_snapshot(const struct stats *s, const struct stats_gauges *g);
void stats_snap_free(struct stats_snap *snap);
/* Merges the snapshots (summing counters and histogram buckets of equal
 * series) and appends Prometheus text to out; p may be NULL (no process
 * families). Output is sorted, so equal input gives equal bytes.
 * NU_OK or NU_ERR_NOMEM (out is then left as it was). */
int stats_render(struct buf *out, struct stats_snap *const *snaps, size_t n, const struct stats_process *p);
/* For the diag page: per-route totals merged across snapshots and clusters,
 * fn called once per route in name order ("" is the no-route bucket).
 * errors_5xx: status >= 500; grpc_errors: gRPC requests whose grpc-status was
 * not 0 (none seen counts). NU_OK or NU_ERR_NOMEM (fn not called). */
int stats_each_route(struct stats_snap *const *snaps, size_t n,
                     void (*fn)(void *arg, const char *route, uint64_t requests, uint64_t errors_5xx,
                                uint64_t grpc_errors, double seconds_sum),
                     void *arg);

#endif
