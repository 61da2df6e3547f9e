/* Retry decisions (Envoy's retry_on semantics), without I/O: the stream asks,
 * these answer from the route's policy and what the attempt ended with. */
#ifndef NUNCIO_RETRY_H
#define NUNCIO_RETRY_H

#include <stdint.h>

struct nu_route_policy;

/* How an attempt ended before any response came. */
enum retry_reset {
    RETRY_RESET_CONNECT = 0, /* the connection could not be made (or is backing off) */
    RETRY_RESET_REFUSED = 1, /* REFUSED_STREAM, or above a GOAWAY's last stream: never processed */
    RETRY_RESET_OTHER = 2,   /* reset or disconnect */
    RETRY_RESET_TIMEOUT = 3, /* the per-try timeout passed */
};

/* Do the response headers (HTTP status; grpc_status -1 when not
 * trailers-only) call for another attempt under policy p? */
int retry_on_response(const struct nu_route_policy *p, int http_status, int grpc_status);
/* Does an attempt that ended as `how` call for another attempt? */
int retry_on_reset(const struct nu_route_policy *p, int how);
/* Envoy's default backoff before retry n (1-based): a random share of
 * 25 ms * 2^(n-1), capped at 250 ms. r is a random number. */
double retry_backoff_s(int n, uint64_t r);

#endif
