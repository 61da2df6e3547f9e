#include "conn.h"
#include "log.h"
#include "nuncio.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

void conn_format_addr(const struct sockaddr *sa, char *dst, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        port = ntohs(s4->sin_port);
        snprintf(dst, cap, "%s:%d", ip, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        port = ntohs(s6->sin6_port);
        snprintf(dst, cap, "[%s]:%d", ip, port);
    } else {
        snprintf(dst, cap, "?");
    }
}

static void conn_free(struct worker_defer *d)
{
    struct conn *c = nu_container_of(d, struct conn, defer);
    if (c->h && c->h->free && c->codec)
        c->h->free(c->codec);
    tls_free(c->tls);
    buf_free(&c->wbuf);
    chunkq_clear(&c->out);
    if (c->all_prev)
        c->all_prev->all_next = c->all_next;
    else
        c->w->conns = c->all_next;
    if (c->all_next)
        c->all_next->all_prev = c->all_prev;
    c->w->live_conns--;
    if (c->on_free)
        c->on_free(c);
    if (c->owner_release)
        c->owner_release(c->owner);
    free(c);
}

static void on_readable(struct ev_loop *loop, ev_io *io, int revents);
static void on_writable(struct ev_loop *loop, ev_io *io, int revents);

static struct conn *conn_new(struct worker *w, int fd)
{
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->w = w;
    c->fd = fd;
    c->id = ++w->next_conn_id;
    ev_io_init(&c->rio, on_readable, fd, EV_READ);
    ev_io_init(&c->wio, on_writable, fd, EV_WRITE);
    c->defer.fn = conn_free;
    c->all_next = w->conns;
    if (w->conns)
        w->conns->all_prev = c;
    w->conns = c;
    w->live_conns++;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return c;
}

static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents);

struct conn *conn_accepted(struct worker *w, int fd, const struct sockaddr *sa)
{
    struct conn *c = conn_new(w, fd);
    if (!c)
        return NULL;
    conn_format_addr(sa, c->peer, sizeof c->peer);
    c->accepted_at = ev_now(w->loop);
    struct sockaddr_storage local;
    socklen_t len = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &len) == 0)
        c->local_port = local.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&local)->sin6_port)
                                                    : ntohs(((struct sockaddr_in *)&local)->sin_port);
    return c;
}

void conn_accept_with(struct conn *c, struct tls_server *ts, double first_byte_timeout, conn_ready_fn ready, void *arg)
{
    c->sniffing = 1;
    c->sniff_tls = ts;
    c->ready = ready;
    c->ready_arg = arg;
    /* A silent client gets the shorter of the two deadlines: silence is not a
     * slow handshake, and the request-header timeout counts from accept. */
    if (c->handshake_timeout <= 0)
        c->handshake_timeout = CONN_HANDSHAKE_TIMEOUT;
    c->first_byte_timeout = c->handshake_timeout;
    if (first_byte_timeout > 0 && first_byte_timeout < c->handshake_timeout)
        c->first_byte_timeout = first_byte_timeout;
    ev_timer_init(&c->connect_timer, on_timeout, c->first_byte_timeout, 0.);
}

const char *conn_alpn(struct conn *c)
{
    return c->tls ? tls_alpn(c->tls) : NULL;
}

static void on_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct conn *c = nu_container_of(t, struct conn, connect_timer);
    if (c->connecting || (c->handshaking && c->tls_client)) {
        snprintf(c->detail, sizeof c->detail, "%s", c->connecting ? "connection timeout" : "TLS handshake timeout");
        c->connecting = 0;
        c->handshaking = 0;
        ev_io_stop(loop, &c->wio);
        ev_io_stop(loop, &c->rio);
        c->h->on_connect(c, NU_ERR_TIMEOUT);
        return;
    }
    if (c->sniffing) {
        nu_log(NU_LOG_INFO, "[c%llu] %s: sent nothing within %.3g s: closed", (unsigned long long)c->id, c->peer,
               c->first_byte_timeout);
        conn_close(c, NU_ERR_TIMEOUT);
    } else if (c->handshaking) {
        nu_log(NU_LOG_INFO, "[c%llu] %s: no TLS handshake within %.3g s: closed", (unsigned long long)c->id, c->peer,
               c->handshake_timeout);
        conn_close(c, NU_ERR_TIMEOUT);
    }
}

