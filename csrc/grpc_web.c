/* gRPC-Web translation (behaviour notes §6, Envoy's grpc_web filter).
 *
 * Text responses: Envoy decodes whole gRPC frames and base64-encodes each one
 * on its own, so '=' padding may appear between frames. Base64 maps every 3
 * input bytes to 4 characters independently of what follows, so encoding a
 * frame in 3-byte groups as its bytes arrive, and padding only the group left
 * at the frame's end, gives exactly Envoy's bytes without holding a frame:
 * nothing is buffered but the frame prefix being parsed (< 5 bytes) and the
 * last incomplete group (< 3 bytes). A huge frame streams in both modes. */
#include "grpc_web.h"
#include "grpc.h"
#include "nuncio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int grpc_web_kind(const char *ct, size_t n)
{
    static const struct {
        const char *s;
        int kind;
    } types[] = {
        {"application/grpc-web", GRPC_WEB_BINARY},
        {"application/grpc-web+proto", GRPC_WEB_BINARY},
        {"application/grpc-web-text", GRPC_WEB_TEXT},
        {"application/grpc-web-text+proto", GRPC_WEB_TEXT},
    };
    if (!ct)
        return GRPC_WEB_NONE;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strlen(types[i].s) == n && memcmp(types[i].s, ct, n) == 0) /* Envoy: exact, case-sensitive */
            return types[i].kind;
    return GRPC_WEB_NONE;
}

struct grpc_web *grpc_web_new(int kind, const char *accept, size_t alen)
{
    struct grpc_web *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->text_request = kind == GRPC_WEB_TEXT;
    /* Envoy answers in text only when `accept` asks for it, whatever the request's own type. */
    g->text_response = grpc_web_kind(accept, alen) == GRPC_WEB_TEXT;
    g->status_override = -1;
    return g;
}

void grpc_web_free(struct grpc_web *g)
{
    if (!g)
        return;
    free(g->scratch);
    buf_free(&g->collect);
    free(g);
}

int grpc_web_request_headers(struct hdr_map *h)
{
    int rc = NU_OK;
    /* The length of the base64 or web body, not of what the upstream gets. */
    hdr_remove(h, HDR_LIT("content-length"));
    rc |= hdr_set(h, HDR_LIT("content-type"), HDR_LIT("application/grpc"));
    rc |= hdr_set(h, HDR_LIT("te"), HDR_LIT("trailers"));
    if (!hdr_get(h, HDR_LIT("grpc-accept-encoding"), NULL))
        rc |= hdr_add(h, HDR_LIT("grpc-accept-encoding"), HDR_LIT("identity,deflate,gzip"));
    return rc ? NU_ERR_NOMEM : NU_OK;
}

/* ------------------------------------------------------------ framing */

/* Consumes up to n bytes of the current gRPC frame; returns how many, and
 * sets *ended when they completed it. */
static size_t framer_step(struct grpc_web_framer *f, const uint8_t *p, size_t n, int *ended)
{
    *ended = 0;
    if (f->hdr_n < 5) {
        size_t k = 5u - f->hdr_n;
        if (k > n)
            k = n;
        memcpy(f->hdr + f->hdr_n, p, k);
        f->hdr_n = (uint8_t)(f->hdr_n + k);
        if (f->hdr_n == 5) {
            f->left = (uint32_t)f->hdr[1] << 24 | (uint32_t)f->hdr[2] << 16 | (uint32_t)f->hdr[3] << 8 | f->hdr[4];
            if (f->left == 0) {
                *ended = 1;
                f->hdr_n = 0;
            }
        }
        return k;
    }
    size_t k = f->left < n ? f->left : n;
    f->left -= (uint32_t)k;
    if (f->left == 0) {
        *ended = 1;
        f->hdr_n = 0;
    }
    return k;
}

static int framer_mid_frame(const struct grpc_web_framer *f)
{
    return f->hdr_n != 0;
}

/* ------------------------------------------------------------ request */

