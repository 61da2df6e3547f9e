/* Unit tests for the gRPC-Web translation (csrc/grpc_web.c). */
#include "../../csrc/grpc_web.c"
#include "check.h"

/* A plain reference encoder: standard alphabet, padded. */
static size_t ref_b64(const uint8_t *p, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        out[o++] = i + 1 < n ? a[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? a[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

/* A gRPC frame with payload bytes seeded by len. */
static size_t make_frame(uint8_t *dst, uint8_t flag, uint32_t len)
{
    dst[0] = flag;
    dst[1] = (uint8_t)(len >> 24);
    dst[2] = (uint8_t)(len >> 16);
    dst[3] = (uint8_t)(len >> 8);
    dst[4] = (uint8_t)len;
    for (uint32_t i = 0; i < len; i++)
        dst[5 + i] = (uint8_t)(i * 7 + len);
    return 5 + len;
}

static size_t drain(struct chunkq *q, uint8_t *dst, size_t cap)
{
    return chunkq_read(q, dst, cap);
}

/* Feeds a -text body in two pieces split at `at`; returns the decoded bytes. */
static int decode_split(const char *text, size_t n, size_t at, uint8_t *out, size_t *outn)
{
    struct grpc_web *g = grpc_web_new(GRPC_WEB_TEXT, NULL, 0);
    const uint8_t *d;
    size_t dn, o = 0;
    int rc = grpc_web_request_data(g, (const uint8_t *)text, at, &d, &dn);
    if (rc == NU_OK) {
        memcpy(out + o, d, dn);
        o += dn;
        rc = grpc_web_request_data(g, (const uint8_t *)text + at, n - at, &d, &dn);
        if (rc == NU_OK) {
            memcpy(out + o, d, dn);
            o += dn;
            rc = grpc_web_request_end(g);
        }
    }
    *outn = o;
    grpc_web_free(g);
    return rc;
}

static void test_kinds(void)
{
    CHECK(grpc_web_kind("application/grpc-web", 20) == GRPC_WEB_BINARY);
    CHECK(grpc_web_kind("application/grpc-web+proto", 26) == GRPC_WEB_BINARY);
    CHECK(grpc_web_kind("application/grpc-web-text", 25) == GRPC_WEB_TEXT);
    CHECK(grpc_web_kind("application/grpc-web-text+proto", 31) == GRPC_WEB_TEXT);
    /* Exact names only, as Envoy's set lookup. */
    CHECK(grpc_web_kind("application/grpc-web; charset=utf-8", 35) == GRPC_WEB_NONE);
    CHECK(grpc_web_kind("application/grpc", 16) == GRPC_WEB_NONE);
    CHECK(grpc_web_kind("Application/grpc-web", 20) == GRPC_WEB_NONE);
    CHECK(grpc_web_kind(NULL, 0) == GRPC_WEB_NONE);
    struct grpc_web *g = grpc_web_new(GRPC_WEB_TEXT, "application/grpc-web", 20);
    CHECK(g->text_request && !g->text_response); /* the response mode follows `accept` only */
    grpc_web_free(g);
    g = grpc_web_new(GRPC_WEB_BINARY, "application/grpc-web-text+proto", 31);
    CHECK(!g->text_request && g->text_response);
    grpc_web_free(g);
}

static void test_request_headers(void)
{
    struct hdr_map h = {0};
    hdr_add(&h, HDR_LIT(":path"), HDR_LIT("/a.B/C"));
    hdr_add(&h, HDR_LIT("content-type"), HDR_LIT("application/grpc-web-text"));
    hdr_add(&h, HDR_LIT("content-length"), HDR_LIT("12"));
    CHECK(grpc_web_request_headers(&h) == NU_OK);
    size_t n;
    CHECK(!hdr_get(&h, HDR_LIT("content-length"), NULL));
    const char *v = hdr_get(&h, HDR_LIT("content-type"), &n);
    CHECK(v && n == 16 && memcmp(v, "application/grpc", 16) == 0);
    v = hdr_get(&h, HDR_LIT("te"), &n);
    CHECK(v && n == 8 && memcmp(v, "trailers", 8) == 0);
    v = hdr_get(&h, HDR_LIT("grpc-accept-encoding"), &n);
    CHECK(v && n == 21 && memcmp(v, "identity,deflate,gzip", 21) == 0);
    hdr_set(&h, HDR_LIT("grpc-accept-encoding"), HDR_LIT("identity"));
    CHECK(grpc_web_request_headers(&h) == NU_OK);
    v = hdr_get(&h, HDR_LIT("grpc-accept-encoding"), &n);
    CHECK(v && n == 8); /* the client's own value is kept */
    hdr_clear(&h);
}

static void test_request_base64(void)
{
    /* Two frames, each base64-encoded on its own (padding mid-body, as
     * grpc-web clients send several messages). */
    uint8_t raw[64];
    size_t r1 = make_frame(raw, 0, 7);       /* 12 bytes: no padding */
    size_t r2 = make_frame(raw + r1, 0, 3);  /* 8 bytes: "=" padding */
    char text[128];
    size_t t1 = ref_b64(raw, r1, text);
    size_t t2 = ref_b64(raw + r1, r2, text + t1);
    size_t tn = t1 + t2;
    CHECK(text[tn - 1] == '=');
    uint8_t out[128];
    size_t on;
    int all_ok = 1;
    for (size_t at = 0; at <= tn; at++) {
        if (decode_split(text, tn, at, out, &on) != NU_OK || on != r1 + r2 || memcmp(out, raw, on) != 0) {
            all_ok = 0;
            fprintf(stderr, "split at %zu failed\n", at);
        }
    }
    CHECK(all_ok);

    /* One character at a time. */
    struct grpc_web *g = grpc_web_new(GRPC_WEB_TEXT, NULL, 0);
    size_t o = 0;
    for (size_t i = 0; i < tn; i++) {
        const uint8_t *d;
        size_t dn;
        CHECK(grpc_web_request_data(g, (const uint8_t *)text + i, 1, &d, &dn) == NU_OK);
        CHECK(dn == 0 || (i % 4) == 3); /* only a complete group decodes */
        memcpy(out + o, d, dn);
        o += dn;
    }
    CHECK(grpc_web_request_end(g) == NU_OK);
    CHECK(o == r1 + r2 && memcmp(out, raw, o) == 0);
    grpc_web_free(g);

    /* Bad input: Envoy's 400 cases. */
    CHECK(decode_split("AAAA*AAA", 8, 3, out, &on) == NU_ERR_PROTO);    /* not in the alphabet */
    CHECK(decode_split("AA=AAAAA", 8, 5, out, &on) == NU_ERR_PROTO);    /* padding inside a group */
    CHECK(decode_split("A===", 4, 2, out, &on) == NU_ERR_PROTO);        /* too much padding */
    CHECK(decode_split("AAAAAAA", 7, 4, out, &on) == NU_ERR_PROTO);     /* not a multiple of 4 at the end */
    CHECK(decode_split("AAAAAA\nA", 8, 4, out, &on) == NU_ERR_PROTO);   /* whitespace */
    CHECK(decode_split("AB==", 4, 0, out, &on) == NU_ERR_PROTO);        /* non-canonical: unused bits set */
    CHECK(decode_split("AAAA-_AA", 8, 8, out, &on) == NU_ERR_PROTO);    /* URL-safe alphabet */

    /* Once rejected, later bytes are refused too. */
    g = grpc_web_new(GRPC_WEB_TEXT, NULL, 0);
    const uint8_t *d;
    size_t dn;
    CHECK(grpc_web_request_data(g, (const uint8_t *)"!!!!", 4, &d, &dn) == NU_ERR_PROTO);
    CHECK(g->failed);
    CHECK(grpc_web_request_data(g, (const uint8_t *)"AAAA", 4, &d, &dn) == NU_ERR_PROTO);
    grpc_web_free(g);
}

static void test_request_frames(void)
{
    /* A frame whose length runs past the body. */
    uint8_t raw[32];
    size_t r = make_frame(raw, 0, 10);
    struct grpc_web *g = grpc_web_new(GRPC_WEB_BINARY, NULL, 0);
    const uint8_t *d;
    size_t dn;
    CHECK(grpc_web_request_data(g, raw, r - 1, &d, &dn) == NU_OK && dn == r - 1 && d == raw);
    CHECK(grpc_web_request_end(g) == NU_ERR_LIMIT);
    grpc_web_free(g);
    /* A prefix cut short. */
    g = grpc_web_new(GRPC_WEB_BINARY, NULL, 0);
    CHECK(grpc_web_request_data(g, raw, 3, &d, &dn) == NU_OK);
    CHECK(grpc_web_request_end(g) == NU_ERR_LIMIT);
    grpc_web_free(g);
    /* Whole frames, and an empty body, are fine. */
    g = grpc_web_new(GRPC_WEB_BINARY, NULL, 0);
    CHECK(grpc_web_request_data(g, raw, r, &d, &dn) == NU_OK);
    CHECK(grpc_web_request_end(g) == NU_OK);
    grpc_web_free(g);
    g = grpc_web_new(GRPC_WEB_BINARY, NULL, 0);
    CHECK(grpc_web_request_end(g) == NU_OK);
    grpc_web_free(g);
}

static void test_trailer_frame(void)
{
    struct hdr_map t = {0};
    hdr_add(&t, HDR_LIT("grpc-status"), HDR_LIT("0"));
    hdr_add(&t, HDR_LIT("grpc-message"), HDR_LIT("ok"));
    struct buf b = {0};
    CHECK(grpc_web_trailer_frame(&t, &b) == NU_OK);
    static const char want[] = "\x80\x00\x00\x00\x20grpc-status:0\r\ngrpc-message:ok\r\n";
    CHECK(buf_size(&b) == sizeof want - 1 && memcmp(b.data + b.off, want, sizeof want - 1) == 0);
    buf_free(&b);
    hdr_clear(&t);
}

/* Response frames: binary passes as is; text encodes each frame on its own,
 * the same bytes whatever the upstream's DATA boundaries. */
static void test_response_frames(void)
{
    static uint8_t raw[200000];
    size_t n = 0;
    size_t lens[] = {0, 1, 2, 3, 4, 10, 100, 100000};
    size_t starts[16];
    int nf = (int)(sizeof lens / sizeof lens[0]);
    for (int i = 0; i < nf; i++) {
        starts[i] = n;
        n += make_frame(raw + n, 0, (uint32_t)lens[i]);
    }
    starts[nf] = n;
    static char want[300000];
    size_t wn = 0;
    for (int i = 0; i < nf; i++)
        wn += ref_b64(raw + starts[i], starts[i + 1] - starts[i], want + wn);
    struct hdr_map t = {0};
    hdr_add(&t, HDR_LIT("grpc-status"), HDR_LIT("0"));
    struct buf tf = {0};
    grpc_web_trailer_frame(&t, &tf);
    wn += ref_b64(tf.data + tf.off, buf_size(&tf), want + wn);
    buf_free(&tf);

    static uint8_t got[300000];
    /* Every split point over the small frames, and a few inside the big one. */
    size_t small_end = starts[nf - 1] + 7;
    int all_ok = 1;
    for (size_t at = 0; at <= n; at = at < small_end ? at + 1 : at + 9973) {
        struct grpc_web *g = grpc_web_new(GRPC_WEB_BINARY, "application/grpc-web-text", 25);
        g->resp = GRPC_WEB_RESP_FRAMES;
        struct chunkq q = {0};
        struct hdr_map tr = {0};
        hdr_add(&tr, HDR_LIT("grpc-status"), HDR_LIT("0"));
        int ok = grpc_web_response_data(g, raw, at, &q) == NU_OK &&
                 grpc_web_response_data(g, raw + at, n - at, &q) == NU_OK &&
                 grpc_web_response_end(g, &tr, &q) == NU_OK;
        size_t gn = drain(&q, got, sizeof got);
        if (!ok || gn != wn || memcmp(got, want, wn) != 0 || tr.n != 0 || strcmp(g->status, "0") != 0) {
            all_ok = 0;
            fprintf(stderr, "response split at %zu failed\n", at);
        }
        chunkq_clear(&q);
        hdr_clear(&tr);
        grpc_web_free(g);
    }
    CHECK(all_ok);

    /* A big frame streams: half of it is already on its way out. */
    struct grpc_web *g = grpc_web_new(GRPC_WEB_BINARY, "application/grpc-web-text+proto", 31);
    g->resp = GRPC_WEB_RESP_FRAMES;
    struct chunkq q = {0};
    size_t big = starts[nf - 1], half = (starts[nf] - big) / 2;
    CHECK(grpc_web_response_data(g, raw + big, half, &q) == NU_OK);
    CHECK(q.bytes >= (half - 2) / 3 * 4 && q.bytes % 4 == 0 && g->enc_n < 3);
    chunkq_clear(&q);
    grpc_web_free(g);

    /* Binary: the bytes as they are, then the raw trailer frame. */
    g = grpc_web_new(GRPC_WEB_BINARY, NULL, 0);
    g->resp = GRPC_WEB_RESP_FRAMES;
    struct hdr_map tr = {0};
    hdr_add(&tr, HDR_LIT("grpc-status"), HDR_LIT("7"));
    hdr_add(&tr, HDR_LIT("grpc-message"), HDR_LIT("no"));
    CHECK(grpc_web_response_data(g, raw, 17, &q) == NU_OK);
    CHECK(grpc_web_response_end(g, &tr, &q) == NU_OK);
    size_t gn = drain(&q, got, sizeof got);
    static const char tb[] = "\x80\x00\x00\x00\x20grpc-status:7\r\ngrpc-message:no\r\n";
    CHECK(gn == 17 + sizeof tb - 1 && memcmp(got, raw, 17) == 0 && memcmp(got + 17, tb, sizeof tb - 1) == 0);
    /* Credit: everything the upstream sent, once the queue is drained. */
    CHECK(grpc_web_credit(g, gn) == 17);
    CHECK(grpc_web_credit(g, 0) == 0);
    hdr_clear(&tr);
    grpc_web_free(g);

    /* Text credit never exceeds what arrived and reaches it when drained. */
    g = grpc_web_new(GRPC_WEB_BINARY, "application/grpc-web-text", 25);
    g->resp = GRPC_WEB_RESP_FRAMES;
    CHECK(grpc_web_response_data(g, raw, 300, &q) == NU_OK);
    size_t total = q.bytes, c1 = grpc_web_credit(g, total / 2);
    CHECK(c1 > 0 && c1 < 300);
    CHECK(c1 + grpc_web_credit(g, total - total / 2) == 300);
    chunkq_clear(&q);
    grpc_web_free(g);
    hdr_clear(&t);
}

static const char *get(const struct hdr_map *h, const char *name)
{
    static char v[256];
    size_t n;
    const char *s = hdr_get(h, name, strlen(name), &n);
    if (!s)
        return NULL;
    snprintf(v, sizeof v, "%.*s", (int)n, s);
    return v;
}

static void test_response_heads(void)
{
    struct grpc_web *g = grpc_web_new(GRPC_WEB_BINARY, NULL, 0);
    struct msg m = {0};
    int wait;
    /* A gRPC response: frames, content-type rewritten, content-length gone. */
    hdr_add(&m.hdrs, HDR_LIT(":status"), HDR_LIT("200"));
    hdr_add(&m.hdrs, HDR_LIT("content-type"), HDR_LIT("application/grpc"));
    hdr_add(&m.hdrs, HDR_LIT("content-length"), HDR_LIT("5"));
    CHECK(grpc_web_head(g, &m, &wait) == NU_OK && !wait && g->resp == GRPC_WEB_RESP_FRAMES);
    CHECK_STR(get(&m.hdrs, "content-type"), "application/grpc-web+proto");
    CHECK(!get(&m.hdrs, "content-length"));
    hdr_clear(&m.hdrs);

    /* Trailers-only: passes with grpc-status in the headers. */
    grpc_web_reset_response(g);
    hdr_add(&m.hdrs, HDR_LIT(":status"), HDR_LIT("200"));
    hdr_add(&m.hdrs, HDR_LIT("content-type"), HDR_LIT("application/grpc"));
    hdr_add(&m.hdrs, HDR_LIT("grpc-status"), HDR_LIT("7"));
    m.end = 1;
    CHECK(grpc_web_head(g, &m, &wait) == NU_OK && !wait && g->resp == GRPC_WEB_RESP_FRAMES);
    CHECK_STR(get(&m.hdrs, "grpc-status"), "7");
    hdr_clear(&m.hdrs);

    /* A headers-only non-gRPC reply (Envoy's 404 for no route) passes as it is. */
    grpc_web_reset_response(g);
    hdr_add(&m.hdrs, HDR_LIT(":status"), HDR_LIT("404"));
    CHECK(grpc_web_head(g, &m, &wait) == NU_OK && !wait);
    CHECK_STR(get(&m.hdrs, ":status"), "404");
    CHECK(!get(&m.hdrs, "grpc-status"));
    CHECK_STR(get(&m.hdrs, "content-type"), "application/grpc-web+proto");
    hdr_clear(&m.hdrs);

    /* A non-gRPC answer with a body: it waits for the body, which becomes grpc-message. */
    grpc_web_reset_response(g);
    m.end = 0;
    hdr_add(&m.hdrs, HDR_LIT(":status"), HDR_LIT("503"));
    hdr_add(&m.hdrs, HDR_LIT("content-type"), HDR_LIT("text/plain"));
    hdr_add(&m.hdrs, HDR_LIT("content-length"), HDR_LIT("9"));
    CHECK(grpc_web_head(g, &m, &wait) == NU_OK && wait && g->resp == GRPC_WEB_RESP_COLLECT);
    CHECK(grpc_web_collect(g, (const uint8_t *)"no way\n", 7) == NU_OK);
    CHECK(grpc_web_collect(g, (const uint8_t *)"100%", 4) == NU_OK);
    m.end = 1;
    CHECK(grpc_web_head(g, &m, &wait) == NU_OK && !wait && g->resp == GRPC_WEB_RESP_PASS);
    CHECK_STR(get(&m.hdrs, ":status"), "503"); /* Envoy keeps the HTTP status */
    CHECK_STR(get(&m.hdrs, "grpc-status"), "14");
    CHECK_STR(get(&m.hdrs, "grpc-message"), "no way%0A100%25");
    CHECK_STR(get(&m.hdrs, "content-length"), "0");
    hdr_clear(&m.hdrs);

    /* A local reply (body already queued, ended): translated at once; the body is gone. */
    grpc_web_reset_response(g);
    hdr_add(&m.hdrs, HDR_LIT(":status"), HDR_LIT("400"));
    chunkq_append(&m.body, (const uint8_t *)"Bad gRPC-web request, invalid base64 data.", 42);
    CHECK(grpc_web_head(g, &m, &wait) == NU_OK && !wait);
    CHECK(m.body.bytes == 0);
    CHECK_STR(get(&m.hdrs, "grpc-status"), "13");
    CHECK_STR(get(&m.hdrs, "grpc-message"), "Bad gRPC-web request, invalid base64 data.");
    hdr_clear(&m.hdrs);

    /* The collected message is bounded. */
    grpc_web_reset_response(g);
    g->resp = GRPC_WEB_RESP_COLLECT;
    static uint8_t big[20000];
    memset(big, 'x', sizeof big);
    CHECK(grpc_web_collect(g, big, sizeof big) == NU_OK);
    CHECK(buf_size(&g->collect) == GRPC_WEB_MESSAGE_LIMIT);
    grpc_web_free(g);
}

int main(void)
{
    test_kinds();
    test_request_headers();
    test_request_base64();
    test_request_frames();
    test_trailer_frame();
    test_response_frames();
    test_response_heads();
    CHECK_DONE();
}