struct conn *conn_connect(struct worker *w, const struct sockaddr *sa, socklen_t salen, double timeout_s,
                          struct tls_client *tc, int *err)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = NU_ERR_IO;
        return NULL;
    }
    if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS) {
        close(fd);
        *err = NU_ERR_IO;
        return NULL;
    }
    struct conn *c = conn_new(w, fd);
    if (!c) {
        close(fd);
        *err = NU_ERR_NOMEM;
        return NULL;
    }
    conn_format_addr(sa, c->peer, sizeof c->peer);
    c->connecting = 1;
    c->tls_client = tc;
    c->connect_timeout = timeout_s;
    ev_timer_init(&c->connect_timer, on_timeout, timeout_s, 0.);
    *err = NU_OK;
    return c;
}

void conn_set_handler(struct conn *c, const struct conn_handler *h, void *codec)
{
    c->h = h;
    c->codec = codec;
}

void conn_start(struct conn *c)
{
    if (c->connecting) {
        /* Writability tells that the connect finished, successfully or not. */
        ev_io_start(c->w->loop, &c->wio);
        ev_timer_start(c->w->loop, &c->connect_timer);
    } else {
        ev_io_start(c->w->loop, &c->rio);
        if (c->sniffing)
            ev_timer_start(c->w->loop, &c->connect_timer);
        else
            conn_want_write(c);
    }
}

void conn_want_write(struct conn *c)
{
    if (c->closing || c->connecting || c->handshaking || c->sniffing || !c->h)
        return;
    worker_want_flush(c->w, c);
}

void conn_close(struct conn *c, int err)
{
    if (c->closing)
        return;
    c->closing = 1;
    ev_io_stop(c->w->loop, &c->rio);
    ev_io_stop(c->w->loop, &c->wio);
    ev_timer_stop(c->w->loop, &c->connect_timer);
    close(c->fd);
    c->fd = -1;
    if (c->h && c->h->on_close)
        c->h->on_close(c, err);
    worker_defer(c->w, &c->defer);
}

/* Reads what the transport has and feeds the codec. */
static void read_some(struct conn *c)
{
    uint8_t in[65536];
    /* A bounded number of reads per wake-up keeps one busy peer from starving the rest. */
    for (int round = 0; round < 16 && !c->closing && !c->read_paused; round++) {
        ssize_t n;
        if (c->tls) {
            int want_write = 0;
            n = tls_read(c->tls, in, sizeof in, &want_write);
            if (n == NU_ERR_AGAIN)
                return;
            if (n == NU_ERR_TLS) {
                conn_close(c, NU_ERR_TLS);
                return;
            }
        } else {
            n = read(c->fd, in, sizeof in);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    conn_close(c, NU_ERR_IO);
                return;
            }
        }
        if (n == 0) {
            conn_close(c, NU_OK);
            return;
        }
        c->w->turn_bytes += (size_t)n;
        if (c->h->on_read(c, in, (size_t)n) < 0) {
            conn_close(c, NU_ERR_PROTO);
            return;
        }
        conn_want_write(c);
        if (!c->tls && (size_t)n < sizeof in)
            return;
    }
    /* Out of rounds with decrypted bytes left: they will not wake the loop by themselves. */
    if (!c->closing && !c->read_paused && c->tls && tls_pending(c->tls))
        ev_feed_event(c->w->loop, &c->rio, EV_READ);
}

void conn_pause_read(struct conn *c, int paused)
{
    if (c->closing || (unsigned)paused == c->read_paused)
        return;
    c->read_paused = paused ? 1 : 0;
    if (c->connecting || c->handshaking || c->sniffing)
        return; /* the read watcher is not ours to touch yet; read_some checks the flag */
    if (paused) {
        ev_io_stop(c->w->loop, &c->rio);
        return;
    }
    ev_io_start(c->w->loop, &c->rio);
    /* Decrypted bytes already buffered will not wake the loop by themselves. */
    if (c->tls && tls_pending(c->tls))
        ev_feed_event(c->w->loop, &c->rio, EV_READ);
}

