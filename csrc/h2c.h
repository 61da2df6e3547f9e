/* Upstream HTTP/2 codec: an nghttp2 client session on a conn we dialed. */
#ifndef NUNCIO_H2C_H
#define NUNCIO_H2C_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct worker;
struct exchange;
struct h2c;

/* Told once when the connection stops taking new streams (GOAWAY, error, close). */
typedef void (*h2c_gone_fn)(void *owner, struct h2c *h);

struct tls_client;

/* tc: originate TLS (ALPN h2 required), NULL for cleartext h2c. */
struct h2c *h2c_connect(struct worker *w, const struct sockaddr *sa, socklen_t salen, double connect_timeout_s,
                        struct tls_client *tc, const char *label, h2c_gone_fn gone, void *owner, int *err);
/* Sends the exchange's request on this connection (queued until connected). */
int h2c_submit(struct h2c *h, struct exchange *x);
/* Can this connection take another stream now? */
int h2c_usable(const struct h2c *h);
/* Is it under the peer's SETTINGS_MAX_CONCURRENT_STREAMS? */
int h2c_has_room(const struct h2c *h);
size_t h2c_streams(const struct h2c *h);
uint32_t h2c_peer_max_streams(const struct h2c *h);
int h2c_knows_peer_limit(const struct h2c *h);
/* Until its peer's SETTINGS arrive, a new connection takes at most n streams. */
void h2c_assume_max_streams(struct h2c *h, uint32_t n);
/* A connection without streams for secs is closed (GOAWAY NO_ERROR), leaving
 * its pool first; the timer restarts whenever the last stream ends. 0: never. */
void h2c_set_idle_timeout(struct h2c *h, double secs);
/* The owner (pool) goes away: stop reporting to it. */
void h2c_detach_owner(struct h2c *h);
unsigned long long h2c_id(const struct h2c *h);
/* Did the connection ever get up (a failed dial did not)? */
int h2c_was_connected(const struct h2c *h);

#endif
