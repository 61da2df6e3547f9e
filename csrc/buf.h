/* Byte buffers.
 *
 * Ownership (the rule for the whole core):
 * - socket output: the conn owns its `struct buf` wbuf and the chunks queued on it;
 * - DATA payloads: a `struct chunkq` inside the message (stream) that carries
 *   them. Bytes are copied in once from the codec callback (its pointer is
 *   only valid during the callback) and copied out once by the sending codec's
 *   data provider, or handed whole to the conn's output (cleartext HTTP/2, see
 *   h2_write_data_frame); only then is the receiving peer's window given back. */
#ifndef NUNCIO_BUF_H
#define NUNCIO_BUF_H

#include <stddef.h>
#include <stdint.h>

/* A growable contiguous buffer with a read offset. All-zero is a valid empty buffer. */
struct buf {
    uint8_t *data;
    size_t off; /* first unread byte */
    size_t len; /* end of valid bytes */
    size_t cap;
};

int buf_append(struct buf *b, const void *p, size_t n);
/* Room for n more bytes at b->data + b->len (compacts, then grows); 0 or NU_ERR_NOMEM. */
int buf_reserve(struct buf *b, size_t n);
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);
static inline size_t buf_size(const struct buf *b)
{
    return b->len - b->off;
}

#define NU_CHUNK_SIZE 16384

struct chunk {
    struct chunk *next;
    size_t off, len;
    size_t gap; /* queued on a conn's output: wbuf bytes that go out before this chunk's */
    uint8_t data[NU_CHUNK_SIZE];
};

/* A queue of body bytes. All-zero is a valid empty queue. */
struct chunkq {
    struct chunk *head, *tail;
    size_t bytes;
};

/* Frees the calling thread's pool of spare chunks (a worker thread, as it ends). */
void buf_pool_release(void);

int chunkq_append(struct chunkq *q, const uint8_t *p, size_t n); /* copies */
size_t chunkq_read(struct chunkq *q, uint8_t *dst, size_t max);  /* copies out, frees drained chunks */
void chunkq_clear(struct chunkq *q);
int chunkq_append_q(struct chunkq *dst, const struct chunkq *src); /* copies src's bytes */
/* Unread bytes in the head chunk (0 when empty). */
static inline size_t chunkq_head_len(const struct chunkq *q)
{
    return q->head ? q->head->len - q->head->off : 0;
}
/* Detaches the head chunk (caller owns it; NULL when empty); moves bytes without copying them. */
struct chunk *chunkq_take_head(struct chunkq *q);
/* Appends a whole chunk (the queue owns it); later appends go to a new chunk. */
void chunkq_push(struct chunkq *q, struct chunk *c);
void chunk_free(struct chunk *c);

#endif
