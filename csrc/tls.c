#include "tls.h"
#include "config.h"
#include "log.h"
#include "nuncio.h"

#include <errno.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* One termination certificate and what goes with it. */
struct tls_cert {
    char **names; /* borrowed from the config, which outlives the server */
    size_t n_names;
    mbedtls_x509_crt crt;
    mbedtls_pk_context key;
    mbedtls_x509_crt ca;
    int has_ca;
    int authmode;
};

/* What both sides own: the configuration and its randomness. mbedTLS keeps
 * pointers to the ALPN and cipher lists, so they live here as long as conf. */
struct tls_common {
    mbedtls_ssl_config conf;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    const char **alpn;
    int *ciphers;
    mbedtls_ecp_group_id *curves;
};

/* Resumption carries the handshake load: a full handshake costs about 2 ms of
 * this mbedTLS's CPU (X25519 ECDHE ~1.4 ms, the P-256 signature ~0.4 ms; its
 * bignum code is far slower than OpenSSL's), a resumed one a few µs. Ticket
 * keys rotate every lifetime (mbedTLS keeps the previous key to accept
 * tickets it issued just before); clients without tickets resume by session
 * id from the cache. */
#define TLS_SESSION_LIFETIME_S 7200
#define TLS_SESSION_CACHE_ENTRIES 20000

struct tls_server {
    struct tls_common c;
    mbedtls_ssl_ticket_context ticket;
    mbedtls_ssl_cache_context cache;
    struct tls_cert *certs;
    size_t n;
    size_t def; /* the certificate for clients without (matching) SNI */
};

struct tls_client {
    struct tls_common c;
    mbedtls_x509_crt ca, crt;
    mbedtls_pk_context key;
    int has_ca, has_cert;
    char *sni;
};

struct tls {
    mbedtls_ssl_context ssl;
    int fd;
    char sni[256];
};

void tls_describe_error(int rc, char *dst, size_t dlen)
{
    mbedtls_strerror(rc, dst, dlen); /* truncates to fit, NUL-terminated */
}

static void common_free(struct tls_common *c)
{
    mbedtls_ssl_config_free(&c->conf);
    mbedtls_ctr_drbg_free(&c->drbg);
    mbedtls_entropy_free(&c->entropy);
    free(c->alpn);
    free(c->ciphers);
    free(c->curves);
}

/* OpenSSL spellings (what Envoy/Ambassador users write) for the suites
 * mbedTLS has; mbedTLS's own names are accepted as they are. */
static const char *const cipher_names[][2] = {
    {"ECDHE-ECDSA-AES128-GCM-SHA256", "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"},
    {"ECDHE-RSA-AES128-GCM-SHA256", "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256"},
    {"ECDHE-ECDSA-AES256-GCM-SHA384", "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384"},
    {"ECDHE-RSA-AES256-GCM-SHA384", "TLS-ECDHE-RSA-WITH-AES-256-GCM-SHA384"},
    {"ECDHE-ECDSA-CHACHA20-POLY1305", "TLS-ECDHE-ECDSA-WITH-CHACHA20-POLY1305-SHA256"},
    {"ECDHE-RSA-CHACHA20-POLY1305", "TLS-ECDHE-RSA-WITH-CHACHA20-POLY1305-SHA256"},
    {"ECDHE-ECDSA-AES128-SHA", "TLS-ECDHE-ECDSA-WITH-AES-128-CBC-SHA"},
    {"ECDHE-RSA-AES128-SHA", "TLS-ECDHE-RSA-WITH-AES-128-CBC-SHA"},
    {"ECDHE-ECDSA-AES256-SHA", "TLS-ECDHE-ECDSA-WITH-AES-256-CBC-SHA"},
    {"ECDHE-RSA-AES256-SHA", "TLS-ECDHE-RSA-WITH-AES-256-CBC-SHA"},
    {"AES128-GCM-SHA256", "TLS-RSA-WITH-AES-128-GCM-SHA256"},
    {"AES256-GCM-SHA384", "TLS-RSA-WITH-AES-256-GCM-SHA384"},
    {"AES128-SHA", "TLS-RSA-WITH-AES-128-CBC-SHA"},
    {"AES256-SHA", "TLS-RSA-WITH-AES-256-CBC-SHA"},
};