static int b64val(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes one 4-character group into out; returns the bytes written, or -1.
 * Padding may only end a group ("xx==" or "xxx="), and the bits it leaves
 * unused must be zero (canonical base64, as Envoy's decoder requires). */
static int decode_group(const uint8_t *s, uint8_t *out)
{
    int a = b64val(s[0]), b = b64val(s[1]), c = b64val(s[2]), d = b64val(s[3]);
    if (a < 0 || b < 0)
        return -1;
    if (s[2] == '=') {
        if (s[3] != '=' || (b & 0x0f))
            return -1;
        out[0] = (uint8_t)(a << 2 | b >> 4);
        return 1;
    }
    if (c < 0)
        return -1;
    if (s[3] == '=') {
        if (c & 0x03)
            return -1;
        out[0] = (uint8_t)(a << 2 | b >> 4);
        out[1] = (uint8_t)((b & 0x0f) << 4 | c >> 2);
        return 2;
    }
    if (d < 0)
        return -1;
    out[0] = (uint8_t)(a << 2 | b >> 4);
    out[1] = (uint8_t)((b & 0x0f) << 4 | c >> 2);
    out[2] = (uint8_t)((c & 0x03) << 6 | d);
    return 3;
}

static int scratch_reserve(struct grpc_web *g, size_t n)
{
    if (n <= g->scratch_cap)
        return NU_OK;
    uint8_t *p = realloc(g->scratch, n);
    if (!p)
        return NU_ERR_NOMEM;
    g->scratch = p;
    g->scratch_cap = n;
    return NU_OK;
}

static void check_frames(struct grpc_web *g, const uint8_t *p, size_t n)
{
    int ended;
    while (n > 0) {
        size_t k = framer_step(&g->req_frames, p, n, &ended);
        p += k;
        n -= k;
    }
}

int grpc_web_request_data(struct grpc_web *g, const uint8_t *p, size_t n, const uint8_t **out, size_t *outn)
{
    *out = p;
    *outn = 0;
    if (g->failed)
        return NU_ERR_PROTO;
    if (!g->text_request) {
        check_frames(g, p, n);
        *outn = n;
        return NU_OK;
    }
    if (scratch_reserve(g, (g->dec_n + n) / 4 * 3 + 3) != NU_OK)
        return NU_ERR_NOMEM;
    size_t o = 0;
    /* Complete the group a previous chunk split. */
    while (g->dec_n > 0 && n > 0) {
        g->dec_left[g->dec_n++] = *p++;
        n--;
        if (g->dec_n == 4) {
            int k = decode_group(g->dec_left, g->scratch + o);
            if (k < 0)
                goto bad;
            o += (size_t)k;
            g->dec_n = 0;
        }
    }
    for (; n >= 4; p += 4, n -= 4) {
        int k = decode_group(p, g->scratch + o);
        if (k < 0)
            goto bad;
        o += (size_t)k;
    }
    memcpy(g->dec_left + g->dec_n, p, n); /* n < 4 here; dec_n is 0 unless the input ran out above */
    g->dec_n = (uint8_t)(g->dec_n + n);
    check_frames(g, g->scratch, o);
    *out = g->scratch;
    *outn = o;
    return NU_OK;
bad:
    g->failed = 1;
    return NU_ERR_PROTO;
}

int grpc_web_request_end(struct grpc_web *g)
{
    if (g->failed || g->dec_n != 0) {
        g->failed = 1;
        return NU_ERR_PROTO;
    }
    if (framer_mid_frame(&g->req_frames))
        return NU_ERR_LIMIT;
    return NU_OK;
}

/* ------------------------------------------------------------ response */

static int has_grpc_content_type(const struct hdr_map *h)
{
    size_t n;
    const char *ct = hdr_get(h, HDR_LIT("content-type"), &n);
    return ct && grpc_is_grpc_content_type(ct, n);
}

/* Envoy's hasProtoEncodedGrpcWebContentType: application/grpc-web or
 * application/grpc-web+proto, parameters ignored, case-insensitive. */
static int has_grpc_web_proto_type(const struct hdr_map *h)
{
    size_t n;
    const char *ct = hdr_get(h, HDR_LIT("content-type"), &n);
    if (!ct)
        return 0;
    const char *semi = memchr(ct, ';', n);
    size_t l = semi ? (size_t)(semi - ct) : n;
    while (l > 0 && (ct[l - 1] == ' ' || ct[l - 1] == '\t'))
        l--;
    return (l == 20 && strncasecmp(ct, "application/grpc-web", 20) == 0) ||
           (l == 26 && strncasecmp(ct, "application/grpc-web+proto", 26) == 0);
}

static int status_200(const struct hdr_map *h)
{
    size_t n;
    const char *s = hdr_get(h, HDR_LIT(":status"), &n);
    return s && n == 3 && memcmp(s, "200", 3) == 0;
}

int grpc_web_response_headers(struct grpc_web *g, struct hdr_map *h, int headers_only)
{
    /* Envoy's isGrpcResponseHeaders: trailers-only needs grpc-status; otherwise 200 + a gRPC type. */
    int grpc =
        headers_only ? hdr_get(h, HDR_LIT("grpc-status"), NULL) != NULL : status_200(h) && has_grpc_content_type(h);
    int needs = !grpc && !(status_200(h) && has_grpc_web_proto_type(h));
    hdr_remove(h, HDR_LIT("content-length")); /* the body changes length */
    const char *ct = g->text_response ? "application/grpc-web-text+proto" : "application/grpc-web+proto";
    if (hdr_set(h, HDR_LIT("content-type"), ct, strlen(ct)) != NU_OK)
        return NU_ERR_NOMEM;
    /* A headers-only reply passes as it is, even when it is not gRPC (Envoy). */
    g->resp = needs && !headers_only ? GRPC_WEB_RESP_COLLECT : GRPC_WEB_RESP_FRAMES;
    return NU_OK;
}

/* Moves what m->body holds through the translation (it was queued before
 * the head was translated). */
static int requeue(struct grpc_web *g, struct msg *m)
{
    struct chunkq raw = m->body; /* owned here until cleared below */
    memset(&m->body, 0, sizeof m->body);
    int rc = NU_OK;
    for (struct chunk *c = raw.head; c && rc == NU_OK; c = c->next)
        rc = g->resp == GRPC_WEB_RESP_COLLECT ? grpc_web_collect(g, c->data + c->off, c->len - c->off)
                                              : grpc_web_response_data(g, c->data + c->off, c->len - c->off, &m->body);
    if (g->resp == GRPC_WEB_RESP_FRAMES)
        grpc_web_count_credited(g, raw.bytes); /* held bytes were credited when they arrived */
    chunkq_clear(&raw);
    return rc;
}

int grpc_web_head(struct grpc_web *g, struct msg *m, int *wait)
{
    int rc = NU_OK;
    *wait = 0;
    if (g->resp == GRPC_WEB_RESP_UNDECIDED) {
        rc = grpc_web_response_headers(g, &m->hdrs, m->end && m->body.bytes == 0 && m->trailers.n == 0);
        if (rc == NU_OK && m->body.bytes)
            rc = requeue(g, m);
    }
    if (rc == NU_OK && g->resp == GRPC_WEB_RESP_COLLECT) {
        if (!m->end) {
            *wait = 1;
            return NU_OK;
        }
        rc = grpc_web_collected_headers(g, &m->hdrs);
        g->resp = GRPC_WEB_RESP_PASS;
    }
    return rc;
}

int grpc_web_collect(struct grpc_web *g, const uint8_t *p, size_t n)
{
    size_t room = GRPC_WEB_MESSAGE_LIMIT - buf_size(&g->collect);
    if (n > room)
        n = room;
    return n ? buf_append(&g->collect, p, n) : NU_OK;
}

int grpc_web_collected_headers(struct grpc_web *g, struct hdr_map *h)
{
    size_t sl;
    const char *s = hdr_get(h, HDR_LIT(":status"), &sl);
    int http = s && sl == 3 ? atoi(s) : 0;
    size_t n = buf_size(&g->collect);
    char *enc = malloc(3 * n + 1);
    if (!enc)
        return NU_ERR_NOMEM;
    /* Nothing collected (an empty body): collect.data is NULL, and NULL + 0 is undefined. */
    const char *body = n ? (const char *)g->collect.data + g->collect.off : "";
    size_t el = grpc_message_encode(body, n, enc, 3 * n);
    char num[16];
    int nl =
        snprintf(num, sizeof num, "%d", g->status_override >= 0 ? g->status_override : grpc_status_from_http(http));
    int rc = hdr_set(h, HDR_LIT("grpc-message"), enc, el);
    rc |= hdr_set(h, HDR_LIT("grpc-status"), num, (size_t)nl);
    rc |= hdr_set(h, HDR_LIT("content-length"), HDR_LIT("0"));
    free(enc);
    buf_free(&g->collect);
    return rc ? NU_ERR_NOMEM : NU_OK;
}

/* Base64 output gathered in a small block, appended to the queue as it fills. */
struct b64out {
    struct chunkq *q;
    uint8_t block[4096];
    size_t n;
    int rc;
};

/* Heap-allocated: it holds a staging buffer too big for the stack of a codec callback. */
static struct b64out *b64out_new(struct chunkq *out)
{
    struct b64out *o = malloc(sizeof *o);
    if (o) {
        o->q = out;
        o->n = 0;
        o->rc = NU_OK;
    }
    return o;
}

static void out_flush(struct b64out *o)
{
    if (o->n && o->rc == NU_OK)
        o->rc = chunkq_append(o->q, o->block, o->n);
    o->n = 0;
}

static void out_group(struct b64out *o, const uint8_t *s, size_t k)
{
    if (o->n + 4 > sizeof o->block)
        out_flush(o);
    uint32_t v = (uint32_t)s[0] << 16 | (k > 1 ? (uint32_t)s[1] << 8 : 0) | (k > 2 ? s[2] : 0);
    uint8_t *d = o->block + o->n;
    d[0] = (uint8_t)b64chars[v >> 18 & 63];
    d[1] = (uint8_t)b64chars[v >> 12 & 63];
    d[2] = k > 1 ? (uint8_t)b64chars[v >> 6 & 63] : '=';
    d[3] = k > 2 ? (uint8_t)b64chars[v & 63] : '=';
    o->n += 4;
}

/* Encodes bytes of the current frame in 3-byte groups; fewer than 3 wait in g. */
static void encode_bytes(struct grpc_web *g, struct b64out *o, const uint8_t *p, size_t n)
{
    while (g->enc_n > 0 && n > 0) {
        g->enc_left[g->enc_n++] = *p++;
        n--;
        if (g->enc_n == 3) {
            out_group(o, g->enc_left, 3);
            g->enc_n = 0;
        }
    }
    for (; n >= 3; p += 3, n -= 3)
        out_group(o, p, 3);
    memcpy(g->enc_left + g->enc_n, p, n);
    g->enc_n = (uint8_t)(g->enc_n + n);
}

/* The frame ended: its last group goes out padded. */
static void encode_frame_end(struct grpc_web *g, struct b64out *o)
{
    if (g->enc_n)
        out_group(o, g->enc_left, g->enc_n);
    g->enc_n = 0;
}

int grpc_web_response_data(struct grpc_web *g, const uint8_t *p, size_t n, struct chunkq *out)
{
    g->in += n;
    if (!g->text_response) {
        g->out += n;
        return chunkq_append(out, p, n);
    }
    struct b64out *o = b64out_new(out);
    if (!o)
        return NU_ERR_NOMEM;
    size_t before = out->bytes;
    while (n > 0) {
        int ended;
        size_t k = framer_step(&g->resp_frames, p, n, &ended);
        encode_bytes(g, o, p, k);
        if (ended)
            encode_frame_end(g, o);
        p += k;
        n -= k;
    }
    out_flush(o);
    int rc = o->rc;
    free(o);
    g->out += out->bytes - before;
    return rc;
}

static int b64_append(const uint8_t *p, size_t n, struct chunkq *out)
{
    struct b64out *o = b64out_new(out);
    if (!o)
        return NU_ERR_NOMEM;
    for (; n >= 3; p += 3, n -= 3)
        out_group(o, p, 3);
    if (n)
        out_group(o, p, n);
    out_flush(o);
    int rc = o->rc;
    free(o);
    return rc;
}

int grpc_web_trailer_frame(const struct hdr_map *t, struct buf *out)
{
    size_t len = 0;
    for (uint32_t i = 0; i < t->n; i++)
        len += t->v[i].nlen + 1 + t->v[i].vlen + 2;
    if (len > UINT32_MAX)
        return NU_ERR_LIMIT;
    uint8_t pre[5] = {0x80, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len};
    int rc = buf_append(out, pre, 5);
    for (uint32_t i = 0; i < t->n && rc == NU_OK; i++) {
        /* Envoy writes "key:value\r\n", no space after the colon. */
        rc |= buf_append(out, t->v[i].name, t->v[i].nlen);
        rc |= buf_append(out, ":", 1);
        rc |= buf_append(out, t->v[i].value, t->v[i].vlen);
        rc |= buf_append(out, "\r\n", 2);
    }
    return rc ? NU_ERR_NOMEM : NU_OK;
}

int grpc_web_response_end(struct grpc_web *g, struct hdr_map *trailers, struct chunkq *out)
{
    int rc = NU_OK;
    if (g->text_response && g->enc_n) {
        /* The upstream ended inside a frame: what arrived still goes out as
         * valid base64, the client sees the frame cut short. */
        struct b64out o1 = {.q = out};
        encode_frame_end(g, &o1);
        out_flush(&o1);
        rc = o1.rc;
    }
    if (rc != NU_OK || trailers->n == 0)
        return rc; /* no trailers, no trailer frame (Envoy's encodeTrailers never runs) */
    size_t sl;
    const char *s = hdr_get(trailers, HDR_LIT("grpc-status"), &sl);
    if (s)
        snprintf(g->status, sizeof g->status, "%.*s", (int)(sl < 11 ? sl : 11), s);
    struct buf frame = {0};
    rc = grpc_web_trailer_frame(trailers, &frame);
    if (rc == NU_OK)
        rc = g->text_response ? b64_append(frame.data + frame.off, buf_size(&frame), out)
                              : chunkq_append(out, frame.data + frame.off, buf_size(&frame));
    buf_free(&frame);
    if (rc == NU_OK)
        hdr_clear(trailers); /* now in the body */
    return rc;
}

size_t grpc_web_credit(struct grpc_web *g, size_t n)
{
    g->taken += n;
    uint64_t target;
    if (g->taken >= g->out)
        target = g->in;
    else /* the translation's ratio so far (4:3 for text, 1:1 binary) */
        target = (uint64_t)((double)g->in * (double)g->taken / (double)g->out);
    if (target <= g->credited)
        return 0;
    size_t k = (size_t)(target - g->credited);
    g->credited = target;
    return k;
}

void grpc_web_count_credited(struct grpc_web *g, size_t n)
{
    g->credited += n;
}

void grpc_web_reset_response(struct grpc_web *g)
{
    g->resp = GRPC_WEB_RESP_UNDECIDED;
    memset(&g->resp_frames, 0, sizeof g->resp_frames);
    g->enc_n = 0;
    buf_free(&g->collect);
    g->in = g->out = g->taken = g->credited = 0;
    g->status[0] = '\0';
    g->status_override = -1;
}
