/* Unit tests for the HTTP/2 abuse budgets (csrc/h2_guard.c) with a made-up
 * clock: each budget holds at its limit, breaks one past it, and forgets in
 * the next window; what a legitimate client does never breaks one. */
#include "../../csrc/h2_guard.c"
#include "check.h"

#include <string.h>

enum { DATA = 0, HEADERS = 1, PRIORITY = 2, RST = 3, SETTINGS = 4, PING = 6, WU = 8, CONT = 9 };
enum { END_STREAM = 1, END_HEADERS = 4 };

/* n frames at now; returns the first verdict that is not NONE (or NONE), and how many went before it. */
static int flood(struct h2_guard *g, double now, uint8_t type, uint8_t flags, uint32_t len, int empty, int n,
                 int *before)
{
    for (int i = 0; i < n; i++) {
        int v = h2_guard_frame(g, now, type, flags, len, empty);
        if (v != H2_ABUSE_NONE) {
            *before = i;
            return v;
        }
    }
    *before = n;
    return H2_ABUSE_NONE;
}

static void test_rates(void)
{
    static const struct {
        uint8_t type, flags;
        uint32_t len;
        int empty, max, kind;
    } cases[] = {
        {SETTINGS, 0, 6, 0, H2G_MAX_SETTINGS, H2_ABUSE_SETTINGS},
        {SETTINGS, 1, 0, 1, H2G_MAX_SETTINGS, H2_ABUSE_SETTINGS}, /* ACKs count too */
        {PING, 0, 8, 0, H2G_MAX_PINGS, H2_ABUSE_PING},
        {DATA, 0, 0, 1, H2G_MAX_EMPTY_DATA, H2_ABUSE_EMPTY_DATA},
        {DATA, 0x8, 10, 1, H2G_MAX_EMPTY_DATA, H2_ABUSE_EMPTY_DATA}, /* padding only */
        {PRIORITY, 0, 5, 0, H2G_MAX_PRIORITY, H2_ABUSE_PRIORITY},
        {WU, 0, 4, 0, H2G_MAX_WINDOW_UPDATES, H2_ABUSE_WINDOW_UPDATE},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct h2_guard g;
        int before;
        h2_guard_init(&g, 60 * 1024, 100.0);
        /* the budget itself is allowed, spread over the window */
        for (int i = 0; i < cases[c].max; i++)
            CHECK(h2_guard_frame(&g, 100.0 + 0.9 * i / cases[c].max, cases[c].type, cases[c].flags, cases[c].len,
                                 cases[c].empty) == H2_ABUSE_NONE);
        /* one more within the same second breaks it */
        CHECK(flood(&g, 100.95, cases[c].type, cases[c].flags, cases[c].len, cases[c].empty, 1, &before) ==
              cases[c].kind);
        /* a new window starts from zero */
        h2_guard_init(&g, 60 * 1024, 0);
        CHECK(flood(&g, 0.5, cases[c].type, cases[c].flags, cases[c].len, cases[c].empty, cases[c].max, &before) ==
              H2_ABUSE_NONE);
        CHECK(flood(&g, 1.6, cases[c].type, cases[c].flags, cases[c].len, cases[c].empty, cases[c].max, &before) ==
              H2_ABUSE_NONE);
        CHECK(flood(&g, 1.7, cases[c].type, cases[c].flags, cases[c].len, cases[c].empty, 1, &before) ==
              cases[c].kind);
        char d[200];
        h2_guard_describe(&g, cases[c].kind, d, sizeof d);
        CHECK(strstr(d, "within 1 s") != NULL);
    }
}

