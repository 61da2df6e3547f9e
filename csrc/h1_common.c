#include "h1_common.h"
#include "nuncio.h"

#include <string.h>

int h1_is_token(const char *p, size_t n)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c && strchr(extra, c))))
            return 0;
    }
    return 1;
}

int h1_is_visible(const char *p, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] <= ' ' || p[i] == 0x7f)
            return 0;
    return 1;
}

int h1_value_safe(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
            return 0;
    return 1;
}

int h1_field_safe(const struct hdr_entry *e)
{
    return h1_is_token(e->name, e->nlen) && h1_value_safe(e->value, e->vlen);
}

int h1_put_field(struct buf *b, const struct hdr_entry *e)
{
    int rc = buf_append(b, e->name, e->nlen);
    rc |= buf_append(b, ": ", 2);
    rc |= buf_append(b, e->value, e->vlen);
    rc |= buf_append(b, "\r\n", 2);
    return rc ? NU_ERR_NOMEM : NU_OK;
}

int h1_parse_length(const char *p, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 18)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *out = v;
    return 0;
}
