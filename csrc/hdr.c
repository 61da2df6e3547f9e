#include "hdr.h"
#include "nuncio.h"

#include <stdlib.h>
#include <string.h>

/* memcmp(a, b, n) == 0 inline, eight bytes at a time: header names are
 * short, and memcmp's call cost more than the compare (bench/profile). The
 * last word overlaps the one before it rather than ending byte by byte: the
 * byte loop cost as much as the rest of the compare. */
static inline int same_bytes(const char *a, const char *b, size_t n)
{
    uint64_t x, y;
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8) {
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            if (x != y)
                return 0;
        }
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return x == y;
    }
    if (n >= 4) {
        uint32_t u, v, u2, v2;
        memcpy(&u, a, 4);
        memcpy(&v, b, 4);
        memcpy(&u2, a + n - 4, 4);
        memcpy(&v2, b + n - 4, 4);
        return u == v && u2 == v2;
    }
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static int name_eq(const struct hdr_entry *e, const char *name, size_t nlen)
{
    if (e->nlen != nlen)
        return 0;
    /* Names of one length mostly differ in their last byte (":path" and
     * ":host" aside): one compare before memcmp's call. */
    if (nlen > 0) {
        unsigned char c = (unsigned char)name[nlen - 1];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if ((unsigned char)e->name[nlen - 1] != c)
            return 0;
    }
    /* Stored names are lower case and callers mostly ask in lower case. */
    if (same_bytes(e->name, name, nlen))
        return 1;
    for (size_t i = 0; i < nlen; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        if ((unsigned char)e->name[i] != c)
            return 0;
    }
    return 1;
}

/* Folds A-Z to lower case in the eight bytes at src, written to dst. A byte
 * is upper case when, with its top bit cleared, adding 0x80-'A' sets the top
 * bit and adding 0x80-'Z'-1 does not, and its own top bit was clear; no
 * addition carries across bytes. */
static inline void fold_word(char *dst, const char *src)
{
    const uint64_t high = 0x8080808080808080ull, low7 = 0x7f7f7f7f7f7f7f7full;
    const uint64_t ge_a = 0x0101010101010101ull * (0x80 - 'A');
    const uint64_t gt_z = 0x0101010101010101ull * (0x80 - 'Z' - 1);
    uint64_t x;
    memcpy(&x, src, 8);
    uint64_t m = x & low7;
    uint64_t upper = (m + ge_a) & ~(m + gt_z) & ~x & high;
    x |= upper >> 2; /* 0x80 >> 2 = 0x20: 'A' -> 'a' */
    memcpy(dst, &x, 8);
}

/* Copies n bytes, folding A-Z to lower case, eight bytes at a time: this runs
 * for every header name of every message. From eight bytes on, the last word
 * overlaps the one before it (folding reads only src) instead of a byte loop. */
