/* The header map of one message: an ordered list of (name, value) pairs.
 * Pseudo-headers (:method, :path, :authority, :scheme, :status) are stored
 * like any header so filters read them the way Envoy's Lua API does.
 * Names are kept lower-case (HTTP/2 requires it; HTTP/1 names are folded).
 * The map owns copies of every name and value. */
#ifndef NUNCIO_HDR_H
#define NUNCIO_HDR_H

#include <stddef.h>
#include <stdint.h>

struct hdr_entry {
    char *name; /* NUL-terminated, in the map's block; the value follows it */
    char *value;
    uint32_t nlen, vlen;
};

/* One allocation per map holds the entries and, after them, the strings they
 * point to: a request's dozen headers cost one malloc rather than one each.
 * Removed or replaced strings stay in the block as dead bytes until it grows,
 * when only live strings are copied over. */
struct hdr_map {
    struct hdr_entry *v; /* the block (owned); NULL while empty */
    uint32_t n, cap;     /* entries in use / room for */
    size_t bytes;        /* sum of name and value lengths, for limits */
    char *str;           /* string area: inside the block, after v[cap] */
    size_t str_len, str_cap;
};

int hdr_add(struct hdr_map *m, const char *name, size_t nlen, const char *value, size_t vlen);
/* hdr_add for a name known to be lower case already (nghttp2 refuses
 * upper-case names with HTTP messaging on): no folding pass. */
int hdr_add_lower(struct hdr_map *m, const char *name, size_t nlen, const char *value, size_t vlen);
/* Replaces the first value of name and removes the others; adds it if absent. */
int hdr_set(struct hdr_map *m, const char *name, size_t nlen, const char *value, size_t vlen);
/* Removes every value of name; returns how many were removed. */
int hdr_remove(struct hdr_map *m, const char *name, size_t nlen);
/* The index of the k-th (0-based) entry named name, or -1. Case-insensitive. */
int hdr_find(const struct hdr_map *m, const char *name, size_t nlen, int k);
int hdr_count(const struct hdr_map *m, const char *name, size_t nlen);
/* The first value of name (borrowed: valid until the map changes: any add or
 * set may move every string), or NULL. */
const char *hdr_get(const struct hdr_map *m, const char *name, size_t nlen, size_t *vlen);
void hdr_clear(struct hdr_map *m);
/* Frees the calling thread's cache of spare map blocks (a worker thread, as it ends). */
void hdr_cache_release(void);

#define HDR_LIT(s) (s), (sizeof(s) - 1)

#endif
