#include "config.h"
#include "log.h"
#include "nuncio.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads t[key] as a string copy; NULL if absent or not a string. */
static char *get_str(lua_State *L, int t, const char *key, const char *def)
{
    lua_getfield(L, t, key);
    const char *s = lua_isstring(L, -1) ? lua_tostring(L, -1) : def;
    char *r = s ? strdup(s) : NULL;
    lua_pop(L, 1);
    return r;
}

static int get_int(lua_State *L, int t, const char *key, int def)
{
    lua_getfield(L, t, key);
    int v = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : def;
    lua_pop(L, 1);
    return v;
}

static int get_bool(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* t[key] as an array of string copies (a single string is a one-element list). */
static int get_str_list(lua_State *L, int t, const char *key, char ***out, size_t *n)
{
    *out = NULL;
    *n = 0;
    lua_getfield(L, t, key);
    if (lua_isstring(L, -1)) {
        *out = calloc(1, sizeof **out);
        if (!*out || !((*out)[0] = strdup(lua_tostring(L, -1)))) {
            lua_pop(L, 1);
            return NU_ERR_NOMEM;
        }
        *n = 1;
    } else if (lua_istable(L, -1)) {
        size_t len = lua_objlen(L, -1);
        if (len) {
            *out = calloc(len, sizeof **out);
            if (!*out) {
                lua_pop(L, 1);
                return NU_ERR_NOMEM;
            }
        }
        for (size_t i = 0; i < len; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            const char *s = lua_tostring(L, -1);
            (*out)[*n] = strdup(s ? s : "");
            lua_pop(L, 1);
            if (!(*out)[*n]) {
                lua_pop(L, 1);
                return NU_ERR_NOMEM;
            }
            (*n)++;
        }
    }
    lua_pop(L, 1);
    return NU_OK;
}

static void free_str_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static int read_route_names(lua_State *L, int idx, struct nu_config *cfg)
{
    lua_getfield(L, idx, "routes");
    size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    if (n && !(cfg->route_names = calloc(n, sizeof *cfg->route_names))) {
        lua_pop(L, 1);
        return NU_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        char *name = lua_istable(L, -1) ? get_str(L, lua_gettop(L), "name", "") : strdup("");
        lua_pop(L, 1);
        if (!name) {
            lua_pop(L, 1);
            return NU_ERR_NOMEM;
        }
        cfg->route_names[cfg->n_routes++] = name;
    }
    lua_pop(L, 1);
    return NU_OK;
}

/* http.grpc_stats: absent or false leaves the filter off. */
static int read_grpc_stats(lua_State *L, int t, struct nu_grpc_stats_cfg *g)
{
    lua_getfield(L, t, "grpc_stats");
    int rc = NU_OK;
    if (lua_istable(L, -1)) {
        int gt = lua_gettop(L);
        g->enabled = 1;
        g->all_methods = get_bool(L, gt, "all_methods");
        g->upstream_stats = get_bool(L, gt, "upstream_stats");
        rc = get_str_list(L, gt, "allow", &g->allow, &g->n_allow);
    }
    lua_pop(L, 1);
    return rc;
}

/* http.access_log: { enabled, type = "text"|"json", path, format, json = {{key, fmt}...} }.
 * Absent: on, Envoy's default text format to stdout, as Emissary does. */
static int read_access_log(lua_State *L, int t, struct nu_access_log_cfg *a)
{
    lua_getfield(L, t, "access_log");
    int at = lua_gettop(L);
    a->enabled = 1;
    if (lua_istable(L, at)) {
        lua_getfield(L, at, "enabled");
        a->enabled = lua_isnil(L, -1) || lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, at, "type");
        a->json = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "json") == 0;
        lua_pop(L, 1);
        a->path = get_str(L, at, "path", NULL);
        a->format = get_str(L, at, "format", NULL);
        lua_getfield(L, at, "json");
        size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
        if (n &&
            (!(a->json_keys = calloc(n, sizeof *a->json_keys)) || !(a->json_fmts = calloc(n, sizeof *a->json_fmts)))) {
            lua_settop(L, at - 1);
            return NU_ERR_NOMEM;
        }
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            char *k = get_str(L, lua_gettop(L), "key", "");
            char *f = get_str(L, lua_gettop(L), "fmt", "");
            lua_pop(L, 1);
            a->json_keys[a->n_json] = k;
            a->json_fmts[a->n_json] = f;
            a->n_json++;
            if (!k || !f) {
                lua_settop(L, at - 1);
                return NU_ERR_NOMEM;
            }
        }
        lua_pop(L, 1);
    } else if (lua_isboolean(L, at)) {
        a->enabled = lua_toboolean(L, at);
    }
    lua_settop(L, at - 1);
    if (!a->path && !(a->path = strdup("/dev/stdout")))
        return NU_ERR_NOMEM;
    return NU_OK;
}

