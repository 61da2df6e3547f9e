/* The allocator nghttp2 sessions use: nghttp2's per-session frame buffer
 * comes from page-aligned slots whose untouched pages are never resident,
 * everything else from malloc. One slot pool per worker. */
#ifndef NUNCIO_H2_MEM_H
#define NUNCIO_H2_MEM_H

#include <nghttp2/nghttp2.h>

#include "worker.h"

struct h2_mem_pool;

/* Lives in the codec object, beside (and longer than) its session. */
struct h2_mem_session {
    nghttp2_mem mem;          /* what the session is created with (nghttp2 copies it) */
    struct h2_mem_pool *pool; /* the worker's */
    void *framebuf;           /* the session's frame buffer slot; NULL: none, or from malloc */
};

/* Sets up ms and returns the allocator for nghttp2_session_*_new3, or NULL
 * (nghttp2's default: out of memory, no worker, or an AddressSanitizer build). */
nghttp2_mem *h2_mem_session(struct h2_mem_session *ms, struct worker *w);
/* The session is quiet (no stream, nothing to send): its frame buffer holds
 * nothing worth keeping, so its pages go back to the kernel. */
void h2_mem_quiet(struct h2_mem_session *ms);
/* Releases the worker's pool once no session holds a slot (worker shutdown). */
void h2_mem_free(struct worker *w);

#endif
