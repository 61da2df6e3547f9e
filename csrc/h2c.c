#include "h2c.h"
#include "conn.h"
#include "exchange.h"
#include "h2_common.h"
#include "h2_mem.h"
#include "log.h"
#include "nuncio.h"
#include "worker.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct h2c {
    struct conn *conn;
    nghttp2_session *ng;
    struct side *sides;   /* streams submitted to nghttp2 */
    struct side *waiting; /* exchanges queued until the connection is up */
    h2c_gone_fn gone;
    void *owner;
    size_t streams;        /* sides submitted or waiting */
    uint32_t assumed_max;  /* streams allowed until the peer's SETTINGS say */
    double idle_timeout;   /* seconds without streams before the connection is closed; 0: never */
    ev_timer idle_timer;   /* runs while streams == 0 */
    ev_timer linger_timer; /* after our GOAWAY */
    unsigned got_settings : 1;
    unsigned connected : 1;
    unsigned unusable : 1; /* GOAWAY received, failed or closed: no new streams */
    unsigned closing : 1;  /* our GOAWAY is out or the conn is closed: timers stay off */
    unsigned counted : 1;  /* in the worker's live_upstream_conns */
    char label[96];
    char why[240];             /* what made the connection fail, for the streams' replies */
    struct h2_mem_session mem; /* the session's allocator state (h2_mem.c); outlives the session */
};

static const struct side_ops h2c_ops;

static void list_add(struct side **head, struct side *sd)
{
    struct h2c *h = sd->codec;
    if (h)
        h->streams++;
    sd->prev = NULL;
    sd->next = *head;
    if (*head)
        (*head)->prev = sd;
    *head = sd;
}

static void list_del(struct side **head, struct side *sd)
{
    struct h2c *h = sd->codec;
    if (h && h->streams)
        h->streams--;
    if (sd->prev)
        sd->prev->next = sd->next;
    else if (*head == sd)
        *head = sd->next;
    if (sd->next)
        sd->next->prev = sd->prev;
    sd->prev = sd->next = NULL;
}

static void mark_unusable(struct h2c *h)
{
    if (h->unusable)
        return;
    h->unusable = 1;
    if (h->gone)
        h->gone(h->owner, h);
}

/* After our GOAWAY, an upstream that does not read it still loses the connection this much later. */
#define H2C_GOAWAY_LINGER 5.0

/* Called wherever the stream count may have changed: the idle timer runs
 * exactly while the connection has no stream, restarting from full each time. */
static void idle_check(struct h2c *h)
{
    struct ev_loop *loop = h->conn->w->loop;
    if (h->streams > 0 || h->closing || h->idle_timeout <= 0) {
        ev_timer_stop(loop, &h->idle_timer);
        return;
    }
    if (ev_is_active(&h->idle_timer))
        return;
    ev_timer_set(&h->idle_timer, h->idle_timeout, 0.);
    ev_timer_start(loop, &h->idle_timer);
}

static void on_linger(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2c *h = nu_container_of(t, struct h2c, linger_timer);
    conn_close(h->conn, NU_ERR_TIMEOUT);
}

static void on_idle(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2c *h = nu_container_of(t, struct h2c, idle_timer);
    nu_log(NU_LOG_INFO, "[c%llu] upstream %s: no stream for %.3g s (idle timeout): closing",
           (unsigned long long)h->conn->id, h->label, h->idle_timeout);
    /* Out of the pool first, so no new stream lands on a connection about to close. */
    mark_unusable(h);
    h->closing = 1;
    if (!h->connected || nghttp2_session_terminate_session(h->ng, NGHTTP2_NO_ERROR) != 0) {
        conn_close(h->conn, NU_OK);
        return;
    }
    ev_timer_start(loop, &h->linger_timer);
    conn_want_write(h->conn);
}

void h2c_set_idle_timeout(struct h2c *h, double secs)
{
    h->idle_timeout = secs > 0 ? secs : 0;
    ev_timer_stop(h->conn->w->loop, &h->idle_timer);
    idle_check(h);
}

unsigned long long h2c_id(const struct h2c *h)
{
    return (unsigned long long)h->conn->id;
}

int h2c_was_connected(const struct h2c *h)
{
    return h->connected;
}

int h2c_usable(const struct h2c *h)
{
    return !h->unusable && !h->conn->closing;
}

