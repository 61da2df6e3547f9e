/* bench_upstream: the benchmark's gRPC-shaped upstream (h2c), built to never be
 * the bottleneck. Every request is answered once its END_STREAM arrives:
 * `:status 200`, `content-type: application/grpc`, one length-prefixed
 * message, trailers `grpc-status: 0`. A :path containing "Download" gets a
 * 1 MiB message; anything else a 16-byte one (the request body, however big,
 * is read and dropped: the upload case).
 *
 *   nuncio-bench-upstream [port]      (0 or none: the kernel picks)
 *
 * Prints "PORT <n>" on stdout, then serves until SIGTERM / SIGINT.
 * One thread, one libev loop. Output is written the way production gRPC
 * servers write it (grpc-go's buffered writer, gRPC C-core's batched
 * sendmsg): frames are queued and leave in one writev of up to OUT_HIGH
 * bytes, and DATA payloads are not copied (NGHTTP2_DATA_FLAG_NO_COPY: the
 * iovec points into the message). One send() per 16 KiB frame made this
 * program most of the load core's work in the 1 MiB cases, and each frame
 * its own TCP segment whenever the reader kept up. */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define LARGE (1024 * 1024)
#define WINDOW (16 * 1024 * 1024)
#define OUT_IOV 256           /* iovecs queued per session */
#define OUT_ARENA (64 * 1024) /* copies of frame bytes nghttp2 lends only for the call */
#define OUT_HIGH (256 * 1024) /* queued bytes that are written before more are taken */

static struct ev_loop *loop;
static uint8_t *large_msg;        /* 5-byte gRPC prefix + LARGE bytes */
static uint8_t small_msg[5 + 16]; /* 5-byte gRPC prefix + 16 bytes */

/* Output not yet written: iov[first..n) point into arena or into a message. */
struct out {
    struct iovec iov[OUT_IOV];
    int first, n;
    size_t queued;
    size_t used; /* arena bytes in use; reset once the queue is empty */
    uint8_t arena[OUT_ARENA];
};

struct session {
    ev_io rio, wio;
    int fd;
    int dead; /* a write failed: freed once nghttp2 is done with it */
    nghttp2_session *ng;
    struct out out;
};

struct reply {
    const uint8_t *p;
    size_t left;
};

/* Writes what is queued: 0 when all of it went, 1 when the socket is full, -1 on error. */
static int out_flush(struct session *s)
{
    struct out *o = &s->out;
    while (o->first < o->n) {
        ssize_t w = writev(s->fd, o->iov + o->first, o->n - o->first);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            s->dead = 1;
            return -1;
        }
        o->queued -= (size_t)w;
        while (w > 0) {
            struct iovec *v = &o->iov[o->first];
            if ((size_t)w >= v->iov_len) {
                w -= (ssize_t)v->iov_len;
                o->first++;
            } else {
                v->iov_base = (uint8_t *)v->iov_base + w;
                v->iov_len -= (size_t)w;
                w = 0;
            }
        }
    }
    o->first = o->n = 0;
    o->used = 0;
    return 0;
}

/* Room for iovs more iovecs and copy more arena bytes, writing the queue out if need be. */
static int out_room(struct session *s, int iovs, size_t copy)
{
    struct out *o = &s->out;
    if (o->n + iovs <= OUT_IOV && o->used + copy <= OUT_ARENA && o->queued < OUT_HIGH)
        return 0;
    return out_flush(s) == 0 ? 0 : NGHTTP2_ERR_WOULDBLOCK;
}

static void out_add(struct out *o, const uint8_t *p, size_t len, int copy)
{
    if (copy) {
        memcpy(o->arena + o->used, p, len);
        p = o->arena + o->used;
        o->used += len;
    }
    o->iov[o->n].iov_base = (void *)p;
    o->iov[o->n].iov_len = len;
    o->n++;
    o->queued += len;
}

static void session_free(struct session *s)
{
    ev_io_stop(loop, &s->rio);
    ev_io_stop(loop, &s->wio);
    close(s->fd);
    nghttp2_session_del(s->ng);
    free(s);
}

/* Frames other than DATA: nghttp2 lends the bytes for this call only. */
static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *ud)
{
    struct session *s = ud;
    if (len > OUT_ARENA)
        len = OUT_ARENA; /* nghttp2 calls again with the rest */
    int rv = out_room(s, 1, len);
    if (rv != 0)
        return s->dead ? NGHTTP2_ERR_CALLBACK_FAILURE : rv;
    out_add(&s->out, data, len, 1);
    return (ssize_t)len;
}

/* A DATA frame: its header copied, its payload queued where it lies (messages live as long as the program). */
static int on_send_data(nghttp2_session *ng, nghttp2_frame *f, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src, void *ud)
{
    struct session *s = ud;
    struct reply *r = src->ptr;
    int rv = out_room(s, 2, 9);
    if (rv != 0)
        return s->dead ? NGHTTP2_ERR_CALLBACK_FAILURE : rv;
    out_add(&s->out, framehd, 9, 1);
    if (length)
        out_add(&s->out, r->p, length, 0);
    r->p += length;
    r->left -= length;
    return 0;
}

