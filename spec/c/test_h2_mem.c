/* Unit tests for nghttp2's allocator (csrc/h2_mem.c): small blocks come back
 * from the worker's free lists, the lists stay bounded, frame buffers come
 * from page slots, and the pool is released at the end. */
#include "../../csrc/h2_mem.c"
#include "check.h"

#include <stdio.h>

static void test_small_blocks(struct worker *w, nghttp2_mem *mem)
{
    void *ud = mem->mem_user_data;
    /* A freed block serves the next request of a size it holds, whatever
     * size first asked for it (glibc rounds 100 up to 104 usable bytes). */
    void *a = mem->malloc(100, ud);
    CHECK(a != NULL);
    memset(a, 0xab, 100);
    mem->free(a, ud);
    void *b = mem->malloc(100, ud);
    CHECK(b == a);
    mem->free(b, ud);
    void *c = mem->malloc(90, ud);
    CHECK(c == a);
    mem->free(c, ud);
    /* A bigger request does not take a block too small for it. */
    void *d = mem->malloc(200, ud);
    CHECK(d != a && malloc_usable_size(d) >= 200);
    memset(d, 0, 200);
    mem->free(d, ud);
    /* Blocks too big for the lists go back to malloc. */
    void *e = mem->malloc(H2_SMALL_MAX + 100, ud);
    CHECK(e != NULL);
    mem->free(e, ud);
    uint32_t kept = 0;
    for (size_t k = 0; k < H2_SMALL_CLASSES; k++)
        kept += w->h2_mem->n_small[k];
    CHECK(kept == 2); /* the 100-byte and the 200-byte block */

    /* A burst frees more than a class keeps: the rest goes back to malloc. */
    enum { BURST = H2_SMALL_KEEP + 100 };
    static void *burst[BURST];
    for (int i = 0; i < BURST; i++) {
        burst[i] = mem->malloc(48, ud);
        CHECK(burst[i] != NULL);
    }
    for (int i = 0; i < BURST; i++)
        mem->free(burst[i], ud);
    size_t k = (56 - 8) / H2_SMALL_STEP; /* 48 bytes: a 56-byte usable block */
    CHECK(w->h2_mem->n_small[k] == H2_SMALL_KEEP);
    /* calloc'd blocks are zeroed even when a free list has some */
    unsigned char *z = mem->calloc(6, 8, ud);
    CHECK(z != NULL);
    int zero = 1;
    for (int i = 0; i < 48; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    mem->free(z, ud);
}

static void test_frame_buffer_slot(struct worker *w, nghttp2_mem *mem, struct h2_mem_session *ms)
{
    void *ud = mem->mem_user_data;
    void *fb = mem->realloc(NULL, 16384 + 13, ud); /* nghttp2's frame buffer */
    CHECK(fb != NULL && ((uintptr_t)fb % H2_MEM_PAGE) == 0);
    CHECK(ms->framebuf == fb);
    CHECK(w->h2_mem->live == 1);
    mem->free(fb, ud);
    CHECK(w->h2_mem->live == 0 && ms->framebuf == NULL);
}

int main(void)
{
    struct worker w;
    memset(&w, 0, sizeof w);
    struct h2_mem_session ms;
    nghttp2_mem *mem = h2_mem_session(&ms, &w);
#if defined(__SANITIZE_ADDRESS__)
    CHECK(mem == NULL); /* ASan checks nghttp2's buffers only when malloc serves them */
    printf("test_h2_mem: AddressSanitizer build, nghttp2 uses malloc: nothing else to test\n");
#else
    CHECK(mem != NULL);
    test_small_blocks(&w, mem);
    test_frame_buffer_slot(&w, mem, &ms);
    h2_mem_free(&w);
    CHECK(w.h2_mem == NULL);
#endif
    CHECK_DONE();
}