uint32_t h2c_peer_max_streams(const struct h2c *h)
{
    /* Until the peer's SETTINGS arrive: what the pool learned from its other
     * connections, so a burst does not pile onto one; with nothing learned, no
     * limit (RFC 9113's initial value) rather than a guess that would dial a
     * second connection for a burst the first can carry. nghttp2 itself holds
     * streams past 100 until the SETTINGS come, and a stream the peer refuses
     * is retried (stream.c). */
    if (!h->got_settings)
        return h->assumed_max ? h->assumed_max : UINT32_MAX;
    return nghttp2_session_get_remote_settings(h->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

int h2c_knows_peer_limit(const struct h2c *h)
{
    return h->got_settings;
}

void h2c_assume_max_streams(struct h2c *h, uint32_t n)
{
    h->assumed_max = n;
}

int h2c_has_room(const struct h2c *h)
{
    return h->streams < h2c_peer_max_streams(h);
}

size_t h2c_streams(const struct h2c *h)
{
    return h->streams;
}

void h2c_detach_owner(struct h2c *h)
{
    h->gone = NULL;
    h->owner = NULL;
}

static struct exchange *stream_x(nghttp2_session *ng, int32_t id)
{
    return nghttp2_session_get_stream_user_data(ng, id);
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct exchange *x = stream_x(ng, frame->hd.stream_id);
    if (!x)
        return 0;
    /* Everything after the final response head is the trailer block. */
    struct hdr_map *m = x->up.headers_seen ? &x->resp.trailers : &x->resp.hdrs;
    if (hdr_add_lower(m, (const char *)name, nlen, (const char *)value, vlen) != NU_OK)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int is_informational(const struct hdr_map *m)
{
    size_t n;
    const char *st = hdr_get(m, HDR_LIT(":status"), &n);
    return st && n == 3 && st[0] == '1';
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2c *h = ud;
    struct exchange *x;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        x = stream_x(ng, frame->hd.stream_id);
        if (!x)
            return 0;
        if (x->up.headers_seen) {
            /* trailers: nghttp2 has checked they carry END_STREAM */
            x->resp.end = 1;
            x->up_ev->on_end(x);
            return 0;
        }
        if (is_informational(&x->resp.hdrs)) {
            hdr_clear(&x->resp.hdrs); /* 1xx: wait for the final response */
            return 0;
        }
        x->up.headers_seen = 1;
        if (end)
            x->resp.end = 1;
        x->up_ev->on_headers(x);
        if (end)
            x->up_ev->on_end(x);
        break;
    case NGHTTP2_DATA:
        x = stream_x(ng, frame->hd.stream_id);
        if (x && end) {
            x->resp.end = 1;
            x->up_ev->on_end(x);
        }
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK))
            h->got_settings = 1;
        break;
    case NGHTTP2_GOAWAY:
        nu_log(NU_LOG_INFO, "[c%llu] upstream %s sent GOAWAY (last stream %d, error %u): draining",
               (unsigned long long)h->conn->id, h->label, frame->goaway.last_stream_id, frame->goaway.error_code);
        mark_unusable(h);
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk_recv(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud)
{
    struct exchange *x = stream_x(ng, id);
    if (!x) {
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    x->up.unconsumed += len;
    x->resp.body_bytes += len;
    x->up_ev->on_data(x, data, len);
    return 0;
}

static void side_closed(struct h2c *h, struct exchange *x, uint32_t code, int reason)
{
    x->up.ops = NULL;
    x->up.codec = NULL;
    x->up.unconsumed = 0;
    x->up_ev->on_close(x, code, reason, h->why[0] ? h->why : NULL);
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud)
{
    struct h2c *h = ud;
    struct exchange *x = stream_x(ng, id);
    if (!x)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    list_del(&h->sides, &x->up);
    if (x->up.unconsumed)
        nghttp2_session_consume_connection(ng, (size_t)x->up.unconsumed);
    side_closed(h, x, error_code, error_code == NGHTTP2_NO_ERROR ? NU_OK : NU_ERR_PROTO);
    idle_check(h);
    return 0;
}

static ssize_t read_request_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *data_flags,
                                 nghttp2_data_source *source, void *ud)
{
    struct exchange *x = source->ptr;
    /* NO_COPY: send_request_data moves the bytes straight from the queue to
     * the conn's output once nghttp2 has framed them (buf is unused). */
    size_t n = h2_data_length(&x->req.body, length);
    if (n > 0)
        *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == x->req.body.bytes && x->req.end) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (x->req.trailers.n > 0) {
            nghttp2_nv stackv[32];
            nghttp2_nv *nv = x->req.trailers.n <= 32 ? stackv : malloc(x->req.trailers.n * sizeof *nv);
            if (!nv)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            size_t k = h2_nv_from_hdrs(&x->req.trailers, nv);
            if (nghttp2_submit_trailer(ng, id, nv, k) == 0)
                *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nv != stackv)
                free(nv);
        }
        return (ssize_t)n;
    }
    if (n == 0)
        return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)n;
}

/* Called by nghttp2_session_mem_send right after read_request_body chose
 * length (nothing runs in between, so the queue still holds those bytes). */
