/* Unit tests for the request-header timeout's view of the client's frames
 * (framer_step in csrc/h2s.c): fed whole, in pieces and byte by byte; and
 * where it stops and cuts when the abuse budgets (h2_guard.c) look on. */
#include "../../csrc/h2s.c"
#include "check.h"

/* The framer alone (no budgets): it reads all of p. */
static void framer_feed(struct h2s_framer *f, const uint8_t *p, size_t n)
{
    int abuse;
    framer_step(f, NULL, 0, p, n, &abuse);
}

static size_t frame(uint8_t *out, uint8_t type, uint8_t flags, uint32_t sid, const char *payload, size_t len)
{
    out[0] = (uint8_t)(len >> 16);
    out[1] = (uint8_t)(len >> 8);
    out[2] = (uint8_t)len;
    out[3] = type;
    out[4] = flags;
    out[5] = (uint8_t)(sid >> 24);
    out[6] = (uint8_t)(sid >> 16);
    out[7] = (uint8_t)(sid >> 8);
    out[8] = (uint8_t)sid;
    memcpy(out + 9, payload, len);
    return 9 + len;
}

static void fresh(struct h2s_framer *f)
{
    memset(f, 0, sizeof *f);
    f->preface_left = NGHTTP2_CLIENT_MAGIC_LEN;
}

static void feed_bytewise(struct h2s_framer *f, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        framer_feed(f, p + i, 1);
}

