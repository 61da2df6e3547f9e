/* Unit tests for buffers and chunk queues (csrc/buf.c). */
#include "../../csrc/buf.c"
#include "check.h"

static void test_buf(void)
{
    struct buf b = {0};
    CHECK(buf_size(&b) == 0);
    CHECK(buf_append(&b, "hello", 5) == NU_OK);
    CHECK(buf_size(&b) == 5);
    buf_consume(&b, 2);
    CHECK(buf_size(&b) == 3 && memcmp(b.data + b.off, "llo", 3) == 0);
    char big[10000];
    memset(big, 'x', sizeof big);
    CHECK(buf_append(&b, big, sizeof big) == NU_OK);
    CHECK(buf_size(&b) == 3 + sizeof big);
    CHECK(memcmp(b.data + b.off, "llo", 3) == 0);
    buf_consume(&b, buf_size(&b));
    CHECK(buf_size(&b) == 0 && b.off == 0);
    buf_free(&b);
}

static void test_chunkq(void)
{
    struct chunkq q = {0};
    static uint8_t in[3 * NU_CHUNK_SIZE + 123], out[sizeof in];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (uint8_t)(i * 7);
    CHECK(chunkq_append(&q, in, 100) == NU_OK);
    CHECK(chunkq_append(&q, in + 100, sizeof in - 100) == NU_OK);
    CHECK(q.bytes == sizeof in);
    size_t got = 0;
    /* read in odd-sized pieces across chunk boundaries */
    while (got < sizeof in) {
        size_t n = chunkq_read(&q, out + got, 5000);
        CHECK(n > 0);
        if (n == 0)
            break;
        got += n;
    }
    CHECK(got == sizeof in);
    CHECK(memcmp(in, out, sizeof in) == 0);
    CHECK(q.bytes == 0 && q.head == NULL && q.tail == NULL);
    CHECK(chunkq_read(&q, out, 10) == 0);
    chunkq_append(&q, in, 10);
    chunkq_clear(&q);
    CHECK(q.bytes == 0 && q.head == NULL);
}

int main(void)
{
    test_buf();
    test_chunkq();
    CHECK_DONE();
}
