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
    char **curves; /* ecdh_curves: OpenSSL or mbedTLS names; none: Envoy's X25519, P-256 */
    size_t n_curves;
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
    int http2_max_concurrent_streams; /* 0: the default (1000) */
};

/* How a cluster picks an endpoint per request (Mapping load_balancer.policy). */
enum nu_lb_policy {
    NU_LB_ROUND_ROBIN = 0,
    NU_LB_LEAST_REQUEST = 1,
    NU_LB_HASH = 2, /* ring_hash and maglev: the same key goes to the same endpoint */
};

struct nu_endpoint_cfg {
    char *host;
    int port;
};

struct nu_cluster_cfg {
    char *name;
    char *host;
    int port;
    int http2;
    int connect_timeout_ms;
    int idle_timeout_ms;               /* a pooled connection without streams that long is closed; 0: never */
    struct nu_endpoint_cfg *endpoints; /* from the native config; none: resolve host:port */
    size_t n_endpoints;
    int lb_policy;
    char *hash_header; /* NU_LB_HASH keys: one of these three */
    char *hash_cookie;
    int hash_source_ip;
    struct nu_tls_cfg *tls; /* NULL: cleartext */
};

/* Conditions of a route's retry_policy.retry_on (Envoy's names). */
enum nu_retry_on {
    NU_RETRY_5XX = 1 << 0,
    NU_RETRY_GATEWAY_ERROR = 1 << 1,
    NU_RETRY_CONNECT_FAILURE = 1 << 2,
    NU_RETRY_RETRIABLE_4XX = 1 << 3,
    NU_RETRY_REFUSED_STREAM = 1 << 4,
    NU_RETRY_STATUS_CODES = 1 << 5,
    NU_RETRY_RESET = 1 << 6,
    NU_RETRY_GRPC_CANCELLED = 1 << 7,
    NU_RETRY_GRPC_DEADLINE_EXCEEDED = 1 << 8,
    NU_RETRY_GRPC_INTERNAL = 1 << 9,
    NU_RETRY_GRPC_RESOURCE_EXHAUSTED = 1 << 10,
    NU_RETRY_GRPC_UNAVAILABLE = 1 << 11,
};

/* What a route asks of its upstream calls beyond the cluster: retries and the
 * stream idle timeout. Routes name one by index; index 0 is the default. */
struct nu_route_policy {
    unsigned retry_on; /* enum nu_retry_on bits; 0: no retries */
    int num_retries;
    int per_try_timeout_ms; /* 0: none */
    int idle_timeout_ms;    /* stream idle timeout; 0: none */
    int *status_codes;      /* retriable-status-codes */
    size_t n_status_codes;
};

/* Passive health: endpoints that keep failing leave the rotation for a while. */
struct nu_outlier_cfg {
    int consecutive_failures; /* 0: never eject */
    int base_ejection_time_ms;
    int max_ejection_percent;
};

/* Module grpc_stats (Envoy's grpc_stats filter): per-method gRPC series. */
struct nu_grpc_stats_cfg {
    int enabled;
    int all_methods;
    int upstream_stats;
    char **allow; /* "pkg.Service/Method", or "pkg.Service/" for all its methods; n_allow > 0: an allowlist */
    size_t n_allow;
};

/* The access log (Module envoy_log_type / envoy_log_format / envoy_log_path). */
struct nu_access_log_cfg {
    int enabled;
    int json;         /* envoy_log_type json: one JSON object per line */
    char *path;       /* "/dev/stdout" by default (Envoy's /dev/fd/1) */
    char *format;     /* text: Envoy command operators; NULL: Envoy's default format */
    char **json_keys; /* json: key i is rendered from json_fmts[i] */
    char **json_fmts;
    size_t n_json;
};

/* Envoy's per_connection_buffer_limit_bytes default (Module buffer_limit_bytes). */
#define NU_DEFAULT_BUFFER_LIMIT_BYTES (1024 * 1024)
#define NU_DEFAULT_MAX_CONNECTIONS 100000
#define NU_DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS 10000
#define NU_DEFAULT_IO_BATCH_US 50

/* Envoy's stream_idle_timeout default, for routes without idle_timeout_ms. */
#define NU_DEFAULT_STREAM_IDLE_TIMEOUT_MS 300000

struct nu_config {
    int workers;          /* 0: auto (one per core) */
    int drain_timeout_ms; /* SIGTERM: in-flight streams get this long to finish */
    int log_level;
    int admin_enabled;
    char *admin_address;
    int admin_port;
    struct nu_listener_cfg *listeners;
    size_t n_listeners;
    struct nu_cluster_cfg *clusters;
    size_t n_clusters;
    struct nu_route_policy *policies; /* at least one: [0] is the default */
    size_t n_policies;
    struct nu_outlier_cfg outlier;
    char *server_name;              /* the `server` response header (Module server_name) */
    int listener_idle_timeout_ms;   /* downstream connection without streams: GOAWAY after this; 0: never */
    int enable_grpc_web;            /* Module enable_grpc_web (present): translate gRPC-Web requests */
    int enable_grpc_http11_bridge;  /* Module enable_grpc_http11_bridge (present): HTTP/1.1 gRPC clients */
    int enable_http10;              /* Module enable_http10: serve HTTP/1.0 requests (else 426) */
    int request_headers_timeout_ms; /* preface and each header block must arrive within this; 0: no limit */
    int max_request_headers_kb;     /* Module max_request_headers_kb (Envoy's 60) */
    int max_request_bytes;          /* Module buffer.max_request_bytes: request bodies are held whole up to
                                     * this, above it 413 (Envoy's buffer filter); 0: no buffer filter */
    int buffer_limit_bytes;         /* Module buffer_limit_bytes: request body held per stream before the
                                     * client is no longer read, and the most a filter waiting for a whole
                                     * body may hold (Envoy's per_connection_buffer_limit_bytes, 1 MiB) */
    int max_connections;            /* native: downstream connections of the whole process; 0: no limit */
    int tls_handshake_timeout_ms;   /* native: accept to a finished TLS handshake */
    int io_batch_us;                /* native: a busy worker's shortest time between polls; 0: none */
    char **route_names;             /* model.routes[i].name, for metrics and logs */
    size_t n_routes;
    struct nu_grpc_stats_cfg grpc_stats;
    struct nu_access_log_cfg access_log;
    struct nu_tls_cfg *tls_contexts; /* termination certificates */
    size_t n_tls_contexts;
};

/* Reads the model table at stack index idx. On error returns NU_ERR_CONFIG
 * with a message in err. */
int config_from_lua(struct lua_State *L, int idx, struct nu_config *cfg, char *err, size_t errlen);
void config_free(struct nu_config *cfg);

#endif
