#include "h1s.h"
#include "h1_common.h"
#include "conn.h"
#include "exchange.h"
#include "h2_common.h"
#include "log.h"
#include "nuncio.h"
#include "worker.h"

#include <http_parser.h>
#include <limits.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Pipelined bytes read ahead of the request being answered: above this the
 * socket is left unread until the answer is out. */
#define H1S_PIPELINE_MAX (64 * 1024)

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H1S_PREFACE_LEN (sizeof h2_preface - 1)

/* How the response body is delimited on the wire. */
enum { H1S_BODY_NONE, H1S_BODY_LENGTH, H1S_BODY_CHUNKED, H1S_BODY_CLOSE };

/* The raw-byte scanner over each request head (see scan_head). */
enum { SCAN_PRE, SCAN_LINE, SCAN_CR, SCAN_LINE_START, SCAN_END_CR, SCAN_DONE };

/* One header field of the head being read: offsets into h1s.head. */
struct h1s_field {
    uint32_t noff, nlen, voff, vlen;
};

struct h1s {
    struct conn *conn;
    h1s_open_fn open;
    void *open_arg;
    struct h1s_opts o;
    http_parser parser;
    struct buf in;         /* owned: bytes read and not parsed yet (pipelined, or held back) */
    struct buf head;       /* owned: the URL, then names and values, of the message being read */
    struct h1s_field *fld; /* owned: fields of that message (the head's, then its trailers') */
    uint32_t nfld, capfld;
    uint32_t url_len;
    int last_was_value; /* the next field piece starts a new field */
    size_t trailer_bytes;
    int scan; /* SCAN_* */
    size_t line_len, head_len;
    int line_no;
    struct exchange *x; /* the request being read or answered; NULL between requests */
    uint64_t nreq;
    int body_mode;      /* H1S_BODY_* */
    uint64_t body_left; /* H1S_BODY_LENGTH: bytes still owed */
    int reject_status;  /* set by a parser callback: answer this and close */
    const char *reject_why;
    uint32_t abort_code;
    ev_timer idle_timer, hdr_timer;
    struct worker_defer defer; /* freed from the sweep after HTTP/2 took the connection over */
    unsigned in_msg : 1;       /* a request's first byte was parsed and it has not ended */
    unsigned head_ready : 1;   /* parser paused at the end of a head */
    unsigned msg_done : 1;     /* parser paused at the end of a message until it is answered */
    unsigned body_blocked : 1; /* parser paused: too much request body not taken yet */
    unsigned in_trailers : 1;
    unsigned end_reported : 1; /* on_end was told for the current exchange */
    unsigned resp_started : 1;
    unsigned resp_done : 1;
    unsigned keep_alive : 1;
    unsigned close_after : 1; /* close once the output is written */
    unsigned draining : 1;    /* shutting down: no keep-alive for the next answers */
    unsigned dead : 1;        /* input is ignored from now on */
    unsigned abort : 1;       /* close now: an HTTP/1 stream can only be reset this way */
    unsigned expect_continue : 1;
    unsigned is_head : 1;
    unsigned http10 : 1;
    unsigned sniffing : 1; /* the first bytes may still be the HTTP/2 preface */
};

static const struct side_ops h1s_ops;
static const http_parser_settings settings;
static int switch_to_h2(struct h1s *s, const uint8_t *p, size_t n);

static unsigned long long cid(const struct h1s *s)
{
    return (unsigned long long)s->conn->id;
}

/* ------------------------------------------------------------ reading control */

static int can_parse(const struct h1s *s)
{
    return !s->dead && !s->abort && !s->msg_done && !s->body_blocked && !s->close_after;
}

/* The socket is read while what it brings can go somewhere. */
static void update_reading(struct h1s *s)
{
    struct conn *c = s->conn;
    if (c->closing)
        return;
    int want = !s->abort && !s->body_blocked && (can_parse(s) || buf_size(&s->in) < H1S_PIPELINE_MAX);
    /* No ev_feed_event here: this runs in the sweep, and a fed event would run
     * after it, leaving what it queues unflushed while the loop blocks. None is
     * needed: conn's read_some drains TLS's decrypted bytes even while the
     * watcher is stopped (they wait in s->in), so the socket alone wakes us. */
    if (want && !ev_is_active(&c->rio))
        ev_io_start(c->w->loop, &c->rio);
    else if (!want && ev_is_active(&c->rio))
        ev_io_stop(c->w->loop, &c->rio);
}

static void arm_idle(struct h1s *s)
{
    struct ev_loop *loop = s->conn->w->loop;
    if (s->o.idle_timeout <= 0 || s->x || s->in_msg || s->close_after || s->dead)
        return;
    ev_timer_stop(loop, &s->idle_timer);
    ev_timer_set(&s->idle_timer, s->o.idle_timeout, 0.);
    ev_timer_start(loop, &s->idle_timer);
}

static void on_idle(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h1s *s = nu_container_of(t, struct h1s, idle_timer);
    nu_log(NU_LOG_INFO, "[c%llu] %s: no request for %.3g s (idle timeout): closing", cid(s), s->conn->peer,
           s->o.idle_timeout);
    conn_close(s->conn, NU_ERR_TIMEOUT);
}

