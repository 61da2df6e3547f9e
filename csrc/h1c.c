#include "h1c.h"
#include "h1_common.h"
#include "conn.h"
#include "exchange.h"
#include "log.h"
#include "nuncio.h"
#include "worker.h"

#include <http_parser.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Reading stops while this much response body waits unconsumed downstream,
 * and starts again below half of it: the HTTP/1 stand-in for h2c's window. */
#define H1C_READ_HIGH (1024 * 1024)
/* A response head (or trailer block) larger than this is refused (Envoy's 60 KiB default). */
#define H1C_MAX_HEAD (60 * 1024)

struct h1c {
    struct conn *conn;
    struct exchange *x; /* the exchange in flight; NULL while idle */
    http_parser p;
    h1c_notify_fn notify;
    void *owner;
    double idle_timeout; /* seconds idle before closing; 0: never */
    ev_timer idle_timer; /* runs while connected without an exchange */
    uint64_t req_left;   /* content-length mode: body bytes still to send */
    uint64_t served;     /* exchanges completed on this connection */
    uint64_t resp_bytes; /* response bytes read for the current exchange */
    size_t head_bytes;   /* response head or trailers so far, for the limit */
    struct buf hn, hv;   /* owned: the header name / value being assembled */
    int last_cb;         /* 1: the last header callback was a name, 2: a value */
    unsigned connected : 1;
    unsigned connect_failed : 1;
    unsigned gone : 1;       /* told the owner (or never will take an exchange again) */
    unsigned closing : 1;    /* the conn is closed or closing */
    unsigned counted : 1;    /* in the worker's live_upstream_conns */
    unsigned read_paused : 1;
    unsigned head_req : 1;   /* the request is HEAD: the response has no body */
    unsigned chunked : 1;    /* the request body goes chunked */
    unsigned req_done : 1;   /* the whole request is in the write buffer */
    unsigned resp_done : 1;  /* the final response was read to its end */
    unsigned keep_alive : 1; /* the response lets the connection serve another exchange */
    unsigned informational : 1; /* the response being parsed is a 1xx */
    unsigned in_trailers : 1;
    unsigned failed : 1;     /* the response broke the protocol */
    char label[96];
    char why[240];         /* what made the connection fail, for the stream's reply */
    char conn_tokens[256]; /* the response's Connection header: more hop-by-hop names */
};

static const struct side_ops h1c_ops;
static http_parser_settings parser_settings;

static void notify(struct h1c *h, int event)
{
    if (event == H1C_GONE) {
        if (h->gone)
            return;
        h->gone = 1;
    }
    if (h->notify)
        h->notify(h->owner, h, event);
}

static void pause_read(struct h1c *h, int paused)
{
    if (h->read_paused == (unsigned)paused || h->closing)
        return;
    h->read_paused = (unsigned)paused;
    conn_pause_read(h->conn, paused);
}

static void idle_check(struct h1c *h)
{
    struct ev_loop *loop = h->conn->w->loop;
    if (h->x || h->closing || !h->connected || h->gone || h->idle_timeout <= 0) {
        ev_timer_stop(loop, &h->idle_timer);
        return;
    }
    if (ev_is_active(&h->idle_timer))
        return;
    ev_timer_set(&h->idle_timer, h->idle_timeout, 0.);
    ev_timer_start(loop, &h->idle_timer);
}

static void on_idle(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h1c *h = nu_container_of(t, struct h1c, idle_timer);
    nu_log(NU_LOG_INFO, "[c%llu] upstream %s: idle for %.3g s (idle timeout): closing",
           (unsigned long long)h->conn->id, h->label, h->idle_timeout);
    notify(h, H1C_GONE);
    conn_close(h->conn, NU_OK);
}

void h1c_set_idle_timeout(struct h1c *h, double secs)
{
    h->idle_timeout = secs > 0 ? secs : 0;
    ev_timer_stop(h->conn->w->loop, &h->idle_timer);
    idle_check(h);
}