int main(void)
{
    static const char magic[] = NGHTTP2_CLIENT_MAGIC;
    uint8_t buf[512];
    struct h2s_framer f;

    /* The preface counts only with the SETTINGS frame after it, complete. */
    fresh(&f);
    size_t n = 0;
    memcpy(buf, magic, NGHTTP2_CLIENT_MAGIC_LEN);
    n += NGHTTP2_CLIENT_MAGIC_LEN;
    n += frame(buf + n, H2S_FRAME_SETTINGS, 0, 0, "\0\x3\0\0\0\x64", 6);
    framer_feed(&f, buf, 10);
    CHECK(!f.settings_done && f.preface_left == NGHTTP2_CLIENT_MAGIC_LEN - 10);
    framer_feed(&f, buf + 10, n - 11);
    CHECK(!f.settings_done && f.preface_left == 0);
    framer_feed(&f, buf + n - 1, 1);
    CHECK(f.settings_done && !f.in_block);

    /* The same, a byte at a time, with an empty SETTINGS. */
    fresh(&f);
    n = NGHTTP2_CLIENT_MAGIC_LEN;
    memcpy(buf, magic, n);
    n += frame(buf + n, H2S_FRAME_SETTINGS, 0, 0, "", 0);
    feed_bytewise(&f, buf, n - 1);
    CHECK(!f.settings_done);
    feed_bytewise(&f, buf + n - 1, 1);
    CHECK(f.settings_done);

    /* HEADERS without END_HEADERS opens a block; CONTINUATIONs keep it open
     * until the one with END_HEADERS is complete, its last byte included. */
    n = frame(buf, H2S_FRAME_HEADERS, 0, 3, "abcde", 5);
    framer_feed(&f, buf, 9); /* the frame header alone is enough */
    CHECK(f.in_block && f.block_stream == 3);
    framer_feed(&f, buf + 9, n - 9);
    CHECK(f.in_block);
    n = frame(buf, H2S_FRAME_CONTINUATION, 0, 3, "fg", 2);
    n += frame(buf + n, H2S_FRAME_CONTINUATION, H2S_FLAG_END_HEADERS, 3, "hij", 3);
    feed_bytewise(&f, buf, n - 1);
    CHECK(f.in_block && f.last_complete == 0);
    framer_feed(&f, buf + n - 1, 1);
    CHECK(!f.in_block && f.last_complete == 3);

    /* A HEADERS frame with END_HEADERS is a block until its payload is in. */
    n = frame(buf, H2S_FRAME_HEADERS, H2S_FLAG_END_HEADERS | 0x1, 5, "0123456789", 10);
    framer_feed(&f, buf, 12);
    CHECK(f.in_block && f.block_stream == 5);
    framer_feed(&f, buf + 12, n - 12);
    CHECK(!f.in_block && f.last_complete == 5);

    /* Trailers of an older stream do not lower last_complete. */
    n = frame(buf, H2S_FRAME_HEADERS, H2S_FLAG_END_HEADERS, 3, "t", 1);
    framer_feed(&f, buf, n);
    CHECK(!f.in_block && f.block_stream == 3 && f.last_complete == 5);

    /* Other frames (DATA, WINDOW_UPDATE) leave the block state alone,
     * and several frames in one read are all seen; the reserved bit of the stream id is ignored. */
    n = frame(buf, 0x0, 0x1, 5, "body", 4);
    n += frame(buf + n, 0x8, 0, 0, "\0\0\x10\0", 4);
    n += frame(buf + n, H2S_FRAME_HEADERS, 0, 0x80000007u, "x", 1);
    framer_feed(&f, buf, n);
    CHECK(f.in_block && f.block_stream == 7 && f.head_len == 0);
    n = frame(buf, H2S_FRAME_CONTINUATION, H2S_FLAG_END_HEADERS, 7, "", 0);
    n += frame(buf + n, 0x0, 0, 7, "more", 4);
    framer_feed(&f, buf, n);
    CHECK(!f.in_block && f.last_complete == 7);

    /* With the budgets: a flood is cut before the frame that breaks one, so
     * nghttp2 never sees it; the preface and earlier frames pass. */
    static uint8_t big[24 + 9 + 200 * 17];
    struct h2_guard g;
    int abuse;
    h2_guard_init(&g, 60 * 1024, 0);
    fresh(&f);
    n = NGHTTP2_CLIENT_MAGIC_LEN;
    memcpy(big, magic, n);
    n += frame(big + n, H2S_FRAME_SETTINGS, 0, 0, "", 0);
    for (int i = 0; i < 200; i++)
        n += frame(big + n, 0x6, 0, 0, "12345678", 8);
    size_t k = framer_step(&f, &g, 0, big, n, &abuse);
    CHECK(abuse == H2_ABUSE_PING && k == 24 + 9 + H2G_MAX_PINGS * 17);
    /* the same, a byte at a time: the cut is where that frame began, or 0 when it began in an earlier read */
    h2_guard_init(&g, 60 * 1024, 0);
    fresh(&f);
    size_t at = 0;
    abuse = H2_ABUSE_NONE;
    for (; at < n && abuse == H2_ABUSE_NONE; at++)
        k = framer_step(&f, &g, 0, big + at, 1, &abuse);
    CHECK(abuse == H2_ABUSE_PING && k == 0 && at == 24 + 9 + H2G_MAX_PINGS * 17 + 9);

    /* A header block frame ends a step (nghttp2 decodes it while the guard
     * knows its wire size); other frames do not. */
    h2_guard_init(&g, 60 * 1024, 0);
    fresh(&f);
    f.preface_left = 0;
    n = frame(buf, 0x8, 0, 0, "\0\0\x10\0", 4);
    n += frame(buf + n, H2S_FRAME_HEADERS, H2S_FLAG_END_HEADERS, 1, "abcde", 5);
    size_t first = n;
    n += frame(buf + n, 0x0, 0, 1, "body", 4);
    k = framer_step(&f, &g, 0, buf, n, &abuse);
    CHECK(abuse == H2_ABUSE_NONE && k == first && g.blk_wire == 5 && f.last_complete == 1);
    k = framer_step(&f, &g, 0, buf + first, n - first, &abuse);
    CHECK(abuse == H2_ABUSE_NONE && k == n - first);

    /* DATA of padding only counts as empty once its pad length byte is in */
    h2_guard_init(&g, 60 * 1024, 0);
    fresh(&f);
    f.preface_left = 0;
    for (int i = 0; i < H2G_MAX_EMPTY_DATA; i++) {
        n = frame(buf, 0x0, H2S_FLAG_PADDED, 1, "\x04\0\0\0\0", 5);
        CHECK(framer_step(&f, &g, 0, buf, n, &abuse) == n && abuse == H2_ABUSE_NONE);
    }
    n = frame(buf, 0x0, H2S_FLAG_PADDED, 1, "\x03x\0\0\0", 5); /* one data byte: not empty */
    CHECK(framer_step(&f, &g, 0, buf, n, &abuse) == n && abuse == H2_ABUSE_NONE);
    n = frame(buf, 0x0, H2S_FLAG_PADDED, 1, "\x04\0\0\0\0", 5);
    CHECK(framer_step(&f, &g, 0, buf, 9, &abuse) == 9 && abuse == H2_ABUSE_NONE);
    CHECK(framer_step(&f, &g, 0, buf + 9, n - 9, &abuse) == 0 && abuse == H2_ABUSE_EMPTY_DATA);

    CHECK_DONE();
}