/* ------------------------------------------------------------ replies the codec makes */

/* A reply of our own, then close: framing errors, limits, timeouts. No
 * exchange is open for the message it answers. */
static void reply_and_close(struct h1s *s, int status, const char *why)
{
    const char *reason = http_status_str((enum http_status)status);
    char head[512];
    size_t blen = strlen(reason);
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n%s%s%scontent-type: text/plain\r\ncontent-length: %zu\r\n%s"
                     "connection: close\r\n\r\n",
                     status, reason, s->o.server_name ? "server: " : "", s->o.server_name ? s->o.server_name : "",
                     s->o.server_name ? "\r\n" : "", blen, status == 426 ? "upgrade: HTTP/1.1\r\n" : "");
    nu_log(NU_LOG_INFO, "[c%llu] %s: %s: answered %d, closing", cid(s), s->conn->peer, why, status);
    s->dead = 1;
    s->close_after = 1;
    ev_timer_stop(s->conn->w->loop, &s->hdr_timer);
    ev_timer_stop(s->conn->w->loop, &s->idle_timer);
    if (n < 0 || (size_t)n >= sizeof head || buf_append(&s->conn->wbuf, head, (size_t)n) != NU_OK ||
        buf_append(&s->conn->wbuf, reason, blen) != NU_OK)
        s->abort = 1;
    conn_want_write(s->conn);
}

/* The codec lets go of the exchange; the stream may free it after this. */
static void detach(struct h1s *s, uint32_t h2_error, int reason, const char *detail)
{
    struct exchange *x = s->x;
    if (!x)
        return;
    s->x = NULL;
    x->down.ops = NULL;
    x->down.codec = NULL;
    x->down.unconsumed = 0;
    s->body_blocked = 0;
    x->down_ev->on_close(x, h2_error, reason, detail);
}

/* The request broke HTTP/1.1: 400 if nothing of the answer went out yet,
 * else the connection is cut (the client sees a truncated response). */
static void fail_request(struct h1s *s, int status, const char *why)
{
    if (s->x && s->resp_started) {
        nu_log(NU_LOG_INFO, "[c%llu] %s: %s after the response started: closing", cid(s), s->conn->peer, why);
        s->abort = 1;
        s->abort_code = NGHTTP2_PROTOCOL_ERROR;
        s->dead = 1;
        return;
    }
    detach(s, NGHTTP2_PROTOCOL_ERROR, NU_ERR_PROTO, why);
    reply_and_close(s, status, why);
}

static void on_header_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h1s *s = nu_container_of(t, struct h1s, hdr_timer);
    if (s->x || s->dead)
        return;
    if (s->sniffing && buf_size(&s->in) > 0) {
        /* Part of an HTTP/2 preface: HTTP/2's own deadline (long past) says what happens. */
        if (switch_to_h2(s, NULL, 0) < 0)
            conn_close(s->conn, NU_ERR_PROTO);
        return;
    }
    if (!s->in_msg) {
        /* Not one byte of a request (a silent TLS client, a stalled preface): nothing to answer. */
        nu_log(NU_LOG_INFO, "[c%llu] %s: no request within %.3g s (request headers timeout): closing", cid(s),
               s->conn->peer, s->o.header_timeout);
        conn_close(s->conn, NU_ERR_TIMEOUT);
        return;
    }
    char why[96];
    snprintf(why, sizeof why, "request headers not complete within %.3g s (request headers timeout)",
             s->o.header_timeout);
    reply_and_close(s, 408, why);
}

/* ------------------------------------------------------------ the raw head scanner */

/* Runs over each request head's raw bytes before the parser sees them, for
 * what http-parser lets through or cannot tell: obs-fold (a line starting
 * with white space, which it joins silently), bare LF line ends, and the
 * request-line and head size limits. Returns 0 or an HTTP status. */
