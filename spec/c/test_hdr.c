/* Unit tests for the header map (csrc/hdr.c). */
#include "../../csrc/hdr.c"
#include "check.h"

static void test_add_get_case_insensitive(void)
{
    struct hdr_map m = {0};
    CHECK(hdr_add(&m, HDR_LIT("Content-Type"), HDR_LIT("application/grpc")) == NU_OK);
    size_t n = 0;
    const char *v = hdr_get(&m, HDR_LIT("content-type"), &n);
    CHECK(v && n == 16 && memcmp(v, "application/grpc", 16) == 0);
    /* names are stored lower-case, lookups fold case */
    CHECK_STR(m.v[0].name, "content-type");
    CHECK(hdr_get(&m, HDR_LIT("CONTENT-TYPE"), NULL) != NULL);
    CHECK(hdr_get(&m, HDR_LIT("content-typ"), NULL) == NULL);
    hdr_clear(&m);
}

static void test_multi_values_and_order(void)
{
    struct hdr_map m = {0};
    hdr_add(&m, HDR_LIT(":path"), HDR_LIT("/a"));
    hdr_add(&m, HDR_LIT("x-v"), HDR_LIT("1"));
    hdr_add(&m, HDR_LIT("y"), HDR_LIT("z"));
    hdr_add(&m, HDR_LIT("x-v"), HDR_LIT("2"));
    CHECK(hdr_count(&m, HDR_LIT("x-v")) == 2);
    CHECK(hdr_find(&m, HDR_LIT("x-v"), 0) == 1);
    CHECK(hdr_find(&m, HDR_LIT("x-v"), 1) == 3);
    CHECK(hdr_find(&m, HDR_LIT("x-v"), 2) == -1);
    /* set replaces the first and drops the rest, keeping the position */
    CHECK(hdr_set(&m, HDR_LIT("x-v"), HDR_LIT("3")) == NU_OK);
    CHECK(hdr_count(&m, HDR_LIT("x-v")) == 1);
    CHECK(m.n == 3);
    CHECK_STR(m.v[1].value, "3");
    CHECK_STR(m.v[2].name, "y");
    CHECK(m.bytes == strlen(":path/a") + strlen("x-v3") + strlen("yz"));
    hdr_clear(&m);
}

static void test_remove_and_set_absent(void)
{
    struct hdr_map m = {0};
    hdr_add(&m, HDR_LIT("a"), HDR_LIT("1"));
    hdr_add(&m, HDR_LIT("b"), HDR_LIT("2"));
    hdr_add(&m, HDR_LIT("a"), HDR_LIT("3"));
    CHECK(hdr_remove(&m, HDR_LIT("A")) == 2);
    CHECK(m.n == 1);
    CHECK(hdr_remove(&m, HDR_LIT("nope")) == 0);
    CHECK(hdr_set(&m, HDR_LIT("c"), HDR_LIT("4")) == NU_OK);
    CHECK(m.n == 2);
    CHECK_STR(hdr_get(&m, HDR_LIT("c"), NULL), "4");
    hdr_clear(&m);
    CHECK(m.n == 0 && m.v == NULL && m.bytes == 0);
}

static void test_growth(void)
{
    struct hdr_map m = {0};
    char name[32];
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(name, sizeof name, "h%d", i);
        CHECK(hdr_add(&m, name, (size_t)n, "v", 1) == NU_OK);
    }
    CHECK(m.n == 1000);
    CHECK(hdr_find(&m, HDR_LIT("h999"), 0) == 999);
    hdr_clear(&m);
}

static void test_binary_values(void)
{
    struct hdr_map m = {0};
    const char v[] = {'a', '\0', 'b'};
    hdr_add(&m, HDR_LIT("x-bin"), v, 3);
    size_t n;
    const char *got = hdr_get(&m, HDR_LIT("x-bin"), &n);
    CHECK(n == 3 && memcmp(got, v, 3) == 0);
    hdr_clear(&m);
}

/* Values read from the map itself, while the shared block regrows. */
static void test_self_alias_and_dead_bytes(void)
{
    struct hdr_map m = {0};
    char big[3000];
    memset(big, 'x', sizeof big);
    hdr_add(&m, HDR_LIT("a"), HDR_LIT("first"));
    hdr_add(&m, HDR_LIT("b"), HDR_LIT("second"));
    for (int i = 0; i < 40; i++) {
        size_t n = 0;
        const char *v = hdr_get(&m, HDR_LIT("a"), &n);
        CHECK(hdr_add(&m, HDR_LIT("c"), v, n) == NU_OK); /* v lives in the block that grows */
        CHECK(hdr_set(&m, m.v[1].name, m.v[1].nlen, big, sizeof big) == NU_OK);
    }
    CHECK(hdr_count(&m, HDR_LIT("c")) == 40);
    CHECK(hdr_count(&m, HDR_LIT("b")) == 1);
    CHECK_STR(hdr_get(&m, HDR_LIT("c"), NULL), "first");
    size_t n;
    const char *v = hdr_get(&m, HDR_LIT("b"), &n);
    CHECK(n == sizeof big && memcmp(v, big, n) == 0);
    /* a value set again and again does not grow the block without bound */
    for (int i = 0; i < 10000; i++)
        CHECK(hdr_set(&m, HDR_LIT("b"), big, (size_t)(i % 7) + 1) == NU_OK);
    CHECK(m.str_cap < 64 * 1024);
    CHECK(m.bytes == (1 + 5) + 40 * (1 + 5) + 1 + (size_t)(9999 % 7) + 1);
    hdr_clear(&m);
}

