/* Upstream HTTP/1.1 codec: a client connection carrying one exchange at a
 * time (no pipelining), kept alive between exchanges in its endpoint's pool. */
#ifndef NUNCIO_H1C_H
#define NUNCIO_H1C_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct worker;
struct exchange;
struct tls_client;
struct h1c;

/* What a connection tells its owner (the endpoint's pool). */
enum h1c_event {
    H1C_IDLE = 1, /* an exchange finished and the connection can take the next one */
    H1C_GONE = 2, /* it will never take another exchange (closed, failed, idle timeout); said once */
};
typedef void (*h1c_notify_fn)(void *owner, struct h1c *h, int event);

/* tc: originate TLS (ALPN http/1.1 or none accepted), NULL for cleartext. */
struct h1c *h1c_connect(struct worker *w, const struct sockaddr *sa, socklen_t salen, double connect_timeout_s,
                        struct tls_client *tc, const char *label, h1c_notify_fn notify, void *owner, int *err);
/* Sends the exchange's request on this idle connection (queued until
 * connected). Fails without touching the exchange's upstream side. */
int h1c_submit(struct h1c *h, struct exchange *x);
/* Idle, open and not told gone: can take an exchange now. */
int h1c_usable(const struct h1c *h);
/* An idle connection is closed after secs without an exchange. 0: never. */
void h1c_set_idle_timeout(struct h1c *h, double secs);
/* The owner goes away: stop reporting to it (an idle connection closes). */
void h1c_detach_owner(struct h1c *h);
unsigned long long h1c_id(const struct h1c *h);
/* Did the TCP (and TLS) connect succeed? */
int h1c_was_connected(const struct h1c *h);
/* Did the dial itself fail (refused, timeout, TLS)? A dial we abandoned did not. */
int h1c_connect_failed(const struct h1c *h);

#endif
