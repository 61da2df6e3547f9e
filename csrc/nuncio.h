/* Shared vocabulary of the C core: the one error enum and small helpers.
 * Downstream = the client side, upstream = the backend (Envoy's words). */
#ifndef NUNCIO_H
#define NUNCIO_H

#include <stddef.h>
#include <stdint.h>

/* Every fallible function returns 0 or one of these categories; call sites
 * that need to say *what* failed pass a static string alongside. */
enum nu_err {
    NU_OK = 0,
    NU_ERR_NOMEM = -1,   /* allocation failed */
    NU_ERR_IO = -2,      /* socket error, peer closed, connect refused */
    NU_ERR_PROTO = -3,   /* the peer broke the protocol */
    NU_ERR_TIMEOUT = -4, /* a timer fired first */
    NU_ERR_CONFIG = -5,  /* configuration is invalid */
    NU_ERR_LUA = -6,     /* a filter raised an error */
    NU_ERR_CLOSED = -7,  /* the object is already closing */
    NU_ERR_LIMIT = -8,   /* a configured limit was hit */
    NU_ERR_AGAIN = -9,   /* would block: retry when the socket is ready */
    NU_ERR_TLS = -10,    /* TLS handshake or record failure */
};

const char *nu_strerror(int err);

#define nu_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define NU_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
