/* Unit tests for what goes from a header map into nghttp2 (csrc/h2_common.c):
 * pseudo-headers first wherever the map has them, hop-by-hop fields dropped,
 * te kept only as "trailers" in any case. */
#include "../../csrc/h2_common.c"
#include "../../csrc/hdr.h"
#include "check.h"

static int nv_is(const nghttp2_nv *nv, const char *name, const char *value)
{
    return nv->namelen == strlen(name) && memcmp(nv->name, name, nv->namelen) == 0 && nv->valuelen == strlen(value) &&
           memcmp(nv->value, value, nv->valuelen) == 0;
}

static void test_pseudo_first_in_one_pass(void)
{
    struct hdr_map m = {0};
    hdr_add(&m, HDR_LIT(":method"), HDR_LIT("POST"));
    hdr_add(&m, HDR_LIT(":path"), HDR_LIT("/a.B/C"));
    hdr_add(&m, HDR_LIT("content-type"), HDR_LIT("application/grpc"));
    hdr_add(&m, HDR_LIT("te"), HDR_LIT("trailers"));
    hdr_add(&m, HDR_LIT("connection"), HDR_LIT("close"));
    hdr_add(&m, HDR_LIT("x-request-id"), HDR_LIT("1"));
    nghttp2_nv nv[8];
    size_t k = h2_nv_from_hdrs(&m, nv);
    CHECK(k == 5);
    CHECK(nv_is(&nv[0], ":method", "POST"));
    CHECK(nv_is(&nv[1], ":path", "/a.B/C"));
    CHECK(nv_is(&nv[2], "content-type", "application/grpc"));
    CHECK(nv_is(&nv[3], "te", "trailers"));
    CHECK(nv_is(&nv[4], "x-request-id", "1"));
    /* a fresh id every request: sent as a literal, never indexed */
    CHECK(nv[4].flags & NGHTTP2_NV_FLAG_NO_INDEX);
    CHECK(!(nv[2].flags & NGHTTP2_NV_FLAG_NO_INDEX));
    hdr_clear(&m);
}

/* A filter may add or set a pseudo-header after regular fields: it still
 * goes before all of them (RFC 9113 8.3), the others keep their order. */
static void test_pseudo_after_regular(void)
{
    struct hdr_map m = {0};
    hdr_add(&m, HDR_LIT(":status"), HDR_LIT("200"));
    hdr_add(&m, HDR_LIT("upgrade"), HDR_LIT("h2c"));
    hdr_add(&m, HDR_LIT("content-type"), HDR_LIT("application/grpc"));
    hdr_add(&m, HDR_LIT("x-a"), HDR_LIT("1"));
    hdr_add(&m, HDR_LIT(":authority"), HDR_LIT("example.com"));
    hdr_add(&m, HDR_LIT("x-b"), HDR_LIT("2"));
    nghttp2_nv nv[8];
    size_t k = h2_nv_from_hdrs(&m, nv);
    CHECK(k == 5);
    CHECK(nv_is(&nv[0], ":status", "200"));
    CHECK(nv_is(&nv[1], ":authority", "example.com"));
    CHECK(nv_is(&nv[2], "content-type", "application/grpc"));
    CHECK(nv_is(&nv[3], "x-a", "1"));
    CHECK(nv_is(&nv[4], "x-b", "2"));
    hdr_clear(&m);
}

static void test_hop_by_hop(void)
{
    static const char *const dropped[] = {"connection",     "keep-alive",       "upgrade",
                                          "http2-settings", "proxy-connection", "transfer-encoding"};
    for (size_t i = 0; i < sizeof dropped / sizeof dropped[0]; i++)
        CHECK(h2_is_hop_by_hop(dropped[i], strlen(dropped[i]), "x", 1));
    CHECK(!h2_is_hop_by_hop("content-type", 12, "x", 1));
    CHECK(!h2_is_hop_by_hop("tf", 2, "gzip", 4));
    /* te: only "trailers", compared without case */
    static const char *const kept[] = {"trailers", "TRAILERS", "TrAiLeRs", "trailerS"};
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
        CHECK(!h2_is_hop_by_hop("te", 2, kept[i], 8));
    /* "@" (0x40) and 0x13 become a letter's neighbour, not the letter, when
     * bit 0x20 is set; other values and lengths are not "trailers" either */
    static const char *const gone[] = {"tr@ilers", "trailer\x13", "trailerz", "trailers,", "trailer", "gzip"};
    for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++)
        CHECK(h2_is_hop_by_hop("te", 2, gone[i], strlen(gone[i])));
}

int main(void)
{
    test_pseudo_first_in_one_pass();
    test_pseudo_after_regular();
    test_hop_by_hop();
    CHECK_DONE();
}
