/* libFuzzer harness: how a request's authority is read. The parsers are C
 * ones only: h1s.c's Host header and absolute-form request target (RFC 7230
 * 5.4) to :authority, and nghttp2's :authority/host checks behind h2s.c.
 * Matching an authority against Hosts and Mappings, and strip_host_port, are
 * Lua (lua/nuncio/router.lua, filters/strip_host_port.lua): not fuzzed here.
 *
 * The input is "<request-target>\n<host>". It becomes
 *   1. an HTTP/1.1 request "GET <target> HTTP/1.1\r\nHost: <host>\r\n\r\n";
 *   2. an HTTP/2 connection with two requests: :authority <host> (stream 1)
 *      and, without :authority, a host header <target> (stream 3).
 * Every request that reaches the stream is checked: :authority is exactly
 * what the reference below says, and it can go on an HTTP/1 wire as a Host
 * line (h1c writes it there) without ending the line early. */
#include "fuzz_conn.h"
#include "h1_common.h"

#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *fa_target, *fa_host;
static size_t fa_tl, fa_hl;
static int fa_heads;
static int fa_h1_exact; /* the HTTP/1.1 request is the one line and one Host the reference assumes */

static void check_head(struct exchange *x)
{
    size_t al = 0, pl = 0;
    const char *auth = hdr_get(&x->req.hdrs, HDR_LIT(":authority"), &al);
    const char *path = hdr_get(&x->req.hdrs, HDR_LIT(":path"), &pl);
    fa_heads++;
    if (x->down.http1) {
        FZ_ASSERT(auth && path);
        FZ_ASSERT(h1_value_safe(auth, al));
        if (!fa_h1_exact)
            return; /* the bytes made another request than the one the reference reads */
        size_t skip = fa_tl >= 7 && strncasecmp(fa_target, "http://", 7) == 0    ? 7
                      : fa_tl >= 8 && strncasecmp(fa_target, "https://", 8) == 0 ? 8
                                                                                 : 0;
        if (skip) {
            /* absolute-form: the target's authority, never userinfo, never empty */
            size_t e = skip;
            while (e < fa_tl && fa_target[e] != '/' && fa_target[e] != '?' && fa_target[e] != '#')
                e++;
            FZ_ASSERT(e > skip && al == e - skip && memcmp(auth, fa_target + skip, al) == 0);
            FZ_ASSERT(!memchr(auth, '@', al));
            /* the rest is the origin-form target: "/" when empty, a path before any query */
            FZ_ASSERT(path[0] == '/');
            FZ_ASSERT(pl == (e < fa_tl ? fa_tl - e + (fa_target[e] != '/') : 1));
        } else {
            /* origin-form: the Host value without the white space around it */
            const char *h = fa_host;
            size_t hl = fa_hl;
            while (hl && (*h == ' ' || *h == '\t'))
                h++, hl--;
            while (hl && (h[hl - 1] == ' ' || h[hl - 1] == '\t'))
                hl--;
            FZ_ASSERT(al == hl && memcmp(auth, h, al) == 0);
        }
        return;
    }
    /* HTTP/2: what the client sent, byte for byte, once nghttp2 let it through. */
    if (x->down.id == 1) {
        FZ_ASSERT(auth && al == fa_hl && memcmp(auth, fa_host, al) == 0);
        FZ_ASSERT(h1_value_safe(auth, al));
    } else if (x->down.id == 3) {
        size_t hl = 0;
        const char *host = hdr_get(&x->req.hdrs, HDR_LIT("host"), &hl);
        FZ_ASSERT(!auth && host && hl == fa_tl && memcmp(host, fa_target, hl) == 0);
        FZ_ASSERT(h1_value_safe(host, hl));
    }
}

/* HPACK: an integer with an n-bit prefix (RFC 7541 5.1). */
static size_t hp_int(uint8_t *o, uint8_t first, int bits, size_t v)
{
    size_t max = ((size_t)1 << bits) - 1, k = 0;
    if (v < max) {
        o[k++] = (uint8_t)(first | v);
        return k;
    }
    o[k++] = (uint8_t)(first | max);
    v -= max;
    while (v >= 128) {
        o[k++] = (uint8_t)(0x80 | (v & 0x7f));
        v >>= 7;
    }
    o[k++] = (uint8_t)v;
    return k;
}

