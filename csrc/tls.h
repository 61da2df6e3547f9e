/* TLS with mbedTLS 2.28: server configurations (SNI picks the certificate,
 * ALPN), client configurations (SNI, ALPN, CA verification, client
 * certificate) and per-connection sessions over a non-blocking fd. The only
 * file that includes mbedTLS. */
#ifndef NUNCIO_TLS_H
#define NUNCIO_TLS_H

#include <stddef.h>
#include <sys/types.h>

struct nu_tls_cfg;
struct nu_config;
struct tls_server;
struct tls_client;
struct tls;

/* Builds a server configuration from termination contexts (one certificate
 * each). On error returns NULL with a message naming the context's source. */
struct tls_server *tls_server_new(const struct nu_tls_cfg *ctxs, size_t n, char *err, size_t errlen);
void tls_server_free(struct tls_server *s);
/* want_h2: offer ALPN h2 when the configuration lists no protocols (HTTP/2 clusters). */
struct tls_client *tls_client_new(const struct nu_tls_cfg *c, int want_h2, char *err, size_t errlen);
void tls_client_free(struct tls_client *c);

/* Builds and drops every TLS configuration of cfg, so `nuncio -t` reports bad
 * certificates, keys and cipher names as start-up would. */
int tls_config_check(const struct nu_config *cfg, char *err, size_t errlen);

struct tls *tls_new_server(struct tls_server *s, int fd);
struct tls *tls_new_client(struct tls_client *c, int fd);
void tls_free(struct tls *t);

/* Steps the handshake: NU_OK when done, NU_ERR_AGAIN (*want_write tells which
 * readiness to wait for), or NU_ERR_TLS with a reason in detail. */
int tls_handshake(struct tls *t, int *want_write, char *detail, size_t dlen);
/* > 0 bytes; 0 the peer closed; NU_ERR_AGAIN; NU_ERR_TLS. */
ssize_t tls_read(struct tls *t, void *buf, size_t n, int *want_write);
ssize_t tls_write(struct tls *t, const void *buf, size_t n, int *want_write);
/* Decrypted bytes already buffered, which no read event will announce. */
size_t tls_pending(struct tls *t);
const char *tls_alpn(struct tls *t); /* negotiated protocol or NULL */
/* The client's server name (SNI) if it sent one. */
const char *tls_sni(struct tls *t);
/* Does the client configuration insist on ALPN h2 (gRPC upstreams)? */
void tls_describe_error(int mbedtls_rc, char *dst, size_t dlen);

#endif
