#include "listener.h"
#include "conn.h"
#include "gen.h"
#include "log.h"
#include "nuncio.h"
#include "worker.h"

#include <errno.h>
#include <netdb.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ max_connections */
/* The native max_connections bounds the downstream connections of the whole
 * process: one counter every worker shares (an atomic, touched once per
 * accept and once per close; never a lock). A slot is taken before accept(),
 * so workers racing for the last one cannot overshoot. A worker that finds
 * none stops watching its listening sockets: new connections wait in the
 * kernel's accept queue (backlog 1024, then the kernel drops SYNs and
 * clients retry) and are accepted once a connection closes: at once when it
 * was one of this worker's, else within LISTENER_RETRY_S (SO_REUSEPORT gives
 * each worker its own queue, so a slot freed elsewhere is not announced). */

#define LISTENER_RETRY_S 0.1
#define LISTENER_WARN_EVERY_S 60

static atomic_long conns_held;
static atomic_llong last_warned; /* time() of the last "at the limit" warning */

long listener_conns_held(void)
{
    return atomic_load(&conns_held);
}

/* The worker's limit now (its current generation's); 0: none. The control
 * thread's admin listener is not limited. */
static long conn_limit(const struct worker *w)
{
    return w->index >= 0 && w->gen ? w->gen->cfg.max_connections : 0;
}

static void resume_listener(struct listener *l)
{
    if (!l->paused)
        return;
    l->paused = 0;
    ev_timer_stop(l->w->loop, &l->retry);
    ev_io_start(l->w->loop, &l->io); /* queued connections make it readable at once */
}

/* A counted connection was freed: its slot is free, this worker accepts again. */
static void release_slot(struct conn *c)
{
    atomic_fetch_sub(&conns_held, 1);
    for (struct listener *l = c->w->listeners; l; l = l->next)
        resume_listener(l);
}

static void on_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    resume_listener(nu_container_of(t, struct listener, retry));
}

static void pause_listener(struct listener *l, long limit)
{
    l->paused = 1;
    ev_io_stop(l->w->loop, &l->io);
    ev_timer_set(&l->retry, LISTENER_RETRY_S, 0.);
    ev_timer_start(l->w->loop, &l->retry);
    long long now = (long long)time(NULL), last = atomic_load(&last_warned);
    if (now - last >= LISTENER_WARN_EVERY_S && atomic_compare_exchange_strong(&last_warned, &last, now))
        nu_log(NU_LOG_WARN,
               "max_connections (%ld) reached: new connections wait in the accept queue until one closes "
               "(said at most once a minute)",
               limit);
}

/* Takes a connection slot before accepting; 0 when the process is at its limit. */
static int take_slot(long limit)
{
    long before = atomic_fetch_add(&conns_held, 1);
    if (limit > 0 && before >= limit) {
        atomic_fetch_sub(&conns_held, 1);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ accepting */

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    struct listener *l = nu_container_of(io, struct listener, io);
    /* Connections of data workers are counted (max_connections); the
     * generation also says how long a TLS handshake may take. */
    int counted = l->w->index >= 0 && l->w->gen;
    long limit = conn_limit(l->w);
    double handshake = counted ? l->w->gen->cfg.tls_handshake_timeout_ms / 1000.0 : 0;
    /* Accept a bounded batch, then let the loop serve established connections. */
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        if (counted && !take_slot(limit)) {
            pause_listener(l, limit);
            return;
        }
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (counted)
                atomic_fetch_sub(&conns_held, 1);
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                nu_log(NU_LOG_WARN, "listener %s: accept: %s", l->name, strerror(errno));
            return;
        }
        struct conn *c = conn_accepted(l->w, fd, (struct sockaddr *)&ss);
        l->w->accepted++;
        if (!c) {
            if (counted)
                atomic_fetch_sub(&conns_held, 1);
            nu_log(NU_LOG_ERROR, "listener %s: out of memory accepting a connection", l->name);
            close(fd);
            continue;
        }
        if (counted)
            c->on_free = release_slot; /* the slot is given back when the conn is freed */
        c->handshake_timeout = handshake;
        if (l->attach(c, l->arg) != NU_OK) {
            nu_log(NU_LOG_ERROR, "[c%llu] listener %s: cannot set up the connection", (unsigned long long)c->id,
                   l->name);
            conn_close(c, NU_ERR_NOMEM);
            continue;
        }
        nu_log(NU_LOG_DEBUG, "[c%llu] accepted from %s on %s", (unsigned long long)c->id, c->peer, l->name);
        conn_start(c);
    }
}

struct listener *listener_open(struct worker *w, const char *name, const char *address, int port,
                               listener_attach_fn attach, void *arg, int *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int gai = getaddrinfo(address, portstr, &hints, &res);
    if (gai != 0) {
        nu_log(NU_LOG_ERROR, "listener %s: cannot resolve %s: %s", name, address, gai_strerror(gai));
        *err = NU_ERR_CONFIG;
        return NULL;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        *err = NU_ERR_IO;
        return NULL;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        nu_log(NU_LOG_ERROR, "listener %s: cannot listen on %s:%d: %s", name, address, port, strerror(errno));
        close(fd);
        freeaddrinfo(res);
        *err = NU_ERR_IO;
        return NULL;
    }
    freeaddrinfo(res);
    struct listener *l = calloc(1, sizeof *l);
    if (!l) {
        close(fd);
        *err = NU_ERR_NOMEM;
        return NULL;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    l->port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                       : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    l->w = w;
    l->fd = fd;
    l->attach = attach;
    l->arg = arg;
    snprintf(l->name, sizeof l->name, "%s", name);
    snprintf(l->address, sizeof l->address, "%s", address);
    l->want_port = port;
    ev_io_init(&l->io, on_accept, fd, EV_READ);
    ev_io_start(w->loop, &l->io);
    ev_timer_init(&l->retry, on_retry, LISTENER_RETRY_S, 0.);
    l->next = w->listeners;
    w->listeners = l;
    *err = NU_OK;
    return l;
}

void listener_close(struct listener *l)
{
    ev_io_stop(l->w->loop, &l->io);
    ev_timer_stop(l->w->loop, &l->retry);
    close(l->fd);
    free(l);
}