static int scan_head(struct h1s *s, const uint8_t *p, size_t n, const char **why)
{
    for (size_t i = 0; i < n && s->scan != SCAN_DONE; i++) {
        uint8_t b = p[i];
        if (++s->head_len > s->o.max_header_bytes) {
            *why = s->line_no == 0 ? "request line too long" : "request headers too large";
            return s->line_no == 0 ? 414 : 431;
        }
        switch (s->scan) {
        case SCAN_PRE: /* CRLFs before a request are skipped, as RFC 7230 3.5 allows */
            if (b == '\r' || b == '\n')
                break;
            s->scan = SCAN_LINE;
            s->line_len = 1;
            break;
        case SCAN_LINE_START:
            if (b == ' ' || b == '\t') {
                *why = "obsolete line folding in a header";
                return 400;
            }
            if (b == '\r') {
                s->scan = SCAN_END_CR;
                break;
            }
            if (b == '\n') {
                *why = "bare LF in the request head";
                return 400;
            }
            s->scan = SCAN_LINE;
            s->line_len = 1;
            break;
        case SCAN_LINE:
            if (b == '\r') {
                s->scan = SCAN_CR;
                break;
            }
            if (b == '\n') {
                *why = "bare LF in the request head";
                return 400;
            }
            if (++s->line_len > H1S_MAX_REQUEST_LINE && s->line_no == 0) {
                *why = "request line too long";
                return 414;
            }
            break;
        case SCAN_CR:
            if (b != '\n') {
                *why = "CR without LF in the request head";
                return 400;
            }
            s->line_no++;
            s->scan = SCAN_LINE_START;
            break;
        case SCAN_END_CR:
            s->scan = SCAN_DONE; /* the parser checks that this is the LF */
            break;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ parser callbacks */

static int add_piece(struct h1s *s, const char *at, size_t len, size_t *bytes)
{
    if (buf_append(&s->head, at, len) != NU_OK) {
        s->reject_status = 503;
        s->reject_why = "out of memory reading a request head";
        return -1;
    }
    if (bytes && (*bytes += len) > s->o.max_header_bytes) {
        s->reject_status = 431;
        s->reject_why = "request trailers too large";
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct h1s *s = p->data;
    s->in_msg = 1;
    ev_timer_stop(s->conn->w->loop, &s->idle_timer);
    if (s->o.header_timeout > 0 && !ev_is_active(&s->hdr_timer)) {
        ev_timer_set(&s->hdr_timer, s->o.header_timeout, 0.);
        ev_timer_start(s->conn->w->loop, &s->hdr_timer);
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct h1s *s = p->data;
    s->url_len += (uint32_t)len;
    return add_piece(s, at, len, NULL);
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct h1s *s = p->data;
    if (s->last_was_value || s->nfld == 0) {
        if (s->nfld == H1S_MAX_HEADERS) {
            s->reject_status = 431;
            s->reject_why = "too many header fields";
            return -1;
        }
        if (s->nfld == s->capfld) {
            uint32_t cap = s->capfld ? s->capfld * 2 : 32;
            struct h1s_field *f = realloc(s->fld, cap * sizeof *f);
            if (!f) {
                s->reject_status = 503;
                s->reject_why = "out of memory reading a request head";
                return -1;
            }
            s->fld = f;
            s->capfld = cap;
        }
        s->fld[s->nfld++] = (struct h1s_field){.noff = (uint32_t)s->head.len};
        s->last_was_value = 0;
    }
    s->fld[s->nfld - 1].nlen += (uint32_t)len;
    return add_piece(s, at, len, s->in_trailers ? &s->trailer_bytes : NULL);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct h1s *s = p->data;
    struct h1s_field *f = &s->fld[s->nfld - 1];
    if (!s->last_was_value) {
        f->voff = (uint32_t)s->head.len;
        s->last_was_value = 1;
    }
    f->vlen += (uint32_t)len;
    return add_piece(s, at, len, s->in_trailers ? &s->trailer_bytes : NULL);
}

static int on_headers_complete(http_parser *p)
{
    struct h1s *s = p->data;
    s->head_ready = 1;
    http_parser_pause(p, 1); /* the head is checked and handed on outside the parser */
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct h1s *s = p->data;
    struct exchange *x = s->x;
    if (!x || s->abort)
        return 0;
    x->down.unconsumed += len;
    x->req.body_bytes += len;
    x->down_ev->on_data(x, (const uint8_t *)at, len);
    /* Not on a Content-Length body's last bytes: the parser would wait, paused,
     * for a byte that never comes to tell it the message is complete. */
    int last = !(p->flags & F_CHUNKED) && p->content_length == 0;
    if (x->down.unconsumed >= s->o.body_window && !s->abort && !last) {
        s->body_blocked = 1;
        http_parser_pause(p, 1);
    }
    return 0;
}

static int on_chunk_header(http_parser *p)
{
    struct h1s *s = p->data;
    if (p->content_length == 0) {
        /* The last chunk: what follows are trailers, in the same callbacks as headers. */
        s->in_trailers = 1;
        s->nfld = 0;
        s->last_was_value = 0;
        s->head.off = s->head.len = 0;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct h1s *s = p->data;
    s->in_msg = 0;
    s->msg_done = 1;
    http_parser_pause(p, 1); /* the next request waits until this one is answered */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_chunk_header = on_chunk_header,
    .on_message_complete = on_message_complete,
};

/* ------------------------------------------------------------ the head */

static const char *fname(const struct h1s *s, const struct h1s_field *f)
{
    return (const char *)s->head.data + f->noff;
}

static const char *fvalue(const struct h1s *s, const struct h1s_field *f)
{
    return (const char *)s->head.data + f->voff;
}

static int fname_is(const struct h1s *s, const struct h1s_field *f, const char *name)
{
    size_t n = strlen(name);
    return f->nlen == n && strncasecmp(fname(s, f), name, n) == 0;
}

/* Trailing white space is not part of a value (RFC 7230 3.2.4); the parser keeps it. */
static void trim_values(struct h1s *s)
{
    for (uint32_t i = 0; i < s->nfld; i++) {
        struct h1s_field *f = &s->fld[i];
        while (f->vlen > 0 && (fvalue(s, f)[f->vlen - 1] == ' ' || fvalue(s, f)[f->vlen - 1] == '\t'))
            f->vlen--;
    }
}

/* http-parser checks a header value's bytes against RFC 7230's field-vchar,
 * all but the first: a NUL or another control byte there reached the stream
 * (and an HTTP/1 Host line, or an HTTP/2 upstream that refuses it). A value
 * holds HTAB, SP, visible bytes and obs-text only. */
static int value_ok(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

/* What http-parser accepts and nuncio does not: returns 0 or an HTTP status. */
static int check_head(struct h1s *s, const char **why, int *host_at)
{
    http_parser *p = &s->parser;
    if (p->http_major != 1 || p->http_minor > 1) {
        *why = "unsupported HTTP version";
        return 400;
    }
    if (p->http_minor == 0 && !s->o.enable_http10) {
        *why = "HTTP/1.0 request (enable_http10 is off)";
        return 426;
    }
    if (p->method == HTTP_CONNECT) {
        *why = "CONNECT is not supported";
        return 400;
    }
    /* http-parser (not built strict) lets HTAB and FF through in a request target */
    if (!h1_is_visible((const char *)s->head.data, s->url_len)) {
        *why = "a control character in the request target";
        return 400;
    }
    int te = 0, host = 0;
    *host_at = -1;
    for (uint32_t i = 0; i < s->nfld; i++) {
        const struct h1s_field *f = &s->fld[i];
        if (memchr(fname(s, f), ' ', f->nlen) || memchr(fname(s, f), '\t', f->nlen)) {
            *why = "white space in a header name";
            return 400;
        }
        if (!value_ok(fvalue(s, f), f->vlen)) {
            *why = "a control character in a header value";
            return 400;
        }
        if (fname_is(s, f, "transfer-encoding")) {
            /* Only "chunked", once: any other coding would be forwarded undone. */
            if (te++ || f->vlen != 7 || strncasecmp(fvalue(s, f), "chunked", 7) != 0) {
                *why = "transfer-encoding other than a single chunked";
                return 400;
            }
        } else if (fname_is(s, f, "host")) {
            if (host++) {
                *why = "more than one host header";
                return 400;
            }
            *host_at = (int)i;
        }
    }
    if (!host) {
        *why = "no host header";
        return 400;
    }
    return 0;
}

static int add_hdr(struct hdr_map *m, const char *n, size_t nl, const char *v, size_t vl, int *rc)
{
    *rc |= hdr_add(m, n, nl, v, vl);
    return *rc;
}

/* The request head as HTTP/2 would carry it: pseudo-headers first, Host as
 * :authority, hop-by-hop fields dropped. */
static int fill_request(struct h1s *s, struct exchange *x, int host_at, const char **why)
{
    const char *url = (const char *)s->head.data;
    size_t ul = s->url_len;
    const char *auth = fvalue(s, &s->fld[host_at]);
    size_t al = s->fld[host_at].vlen;
    /* absolute-form (a client talking to a proxy): its authority wins over Host (RFC 7230 5.4) */
    size_t skip = ul >= 7 && strncasecmp(url, "http://", 7) == 0    ? 7
                  : ul >= 8 && strncasecmp(url, "https://", 8) == 0 ? 8
                                                                    : 0;
    if (skip) {
        size_t e = skip;
        while (e < ul && url[e] != '/' && url[e] != '?' && url[e] != '#')
            e++;
        if (e == skip || memchr(url + skip, '@', e - skip)) {
            *why = "bad authority in an absolute URL";
            return NU_ERR_PROTO;
        }
        auth = url + skip;
        al = e - skip;
        url += e;
        ul -= e;
    }
    int rc = 0;
    const char *method = http_method_str((enum http_method)s->parser.method);
    const char *scheme = s->conn->tls ? "https" : "http";
    add_hdr(&x->req.hdrs, HDR_LIT(":method"), method, strlen(method), &rc);
    add_hdr(&x->req.hdrs, HDR_LIT(":scheme"), scheme, strlen(scheme), &rc);
    add_hdr(&x->req.hdrs, HDR_LIT(":authority"), auth, al, &rc);
    if (!ul) {
        add_hdr(&x->req.hdrs, HDR_LIT(":path"), HDR_LIT("/"), &rc);
    } else if (skip && url[0] != '/') {
        /* "http://a?x": an absolute URL with a query and no path; its origin form is "/?x" (RFC 7230 5.3.1) */
        char *path = malloc(ul + 1);
        if (!path) {
            rc = NU_ERR_NOMEM;
        } else {
            path[0] = '/';
            memcpy(path + 1, url, ul);
            add_hdr(&x->req.hdrs, HDR_LIT(":path"), path, ul + 1, &rc);
            free(path);
        }
    } else {
        add_hdr(&x->req.hdrs, HDR_LIT(":path"), url, ul, &rc);
    }
    for (uint32_t i = 0; i < s->nfld && !rc; i++) {
        const struct h1s_field *f = &s->fld[i];
        char name[64];
        if ((int)i == host_at)
            continue;
        if (f->nlen < sizeof name) {
            for (uint32_t k = 0; k < f->nlen; k++)
                name[k] =
                    (char)((fname(s, f)[k] >= 'A' && fname(s, f)[k] <= 'Z') ? fname(s, f)[k] + 32 : fname(s, f)[k]);
            if (h2_is_hop_by_hop(name, f->nlen, fvalue(s, f), f->vlen))
                continue;
            /* We answer 100-continue ourselves (Envoy's default); the upstream need not. */
            if (f->nlen == 6 && memcmp(name, "expect", 6) == 0 && f->vlen == 12 &&
                strncasecmp(fvalue(s, f), "100-continue", 12) == 0)
                continue;
        }
        add_hdr(&x->req.hdrs, fname(s, f), f->nlen, fvalue(s, f), f->vlen, &rc); /* hdr_add folds the case */
    }
    if (rc)
        *why = "out of memory";
    return rc ? NU_ERR_NOMEM : NU_OK;
}

static int wants_continue(const struct h1s *s)
{
    for (uint32_t i = 0; i < s->nfld; i++)
        if (fname_is(s, &s->fld[i], "expect") && s->fld[i].vlen == 12 &&
            strncasecmp(fvalue(s, &s->fld[i]), "100-continue", 12) == 0)
            return 1;
    return 0;
}

static void reset_head(struct h1s *s)
{
    s->head.off = s->head.len = 0;
    s->nfld = 0;
    s->url_len = 0;
    s->last_was_value = 0;
    s->in_trailers = 0;
    s->trailer_bytes = 0;
}

/* The parser paused at the end of a head: check it and open the exchange. */
static void head_done(struct h1s *s)
{
    s->head_ready = 0;
    ev_timer_stop(s->conn->w->loop, &s->hdr_timer);
    trim_values(s);
    const char *why = NULL;
    int host_at;
    int status = check_head(s, &why, &host_at);
    if (status) {
        reply_and_close(s, status, why);
        return;
    }
    struct exchange *x = s->open(s->open_arg, s->conn);
    if (!x) {
        reply_and_close(s, 503, "no memory for a stream");
        return;
    }
    x->down.ops = &h1s_ops;
    x->down.http1 = 1;
    x->down.codec = s;
    x->down.id = (int32_t)(++s->nreq & 0x7fffffff);
    x->down.x = x;
    s->x = x;
    s->resp_started = s->resp_done = 0;
    s->end_reported = 0;
    s->body_mode = H1S_BODY_NONE;
    s->body_left = 0;
    s->keep_alive = http_should_keep_alive(&s->parser) != 0 && !s->draining;
    s->is_head = s->parser.method == HTTP_HEAD;
    s->http10 = s->parser.http_minor == 0;
    s->expect_continue = !s->http10 && wants_continue(s);
    int rc = fill_request(s, x, host_at, &why);
    if (rc != NU_OK) {
        fail_request(s, rc == NU_ERR_NOMEM ? 503 : 400, why);
        return;
    }
    /* No Content-Length and not chunked: the request has no body (RFC 7230 3.3.3). */
    int bodyless =
        !(s->parser.flags & F_CHUNKED) && (s->parser.content_length == 0 || s->parser.content_length == ULLONG_MAX);
    if (bodyless)
        x->req.end = 1;
    reset_head(s);
    x->down_ev->on_headers(x);
    if (!s->x || s->abort)
        return;
    if (bodyless) {
        s->end_reported = 1;
        x->down_ev->on_end(x);
    } else if (s->expect_continue && !s->resp_started) {
        /* The request is accepted and will be sent on: let the body come. */
        if (buf_append(&s->conn->wbuf, "HTTP/1.1 100 Continue\r\n\r\n", 25) != NU_OK)
            s->abort = 1;
        s->expect_continue = 0;
        conn_want_write(s->conn);
    }
}

/* The parser paused at the end of a message. */
static void message_done(struct h1s *s)
{
    struct exchange *x = s->x;
    if (!x || s->end_reported)
        return;
    s->end_reported = 1;
    trim_values(s);
    int rc = 0, bad = 0;
    for (uint32_t i = 0; s->in_trailers && i < s->nfld && !rc && !bad; i++) {
        if (!value_ok(fvalue(s, &s->fld[i]), s->fld[i].vlen))
            bad = 1;
        else
            rc = hdr_add(&x->req.trailers, fname(s, &s->fld[i]), s->fld[i].nlen, fvalue(s, &s->fld[i]), s->fld[i].vlen);
    }
    reset_head(s);
    if (bad) {
        fail_request(s, 400, "a control character in a request trailer value");
        return;
    }
    if (rc) {
        fail_request(s, 503, "out of memory keeping request trailers");
        return;
    }
    x->req.end = 1;
    x->down_ev->on_end(x);
}

/* Feeds p to the parser as far as it may go now; *used says how far it went.
 * Runs from on_read and fill only, never inside a side op: it reports events. */
static void parse(struct h1s *s, const uint8_t *p, size_t n, size_t *used)
{
    size_t off = 0;
    *used = 0;
    while (can_parse(s) && (off < n || s->head_ready)) {
        if (s->head_ready) {
            head_done(s);
            continue;
        }
        if (s->scan != SCAN_DONE) {
            const char *why = NULL;
            int status = scan_head(s, p + off, n - off, &why);
            if (status) {
                reply_and_close(s, status, why);
                break;
            }
        }
        if (HTTP_PARSER_ERRNO(&s->parser) == HPE_PAUSED)
            http_parser_pause(&s->parser, 0);
        size_t k = http_parser_execute(&s->parser, &settings, (const char *)p + off, n - off);
        off += k;
        enum http_errno e = HTTP_PARSER_ERRNO(&s->parser);
        if (e != HPE_OK && e != HPE_PAUSED) {
            int status = s->reject_status ? s->reject_status : 400;
            char why[128];
            snprintf(why, sizeof why, "%s", s->reject_why ? s->reject_why : http_errno_description(e));
            fail_request(s, status, why);
            break;
        }
        if (s->msg_done) {
            message_done(s);
            /* The next request's head is scanned afresh. */
            s->scan = SCAN_PRE;
            s->head_len = s->line_len = 0;
            s->line_no = 0;
        }
        if (e == HPE_OK && k == 0 && !s->head_ready)
            break; /* an upgrade the parser stopped at: nothing else to take here */
    }
    *used = off;
}

/* Takes new bytes (p may be NULL) and parses what may be parsed now; what is
 * not stays in s->in. */
static int take_input(struct h1s *s, const uint8_t *p, size_t n)
{
    size_t used = 0;
    if (buf_size(&s->in) > 0 || !can_parse(s)) {
        if (n && buf_append(&s->in, p, n) != NU_OK)
            return NU_ERR_NOMEM;
        if (can_parse(s) && buf_size(&s->in) > 0) {
            parse(s, s->in.data + s->in.off, buf_size(&s->in), &used);
            buf_consume(&s->in, used);
        }
    } else if (n) {
        parse(s, p, n, &used);
        if (used < n && !s->dead && buf_append(&s->in, p + used, n - used) != NU_OK)
            return NU_ERR_NOMEM;
    }
    if (s->dead)
        buf_free(&s->in);
    update_reading(s);
    arm_idle(s);
    return NU_OK;
}

/* ------------------------------------------------------------ the response */

static int append_fields(struct h1s *s, struct buf *b, const struct hdr_map *m, int response_head)
{
    int rc = 0;
    for (uint32_t i = 0; i < m->n && !rc; i++) {
        const struct hdr_entry *e = &m->v[i];
        if (e->nlen == 0 || e->name[0] == ':' || h2_is_hop_by_hop(e->name, e->nlen, e->value, e->vlen))
            continue;
        if (response_head && (strcmp(e->name, "content-length") == 0 || strcmp(e->name, "te") == 0))
            continue; /* framing is ours to write */
        if (!h1_field_safe(e)) {
            nu_log(NU_LOG_DEBUG, "[c%llu] header %.*s has bytes HTTP/1 cannot carry: dropped", cid(s), (int)e->nlen,
                   e->name);
            continue;
        }
        rc = h1_put_field(b, e);
    }
    return rc;
}

static int h1s_submit_headers(struct exchange *x)
{
    struct h1s *s = x->down.codec;
    struct msg *r = &x->resp;
    if (s->abort || s->resp_started)
        return NU_ERR_PROTO;
    size_t sl = 0;
    const char *sv = hdr_get(&r->hdrs, HDR_LIT(":status"), &sl);
    int status = sv && sl == 3 ? atoi(sv) : 0;
    if (status < 200 || status > 999)
        return NU_ERR_PROTO; /* interim answers are not passed on */
    int bodyless = s->is_head || status == 204 || status == 304;
    size_t cl_len = 0;
    const char *clv = hdr_get(&r->hdrs, HDR_LIT("content-length"), &cl_len);
    uint64_t cl = 0;
    int has_cl = clv && h1_parse_length(clv, cl_len, &cl) == 0;
    /* The whole answer is already here: its length is known. */
    int complete = r->end && r->trailers.n == 0;
    char line[160];
    if (bodyless) {
        s->body_mode = H1S_BODY_NONE;
        if (status == 204)
            has_cl = 0;
    } else if (has_cl) {
        s->body_mode = H1S_BODY_LENGTH;
        s->body_left = cl;
    } else if (complete) {
        s->body_mode = H1S_BODY_LENGTH;
        s->body_left = cl = r->body.bytes;
        has_cl = 1;
    } else if (!s->http10) {
        s->body_mode = H1S_BODY_CHUNKED;
    } else {
        s->body_mode = H1S_BODY_CLOSE;
        s->keep_alive = 0;
    }
    /* Answered before the client sent its body: it will not, or not usefully. */
    if (!x->req.end && (r->end || s->expect_continue))
        s->keep_alive = 0;
    const char *reason = http_status_str((enum http_status)status);
    if (reason[0] == '<')
        reason = "Unknown";
    struct buf *b = &s->conn->wbuf;
    int n = snprintf(line, sizeof line, "HTTP/1.%d %d %s\r\n", s->http10 ? 0 : 1, status, reason);
    int rc = buf_append(b, line, (size_t)n);
    rc |= append_fields(s, b, &r->hdrs, 1);
    if (has_cl) {
        n = snprintf(line, sizeof line, "content-length: %llu\r\n", (unsigned long long)cl);
        rc |= buf_append(b, line, (size_t)n);
    }
    if (s->body_mode == H1S_BODY_CHUNKED)
        rc |= buf_append(b, HDR_LIT("transfer-encoding: chunked\r\n"));
    if (!s->keep_alive)
        rc |= buf_append(b, HDR_LIT("connection: close\r\n"));
    else if (s->http10)
        rc |= buf_append(b, HDR_LIT("connection: keep-alive\r\n"));
    rc |= buf_append(b, "\r\n", 2);
    s->resp_started = 1;
    s->expect_continue = 0;
    conn_want_write(s->conn);
    return rc ? NU_ERR_NOMEM : NU_OK;
}

/* Moves queued response body, then its end, to the socket buffer. Returns 0,
 * or negative to cut the connection. */
static int write_body(struct h1s *s)
{
    struct exchange *x = s->x;
    struct buf *b = &s->conn->wbuf;
    uint8_t tmp[NU_CHUNK_SIZE];
    char line[32];
    while (x->resp.body.bytes > 0 && buf_size(b) < CONN_WBUF_HIGH) {
        size_t n = chunkq_read(&x->resp.body, tmp, sizeof tmp);
        int rc = 0;
        switch (s->body_mode) {
        case H1S_BODY_NONE:
            break;
        case H1S_BODY_LENGTH:
            if (n > s->body_left) {
                nu_log(NU_LOG_INFO, "[c%llu] response body longer than its content-length: closing", cid(s));
                return NU_ERR_PROTO;
            }
            s->body_left -= n;
            rc = buf_append(b, tmp, n);
            break;
        case H1S_BODY_CHUNKED: {
            int k = snprintf(line, sizeof line, "%zx\r\n", n);
            rc = buf_append(b, line, (size_t)k) | buf_append(b, tmp, n) | buf_append(b, "\r\n", 2);
            break;
        }
        default:
            rc = buf_append(b, tmp, n);
            break;
        }
        if (rc)
            return NU_ERR_NOMEM;
        x->down_ev->on_body_taken(x, n);
        if (s->abort || s->x != x)
            return s->abort ? NU_ERR_PROTO : 0;
    }
    if (!x->resp.end || x->resp.body.bytes > 0)
        return 0;
    if (s->body_mode == H1S_BODY_CHUNKED) {
        int rc = buf_append(b, "0\r\n", 3);
        rc |= append_fields(s, b, &x->resp.trailers, 0);
        rc |= buf_append(b, "\r\n", 2);
        if (rc)
            return NU_ERR_NOMEM;
    } else if (s->body_mode == H1S_BODY_CLOSE || (s->body_mode == H1S_BODY_LENGTH && s->body_left > 0)) {
        s->keep_alive = 0; /* the end is told by closing */
    }
    s->resp_done = 1;
    return 0;
}

/* The answer is written: let go of the exchange and go on to the next request. */
static void exchange_done(struct h1s *s)
{
    struct exchange *x = s->x;
    if (!x->req.end) {
        s->keep_alive = 0; /* the rest of the request body would be read as a request */
        s->dead = 1;
    }
    detach(s, NGHTTP2_NO_ERROR, NU_OK, NULL);
    if (!s->keep_alive) {
        s->close_after = 1;
        s->dead = 1;
        return;
    }
    s->msg_done = 0;
}

static void h1s_resume(struct exchange *x)
{
    struct h1s *s = x->down.codec;
    conn_want_write(s->conn);
}

static void h1s_reset(struct exchange *x, uint32_t h2_error)
{
    struct h1s *s = x->down.codec;
    if (!s->abort)
        nu_log(NU_LOG_DEBUG, "[c%llu] stream reset (%s): closing the connection", cid(s),
               nghttp2_http2_strerror(h2_error));
    s->abort = 1;
    s->abort_code = h2_error;
    conn_want_write(s->conn);
}

static void h1s_consume(struct exchange *x, size_t n)
{
    struct h1s *s = x->down.codec;
    if (n > x->down.unconsumed)
        n = (size_t)x->down.unconsumed;
    x->down.unconsumed -= n;
    if (s->body_blocked && x->down.unconsumed <= s->o.body_window / 2) {
        /* Parsing resumes from fill: this runs inside the stream's own calls. */
        s->body_blocked = 0;
        conn_want_write(s->conn);
    }
}

static const struct side_ops h1s_ops = {
    .submit_headers = h1s_submit_headers,
    .resume = h1s_resume,
    .reset = h1s_reset,
    .consume = h1s_consume,
};

/* ------------------------------------------------------------ conn handler */

static void h1s_free(void *codec)
{
    struct h1s *s = codec;
    buf_free(&s->in);
    buf_free(&s->head);
    free(s->fld);
    free(s);
}

static void free_deferred(struct worker_defer *d)
{
    h1s_free(nu_container_of(d, struct h1s, defer));
}

/* The client sent the HTTP/2 preface: HTTP/2 takes the connection over and
 * gets every byte so far. Our object is freed at the next sweep: the read
 * handler or timer that called us still runs on it. */
static int switch_to_h2(struct h1s *s, const uint8_t *p, size_t n)
{
    struct conn *c = s->conn;
    if (s->o.to_h2(c, s->o.to_h2_arg) != NU_OK)
        return NU_ERR_NOMEM;
    ev_timer_stop(c->w->loop, &s->idle_timer);
    ev_timer_stop(c->w->loop, &s->hdr_timer);
    s->defer.fn = free_deferred;
    worker_defer(c->w, &s->defer);
    int rc = NU_OK;
    if (buf_size(&s->in))
        rc = c->h->on_read(c, s->in.data + s->in.off, buf_size(&s->in));
    if (rc >= 0 && n)
        rc = c->h->on_read(c, p, n);
    if (rc >= 0)
        conn_want_write(c);
    return rc;
}

static int h1s_on_read(struct conn *c, const uint8_t *p, size_t n)
{
    struct h1s *s = c->codec;
    if (s->abort)
        return NU_ERR_PROTO;
    if (s->dead)
        return 0; /* answered and closing: the rest is not read */
    if (s->sniffing) {
        size_t have = buf_size(&s->in);
        size_t k = n < H1S_PREFACE_LEN - have ? n : H1S_PREFACE_LEN - have;
        if (memcmp(p, h2_preface + have, k) != 0) {
            s->sniffing = 0;
        } else if (have + k < H1S_PREFACE_LEN) {
            return buf_append(&s->in, p, n);
        } else {
            return switch_to_h2(s, p, n);
        }
    }
    int rc = take_input(s, p, n);
    if (rc != NU_OK)
        return rc;
    return s->abort ? NU_ERR_PROTO : 0;
}

static int h1s_fill(struct conn *c)
{
    struct h1s *s = c->codec;
    while (!s->abort && buf_size(&c->wbuf) < CONN_WBUF_HIGH) {
        struct exchange *x = s->x;
        if (x && s->resp_started && !s->resp_done) {
            int rc = write_body(s);
            if (rc < 0)
                return rc;
        }
        if (s->x && s->resp_done)
            exchange_done(s);
        /* Input held back (the next pipelined request, or body over the
         * window) goes on once it may; parsing is never done inside a side op. */
        size_t before = buf_size(&s->in);
        if (!before || !can_parse(s) || s->sniffing)
            break;
        if (take_input(s, NULL, 0) != NU_OK)
            return NU_ERR_NOMEM;
        if (buf_size(&s->in) == before && s->x == x)
            break;
    }
    if (s->abort)
        return NU_ERR_PROTO;
    update_reading(s);
    arm_idle(s);
    return s->close_after && !s->x ? 1 : 0;
}

static void h1s_on_close(struct conn *c, int err)
{
    struct h1s *s = c->codec;
    ev_timer_stop(c->w->loop, &s->idle_timer);
    ev_timer_stop(c->w->loop, &s->hdr_timer);
    if (s->x)
        detach(s, s->abort ? s->abort_code : NGHTTP2_CANCEL, err == NU_OK ? NU_ERR_CLOSED : err, NULL);
}

/* Shutting down: the answer in progress says `connection: close` (or, if
 * its head is already out, the connection closes after it); an idle
 * keep-alive connection closes now. */
static void h1s_drain(struct conn *c, int final)
{
    struct h1s *s = c->codec;
    s->draining = 1;
    s->keep_alive = 0;
    if (!s->x && !s->in_msg) {
        s->close_after = 1;
        s->dead = 1;
        conn_want_write(c);
    }
}

static const struct conn_handler h1s_handler = {
    .on_read = h1s_on_read,
    .fill = h1s_fill,
    .on_close = h1s_on_close,
    .free = h1s_free,
    .drain = h1s_drain,
};

int h1s_attach(struct conn *c, h1s_open_fn open, void *arg, const struct h1s_opts *o)
{
    struct h1s *s = calloc(1, sizeof *s);
    if (!s)
        return NU_ERR_NOMEM;
    s->conn = c;
    s->open = open;
    s->open_arg = arg;
    s->o = *o;
    if (!s->o.max_header_bytes)
        s->o.max_header_bytes = H1S_MAX_HEADER_BYTES;
    if (!s->o.body_window)
        s->o.body_window = H1S_BODY_WINDOW;
    s->sniffing = o->to_h2 != NULL;
    http_parser_init(&s->parser, HTTP_REQUEST);
    s->parser.data = s;
    ev_timer_init(&s->idle_timer, on_idle, o->idle_timeout, 0.);
    ev_timer_init(&s->hdr_timer, on_header_timeout, o->header_timeout, 0.);
    conn_set_handler(c, &h1s_handler, s);
    struct ev_loop *loop = c->w->loop;
    if (o->idle_timeout > 0)
        ev_timer_start(loop, &s->idle_timer);
    if (o->header_timeout > 0) {
        /* The first request's head is due header_timeout after the TLS
         * handshake, or after accept in cleartext (the wait for the first byte counts). */
        double left = c->tls ? o->header_timeout : c->accepted_at + o->header_timeout - ev_now(loop);
        ev_timer_set(&s->hdr_timer, left > 0 ? left : 0., 0.);
        ev_timer_start(loop, &s->hdr_timer);
    }
    return NU_OK;
}