unsigned long long h1c_id(const struct h1c *h)
{
    return (unsigned long long)h->conn->id;
}

int h1c_was_connected(const struct h1c *h)
{
    return h->connected;
}

int h1c_connect_failed(const struct h1c *h)
{
    return h->connect_failed;
}

int h1c_usable(const struct h1c *h)
{
    return !h->x && !h->gone && !h->closing && !h->conn->closing;
}

void h1c_detach_owner(struct h1c *h)
{
    h->notify = NULL;
    h->owner = NULL;
    if (!h->x && !h->closing) {
        /* Nobody can hand it another exchange. */
        h->gone = 1;
        conn_close(h->conn, NU_OK);
    }
}

/* Lets go of the exchange and tells the stream; the codec never touches x again. */
static void detach(struct h1c *h, uint32_t code, int reason)
{
    struct exchange *x = h->x;
    h->x = NULL;
    x->up.ops = NULL;
    x->up.codec = NULL;
    x->up.unconsumed = 0;
    if (h->read_paused)
        pause_read(h, 0);
    x->up_ev->on_close(x, code, reason, reason != NU_OK && h->why[0] ? h->why : NULL);
}

/* ------------------------------------------------------------ request */

static int is_hop_by_hop(const char *n, size_t len)
{
    static const char *const names[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                                        "upgrade", "te", "trailer", "expect", "http2-settings"};
    for (size_t i = 0; i < NU_ARRAY_LEN(names); i++)
        if (strlen(names[i]) == len && strncasecmp(names[i], n, len) == 0)
            return 1;
    return 0;
}

static int put(struct buf *b, const char *p, size_t n)
{
    return buf_append(b, p, n);
}

#define PUT_LIT(b, s) put((b), (s), sizeof(s) - 1)

/* Writes "name: value\r\n" lines for the map, without pseudo-headers and hop-by-hop ones. */
static int put_fields(struct h1c *h, struct buf *b, const struct hdr_map *m, int skip_framing)
{
    int rc = NU_OK;
    for (uint32_t i = 0; i < m->n && rc == NU_OK; i++) {
        const struct hdr_entry *e = &m->v[i];
        if (e->nlen == 0 || e->name[0] == ':' || is_hop_by_hop(e->name, e->nlen))
            continue;
        if (e->nlen == 4 && strncasecmp(e->name, "host", 4) == 0)
            continue; /* written from :authority */
        if (skip_framing && e->nlen == 14 && strncasecmp(e->name, "content-length", 14) == 0)
            continue;
        if (!h1_field_safe(e)) {
            nu_log(NU_LOG_WARN, "[c%llu] upstream %s: header %.*s has bytes HTTP/1.1 cannot carry: dropped",
                   (unsigned long long)h->conn->id, h->label, (int)(e->nlen > 64 ? 64 : e->nlen), e->name);
            continue;
        }
        rc = h1_put_field(b, e);
    }
    return rc;
}

static int method_has_body(const char *m, size_t n)
{
    return (n == 4 && memcmp(m, "POST", 4) == 0) || (n == 3 && memcmp(m, "PUT", 3) == 0) ||
           (n == 5 && memcmp(m, "PATCH", 5) == 0);
}

/* Serializes the request head into the connection's write buffer (sent once
 * connected). Chooses the framing: content-length when the body is known,
 * else chunked. */