static int send_request_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                             nghttp2_data_source *source, void *ud)
{
    struct h2c *h = ud;
    struct exchange *x = source->ptr;
    int rv = h2_write_data_frame(h->conn, frame, framehd, &x->req.body, length);
    if (rv != NGHTTP2_ERR_CALLBACK_FAILURE && length > 0)
        x->up_ev->on_body_taken(x, length);
    return rv;
}

static int submit_now(struct h2c *h, struct exchange *x)
{
    struct hdr_map *m = &x->req.hdrs;
    nghttp2_nv stackv[64];
    nghttp2_nv *nv = m->n <= 64 ? stackv : malloc(m->n * sizeof *nv);
    if (!nv)
        return NU_ERR_NOMEM;
    size_t k = h2_nv_from_hdrs(m, nv);
    int32_t id;
    if (x->req.end && x->req.body.bytes == 0 && x->req.trailers.n == 0) {
        id = nghttp2_submit_request(h->ng, NULL, nv, k, NULL, x);
    } else {
        nghttp2_data_provider prd = {.source.ptr = x, .read_callback = read_request_body};
        id = nghttp2_submit_request(h->ng, NULL, nv, k, &prd, x);
    }
    if (nv != stackv)
        free(nv);
    if (id < 0) {
        nu_log(NU_LOG_WARN, "[c%llu] upstream %s: cannot submit request: %s", (unsigned long long)h->conn->id, h->label,
               nghttp2_strerror(id));
        if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE)
            mark_unusable(h);
        return NU_ERR_PROTO;
    }
    x->up.id = id;
    list_add(&h->sides, &x->up);
    conn_want_write(h->conn);
    return NU_OK;
}

int h2c_submit(struct h2c *h, struct exchange *x)
{
    x->up.ops = &h2c_ops;
    x->up.codec = h;
    x->up.x = x;
    x->up.id = -1;
    if (!h->connected) {
        list_add(&h->waiting, &x->up);
        idle_check(h);
        return NU_OK;
    }
    int rc = submit_now(h, x);
    if (rc != NU_OK) {
        x->up.ops = NULL;
        x->up.codec = NULL;
    }
    idle_check(h);
    return rc;
}

static struct h2c *side_h2c(struct exchange *x)
{
    return x->up.codec;
}

static int h2c_submit_headers(struct exchange *x)
{
    return NU_OK; /* requests go out from h2c_submit */
}

static void h2c_resume(struct exchange *x)
{
    struct h2c *h = side_h2c(x);
    if (x->up.id < 0)
        return; /* still waiting for the connection; the provider reads the queue once submitted */
    nghttp2_session_resume_data(h->ng, x->up.id);
    conn_want_write(h->conn);
}

static void h2c_reset(struct exchange *x, uint32_t h2_error)
{
    struct h2c *h = side_h2c(x);
    if (x->up.id < 0) {
        /* Never sent: just forget it, as if the stream had closed. */
        list_del(&h->waiting, &x->up);
        side_closed(h, x, h2_error, NU_ERR_CLOSED);
        idle_check(h);
        return;
    }
    nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, x->up.id, h2_error);
    conn_want_write(h->conn);
}

static void h2c_consume(struct exchange *x, size_t n)
{
    struct h2c *h = side_h2c(x);
    if (n > x->up.unconsumed)
        n = (size_t)x->up.unconsumed;
    if (n == 0)
        return;
    x->up.unconsumed -= n;
    nghttp2_session_consume(h->ng, x->up.id, n);
    conn_want_write(h->conn);
}

static const struct side_ops h2c_ops = {
    .submit_headers = h2c_submit_headers,
    .resume = h2c_resume,
    .reset = h2c_reset,
    .consume = h2c_consume,
};

static int h2c_on_read(struct conn *c, const uint8_t *p, size_t n)
{
    struct h2c *h = c->codec;
    ssize_t rv = nghttp2_session_mem_recv(h->ng, p, n);
    if (rv < 0) {
        nu_log(NU_LOG_WARN, "[c%llu] upstream %s: HTTP/2 error: %s", (unsigned long long)c->id, h->label,
               nghttp2_strerror((int)rv));
        return NU_ERR_PROTO;
    }
    return 0;
}

static int h2c_fill(struct conn *c)
{
    struct h2c *h = c->codec;
    while (conn_pending(c) < CONN_WBUF_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->ng, &data);
        if (n < 0)
            return NU_ERR_PROTO;
        if (n == 0)
            break;
        if (buf_append(&c->wbuf, data, (size_t)n) != NU_OK)
            return NU_ERR_NOMEM;
    }
    if (!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng))
        return 1;
    return 0;
}

