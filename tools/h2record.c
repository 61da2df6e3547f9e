/* h2record: a recording HTTP/2 (h2c) and HTTP/1.1 upstream for nuncio.testing's live mode.
 *
 * Listens on N ports of 127.0.0.1 (chosen by the kernel) and prints
 * "PORTS p1 p2 ...\n" on stdout. Every request is answered 200 with the
 * request it received in a response header, so a test reads what the upstream
 * saw: `x-h2record: <port>\t<name>\t<value>\t<name>\t<value>...` (hex-escaped
 * tabs and backslashes), plus `x-h2record-body-bytes`. gRPC requests
 * (content-type application/grpc...) get a gRPC answer: an empty message and
 * `grpc-status: 0` in trailers. A request header `x-h2record-status: N` makes
 * the answer HTTP N with a text body and no gRPC framing (a misconfigured or
 * non-gRPC upstream, for status-mapping tests). It exits when its standard input closes, or
 * on SIGTERM with --no-stdin (then it also prints its PID after the ports).
 * A connection that does not open with the HTTP/2 preface is HTTP/1.1 (what
 * nuncio speaks to Mappings without grpc: true): the record then starts with
 * :method, :path and :authority (from Host) as an HTTP/2 request would, and a
 * gRPC answer's grpc-status travels as a chunked trailer.
 * One thread, one libev loop; no TLS. */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct port {
    ev_io io;
    int fd, port;
};

struct request {
    char *rec; /* the record being built: "port\tname\tvalue..." */
    size_t len, cap;
    size_t body;
    int grpc;
    int sent_body;
    char status[4]; /* asked for with x-h2record-status */
};

struct session {
    ev_io rio, wio;
    int fd, port;
    nghttp2_session *ng; /* HTTP/2; NULL until the first bytes say which protocol */
    int h1;              /* HTTP/1.1 instead */
    http_parser hp;
    struct request hdrs;  /* HTTP/1.1: the header fields so far (record form) */
    char *url, *host, *name, *val;
    size_t url_len, host_len, name_len, val_len;
    int last_value;       /* HTTP/1.1: the last header callback was a value */
    int close_after;      /* HTTP/1.1: the answered request did not keep the connection alive */
    struct request h1req; /* HTTP/1.1: the request being read */
};

static struct ev_loop *loop;

static void rec_add(struct request *r, const char *s, size_t n, int sep)
{
    if (r->len + 4 * n + 2 > r->cap) {
        size_t cap = (r->len + 4 * n + 2) * 2;
        char *p = realloc(r->rec, cap);
        if (!p)
            abort();
        r->rec = p;
        r->cap = cap;
    }
    if (sep)
        r->rec[r->len++] = '\t';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\t' || c == '\\' || c < 0x20 || c == 0x7f) {
            r->len += (size_t)sprintf(r->rec + r->len, "\\x%02x", c);
        } else {
            r->rec[r->len++] = (char)c;
        }
    }
}