/* "v1.2" -> 3 (TLS minor version numbering: v1.0 is 1); 0 when absent or unknown. */
static int tls_version(lua_State *L, int t, const char *key)
{
    lua_getfield(L, t, key);
    const char *s = lua_tostring(L, -1);
    int v = 0;
    if (s && strlen(s) == 4 && s[0] == 'v' && s[1] == '1' && s[2] == '.' && s[3] >= '0' && s[3] <= '3')
        v = s[3] - '0' + 1;
    lua_pop(L, 1);
    return v;
}

static int read_tls(lua_State *L, int t, struct nu_tls_cfg *tc)
{
    tc->name = get_str(L, t, "name", "tls");
    tc->cert_pem = get_str(L, t, "cert_chain_pem", NULL);
    tc->key_pem = get_str(L, t, "private_key_pem", NULL);
    tc->ca_pem = get_str(L, t, "ca_pem", NULL);
    tc->sni = get_str(L, t, "sni", NULL);
    tc->source = get_str(L, t, "source", "TLS settings");
    tc->cert_required = get_bool(L, t, "cert_required");
    tc->min_version = tls_version(L, t, "min_tls_version");
    tc->max_version = tls_version(L, t, "max_tls_version");
    int rc = get_str_list(L, t, "hostnames", &tc->hostnames, &tc->n_hostnames);
    rc |= get_str_list(L, t, "alpn_protocols", &tc->alpn, &tc->n_alpn);
    rc |= get_str_list(L, t, "cipher_suites", &tc->ciphers, &tc->n_ciphers);
    rc |= get_str_list(L, t, "ecdh_curves", &tc->curves, &tc->n_curves);
    if (rc || !tc->name || !tc->source)
        return NU_ERR_NOMEM;
    return NU_OK;
}

static void free_tls(struct nu_tls_cfg *tc)
{
    free(tc->name);
    free(tc->cert_pem);
    free(tc->key_pem);
    free(tc->ca_pem);
    free(tc->sni);
    free(tc->source);
    free_str_list(tc->hostnames, tc->n_hostnames);
    free_str_list(tc->alpn, tc->n_alpn);
    free_str_list(tc->ciphers, tc->n_ciphers);
    free_str_list(tc->curves, tc->n_curves);
}