/* Fails every stream of this connection; reason tells the stream what to say. */
static void fail_all(struct h2c *h, int reason)
{
    while (h->waiting) {
        struct side *sd = h->waiting;
        list_del(&h->waiting, sd);
        side_closed(h, sd->x, NGHTTP2_REFUSED_STREAM, reason);
    }
    while (h->sides) {
        struct side *sd = h->sides;
        list_del(&h->sides, sd);
        nghttp2_session_set_stream_user_data(h->ng, sd->id, NULL);
        side_closed(h, sd->x, NGHTTP2_CANCEL, reason);
    }
}

static void h2c_on_connect(struct conn *c, int err)
{
    struct h2c *h = c->codec;
    if (err == NU_OK && c->tls) {
        /* gRPC needs HTTP/2; over TLS that is only agreed through ALPN. */
        const char *alpn = conn_alpn(c);
        if (!alpn || strcmp(alpn, "h2") != 0) {
            snprintf(c->detail, sizeof c->detail, "the upstream did not negotiate ALPN h2 (got %s)",
                     alpn ? alpn : "no ALPN");
            err = NU_ERR_TLS;
        }
    }
    if (err != NU_OK) {
        if (err == NU_ERR_TLS)
            snprintf(h->why, sizeof h->why, "TLS error: %s", c->detail);
        else
            snprintf(h->why, sizeof h->why, "%s", c->detail[0] ? c->detail : nu_strerror(err));
        nu_log(NU_LOG_WARN, "[c%llu] upstream %s: connect failed: %s", (unsigned long long)c->id, h->label, h->why);
        mark_unusable(h);
        conn_close(c, err);
        return;
    }
    nu_log(NU_LOG_DEBUG, "[c%llu] upstream %s connected", (unsigned long long)c->id, h->label);
    h->connected = 1;
    /* Submit in arrival order: the waiting list is LIFO, so reverse it first. */
    struct side *rev = NULL;
    while (h->waiting) {
        struct side *sd = h->waiting;
        list_del(&h->waiting, sd);
        list_add(&rev, sd);
    }
    while (rev) {
        struct side *sd = rev;
        list_del(&rev, sd);
        struct exchange *x = sd->x;
        if (submit_now(h, x) != NU_OK)
            side_closed(h, x, NGHTTP2_REFUSED_STREAM, NU_ERR_PROTO);
    }
    idle_check(h);
}

static void h2c_on_close(struct conn *c, int err)
{
    struct h2c *h = c->codec;
    h->closing = 1;
    ev_timer_stop(c->w->loop, &h->idle_timer);
    ev_timer_stop(c->w->loop, &h->linger_timer);
    if (h->counted) {
        h->counted = 0;
        c->w->live_upstream_conns--;
    }
    mark_unusable(h);
    /* A connect failure keeps its own reason; a drop after connecting is a "connection termination". */
    fail_all(h, h->connected ? NU_ERR_CLOSED : (err == NU_OK ? NU_ERR_IO : err));
}

static void h2c_free(void *codec)
{
    struct h2c *h = codec;
    nghttp2_session_del(h->ng);
    free(h);
}

static const struct conn_handler h2c_handler = {
    .on_read = h2c_on_read,
    .fill = h2c_fill,
    .on_connect = h2c_on_connect,
    .on_close = h2c_on_close,
    .free = h2c_free,
};

struct h2c *h2c_connect(struct worker *w, const struct sockaddr *sa, socklen_t salen, double connect_timeout_s,
                        struct tls_client *tc, const char *label, h2c_gone_fn gone, void *owner, int *err)
{
    struct h2c *h = calloc(1, sizeof *h);
    if (!h) {
        *err = NU_ERR_NOMEM;
        return NULL;
    }
    snprintf(h->label, sizeof h->label, "%s", label);
    h->gone = gone;
    h->owner = owner;
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) {
        free(h);
        *err = NU_ERR_NOMEM;
        return NULL;
    }
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_request_data);
    nghttp2_option *opt = h2_new_option();
    int rv = opt ? nghttp2_session_client_new3(&h->ng, cb, h, opt, h2_mem_session(&h->mem, w)) : NGHTTP2_ERR_NOMEM;
    nghttp2_session_callbacks_del(cb);
    if (opt)
        nghttp2_option_del(opt);
    if (rv != 0 || h2_send_settings(h->ng, 1000) != NU_OK) {
        if (rv == 0)
            nghttp2_session_del(h->ng);
        free(h);
        *err = NU_ERR_NOMEM;
        return NULL;
    }
    struct conn *c = conn_connect(w, sa, salen, connect_timeout_s, tc, err);
    if (!c) {
        nghttp2_session_del(h->ng);
        free(h);
        return NULL;
    }
    h->conn = c;
    ev_timer_init(&h->idle_timer, on_idle, 0., 0.);
    ev_timer_init(&h->linger_timer, on_linger, H2C_GOAWAY_LINGER, 0.);
    h->counted = 1;
    w->live_upstream_conns++;
    conn_set_handler(c, &h2c_handler, h);
    conn_start(c);
    return h;
}