static int cipher_id(const char *name, size_t len)
{
    char one[96];
    if (len >= sizeof one)
        return 0;
    memcpy(one, name, len);
    one[len] = '\0';
    for (size_t i = 0; i < NU_ARRAY_LEN(cipher_names); i++)
        if (strcmp(one, cipher_names[i][0]) == 0)
            return mbedtls_ssl_get_ciphersuite_id(cipher_names[i][1]);
    return mbedtls_ssl_get_ciphersuite_id(one);
}

/* OpenSSL/BoringSSL spellings of the ECDHE groups (what `ecdh_curves` holds
 * in Envoy configs); mbedTLS's own names (x25519, secp256r1, ...) are
 * accepted as they are. */
static const struct {
    const char *name;
    mbedtls_ecp_group_id id;
} curve_names[] = {
    {"X25519", MBEDTLS_ECP_DP_CURVE25519},    {"P-256", MBEDTLS_ECP_DP_SECP256R1},
    {"prime256v1", MBEDTLS_ECP_DP_SECP256R1}, {"P-384", MBEDTLS_ECP_DP_SECP384R1},
    {"P-521", MBEDTLS_ECP_DP_SECP521R1},      {"X448", MBEDTLS_ECP_DP_CURVE448},
};

static mbedtls_ecp_group_id curve_id(const char *name)
{
    for (size_t i = 0; i < NU_ARRAY_LEN(curve_names); i++)
        if (strcmp(name, curve_names[i].name) == 0)
            return curve_names[i].id;
    const mbedtls_ecp_curve_info *info = mbedtls_ecp_curve_info_from_name(name);
    return info && info->tls_id ? info->grp_id : MBEDTLS_ECP_DP_NONE;
}

/* The ECDHE preference: the configured curves, else Envoy's default (X25519,
 * then P-256). Without a list mbedTLS 2.28 prefers its strongest curve,
 * secp521r1, and served about half as many full handshakes a second. The
 * curves not listed follow, last: mbedTLS uses the one list both for key
 * exchange and for the curve of the peer's certificate, and Envoy checks no
 * certificate curve against ecdh_curves (a P-384 client certificate must
 * still verify when ecdh_curves says X25519). */
static int set_curves(struct tls_common *c, const struct nu_tls_cfg *cfg, char *err, size_t errlen)
{
    static const char *const envoy_default[] = {"X25519", "P-256"};
    const mbedtls_ecp_group_id *all = mbedtls_ecp_grp_id_list();
    size_t n_all = 0;
    while (all[n_all] != MBEDTLS_ECP_DP_NONE)
        n_all++;
    size_t n_cfg = cfg->n_curves ? cfg->n_curves : NU_ARRAY_LEN(envoy_default);
    c->curves = calloc(n_cfg + n_all + 1, sizeof *c->curves);
    if (!c->curves) {
        snprintf(err, errlen, "out of memory");
        return NU_ERR_NOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < n_cfg; i++) {
        const char *name = cfg->n_curves ? cfg->curves[i] : envoy_default[i];
        mbedtls_ecp_group_id id = curve_id(name);
        if (id == MBEDTLS_ECP_DP_NONE || !mbedtls_ecp_curve_info_from_grp_id(id)) {
            snprintf(err, errlen, "%s: ecdh_curves: unknown or unsupported curve %s", cfg->source, name);
            return NU_ERR_CONFIG;
        }
        c->curves[k++] = id;
    }
    for (size_t i = 0; i < n_all; i++) {
        size_t j = 0;
        while (j < k && c->curves[j] != all[i])
            j++;
        if (j == k)
            c->curves[k++] = all[i];
    }
    c->curves[k] = MBEDTLS_ECP_DP_NONE;
    mbedtls_ssl_conf_curves(&c->conf, c->curves);
    return NU_OK;
}

