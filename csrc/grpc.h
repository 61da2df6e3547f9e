/* gRPC helpers without I/O. */
#ifndef NUNCIO_GRPC_H
#define NUNCIO_GRPC_H

#include <stddef.h>

enum grpc_status {
    GRPC_OK = 0,
    GRPC_CANCELLED = 1,
    GRPC_UNKNOWN = 2,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_PERMISSION_DENIED = 7,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14,
    GRPC_DATA_LOSS = 15,
    GRPC_UNAUTHENTICATED = 16,
};

/* Is this request content-type gRPC (application/grpc, +proto, ;params)? */
int grpc_is_grpc_content_type(const char *v, size_t n);
/* Envoy's httpToGrpcStatus (behaviour notes §7.3). */
int grpc_status_from_http(int http_status);
/* Parses a grpc-timeout value ("100m", "5S": 1-8 digits and one of H M S m u n)
 * into seconds. Returns 0, or -1 for a malformed value. */
int grpc_parse_timeout(const char *v, size_t n, double *seconds);
struct msg;
/* Envoy's gRPC HTTP/1.1 bridge, once the whole response is held: grpc-status
 * and grpc-message move from the trailers to the headers, a non-zero (or
 * unreadable) grpc-status makes the HTTP status 503, and content-length is
 * the body held, so a client without trailers sees the outcome. 0 or NU_ERR_NOMEM. */
int grpc_bridge_finish(struct msg *resp);
/* Percent-encodes a grpc-message value as the gRPC spec asks; returns the
 * length written (dst must hold 3*n bytes), never more than cap. */
size_t grpc_message_encode(const char *src, size_t n, char *dst, size_t cap);

#include <stdint.h>

/* Counts gRPC messages in a body fed in pieces of any size (each message: a
 * flag byte, a 4-byte big-endian length, the payload). A message counts when
 * its first byte arrives, as Envoy's FrameInspector counts frames. Zero it to start. */
struct grpc_msg_counter {
    uint64_t msgs; /* messages whose frame has started */
    uint32_t left; /* payload bytes of the current message still to skip */
    uint32_t len;  /* the length being read */
    uint8_t state; /* 0: at a flag byte; 1..4: in the header, state - 1 length bytes read; 5: in the payload */
};
/* O(n); never copies or looks at payload bytes. */
void grpc_msg_count(struct grpc_msg_counter *c, const uint8_t *p, size_t n);

#endif