static int write_head(struct h1c *h, struct exchange *x)
{
    const struct hdr_map *m = &x->req.hdrs;
    size_t ml = 0, pl = 0, al = 0, cll = 0;
    const char *method = hdr_get(m, HDR_LIT(":method"), &ml);
    const char *path = hdr_get(m, HDR_LIT(":path"), &pl);
    const char *auth = hdr_get(m, HDR_LIT(":authority"), &al);
    if (!auth)
        auth = hdr_get(m, HDR_LIT("host"), &al);
    if (!method || !path || !h1_is_token(method, ml) || !h1_is_visible(path, pl) || (auth && !h1_value_safe(auth, al)) ||
        (ml == 7 && memcmp(method, "CONNECT", 7) == 0)) {
        nu_log(NU_LOG_WARN, "[c%llu] upstream %s: the request cannot be written as HTTP/1.1 (method or path)",
               (unsigned long long)h->conn->id, h->label);
        return NU_ERR_PROTO;
    }
    h->head_req = ml == 4 && memcmp(method, "HEAD", 4) == 0;
    const char *cl = hdr_get(m, HDR_LIT("content-length"), &cll);
    uint64_t given = 0;
    int have_len = cl && h1_parse_length(cl, cll, &given) == 0;
    char num[32];
    int nn = 0;
    h->chunked = 0;
    if (x->req.end) {
        /* The whole body is here: its exact length, whatever the client said. */
        h->req_left = x->req.body.bytes;
        if (h->req_left > 0 || have_len || method_has_body(method, ml))
            nn = snprintf(num, sizeof num, "%llu", (unsigned long long)h->req_left);
    } else if (have_len) {
        h->req_left = given;
        nn = snprintf(num, sizeof num, "%llu", (unsigned long long)given);
    } else {
        h->chunked = 1;
    }
    struct buf *b = &h->conn->wbuf;
    int rc = put(b, method, ml);
    rc |= PUT_LIT(b, " ");
    rc |= put(b, path, pl);
    rc |= PUT_LIT(b, " HTTP/1.1\r\n");
    if (auth) {
        rc |= PUT_LIT(b, "host: ");
        rc |= put(b, auth, al);
        rc |= PUT_LIT(b, "\r\n");
    }
    if (rc)
        return NU_ERR_NOMEM;
    if ((rc = put_fields(h, b, m, 1)) != NU_OK)
        return rc;
    if (nn > 0) {
        rc |= PUT_LIT(b, "content-length: ");
        rc |= put(b, num, (size_t)nn);
        rc |= PUT_LIT(b, "\r\n");
    } else if (h->chunked) {
        rc |= PUT_LIT(b, "transfer-encoding: chunked\r\n");
    }
    rc |= PUT_LIT(b, "\r\n");
    return rc ? NU_ERR_NOMEM : NU_OK;
}

/* Moves queued request body into the write buffer, and the end once it came.
 * Returns NU_OK, or an error when the body does not fit its content-length. */
static int write_body(struct h1c *h)
{
    struct exchange *x = h->x;
    struct buf *b = &h->conn->wbuf;
    while (x && !h->req_done && x->req.body.bytes > 0 && buf_size(b) < CONN_WBUF_HIGH) {
        uint8_t tmp[NU_CHUNK_SIZE];
        size_t n = chunkq_read(&x->req.body, tmp, sizeof tmp);
        if (n == 0)
            break;
        int rc = NU_OK;
        if (h->chunked) {
            char sz[24];
            int k = snprintf(sz, sizeof sz, "%zx\r\n", n);
            rc |= put(b, sz, (size_t)k);
            rc |= put(b, (const char *)tmp, n);
            rc |= PUT_LIT(b, "\r\n");
        } else {
            if (n > h->req_left) {
                snprintf(h->why, sizeof h->why, "request body longer than its content-length");
                return NU_ERR_PROTO;
            }
            h->req_left -= n;
            rc = put(b, (const char *)tmp, n);
        }
        if (rc)
            return NU_ERR_NOMEM;
        x->up_ev->on_body_taken(x, n);
        x = h->x; /* the stream may have let go of the exchange */
    }
    if (!x || h->req_done || x->req.body.bytes > 0 || !x->req.end)
        return NU_OK;
    if (h->chunked) {
        int rc = PUT_LIT(b, "0\r\n");
        /* Trailers travel only in chunked framing; with a length they are dropped. */
        if (rc == NU_OK && x->req.trailers.n)
            rc = put_fields(h, b, &x->req.trailers, 1);
        if (rc == NU_OK)
            rc = PUT_LIT(b, "\r\n");
        if (rc)
            return NU_ERR_NOMEM;
    } else if (h->req_left > 0) {
        snprintf(h->why, sizeof h->why, "request body shorter than its content-length");
        return NU_ERR_PROTO;
    }
    h->req_done = 1;
    return NU_OK;
}