/* A literal header field without indexing, new name (RFC 7541 6.2.2). */
static size_t hp_field(uint8_t *o, const char *n, size_t nl, const char *v, size_t vl)
{
    size_t k = 0;
    o[k++] = 0x00;
    k += hp_int(o + k, 0, 7, nl);
    memcpy(o + k, n, nl);
    k += nl;
    k += hp_int(o + k, 0, 7, vl);
    memcpy(o + k, v, vl);
    return k + vl;
}

static size_t h2_frame_head(uint8_t *o, size_t len, uint8_t type, uint8_t flags, uint32_t sid)
{
    o[0] = (uint8_t)(len >> 16);
    o[1] = (uint8_t)(len >> 8);
    o[2] = (uint8_t)len;
    o[3] = type;
    o[4] = flags;
    o[5] = (uint8_t)(sid >> 24);
    o[6] = (uint8_t)(sid >> 16);
    o[7] = (uint8_t)(sid >> 8);
    o[8] = (uint8_t)sid;
    return 9;
}

/* A HEADERS frame (END_STREAM | END_HEADERS) for a GET. */
static size_t h2_get(uint8_t *o, uint32_t sid, const char *an, size_t anl, const char *av, size_t avl)
{
    uint8_t *p = o + 9;
    size_t k = 0;
    k += hp_field(p + k, HDR_LIT(":method"), HDR_LIT("GET"));
    k += hp_field(p + k, HDR_LIT(":scheme"), HDR_LIT("https"));
    k += hp_field(p + k, HDR_LIT(":path"), HDR_LIT("/"));
    k += hp_field(p + k, an, anl, av, avl);
    h2_frame_head(o, k, 0x1, 0x1 | 0x4, sid);
    return 9 + k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 8000) /* one HTTP/2 frame must hold it (16 KiB) */
        return 0;
    fz_init();
    fz_on_head = check_head;
    const char *nl = memchr(data, '\n', size);
    fa_target = (const char *)data;
    fa_tl = nl ? (size_t)(nl - (const char *)data) : size;
    fa_host = nl ? nl + 1 : "";
    fa_hl = nl ? size - fa_tl - 1 : 0;

    /* 1. HTTP/1.1 */
    fa_h1_exact = 1;
    for (size_t i = 0; i < fa_tl; i++)
        if ((unsigned char)fa_target[i] <= 0x20 || fa_target[i] == 0x7f)
            fa_h1_exact = 0;
    if (memchr(fa_host, '\r', fa_hl) || memchr(fa_host, '\n', fa_hl) || memchr(fa_host, '\0', fa_hl))
        fa_h1_exact = 0;
    static uint8_t buf[2 * 8192 + 512];
    size_t n = 0;
    memcpy(buf + n, "GET ", 4), n += 4;
    memcpy(buf + n, fa_target, fa_tl), n += fa_tl;
    memcpy(buf + n, " HTTP/1.1\r\nHost: ", 17), n += 17;
    memcpy(buf + n, fa_host, fa_hl), n += fa_hl;
    memcpy(buf + n, "\r\n\r\n", 4), n += 4;
    struct conn *c = fz_conn();
    struct h1s_opts o = {.header_timeout = 10, .enable_http10 = 1, .to_h2 = NULL};
    if (h1s_attach(c, fz_open, NULL, &o) != NU_OK)
        abort();
    fz_run(c, buf, n);

    /* 2. HTTP/2 */
    n = 0;
    memcpy(buf, NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN), n += NGHTTP2_CLIENT_MAGIC_LEN;
    n += h2_frame_head(buf + n, 0, 0x4, 0, 0); /* SETTINGS */
    n += h2_get(buf + n, 1, HDR_LIT(":authority"), fa_host, fa_hl);
    n += h2_get(buf + n, 3, HDR_LIT("host"), fa_target, fa_tl);
    c = fz_conn();
    if (h2s_attach(c, fz_open, NULL, &fz_h2_opts) != NU_OK)
        abort();
    fz_run(c, buf, n);
    fz_on_head = NULL;
    return 0;
}
