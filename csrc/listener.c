#include "listener.h"
#include "conn.h"
#include "log.h"
#include "nuncio.h"
#include "worker.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    struct listener *l = nu_container_of(io, struct listener, io);
    /* Accept a bounded batch, then let the loop serve established connections. */
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                nu_log(NU_LOG_WARN, "listener %s: accept: %s", l->name, strerror(errno));
            return;
        }
        struct conn *c = conn_accepted(l->w, fd, (struct sockaddr *)&ss);
        l->w->accepted++;
        if (!c) {
            nu_log(NU_LOG_ERROR, "listener %s: out of memory accepting a connection", l->name);
            close(fd);
            continue;
        }
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
    l->next = w->listeners;
    w->listeners = l;
    *err = NU_OK;
    return l;
}

void listener_close(struct listener *l)
{
    ev_io_stop(l->w->loop, &l->io);
    close(l->fd);
    free(l);
}
