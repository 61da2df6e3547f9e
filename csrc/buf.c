#include "buf.h"
#include "nuncio.h"

#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
/* A pooled chunk's payload is poisoned, so ASan still sees use after "free". */
#define POOL_POISON(c) ASAN_POISON_MEMORY_REGION((c)->data, NU_CHUNK_SIZE)
#define POOL_UNPOISON(c) ASAN_UNPOISON_MEMORY_REGION((c)->data, NU_CHUNK_SIZE)
#else
#define POOL_POISON(c) ((void)(c))
#define POOL_UNPOISON(c) ((void)(c))
#endif

int buf_reserve(struct buf *b, size_t n)
{
    if (b->off == b->len)
        b->off = b->len = 0;
    if (b->cap - b->len >= n)
        return NU_OK;
    /* Slide unread bytes to the front before growing: write buffers are
     * drained from the front and refilled at the back all the time. */
    if (b->off > 0) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len < n)
            cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (!d)
            return NU_ERR_NOMEM;
        b->data = d;
        b->cap = cap;
    }
    return NU_OK;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (n == 0)
        return NU_OK; /* memcpy to or from NULL is undefined even for 0 bytes */
    if (buf_reserve(b, n) != NU_OK)
        return NU_ERR_NOMEM;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return NU_OK;
}

void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len)
        b->off = b->len = 0;
}

void buf_free(struct buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Free chunks kept for reuse, per thread (a worker's streams live on one
 * thread). Without it every 1 MiB body went back to malloc 16 KiB at a time,
 * glibc trimmed the emptied heap top and the next body faulted the pages in
 * again: ~150 page faults per MiB, most of the proxy's CPU. The pool only
 * holds chunks that were in use, so memory never exceeds the earlier peak of
 * bodies in flight; CHUNK_POOL_MAX bounds what stays after the peak passes. */
#define CHUNK_POOL_MAX 256 /* 4 MiB */

static _Thread_local struct chunk *pool_head; /* owned: the pool's free chunks */
static _Thread_local unsigned pool_count;

static struct chunk *chunk_get(void)
{
    struct chunk *c = pool_head;
    if (c) {
        pool_head = c->next;
        pool_count--;
        POOL_UNPOISON(c);
        return c;
    }
    return malloc(sizeof *c);
}

static void chunk_put(struct chunk *c)
{
    if (pool_count >= CHUNK_POOL_MAX) {
        free(c);
        return;
    }
    POOL_POISON(c);
    c->next = pool_head;
    pool_head = c;
    pool_count++;
}

void buf_pool_release(void)
{
    while (pool_head) {
        struct chunk *c = pool_head;
        POOL_UNPOISON(c);
        pool_head = c->next;
        free(c);
    }
    pool_count = 0;
}

void chunk_free(struct chunk *c)
{
    chunk_put(c);
}

struct chunk *chunkq_take_head(struct chunkq *q)
{
    struct chunk *c = q->head;
    if (!c)
        return NULL;
    q->head = c->next;
    if (!q->head)
        q->tail = NULL;
    q->bytes -= c->len - c->off;
    c->next = NULL;
    return c;
}

void chunkq_push(struct chunkq *q, struct chunk *c)
{
    c->next = NULL;
    if (q->tail)
        q->tail->next = c;
    else
        q->head = c;
    q->tail = c;
    q->bytes += c->len - c->off;
}

int chunkq_append(struct chunkq *q, const uint8_t *p, size_t n)
{
    while (n > 0) {
        struct chunk *c = q->tail;
        if (!c || c->len == NU_CHUNK_SIZE) {
            c = chunk_get();
            if (!c)
                return NU_ERR_NOMEM;
            c->next = NULL;
            c->off = c->len = 0;
            if (q->tail)
                q->tail->next = c;
            else
                q->head = c;
            q->tail = c;
        }
        size_t room = NU_CHUNK_SIZE - c->len;
        size_t k = n < room ? n : room;
        memcpy(c->data + c->len, p, k);
        c->len += k;
        q->bytes += k;
        p += k;
        n -= k;
    }
    return NU_OK;
}

size_t chunkq_read(struct chunkq *q, uint8_t *dst, size_t max)
{
    size_t done = 0;
    while (done < max && q->head) {
        struct chunk *c = q->head;
        size_t avail = c->len - c->off;
        size_t k = max - done < avail ? max - done : avail;
        memcpy(dst + done, c->data + c->off, k);
        c->off += k;
        done += k;
        if (c->off == c->len) {
            q->head = c->next;
            if (!q->head)
                q->tail = NULL;
            chunk_put(c);
        }
    }
    q->bytes -= done;
    return done;
}

int chunkq_append_q(struct chunkq *dst, const struct chunkq *src)
{
    for (const struct chunk *c = src->head; c; c = c->next)
        if (chunkq_append(dst, c->data + c->off, c->len - c->off) != NU_OK)
            return NU_ERR_NOMEM;
    return NU_OK;
}

void chunkq_clear(struct chunkq *q)
{
    struct chunk *c = q->head;
    while (c) {
        struct chunk *next = c->next;
        chunk_put(c);
        c = next;
    }
    memset(q, 0, sizeof *q);
}