static ssize_t read_grpc_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                              nghttp2_data_source *src, void *ud)
{
    struct request *r = src->ptr;
    static const uint8_t empty_msg[5] = {0, 0, 0, 0, 0};
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (r->grpc) {
        nghttp2_nv tr[] = {{(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, NGHTTP2_NV_FLAG_NONE}};
        nghttp2_submit_trailer(ng, id, tr, 1);
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        memcpy(buf, empty_msg, 5);
        return 5;
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    struct session *s = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct request *r = calloc(1, sizeof *r);
    if (!r)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    char port[16];
    int n = snprintf(port, sizeof port, "%d", s->port);
    rec_add(r, port, (size_t)n, 0);
    nghttp2_session_set_stream_user_data(ng, f->hd.stream_id, r);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    struct request *r = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!r || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    rec_add(r, (const char *)name, nl, 1);
    rec_add(r, (const char *)value, vl, 1);
    if (nl == 12 && memcmp(name, "content-type", 12) == 0 && vl >= 16 && memcmp(value, "application/grpc", 16) == 0)
        r->grpc = 1;
    if (nl == 17 && memcmp(name, "x-h2record-status", 17) == 0 && vl == 3)
        memcpy(r->status, value, 3);
    return 0;
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *d, size_t n, void *ud)
{
    struct request *r = nghttp2_session_get_stream_user_data(ng, id);
    if (r)
        r->body += n;
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM) || (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA))
        return 0;
    struct request *r = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!r || r->sent_body)
        return 0;
    r->sent_body = 1;
    char bytes[32];
    int bn = snprintf(bytes, sizeof bytes, "%zu", r->body);
    if (r->status[0])
        r->grpc = 0; /* a plain HTTP answer, as a non-gRPC upstream gives */
    const char *ct = r->grpc ? "application/grpc" : "text/plain";
    nghttp2_nv nv[] = {
        {(uint8_t *)":status", (uint8_t *)(r->status[0] ? r->status : "200"), 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)ct, 12, strlen(ct), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"x-h2record", (uint8_t *)r->rec, 10, r->len, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"x-h2record-body-bytes", (uint8_t *)bytes, 21, (size_t)bn, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider prd = {.source.ptr = r, .read_callback = read_grpc_body};
    nghttp2_submit_response(ng, f->hd.stream_id, nv, 4, &prd);
    return 0;
}

static int on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    struct request *r = nghttp2_session_get_stream_user_data(ng, id);
    if (r) {
        free(r->rec);
        free(r);
    }
    return 0;
}

static void session_free(struct session *s)
{
    ev_io_stop(loop, &s->rio);
    ev_io_stop(loop, &s->wio);
    close(s->fd);
    if (s->ng)
        nghttp2_session_del(s->ng);
    free(s->hdrs.rec);
    free(s->h1req.rec);
    free(s->url);
    free(s->host);
    free(s->name);
    free(s->val);
    free(s);
}

/* ------------------------------------------------------------ HTTP/1.1 */

static void append(char **p, size_t *len, const char *at, size_t n)
{
    char *q = realloc(*p, *len + n + 1);
    if (!q)
        abort();
    memcpy(q + *len, at, n);
    *len += n;
    q[*len] = '\0';
    *p = q;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            fd_set set;
            FD_ZERO(&set);
            FD_SET(fd, &set);
            select(fd + 1, NULL, &set, NULL, NULL);
            continue;
        }
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void h1_flush_field(struct session *s)
{
    if (!s->last_value)
        return;
    s->last_value = 0;
    for (size_t i = 0; i < s->name_len; i++)
        if (s->name[i] >= 'A' && s->name[i] <= 'Z')
            s->name[i] = (char)(s->name[i] + 32);
    const char *v = s->val ? s->val : "";
    if (s->name_len == 4 && memcmp(s->name, "host", 4) == 0) {
        s->host_len = 0;
        append(&s->host, &s->host_len, v, s->val_len);
    } else {
        rec_add(&s->hdrs, s->name, s->name_len, 1);
        rec_add(&s->hdrs, v, s->val_len, 1);
        if (s->name_len == 12 && memcmp(s->name, "content-type", 12) == 0 && s->val_len >= 16 &&
            memcmp(v, "application/grpc", 16) == 0)
            s->h1req.grpc = 1;
        if (s->name_len == 17 && memcmp(s->name, "x-h2record-status", 17) == 0 && s->val_len == 3)
            memcpy(s->h1req.status, v, 3);
    }
    s->name_len = s->val_len = 0;
}

static int h1_begin(http_parser *p)
{
    struct session *s = p->data;
    free(s->h1req.rec);
    free(s->hdrs.rec);
    memset(&s->h1req, 0, sizeof s->h1req);
    memset(&s->hdrs, 0, sizeof s->hdrs);
    s->url_len = s->host_len = s->name_len = s->val_len = 0;
    s->last_value = 0;
    return 0;
}