static ssize_t read_reply(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                          nghttp2_data_source *src, void *ud)
{
    struct reply *r = src->ptr;
    size_t n = r->left < length ? r->left : length;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY; /* on_send_data queues the bytes and moves r on */
    if (n == r->left) {
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        static const nghttp2_nv trailers[] = {{(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, 0}};
        nghttp2_submit_trailer(ng, id, trailers, 1);
    }
    return (ssize_t)n;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct reply *r = calloc(1, sizeof *r);
    if (!r)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    r->p = small_msg;
    r->left = sizeof small_msg;
    nghttp2_session_set_stream_user_data(ng, f->hd.stream_id, r);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    if (f->hd.type != NGHTTP2_HEADERS || nlen != 5 || memcmp(name, ":path", 5) != 0)
        return 0;
    struct reply *r = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (r && vlen >= 8 && memmem(value, vlen, "Download", 8)) {
        r->p = large_msg;
        r->left = 5 + LARGE;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) || !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct reply *r = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
    if (!r)
        return 0;
    static const nghttp2_nv hdrs[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, 0},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
    };
    nghttp2_data_provider prd = {.source.ptr = r, .read_callback = read_reply};
    nghttp2_submit_response(ng, f->hd.stream_id, hdrs, 2, &prd);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    free(nghttp2_session_get_stream_user_data(ng, id));
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    return 0;
}

/* Lets nghttp2 queue frames and writes them; 0, or -1 when the session is done for. */
static int send_all(struct session *s)
{
    if (nghttp2_session_send(s->ng) != 0 || s->dead)
        return -1;
    return out_flush(s) < 0 ? -1 : 0;
}

static void update_watchers(struct session *s)
{
    int pending = s->out.first < s->out.n;
    if (pending || nghttp2_session_want_write(s->ng))
        ev_io_start(loop, &s->wio);
    else
        ev_io_stop(loop, &s->wio);
    if (!pending && !nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng))
        session_free(s);
}

static void on_write(struct ev_loop *l, ev_io *io, int ev)
{
    struct session *s = (struct session *)((char *)io - offsetof(struct session, wio));
    int rv = out_flush(s);
    if (rv < 0 || (rv == 0 && send_all(s) != 0)) {
        session_free(s);
        return;
    }
    update_watchers(s);
}

static void on_read(struct ev_loop *l, ev_io *io, int ev)
{
    struct session *s = (struct session *)io;
    static uint8_t buf[256 * 1024];
    for (;;) {
        ssize_t n = recv(s->fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            session_free(s);
            return;
        }
        if (n < 0)
            break;
        if (nghttp2_session_mem_recv(s->ng, buf, (size_t)n) < 0) {
            session_free(s);
            return;
        }
        if ((size_t)n < sizeof buf)
            break;
    }
    if (send_all(s) != 0) {
        session_free(s);
        return;
    }
    update_watchers(s);
}

static void on_accept(struct ev_loop *l, ev_io *io, int ev)
{
    int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct session *s = calloc(1, sizeof *s);
    nghttp2_session_callbacks *cb;
    if (!s || nghttp2_session_callbacks_new(&cb) != 0) {
        close(fd);
        free(s);
        return;
    }
    nghttp2_session_callbacks_set_send_callback(cb, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cb, on_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    int rv = nghttp2_session_server_new(&s->ng, cb, s);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0) {
        close(fd);
        free(s);
        return;
    }
    /* Large windows: the upload case must measure the proxy, not our credit. */
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000},
                                   {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WINDOW}};
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, WINDOW);
    s->fd = fd;
    ev_io_init(&s->rio, on_read, fd, EV_READ);
    ev_io_init(&s->wio, on_write, fd, EV_WRITE);
    ev_io_start(loop, &s->rio);
    if (send_all(s) != 0) {
        session_free(s);
        return;
    }
    update_watchers(s);
}

static void on_signal(struct ev_loop *l, ev_signal *w, int ev)
{
    ev_break(l, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    int port = argc > 1 ? atoi(argv[1]) : 0;
    large_msg = calloc(1, 5 + LARGE);
    if (!large_msg)
        return 1;
    large_msg[1] = (uint8_t)(LARGE >> 24);
    large_msg[2] = (uint8_t)(LARGE >> 16);
    large_msg[3] = (uint8_t)(LARGE >> 8);
    large_msg[4] = (uint8_t)LARGE;
    small_msg[4] = 16;
    memcpy(small_msg + 5, "nuncio bench ok!", 16);
    signal(SIGPIPE, SIG_IGN);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4096) != 0) {
        perror("bench_upstream: bind/listen");
        return 1;
    }
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    printf("PORT %d\n", ntohs(sa.sin_port));
    fflush(stdout);
    loop = ev_default_loop(0);
    ev_io lio;
    ev_io_init(&lio, on_accept, fd, EV_READ);
    ev_io_start(loop, &lio);
    ev_signal sterm, sint;
    ev_signal_init(&sterm, on_signal, SIGTERM);
    ev_signal_init(&sint, on_signal, SIGINT);
    ev_signal_start(loop, &sterm);
    ev_signal_start(loop, &sint);
    ev_run(loop, 0);
    close(fd);
    free(large_msg);
    return 0;
}