int h1c_submit(struct h1c *h, struct exchange *x)
{
    if (!h1c_usable(h))
        return NU_ERR_CLOSED;
    size_t before = h->conn->wbuf.len;
    h->req_done = h->resp_done = h->keep_alive = h->informational = h->in_trailers = h->failed = 0;
    h->resp_bytes = 0;
    h->head_bytes = 0;
    h->last_cb = 0;
    h->why[0] = '\0';
    int rc = write_head(h, x);
    if (rc != NU_OK) {
        h->conn->wbuf.len = before; /* nothing of it goes out */
        return rc;
    }
    http_parser_init(&h->p, HTTP_RESPONSE);
    h->p.data = h;
    h->x = x;
    x->up.ops = &h1c_ops;
    x->up.codec = h;
    x->up.x = x;
    x->up.id = -1;
    ev_timer_stop(h->conn->w->loop, &h->idle_timer);
    conn_want_write(h->conn);
    return NU_OK;
}

/* ------------------------------------------------------------ exchange end */

/* The response is complete: hand the exchange back and keep the connection
 * for the next one when HTTP/1.1 allows. Returns 1 when the connection must close. */
static int finish_exchange(struct h1c *h)
{
    if (!h->req_done && write_body(h) != NU_OK)
        h->req_done = 0;
    /* A request still going out when the response ended leaves the
     * connection mid-message: it cannot carry another. */
    int reuse = h->keep_alive && h->req_done && !h->failed;
    h->served++;
    detach(h, NGHTTP2_NO_ERROR, NU_OK);
    if (!reuse || h->closing || h->gone) {
        notify(h, H1C_GONE);
        return 1;
    }
    notify(h, H1C_IDLE);
    idle_check(h);
    return h->gone;
}

/* ------------------------------------------------------------ response */

static int hdr_flush(struct h1c *h)
{
    if (h->last_cb != 2)
        return 0;
    h->last_cb = 0;
    struct exchange *x = h->x;
    char *n = (char *)h->hn.data + h->hn.off;
    size_t nl = buf_size(&h->hn), vl = buf_size(&h->hv);
    const char *v = vl ? (const char *)h->hv.data + h->hv.off : "";
    for (size_t i = 0; i < nl; i++)
        if (n[i] >= 'A' && n[i] <= 'Z')
            n[i] = (char)(n[i] + 32);
    int rc = 0;
    if (nl == 10 && memcmp(n, "connection", 10) == 0) {
        size_t used = strlen(h->conn_tokens);
        if (used + vl + 2 < sizeof h->conn_tokens) {
            for (size_t i = 0; i < vl; i++)
                h->conn_tokens[used++] = (char)((v[i] >= 'A' && v[i] <= 'Z') ? v[i] + 32 : v[i]);
            h->conn_tokens[used++] = ',';
            h->conn_tokens[used] = '\0';
        }
    }
    if (x && !is_hop_by_hop(n, nl) && !(nl == 4 && memcmp(n, "host", 4) == 0)) {
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        rc = hdr_add(h->in_trailers ? &x->resp.trailers : &x->resp.hdrs, n, nl, v, vl);
    }
    h->hn.off = h->hn.len = 0;
    h->hv.off = h->hv.len = 0;
    return rc == NU_OK ? 0 : -1;
}

/* Is name one of the comma-separated tokens of list? */
static int listed(const char *list, const char *name, size_t nl)
{
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - p) == nl && nl && memcmp(p, name, nl) == 0)
            return 1;
        p = e;
    }
    return 0;
}

static int head_limit(struct h1c *h, size_t n)
{
    h->head_bytes += n;
    return h->head_bytes > H1C_MAX_HEAD ? -1 : 0;
}