static int common_init(struct tls_common *c, int endpoint, const struct nu_tls_cfg *cfg, char *err, size_t errlen)
{
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_entropy_init(&c->entropy);
    mbedtls_ctr_drbg_init(&c->drbg);
    static const unsigned char pers[] = "nuncio";
    int rc = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy, pers, sizeof pers - 1);
    if (rc == 0)
        rc = mbedtls_ssl_config_defaults(&c->conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) {
        char why[160];
        tls_describe_error(rc, why, sizeof why);
        snprintf(err, errlen, "%s: cannot set up TLS: %s", cfg->source, why);
        return NU_ERR_TLS;
    }
    mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
    /* TLS 1.2 is the floor unless configured lower, as Envoy's default;
     * this mbedTLS has no TLS 1.3, so v1.3 caps at 1.2. */
    int min = cfg->min_version ? cfg->min_version : 3;
    int max = cfg->max_version ? cfg->max_version : 3;
    if (min > 3 || max > 3)
        nu_log(NU_LOG_WARN, "%s: TLS v1.3 is not available in this mbedTLS; using v1.2", cfg->source);
    if (min > 3)
        min = 3;
    if (max > 3)
        max = 3;
    if (min > max) {
        snprintf(err, errlen, "%s: min_tls_version is above max_tls_version", cfg->source);
        return NU_ERR_CONFIG;
    }
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, min);
    mbedtls_ssl_conf_max_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, max);
    if (cfg->n_alpn) {
        c->alpn = calloc(cfg->n_alpn + 1, sizeof *c->alpn);
        if (!c->alpn) {
            snprintf(err, errlen, "out of memory");
            return NU_ERR_NOMEM;
        }
        for (size_t i = 0; i < cfg->n_alpn; i++)
            c->alpn[i] = cfg->alpn[i]; /* borrowed: the config outlives this */
        if (mbedtls_ssl_conf_alpn_protocols(&c->conf, c->alpn) != 0) {
            snprintf(err, errlen, "%s: alpn_protocols: invalid list", cfg->source);
            return NU_ERR_CONFIG;
        }
    }
    if (cfg->n_ciphers) {
        /* Entries may use BoringSSL's "[a|b]" equal-preference groups: flatten them. */
        size_t cap = 0;
        for (size_t i = 0; i < cfg->n_ciphers; i++)
            cap += strlen(cfg->ciphers[i]) / 2 + 2;
        c->ciphers = calloc(cap + 1, sizeof *c->ciphers);
        if (!c->ciphers) {
            snprintf(err, errlen, "out of memory");
            return NU_ERR_NOMEM;
        }
        size_t k = 0;
        for (size_t i = 0; i < cfg->n_ciphers; i++) {
            const char *p = cfg->ciphers[i];
            while (*p) {
                while (*p == '[' || *p == ']' || *p == '|' || *p == ' ')
                    p++;
                size_t len = strcspn(p, "[]| ");
                if (len == 0)
                    break;
                int id = cipher_id(p, len);
                if (id == 0) {
                    snprintf(err, errlen, "%s: cipher_suites: unknown or unsupported cipher suite %.*s", cfg->source,
                             (int)len, p);
                    return NU_ERR_CONFIG;
                }
                if (k < cap)
                    c->ciphers[k++] = id;
                p += len;
            }
        }
        mbedtls_ssl_conf_ciphersuites(&c->conf, c->ciphers);
    }
    return set_curves(c, cfg, err, errlen);
}

static int parse_pem_crt(mbedtls_x509_crt *crt, const char *pem, const struct nu_tls_cfg *cfg, const char *what,
                         char *err, size_t errlen)
{
    int rc = mbedtls_x509_crt_parse(crt, (const unsigned char *)pem, strlen(pem) + 1);
    if (rc != 0) {
        char why[160];
        tls_describe_error(rc, why, sizeof why);
        snprintf(err, errlen, "%s: %s: not a valid PEM certificate: %s", cfg->source, what, why);
        return NU_ERR_CONFIG;
    }
    return NU_OK;
}

static int parse_key_pair(mbedtls_x509_crt *crt, mbedtls_pk_context *key, const struct nu_tls_cfg *cfg, char *err,
                          size_t errlen)
{
    if (!cfg->cert_pem || !cfg->key_pem) {
        snprintf(err, errlen, "%s: a certificate needs both a certificate chain and a private key", cfg->source);
        return NU_ERR_CONFIG;
    }
    if (parse_pem_crt(crt, cfg->cert_pem, cfg, "certificate chain", err, errlen) != NU_OK)
        return NU_ERR_CONFIG;
    int rc = mbedtls_pk_parse_key(key, (const unsigned char *)cfg->key_pem, strlen(cfg->key_pem) + 1, NULL, 0);
    if (rc != 0) {
        char why[160];
        tls_describe_error(rc, why, sizeof why);
        snprintf(err, errlen, "%s: private key: not a valid PEM key: %s", cfg->source, why);
        return NU_ERR_CONFIG;
    }
    if (mbedtls_pk_check_pair(&crt->pk, key) != 0) {
        snprintf(err, errlen, "%s: private key: does not match the certificate", cfg->source);
        return NU_ERR_CONFIG;
    }
    return NU_OK;
}

