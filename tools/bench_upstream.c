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
 * One thread, one libev loop; nghttp2 writes straight to the socket. */
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
#include <unistd.h>

#define LARGE (1024 * 1024)
#define WINDOW (16 * 1024 * 1024)

static struct ev_loop *loop;
static uint8_t *large_msg;          /* 5-byte gRPC prefix + LARGE bytes */
static uint8_t small_msg[5 + 16];   /* 5-byte gRPC prefix + 16 bytes */

struct session {
    ev_io rio, wio;
    int fd;
    nghttp2_session *ng;
};

struct reply {
    const uint8_t *p;
    size_t left;
};

static void session_free(struct session *s)
{
    ev_io_stop(loop, &s->rio);
    ev_io_stop(loop, &s->wio);
    close(s->fd);
    nghttp2_session_del(s->ng);
    free(s);
}

static ssize_t on_send(nghttp2_session *ng, const uint8_t *data, size_t len, int flags, void *ud)
{
    struct session *s = ud;
    ssize_t n = send(s->fd, data, len, MSG_NOSIGNAL);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? NGHTTP2_ERR_WOULDBLOCK : NGHTTP2_ERR_CALLBACK_FAILURE;
    return n;
}

static ssize_t read_reply(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                          nghttp2_data_source *src, void *ud)
{
    struct reply *r = src->ptr;
    size_t n = r->left < length ? r->left : length;
    memcpy(buf, r->p, n);
    r->p += n;
    r->left -= n;
    if (r->left == 0) {
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

static void update_watchers(struct session *s)
{
    if (nghttp2_session_want_write(s->ng))
        ev_io_start(loop, &s->wio);
    else
        ev_io_stop(loop, &s->wio);
    if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng))
        session_free(s);
}

static void on_write(struct ev_loop *l, ev_io *io, int ev)
{
    struct session *s = (struct session *)((char *)io - offsetof(struct session, wio));
    if (nghttp2_session_send(s->ng) != 0) {
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
    if (nghttp2_session_send(s->ng) != 0) {
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
    nghttp2_session_send(s->ng);
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