static int h1_url(http_parser *p, const char *at, size_t n)
{
    struct session *s = p->data;
    append(&s->url, &s->url_len, at, n);
    return 0;
}

static int h1_field(http_parser *p, const char *at, size_t n)
{
    struct session *s = p->data;
    h1_flush_field(s);
    append(&s->name, &s->name_len, at, n);
    return 0;
}

static int h1_value(http_parser *p, const char *at, size_t n)
{
    struct session *s = p->data;
    s->last_value = 1;
    append(&s->val, &s->val_len, at, n);
    return 0;
}

/* The record as an HTTP/2 request would give it: pseudo-headers first. */
static int h1_headers_done(http_parser *p)
{
    struct session *s = p->data;
    struct request *r = &s->h1req;
    h1_flush_field(s);
    char port[16];
    int n = snprintf(port, sizeof port, "%d", s->port);
    rec_add(r, port, (size_t)n, 0);
    const char *m = http_method_str((enum http_method)p->method);
    rec_add(r, ":method", 7, 1);
    rec_add(r, m, strlen(m), 1);
    rec_add(r, ":path", 5, 1);
    rec_add(r, s->url ? s->url : "", s->url_len, 1);
    if (s->host_len) {
        rec_add(r, ":authority", 10, 1);
        rec_add(r, s->host, s->host_len, 1);
    }
    if (s->hdrs.len) {
        /* already escaped: appended as is */
        if (r->len + s->hdrs.len + 1 > r->cap) {
            r->cap = (r->len + s->hdrs.len + 1) * 2;
            r->rec = realloc(r->rec, r->cap);
            if (!r->rec)
                abort();
        }
        memcpy(r->rec + r->len, s->hdrs.rec, s->hdrs.len);
        r->len += s->hdrs.len;
    }
    return 0;
}

static int h1_body(http_parser *p, const char *at, size_t n)
{
    struct session *s = p->data;
    s->h1req.body += n;
    return 0;
}

static int h1_done(http_parser *p)
{
    struct session *s = p->data;
    struct request *r = &s->h1req;
    if (r->status[0])
        r->grpc = 0;
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %s %s\r\ncontent-type: %s\r\nx-h2record-body-bytes: %zu\r\n%s%s",
                     r->status[0] ? r->status : "200", "Recorded", r->grpc ? "application/grpc" : "text/plain",
                     r->body, r->grpc ? "transfer-encoding: chunked\r\n" : "content-length: 0\r\n",
                     http_should_keep_alive(p) ? "" : "connection: close\r\n");
    if (write_all(s->fd, head, (size_t)n) < 0 || write_all(s->fd, "x-h2record: ", 12) < 0 ||
        write_all(s->fd, r->rec, r->len) < 0 || write_all(s->fd, "\r\n\r\n", 4) < 0)
        return -1;
    /* gRPC: an empty message, then grpc-status 0 as the chunked trailer */
    static const char grpc_tail[] = "5\r\n\0\0\0\0\0\r\n0\r\ngrpc-status: 0\r\n\r\n";
    if (r->grpc && write_all(s->fd, grpc_tail, sizeof grpc_tail - 1) < 0)
        return -1;
    s->close_after = !http_should_keep_alive(p);
    return 0;
}

static http_parser_settings h1_settings = {
    .on_message_begin = h1_begin,
    .on_url = h1_url,
    .on_header_field = h1_field,
    .on_header_value = h1_value,
    .on_headers_complete = h1_headers_done,
    .on_body = h1_body,
    .on_message_complete = h1_done,
};

/* Returns -1 to close the connection. */
static int h1_read(struct session *s, const uint8_t *buf, size_t n)
{
    size_t used = http_parser_execute(&s->hp, &h1_settings, (const char *)buf, n);
    if (HTTP_PARSER_ERRNO(&s->hp) != HPE_OK || used != n)
        return -1;
    return s->close_after ? -1 : 0;
}

