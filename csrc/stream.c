#include "stream.h"
#include "gen.h"
#include "access_log.h"
#include "stats.h"
#include "config.h"
#include "conn.h"
#include "grpc.h"
#include "grpc_web.h"
#include "log.h"
#include "lua_bridge.h"
#include "nuncio.h"
#include "retry.h"
#include "upstream.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct exchange_events down_events;
static const struct exchange_events up_events;

static struct stream *st_of(struct exchange *x)
{
    return nu_container_of(x, struct stream, x);
}

static const struct nu_route_policy *policy_of(const struct stream *st)
{
    return &st->gen->cfg.policies[st->policy];
}

/* Every reset of the upstream side that we decide goes through here, so the
 * attempt's close is not taken for the endpoint's failure. */
static void cancel_upstream(struct stream *st)
{
    if (!st->x.up.ops)
        return;
    st->flags |= ST_F_UP_CANCELLED;
    st->x.up.ops->reset(&st->x, NGHTTP2_CANCEL);
}

static void log_line(struct stream *st, const char *what)
{
    if (!nu_log_enabled(NU_LOG_INFO))
        return;
    size_t ml = 0, pl = 0, sl = 0, gl = 0;
    const char *m = hdr_get(&st->x.req.hdrs, HDR_LIT(":method"), &ml);
    const char *p = hdr_get(&st->x.req.hdrs, HDR_LIT(":path"), &pl);
    const char *s = hdr_get(&st->x.resp.hdrs, HDR_LIT(":status"), &sl);
    const char *g = hdr_get(&st->x.resp.trailers, HDR_LIT("grpc-status"), &gl);
    if (!g)
        g = hdr_get(&st->x.resp.hdrs, HDR_LIT("grpc-status"), &gl);
    if (!g && st->gw && st->gw->status[0]) /* moved into the gRPC-Web body */
        g = st->gw->status, gl = strlen(g);
    double ms = st->w ? (ev_now(st->w->loop) - st->started) * 1000.0 : 0;
    char tries[32] = "";
    if (st->attempts > 1)
        snprintf(tries, sizeof tries, " attempts=%d", st->attempts);
    nu_log(NU_LOG_INFO, "[c%llu s%llu] %s %.*s %.*s %.*s grpc-status=%.*s in=%llu out=%llu %.1fms%s%s%s",
           (unsigned long long)st->conn_id, (unsigned long long)st->id, st->peer, (int)ml, m ? m : "-", (int)pl,
           p ? p : "-", (int)sl, s ? s : "-", (int)(g ? gl : 1), g ? g : "-", (unsigned long long)st->x.req.body_bytes,
           (unsigned long long)st->x.resp.body_bytes, ms, tries, what ? " " : "", what ? what : "");
}

static int parse_status(const char *s, size_t n)
{
    int v = 0;
    for (size_t i = 0; i < n && i < 4; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return n ? v : -1;
}

/* Counts the finished exchange in the worker's metrics and writes its access
 * log line (into the worker's buffer; the sweep hands it to the writer). */
static void record(struct stream *st)
{
    struct worker *w = st->w;
    if (!w || !st->gen)
        return;
    const struct nu_config *cfg = &st->gen->cfg;
    double now = ev_now(w->loop);
    size_t sl = 0, gl = 0, pl = 0;
    const char *s = hdr_get(&st->x.resp.hdrs, HDR_LIT(":status"), &sl);
    int status = s ? parse_status(s, sl) : 0;
    const char *g = hdr_get(&st->x.resp.trailers, HDR_LIT("grpc-status"), &gl);
    if (!g)
        g = hdr_get(&st->x.resp.hdrs, HDR_LIT("grpc-status"), &gl);
    if (!g && st->gw && st->gw->status[0])
        g = st->gw->status, gl = strlen(g);
    int grpc_status = (st->flags & ST_F_GRPC) && g ? parse_status(g, gl) : -1;
    char path[512];
    const char *grpc_path = NULL;
    if (st->flags & ST_F_GRPC) {
        /* The path the upstream saw: a Mapping may have rewritten the client's. */
        const char *p = hdr_get(&st->x.req.hdrs, HDR_LIT(":path"), &pl);
        if (p && pl < sizeof path) {
            memcpy(path, p, pl);
            path[pl] = '\0';
            grpc_path = path;
        }
    }
    const char *route = st->route >= 0 && (size_t)st->route < cfg->n_routes ? cfg->route_names[st->route] : "";
    const char *cluster =
        st->cluster >= 0 && (size_t)st->cluster < cfg->n_clusters ? cfg->clusters[st->cluster].name : "";
    if (w->stats) {
        struct stats_req r = {
            .route = route,
            .cluster = cluster,
            .grpc_path = grpc_path,
            .status = status < 0 ? 0 : status,
            .grpc_status = grpc_status,
            .seconds = now - st->started,
            .upstream_seconds = st->up_started > 0 ? now - st->up_started : -1,
            .bytes_in = st->x.req.body_bytes,
            .bytes_out = st->x.resp.body_bytes,
            .req_msgs = (uint32_t)st->req_msgs.msgs,
            .resp_msgs = (uint32_t)st->resp_msgs.msgs,
        };
        stats_request(w->stats, &r, st->gen->grpc.enabled ? &st->gen->grpc : NULL);
    }
    if (st->gen->alog && w->albuf) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double unix_now = (double)ts.tv_sec + ts.tv_nsec / 1e9;
        char up[64] = "";
        if (st->last_ep)
            conn_format_addr((const struct sockaddr *)&st->last_ep->addr, up, sizeof up);
        struct access_log_rec rec = {
            .start_time = unix_now - (now - st->started),
            .req = &st->x.req.hdrs,
            .resp = &st->x.resp.hdrs,
            .trailers = &st->x.resp.trailers,
            .protocol = st->x.down.http1 ? "HTTP/1.1" : "HTTP/2",
            .response_code = status < 0 ? 0 : status,
            .response_flags = NULL,
            .response_code_details = st->details,
            .bytes_received = st->x.req.body_bytes,
            .bytes_sent = st->x.resp.body_bytes,
            .duration_ms = (int64_t)((now - st->started) * 1000.0),
            .response_duration_ms = -1,
            .upstream_service_time_ms = -1,
            .upstream_host = up[0] ? up : NULL,
            .upstream_cluster = cluster,
            .route_name = route,
            .downstream_remote_address = st->peer,
            .grpc_status = grpc_status,
            .connection_id = st->conn_id,
            .attempts = st->attempts,
        };
        access_log_write(w->albuf, st->gen->alog, &rec);
    }
}

/* Freed streams kept for the next one, per thread (a stream lives and dies
 * on its worker): the struct is ~900 bytes, past what malloc's per-thread
 * cache serves quickly once many calls are in flight, where calloc cost
 * ~400 instructions a call. At most STREAM_CACHE are kept (~450 KiB).
 * AddressSanitizer builds skip it so that a use after free is still caught. */
#if !defined(__SANITIZE_ADDRESS__)
#define STREAM_CACHE 512
static _Thread_local struct {
    struct stream *v[STREAM_CACHE]; /* owned by the cache until handed out */
    unsigned n;
} stream_cache;
#endif

static struct stream *stream_alloc(void)
{
#ifdef STREAM_CACHE
    if (stream_cache.n) {
        struct stream *st = stream_cache.v[--stream_cache.n];
        memset(st, 0, sizeof *st);
        return st;
    }
#endif
    return calloc(1, sizeof(struct stream));
}

static void stream_release(struct stream *st)
{
#ifdef STREAM_CACHE
    if (stream_cache.n < STREAM_CACHE) {
        stream_cache.v[stream_cache.n++] = st;
        return;
    }
#endif
    free(st);
}