static int on_message_begin(http_parser *p)
{
    struct h1c *h = p->data;
    h->informational = 0;
    h->in_trailers = 0;
    h->head_bytes = 0;
    h->last_cb = 0;
    h->conn_tokens[0] = '\0';
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct h1c *h = p->data;
    if (head_limit(h, n) || hdr_flush(h))
        return -1;
    h->last_cb = 1;
    return buf_append(&h->hn, at, n) == NU_OK ? 0 : -1;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct h1c *h = p->data;
    if (head_limit(h, n))
        return -1;
    h->last_cb = 2;
    return buf_append(&h->hv, at, n) == NU_OK ? 0 : -1;
}

/* Stops the parser when the stream let go of the exchange during a callback
 * (a reset closes the connection; nothing more is read). */
static int still_ours(struct h1c *h, struct exchange *x)
{
    if (h->x == x && !h->closing)
        return 1;
    http_parser_pause(&h->p, 1);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct h1c *h = p->data;
    struct exchange *x = h->x;
    if (hdr_flush(h))
        return -1;
    if (!x)
        return -1;
    unsigned status = p->status_code;
    if (status == 101 || status < 100 || status > 999) {
        snprintf(h->why, sizeof h->why, "upstream answered status %u", status);
        return -1;
    }
    if (status < 200) {
        /* 100 Continue and friends: the final response follows. */
        h->informational = 1;
        hdr_clear(&x->resp.hdrs);
        return 0;
    }
    char num[8];
    int k = snprintf(num, sizeof num, "%u", status);
    /* :status first, as HTTP/2 puts it: filters and the downstream codec expect it there. */
    struct hdr_map fields = x->resp.hdrs;
    memset(&x->resp.hdrs, 0, sizeof x->resp.hdrs);
    int rc = hdr_add(&x->resp.hdrs, HDR_LIT(":status"), num, (size_t)k);
    /* Names listed in Connection are hop-by-hop too (RFC 9110 7.6.1). */
    for (uint32_t i = 0; i < fields.n && rc == NU_OK; i++)
        if (!listed(h->conn_tokens, fields.v[i].name, fields.v[i].nlen))
            rc = hdr_add(&x->resp.hdrs, fields.v[i].name, fields.v[i].nlen, fields.v[i].value, fields.v[i].vlen);
    hdr_clear(&fields);
    if (rc != NU_OK)
        return -1;
    h->keep_alive = http_should_keep_alive(p) ? 1 : 0;
    x->up.headers_seen = 1;
    x->up_ev->on_headers(x);
    if (!still_ours(h, x))
        return 0;
    /* HEAD, 204 and 304 answers have no body, whatever their headers say. */
    return h->head_req || status == 204 || status == 304 ? 1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct h1c *h = p->data;
    struct exchange *x = h->x;
    if (!x)
        return 0;
    x->up.unconsumed += n;
    x->resp.body_bytes += n;
    x->up_ev->on_data(x, (const uint8_t *)at, n);
    if (!still_ours(h, x))
        return 0;
    if (x->up.unconsumed > H1C_READ_HIGH)
        pause_read(h, 1);
    return 0;
}