/* Writes what nghttp2 has; arms EV_WRITE on a short write. Returns -1 to close. */
static int flush(struct session *s)
{
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(s->ng, &data);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(s->fd, data + off, (size_t)(n - off));
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                /* rare for a test tool: block briefly rather than buffer */
                fd_set set;
                FD_ZERO(&set);
                FD_SET(s->fd, &set);
                select(s->fd + 1, NULL, &set, NULL, NULL);
                continue;
            }
            if (w < 0)
                return -1;
            off += w;
        }
    }
    if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng))
        return -1;
    return 0;
}

/* An HTTP/2 session once the client sent the preface; -1 on failure. */
static int start_h2(struct session *s)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
    int rv = nghttp2_session_server_new(&s->ng, cb, s);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0)
        return -1;
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, NULL, 0);
    return 0;
}

static void on_readable(struct ev_loop *l, ev_io *io, int ev)
{
    struct session *s = (struct session *)io;
    uint8_t buf[65536];
    ssize_t n = read(s->fd, buf, sizeof buf);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        session_free(s);
        return;
    }
    if (!s->ng && !s->h1) {
        /* The HTTP/2 client preface starts "PRI "; anything else is HTTP/1.1. */
        size_t k = (size_t)n < 4 ? (size_t)n : 4;
        if (memcmp(buf, "PRI ", k) != 0) {
            s->h1 = 1;
            http_parser_init(&s->hp, HTTP_REQUEST);
            s->hp.data = s;
        } else if (start_h2(s) < 0) {
            session_free(s);
            return;
        }
    }
    if (s->h1) {
        if (h1_read(s, buf, (size_t)n) < 0)
            session_free(s);
        return;
    }
    if (nghttp2_session_mem_recv(s->ng, buf, (size_t)n) < 0 || flush(s) < 0)
        session_free(s);
}

static void on_accept(struct ev_loop *l, ev_io *io, int ev)
{
    struct port *p = (struct port *)io;
    int fd = accept4(p->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    /* Small replies must not wait for Nagle and a delayed ACK (~40 ms each). */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct session *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        return;
    }
    /* The protocol is known from the client's first bytes (see on_readable). */
    s->fd = fd;
    s->port = p->port;
    ev_io_init(&s->rio, on_readable, fd, EV_READ);
    ev_io_start(loop, &s->rio);
}

static void on_stdin(struct ev_loop *l, ev_io *io, int ev)
{
    char buf[256];
    if (read(0, buf, sizeof buf) <= 0)
        ev_break(l, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 1;
    int watch_stdin = !(argc > 2 && strcmp(argv[2], "--no-stdin") == 0);
    if (n < 1 || n > 64) {
        fprintf(stderr, "usage: h2record [PORTS (1..64)] [--no-stdin]\n");
        return 2;
    }
    loop = ev_default_loop(0);
    printf("PORTS");
    for (int i = 0; i < n; i++) {
        struct port *p = calloc(1, sizeof *p);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof sa;
        p->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (p->fd < 0 || bind(p->fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(p->fd, 128) < 0 ||
            getsockname(p->fd, (struct sockaddr *)&sa, &len) < 0) {
            perror("h2record: listen");
            return 1;
        }
        p->port = ntohs(sa.sin_port);
        printf(" %d", p->port);
        ev_io_init(&p->io, on_accept, p->fd, EV_READ);
        ev_io_start(loop, &p->io);
    }
    if (!watch_stdin)
        printf(" PID %d", (int)getpid());
    printf("\n");
    fflush(stdout);
    ev_io stdin_io;
    ev_io_init(&stdin_io, on_stdin, 0, EV_READ);
    if (watch_stdin)
        ev_io_start(loop, &stdin_io);
    ev_run(loop, 0);
    return 0;
}