/* Names are folded eight bytes at a time, the last word overlapping the one
 * before: every byte value, at every position of every length. */
static void test_fold_every_byte(void)
{
    for (int c = 0; c < 256; c++) {
        for (size_t len = 1; len <= 19; len++) {
            for (size_t at = 0; at < len; at++) {
                char name[20], want[20];
                for (size_t i = 0; i < len; i++)
                    name[i] = (char)((i * 37 + 11) % 95 + 32);
                name[at] = (char)c;
                for (size_t i = 0; i < len; i++)
                    want[i] = (name[i] >= 'A' && name[i] <= 'Z') ? (char)(name[i] + 32) : name[i];
                struct hdr_map m = {0};
                CHECK(hdr_add(&m, name, len, "v", 1) == NU_OK);
                CHECK(memcmp(m.v[0].name, want, len) == 0);
                CHECK(hdr_find(&m, name, len, 0) == 0);
                hdr_clear(&m);
            }
        }
    }
}

/* Lookups compare words, the last overlapping the one before, or two halves
 * under eight bytes: a name that differs from the stored one in any single
 * byte is not it, and one that differs only in case is. */
static void test_names_differ_at_every_position(void)
{
    for (size_t len = 1; len <= 24; len++) {
        char name[25];
        for (size_t i = 0; i < len; i++)
            name[i] = (char)('a' + (i * 7) % 26);
        struct hdr_map m = {0};
        CHECK(hdr_add(&m, name, len, "v", 1) == NU_OK);
        for (size_t at = 0; at < len; at++) {
            char other[25];
            memcpy(other, name, len);
            other[at] = other[at] == 'z' ? 'y' : (char)(other[at] + 1);
            CHECK(hdr_find(&m, other, len, 0) == -1);
            memcpy(other, name, len);
            other[at] = (char)(other[at] - 32); /* upper case */
            CHECK(hdr_find(&m, other, len, 0) == 0);
        }
        hdr_clear(&m);
    }
}

/* Names longer than a word: compared eight bytes at a time, then the tail;
 * a difference in either part, or only in case, is seen. */
static void test_long_names(void)
{
    struct hdr_map m = {0};
    CHECK(hdr_add(&m, HDR_LIT("x-forwarded-proto"), HDR_LIT("https")) == NU_OK);
    CHECK(hdr_add(&m, HDR_LIT("x-forwarded-hosto"), HDR_LIT("h")) == NU_OK);
    CHECK(hdr_add(&m, HDR_LIT("y-forwarded-proto"), HDR_LIT("y")) == NU_OK);
    CHECK(hdr_find(&m, HDR_LIT("x-forwarded-proto"), 0) == 0);
    CHECK(hdr_find(&m, HDR_LIT("x-forwarded-hosto"), 0) == 1);
    CHECK(hdr_find(&m, HDR_LIT("y-forwarded-proto"), 0) == 2);
    CHECK(hdr_find(&m, HDR_LIT("X-Forwarded-Proto"), 0) == 0);
    CHECK(hdr_find(&m, HDR_LIT("x-forwarded-protO"), 0) == 0);
    CHECK(hdr_find(&m, HDR_LIT("x-forwardeD-hosto"), 0) == 1);
    CHECK(hdr_find(&m, HDR_LIT("x-forwarded-prato"), 0) == -1); /* the second word differs */
    CHECK(hdr_add(&m, HDR_LIT("x-forwarded-prefix"), HDR_LIT("/p")) == NU_OK);
    CHECK(hdr_find(&m, HDR_LIT("x-forwarded-prefix"), 0) == 3);
    CHECK(hdr_find(&m, HDR_LIT("x-forwarded-prefax"), 0) == -1); /* the tail differs, not its last byte */
    CHECK(hdr_find(&m, HDR_LIT("z-forwarded-proto"), 0) == -1);  /* the first word differs */
    CHECK(hdr_find(&m, HDR_LIT("x-forwarded-prot"), 0) == -1);
    CHECK(hdr_find(&m, HDR_LIT("grpc-status"), 0) == -1);
    hdr_clear(&m);
}

/* Cleared maps' blocks wait in the thread's cache; a worker ending gives them
 * all back (valgrind showed them lost at exit before). */
static void test_cache_release(void)
{
#ifdef HDR_CACHE
    struct hdr_map m[3] = {{0}};
    for (int i = 0; i < 3; i++)
        CHECK(hdr_add(&m[i], HDR_LIT("a"), HDR_LIT("b")) == NU_OK);
    unsigned before = hdr_cache.n;
    for (int i = 0; i < 3; i++)
        hdr_clear(&m[i]);
    CHECK(hdr_cache.n == before + 3);
    hdr_cache_release();
    CHECK(hdr_cache.n == 0);
#endif
}

int main(void)
{
    test_fold_every_byte();
    test_self_alias_and_dead_bytes();
    test_add_get_case_insensitive();
    test_multi_values_and_order();
    test_remove_and_set_absent();
    test_growth();
    test_binary_values();
    test_long_names();
    test_names_differ_at_every_position();
    test_cache_release();
    CHECK_DONE();
}