static void fold_copy(char *dst, const char *src, size_t n)
{
    if (n >= 8) {
        for (size_t i = 0; i + 8 < n; i += 8)
            fold_word(dst + i, src + i);
        fold_word(dst + n - 8, src + n - 8);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        dst[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
}

/* First block: room for a typical gRPC request's headers (a dozen, ~300
 * bytes) in one allocation small enough for malloc's per-thread cache. */
#define HDR_FIRST_ENTRIES 16
#define HDR_FIRST_STR 640

#define HDR_FIRST_BYTES (HDR_FIRST_ENTRIES * sizeof(struct hdr_entry) + HDR_FIRST_STR)

/* First-size blocks of cleared maps, kept for the next message: every
 * request takes three (request, response, trailers) and, with many streams
 * in flight, malloc's own per-thread cache (seven per size) runs dry. The
 * cache holds enough for 256 calls in flight (16 connections of 16 streams:
 * with 64 it ran dry there too, two mallocs of ~370 instructions a call);
 * at most 1 MiB per worker stays kept once the load is gone. One cache per
 * thread: maps never move between workers. AddressSanitizer builds skip it
 * so that a use after hdr_clear is still caught. */
#if !defined(__SANITIZE_ADDRESS__)
#define HDR_CACHE 1024
static _Thread_local struct {
    void *blocks[HDR_CACHE]; /* owned by the cache until handed to a map */
    unsigned n;
} hdr_cache;
#endif

static void *block_get(size_t size)
{
#ifdef HDR_CACHE
    if (size == HDR_FIRST_BYTES && hdr_cache.n)
        return hdr_cache.blocks[--hdr_cache.n];
#endif
    return malloc(size);
}

static void block_put(struct hdr_map *m)
{
#ifdef HDR_CACHE
    if (m->v && m->cap == HDR_FIRST_ENTRIES && m->str_cap == HDR_FIRST_STR && hdr_cache.n < HDR_CACHE) {
        hdr_cache.blocks[hdr_cache.n++] = m->v;
        return;
    }
#endif
    free(m->v);
}

/* Strings of live entries only: what a regrown block must hold. */
static size_t live_str(const struct hdr_map *m)
{
    return m->bytes + 2 * (size_t)m->n;
}

/* Makes room for one more entry of need string bytes: a new block with the
 * live strings packed at its start (dead bytes are dropped here). */
static int grow(struct hdr_map *m, size_t need)
{
    uint32_t cap = m->cap ? m->cap : HDR_FIRST_ENTRIES;
    if (m->n == cap) {
        if (cap > UINT32_MAX / 2)
            return NU_ERR_LIMIT;
        cap *= 2;
    }
    size_t want = live_str(m) + need;
    size_t scap = m->str_cap ? m->str_cap : HDR_FIRST_STR;
    while (scap < 2 * want && scap < want + 64 * 1024)
        scap *= 2;
    if (scap < want)
        scap = want;
    struct hdr_entry *v = block_get(cap * sizeof *v + scap);
    if (!v)
        return NU_ERR_NOMEM;
    char *str = (char *)(v + cap);
    size_t len = 0;
    for (uint32_t i = 0; i < m->n; i++) {
        const struct hdr_entry *e = &m->v[i];
        size_t k = (size_t)e->nlen + e->vlen + 2; /* name\0value\0 are adjacent */
        memcpy(str + len, e->name, k);
        v[i].name = str + len;
        v[i].value = str + len + e->nlen + 1;
        v[i].nlen = e->nlen;
        v[i].vlen = e->vlen;
        len += k;
    }
    block_put(m);
    m->v = v;
    m->cap = cap;
    m->str = str;
    m->str_len = len;
    m->str_cap = scap;
    return NU_OK;
}

/* Copies name (folded to lower case) and value into the block. Either may
 * point into this very map (a value read from it), which a regrow would
 * free: such input is copied aside first. */
static int entry_fill(struct hdr_map *m, struct hdr_entry *out, const char *name, size_t nlen, const char *value,
                      size_t vlen, int lower)
{
    if (nlen > UINT32_MAX / 2 || vlen > UINT32_MAX / 2)
        return NU_ERR_LIMIT;
    size_t need = nlen + vlen + 2;
    char *aside = NULL; /* owned here: copy of input that lived in the old block */
    if (m->str_cap - m->str_len < need || (out == NULL && m->n == m->cap)) {
        uintptr_t lo = (uintptr_t)m->v, hi = lo + m->cap * sizeof *m->v + m->str_cap;
        int inside = m->v && (((uintptr_t)name >= lo && (uintptr_t)name < hi) ||
                              ((uintptr_t)value >= lo && (uintptr_t)value < hi));
        if (inside) {
            aside = malloc(need);
            if (!aside)
                return NU_ERR_NOMEM;
            memcpy(aside, name, nlen);
            memcpy(aside + nlen + 1, value, vlen);
            name = aside;
            value = aside + nlen + 1;
        }
        /* out points into the old block when replacing: find it again after. */
        ptrdiff_t at = out ? out - m->v : -1;
        int rc = grow(m, need);
        if (rc != NU_OK) {
            free(aside);
            return rc;
        }
        if (out)
            out = m->v + at;
    }
    char *p = m->str + m->str_len;
    if (lower)
        memcpy(p, name, nlen);
    else
        fold_copy(p, name, nlen);
    p[nlen] = '\0';
    memcpy(p + nlen + 1, value, vlen);
    p[nlen + 1 + vlen] = '\0';
    if (aside)
        free(aside);
    m->str_len += need;
    if (!out)
        out = &m->v[m->n++];
    else
        m->bytes -= out->nlen + out->vlen; /* the replaced strings become dead bytes */
    out->name = p;
    out->value = p + nlen + 1;
    out->nlen = (uint32_t)nlen;
    out->vlen = (uint32_t)vlen;
    m->bytes += nlen + vlen;
    return NU_OK;
}

int hdr_add(struct hdr_map *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    return entry_fill(m, NULL, name, nlen, value, vlen, 0);
}

int hdr_add_lower(struct hdr_map *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    return entry_fill(m, NULL, name, nlen, value, vlen, 1);
}

int hdr_find(const struct hdr_map *m, const char *name, size_t nlen, int k)
{
    /* The length test here, not only in name_eq: most entries differ in
     * length, and the call per entry cost more than the compare. */
    for (uint32_t i = 0; i < m->n; i++)
        if (m->v[i].nlen == nlen && name_eq(&m->v[i], name, nlen) && k-- == 0)
            return (int)i;
    return -1;
}

int hdr_count(const struct hdr_map *m, const char *name, size_t nlen)
{
    int c = 0;
    for (uint32_t i = 0; i < m->n; i++)
        c += m->v[i].nlen == nlen && name_eq(&m->v[i], name, nlen);
    return c;
}

const char *hdr_get(const struct hdr_map *m, const char *name, size_t nlen, size_t *vlen)
{
    int i = hdr_find(m, name, nlen, 0);
    if (i < 0)
        return NULL;
    if (vlen)
        *vlen = m->v[i].vlen;
    return m->v[i].value;
}

static void remove_at(struct hdr_map *m, uint32_t i)
{
    m->bytes -= m->v[i].nlen + m->v[i].vlen; /* its strings stay as dead bytes until a regrow */
    memmove(&m->v[i], &m->v[i + 1], (m->n - i - 1) * sizeof m->v[0]);
    m->n--;
}

int hdr_remove(struct hdr_map *m, const char *name, size_t nlen)
{
    int removed = 0;
    for (uint32_t i = 0; i < m->n;) {
        if (name_eq(&m->v[i], name, nlen)) {
            remove_at(m, i);
            removed++;
        } else {
            i++;
        }
    }
    return removed;
}

int hdr_set(struct hdr_map *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    int first = hdr_find(m, name, nlen, 0);
    if (first < 0)
        return hdr_add(m, name, nlen, value, vlen);
    int rc = entry_fill(m, &m->v[first], name, nlen, value, vlen, 0);
    if (rc)
        return rc;
    /* name may have pointed into the block entry_fill regrew: match the copy. */
    const char *kept = m->v[first].name;
    for (uint32_t i = (uint32_t)first + 1; i < m->n;) {
        if (name_eq(&m->v[i], kept, nlen))
            remove_at(m, i);
        else
            i++;
    }
    return NU_OK;
}

void hdr_clear(struct hdr_map *m)
{
    block_put(m);
    memset(m, 0, sizeof *m);
}

void hdr_cache_release(void)
{
#ifdef HDR_CACHE
    while (hdr_cache.n)
        free(hdr_cache.blocks[--hdr_cache.n]);
#endif
}
