#include "h2_mem.h"
#include "nuncio.h"

#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Why: nghttp2 1.52 allocates, for every session, a 16 KiB frame buffer up
 * front (through realloc(NULL, ...)). Every frame is built in its first page
 * and copied out at once; from malloc's heap that page and its neighbours
 * stay resident for as long as the connection lives, idle or not. Served
 * from page-aligned slots of anonymous memory instead, the pages a session
 * never writes are never resident, and a quiet connection's codec gives its
 * one page back (h2_mem_quiet: MADV_DONTNEED, zero again when next touched).
 * A freed slot is given back to the kernel the same way and reused. The two
 * 1 KiB HPACK rings come here too, packed four to a page. Only these size
 * classes come here; everything else goes to malloc.
 *
 * Small blocks (up to H2_SMALL_MAX) come from malloc but go back to a
 * per-worker free list by size when nghttp2 frees them: a unary call makes
 * and frees about 14 of them per side, up to 256 calls at once on one
 * connection, which overflows glibc's 7-entry tcache and costs 4k
 * instructions a call in malloc's slow paths. The lists keep at most
 * H2_SMALL_KEEP blocks a class. */

#define H2_MEM_REGION (32u << 20) /* address space reserved per region (not resident) */
#define H2_MEM_PAGE 4096u

enum { H2_MEM_FRAMEBUF, H2_MEM_RING, H2_MEM_CLASSES };

/* Slot sizes: a frame buffer (nghttp2's NGHTTP2_FRAMEBUF_CHUNKLEN, 16 KiB +
 * frame header) of up to five pages; the HPACK tables' entry rings (1 KiB
 * each, two per session, written only as entries are added: four share a
 * page, which stays untouched while none of them is used). */
static const size_t slot_size[H2_MEM_CLASSES] = {5 * H2_MEM_PAGE, H2_MEM_PAGE / 4};

struct h2_region {
    uint8_t *base;
    size_t used; /* bytes handed out from base (slots never go back to the region) */
    int cls;
};

/* glibc's chunks are multiples of 16 bytes, 8 of them its header: usable
 * sizes are 16 k + 8, and class k holds blocks of at least that much. */
#define H2_SMALL_STEP 16u
#define H2_SMALL_CLASSES 32u
#define H2_SMALL_MAX ((H2_SMALL_CLASSES - 1) * H2_SMALL_STEP + 8) /* 504 */
#define H2_SMALL_KEEP 1024u

struct small_block {
    struct small_block *next;
};

struct h2_mem_pool {
    /* Class k holds malloc blocks whose usable size is at least k * H2_SMALL_STEP + 8. */
    struct small_block *small[H2_SMALL_CLASSES]; /* owned */
    uint32_t n_small[H2_SMALL_CLASSES];
    struct h2_region *regions;
    size_t n_regions;
    void **free_slots[H2_MEM_CLASSES]; /* owned: stacks of released slots, kept outside them so they stay untouched */
    size_t n_free[H2_MEM_CLASSES], cap_free[H2_MEM_CLASSES];
    size_t live; /* slots handed out */
};

static int class_of(size_t size)
{
    if (size > 2 * H2_MEM_PAGE && size <= 5 * H2_MEM_PAGE)
        return H2_MEM_FRAMEBUF;
    if (size > H2_MEM_PAGE / 8 && size <= H2_MEM_PAGE / 4)
        return H2_MEM_RING;
    return -1;
}

static struct h2_region *region_of(struct h2_mem_pool *p, const void *ptr)
{
    for (size_t i = 0; i < p->n_regions; i++) {
        struct h2_region *r = &p->regions[i];
        if ((const uint8_t *)ptr >= r->base && (const uint8_t *)ptr < r->base + H2_MEM_REGION)
            return r;
    }
    return NULL;
}

