#include "h2_common.h"
#include "nuncio.h"

#include <string.h>
#include <strings.h>

int h2_is_hop_by_hop(const char *name, size_t n, const char *value, size_t vlen)
{
    static const char *const hop[] = {"connection",        "keep-alive", "proxy-connection",
                                      "transfer-encoding", "upgrade",    "http2-settings"};
    for (size_t i = 0; i < NU_ARRAY_LEN(hop); i++)
        if (strlen(hop[i]) == n && memcmp(hop[i], name, n) == 0)
            return 1;
    /* te is allowed in HTTP/2 only as "trailers", which gRPC needs. */
    if (n == 2 && memcmp(name, "te", 2) == 0)
        return !(vlen == 8 && strncasecmp(value, "trailers", 8) == 0);
    return 0;
}

static void set_nv(nghttp2_nv *nv, const struct hdr_entry *e)
{
    nv->name = (uint8_t *)e->name;
    nv->namelen = e->nlen;
    nv->value = (uint8_t *)e->value;
    nv->valuelen = e->vlen;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

size_t h2_nv_from_hdrs(const struct hdr_map *m, nghttp2_nv *nv)
{
    size_t k = 0;
    for (uint32_t i = 0; i < m->n; i++)
        if (m->v[i].nlen > 0 && m->v[i].name[0] == ':')
            set_nv(&nv[k++], &m->v[i]);
    for (uint32_t i = 0; i < m->n; i++) {
        const struct hdr_entry *e = &m->v[i];
        if (e->nlen == 0 || e->name[0] == ':' || h2_is_hop_by_hop(e->name, e->nlen, e->value, e->vlen))
            continue;
        set_nv(&nv[k++], e);
    }
    return k;
}

nghttp2_option *h2_new_option(void)
{
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0)
        return NULL;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    return opt;
}

int h2_send_settings(nghttp2_session *ng, uint32_t max_streams)
{
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_STREAM_WINDOW},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    int rv = nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, iv, NU_ARRAY_LEN(iv));
    if (rv != 0)
        return NU_ERR_PROTO;
    if (nghttp2_session_set_local_window_size(ng, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW) != 0)
        return NU_ERR_PROTO;
    return NU_OK;
}