static int name_matches(const char *pattern, const char *name)
{
    if (strcmp(pattern, "*") == 0)
        return 1;
    if (strncmp(pattern, "*.", 2) == 0) {
        size_t pl = strlen(pattern + 1), nl = strlen(name);
        /* "*.example.com" covers "a.example.com", not "example.com" */
        return nl > pl && strcasecmp(name + nl - pl, pattern + 1) == 0;
    }
    return strcasecmp(pattern, name) == 0;
}

/* Exact names first, then the longest "*." suffix, then "*"/the default. */
static struct tls_cert *pick_cert(struct tls_server *s, const char *name)
{
    struct tls_cert *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < s->n; i++)
        for (size_t j = 0; j < s->certs[i].n_names; j++) {
            const char *p = s->certs[i].names[j];
            if (strcmp(p, "*") == 0 || !name_matches(p, name))
                continue;
            size_t weight = p[0] == '*' ? strlen(p) : (size_t)-1;
            if (!best || weight > best_len) {
                best = &s->certs[i];
                best_len = weight;
            }
        }
    return best ? best : &s->certs[s->def];
}

static int on_sni(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    struct tls_server *s = arg;
    char host[256];
    if (len >= sizeof host)
        len = sizeof host - 1;
    memcpy(host, name, len);
    host[len] = '\0';
    struct tls *t = nu_container_of(ssl, struct tls, ssl);
    memcpy(t->sni, host, len + 1);
    struct tls_cert *c = pick_cert(s, host);
    if (mbedtls_ssl_set_hs_own_cert(ssl, &c->crt, &c->key) != 0)
        return -1;
    if (c->has_ca)
        mbedtls_ssl_set_hs_ca_chain(ssl, &c->ca, NULL);
    mbedtls_ssl_set_hs_authmode(ssl, c->authmode);
    return 0;
}

struct tls_server *tls_server_new(const struct nu_tls_cfg *ctxs, size_t n, char *err, size_t errlen)
{
    if (n == 0) {
        snprintf(err, errlen, "an HTTPS listener needs at least one certificate (a Host tlsSecret or a TLSContext)");
        return NULL;
    }
    struct tls_server *s = calloc(1, sizeof *s);
    if (!s || !(s->certs = calloc(n, sizeof *s->certs))) {
        free(s);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->n = n;
    mbedtls_ssl_ticket_init(&s->ticket);
    mbedtls_ssl_cache_init(&s->cache);
    for (size_t i = 0; i < n; i++) {
        mbedtls_x509_crt_init(&s->certs[i].crt);
        mbedtls_x509_crt_init(&s->certs[i].ca);
        mbedtls_pk_init(&s->certs[i].key);
    }
    /* The default context: one serving "*", else the first. Listener-wide
     * settings (ALPN, versions, ciphers) come from it. */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < ctxs[i].n_hostnames; j++)
            if (strcmp(ctxs[i].hostnames[j], "*") == 0 && s->def == 0)
                s->def = i;
    if (common_init(&s->c, MBEDTLS_SSL_IS_SERVER, &ctxs[s->def], err, errlen) != NU_OK)
        goto fail;
    for (size_t i = 0; i < n; i++) {
        struct tls_cert *c = &s->certs[i];
        c->names = ctxs[i].hostnames;
        c->n_names = ctxs[i].n_hostnames;
        if (parse_key_pair(&c->crt, &c->key, &ctxs[i], err, errlen) != NU_OK)
            goto fail;
        c->authmode = MBEDTLS_SSL_VERIFY_NONE;
        if (ctxs[i].ca_pem) {
            if (parse_pem_crt(&c->ca, ctxs[i].ca_pem, &ctxs[i], "CA certificate", err, errlen) != NU_OK)
                goto fail;
            c->has_ca = 1;
            c->authmode = ctxs[i].cert_required ? MBEDTLS_SSL_VERIFY_REQUIRED : MBEDTLS_SSL_VERIFY_OPTIONAL;
        } else if (ctxs[i].cert_required) {
            snprintf(err, errlen, "%s: cert_required needs a CA to check client certificates against (cacert_chain_file "
                                  "or ca_secret)",
                     ctxs[i].source);
            goto fail;
        }
    }
    struct tls_cert *d = &s->certs[s->def];
    if (mbedtls_ssl_conf_own_cert(&s->c.conf, &d->crt, &d->key) != 0) {
        snprintf(err, errlen, "%s: cannot use the certificate", ctxs[s->def].source);
        goto fail;
    }
    if (d->has_ca)
        mbedtls_ssl_conf_ca_chain(&s->c.conf, &d->ca, NULL);
    mbedtls_ssl_conf_authmode(&s->c.conf, d->authmode);
    mbedtls_ssl_conf_sni(&s->c.conf, on_sni, s);
    mbedtls_ssl_cache_set_timeout(&s->cache, TLS_SESSION_LIFETIME_S);
    mbedtls_ssl_cache_set_max_entries(&s->cache, TLS_SESSION_CACHE_ENTRIES);
    mbedtls_ssl_conf_session_cache(&s->c.conf, &s->cache, mbedtls_ssl_cache_get, mbedtls_ssl_cache_set);
    if (mbedtls_ssl_ticket_setup(&s->ticket, mbedtls_ctr_drbg_random, &s->c.drbg, MBEDTLS_CIPHER_AES_256_GCM,
                                 TLS_SESSION_LIFETIME_S) != 0) {
        snprintf(err, errlen, "cannot set up TLS session tickets");
        goto fail;
    }
    mbedtls_ssl_conf_session_tickets_cb(&s->c.conf, mbedtls_ssl_ticket_write, mbedtls_ssl_ticket_parse, &s->ticket);
    return s;
fail:
    tls_server_free(s);
    return NULL;
}