/* A slot of class cls, or NULL (the caller falls back to malloc). */
static void *slot_get(struct h2_mem_pool *p, int cls)
{
    if (p->n_free[cls]) {
        p->live++;
        return p->free_slots[cls][--p->n_free[cls]];
    }
    struct h2_region *r = NULL;
    for (size_t i = p->n_regions; i-- > 0;)
        if (p->regions[i].cls == cls && H2_MEM_REGION - p->regions[i].used >= slot_size[cls]) {
            r = &p->regions[i];
            break;
        }
    if (!r) {
        struct h2_region *v = realloc(p->regions, (p->n_regions + 1) * sizeof *v);
        if (!v)
            return NULL;
        p->regions = v;
        void *base =
            mmap(NULL, H2_MEM_REGION, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (base == MAP_FAILED)
            return NULL;
        /* Transparent huge pages would make every touched slot fault in 2 MiB. */
        madvise(base, H2_MEM_REGION, MADV_NOHUGEPAGE);
        r = &p->regions[p->n_regions++];
        r->base = base;
        r->used = 0;
        r->cls = cls;
    }
    void *s = r->base + r->used;
    r->used += slot_size[cls];
    p->live++;
    return s;
}

/* Gives a whole-page slot's pages back, and keeps the slot for reuse. */
static void slot_put(struct h2_mem_pool *p, struct h2_region *r, void *s)
{
    int cls = r->cls;
    p->live--;
    if (slot_size[cls] >= H2_MEM_PAGE)
        madvise(s, slot_size[cls], MADV_DONTNEED);
    if (p->n_free[cls] == p->cap_free[cls]) {
        size_t cap = p->cap_free[cls] ? 2 * p->cap_free[cls] : 64;
        void **v = realloc(p->free_slots[cls], cap * sizeof *v);
        if (!v)
            return; /* out of memory: the slot stays unused, its pages are already released */
        p->free_slots[cls] = v;
        p->cap_free[cls] = cap;
    }
    p->free_slots[cls][p->n_free[cls]++] = s;
}

static void *small_get(struct h2_mem_pool *p, size_t size)
{
    size_t k = size <= 8 ? 0 : (size - 8 + H2_SMALL_STEP - 1) / H2_SMALL_STEP;
    struct small_block *b = p->small[k];
    if (!b)
        return malloc(size);
    p->small[k] = b->next;
    p->n_small[k]--;
    return b;
}

/* ptr came from malloc (or calloc, realloc): kept for reuse, or freed. */
static void small_put(struct h2_mem_pool *p, void *ptr)
{
    size_t usable = malloc_usable_size(ptr);
    if (usable < 8 || usable >= H2_SMALL_MAX + H2_SMALL_STEP) {
        free(ptr);
        return;
    }
    size_t k = (usable - 8) / H2_SMALL_STEP;
    if (p->n_small[k] >= H2_SMALL_KEEP) {
        free(ptr);
        return;
    }
    struct small_block *b = ptr;
    b->next = p->small[k];
    p->small[k] = b;
    p->n_small[k]++;
}

static void *mem_malloc(size_t size, void *ud)
{
    struct h2_mem_session *ms = ud;
    if (size <= H2_SMALL_MAX)
        return small_get(ms->pool, size);
    int cls = class_of(size);
    void *s = cls >= 0 ? slot_get(ms->pool, cls) : NULL;
    if (!s)
        return malloc(size);
    if (cls == H2_MEM_FRAMEBUF && !ms->framebuf)
        ms->framebuf = s;
    return s;
}

static void *mem_calloc(size_t n, size_t size, void *ud)
{
    (void)ud;
    return calloc(n, size);
}

static void mem_free(void *ptr, void *ud)
{
    struct h2_mem_session *ms = ud;
    struct h2_mem_pool *p = ms->pool;
    if (!ptr)
        return;
    struct h2_region *r = p->live ? region_of(p, ptr) : NULL;
    if (!r) {
        small_put(p, ptr);
        return;
    }
    if (ptr == ms->framebuf)
        ms->framebuf = NULL;
    slot_put(p, r, ptr);
}

static void *mem_realloc(void *ptr, size_t size, void *ud)
{
    struct h2_mem_session *ms = ud;
    struct h2_mem_pool *p = ms->pool;
    if (!ptr)
        return mem_malloc(size, ud); /* nghttp2_buf_init2 allocates its frame buffer this way */
    struct h2_region *r = p->live ? region_of(p, ptr) : NULL;
    if (!r)
        return realloc(ptr, size);
    void *n = malloc(size); /* a slot that grows leaves the pool */
    if (!n)
        return NULL;
    memcpy(n, ptr, size < slot_size[r->cls] ? size : slot_size[r->cls]);
    mem_free(ptr, ud);
    return n;
}

nghttp2_mem *h2_mem_session(struct h2_mem_session *ms, struct worker *w)
{
    memset(ms, 0, sizeof *ms);
#if defined(__SANITIZE_ADDRESS__)
    (void)w;
    (void)mem_malloc, (void)mem_calloc, (void)mem_free, (void)mem_realloc;
    return NULL; /* AddressSanitizer checks nghttp2's buffers only when malloc serves them */
#else
    if (!w)
        return NULL;
    if (!w->h2_mem && !(w->h2_mem = calloc(1, sizeof *w->h2_mem)))
        return NULL; /* nghttp2's own allocator then */
    ms->pool = w->h2_mem;
    ms->mem.mem_user_data = ms;
    ms->mem.malloc = mem_malloc;
    ms->mem.free = mem_free;
    ms->mem.calloc = mem_calloc;
    ms->mem.realloc = mem_realloc;
    return &ms->mem;
#endif
}

void h2_mem_quiet(struct h2_mem_session *ms)
{
    if (ms->framebuf)
        madvise(ms->framebuf, slot_size[H2_MEM_FRAMEBUF], MADV_DONTNEED);
}

void h2_mem_free(struct worker *w)
{
    struct h2_mem_pool *p = w->h2_mem;
    if (!p)
        return;
    for (size_t k = 0; k < H2_SMALL_CLASSES; k++) {
        while (p->small[k]) {
            struct small_block *b = p->small[k];
            p->small[k] = b->next;
            free(b);
        }
        p->n_small[k] = 0;
    }
    if (p->live)
        return; /* a session still holds slots: leave the pool to the process exit */
    for (size_t i = 0; i < p->n_regions; i++)
        munmap(p->regions[i].base, H2_MEM_REGION);
    free(p->regions);
    for (int c = 0; c < H2_MEM_CLASSES; c++)
        free(p->free_slots[c]);
    free(p);
    w->h2_mem = NULL;
}
