#include "grpc.h"
#include "exchange.h"
#include "nuncio.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

int grpc_is_grpc_content_type(const char *v, size_t n)
{
    static const char base[] = "application/grpc";
    size_t bl = sizeof base - 1;
    if (n < bl || strncasecmp(v, base, bl) != 0)
        return 0;
    /* application/grpc, application/grpc+proto, application/grpc;charset=...
     * but not application/grpc-web (a different protocol). */
    return n == bl || v[bl] == '+' || v[bl] == ';';
}

int grpc_status_from_http(int http_status)
{
    switch (http_status) {
    case 400:
        return GRPC_INTERNAL;
    case 401:
        return GRPC_UNAUTHENTICATED;
    case 403:
        return GRPC_PERMISSION_DENIED;
    case 404:
        return GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return GRPC_UNAVAILABLE;
    default:
        return GRPC_UNKNOWN;
    }
}

int grpc_parse_timeout(const char *v, size_t n, double *seconds)
{
    if (n < 2 || n > 9)
        return -1;
    double value = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        value = value * 10 + (v[i] - '0');
    }
    switch (v[n - 1]) {
    case 'H':
        *seconds = value * 3600;
        return 0;
    case 'M':
        *seconds = value * 60;
        return 0;
    case 'S':
        *seconds = value;
        return 0;
    case 'm':
        *seconds = value / 1e3;
        return 0;
    case 'u':
        *seconds = value / 1e6;
        return 0;
    case 'n':
        *seconds = value / 1e9;
        return 0;
    default:
        return -1;
    }
}

size_t grpc_message_encode(const char *src, size_t n, char *dst, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        /* gRPC: printable ASCII except '%' goes as is, the rest percent-encoded. */
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            if (o + 1 > cap)
                break;
            dst[o++] = (char)c;
        } else {
            if (o + 3 > cap)
                break;
            dst[o++] = '%';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    return o;
}

int grpc_bridge_finish(struct msg *resp)
{
    size_t sl = 0, ml = 0;
    const char *status = hdr_get(&resp->trailers, HDR_LIT("grpc-status"), &sl);
    const char *message = hdr_get(&resp->trailers, HDR_LIT("grpc-message"), &ml);
    int rc = NU_OK;
    if (status) {
        if (!(sl == 1 && status[0] == '0'))
            rc |= hdr_set(&resp->hdrs, HDR_LIT(":status"), HDR_LIT("503"));
        rc |= hdr_set(&resp->hdrs, HDR_LIT("grpc-status"), status, sl);
    }
    if (message)
        rc |= hdr_set(&resp->hdrs, HDR_LIT("grpc-message"), message, ml);
    char len[24];
    int n = snprintf(len, sizeof len, "%zu", resp->body.bytes);
    rc |= hdr_set(&resp->hdrs, HDR_LIT("content-length"), len, (size_t)n);
    hdr_clear(&resp->trailers);
    return rc ? NU_ERR_NOMEM : NU_OK;
}

void grpc_msg_count(struct grpc_msg_counter *c, const uint8_t *p, size_t n)
{
    const uint8_t *end = p + n;
    while (p < end) {
        if (c->state == 5) {
            /* the payload: skip it whole, however large the length said */
            size_t k = (size_t)(end - p) < c->left ? (size_t)(end - p) : c->left;
            p += k;
            c->left -= (uint32_t)k;
            if (!c->left)
                c->state = 0;
            continue;
        }
        uint8_t b = *p++;
        if (c->state == 0) {
            c->msgs++;
            c->len = 0;
            c->state = 1;
            continue;
        }
        c->len = c->len << 8 | b;
        if (++c->state == 5) {
            c->left = c->len;
            if (!c->left)
                c->state = 0;
        }
    }
}