void tls_server_free(struct tls_server *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++) {
        mbedtls_x509_crt_free(&s->certs[i].crt);
        mbedtls_x509_crt_free(&s->certs[i].ca);
        mbedtls_pk_free(&s->certs[i].key);
    }
    free(s->certs);
    mbedtls_ssl_ticket_free(&s->ticket);
    mbedtls_ssl_cache_free(&s->cache);
    common_free(&s->c);
    free(s);
}

struct tls_client *tls_client_new(const struct nu_tls_cfg *cfg, int want_h2, char *err, size_t errlen)
{
    struct tls_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    mbedtls_x509_crt_init(&c->ca);
    mbedtls_x509_crt_init(&c->crt);
    mbedtls_pk_init(&c->key);
    if (common_init(&c->c, MBEDTLS_SSL_IS_CLIENT, cfg, err, errlen) != NU_OK)
        goto fail;
    if (!c->c.alpn && want_h2) {
        /* An HTTP/2 upstream over TLS is only reached through ALPN h2; offer
         * it even when the TLSContext lists none (Emissary would fail there). */
        static const char *h2_only[] = {"h2", NULL};
        mbedtls_ssl_conf_alpn_protocols(&c->c.conf, h2_only);
    } else if (!c->c.alpn) {
        /* HTTP/1.1 clusters say so, so a server that also speaks h2 does not pick it. */
        static const char *http11_only[] = {"http/1.1", NULL};
        mbedtls_ssl_conf_alpn_protocols(&c->c.conf, http11_only);
    }
    if (cfg->ca_pem) {
        if (parse_pem_crt(&c->ca, cfg->ca_pem, cfg, "CA certificate", err, errlen) != NU_OK)
            goto fail;
        c->has_ca = 1;
        mbedtls_ssl_conf_ca_chain(&c->c.conf, &c->ca, NULL);
        mbedtls_ssl_conf_authmode(&c->c.conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    } else {
        /* As Emissary: without a CA the upstream is not verified. */
        mbedtls_ssl_conf_authmode(&c->c.conf, MBEDTLS_SSL_VERIFY_NONE);
    }
    if (cfg->cert_pem || cfg->key_pem) {
        if (parse_key_pair(&c->crt, &c->key, cfg, err, errlen) != NU_OK)
            goto fail;
        c->has_cert = 1;
        mbedtls_ssl_conf_own_cert(&c->c.conf, &c->crt, &c->key);
    }
    if (cfg->sni && !(c->sni = strdup(cfg->sni))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return c;
fail:
    tls_client_free(c);
    return NULL;
}

void tls_client_free(struct tls_client *c)
{
    if (!c)
        return;
    mbedtls_x509_crt_free(&c->ca);
    mbedtls_x509_crt_free(&c->crt);
    mbedtls_pk_free(&c->key);
    common_free(&c->c);
    free(c->sni);
    free(c);
}

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    struct tls *t = ctx;
    ssize_t n = send(t->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    return MBEDTLS_ERR_NET_SEND_FAILED;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    struct tls *t = ctx;
    ssize_t n = recv(t->fd, buf, len, 0);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_READ;
    return MBEDTLS_ERR_NET_RECV_FAILED;
}

static struct tls *tls_new(mbedtls_ssl_config *conf, int fd)
{
    struct tls *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    mbedtls_ssl_init(&t->ssl);
    if (mbedtls_ssl_setup(&t->ssl, conf) != 0) {
        mbedtls_ssl_free(&t->ssl);
        free(t);
        return NULL;
    }
    t->fd = fd;
    mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
    return t;
}

struct tls *tls_new_server(struct tls_server *s, int fd)
{
    return tls_new(&s->c.conf, fd);
}

struct tls *tls_new_client(struct tls_client *c, int fd)
{
    struct tls *t = tls_new(&c->c.conf, fd);
    /* With a name, mbedTLS sends it as SNI and checks the certificate against
     * it; without one (Emissary's default) neither happens. */
    if (t && c->sni && mbedtls_ssl_set_hostname(&t->ssl, c->sni) != 0) {
        tls_free(t);
        return NULL;
    }
    return t;
}

void tls_free(struct tls *t)
{
    if (!t)
        return;
    mbedtls_ssl_free(&t->ssl);
    free(t);
}

int tls_handshake(struct tls *t, int *want_write, char *detail, size_t dlen)
{
    int rc = mbedtls_ssl_handshake(&t->ssl);
    if (rc == 0)
        return NU_OK;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        *want_write = rc == MBEDTLS_ERR_SSL_WANT_WRITE;
        return NU_ERR_AGAIN;
    }
    if (rc == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
        char info[256];
        int n = mbedtls_x509_crt_verify_info(info, sizeof info, "", mbedtls_ssl_get_verify_result(&t->ssl));
        /* verify_info lists one reason per line: keep them on one log line */
        for (int i = 0; i < n && info[i]; i++)
            if (info[i] == '\n')
                info[i] = i == n - 1 ? '\0' : ';';
        snprintf(detail, dlen, "certificate verify failed: %s", n > 0 ? info : "unknown reason");
    } else if (rc == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
        snprintf(detail, dlen, "the peer sent a fatal TLS alert during the handshake (wrong or missing client "
                               "certificate, or no common protocol version or cipher)");
    } else if (rc == MBEDTLS_ERR_NET_SEND_FAILED || rc == MBEDTLS_ERR_NET_RECV_FAILED ||
               rc == MBEDTLS_ERR_SSL_CONN_EOF) {
        /* An OpenSSL peer that rejects us often just drops the connection. */
        snprintf(detail, dlen, "the peer closed the connection during the TLS handshake (does it require a client "
                               "certificate, or refuse our TLS version or ciphers?)");
    } else {
        tls_describe_error(rc, detail, dlen);
    }
    return NU_ERR_TLS;
}

ssize_t tls_read(struct tls *t, void *buf, size_t n, int *want_write)
{
    int rc = mbedtls_ssl_read(&t->ssl, buf, n);
    if (rc > 0)
        return rc;
    if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || rc == MBEDTLS_ERR_SSL_CONN_EOF)
        return 0;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        *want_write = rc == MBEDTLS_ERR_SSL_WANT_WRITE;
        return NU_ERR_AGAIN;
    }
    return NU_ERR_TLS;
}

