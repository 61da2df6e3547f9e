/* libFuzzer harness: the gRPC-Web translation (csrc/grpc_web.c) without a
 * stream. The first byte picks the mode (bit 0: a -text request body; bit 1:
 * `accept` asks for -text; bits 2-4: the piece size the bodies are cut into),
 * the rest is a body. Checked against plain references:
 *   - request: the decoded bytes and the outcome do not depend on how the
 *     body was cut; a binary body passes unchanged;
 *   - response (a gRPC one): what the browser gets, base64-decoded in -text
 *     mode, is exactly the body then the 0x80 trailer frame; the credit handed
 *     back as the client takes it adds up to what arrived, never more;
 *   - response (not gRPC): the body becomes grpc-message, percent-encoded,
 *     at most GRPC_WEB_MESSAGE_LIMIT bytes of it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "exchange.h"
#include "grpc.h"
#include "grpc_web.h"
#include "hdr.h"
#include "nuncio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_ASSERT(cond)                                                                                                \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond);                          \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* The bytes of b (never a null pointer, even when empty). */
static const uint8_t *bp(const struct buf *b)
{
    return b->data ? b->data + b->off : (const uint8_t *)"";
}

static const size_t piece_sizes[8] = {1, 2, 3, 4, 5, 7, 64, 100000};

/* Decodes a request body fed in pieces of `piece` bytes; returns the outcome
 * of grpc_web_request_data/_end (first error wins) and the bytes in *out. */
static int decode(int kind, const uint8_t *p, size_t n, size_t piece, struct buf *out)
{
    struct grpc_web *g = grpc_web_new(kind, NULL, 0);
    FZ_ASSERT(g);
    int rc = NU_OK;
    for (size_t off = 0; off < n && rc == NU_OK;) {
        size_t k = n - off < piece ? n - off : piece;
        const uint8_t *d;
        size_t dn;
        rc = grpc_web_request_data(g, p + off, k, &d, &dn);
        if (rc == NU_OK && dn)
            FZ_ASSERT(buf_append(out, d, dn) == NU_OK);
        off += k;
    }
    if (rc == NU_OK)
        rc = grpc_web_request_end(g);
    grpc_web_free(g);
    return rc;
}

static void request_side(int kind, const uint8_t *p, size_t n, size_t piece)
{
    struct buf a = {0}, b = {0};
    int ra = decode(kind, p, n, piece, &a);
    int rb = decode(kind, p, n, n ? n : 1, &b); /* whole */
    if (ra == NU_ERR_PROTO || rb == NU_ERR_PROTO) {
        /* bad base64 is bad however it is cut; what came before it may differ */
        FZ_ASSERT(ra == rb);
    } else {
        FZ_ASSERT(ra == rb);
        FZ_ASSERT(buf_size(&a) == buf_size(&b) && memcmp(bp(&a), bp(&b), buf_size(&a)) == 0);
        if (kind == GRPC_WEB_BINARY)
            FZ_ASSERT(buf_size(&a) == n && (n == 0 || memcmp(bp(&a), p, n) == 0));
        else
            FZ_ASSERT(buf_size(&a) <= n / 4 * 3);
    }
    buf_free(&a);
    buf_free(&b);
}

static void drain_q(struct chunkq *q, struct buf *out)
{
    uint8_t tmp[4096];
    size_t k;
    while ((k = chunkq_read(q, tmp, sizeof tmp)) > 0)
        FZ_ASSERT(buf_append(out, tmp, k) == NU_OK);
}

static void response_grpc(int text, const uint8_t *p, size_t n, size_t piece)
{
    const char *accept = text ? "application/grpc-web-text" : "application/grpc-web";
    struct grpc_web *g = grpc_web_new(GRPC_WEB_BINARY, accept, strlen(accept));
    FZ_ASSERT(g);
    struct hdr_map h = {0}, t = {0};
    FZ_ASSERT(hdr_add(&h, HDR_LIT(":status"), HDR_LIT("200")) == NU_OK);
    FZ_ASSERT(hdr_add(&h, HDR_LIT("content-type"), HDR_LIT("application/grpc")) == NU_OK);
    FZ_ASSERT(hdr_add(&h, HDR_LIT("content-length"), HDR_LIT("12")) == NU_OK);
    FZ_ASSERT(grpc_web_response_headers(g, &h, 0) == NU_OK);
    FZ_ASSERT(g->resp == GRPC_WEB_RESP_FRAMES);
    FZ_ASSERT(hdr_get(&h, HDR_LIT("content-length"), NULL) == NULL);
    struct chunkq q = {0};
    struct buf wire = {0};
    uint64_t credited = 0;
    for (size_t off = 0; off < n;) {
        size_t k = n - off < piece ? n - off : piece;
        FZ_ASSERT(grpc_web_response_data(g, p + off, k, &q) == NU_OK);
        off += k;
        /* the client takes what is queued, in two goes */
        size_t before = wire.len;
        drain_q(&q, &wire);
        size_t took = wire.len - before;
        credited += grpc_web_credit(g, took / 2);
        credited += grpc_web_credit(g, took - took / 2);
        FZ_ASSERT(credited <= off);
    }
    /* the trailers: grpc-status and a message cut from the body */
    FZ_ASSERT(hdr_add(&t, HDR_LIT("grpc-status"), HDR_LIT("0")) == NU_OK);
    size_t ml = n < 40 ? n : 40;
    char msg[40];
    for (size_t i = 0; i < ml; i++)
        msg[i] = (char)(p[i] >= 0x21 && p[i] <= 0x7e ? p[i] : 'x');
    FZ_ASSERT(hdr_add(&t, HDR_LIT("grpc-message"), msg, ml) == NU_OK);
    struct buf want = {0};
    if (n) /* buf_append(b, p, 0) on an empty buf is UB (NULL + 0), see README */
        FZ_ASSERT(buf_append(&want, p, n) == NU_OK);
    FZ_ASSERT(grpc_web_trailer_frame(&t, &want) == NU_OK);
    FZ_ASSERT(grpc_web_response_end(g, &t, &q) == NU_OK);
    FZ_ASSERT(t.n == 0);
    size_t before = wire.len;
    drain_q(&q, &wire);
    credited += grpc_web_credit(g, wire.len - before);
    FZ_ASSERT(credited == n); /* exact once the queue is drained */

    struct buf got = {0};
    if (text) {
        int rc = decode(GRPC_WEB_TEXT, bp(&wire), buf_size(&wire), 100000, &got);
        FZ_ASSERT(rc == NU_OK || rc == NU_ERR_LIMIT); /* valid base64; frames may be cut short */
    } else {
        FZ_ASSERT(buf_append(&got, bp(&wire), buf_size(&wire)) == NU_OK);
    }
    FZ_ASSERT(buf_size(&got) == buf_size(&want));
    FZ_ASSERT(memcmp(bp(&got), bp(&want), buf_size(&want)) == 0);
    buf_free(&got);
    buf_free(&want);
    buf_free(&wire);
    chunkq_clear(&q);
    hdr_clear(&h);
    hdr_clear(&t);
    grpc_web_free(g);
}

