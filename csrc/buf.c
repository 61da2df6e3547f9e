#include "buf.h"
#include "nuncio.h"

#include <stdlib.h>
#include <string.h>

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (b->off == b->len)
        b->off = b->len = 0;
    if (b->cap - b->len < n) {
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
    }
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

int chunkq_append(struct chunkq *q, const uint8_t *p, size_t n)
{
    while (n > 0) {
        struct chunk *c = q->tail;
        if (!c || c->len == NU_CHUNK_SIZE) {
            c = malloc(sizeof *c);
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
            free(c);
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
        free(c);
        c = next;
    }
    memset(q, 0, sizeof *q);
}