static void handshake_step(struct conn *c)
{
    int want_write = 0;
    int rc = tls_handshake(c->tls, &want_write, c->detail, sizeof c->detail);
    if (rc == NU_ERR_AGAIN) {
        if (want_write)
            ev_io_start(c->w->loop, &c->wio);
        else
            ev_io_stop(c->w->loop, &c->wio);
        ev_io_start(c->w->loop, &c->rio);
        return;
    }
    c->handshaking = 0;
    ev_io_stop(c->w->loop, &c->wio);
    ev_timer_stop(c->w->loop, &c->connect_timer);
    /* A handshake that completes in its first step never armed the read
     * watcher; without it libev drops the fd and the peer's bytes sit unread. */
    ev_io_start(c->w->loop, &c->rio);
    if (c->tls_client) {
        /* upstream: the codec learns the outcome as its connect result */
        c->h->on_connect(c, rc == NU_OK ? NU_OK : NU_ERR_TLS);
        if (rc == NU_OK)
            conn_want_write(c);
        return;
    }
    if (rc != NU_OK) {
        nu_log(NU_LOG_INFO, "[c%llu] %s: TLS handshake failed: %s", (unsigned long long)c->id, c->peer, c->detail);
        conn_close(c, NU_ERR_TLS);
        return;
    }
    if (c->ready(c, c->ready_arg) != NU_OK) {
        conn_close(c, NU_ERR_NOMEM);
        return;
    }
    conn_want_write(c);
    /* The client's first request may have arrived with its Finished message. */
    read_some(c);
}

static void start_handshake(struct conn *c, struct tls *t)
{
    if (!t) {
        snprintf(c->detail, sizeof c->detail, "out of memory starting TLS");
        if (c->tls_client)
            c->h->on_connect(c, NU_ERR_NOMEM);
        else
            conn_close(c, NU_ERR_NOMEM);
        return;
    }
    c->tls = t;
    c->handshaking = 1;
    handshake_step(c);
}

/* The first byte of a connection on an HTTPS listener tells TLS (a handshake
 * record, 0x16) from cleartext; it is peeked, not consumed. */
static void sniff(struct conn *c)
{
    uint8_t b;
    ssize_t n = recv(c->fd, &b, 1, MSG_PEEK);
    if (n == 0) {
        conn_close(c, NU_OK);
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_close(c, NU_ERR_IO);
        return;
    }
    c->sniffing = 0;
    if (b == 0x16 && c->sniff_tls) {
        /* The first byte's deadline may have been shorter: the handshake ends
         * handshake_timeout after accept, as before. */
        double left = c->accepted_at + c->handshake_timeout - ev_now(c->w->loop);
        ev_timer_stop(c->w->loop, &c->connect_timer);
        ev_timer_set(&c->connect_timer, left > 0 ? left : 0., 0.);
        ev_timer_start(c->w->loop, &c->connect_timer);
        start_handshake(c, tls_new_server(c->sniff_tls, c->fd));
        return;
    }
    ev_timer_stop(c->w->loop, &c->connect_timer);
    if (c->ready(c, c->ready_arg) != NU_OK) {
        conn_close(c, NU_ERR_NOMEM);
        return;
    }
    read_some(c);
}

static void on_readable(struct ev_loop *loop, ev_io *io, int revents)
{
    struct conn *c = nu_container_of(io, struct conn, rio);
    if (c->sniffing)
        sniff(c);
    else if (c->handshaking)
        handshake_step(c);
    else
        read_some(c);
}