static void response_collect(int text, const uint8_t *p, size_t n)
{
    const char *accept = text ? "application/grpc-web-text" : NULL;
    struct grpc_web *g = grpc_web_new(GRPC_WEB_TEXT, accept, accept ? strlen(accept) : 0);
    FZ_ASSERT(g);
    /* an earlier attempt's response, replaced by a local reply */
    struct hdr_map h0 = {0};
    FZ_ASSERT(hdr_add(&h0, HDR_LIT(":status"), HDR_LIT("200")) == NU_OK);
    FZ_ASSERT(grpc_web_response_headers(g, &h0, 1) == NU_OK);
    hdr_clear(&h0);
    grpc_web_reset_response(g);

    struct msg m = {0};
    FZ_ASSERT(hdr_add(&m.hdrs, HDR_LIT(":status"), HDR_LIT("503")) == NU_OK);
    FZ_ASSERT(hdr_add(&m.hdrs, HDR_LIT("content-type"), HDR_LIT("text/plain")) == NU_OK);
    size_t half = n / 2;
    FZ_ASSERT(chunkq_append(&m.body, p, half) == NU_OK || half == 0);
    int wait = 0;
    FZ_ASSERT(grpc_web_head(g, &m, &wait) == NU_OK);
    if (half) {
        FZ_ASSERT(wait && g->resp == GRPC_WEB_RESP_COLLECT);
    } else {
        FZ_ASSERT(!wait || g->resp == GRPC_WEB_RESP_COLLECT);
    }
    if (wait) {
        FZ_ASSERT(grpc_web_collect(g, p + half, n - half) == NU_OK);
        m.end = 1;
        FZ_ASSERT(grpc_web_head(g, &m, &wait) == NU_OK && !wait);
        FZ_ASSERT(g->resp == GRPC_WEB_RESP_PASS);
        size_t vl = 0, sl = 0;
        const char *v = hdr_get(&m.hdrs, HDR_LIT("grpc-message"), &vl);
        const char *s = hdr_get(&m.hdrs, HDR_LIT("grpc-status"), &sl);
        FZ_ASSERT(v && s && sl == 2 && memcmp(s, "14", 2) == 0); /* 503 -> UNAVAILABLE */
        size_t kept = n < GRPC_WEB_MESSAGE_LIMIT ? n : GRPC_WEB_MESSAGE_LIMIT;
        char *ref = malloc(3 * kept + 1);
        FZ_ASSERT(ref);
        size_t rl = grpc_message_encode((const char *)p, kept, ref, 3 * kept);
        FZ_ASSERT(rl == vl && memcmp(ref, v, vl) == 0);
        free(ref);
        for (size_t i = 0; i < vl; i++)
            FZ_ASSERT(v[i] >= 0x20 && v[i] <= 0x7e);
    }
    hdr_clear(&m.hdrs);
    hdr_clear(&m.trailers);
    chunkq_clear(&m.body);
    grpc_web_free(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    size_t piece = piece_sizes[(mode >> 2) & 7];
    request_side((mode & 1) ? GRPC_WEB_TEXT : GRPC_WEB_BINARY, p, n, piece);
    response_grpc((mode & 2) != 0, p, n, piece);
    response_collect((mode & 2) != 0, p, n);
    /* the kind of a content-type, and the request head rewrite, on the body's bytes */
    int k = grpc_web_kind((const char *)p, n);
    FZ_ASSERT(k == GRPC_WEB_NONE || n >= 20);
    struct hdr_map h = {0};
    FZ_ASSERT(hdr_add(&h, HDR_LIT("content-type"), (const char *)p, n) == NU_OK);
    FZ_ASSERT(hdr_add(&h, HDR_LIT("content-length"), HDR_LIT("5")) == NU_OK);
    FZ_ASSERT(grpc_web_request_headers(&h) == NU_OK);
    FZ_ASSERT(hdr_get(&h, HDR_LIT("content-length"), NULL) == NULL);
    hdr_clear(&h);
    return 0;
}