ssize_t tls_write(struct tls *t, const void *buf, size_t n, int *want_write)
{
    int rc = mbedtls_ssl_write(&t->ssl, buf, n);
    if (rc >= 0)
        return rc;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        *want_write = rc == MBEDTLS_ERR_SSL_WANT_WRITE;
        return NU_ERR_AGAIN;
    }
    return NU_ERR_TLS;
}

size_t tls_pending(struct tls *t)
{
    return mbedtls_ssl_get_bytes_avail(&t->ssl);
}

const char *tls_alpn(struct tls *t)
{
    return mbedtls_ssl_get_alpn_protocol(&t->ssl);
}

const char *tls_sni(struct tls *t)
{
    return t->sni[0] ? t->sni : NULL;
}

int tls_config_check(const struct nu_config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        if (!cfg->listeners[i].tls)
            continue;
        struct tls_server *s = tls_server_new(cfg->tls_contexts, cfg->n_tls_contexts, err, errlen);
        if (!s)
            return NU_ERR_CONFIG;
        tls_server_free(s);
        break; /* every TLS listener shares the same contexts */
    }
    for (size_t i = 0; i < cfg->n_clusters; i++) {
        if (!cfg->clusters[i].tls)
            continue;
        struct tls_client *c = tls_client_new(cfg->clusters[i].tls, cfg->clusters[i].http2, err, errlen);
        if (!c)
            return NU_ERR_CONFIG;
        tls_client_free(c);
    }
    return NU_OK;
}
