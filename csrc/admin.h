/* The admin listener (default 127.0.0.1:8877, Ambassador's diag port):
 * readiness, liveness and a few live counters, over HTTP/1.1. */
#ifndef NUNCIO_ADMIN_H
#define NUNCIO_ADMIN_H

struct worker;
struct conn;

/* listener_attach_fn for the admin port; arg is the worker. */
int admin_attach(struct conn *c, void *worker);

#endif