static void test_not_abuse(void)
{
    struct h2_guard g;
    int before;
    h2_guard_init(&g, 60 * 1024, 0);
    /* DATA with bytes, and an empty DATA that ends the stream, are never counted */
    CHECK(flood(&g, 0, DATA, 0, 100, 0, 10000, &before) == H2_ABUSE_NONE);
    CHECK(flood(&g, 0, DATA, END_STREAM, 0, 1, 10000, &before) == H2_ABUSE_NONE);
    /* unknown frame types, RST_STREAM and HEADERS are not frame budgets */
    CHECK(flood(&g, 0, 0xf0, 0, 3, 0, 10000, &before) == H2_ABUSE_NONE);
    CHECK(flood(&g, 0, RST, 0, 4, 0, 10000, &before) == H2_ABUSE_NONE);
    /* A downloading client: a BDP PING and two WINDOW_UPDATEs after each of
     * our DATA frames, thousands a second, never count. */
    for (int i = 0; i < 20000; i++) {
        h2_guard_data_sent(&g);
        CHECK(h2_guard_frame(&g, i * 0.0001, PING, 0, 8, 0) == H2_ABUSE_NONE);
        CHECK(h2_guard_frame(&g, i * 0.0001, WU, 0, 4, 0) == H2_ABUSE_NONE);
        CHECK(h2_guard_frame(&g, i * 0.0001, WU, 0, 4, 0) == H2_ABUSE_NONE);
    }
    CHECK(g.ping.n == 0 && g.window_update.n == 0);
    /* saved-up credit is capped: a flood after a download is still a flood */
    h2_guard_init(&g, 60 * 1024, 0);
    for (int i = 0; i < 10000; i++)
        h2_guard_data_sent(&g);
    CHECK(flood(&g, 0.1, WU, 0, 4, 0, 5000, &before) == H2_ABUSE_WINDOW_UPDATE);
    CHECK(before == H2G_WU_CREDIT_MAX + H2G_MAX_WINDOW_UPDATES);
    /* a SETTINGS frame with too many entries breaks the budget at once */
    h2_guard_init(&g, 60 * 1024, 0);
    CHECK(h2_guard_frame(&g, 0, SETTINGS, 0, 6 * H2G_MAX_SETTINGS_ENTRIES, 0) == H2_ABUSE_NONE);
    CHECK(h2_guard_frame(&g, 0, SETTINGS, 0, 6 * (H2G_MAX_SETTINGS_ENTRIES + 1), 0) == H2_ABUSE_SETTINGS);
}

static void test_continuation(void)
{
    struct h2_guard g;
    int before;
    CHECK(h2g_max_continuations(60 * 1024) == 8);
    CHECK(h2g_max_continuations(1024 * 1024) == 128);
    h2_guard_init(&g, 60 * 1024, 0);
    CHECK(h2_guard_frame(&g, 0, HEADERS, 0, 16384, 0) == H2_ABUSE_NONE);
    CHECK(flood(&g, 0, CONT, 0, 16384, 0, 100, &before) == H2_ABUSE_CONTINUATION && before == 8);
    /* each header block starts its own count */
    h2_guard_init(&g, 60 * 1024, 0);
    for (int b = 0; b < 100; b++) {
        CHECK(h2_guard_frame(&g, 0, HEADERS, 0, 16384, 0) == H2_ABUSE_NONE);
        CHECK(flood(&g, 0, CONT, 0, 16384, 0, 7, &before) == H2_ABUSE_NONE);
        CHECK(h2_guard_frame(&g, 0, CONT, END_HEADERS, 10, 0) == H2_ABUSE_NONE);
        CHECK(g.blk_wire == 8 * 16384 + 10);
    }
    /* empty CONTINUATIONs make no progress: a third one is too many */
    h2_guard_init(&g, 60 * 1024, 0);
    CHECK(h2_guard_frame(&g, 0, HEADERS, 0, 10, 0) == H2_ABUSE_NONE);
    CHECK(flood(&g, 0, CONT, 0, 0, 0, 10, &before) == H2_ABUSE_CONTINUATION && before == 2);
}

static void test_rapid_reset(void)
{
    struct h2_guard g;
    h2_guard_init(&g, 60 * 1024, 0);
    /* open-and-reset in a loop */
    int32_t id = 1;
    int tripped_at = -1;
    for (int i = 0; i < 1000 && tripped_at < 0; i++, id += 2) {
        double now = i * 0.001;
        h2_guard_stream_open(&g, now, id);
        if (h2_guard_reset(&g, now, id, 0) != H2_ABUSE_NONE)
            tripped_at = i;
        h2_guard_stream_end(&g, now);
    }
    CHECK(tripped_at == H2G_MAX_RAPID_RESETS);

    /* a busy client: 2000 streams a second, 10 % cancelled early: no */
    h2_guard_init(&g, 60 * 1024, 0);
    id = 1;
    for (int i = 0; i < 20000; i++, id += 2) {
        double now = i * 0.0005;
        h2_guard_stream_open(&g, now, id);
        if (i % 10 == 0)
            CHECK(h2_guard_reset(&g, now, id, 0) == H2_ABUSE_NONE);
        h2_guard_stream_end(&g, now);
    }
    /* resets after the response ended, and of streams older than ~2 s, are not premature */
    h2_guard_init(&g, 60 * 1024, 0);
    for (int i = 0; i < 500; i++)
        h2_guard_stream_open(&g, 0, 1 + 2 * i);
    for (int i = 0; i < 500; i++) {
        CHECK(h2_guard_reset(&g, 2.5, 1 + 2 * i, 0) == H2_ABUSE_NONE);
        h2_guard_stream_end(&g, 2.5);
    }
    for (int i = 0; i < 500; i++) {
        h2_guard_stream_open(&g, 3.0, 1001 + 2 * i);
        CHECK(h2_guard_reset(&g, 3.0, 1001 + 2 * i, 1) == H2_ABUSE_NONE);
    }
    /* young: opened in this or the previous second */
    h2_guard_init(&g, 60 * 1024, 0);
    h2_guard_stream_open(&g, 0.9, 1);
    h2_guard_stream_open(&g, 1.5, 3);
    CHECK(g.floor == 0);
    h2_guard_stream_open(&g, 2.6, 5);
    CHECK(g.floor == 1);
}