void stream_cache_release(void)
{
#ifdef STREAM_CACHE
    while (stream_cache.n)
        free(stream_cache.v[--stream_cache.n]);
#endif
}

static void stream_free_deferred(struct worker_defer *d)
{
    stream_free(nu_container_of(d, struct stream, defer));
}

void stream_free(struct stream *st)
{
    if (st->flags & ST_F_TIMER)
        ev_timer_stop(st->w->loop, &st->timer);
    if (st->flags & ST_F_DEADLINE)
        ev_timer_stop(st->w->loop, &st->deadline);
    if (st->flags & ST_F_TRY_TIMER)
        ev_timer_stop(st->w->loop, &st->try_timer);
    if (st->flags & ST_F_IDLE)
        ev_timer_stop(st->w->loop, &st->idle);
    buf_free(&st->replay);
    hdr_clear(&st->x.req.hdrs);
    hdr_clear(&st->x.req.trailers);
    hdr_clear(&st->x.resp.hdrs);
    hdr_clear(&st->x.resp.trailers);
    chunkq_clear(&st->x.req.body);
    chunkq_clear(&st->x.resp.body);
    grpc_web_free(st->gw);
    free(st->details);
    if (st->w)
        st->w->live_streams--;
    if (st->gen)
        gen_unref(st->gen);
    stream_release(st);
}

/* Frees the stream once both codecs have let go of it and its log phase ran. */
static void maybe_free(struct stream *st)
{
    if (st->x.down.ops || st->x.up.ops || !(st->flags & ST_F_LOGGED) ||
        (st->flags & (ST_F_FREE_QUEUED | ST_F_START_QUEUED)))
        return;
    st->flags |= ST_F_FREE_QUEUED;
    worker_defer(st->w, &st->defer);
}

static void stop_timer(struct stream *st)
{
    if (st->flags & ST_F_TIMER) {
        ev_timer_stop(st->w->loop, &st->timer);
        st->flags &= ~ST_F_TIMER;
    }
    if (st->flags & ST_F_DEADLINE) {
        ev_timer_stop(st->w->loop, &st->deadline);
        st->flags &= ~ST_F_DEADLINE;
    }
    if (st->flags & ST_F_TRY_TIMER) {
        ev_timer_stop(st->w->loop, &st->try_timer);
        st->flags &= ~ST_F_TRY_TIMER;
    }
    if (st->flags & ST_F_IDLE) {
        ev_timer_stop(st->w->loop, &st->idle);
        st->flags &= ~ST_F_IDLE;
    }
}

int stream_is_alive(const struct stream *st)
{
    return !(st->flags & ST_F_LOGGED);
}

int stream_prepare_reply(struct stream *st, int status, int grpc_status, const char *body, size_t blen,
                         const char *details, size_t dlen)
{
    struct msg *r = &st->x.resp;
    hdr_clear(&r->hdrs);
    hdr_clear(&r->trailers);
    chunkq_clear(&r->body);
    free(st->details);
    st->details = dlen ? strndup(details, dlen) : NULL;
    st->reply_status = status;
    st->flags |= ST_F_REPLIED;
    r->end = 1;
    char num[16];
    int rc = NU_OK;
    if (st->gw) {
        /* Envoy's local reply to gRPC-Web is a plain HTTP one (the request was
         * not gRPC when it arrived); the gRPC-Web response translation then
         * makes its body grpc-message (send_response_headers). */
        grpc_web_reset_response(st->gw);
        st->gw->status_override = grpc_status;
    }
    if ((st->flags & ST_F_GRPC) && !st->gw) {
        /* Envoy's local reply to a gRPC request: trailers-only, HTTP 200, the
         * mapped grpc-status, and the reason in grpc-message. */
        rc |= hdr_add(&r->hdrs, HDR_LIT(":status"), HDR_LIT("200"));
        rc |= hdr_add(&r->hdrs, HDR_LIT("content-type"), HDR_LIT("application/grpc"));
        int n = snprintf(num, sizeof num, "%d", grpc_status >= 0 ? grpc_status : grpc_status_from_http(status));
        rc |= hdr_add(&r->hdrs, HDR_LIT("grpc-status"), num, (size_t)n);
        const char *msg = blen ? body : details;
        size_t mlen = blen ? blen : dlen;
        if (mlen) {
            char enc[1024];
            size_t el = grpc_message_encode(msg, mlen > 300 ? 300 : mlen, enc, sizeof enc);
            rc |= hdr_add(&r->hdrs, HDR_LIT("grpc-message"), enc, el);
        }
    } else {
        int n = snprintf(num, sizeof num, "%d", status);
        rc |= hdr_add(&r->hdrs, HDR_LIT(":status"), num, (size_t)n);
        if (blen) {
            rc |= hdr_add(&r->hdrs, HDR_LIT("content-type"), HDR_LIT("text/plain"));
            n = snprintf(num, sizeof num, "%zu", blen);
            rc |= hdr_add(&r->hdrs, HDR_LIT("content-length"), num, (size_t)n);
            rc |= chunkq_append(&r->body, (const uint8_t *)body, blen);
        }
    }
    return rc ? NU_ERR_NOMEM : NU_OK;
}

/* Hands the prepared response (local or from upstream) to the downstream codec. */
static int gw_response_head(struct stream *st);

