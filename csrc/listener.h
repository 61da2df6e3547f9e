/* Bound sockets that accept downstream connections and hand them to a codec. */
#ifndef NUNCIO_LISTENER_H
#define NUNCIO_LISTENER_H

#include <ev.h>

struct worker;
struct conn;

/* Attaches a protocol to a freshly accepted connection; returns 0 or an nu_err. */
typedef int (*listener_attach_fn)(struct conn *c, void *arg);

struct listener {
    struct listener *next;
    struct worker *w;
    int fd;
    ev_io io;
    listener_attach_fn attach;
    void *arg;
    int port;      /* the bound port (useful when 0 was asked for) */
    int want_port; /* the configured one: a reload keeps the socket when address and port stay */
    char name[128];
    char address[128];
    int paused;     /* the process is at max_connections: not accepting until a connection closes */
    ev_timer retry; /* while paused: look again (a slot may free up on another worker) */
};

/* Binds address:port (SO_REUSEPORT, so workers can each bind it). */
struct listener *listener_open(struct worker *w, const char *name, const char *address, int port,
                               listener_attach_fn attach, void *arg, int *err);
void listener_close(struct listener *l);

/* Downstream connections held now by the whole process (data workers' listeners only). */
long listener_conns_held(void);

#endif