static int on_chunk_header(http_parser *p)
{
    struct h1c *h = p->data;
    if (p->content_length == 0) {
        h->in_trailers = 1; /* the last chunk: what follows is the trailer block */
        h->head_bytes = 0;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct h1c *h = p->data;
    struct exchange *x = h->x;
    if (hdr_flush(h))
        return -1;
    if (h->informational) {
        h->informational = 0;
        return 0;
    }
    h->resp_done = 1;
    /* One response per request: whatever follows is not ours to parse. */
    http_parser_pause(p, 1);
    if (!x)
        return 0;
    x->resp.end = 1;
    x->up_ev->on_end(x);
    still_ours(h, x);
    return 0;
}

/* Fails the connection's exchange after a protocol error and closes it. */
static void fail_proto(struct h1c *h, const char *what)
{
    if (!h->why[0])
        snprintf(h->why, sizeof h->why, "%s", what);
    nu_log(NU_LOG_WARN, "[c%llu] upstream %s: bad HTTP/1.1 response: %s", (unsigned long long)h->conn->id,
           h->label, h->why);
    h->failed = 1;
    notify(h, H1C_GONE);
    if (h->x)
        detach(h, NGHTTP2_PROTOCOL_ERROR, NU_ERR_PROTO);
    conn_close(h->conn, NU_ERR_PROTO);
}

static int h1c_on_read(struct conn *c, const uint8_t *p, size_t n)
{
    struct h1c *h = c->codec;
    if (!h->x || h->resp_done) {
        /* Nothing was asked: an idle connection must stay silent. */
        nu_log(NU_LOG_INFO, "[c%llu] upstream %s sent %zu bytes while idle: closing", (unsigned long long)c->id,
               h->label, n);
        notify(h, H1C_GONE);
        return NU_ERR_PROTO;
    }
    h->resp_bytes += n;
    size_t used = http_parser_execute(&h->p, &parser_settings, (const char *)p, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&h->p);
    if (h->closing)
        return 0; /* the stream reset the exchange: the connection is already closed */
    if (e != HPE_OK && e != HPE_PAUSED) {
        fail_proto(h, http_errno_description(e));
        return 0;
    }
    if (!h->resp_done)
        return 0;
    if (used < n)
        h->keep_alive = 0; /* bytes after the response: the connection is out of step */
    if (h->x && finish_exchange(h))
        conn_close(c, NU_OK);
    return 0;
}

/* ------------------------------------------------------------ side ops */

static int h1c_submit_headers(struct exchange *x)
{
    return NU_OK; /* the request head went out from h1c_submit */
}

static void h1c_resume(struct exchange *x)
{
    struct h1c *h = x->up.codec;
    conn_want_write(h->conn);
}

static void h1c_reset(struct exchange *x, uint32_t h2_error)
{
    struct h1c *h = x->up.codec;
    /* HTTP/1.1 cannot abort one request: the connection goes with it. */
    nu_log(NU_LOG_DEBUG, "[c%llu] upstream %s: exchange reset (%s): closing the connection",
           (unsigned long long)h->conn->id, h->label, nghttp2_http2_strerror(h2_error));
    notify(h, H1C_GONE);
    detach(h, h2_error, h2_error == NGHTTP2_NO_ERROR ? NU_OK : NU_ERR_PROTO);
    conn_close(h->conn, NU_OK);
}

static void h1c_consume(struct exchange *x, size_t n)
{
    struct h1c *h = x->up.codec;
    if (n > x->up.unconsumed)
        n = (size_t)x->up.unconsumed;
    x->up.unconsumed -= n;
    if (h->read_paused && x->up.unconsumed < H1C_READ_HIGH / 2)
        pause_read(h, 0);
}

static const struct side_ops h1c_ops = {
    .submit_headers = h1c_submit_headers,
    .resume = h1c_resume,
    .reset = h1c_reset,
    .consume = h1c_consume,
};

/* ------------------------------------------------------------ conn handler */

static int h1c_fill(struct conn *c)
{
    struct h1c *h = c->codec;
    if (!h->x || h->req_done || !h->connected)
        return 0;
    int rc = write_body(h);
    if (rc != NU_OK) {
        nu_log(NU_LOG_WARN, "[c%llu] upstream %s: %s: closing", (unsigned long long)c->id, h->label,
               h->why[0] ? h->why : nu_strerror(rc));
        h->failed = 1;
        return rc;
    }
    return 0;
}

static void h1c_on_connect(struct conn *c, int err)
{
    struct h1c *h = c->codec;
    if (err == NU_OK && c->tls) {
        const char *alpn = conn_alpn(c);
        if (alpn && strcmp(alpn, "http/1.1") != 0) {
            snprintf(c->detail, sizeof c->detail, "the upstream negotiated ALPN %s, not http/1.1", alpn);
            err = NU_ERR_TLS;
        }
    }
    if (err != NU_OK) {
        if (err == NU_ERR_TLS)
            snprintf(h->why, sizeof h->why, "TLS error: %s", c->detail);
        else
            snprintf(h->why, sizeof h->why, "%s", c->detail[0] ? c->detail : nu_strerror(err));
        nu_log(NU_LOG_WARN, "[c%llu] upstream %s: connect failed: %s", (unsigned long long)c->id, h->label, h->why);
        h->connect_failed = 1;
        notify(h, H1C_GONE);
        conn_close(c, err);
        return;
    }
    nu_log(NU_LOG_DEBUG, "[c%llu] upstream %s connected (HTTP/1.1)", (unsigned long long)c->id, h->label);
    h->connected = 1;
    idle_check(h);
}

static void h1c_on_close(struct conn *c, int err)
{
    struct h1c *h = c->codec;
    h->closing = 1;
    ev_timer_stop(c->w->loop, &h->idle_timer);
    if (h->counted) {
        h->counted = 0;
        c->w->live_upstream_conns--;
    }
    notify(h, H1C_GONE);
    if (!h->x)
        return;
    if (err == NU_OK && h->x->up.headers_seen && !h->resp_done) {
        /* The end of the stream ends a response without a length. */
        http_parser_execute(&h->p, &parser_settings, NULL, 0);
    }
    if (!h->x)
        return;
    if (h->resp_done) {
        h->served++;
        detach(h, NGHTTP2_NO_ERROR, NU_OK);
        return;
    }
    if (!h->connected) {
        /* A connect failure keeps its own reason. */
        detach(h, NGHTTP2_REFUSED_STREAM, err == NU_OK ? NU_ERR_IO : err);
        return;
    }
    if (h->served > 0 && h->resp_bytes == 0 && !h->failed) {
        /* A kept-alive connection the server had closed: the request was
         * never processed, so the stream may send it again elsewhere. */
        nu_log(NU_LOG_INFO, "[c%llu] upstream %s closed a reused connection before answering: request refused",
               (unsigned long long)c->id, h->label);
        detach(h, NGHTTP2_REFUSED_STREAM, NU_ERR_CLOSED);
        return;
    }
    if (!h->why[0] && h->x->up.headers_seen)
        snprintf(h->why, sizeof h->why, "the upstream closed the connection mid-response");
    detach(h, NGHTTP2_CANCEL, NU_ERR_CLOSED);
}

static void h1c_free(void *codec)
{
    struct h1c *h = codec;
    buf_free(&h->hn);
    buf_free(&h->hv);
    free(h);
}

static const struct conn_handler h1c_handler = {
    .on_read = h1c_on_read,
    .fill = h1c_fill,
    .on_connect = h1c_on_connect,
    .on_close = h1c_on_close,
    .free = h1c_free,
};

static http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_chunk_header = on_chunk_header,
};

struct h1c *h1c_connect(struct worker *w, const struct sockaddr *sa, socklen_t salen, double connect_timeout_s,
                        struct tls_client *tc, const char *label, h1c_notify_fn notify_fn, void *owner, int *err)
{
    struct h1c *h = calloc(1, sizeof *h);
    if (!h) {
        *err = NU_ERR_NOMEM;
        return NULL;
    }
    snprintf(h->label, sizeof h->label, "%s", label);
    h->notify = notify_fn;
    h->owner = owner;
    struct conn *c = conn_connect(w, sa, salen, connect_timeout_s, tc, err);
    if (!c) {
        free(h);
        return NULL;
    }
    h->conn = c;
    http_parser_init(&h->p, HTTP_RESPONSE);
    h->p.data = h;
    ev_timer_init(&h->idle_timer, on_idle, 0., 0.);
    h->counted = 1;
    w->live_upstream_conns++;
    conn_set_handler(c, &h1c_handler, h);
    conn_start(c);
    return h;
}
