/* The part of the normalized model (built by lua/nuncio/config.lua) that the
 * C core acts on: listeners, admin, clusters. Routes stay in Lua. */
#ifndef NUNCIO_CONFIG_H
#define NUNCIO_CONFIG_H

#include <stddef.h>

struct lua_State;

struct nu_listener_cfg {
    char *name;
    char *address;
    int port;
};

struct nu_cluster_cfg {
    char *name;
    char *host;
    int port;
    int http2;
    int tls;
    int connect_timeout_ms;
};

struct nu_config {
    int workers;
    int log_level;
    int admin_enabled;
    char *admin_address;
    int admin_port;
    struct nu_listener_cfg *listeners;
    size_t n_listeners;
    struct nu_cluster_cfg *clusters;
    size_t n_clusters;
};

/* Reads the model table at stack index idx. On error returns NU_ERR_CONFIG
 * with a message in err. */
int config_from_lua(struct lua_State *L, int idx, struct nu_config *cfg, char *err, size_t errlen);
void config_free(struct nu_config *cfg);

#endif