static void send_response_headers(struct stream *st)
{
    if (!st->x.down.ops || (st->flags & ST_F_RESP_STARTED))
        return;
    if (st->gw && gw_response_head(st) != 0)
        return; /* a non-gRPC answer waits for its body to become grpc-message */
    if ((st->flags & (ST_F_BRIDGE | ST_F_REPLIED | ST_F_UP_ENDED)) == ST_F_BRIDGE &&
        !hdr_get(&st->x.resp.hdrs, HDR_LIT("grpc-status"), NULL)) {
        /* The bridge holds everything until the trailers say how the call
         * ended; a trailers-only answer passes at once, as in Envoy. */
        st->flags |= ST_F_BRIDGE_HELD;
        return;
    }
    st->flags |= ST_F_RESP_STARTED;
    const char *server = st->gen ? st->gen->cfg.server_name : NULL;
    if (server && hdr_set(&st->x.resp.hdrs, HDR_LIT("server"), server, strlen(server)) != NU_OK) {
        st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (st->x.down.ops->submit_headers(&st->x) != NU_OK) {
        nu_log(NU_LOG_WARN, "[c%llu s%llu] cannot send response headers: resetting", (unsigned long long)st->conn_id,
               (unsigned long long)st->id);
        st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
    }
}

/* Replies locally; the upstream side, if any, is cancelled. */
static void local_reply(struct stream *st, int status, int grpc_status, const char *body, const char *details)
{
    stop_timer(st);
    if (st->flags & ST_F_RESP_STARTED) {
        /* Too late for a reply: end the call as a broken one. */
        cancel_upstream(st);
        if (st->x.down.ops)
            st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    /* Marked first: cancelling an upstream that never connected reports its
     * close synchronously, and that close must not make a reply of its own. */
    st->flags |= ST_F_REPLIED;
    cancel_upstream(st);
    if (stream_prepare_reply(st, status, grpc_status, body, body ? strlen(body) : 0, details,
                             details ? strlen(details) : 0) != NU_OK) {
        if (st->x.down.ops)
            st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    send_response_headers(st);
}

/* A gRPC call whose response already started ends with trailers naming the
 * failure, so the client sees a status rather than a bare reset. */
static void end_grpc_call(struct stream *st, int grpc_status, const char *message)
{
    struct msg *r = &st->x.resp;
    char num[16], enc[512];
    int n = snprintf(num, sizeof num, "%d", grpc_status);
    hdr_clear(&r->trailers);
    size_t el = grpc_message_encode(message, strlen(message), enc, sizeof enc);
    if (hdr_add(&r->trailers, HDR_LIT("grpc-status"), num, (size_t)n) != NU_OK ||
        hdr_add(&r->trailers, HDR_LIT("grpc-message"), enc, el) != NU_OK) {
        st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    r->end = 1;
    if (st->gw && st->gw->resp == GRPC_WEB_RESP_FRAMES &&
        grpc_web_response_end(st->gw, &r->trailers, &r->body) != NU_OK) {
        st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    st->x.down.ops->resume(&st->x);
}

static void on_route_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct stream *st = nu_container_of(t, struct stream, timer);
    st->flags &= ~ST_F_TIMER;
    nu_log(NU_LOG_INFO, "[c%llu s%llu] route timeout (%d ms): upstream request cancelled",
           (unsigned long long)st->conn_id, (unsigned long long)st->id, st->timeout_ms);
    if (!(st->flags & ST_F_RESP_STARTED)) {
        local_reply(st, 504, -1, "upstream request timeout", "upstream_response_timeout");
        return;
    }
    cancel_upstream(st);
    if (!st->x.down.ops)
        return;
    if ((st->flags & ST_F_GRPC) && !st->x.resp.end)
        end_grpc_call(st, GRPC_UNAVAILABLE, "upstream request timeout");
    else if (!st->x.resp.end)
        st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
}

/* The client's own deadline (grpc-timeout) passed: beyond Envoy, which only
 * forwards the header, nuncio ends the call with DEADLINE_EXCEEDED and cancels
 * the upstream stream, so a client that stopped waiting costs nothing more. */
static void on_grpc_deadline(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct stream *st = nu_container_of(t, struct stream, deadline);
    st->flags &= ~ST_F_DEADLINE;
    nu_log(NU_LOG_INFO, "[c%llu s%llu] grpc-timeout passed: DEADLINE_EXCEEDED, upstream cancelled",
           (unsigned long long)st->conn_id, (unsigned long long)st->id);
    if (!(st->flags & ST_F_RESP_STARTED)) {
        local_reply(st, 504, GRPC_DEADLINE_EXCEEDED, "deadline exceeded", "grpc_deadline_exceeded");
        return;
    }
    cancel_upstream(st);
    if (st->x.down.ops && !st->x.resp.end)
        end_grpc_call(st, GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
}

static void arm_grpc_deadline(struct stream *st)
{
    size_t n;
    const char *v = hdr_get(&st->x.req.hdrs, HDR_LIT("grpc-timeout"), &n);
    double secs;
    if (!v || grpc_parse_timeout(v, n, &secs) != 0)
        return;
    ev_timer_init(&st->deadline, on_grpc_deadline, secs, 0.);
    ev_timer_start(st->w->loop, &st->deadline);
    st->flags |= ST_F_DEADLINE;
}

static void on_try_timeout(struct ev_loop *loop, ev_timer *t, int revents);

/* Envoy's route timeout starts once the whole request has been received; so
 * does each attempt's per-try timeout. */
static void maybe_start_timer(struct stream *st)
{
    if (!st->x.req.end || !(st->flags & ST_F_PROXYING) || st->x.resp.end)
        return;
    if (st->timeout_ms > 0 && !(st->flags & ST_F_TIMER)) {
        ev_timer_init(&st->timer, on_route_timeout, st->timeout_ms / 1000.0, 0.);
        ev_timer_start(st->w->loop, &st->timer);
        st->flags |= ST_F_TIMER;
    }
    int per_try = policy_of(st)->per_try_timeout_ms;
    if (per_try > 0 && st->x.up.ops &&
        !(st->flags & (ST_F_TRY_TIMER | ST_F_RETRY_WAIT | ST_F_RETRY_PENDING | ST_F_RESP_STARTED)) &&
        !st->x.up.headers_seen) {
        ev_timer_init(&st->try_timer, on_try_timeout, per_try / 1000.0, 0.);
        ev_timer_start(st->w->loop, &st->try_timer);
        st->flags |= ST_F_TRY_TIMER;
    }
}

static void stop_try_timer(struct stream *st)
{
    if (st->flags & ST_F_TRY_TIMER) {
        ev_timer_stop(st->w->loop, &st->try_timer);
        st->flags &= ~ST_F_TRY_TIMER;
    }
}

/* Runs the log phase once the downstream side is done, then lets go. */
static void finish(struct stream *st)
{
    if (st->flags & ST_F_LOGGED)
        return;
    stop_timer(st);
    buf_free(&st->replay);
    lua_bridge_release(st->w, st); /* a filter still waiting for a body will not be resumed */
    log_line(st, st->details);
    record(st);
    if (st->gen->lua_wants[LB_PHASE_LOG])
        lua_bridge_run(st->w, st, LB_PHASE_LOG);
    st->flags |= ST_F_LOGGED;
    st->lua_phase = -1;
    maybe_free(st);
}

struct exchange *stream_open(void *worker, struct conn *c)
{
    struct worker *w = worker;
    struct stream *st = stream_alloc();
    if (!st) {
        nu_log(NU_LOG_ERROR, "[c%llu] out of memory opening a stream", (unsigned long long)c->id);
        return NULL;
    }
    st->w = w;
    st->gen = gen_ref(w->gen); /* the exchange finishes on the config it started on */
    st->route = -1;
    st->id = ++w->next_stream_id;
    st->conn_id = c->id;
    st->local_port = c->local_port;
    _Static_assert(sizeof st->peer == sizeof c->peer, "peer buffers must match");
    memcpy(st->peer, c->peer, sizeof st->peer); /* NUL-terminated within it: conn_format_addr */
    if (c->secure)
        st->flags |= ST_F_SECURE;
    if (c->tls)
        st->flags |= ST_F_TLS;
    if (c->trust_xfp)
        st->flags |= ST_F_TRUST_XFP;
    st->cluster = -1;
    st->lua_phase = -1;
    st->x.down.id = st->x.up.id = -1;
    st->x.down_ev = &down_events;
    st->x.up_ev = &up_events;
    st->defer.fn = stream_free_deferred;
    st->started = ev_now(w->loop);
    w->live_streams++;
    return &st->x;
}

struct stream *stream_new_test(int grpc)
{
    struct stream *st = stream_alloc();
    if (!st)
        return NULL;
    st->flags = ST_F_TEST | (grpc ? ST_F_GRPC : 0);
    st->cluster = -1;
    st->route = -1;
    st->lua_phase = LB_PHASE_REQUEST_HEADERS;
    st->x.down.id = st->x.up.id = -1;
    snprintf(st->peer, sizeof st->peer, "127.0.0.1:0");
    return st;
}

/* Request headers Envoy's connection manager sets before any filter runs. */
static int add_forwarding_headers(struct stream *st)
{
    struct hdr_map *h = &st->x.req.hdrs;
    char ip[sizeof st->peer];
    memcpy(ip, st->peer, sizeof ip);
    char *colon = strrchr(ip, ':');
    if (colon)
        *colon = '\0';
    const char *addr = ip[0] == '[' ? ip + 1 : ip;
    size_t alen = strlen(addr);
    if (alen && addr[alen - 1] == ']')
        alen--;
    size_t xl;
    const char *xff = hdr_get(h, HDR_LIT("x-forwarded-for"), &xl);
    int rc;
    if (xff) {
        char v[1024];
        int n = snprintf(v, sizeof v, "%.*s,%.*s", (int)xl, xff, (int)alen, addr);
        rc = hdr_set(h, HDR_LIT("x-forwarded-for"), v, (size_t)(n < (int)sizeof v ? n : (int)sizeof v - 1));
    } else {
        rc = hdr_add(h, HDR_LIT("x-forwarded-for"), addr, alen);
    }
    size_t pl;
    const char *given = hdr_get(h, HDR_LIT("x-forwarded-proto"), &pl);
    if ((st->flags & ST_F_TRUST_XFP) && given) {
        /* A trusted proxy in front terminated TLS: its word decides. */
        if (pl == 5 && strncasecmp(given, "https", 5) == 0)
            st->flags |= ST_F_SECURE;
        else
            st->flags &= ~ST_F_SECURE;
        return rc;
    }
    /* Envoy with no trusted hops overwrites x-forwarded-proto with what it saw
     * (an add when there was none: hdr_set would look for it again). */
    const char *proto = (st->flags & ST_F_TLS) ? "https" : "http";
    if (given)
        rc |= hdr_set(h, HDR_LIT("x-forwarded-proto"), proto, strlen(proto));
    else
        rc |= hdr_add(h, HDR_LIT("x-forwarded-proto"), proto, strlen(proto));
    return rc;
}

/* ------------------------------------------------------------ gRPC-Web */
/* The translation itself is grpc_web.c's; these hooks feed it and act on
 * what it decides. */

/* A gRPC-Web request (Module enable_grpc_web): the head becomes a gRPC one. */
static int gw_start(struct stream *st, int kind)
{
    size_t al = 0;
    const char *accept = hdr_get(&st->x.req.hdrs, HDR_LIT("accept"), &al);
    st->gw = grpc_web_new(kind, accept, al);
    if (!st->gw)
        return NU_ERR_NOMEM;
    return grpc_web_request_headers(&st->x.req.hdrs);
}

/* The request body cannot be translated: Envoy's 400 for bad base64; nuncio
 * also refuses a body whose last gRPC frame is cut short, so the upstream
 * never waits for bytes that will not come. The upstream stream is cancelled. */
static void gw_reject(struct stream *st, int why)
{
    const char *msg = why == NU_ERR_NOMEM   ? "out of memory"
                      : why == NU_ERR_LIMIT ? "Bad gRPC-web request, truncated gRPC frame."
                                            : "Bad gRPC-web request, invalid base64 data.";
    nu_log(NU_LOG_INFO, "[c%llu s%llu] gRPC-Web request body rejected: %s", (unsigned long long)st->conn_id,
           (unsigned long long)st->id, msg);
    if (st->flags & ST_F_WAIT_BODY) {
        lua_bridge_release(st->w, st); /* the filter waiting for this body will not get it */
        st->flags &= ~ST_F_WAIT_BODY;
        st->lua_phase = -1;
    }
    if (st->flags & ST_F_RESP_STARTED) {
        /* The answer already began (a streaming call): end it with a status. */
        stop_timer(st);
        st->flags |= ST_F_REPLIED;
        cancel_upstream(st);
        if (st->x.down.ops && !st->x.resp.end)
            end_grpc_call(st, GRPC_INTERNAL, msg);
        return;
    }
    local_reply(st, why == NU_ERR_NOMEM ? 500 : 400, -1, msg,
                why == NU_ERR_NOMEM   ? "local_reply_nomem"
                : why == NU_ERR_LIMIT ? "grpc_web_truncated_frame"
                                      : "grpc_base_64_decode_failed");
}

/* Replaces a chunk of the client's body with its gRPC bytes. The base64
 * overhead is credited to the client at once; the decoded bytes are credited
 * as usual, when an attempt takes them (or at once when they are dropped). */
static int gw_request_data(struct stream *st, const uint8_t **p, size_t *n)
{
    int already = st->gw->failed;
    const uint8_t *out;
    size_t on;
    int rc = grpc_web_request_data(st->gw, *p, *n, &out, &on);
    if (rc != NU_OK) {
        st->x.down.ops->consume(&st->x, *n);
        if (!already)
            gw_reject(st, rc);
        return rc;
    }
    if (*n > on)
        st->x.down.ops->consume(&st->x, *n - on);
    *p = out;
    *n = on;
    return NU_OK;
}

static int gw_request_end(struct stream *st)
{
    int already = st->gw->failed;
    int rc = grpc_web_request_end(st->gw);
    if (rc != NU_OK && !already)
        gw_reject(st, rc);
    return rc;
}

/* The response head is about to go to a gRPC-Web client (Envoy's grpc_web
 * encodeHeaders). Returns 0 to send it now, 1 when it waits for the body
 * (a non-gRPC answer whose body becomes grpc-message), -1 when it failed. */
static int gw_response_head(struct stream *st)
{
    int wait;
    int rc = grpc_web_head(st->gw, &st->x.resp, &wait);
    if (rc == NU_OK)
        return wait;
    nu_log(NU_LOG_WARN, "[c%llu s%llu] gRPC-Web response translation: %s: resetting", (unsigned long long)st->conn_id,
           (unsigned long long)st->id, nu_strerror(rc));
    st->flags |= ST_F_REPLIED;
    cancel_upstream(st);
    st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
    return -1;
}

/* Upstream body bytes for a gRPC-Web client. Returns 1 when handled here. */
static int gw_response_data(struct stream *st, const uint8_t *p, size_t n)
{
    struct exchange *x = &st->x;
    int rc;
    if (st->gw->resp == GRPC_WEB_RESP_COLLECT) {
        rc = grpc_web_collect(st->gw, p, n);
        x->up.ops->consume(x, n); /* kept (at most 16 KiB) or dropped: either way not queued */
    } else if (st->gw->resp == GRPC_WEB_RESP_FRAMES) {
        rc = grpc_web_response_data(st->gw, p, n, &x->resp.body);
        if (rc == NU_OK)
            x->down.ops->resume(x);
    } else {
        return 0; /* passes as it is */
    }
    if (rc != NU_OK) {
        nu_log(NU_LOG_WARN, "[c%llu s%llu] gRPC-Web response translation: %s: resetting",
               (unsigned long long)st->conn_id, (unsigned long long)st->id, nu_strerror(rc));
        st->flags |= ST_F_REPLIED;
        x->up.ops->consume(x, n);
        cancel_upstream(st);
        x->down.ops->reset(x, NGHTTP2_INTERNAL_ERROR);
    }
    return 1;
}

/* The upstream response ended: a collected answer goes out now; a gRPC one
 * gets its trailers as the final 0x80 frame. */
static int gw_response_end(struct stream *st)
{
    struct msg *r = &st->x.resp;
    if (st->gw->resp == GRPC_WEB_RESP_COLLECT) {
        send_response_headers(st);
        return NU_OK;
    }
    if (st->gw->resp != GRPC_WEB_RESP_FRAMES)
        return NU_OK;
    int rc = grpc_web_response_end(st->gw, &r->trailers, &r->body);
    if (rc != NU_OK)
        st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
    return rc;
}

/* ------------------------------------------------------------ attempts */

static void start_attempt(struct stream *st);

/* The most body a filter waiting for all of it may make the proxy hold
 * (Module buffer_limit_bytes; Envoy's per_connection_buffer_limit_bytes). */
static size_t body_limit(const struct stream *st)
{
    return st->gen && st->gen->cfg.buffer_limit_bytes > 0 ? (size_t)st->gen->cfg.buffer_limit_bytes
                                                          : STREAM_BODY_BUFFER_LIMIT;
}

/* Bytes of request body kept for another attempt. */
static size_t replay_limit(const struct stream *st)
{
    const struct nu_route_policy *p = policy_of(st);
    return p->retry_on && p->num_retries > 0 ? body_limit(st) : STREAM_REPLAY_SMALL;
}

/* Appends to the replay, grown to fit (at least doubling) rather than by
 * buf_append's 4 KiB steps: most bodies here are one small gRPC message. */
static int replay_append(struct stream *st, const uint8_t *p, size_t n)
{
    struct buf *b = &st->replay;
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        if (cap < b->len + n)
            cap = b->len + n;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
            return NU_ERR_NOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return NU_OK;
}

/* The client saw a response: no attempt follows, the kept body can go. */
static void drop_replay(struct stream *st)
{
    buf_free(&st->replay);
    st->flags |= ST_F_NO_REPLAY;
}

/* Keeps request body bytes for another attempt, while they fit. */
static int keep_replay(struct stream *st, const uint8_t *p, size_t n)
{
    if (st->flags & ST_F_NO_REPLAY)
        return NU_ERR_LIMIT;
    if (buf_size(&st->replay) + n > replay_limit(st) || replay_append(st, p, n) != NU_OK) {
        drop_replay(st);
        return NU_ERR_LIMIT;
    }
    return NU_OK;
}

/* Can another attempt be made? transparent: a refused stream, which the
 * upstream never processed, gets one retry even without a retry policy. */
static int can_retry(const struct stream *st, int transparent)
{
    if ((st->flags & (ST_F_RESP_STARTED | ST_F_DOWN_CLOSED | ST_F_REPLIED | ST_F_NO_REPLAY)) || !st->x.down.ops)
        return 0;
    const struct nu_route_policy *p = policy_of(st);
    int allowed = p->retry_on ? p->num_retries : 0;
    if (transparent && allowed < 1)
        allowed = 1;
    return st->attempts - 1 < allowed;
}

static void on_retry_backoff(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct stream *st = nu_container_of(t, struct stream, try_timer);
    st->flags &= ~ST_F_TRY_TIMER;
    if (!st->x.down.ops || (st->flags & ST_F_REPLIED))
        return;
    start_attempt(st);
}

/* Waits Envoy's jittered backoff, then makes the next attempt. */
static void schedule_retry(struct stream *st, const char *why)
{
    stop_try_timer(st);
    st->flags |= ST_F_RETRY_WAIT;
    st->gen->ups->retries++;
    st->w->upstream_retries++;
    double d = retry_backoff_s(st->attempts, upstream_rand(st->gen->ups));
    nu_log(NU_LOG_INFO, "[c%llu s%llu] %s: retrying in %.0f ms (attempt %d)", (unsigned long long)st->conn_id,
           (unsigned long long)st->id, why, d * 1000, st->attempts + 1);
    ev_timer_init(&st->try_timer, on_retry_backoff, d, 0.);
    ev_timer_start(st->w->loop, &st->try_timer);
    st->flags |= ST_F_TRY_TIMER;
}

/* The current attempt is given up for another: cancel it; its close
 * (u_on_close) schedules the next one. */
static void abandon_attempt(struct stream *st)
{
    st->flags |= ST_F_RETRY_PENDING;
    stop_try_timer(st);
    cancel_upstream(st);
}

static void on_try_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct stream *st = nu_container_of(t, struct stream, try_timer);
    st->flags &= ~ST_F_TRY_TIMER;
    st->flags |= ST_F_TRY_TIMED_OUT;
    nu_log(NU_LOG_INFO, "[c%llu s%llu] per-try timeout (%d ms) on attempt %d", (unsigned long long)st->conn_id,
           (unsigned long long)st->id, policy_of(st)->per_try_timeout_ms, st->attempts);
    if (can_retry(st, 0) && retry_on_reset(policy_of(st), RETRY_RESET_TIMEOUT)) {
        abandon_attempt(st);
        return;
    }
    local_reply(st, 504, -1, "upstream request timeout", "upstream_per_try_timeout");
}

/* A fresh response and the request body from its start, for another attempt. */
static int reset_for_attempt(struct stream *st)
{
    struct exchange *x = &st->x;
    hdr_clear(&x->resp.hdrs);
    hdr_clear(&x->resp.trailers);
    chunkq_clear(&x->resp.body);
    x->resp.end = 0;
    x->resp.body_bytes = 0;
    x->up.id = -1;
    x->up.headers_seen = 0;
    x->up.unconsumed = 0;
    chunkq_clear(&x->req.body);
    st->attempt_taken = 0;
    if (st->gw)
        grpc_web_reset_response(st->gw);
    if (buf_size(&st->replay) == 0)
        return NU_OK;
    return chunkq_append(&x->req.body, st->replay.data + st->replay.off, buf_size(&st->replay));
}

static void start_attempt(struct stream *st)
{
    const char *why = NULL;
    st->flags &= ~(ST_F_UP_CANCELLED | ST_F_TRY_TIMED_OUT | ST_F_RETRY_WAIT | ST_F_UP_ENDED);
    st->up_status = 0;
    st->up_grpc = -1;
    if (++st->attempts > 1 && reset_for_attempt(st) != NU_OK) {
        local_reply(st, 500, GRPC_INTERNAL, "out of memory", "local_reply_nomem");
        return;
    }
    struct upstream_pick pick = {.peer = st->peer, .avoid = st->last_ep};
    int rc = upstream_attach(st->gen->ups, st->cluster, &st->x, &pick, &st->ep, &why);
    if (rc != NU_OK) {
        nu_log(NU_LOG_INFO, "[c%llu s%llu] %s", (unsigned long long)st->conn_id, (unsigned long long)st->id, why);
        if (rc != NU_ERR_CONFIG && can_retry(st, 0) && retry_on_reset(policy_of(st), RETRY_RESET_CONNECT)) {
            schedule_retry(st, "connect failure");
            return;
        }
        st->flags &= ~ST_F_PROXYING;
        local_reply(st, 503, -1, why, "upstream_reset_before_response_started");
        return;
    }
    st->last_ep = st->ep;
    maybe_start_timer(st);
}

/* Stream idle timeout: checked against the last activity when it fires, so
 * traffic costs a timestamp rather than a timer restart. */
static void on_idle(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct stream *st = nu_container_of(t, struct stream, idle);
    double idle = policy_of(st)->idle_timeout_ms / 1000.0;
    double left = st->last_active + idle - ev_now(loop);
    if (left > 0.001) {
        ev_timer_set(&st->idle, left, 0.);
        ev_timer_start(loop, &st->idle);
        return;
    }
    st->flags &= ~ST_F_IDLE;
    nu_log(NU_LOG_INFO, "[c%llu s%llu] stream idle for %d ms: ended", (unsigned long long)st->conn_id,
           (unsigned long long)st->id, policy_of(st)->idle_timeout_ms);
    if (!(st->flags & ST_F_RESP_STARTED)) {
        local_reply(st, 408, -1, "stream timeout", "stream_idle_timeout");
        return;
    }
    cancel_upstream(st);
    if (!st->x.down.ops || st->x.resp.end)
        return;
    if (st->flags & ST_F_GRPC)
        end_grpc_call(st, GRPC_UNAVAILABLE, "stream idle timeout");
    else
        st->x.down.ops->reset(&st->x, NGHTTP2_INTERNAL_ERROR);
}

/* The request's declared content-length, or -1 (none, or not a number). */
static long long declared_length(const struct stream *st)
{
    size_t n;
    const char *v = hdr_get(&st->x.req.hdrs, HDR_LIT("content-length"), &n);
    if (!v || n == 0 || n > 18)
        return -1;
    long long len = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        len = len * 10 + (v[i] - '0');
    }
    return len;
}

static void start_upstream(struct stream *st)
{
    st->flags |= ST_F_PROXYING;
    st->up_started = ev_now(st->w->loop);
    /* Whatever body a filter already held is the replay's start; a body
     * declared bigger than the replay may keep is not copied at all (a
     * 1 MiB upload copied its first 64 KiB, with reallocs, for nothing). */
    long long declared = declared_length(st);
    if (st->x.req.body.bytes > replay_limit(st) || (declared >= 0 && (unsigned long long)declared > replay_limit(st))) {
        drop_replay(st);
    } else {
        for (const struct chunk *c = st->x.req.body.head; c; c = c->next)
            if (keep_replay(st, c->data + c->off, c->len - c->off) != NU_OK)
                break; /* dropped, and marked so */
    }
    int idle_ms = policy_of(st)->idle_timeout_ms;
    if (idle_ms > 0) {
        st->last_active = ev_now(st->w->loop);
        ev_timer_init(&st->idle, on_idle, idle_ms / 1000.0, 0.);
        ev_timer_start(st->w->loop, &st->idle);
        st->flags |= ST_F_IDLE;
    }
    start_attempt(st);
}

/* ------------------------------------------------------------ Module buffer */
/* Envoy's buffer filter (Module buffer.max_request_bytes), which Emissary puts
 * after the Lua filters: the request goes upstream only once its whole body
 * is here, and a body over max_request_bytes gets a 413 (for a gRPC request,
 * the trailers-only reply local_reply makes of it). The client is credited
 * as its bytes are held, so it can finish sending. */

static int max_request_bytes(const struct stream *st)
{
    return st->gen ? st->gen->cfg.max_request_bytes : 0;
}

static void body_too_large(struct stream *st)
{
    nu_log(NU_LOG_INFO, "[c%llu s%llu] request body over buffer.max_request_bytes (%d): 413",
           (unsigned long long)st->conn_id, (unsigned long long)st->id, max_request_bytes(st));
    st->flags &= ~ST_F_BUFFERING;
    local_reply(st, 413, -1, "Payload Too Large", "request_payload_too_large");
}

/* After the request phase: 1 when the request waits for its body (or was refused). */
static int buffer_request(struct stream *st)
{
    int max = max_request_bytes(st);
    if (max <= 0)
        return 0;
    if (st->x.req.body.bytes > (size_t)max) { /* a filter already held this much */
        body_too_large(st);
        return 1;
    }
    if (st->x.req.end)
        return 0;
    st->flags |= ST_F_BUFFERING;
    return 1;
}

/* Body bytes while buffering: held, or the request is refused. */
static void buffer_data(struct stream *st, const uint8_t *p, size_t n)
{
    struct exchange *x = &st->x;
    x->down.ops->consume(x, n);
    if (x->req.body.bytes + n > (size_t)max_request_bytes(st)) {
        body_too_large(st);
        return;
    }
    if (chunkq_append(&x->req.body, p, n) != NU_OK) {
        st->flags &= ~ST_F_BUFFERING;
        local_reply(st, 500, GRPC_INTERNAL, "out of memory", "local_reply_nomem");
        return;
    }
    st->req_credited += n; /* credited now: not again when an attempt takes it */
}

/* What the request phase decided, whether it finished at once or after waiting. */
static void after_request_phase(struct stream *st, int rc)
{
    if (rc == LB_YIELDED) {
        return; /* a filter waits for the body: d_on_end resumes it */
    }
    st->lua_phase = -1;
    st->flags &= ~ST_F_WAIT_BODY;
    if (rc == LB_REPLIED) {
        send_response_headers(st);
        return;
    }
    if (rc != LB_CONTINUE) {
        local_reply(st, 500, GRPC_INTERNAL, "filter error", "lua_filter_error");
        return;
    }
    if (st->cluster < 0) {
        local_reply(st, 500, GRPC_INTERNAL, "no upstream was chosen for this request", "no_cluster");
        return;
    }
    if (buffer_request(st))
        return; /* d_on_end sends it on, or it got 413 */
    if (st->x.down.queued) {
        /* The codec runs the other request heads of its read first, then
         * calls d_on_start, then reports this request's body: the upstream
         * sees the same as if it started now (docs/internals.md section 10). */
        st->flags |= ST_F_START_QUEUED;
        return;
    }
    start_upstream(st);
}

static void d_on_start(struct exchange *x)
{
    struct stream *st = st_of(x);
    if (!(st->flags & ST_F_START_QUEUED))
        return;
    st->flags &= ~ST_F_START_QUEUED;
    if ((st->flags & (ST_F_REPLIED | ST_F_DOWN_CLOSED)) || !x->down.ops) {
        maybe_free(st); /* answered or gone meanwhile: nothing to start */
        return;
    }
    start_upstream(st);
}

static void d_on_headers(struct exchange *x)
{
    struct stream *st = st_of(x);
    size_t n;
    const char *ct = hdr_get(&x->req.hdrs, HDR_LIT("content-type"), &n);
    int web = st->gen->cfg.enable_grpc_web ? grpc_web_kind(ct, n) : GRPC_WEB_NONE;
    if (web || (ct && grpc_is_grpc_content_type(ct, n))) {
        /* A gRPC-Web call is translated into a gRPC one before the filters
         * see it (Envoy's filter order): deadlines, status mapping and retries apply. */
        st->flags |= ST_F_GRPC;
        if (web && gw_start(st, web) != NU_OK) {
            local_reply(st, 500, GRPC_INTERNAL, "out of memory", "local_reply_nomem");
            return;
        }
        arm_grpc_deadline(st);
        /* HTTP/1.1 clients without trailers (Envoy's grpc_http1_bridge) */
        if (!web && x->down.http1 && st->gen->cfg.enable_grpc_http11_bridge)
            st->flags |= ST_F_BRIDGE;
    }
    if (add_forwarding_headers(st) != NU_OK) {
        local_reply(st, 500, GRPC_INTERNAL, "out of memory", "local_reply_nomem");
        return;
    }
    st->lua_phase = LB_PHASE_REQUEST_HEADERS;
    after_request_phase(st, lua_bridge_run(st->w, st, LB_PHASE_REQUEST_HEADERS));
}

/* A filter waits for a whole body: hold it (crediting the sender, so it can
 * finish) up to the buffer limit, as Envoy's buffering filters do. */
static int hold_body(struct stream *st, struct msg *m, const uint8_t *p, size_t n)
{
    if (m->body.bytes + n > body_limit(st)) {
        nu_log(NU_LOG_INFO, "[c%llu s%llu] body over %zu bytes while a filter waits for it: 413",
               (unsigned long long)st->conn_id, (unsigned long long)st->id, body_limit(st));
        lua_bridge_release(st->w, st);
        st->flags &= ~ST_F_WAIT_BODY;
        st->lua_phase = -1;
        local_reply(st, 413, -1, "Payload Too Large", "request_payload_too_large");
        return NU_ERR_LIMIT;
    }
    return chunkq_append(&m->body, p, n);
}

static void d_on_data(struct exchange *x, const uint8_t *p, size_t n)
{
    struct stream *st = st_of(x);
    st->last_active = ev_now(st->w->loop);
    if (st->gw && (gw_request_data(st, &p, &n) != NU_OK || n == 0))
        return; /* rejected, or only part of a base64 group so far */
    if ((st->flags & ST_F_GRPC) && st->gen->cfg.grpc_stats.enabled)
        grpc_msg_count(&st->req_msgs, p, n);
    if (st->flags & ST_F_BUFFERING) {
        buffer_data(st, p, n);
        return;
    }
    if ((st->flags & ST_F_WAIT_BODY) && st->wait_msg == 0) {
        hold_body(st, &x->req, p, n);
        st->req_credited += n; /* credited now: not again when an attempt takes it */
        x->down.ops->consume(x, n);
        return;
    }
    if ((st->flags & (ST_F_RETRY_WAIT | ST_F_RETRY_PENDING)) && !(st->flags & ST_F_REPLIED)) {
        /* Between attempts: the next one reads the body from the replay, and
         * credits the client as it takes it. */
        if (keep_replay(st, p, n) != NU_OK)
            local_reply(st, 503, -1, "request body too large to retry", "retry_body_overflow");
        return;
    }
    if (!x->up.ops) {
        /* Nobody will forward these bytes (local reply, or the upstream is gone): drop them. */
        x->down.ops->consume(x, n);
        return;
    }
    if (chunkq_append(&x->req.body, p, n) != NU_OK) {
        local_reply(st, 500, GRPC_INTERNAL, "out of memory", "local_reply_nomem");
        x->down.ops->consume(x, n);
        return;
    }
    keep_replay(st, p, n);
    x->up.ops->resume(x);
}

static void d_on_end(struct exchange *x)
{
    struct stream *st = st_of(x);
    if (st->gw && gw_request_end(st) != NU_OK)
        return;
    if ((st->flags & ST_F_WAIT_BODY) && st->wait_msg == 0) {
        st->flags &= ~ST_F_WAIT_BODY;
        after_request_phase(st, lua_bridge_resume(st->w, st));
        return;
    }
    if (st->flags & ST_F_BUFFERING) {
        st->flags &= ~ST_F_BUFFERING;
        start_upstream(st); /* the whole body is here */
        return;
    }
    if (x->up.ops)
        x->up.ops->resume(x);
    maybe_start_timer(st);
}

static void d_on_body_taken(struct exchange *x, size_t n)
{
    struct stream *st = st_of(x);
    st->last_active = ev_now(st->w->loop);
    if (st->gw && st->gw->resp == GRPC_WEB_RESP_FRAMES)
        n = grpc_web_credit(st->gw, n); /* the client takes translated bytes, the upstream is owed its own */
    if (x->up.ops && n)
        x->up.ops->consume(x, n);
}

static void d_on_close(struct exchange *x, uint32_t h2_error, int reason, const char *detail)
{
    struct stream *st = st_of(x);
    st->flags |= ST_F_DOWN_CLOSED;
    st->flags &= ~ST_F_START_QUEUED; /* its codec is gone: no d_on_start comes */
    if (x->up.ops && !(x->resp.end && x->req.end)) {
        /* The client went away or cancelled: cancel the upstream call too. */
        nu_log(NU_LOG_DEBUG, "[c%llu s%llu] downstream closed (%s): cancelling upstream",
               (unsigned long long)st->conn_id, (unsigned long long)st->id, nghttp2_http2_strerror(h2_error));
        cancel_upstream(st);
    }
    if (h2_error != NGHTTP2_NO_ERROR && !st->details)
        st->details = strdup(reason == NU_OK ? "downstream_remote_reset" : "downstream_connection_termination");
    finish(st);
}

/* What the response phase decided, at once or after waiting for the body. */
static void after_response_phase(struct stream *st, int rc)
{
    if (rc == LB_YIELDED)
        return; /* u_on_end resumes it */
    st->lua_phase = -1;
    st->flags &= ~ST_F_WAIT_BODY;
    if (rc == LB_REPLIED) {
        cancel_upstream(st);
        send_response_headers(st);
        return;
    }
    if (rc != LB_CONTINUE) {
        local_reply(st, 500, GRPC_INTERNAL, "filter error", "lua_filter_error");
        return;
    }
    send_response_headers(st);
}

/* A gRPC client cannot read an upstream's non-gRPC answer (a 502 from a
 * misconfigured service, an HTML error page): turn it into a trailers-only
 * reply with the grpc-status the HTTP-to-gRPC table gives, as gRPC clients
 * would themselves and as Envoy's grpc_web/bridge filters do. */
static int map_non_grpc_response(struct stream *st)
{
    struct msg *r = &st->x.resp;
    size_t sl = 0, cl = 0;
    const char *status = hdr_get(&r->hdrs, HDR_LIT(":status"), &sl);
    const char *ct = hdr_get(&r->hdrs, HDR_LIT("content-type"), &cl);
    if (hdr_get(&r->hdrs, HDR_LIT("grpc-status"), NULL))
        return 0; /* trailers-only from a gRPC server: pass through */
    int http = status && sl == 3 ? atoi(status) : 0;
    if (http == 200 && ct && grpc_is_grpc_content_type(ct, cl))
        return 0;
    char msg[96];
    snprintf(msg, sizeof msg, "upstream answered HTTP %d%s", http, http == 200 ? " without a gRPC content-type" : "");
    nu_log(NU_LOG_INFO, "[c%llu s%llu] gRPC request: %s", (unsigned long long)st->conn_id, (unsigned long long)st->id,
           msg);
    local_reply(st, http == 200 ? 500 : http, -1, msg, "upstream_non_grpc_response");
    return 1;
}

static int status_of(const struct hdr_map *m, const char *name, size_t nlen)
{
    size_t n;
    const char *v = hdr_get(m, name, nlen, &n);
    if (!v || n == 0 || n > 4)
        return -1;
    int r = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        r = r * 10 + (v[i] - '0');
    }
    return r;
}

static void u_on_headers(struct exchange *x)
{
    struct stream *st = st_of(x);
    st->last_active = ev_now(st->w->loop);
    if (st->flags & ST_F_RETRY_PENDING)
        return;
    int http = status_of(&x->resp.hdrs, HDR_LIT(":status"));
    st->up_status = http > 0 ? http : 0;
    st->up_grpc = status_of(&x->resp.hdrs, HDR_LIT("grpc-status"));
    if (!x->down.ops)
        return;
    stop_try_timer(st);
    if (can_retry(st, 0) && retry_on_response(policy_of(st), http, st->up_grpc)) {
        nu_log(NU_LOG_INFO, "[c%llu s%llu] upstream answered %d (grpc-status %d): abandoning attempt %d",
               (unsigned long long)st->conn_id, (unsigned long long)st->id, http, st->up_grpc, st->attempts);
        abandon_attempt(st);
        return;
    }
    drop_replay(st);
    /* A gRPC-Web client's non-gRPC answers are translated as Envoy's grpc_web filter does (send_response_headers). */
    if ((st->flags & ST_F_GRPC) && !st->gw && map_non_grpc_response(st))
        return;
    if (!st->gen->lua_wants[LB_PHASE_RESPONSE_HEADERS]) {
        send_response_headers(st);
        return;
    }
    st->lua_phase = LB_PHASE_RESPONSE_HEADERS;
    after_response_phase(st, lua_bridge_run(st->w, st, LB_PHASE_RESPONSE_HEADERS));
}

static void u_on_data(struct exchange *x, const uint8_t *p, size_t n)
{
    struct stream *st = st_of(x);
    st->last_active = ev_now(st->w->loop);
    if ((st->flags & ST_F_GRPC) && st->gen->cfg.grpc_stats.enabled)
        grpc_msg_count(&st->resp_msgs, p, n);
    if ((st->flags & ST_F_WAIT_BODY) && st->wait_msg == 1) {
        /* Held for a filter; the client sees it once the filter is done. */
        hold_body(st, &x->resp, p, n);
        if (x->up.ops)
            x->up.ops->consume(x, n);
        return;
    }
    if (!x->down.ops || (st->flags & (ST_F_REPLIED | ST_F_RETRY_PENDING))) {
        x->up.ops->consume(x, n);
        return;
    }
    if (st->gw && gw_response_data(st, p, n))
        return;
    if (st->flags & ST_F_BRIDGE_HELD) {
        /* held whole, within the buffer limit; the upstream is credited meanwhile */
        x->up.ops->consume(x, n);
        if (x->resp.body.bytes + n > body_limit(st) || chunkq_append(&x->resp.body, p, n) != NU_OK) {
            st->flags &= ~ST_F_BRIDGE_HELD;
            local_reply(st, 500, GRPC_RESOURCE_EXHAUSTED, "response too large for the gRPC HTTP/1.1 bridge",
                        "grpc_bridge_buffer_overflow");
        }
        return;
    }
    if (chunkq_append(&x->resp.body, p, n) != NU_OK) {
        x->up.ops->consume(x, n);
        x->up.ops->reset(x, NGHTTP2_INTERNAL_ERROR);
        x->down.ops->reset(x, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    x->down.ops->resume(x);
}

static void u_on_end(struct exchange *x)
{
    struct stream *st = st_of(x);
    if (st->flags & ST_F_RETRY_PENDING)
        return;
    st->flags |= ST_F_UP_ENDED;
    if (st->up_grpc < 0 && !(st->flags & ST_F_REPLIED))
        st->up_grpc = status_of(&x->resp.trailers, HDR_LIT("grpc-status"));
    stop_timer(st);
    if ((st->flags & ST_F_WAIT_BODY) && st->wait_msg == 1) {
        st->flags &= ~ST_F_WAIT_BODY;
        after_response_phase(st, lua_bridge_resume(st->w, st));
        if (!x->down.ops || (st->flags & ST_F_REPLIED))
            return;
    }
    if (!x->down.ops || (st->flags & ST_F_REPLIED))
        return;
    if (x->resp.trailers.n && st->gen->lua_wants[LB_PHASE_RESPONSE_TRAILERS]) {
        st->lua_phase = LB_PHASE_RESPONSE_TRAILERS;
        int rc = lua_bridge_run(st->w, st, LB_PHASE_RESPONSE_TRAILERS);
        st->lua_phase = -1;
        if (rc != LB_CONTINUE && (st->flags & ST_F_GRPC)) {
            end_grpc_call(st, GRPC_INTERNAL, "filter error");
            return;
        }
    }
    if (st->gw && gw_response_end(st) != NU_OK)
        return;
    if (st->flags & ST_F_BRIDGE_HELD) {
        st->flags &= ~ST_F_BRIDGE_HELD;
        if (grpc_bridge_finish(&x->resp) != NU_OK) {
            x->down.ops->reset(x, NGHTTP2_INTERNAL_ERROR);
            return;
        }
        send_response_headers(st);
    }
    x->down.ops->resume(x);
}

static void u_on_body_taken(struct exchange *x, size_t n)
{
    struct stream *st = st_of(x);
    st->last_active = ev_now(st->w->loop);
    /* A later attempt takes the same bytes again: credit each byte once. */
    st->attempt_taken += n;
    if (st->attempt_taken <= st->req_credited)
        return;
    size_t k = (size_t)(st->attempt_taken - st->req_credited);
    st->req_credited = st->attempt_taken;
    if (x->down.ops)
        x->down.ops->consume(x, k);
}

/* Envoy's wording, with its "transport failure reason" when we know one. */
static const char *reset_reason(int reason, const char *detail, char *buf, size_t len)
{
    const char *what;
    switch (reason) {
    case NU_ERR_TIMEOUT:
        what = "connection timeout";
        break;
    case NU_ERR_IO:
    case NU_ERR_TLS:
        what = "connection failure";
        break;
    case NU_ERR_CLOSED:
        what = "connection termination";
        break;
    default:
        what = "remote reset";
        break;
    }
    snprintf(buf, len, "upstream connect error or disconnect/reset before headers. reset reason: %s%s%s", what,
             detail ? ", transport failure reason: " : "", detail ? detail : "");
    return buf;
}

/* What the attempt that just closed says about its endpoint (passive health).
 * Like Envoy's outlier detection: 5xx, resets and connect failures count; of
 * gRPC statuses, the ones that name the server rather than the call. */
static int attempt_outcome(const struct stream *st)
{
    if (st->flags & ST_F_TRY_TIMED_OUT)
        return UPSTREAM_FAILED;
    if (st->up_status) {
        if (st->up_status >= 500)
            return UPSTREAM_FAILED;
        if (st->up_grpc == GRPC_UNAVAILABLE || st->up_grpc == GRPC_INTERNAL || st->up_grpc == GRPC_DATA_LOSS)
            return UPSTREAM_FAILED;
        if (st->flags & (ST_F_UP_ENDED | ST_F_UP_CANCELLED))
            return UPSTREAM_OK;
        return UPSTREAM_FAILED; /* reset or dropped mid-response */
    }
    return (st->flags & ST_F_UP_CANCELLED) ? UPSTREAM_NEUTRAL : UPSTREAM_FAILED;
}

/* How an attempt that ended before any response failed, for retry_on. */
static int reset_kind(uint32_t h2_error, int reason)
{
    if (reason == NU_ERR_IO || reason == NU_ERR_TIMEOUT || reason == NU_ERR_TLS)
        return RETRY_RESET_CONNECT; /* the connection never came up */
    if (h2_error == NGHTTP2_REFUSED_STREAM)
        return RETRY_RESET_REFUSED;
    return RETRY_RESET_OTHER;
}

static void u_on_close(struct exchange *x, uint32_t h2_error, int reason, const char *detail)
{
    struct stream *st = st_of(x);
    int outcome = attempt_outcome(st);
    if (!st->up_status && reset_kind(h2_error, reason) == RETRY_RESET_REFUSED)
        outcome = UPSTREAM_NEUTRAL; /* refused (a GOAWAY's drain): never processed, not a failure */
    upstream_done(st->gen->ups, st->ep, outcome);
    st->ep = NULL;
    if (!(st->flags & ST_F_RETRY_WAIT))
        stop_try_timer(st);
    if (st->flags & ST_F_RETRY_PENDING) {
        st->flags &= ~ST_F_RETRY_PENDING;
        if (x->down.ops && !(st->flags & ST_F_REPLIED))
            schedule_retry(st, "retriable response");
        maybe_free(st);
        return;
    }
    if (x->resp.end || (st->flags & ST_F_REPLIED) || !x->down.ops) {
        maybe_free(st);
        return;
    }
    /* The upstream stream ended before its response did. */
    nu_log(NU_LOG_INFO, "[c%llu s%llu] upstream stream closed early (%s, %s)", (unsigned long long)st->conn_id,
           (unsigned long long)st->id, nghttp2_http2_strerror(h2_error), nu_strerror(reason));
    if (!(st->flags & ST_F_RESP_STARTED)) {
        int kind = reset_kind(h2_error, reason);
        if (can_retry(st, kind == RETRY_RESET_REFUSED) &&
            (kind == RETRY_RESET_REFUSED || retry_on_reset(policy_of(st), kind))) {
            schedule_retry(st, kind == RETRY_RESET_CONNECT   ? "connect failure"
                               : kind == RETRY_RESET_REFUSED ? "stream refused"
                                                             : "upstream reset");
            return;
        }
        char why[400];
        local_reply(st, 503, -1, reset_reason(reason, detail, why, sizeof why),
                    "upstream_reset_before_response_started");
    } else if (st->flags & ST_F_GRPC) {
        end_grpc_call(st, GRPC_UNAVAILABLE,
                      reason == NU_ERR_CLOSED ? "upstream connection terminated" : "upstream stream reset");
    } else {
        x->down.ops->reset(x, NGHTTP2_INTERNAL_ERROR);
    }
    maybe_free(st);
}

static const struct exchange_events down_events = {
    .on_headers = d_on_headers,
    .on_data = d_on_data,
    .on_end = d_on_end,
    .on_start = d_on_start,
    .on_body_taken = d_on_body_taken,
    .on_close = d_on_close,
};

static const struct exchange_events up_events = {
    .on_headers = u_on_headers,
    .on_data = u_on_data,
    .on_end = u_on_end,
    .on_body_taken = u_on_body_taken,
    .on_close = u_on_close,
};
