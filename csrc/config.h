/* The part of the normalized model (built by lua/nuncio/config.lua) that the
 * C core acts on: listeners, admin, clusters. Routes stay in Lua. */
#ifndef NUNCIO_CONFIG_H
#define NUNCIO_CONFIG_H

#include <stddef.h>

struct lua_State;

/* TLS settings of one certificate context (termination) or one cluster (origination). */
struct nu_tls_cfg {
    char *name;
    char **hostnames; /* SNI names served (termination) */
    size_t n_hostnames;
    char *cert_pem, *key_pem, *ca_pem; /* PEM text, NUL-terminated; NULL if absent */
    int cert_required;
    char **alpn;
    size_t n_alpn;
    int min_version, max_version; /* 0 = default, else minor version 1..4 for v1.0..v1.3 */
    char **ciphers;
    size_t n_ciphers;
    char *sni;    /* origination: server name to send and check */
    char *source; /* "file:line: Kind name: field" for errors */
};

enum nu_security_model {
    NU_SECURITY_XFP = 0,
    NU_SECURITY_SECURE = 1,
    NU_SECURITY_INSECURE = 2,
};

struct nu_listener_cfg {
    char *name;
    char *address;
    int port;
    int tls; /* HTTPS: TLS and cleartext on one port, told apart by the first byte */
    int security_model;
    int l7_depth;
};

struct nu_cluster_cfg {
    char *name;
    char *host;
    int port;
    int http2;
    int connect_timeout_ms;
    struct nu_tls_cfg *tls; /* NULL: cleartext */
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
    char *server_name;               /* the `server` response header (Module server_name) */
    struct nu_tls_cfg *tls_contexts; /* termination certificates */
    size_t n_tls_contexts;
};

/* Reads the model table at stack index idx. On error returns NU_ERR_CONFIG
 * with a message in err. */
int config_from_lua(struct lua_State *L, int idx, struct nu_config *cfg, char *err, size_t errlen);
void config_free(struct nu_config *cfg);

#endif