/* The cluster's endpoints ({host, port} list) and balancer ({policy, hash}). */
static int read_balancing(lua_State *L, int t, struct nu_cluster_cfg *cc)
{
    lua_getfield(L, t, "endpoints");
    size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    if (n && !(cc->endpoints = calloc(n, sizeof *cc->endpoints))) {
        lua_pop(L, 1);
        return NU_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        struct nu_endpoint_cfg *e = &cc->endpoints[cc->n_endpoints++];
        e->host = get_str(L, lua_gettop(L), "host", NULL);
        e->port = get_int(L, lua_gettop(L), "port", 80);
        lua_pop(L, 1);
        if (!e->host) {
            lua_pop(L, 1);
            return NU_ERR_NOMEM;
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, t, "lb");
    if (lua_istable(L, -1)) {
        int lb = lua_gettop(L);
        char *policy = get_str(L, lb, "policy", "round_robin");
        if (!policy) {
            lua_pop(L, 1);
            return NU_ERR_NOMEM;
        }
        cc->lb_policy = strcmp(policy, "least_request") == 0 ? NU_LB_LEAST_REQUEST
                        : strcmp(policy, "round_robin") == 0 ? NU_LB_ROUND_ROBIN
                                                             : NU_LB_HASH;
        free(policy);
        lua_getfield(L, lb, "hash");
        if (lua_istable(L, -1)) {
            int h = lua_gettop(L);
            cc->hash_header = get_str(L, h, "header", NULL);
            cc->hash_cookie = get_str(L, h, "cookie", NULL);
            cc->hash_source_ip = get_bool(L, h, "source_ip");
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return NU_OK;
}

static unsigned retry_on_bit(const char *s)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {
        {"5xx", NU_RETRY_5XX},
        {"gateway-error", NU_RETRY_GATEWAY_ERROR},
        {"connect-failure", NU_RETRY_CONNECT_FAILURE},
        {"retriable-4xx", NU_RETRY_RETRIABLE_4XX},
        {"refused-stream", NU_RETRY_REFUSED_STREAM},
        {"retriable-status-codes", NU_RETRY_STATUS_CODES},
        {"reset", NU_RETRY_RESET},
        {"cancelled", NU_RETRY_GRPC_CANCELLED},
        {"deadline-exceeded", NU_RETRY_GRPC_DEADLINE_EXCEEDED},
        {"internal", NU_RETRY_GRPC_INTERNAL},
        {"resource-exhausted", NU_RETRY_GRPC_RESOURCE_EXHAUSTED},
        {"unavailable", NU_RETRY_GRPC_UNAVAILABLE},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0)
            return names[i].bit;
    return 0; /* the Lua loader refused anything else */
}

static int read_policy(lua_State *L, int t, struct nu_route_policy *p)
{
    p->num_retries = get_int(L, t, "num_retries", 0);
    p->per_try_timeout_ms = get_int(L, t, "per_try_timeout_ms", 0);
    p->idle_timeout_ms = get_int(L, t, "idle_timeout_ms", NU_DEFAULT_STREAM_IDLE_TIMEOUT_MS);
    char **on;
    size_t n_on;
    if (get_str_list(L, t, "retry_on", &on, &n_on) != NU_OK)
        return NU_ERR_NOMEM;
    for (size_t i = 0; i < n_on; i++)
        p->retry_on |= retry_on_bit(on[i]);
    free_str_list(on, n_on);
    lua_getfield(L, t, "retriable_status_codes");
    size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    if (n && !(p->status_codes = calloc(n, sizeof *p->status_codes))) {
        lua_pop(L, 1);
        return NU_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        p->status_codes[p->n_status_codes++] = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return NU_OK;
}

/* Routes' policies (model.policies) and passive health (model.outlier_detection). */
static int read_policies(lua_State *L, int idx, struct nu_config *cfg)
{
    lua_getfield(L, idx, "policies");
    size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    cfg->policies = calloc(n ? n : 1, sizeof *cfg->policies);
    if (!cfg->policies) {
        lua_pop(L, 1);
        return NU_ERR_NOMEM;
    }
    cfg->n_policies = n ? n : 1;
    cfg->policies[0].idle_timeout_ms = NU_DEFAULT_STREAM_IDLE_TIMEOUT_MS;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        int rc = read_policy(L, lua_gettop(L), &cfg->policies[i]);
        lua_pop(L, 1);
        if (rc != NU_OK) {
            lua_pop(L, 1);
            return rc;
        }
    }
    lua_pop(L, 1);
    cfg->outlier = (struct nu_outlier_cfg){5, 30000, 10};
    lua_getfield(L, idx, "outlier_detection");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        cfg->outlier.consecutive_failures = get_int(L, t, "consecutive_failures", 5);
        cfg->outlier.base_ejection_time_ms = get_int(L, t, "base_ejection_time_ms", 30000);
        cfg->outlier.max_ejection_percent = get_int(L, t, "max_ejection_percent", 10);
    }
    lua_pop(L, 1);
    return NU_OK;
}

int config_from_lua(lua_State *L, int idx, struct nu_config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    int base = lua_gettop(L);
    if (idx < 0)
        idx = base + idx + 1;
    if (!lua_istable(L, idx)) {
        snprintf(err, errlen, "the configuration model is not a table");
        return NU_ERR_CONFIG;
    }
    cfg->workers = get_int(L, idx, "workers", 0);
    cfg->drain_timeout_ms = get_int(L, idx, "drain_timeout_ms", 30000);
    char *level = get_str(L, idx, "log_level", "info");
    cfg->log_level = level ? nu_log_parse_level(level) : NU_LOG_INFO;
    free(level);
    if (cfg->log_level < 0)
        cfg->log_level = NU_LOG_INFO;

    lua_getfield(L, idx, "admin");
    if (lua_istable(L, -1)) {
        int a = lua_gettop(L);
        cfg->admin_enabled = 1;
        cfg->admin_address = get_str(L, a, "address", "127.0.0.1");
        cfg->admin_port = get_int(L, a, "port", 8877);
        if (!cfg->admin_address)
            goto nomem;
    }
    lua_pop(L, 1);

    lua_getfield(L, idx, "listeners");
    size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    if (n) {
        cfg->listeners = calloc(n, sizeof *cfg->listeners);
        if (!cfg->listeners)
            goto nomem;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        int t = lua_gettop(L);
        struct nu_listener_cfg *lc = &cfg->listeners[cfg->n_listeners++];
        lc->name = get_str(L, t, "name", "listener");
        lc->address = get_str(L, t, "address", "0.0.0.0");
        lc->port = get_int(L, t, "port", -1);
        lc->tls = get_bool(L, t, "tls");
        lc->http2_max_concurrent_streams = get_int(L, t, "http2_max_concurrent_streams", 0);
        lc->l7_depth = get_int(L, t, "l7_depth", 0);
        char *model = get_str(L, t, "security_model", "XFP");
        lc->security_model = !model                           ? NU_SECURITY_XFP
                             : strcmp(model, "SECURE") == 0   ? NU_SECURITY_SECURE
                             : strcmp(model, "INSECURE") == 0 ? NU_SECURITY_INSECURE
                                                              : NU_SECURITY_XFP;
        free(model);
        lua_pop(L, 1);
        if (!lc->name || !lc->address)
            goto nomem;
        if (lc->port < 0 || lc->port > 65535) {
            snprintf(err, errlen, "listener %s: port %d out of range", lc->name, lc->port);
            lua_settop(L, base);
            config_free(cfg);
            return NU_ERR_CONFIG;
        }
    }
    lua_pop(L, 1);

    lua_getfield(L, idx, "clusters");
    n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    if (n) {
        cfg->clusters = calloc(n, sizeof *cfg->clusters);
        if (!cfg->clusters)
            goto nomem;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        int t = lua_gettop(L);
        struct nu_cluster_cfg *cc = &cfg->clusters[cfg->n_clusters++];
        cc->name = get_str(L, t, "name", "cluster");
        cc->host = get_str(L, t, "host", NULL);
        cc->port = get_int(L, t, "port", 80);
        cc->http2 = get_bool(L, t, "http2");
        cc->connect_timeout_ms = get_int(L, t, "connect_timeout_ms", 3000);
        cc->idle_timeout_ms = get_int(L, t, "idle_timeout_ms", 3600000); /* Envoy's default: 1 h */
        if (read_balancing(L, t, cc) != NU_OK) {
            lua_pop(L, 1);
            goto nomem;
        }
        lua_getfield(L, t, "tls");
        if (lua_istable(L, -1)) {
            cc->tls = calloc(1, sizeof *cc->tls);
            if (!cc->tls || read_tls(L, lua_gettop(L), cc->tls) != NU_OK) {
                lua_pop(L, 2);
                goto nomem;
            }
        }
        lua_pop(L, 2);
        if (!cc->name)
            goto nomem;
        if (!cc->host) {
            snprintf(err, errlen, "cluster %s: no host", cc->name);
            lua_settop(L, base);
            config_free(cfg);
            return NU_ERR_CONFIG;
        }
    }
    lua_pop(L, 1);

    /* Envoy's connection manager writes `server` on every response it sends. */
    lua_getfield(L, idx, "http");
    cfg->listener_idle_timeout_ms = 3600000; /* Envoy's default for the connection manager: 1 h */
    cfg->max_request_headers_kb = 60;
    cfg->buffer_limit_bytes = NU_DEFAULT_BUFFER_LIMIT_BYTES;
    if (lua_istable(L, -1)) {
        cfg->server_name = get_str(L, lua_gettop(L), "server_name", "envoy");
        cfg->listener_idle_timeout_ms = get_int(L, lua_gettop(L), "listener_idle_timeout_ms", 3600000);
        cfg->enable_grpc_web = get_bool(L, lua_gettop(L), "enable_grpc_web");
        cfg->enable_grpc_http11_bridge = get_bool(L, lua_gettop(L), "enable_grpc_http11_bridge");
        cfg->enable_http10 = get_bool(L, lua_gettop(L), "enable_http10");
        cfg->max_request_headers_kb = get_int(L, lua_gettop(L), "max_request_headers_kb", 60);
        cfg->max_request_bytes = get_int(L, lua_gettop(L), "max_request_bytes", 0);
        cfg->buffer_limit_bytes = get_int(L, lua_gettop(L), "buffer_limit_bytes", NU_DEFAULT_BUFFER_LIMIT_BYTES);
        if (cfg->buffer_limit_bytes <= 0)
            cfg->buffer_limit_bytes = NU_DEFAULT_BUFFER_LIMIT_BYTES;
        if (read_grpc_stats(L, lua_gettop(L), &cfg->grpc_stats) != NU_OK ||
            read_access_log(L, lua_gettop(L), &cfg->access_log) != NU_OK)
            goto nomem;
    }
    lua_pop(L, 1);
    if (!cfg->access_log.path) { /* no http section: the defaults */
        cfg->access_log.enabled = 1;
        if (!(cfg->access_log.path = strdup("/dev/stdout")))
            goto nomem;
    }
    cfg->request_headers_timeout_ms = get_int(L, idx, "request_headers_timeout_ms", 10000);
    cfg->max_connections = get_int(L, idx, "max_connections", NU_DEFAULT_MAX_CONNECTIONS);
    cfg->tls_handshake_timeout_ms = get_int(L, idx, "tls_handshake_timeout_ms", NU_DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS);
    if (cfg->tls_handshake_timeout_ms <= 0)
        cfg->tls_handshake_timeout_ms = NU_DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS;
    cfg->io_batch_us = get_int(L, idx, "io_batch_us", NU_DEFAULT_IO_BATCH_US);
    if (cfg->io_batch_us < 0 || cfg->io_batch_us > 1000)
        cfg->io_batch_us = NU_DEFAULT_IO_BATCH_US;
    if (!cfg->server_name && !(cfg->server_name = strdup("envoy")))
        goto nomem;

    if (read_policies(L, idx, cfg) != NU_OK || read_route_names(L, idx, cfg) != NU_OK)
        goto nomem;

    lua_getfield(L, idx, "tls_contexts");
    n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
    if (n) {
        cfg->tls_contexts = calloc(n, sizeof *cfg->tls_contexts);
        if (!cfg->tls_contexts)
            goto nomem;
    }
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, -1, (int)i + 1);
        int rc = read_tls(L, lua_gettop(L), &cfg->tls_contexts[cfg->n_tls_contexts++]);
        lua_pop(L, 1);
        if (rc != NU_OK)
            goto nomem;
    }
    lua_pop(L, 1);
    return NU_OK;

