#include "gen.h"
#include "access_log.h"
#include "log.h"
#include "nuncio.h"
#include "tls.h"
#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct front *front_new(struct worker *w, const struct nu_config *cfg, const struct nu_listener_cfg *lc, char *err,
                        size_t errlen)
{
    struct front *f = calloc(1, sizeof *f);
    if (!f || !(f->server_name = strdup(cfg->server_name ? cfg->server_name : "envoy"))) {
        free(f);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    f->refs = 1;
    f->w = w;
    f->security_model = lc->security_model;
    f->l7_depth = lc->l7_depth;
    f->idle_timeout = cfg->listener_idle_timeout_ms / 1000.0;
    f->header_timeout = cfg->request_headers_timeout_ms / 1000.0;
    f->enable_http10 = cfg->enable_http10;
    f->max_concurrent_streams =
        lc->http2_max_concurrent_streams > 0 ? (unsigned)lc->http2_max_concurrent_streams : 1000;
    f->max_header_list_size = (uint32_t)(cfg->max_request_headers_kb > 0 ? cfg->max_request_headers_kb : 60) * 1024;
    f->body_window = (uint32_t)(cfg->buffer_limit_bytes > 0 ? cfg->buffer_limit_bytes : NU_DEFAULT_BUFFER_LIMIT_BYTES);
    if (lc->tls) {
        char why[400];
        f->tls = tls_server_new(cfg->tls_contexts, cfg->n_tls_contexts, why, sizeof why);
        if (!f->tls) {
            snprintf(err, errlen, "listener %s: %s", lc->name, why);
            front_unref(f);
            return NULL;
        }
    }
    return f;
}

void front_unref(struct front *f)
{
    if (!f || --f->refs > 0)
        return;
    tls_server_free(f->tls);
    free(f->server_name);
    free(f);
}

static void gen_free_now(struct gen *g)
{
    upstream_set_free(g->ups);
    for (size_t i = 0; g->fronts && i < g->cfg.n_listeners; i++)
        front_unref(g->fronts[i]);
    free(g->fronts);
    if (g->alog)
        access_log_unref(g->alog);
    config_free(&g->cfg);
    free(g);
}

static void gen_free_deferred(struct worker_defer *d)
{
    gen_free_now(nu_container_of(d, struct gen, defer));
}

void gen_unref(struct gen *g)
{
    if (!g || --g->refs > 0)
        return;
    nu_log(NU_LOG_DEBUG, "[w%d] generation %llu: no exchange left, freed", g->w->index, (unsigned long long)g->id);
    g->defer.fn = gen_free_deferred;
    worker_defer(g->w, &g->defer);
}

struct gen *gen_new(struct worker *w, uint64_t id, struct nu_config *cfg, struct access_log *alog, char *err,
                    size_t errlen)
{
    struct gen *g = calloc(1, sizeof *g);
    if (!g) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    g->w = w;
    g->id = id;
    g->refs = 1;
    g->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    g->fronts = calloc(g->cfg.n_listeners ? g->cfg.n_listeners : 1, sizeof *g->fronts);
    if (!g->fronts) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    g->ups = upstream_set_new(w, &g->cfg, err, errlen);
    if (!g->ups)
        goto fail;
    for (size_t i = 0; i < g->cfg.n_listeners; i++)
        if (!(g->fronts[i] = front_new(w, &g->cfg, &g->cfg.listeners[i], err, errlen)))
            goto fail;
    g->alog = alog ? access_log_ref(alog) : NULL;
    g->grpc.enabled = g->cfg.grpc_stats.enabled;
    g->grpc.all_methods = g->cfg.grpc_stats.all_methods;
    g->grpc.upstream_stats = g->cfg.grpc_stats.upstream_stats;
    g->grpc.allow = (const char *const *)g->cfg.grpc_stats.allow;
    g->grpc.n_allow = g->cfg.grpc_stats.n_allow;
    return g;
fail:
    g->refs = 0;
    gen_free_now(g);
    return NULL;
}