static void test_hpack_bomb(void)
{
    struct h2_guard g;
    h2_guard_init(&g, 60 * 1024, 0);
    /* one 16 KiB HEADERS frame of 1-byte references to a 4 KiB entry */
    CHECK(h2_guard_frame(&g, 0, HEADERS, 0, 16384, 0) == H2_ABUSE_NONE);
    int v = H2_ABUSE_NONE, n = 0;
    for (; n < 16384 && v == H2_ABUSE_NONE; n++)
        v = h2_guard_field(&g, 1, 4000);
    CHECK(v == H2_ABUSE_HPACK_BOMB);
    CHECK(h2_guard_block_size(&g) > 64u * 16384 && n < 300);
    /* large but honest headers (literals, ratio ~1) are over the limit, not a bomb */
    h2_guard_init(&g, 60 * 1024, 0);
    CHECK(h2_guard_frame(&g, 0, HEADERS, 0, 16384, 0) == H2_ABUSE_NONE);
    for (int i = 0; i < 4; i++)
        CHECK(h2_guard_frame(&g, 0, CONT, i == 3 ? END_HEADERS : 0, 16384, 0) == H2_ABUSE_NONE);
    for (int i = 0; i < 80; i++)
        CHECK(h2_guard_field(&g, 10, 1000) == H2_ABUSE_NONE);
    CHECK(h2_guard_block_size(&g) > 60 * 1024);
    /* an indexed 2 KiB token in every request (ratio > 64, under the limit) is fine */
    for (int r = 0; r < 1000; r++) {
        CHECK(h2_guard_frame(&g, 0, HEADERS, END_HEADERS, 20, 0) == H2_ABUSE_NONE);
        CHECK(h2_guard_field(&g, 13, 2048) == H2_ABUSE_NONE);
        for (int i = 0; i < 8; i++)
            CHECK(h2_guard_field(&g, 10, 20) == H2_ABUSE_NONE);
    }
}

static void test_stall(void)
{
    struct h2g_stall st = {0};
    /* blocked with no progress: breaks at the limit, not before */
    CHECK(!h2_guard_stall(&st, 0, 1, 0, 100, 30));
    CHECK(!h2_guard_stall(&st, 29, 1, 50, 100, 30));
    CHECK(h2_guard_stall(&st, 30, 1, 99, 100, 30));
    /* enough progress starts a new period */
    st = (struct h2g_stall){0};
    CHECK(!h2_guard_stall(&st, 0, 1, 0, 100, 30));
    CHECK(!h2_guard_stall(&st, 20, 1, 100, 100, 30));
    CHECK(!h2_guard_stall(&st, 40, 1, 150, 100, 30));
    CHECK(h2_guard_stall(&st, 50, 1, 150, 100, 30));
    /* not blocked at one look: forgotten */
    st = (struct h2g_stall){0};
    CHECK(!h2_guard_stall(&st, 0, 1, 0, 100, 30));
    CHECK(!h2_guard_stall(&st, 20, 0, 0, 100, 30));
    CHECK(!h2_guard_stall(&st, 40, 1, 0, 100, 30));
    CHECK(!h2_guard_stall(&st, 60, 1, 0, 100, 30));
    CHECK(h2_guard_stall(&st, 70, 1, 0, 100, 30));
}

int main(void)
{
    for (int k = 0; k < H2_ABUSE_KINDS; k++)
        CHECK(h2_abuse_name(k)[0] != '\0');
    CHECK_STR(h2_abuse_name(H2_ABUSE_RAPID_RESET), "rapid_reset");
    CHECK_STR(h2_abuse_name(H2_ABUSE_NONE), "");
    test_rates();
    test_not_abuse();
    test_continuation();
    test_rapid_reset();
    test_hpack_bomb();
    test_stall();
    CHECK_DONE();
}