nomem:
    lua_settop(L, base);
    config_free(cfg);
    snprintf(err, errlen, "out of memory reading the configuration");
    return NU_ERR_NOMEM;
}

void config_free(struct nu_config *cfg)
{
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        free(cfg->listeners[i].name);
        free(cfg->listeners[i].address);
    }
    free(cfg->listeners);
    for (size_t i = 0; i < cfg->n_clusters; i++) {
        free(cfg->clusters[i].name);
        free(cfg->clusters[i].host);
        if (cfg->clusters[i].tls) {
            free_tls(cfg->clusters[i].tls);
            free(cfg->clusters[i].tls);
        }
        for (size_t k = 0; k < cfg->clusters[i].n_endpoints; k++)
            free(cfg->clusters[i].endpoints[k].host);
        free(cfg->clusters[i].endpoints);
        free(cfg->clusters[i].hash_header);
        free(cfg->clusters[i].hash_cookie);
    }
    free(cfg->clusters);
    for (size_t i = 0; i < cfg->n_policies; i++)
        free(cfg->policies[i].status_codes);
    free(cfg->policies);
    for (size_t i = 0; i < cfg->n_tls_contexts; i++)
        free_tls(&cfg->tls_contexts[i]);
    free(cfg->tls_contexts);
    free(cfg->admin_address);
    free(cfg->server_name);
    free_str_list(cfg->route_names, cfg->n_routes);
    free_str_list(cfg->grpc_stats.allow, cfg->grpc_stats.n_allow);
    free(cfg->access_log.path);
    free(cfg->access_log.format);
    free_str_list(cfg->access_log.json_keys, cfg->access_log.n_json);
    free_str_list(cfg->access_log.json_fmts, cfg->access_log.n_json);
    memset(cfg, 0, sizeof *cfg);
}
