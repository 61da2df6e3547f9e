/* The exchange: one downstream stream bound to one upstream stream. The only
 * module that knows both sides, and only through their side-ops tables. */
#ifndef NUNCIO_STREAM_H
#define NUNCIO_STREAM_H

#include <ev.h>
#include <stdint.h>

#include "exchange.h"
#include "grpc.h"
#include "worker.h"

struct conn;
struct grpc_web;
struct upstream_endpoint;

/* Which header map an FFI call means (ffi.h callers pass these ints). */
enum stream_map {
    STREAM_MAP_REQUEST = 0,
    STREAM_MAP_RESPONSE = 1,
    STREAM_MAP_TRAILERS = 2,
    STREAM_MAP_REQUEST_TRAILERS = 3,
};

/* Why a stream is in the state it is in; each flag names a reason. */
enum stream_flags {
    ST_F_GRPC = 1 << 0,           /* request content-type is application/grpc* */
    ST_F_PROXYING = 1 << 1,       /* request went to an upstream */
    ST_F_REPLIED = 1 << 2,        /* a local reply replaced the upstream response */
    ST_F_RESP_STARTED = 1 << 3,   /* response headers were handed to the downstream codec */
    ST_F_DOWN_CLOSED = 1 << 4,    /* downstream stream is gone */
    ST_F_LOGGED = 1 << 5,         /* the log phase ran */
    ST_F_TEST = 1 << 6,           /* made by nu_ffi_test_stream_new: no codecs */
    ST_F_TIMER = 1 << 7,          /* route timeout armed */
    ST_F_FREE_QUEUED = 1 << 8,    /* handed to the worker sweep */
    ST_F_SECURE = 1 << 9,         /* requests count as secure (TLS, or the listener says so) */
    ST_F_TRUST_XFP = 1 << 10,     /* a client's x-forwarded-proto decides (l7Depth > 0) */
    ST_F_TLS = 1 << 11,           /* the downstream connection is TLS */
    ST_F_WAIT_BODY = 1 << 12,     /* a filter phase waits for the whole body of wait_msg */
    ST_F_DEADLINE = 1 << 13,      /* the client's grpc-timeout is armed */
    ST_F_UP_CANCELLED = 1 << 14,  /* we reset the current attempt's upstream stream */
    ST_F_RETRY_PENDING = 1 << 15, /* the attempt is abandoned for a retry; waiting for its close */
    ST_F_RETRY_WAIT = 1 << 16,    /* between attempts (backoff) */
    ST_F_TRY_TIMER = 1 << 17,     /* try_timer armed (per-try timeout or backoff) */
    ST_F_TRY_TIMED_OUT = 1 << 18, /* the current attempt ran past its per-try timeout */
    ST_F_NO_REPLAY = 1 << 19,     /* the request body is not kept: no (more) retries */
    ST_F_IDLE = 1 << 20,          /* the stream idle timer is armed */
    ST_F_UP_ENDED = 1 << 21,      /* the current attempt's response ended (END_STREAM) */
    ST_F_BRIDGE = 1 << 22,        /* Module enable_grpc_http11_bridge: an HTTP/1.1 gRPC client */
    ST_F_BRIDGE_HELD = 1 << 23,   /* the bridged response is held until its trailers */
    ST_F_BUFFERING = 1 << 24,     /* Module buffer: the request body is held until complete */
    ST_F_START_QUEUED = 1 << 25,  /* routed while its codec holds its later events: starts at on_start */
};

struct stream {
    struct exchange x; /* first: codecs hold &st->x */
    struct worker *w;  /* NULL for test streams */
    struct gen *gen;   /* the generation it started on (a reference); NULL for test streams */
    struct worker_defer defer;
    uint64_t id;
    uint64_t conn_id;
    int local_port;
    char peer[64];
    unsigned flags;
    int lua_phase;                               /* phase whose Lua code may run now, -1 none */
    int cluster;                                 /* chosen upstream cluster, -1 none */
    int route;                                   /* the route's index in the generation's route table, -1 none */
    ev_tstamp up_started;                        /* the last attempt's start (0: none) */
    struct grpc_msg_counter req_msgs, resp_msgs; /* with grpc_stats */
    int timeout_ms;                              /* route timeout, 0 none */
    int reply_status;
    char *details; /* why a local reply was made (Envoy's response code details) */
    ev_timer timer;
    ev_timer deadline; /* the client's grpc-timeout, from when its headers arrived */
    ev_tstamp started;
    int co_ref;   /* registry ref of a phase coroutine that yielded (0: none) */
    int wait_msg; /* with ST_F_WAIT_BODY: 0 request body, 1 response body */
    /* Upstream attempts (retries): */
    int policy;                              /* the route's nu_route_policy index */
    int attempts;                            /* attempts started */
    struct upstream_endpoint *ep;            /* the current attempt's endpoint (NULL: none) */
    const struct upstream_endpoint *last_ep; /* the previous attempt's, for the balancer to avoid */
    struct buf replay;                       /* the request body as received, for another attempt; owned here.
                                              * Contiguous and sized to the body: a unary call's few bytes
                                              * cost a small malloc, not a 16 KiB chunk */
    uint64_t req_credited;                   /* request body bytes credited back to the client */
    uint64_t attempt_taken;                  /* request body bytes the current attempt's codec took */
    ev_timer try_timer;                      /* per-try timeout, then the backoff before the next attempt */
    ev_timer idle;                           /* stream idle timeout (checked lazily against last_active) */
    ev_tstamp last_active;
    int up_status;       /* the current attempt's HTTP status (0: none yet) */
    int up_grpc;         /* and its grpc-status (-1: none) */
    struct grpc_web *gw; /* a gRPC-Web request's translation state (NULL: not gRPC-Web); owned here */
};

/* Bytes a filter may make the proxy hold while it waits for a whole body
 * (Envoy's default per-connection buffer limit). Above it: 413. The Module's
 * buffer_limit_bytes replaces it for streams of a generation. */
#define STREAM_BODY_BUFFER_LIMIT (1024 * 1024)
/* Request body kept for a transparent retry of a refused stream when the
 * route has no retry policy (with one: STREAM_BODY_BUFFER_LIMIT). */
#define STREAM_REPLAY_SMALL (64 * 1024)

/* Counters Lua reports through nu_ffi_stats_add (0: Envoy's lua.errors). */
#define STREAM_API_COUNTERS 1
#define STREAM_API_LUA_ERRORS 0
uint64_t stream_api_counter(int counter);

/* h2s_open_fn: creates the exchange for a new downstream stream on conn c. */
struct exchange *stream_open(void *worker, struct conn *c);
/* Builds a local reply in the response maps; stream_send_reply submits it. */
/* grpc_status -1 maps the HTTP status (Envoy's table); otherwise it is used as is. */
int stream_prepare_reply(struct stream *st, int status, int grpc_status, const char *body, size_t blen,
                         const char *details, size_t dlen);
int stream_is_alive(const struct stream *st);
struct stream *stream_new_test(int grpc);
void stream_free(struct stream *st);
/* Frees the calling thread's cache of freed streams (a worker thread, as it ends). */
void stream_cache_release(void);

#endif
