/* libFuzzer harness: the gRPC header parsers without I/O (csrc/grpc.c):
 * grpc-timeout (the client's deadline, armed as a timer by stream.c), checked
 * against a reference reading of the spec ("1-8 digits, then one of H M S m u n");
 * and, on the same bytes, the gRPC content-type test, grpc-message
 * percent-encoding (round trip) and the message counter (fed whole and byte by
 * byte, against a reference count). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "grpc.h"
#include "nuncio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_ASSERT(cond)                                                                                                \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond);                          \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static void check_timeout(const char *v, size_t n)
{
    double secs = -1;
    int rc = grpc_parse_timeout(v, n, &secs);
    /* reference */
    int ok = n >= 2 && n <= 9 && strchr("HMSmun", v[n - 1]) && v[n - 1] != '\0';
    unsigned long long digits = 0;
    for (size_t i = 0; ok && i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            ok = 0;
        else
            digits = digits * 10 + (unsigned)(v[i] - '0');
    }
    FZ_ASSERT((rc == 0) == ok);
    if (!ok)
        return;
    FZ_ASSERT(isfinite(secs) && secs >= 0);
    double unit = 0;
    switch (v[n - 1]) {
    case 'H': unit = 3600; break;
    case 'M': unit = 60; break;
    case 'S': unit = 1; break;
    case 'm': unit = 1e-3; break;
    case 'u': unit = 1e-6; break;
    case 'n': unit = 1e-9; break;
    }
    double want = (double)digits * unit;
    FZ_ASSERT(fabs(secs - want) <= 1e-9 * want + 1e-18);
    FZ_ASSERT(secs <= 99999999.0 * 3600); /* within what ev_timer takes */
}

static void check_content_type(const char *v, size_t n)
{
    int g = grpc_is_grpc_content_type(v, n);
    int want = n >= 16 && strncasecmp(v, "application/grpc", 16) == 0 && (n == 16 || v[16] == '+' || v[16] == ';');
    FZ_ASSERT(g == want);
}

static int unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void check_message_encode(const char *v, size_t n)
{
    size_t cap = 3 * n;
    char *enc = malloc(cap + 1);
    FZ_ASSERT(enc);
    size_t el = grpc_message_encode(v, n, enc, cap);
    FZ_ASSERT(el <= cap);
    /* decodes back to the input, and is printable ASCII */
    size_t o = 0;
    for (size_t i = 0; i < el; o++) {
        FZ_ASSERT(o < n);
        FZ_ASSERT(enc[i] >= 0x20 && enc[i] <= 0x7e);
        if (enc[i] == '%') {
            FZ_ASSERT(i + 2 < el);
            int hi = unhex(enc[i + 1]), lo = unhex(enc[i + 2]);
            FZ_ASSERT(hi >= 0 && lo >= 0);
            FZ_ASSERT((unsigned char)v[o] == (unsigned)(hi << 4 | lo));
            i += 3;
        } else {
            FZ_ASSERT(enc[i] == v[o]);
            i++;
        }
    }
    FZ_ASSERT(o == n);
    /* a short buffer: a prefix of the same, never a cut escape */
    size_t small = cap / 2;
    char *part = malloc(small + 1);
    FZ_ASSERT(part);
    size_t sl = grpc_message_encode(v, n, part, small);
    FZ_ASSERT(sl <= small && sl <= el && memcmp(part, enc, sl) == 0);
    FZ_ASSERT(sl == el || sl + 3 > small); /* stops only when the next piece does not fit */
    free(part);
    free(enc);
}

static void check_msg_count(const uint8_t *p, size_t n)
{
    struct grpc_msg_counter a = {0}, b = {0};
    grpc_msg_count(&a, p, n);
    for (size_t i = 0; i < n; i++)
        grpc_msg_count(&b, p + i, 1);
    FZ_ASSERT(a.msgs == b.msgs && a.state == b.state && a.left == b.left);
    /* reference: walk the frames */
    uint64_t msgs = 0;
    size_t off = 0;
    while (off < n) {
        msgs++;
        if (n - off < 5)
            break;
        uint32_t len = (uint32_t)p[off + 1] << 24 | (uint32_t)p[off + 2] << 16 | (uint32_t)p[off + 3] << 8 | p[off + 4];
        if ((size_t)len > n - off - 5)
            break;
        off += 5 + (size_t)len;
    }
    FZ_ASSERT(a.msgs == msgs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *v = (const char *)data;
    check_timeout(v, size);
    check_content_type(v, size);
    check_message_encode(v, size);
    check_msg_count(data, size);
    return 0;
}
