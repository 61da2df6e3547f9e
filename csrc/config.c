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
    cfg->workers = get_int(L, idx, "workers", 1);
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
        cc->tls = get_bool(L, t, "tls");
        cc->connect_timeout_ms = get_int(L, t, "connect_timeout_ms", 3000);
        lua_pop(L, 1);
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
    }
    free(cfg->clusters);
    free(cfg->admin_address);
    memset(cfg, 0, sizeof *cfg);
}