static void on_writable(struct ev_loop *loop, ev_io *io, int revents)
{
    struct conn *c = nu_container_of(io, struct conn, wio);
    if (c->connecting) {
        int soerr = 0;
        socklen_t len = sizeof soerr;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        c->connecting = 0;
        ev_timer_stop(loop, &c->connect_timer);
        ev_io_stop(loop, &c->wio);
        if (soerr) {
            snprintf(c->detail, sizeof c->detail, "%s", strerror(soerr));
            c->h->on_connect(c, NU_ERR_IO);
            return;
        }
        if (c->tls_client) {
            /* The handshake gets a deadline of its own, as long as the connect's. */
            ev_timer_stop(loop, &c->connect_timer);
            ev_timer_set(&c->connect_timer, c->connect_timeout, 0.);
            ev_timer_start(loop, &c->connect_timer);
            start_handshake(c, tls_new_client(c->tls_client, c->fd));
            return;
        }
        ev_io_start(loop, &c->rio);
        c->h->on_connect(c, NU_OK);
        conn_want_write(c);
        return;
    }
    if (c->handshaking) {
        handshake_step(c);
        return;
    }
    conn_flush(c);
}

void conn_queue_chunk(struct conn *c, struct chunk *ck)
{
    ck->gap = buf_size(&c->wbuf) - c->out_gaps;
    c->out_gaps += ck->gap;
    chunkq_push(&c->out, ck);
}

/* n bytes of the output went out: wbuf bytes and queued chunks in order. */
static void out_consume(struct conn *c, size_t n)
{
    while (n > 0) {
        struct chunk *ck = c->out.head;
        if (!ck) {
            buf_consume(&c->wbuf, n);
            return;
        }
        size_t k = n < ck->gap ? n : ck->gap;
        buf_consume(&c->wbuf, k);
        ck->gap -= k;
        c->out_gaps -= k;
        n -= k;
        if (ck->gap > 0)
            return;
        k = ck->len - ck->off;
        if (k > n)
            k = n;
        ck->off += k;
        c->out.bytes -= k;
        n -= k;
        if (ck->off == ck->len)
            chunk_free(chunkq_take_head(&c->out));
    }
}

#define CONN_IOV 64

/* Cleartext write of the output in order, chunks in place (no copy). */
static ssize_t out_writev(struct conn *c)
{
    struct iovec iov[CONN_IOV];
    int k = 0;
    uint8_t *p = c->wbuf.data + c->wbuf.off;
    const struct chunk *ck = c->out.head;
    for (; ck && k + 2 <= CONN_IOV; ck = ck->next) {
        if (ck->gap > 0) {
            iov[k++] = (struct iovec){.iov_base = p, .iov_len = ck->gap};
            p += ck->gap;
        }
        iov[k++] = (struct iovec){.iov_base = (void *)(ck->data + ck->off), .iov_len = ck->len - ck->off};
    }
    size_t rest = buf_size(&c->wbuf) - c->out_gaps;
    if (!ck && rest > 0)
        iov[k++] = (struct iovec){.iov_base = p, .iov_len = rest};
    if (k == 1)
        return write(c->fd, iov[0].iov_base, iov[0].iov_len);
    return writev(c->fd, iov, k);
}

void conn_flush(struct conn *c)
{
    while (!c->closing) {
        if (!c->finishing && conn_pending(c) < CONN_WBUF_HIGH) {
            int rc = c->h->fill(c);
            if (rc < 0) {
                conn_close(c, rc);
                return;
            }
            if (rc == 1)
                c->finishing = 1;
        }
        if (conn_pending(c) == 0)
            break;
        ssize_t n;
        if (c->tls) {
            /* TLS output is all in wbuf (h2_write_data_frame queues no chunks on it). */
            int want_write = 0;
            n = tls_write(c->tls, c->wbuf.data + c->wbuf.off, buf_size(&c->wbuf), &want_write);
            if (n == NU_ERR_AGAIN) {
                ev_io_start(c->w->loop, &c->wio);
                return;
            }
            if (n < 0) {
                conn_close(c, NU_ERR_TLS);
                return;
            }
        } else {
            n = out_writev(c);
        }
        if (n > 0) {
            out_consume(c, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev_io_start(c->w->loop, &c->wio);
            return;
        }
        conn_close(c, NU_ERR_IO);
        return;
    }
    if (c->closing)
        return;
    ev_io_stop(c->w->loop, &c->wio);
    if (c->finishing)
        conn_close(c, NU_OK);
}
