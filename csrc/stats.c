/* Metrics: per-worker series, snapshots, and the Prometheus text format.
 *
 * A worker's series live in three arrays, one per kind of label tuple:
 *   req  (route, cluster, status, grpc_status): nuncio_requests_total;
 *   rc   (route, cluster): the duration histogram, byte counters, diag totals;
 *   grpc (cluster[, service, method]): Envoy's grpc_stats families.
 * Each array has an open-addressing hash table of indices beside it. Label
 * strings are interned once into one blob and series hold offsets into it, so
 * a snapshot is one malloc and four memcpy, and stays valid on any thread.
 * A req series remembers its rc series, so a request costs one hash lookup for
 * both (plus one for grpc_stats), and nothing is allocated once they exist. */
#include "stats.h"
#include "buf.h"
#include "nuncio.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* nuncio_request_duration_seconds: seconds; the last bucket is +Inf. */
static const double dur_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                    0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
static const char *const dur_le[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
                                     "0.5",    "1",     "2.5",    "5",     "10",   "30",    "60",   "+Inf"};
#define DUR_N 17
/* Envoy's default histogram buckets, in milliseconds for upstream_rq_time. */
static const double up_bounds[] = {0.5,  1,    5,     10,    25,    50,     100,    250,     500,    1000,
                                   2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000};
static const char *const up_le[] = {"0.5",   "1",      "5",      "10",      "25",      "50",    "100",
                                    "250",   "500",    "1000",   "2500",    "5000",    "10000", "30000",
                                    "60000", "300000", "600000", "1800000", "3600000", "+Inf"};
#define UP_N 20
#define GRPC_NSTATUS 17
#define GRPC_PREFIX "envoy_cluster_grpc_"

_Static_assert(NU_ARRAY_LEN(dur_bounds) + 1 == DUR_N && NU_ARRAY_LEN(dur_le) == DUR_N, "duration buckets");
_Static_assert(NU_ARRAY_LEN(up_bounds) + 1 == UP_N && NU_ARRAY_LEN(up_le) == UP_N, "upstream buckets");

/* Strings are offsets into a blob: at off, a uint32_t length, the bytes, a NUL.
 * Offset 0 is the empty string. */
struct req_series {
    uint32_t route, cluster, rc; /* rc: index of the (route, cluster) series */
    int32_t status, grpc_status;
    uint64_t count;
};

struct rc_series {
    uint32_t route, cluster;
    uint64_t count, bytes_in, bytes_out, errors_5xx, grpc_errors;
    double sum;
    uint64_t bucket[DUR_N]; /* per bucket, not cumulative: render adds them up */
};

struct grpc_series {
    uint32_t cluster, service, method; /* service = method = "" for the generic prefix */
    uint64_t status[GRPC_NSTATUS], success, failure, total, req_msgs, resp_msgs;
    uint64_t up_count;
    double up_sum;
    uint64_t up_bucket[UP_N];
};

/* Slots hold (hash << 32) | (index + 1); 0 is empty. Never shrinks: series are never removed. */
struct htab {
    uint64_t *slot;
    uint32_t mask, used;
};

struct stats {
    struct req_series *req;
    struct rc_series *rc;
    struct grpc_series *grpc;
    uint32_t n_req, n_rc, n_grpc, cap_req, cap_rc, cap_grpc;
    struct htab t_req, t_rc, t_grpc, t_str;
    char *blob;
    uint32_t blob_len, blob_cap;
    uint64_t requests, dropped;
    size_t max_series;
};

/* One allocation: this header, then the three arrays and the blob. */
struct stats_snap {
    struct stats_gauges g;
    uint64_t requests, dropped;
    const struct req_series *req;
    const struct rc_series *rc;
    const struct grpc_series *grpc;
    const char *blob;
    uint32_t n_req, n_rc, n_grpc;
};

struct str {
    const char *p;
    size_t n;
};

static struct str str_of(const char *s)
{
    return (struct str){s ? s : "", s ? strlen(s) : 0};
}

static uint64_t mix(uint64_t h, uint64_t v)
{
    h = (h ^ v) * 0x9E3779B97F4A7C15u;
    return h ^ (h >> 29);
}

static uint64_t hash_bytes(struct str s)
{
    const char *p = s.p;
    size_t n = s.n;
    uint64_t h = 0x243F6A8885A308D3u ^ n;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = mix(h, w);
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    return mix(h, w);
}

static uint32_t h32(uint64_t h)
{
    return (uint32_t)(h ^ (h >> 32));
}

static const char *blob_str(const char *blob, uint32_t off)
{
    return blob + off + sizeof(uint32_t);
}

static int blob_eq(const char *blob, uint32_t off, struct str k)
{
    uint32_t n;
    memcpy(&n, blob + off, sizeof n);
    return n == k.n && memcmp(blob + off + sizeof n, k.p, k.n) == 0;
}

/* ---- hash tables ---- */

typedef int (*eq_fn)(const struct stats *s, uint32_t idx, const void *key);

static int64_t htab_find(const struct htab *t, uint32_t h, eq_fn eq, const struct stats *s, const void *key)
{
    if (!t->slot)
        return -1;
    for (uint32_t i = h & t->mask;; i = (i + 1) & t->mask) {
        uint64_t e = t->slot[i];
        if (!e)
            return -1;
        if ((uint32_t)(e >> 32) == h && eq(s, (uint32_t)e - 1, key))
            return (uint32_t)e - 1;
    }
}

static void htab_put(struct htab *t, uint32_t h, uint32_t idx)
{
    uint32_t i = h & t->mask;
    while (t->slot[i])
        i = (i + 1) & t->mask;
    t->slot[i] = (uint64_t)h << 32 | (idx + 1u);
    t->used++;
}

/* Room for one more entry at a load of at most one half. */
static int htab_reserve(struct htab *t)
{
    if (t->slot && (t->used + 1) * 2 <= t->mask + 1)
        return NU_OK;
    uint32_t cap = t->slot ? (t->mask + 1) * 2 : 64;
    uint64_t *old = t->slot;
    uint32_t old_cap = t->slot ? t->mask + 1 : 0;
    t->slot = calloc(cap, sizeof *t->slot);
    if (!t->slot) {
        t->slot = old;
        return NU_ERR_NOMEM;
    }
    t->mask = cap - 1;
    t->used = 0;
    for (uint32_t i = 0; i < old_cap; i++)
        if (old[i])
            htab_put(t, (uint32_t)(old[i] >> 32), (uint32_t)old[i] - 1);
    free(old);
    return NU_OK;
}

/* Room for one more element in a growable array. */
static int vec_reserve(void **p, uint32_t n, uint32_t *cap, size_t size)
{
    if (n < *cap)
        return NU_OK;
    uint32_t c = *cap ? *cap * 2 : 16;
    void *q = realloc(*p, (size_t)c * size);
    if (!q)
        return NU_ERR_NOMEM;
    *p = q;
    *cap = c;
    return NU_OK;
}

/* ---- interned strings ---- */

static int str_eq(const struct stats *s, uint32_t off, const void *key)
{
    return blob_eq(s->blob, off, *(const struct str *)key);
}

/* The blob offset of k, copied in if new: >= 0, NU_ERR_LIMIT or NU_ERR_NOMEM. */
static int64_t intern(struct stats *s, struct str k, uint64_t h)
{
    if (k.n == 0)
        return 0;
    int64_t i = htab_find(&s->t_str, h32(h), str_eq, s, &k);
    if (i >= 0)
        return i;
    size_t need = (sizeof(uint32_t) + k.n + 1 + 3) & ~(size_t)3;
    if (k.n > STATS_MAX_STRING_BYTES || s->blob_len + need > STATS_MAX_STRING_BYTES)
        return NU_ERR_LIMIT;
    if (htab_reserve(&s->t_str) != NU_OK)
        return NU_ERR_NOMEM;
    if (s->blob_len + need > s->blob_cap) {
        size_t cap = (size_t)s->blob_cap * 2;
        while (cap < s->blob_len + need)
            cap *= 2;
        char *b = realloc(s->blob, cap);
        if (!b)
            return NU_ERR_NOMEM;
        s->blob = b;
        s->blob_cap = (uint32_t)cap;
    }
    uint32_t off = s->blob_len, n = (uint32_t)k.n;
    memcpy(s->blob + off, &n, sizeof n);
    memcpy(s->blob + off + sizeof n, k.p, k.n);
    memset(s->blob + off + sizeof n + k.n, 0, need - sizeof n - k.n);
    s->blob_len += (uint32_t)need;
    htab_put(&s->t_str, h32(h), off);
    return off;
}

static int has_room(const struct stats *s)
{
    return (size_t)s->n_req + s->n_rc + s->n_grpc < s->max_series;
}

/* ---- series lookup: each returns the index, created if need be, or
 * NU_ERR_LIMIT (the cap is reached) or NU_ERR_NOMEM ---- */

struct rkey {
    struct str route, cluster;
    uint64_t h_route, h_cluster;
    int status, grpc_status;
};

static int rc_eq(const struct stats *s, uint32_t i, const void *key)
{
    const struct rkey *k = key;
    return blob_eq(s->blob, s->rc[i].route, k->route) && blob_eq(s->blob, s->rc[i].cluster, k->cluster);
}

static int req_eq(const struct stats *s, uint32_t i, const void *key)
{
    const struct rkey *k = key;
    const struct req_series *q = &s->req[i];
    return q->status == k->status && q->grpc_status == k->grpc_status && blob_eq(s->blob, q->route, k->route) &&
           blob_eq(s->blob, q->cluster, k->cluster);
}

static int64_t rc_get(struct stats *s, const struct rkey *k)
{
    uint32_t h = h32(mix(k->h_route, k->h_cluster));
    int64_t i = htab_find(&s->t_rc, h, rc_eq, s, k);
    if (i >= 0)
        return i;
    if (!has_room(s))
        return NU_ERR_LIMIT;
    int64_t route = intern(s, k->route, k->h_route);
    int64_t cluster = route < 0 ? route : intern(s, k->cluster, k->h_cluster);
    if (cluster < 0)
        return cluster;
    if (htab_reserve(&s->t_rc) != NU_OK || vec_reserve((void **)&s->rc, s->n_rc, &s->cap_rc, sizeof *s->rc) != NU_OK)
        return NU_ERR_NOMEM;
    struct rc_series *c = &s->rc[s->n_rc];
    memset(c, 0, sizeof *c);
    c->route = (uint32_t)route;
    c->cluster = (uint32_t)cluster;
    htab_put(&s->t_rc, h, s->n_rc);
    return s->n_rc++;
}

static int64_t req_get(struct stats *s, const struct rkey *k)
{
    uint32_t h = h32(mix(mix(mix(k->h_route, k->h_cluster), (uint32_t)k->status), (uint32_t)k->grpc_status));
    int64_t i = htab_find(&s->t_req, h, req_eq, s, k);
    if (i >= 0)
        return i;
    int64_t rc = rc_get(s, k);
    if (rc < 0)
        return rc;
    if (!has_room(s))
        return NU_ERR_LIMIT;
    if (htab_reserve(&s->t_req) != NU_OK ||
        vec_reserve((void **)&s->req, s->n_req, &s->cap_req, sizeof *s->req) != NU_OK)
        return NU_ERR_NOMEM;
    s->req[s->n_req] = (struct req_series){
        .route = s->rc[rc].route,
        .cluster = s->rc[rc].cluster,
        .rc = (uint32_t)rc,
        .status = k->status,
        .grpc_status = k->grpc_status,
    };
    htab_put(&s->t_req, h, s->n_req);
    return s->n_req++;
}

struct gkey {
    struct str cluster, service, method;
    uint64_t h_cluster, h_service, h_method;
};

static int grpc_eq(const struct stats *s, uint32_t i, const void *key)
{
    const struct gkey *k = key;
    const struct grpc_series *g = &s->grpc[i];
    return blob_eq(s->blob, g->method, k->method) && blob_eq(s->blob, g->service, k->service) &&
           blob_eq(s->blob, g->cluster, k->cluster);
}

static int64_t grpc_get(struct stats *s, const struct gkey *k)
{
    uint32_t h = h32(mix(mix(k->h_cluster, k->h_service), k->h_method));
    int64_t i = htab_find(&s->t_grpc, h, grpc_eq, s, k);
    if (i >= 0)
        return i;
    if (!has_room(s))
        return NU_ERR_LIMIT;
    int64_t cluster = intern(s, k->cluster, k->h_cluster);
    int64_t service = cluster < 0 ? cluster : intern(s, k->service, k->h_service);
    int64_t method = service < 0 ? service : intern(s, k->method, k->h_method);
    if (method < 0)
        return method;
    if (htab_reserve(&s->t_grpc) != NU_OK ||
        vec_reserve((void **)&s->grpc, s->n_grpc, &s->cap_grpc, sizeof *s->grpc) != NU_OK)
        return NU_ERR_NOMEM;
    struct grpc_series *g = &s->grpc[s->n_grpc];
    memset(g, 0, sizeof *g);
    g->cluster = (uint32_t)cluster;
    g->service = (uint32_t)service;
    g->method = (uint32_t)method;
    htab_put(&s->t_grpc, h, s->n_grpc);
    return s->n_grpc++;
}

/* ---- the request path ---- */

/* "/pkg.Service/Method" -> service, method; 0 when the path is not of that
 * form (Envoy then uses the generic prefix too). */
static int grpc_split(const char *path, struct str *service, struct str *method)
{
    if (path[0] != '/')
        return 0;
    const char *slash = strchr(path + 1, '/');
    if (!slash || slash == path + 1 || !slash[1] || strchr(slash + 1, '/'))
        return 0;
    *service = (struct str){path + 1, (size_t)(slash - path - 1)};
    *method = str_of(slash + 1);
    return 1;
}

static int grpc_named(const struct stats_grpc_cfg *g, struct str service, struct str method)
{
    if (g->n_allow == 0)
        return g->all_methods;
    /* service and method are one "pkg.Service/Method" run inside the path */
    size_t whole = service.n + 1 + method.n;
    for (size_t i = 0; i < g->n_allow; i++) {
        const char *a = g->allow[i];
        size_t an = strlen(a);
        if ((an == whole || an == service.n + 1) && memcmp(a, service.p, an) == 0)
            return 1;
    }
    return 0;
}

static unsigned bucket_of(const double *bounds, unsigned n, double v)
{
    unsigned i = 0;
    while (i < n && v > bounds[i])
        i++;
    return i;
}

struct stats *stats_new(void)
{
    struct stats *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    /* offset 0: the empty string, so "no route" needs no interning */
    s->blob = calloc(1, 256);
    if (!s->blob) {
        free(s);
        return NULL;
    }
    s->blob_cap = 256;
    s->blob_len = 8;
    s->max_series = STATS_MAX_SERIES;
    return s;
}

void stats_free(struct stats *s)
{
    if (!s)
        return;
    free(s->req);
    free(s->rc);
    free(s->grpc);
    free(s->t_req.slot);
    free(s->t_rc.slot);
    free(s->t_grpc.slot);
    free(s->t_str.slot);
    free(s->blob);
    free(s);
}

void stats_set_max_series(struct stats *s, size_t max)
{
    s->max_series = max;
}

int stats_request(struct stats *s, const struct stats_req *r, const struct stats_grpc_cfg *g)
{
    struct rkey k = {.route = str_of(r->route), .cluster = str_of(r->cluster)};
    k.h_route = hash_bytes(k.route);
    k.h_cluster = hash_bytes(k.cluster);
    k.status = r->status > 0 ? r->status : 0; /* one "0" series, whatever "none" was passed as */
    k.grpc_status = r->grpc_status < 0 ? -1 : r->grpc_status;

    /* Find (or make) every series first and count only once all are there:
     * an allocation failure then leaves no half-counted request. */
    int64_t qi = req_get(s, &k);
    int64_t ci = qi >= 0 ? (int64_t)s->req[qi].rc : qi == NU_ERR_LIMIT ? rc_get(s, &k) : qi;
    int64_t gi = NU_ERR_CLOSED; /* grpc_stats does not apply */
    if (g && g->enabled && r->grpc_path && k.cluster.n) {
        struct gkey gk = {.cluster = k.cluster, .h_cluster = k.h_cluster, .service = {"", 0}, .method = {"", 0}};
        struct str service, method;
        if (grpc_split(r->grpc_path, &service, &method) && grpc_named(g, service, method)) {
            gk.service = service;
            gk.method = method;
        }
        gk.h_service = hash_bytes(gk.service);
        gk.h_method = hash_bytes(gk.method);
        gi = grpc_get(s, &gk);
    }
    if (qi == NU_ERR_NOMEM || ci == NU_ERR_NOMEM || gi == NU_ERR_NOMEM)
        return NU_ERR_NOMEM;

    s->requests++;
    s->dropped += (qi == NU_ERR_LIMIT) + (ci == NU_ERR_LIMIT) + (gi == NU_ERR_LIMIT);
    int grpc_error = r->grpc_path && r->grpc_status != 0;
    if (qi >= 0)
        s->req[qi].count++;
    if (ci >= 0) {
        struct rc_series *c = &s->rc[ci];
        double sec = r->seconds >= 0 ? r->seconds : 0; /* NaN too */
        c->count++;
        c->sum += sec;
        c->bucket[bucket_of(dur_bounds, DUR_N - 1, sec)]++;
        c->bytes_in += r->bytes_in;
        c->bytes_out += r->bytes_out;
        c->errors_5xx += r->status >= 500;
        c->grpc_errors += grpc_error;
    }
    if (gi >= 0) {
        struct grpc_series *gs = &s->grpc[gi];
        if (r->grpc_status >= 0 && r->grpc_status < GRPC_NSTATUS)
            gs->status[r->grpc_status]++;
        gs->success += r->grpc_status == 0;
        gs->failure += r->grpc_status != 0;
        gs->total++;
        gs->req_msgs += r->req_msgs;
        gs->resp_msgs += r->resp_msgs;
        if (g->upstream_stats && r->upstream_seconds >= 0) {
            /* Envoy records whole milliseconds (duration_cast truncates) */
            double ms = floor(r->upstream_seconds * 1000);
            gs->up_count++;
            gs->up_sum += ms;
            gs->up_bucket[bucket_of(up_bounds, UP_N - 1, ms)]++;
        }
    }
    return NU_OK;
}

/* ---- snapshots ---- */

struct stats_snap *stats_snapshot(const struct stats *s, const struct stats_gauges *g)
{
    /* every series struct holds 8-byte members, so each array stays aligned */
    size_t hdr = (sizeof(struct stats_snap) + 7) & ~(size_t)7;
    size_t req = (size_t)s->n_req * sizeof *s->req, rc = (size_t)s->n_rc * sizeof *s->rc,
           grpc = (size_t)s->n_grpc * sizeof *s->grpc;
    char *m = malloc(hdr + req + rc + grpc + s->blob_len);
    if (!m)
        return NULL;
    struct stats_snap *sn = (struct stats_snap *)m;
    memset(sn, 0, sizeof *sn);
    if (g)
        sn->g = *g;
    sn->requests = s->requests;
    sn->dropped = s->dropped;
    char *p = m + hdr;
    sn->req = memcpy(p, s->req ? (const void *)s->req : "", req);
    p += req;
    sn->rc = memcpy(p, s->rc ? (const void *)s->rc : "", rc);
    p += rc;
    sn->grpc = memcpy(p, s->grpc ? (const void *)s->grpc : "", grpc);
    p += grpc;
    sn->blob = memcpy(p, s->blob, s->blob_len);
    sn->n_req = s->n_req;
    sn->n_rc = s->n_rc;
    sn->n_grpc = s->n_grpc;
    return sn;
}

void stats_snap_free(struct stats_snap *snap)
{
    free(snap);
}

/* ---- merging: every snapshot's series of one kind, sorted by labels, equal ones summed ---- */

struct ref {
    const struct stats_snap *sn;
    const void *rec;
};

static struct ref *collect(struct stats_snap *const *snaps, size_t n, int kind, size_t *count)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += kind == 0 ? snaps[i]->n_req : kind == 1 ? snaps[i]->n_rc : snaps[i]->n_grpc;
    struct ref *refs = malloc((total ? total : 1) * sizeof *refs);
    if (!refs)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct stats_snap *sn = snaps[i];
        uint32_t m = kind == 0 ? sn->n_req : kind == 1 ? sn->n_rc : sn->n_grpc;
        for (uint32_t j = 0; j < m; j++)
            refs[k++] = (struct ref){sn, kind == 0   ? (const void *)&sn->req[j]
                                         : kind == 1 ? (const void *)&sn->rc[j]
                                                     : (const void *)&sn->grpc[j]};
    }
    *count = total;
    return refs;
}

static int cmp_int(long a, long b)
{
    return (a > b) - (a < b);
}

static int cmp_req(const void *a, const void *b)
{
    const struct ref *x = a, *y = b;
    const struct req_series *p = x->rec, *q = y->rec;
    int c = strcmp(blob_str(x->sn->blob, p->route), blob_str(y->sn->blob, q->route));
    if (!c)
        c = strcmp(blob_str(x->sn->blob, p->cluster), blob_str(y->sn->blob, q->cluster));
    if (!c)
        c = cmp_int(p->status, q->status);
    return c ? c : cmp_int(p->grpc_status, q->grpc_status);
}

static int cmp_rc(const void *a, const void *b)
{
    const struct ref *x = a, *y = b;
    const struct rc_series *p = x->rec, *q = y->rec;
    int c = strcmp(blob_str(x->sn->blob, p->route), blob_str(y->sn->blob, q->route));
    return c ? c : strcmp(blob_str(x->sn->blob, p->cluster), blob_str(y->sn->blob, q->cluster));
}

/* The metric name part for a service: its last dot-separated component, with
 * anything outside [a-zA-Z0-9_] made '_'. */
static struct str service_short(const char *service)
{
    const char *dot = strrchr(service, '.');
    return str_of(dot ? dot + 1 : service);
}

static char name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ? c : '_';
}

static int cmp_short(struct str a, struct str b)
{
    for (size_t i = 0; i < a.n && i < b.n; i++) {
        unsigned char x = (unsigned char)name_char(a.p[i]), y = (unsigned char)name_char(b.p[i]);
        if (x != y)
            return x < y ? -1 : 1;
    }
    return cmp_int((long)a.n, (long)b.n);
}

/* Generic first, then by metric name (sanitized short service), then labels:
 * the series of one family come out together. */
static int cmp_grpc(const void *a, const void *b)
{
    const struct ref *x = a, *y = b;
    const struct grpc_series *p = x->rec, *q = y->rec;
    const char *ps = blob_str(x->sn->blob, p->service), *qs = blob_str(y->sn->blob, q->service);
    int c = cmp_int(*ps != 0, *qs != 0);
    if (!c)
        c = cmp_short(service_short(ps), service_short(qs));
    if (!c)
        c = strcmp(blob_str(x->sn->blob, p->cluster), blob_str(y->sn->blob, q->cluster));
    if (!c)
        c = strcmp(ps, qs);
    return c ? c : strcmp(blob_str(x->sn->blob, p->method), blob_str(y->sn->blob, q->method));
}

struct rc_m {
    const char *route, *cluster;
    struct rc_series v;
};

struct grpc_m {
    const char *cluster, *service, *method;
    struct grpc_series v;
};

/* Merged (route, cluster) series, sorted; NULL on NOMEM. */
static struct rc_m *merge_rc(struct stats_snap *const *snaps, size_t n, size_t *count)
{
    size_t nr;
    struct ref *refs = collect(snaps, n, 1, &nr);
    struct rc_m *out = refs ? malloc((nr ? nr : 1) * sizeof *out) : NULL;
    if (!out) {
        free(refs);
        return NULL;
    }
    qsort(refs, nr, sizeof *refs, cmp_rc);
    size_t k = 0;
    for (size_t i = 0; i < nr; i++) {
        const struct rc_series *c = refs[i].rec;
        if (i == 0 || cmp_rc(&refs[i - 1], &refs[i]) != 0) {
            out[k++] = (struct rc_m){blob_str(refs[i].sn->blob, c->route), blob_str(refs[i].sn->blob, c->cluster), *c};
            continue;
        }
        struct rc_series *m = &out[k - 1].v;
        m->count += c->count;
        m->bytes_in += c->bytes_in;
        m->bytes_out += c->bytes_out;
        m->errors_5xx += c->errors_5xx;
        m->grpc_errors += c->grpc_errors;
        m->sum += c->sum;
        for (int b = 0; b < DUR_N; b++)
            m->bucket[b] += c->bucket[b];
    }
    free(refs);
    *count = k;
    return out;
}

static struct grpc_m *merge_grpc(struct stats_snap *const *snaps, size_t n, size_t *count)
{
    size_t nr;
    struct ref *refs = collect(snaps, n, 2, &nr);
    struct grpc_m *out = refs ? malloc((nr ? nr : 1) * sizeof *out) : NULL;
    if (!out) {
        free(refs);
        return NULL;
    }
    qsort(refs, nr, sizeof *refs, cmp_grpc);
    size_t k = 0;
    for (size_t i = 0; i < nr; i++) {
        const struct grpc_series *g = refs[i].rec;
        const char *blob = refs[i].sn->blob;
        if (i == 0 || cmp_grpc(&refs[i - 1], &refs[i]) != 0) {
            out[k++] =
                (struct grpc_m){blob_str(blob, g->cluster), blob_str(blob, g->service), blob_str(blob, g->method), *g};
            continue;
        }
        struct grpc_series *m = &out[k - 1].v;
        for (int st = 0; st < GRPC_NSTATUS; st++)
            m->status[st] += g->status[st];
        m->success += g->success;
        m->failure += g->failure;
        m->total += g->total;
        m->req_msgs += g->req_msgs;
        m->resp_msgs += g->resp_msgs;
        m->up_count += g->up_count;
        m->up_sum += g->up_sum;
        for (int b = 0; b < UP_N; b++)
            m->up_bucket[b] += g->up_bucket[b];
    }
    free(refs);
    *count = k;
    return out;
}

/* ---- the text format ---- */

struct out {
    struct buf *b;
    int err;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (!o->err && buf_append(o->b, s, n) != NU_OK)
        o->err = NU_ERR_NOMEM;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_u64(struct out *o, uint64_t v)
{
    char t[24];
    put(o, t, (size_t)snprintf(t, sizeof t, "%" PRIu64, v));
}

static void put_double(struct out *o, double v)
{
    char t[40];
    if (isnan(v)) {
        puts_(o, "NaN");
        return;
    }
    if (isinf(v)) {
        puts_(o, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    /* the shortest of the two that reads back exactly */
    int n = snprintf(t, sizeof t, "%.15g", v);
    if (strtod(t, NULL) != v)
        n = snprintf(t, sizeof t, "%.17g", v);
    put(o, t, (size_t)n);
}

/* A label value: backslash, double quote and newline escaped. */
static void put_esc(struct out *o, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        const char *e = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
        if (e) {
            put(o, run, (size_t)(s - run));
            put(o, e, 2);
            run = s + 1;
        }
    }
    put(o, run, (size_t)(s - run));
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
    puts_(o, "# HELP ");
    puts_(o, name);
    puts_(o, " ");
    puts_(o, help);
    puts_(o, "\n# TYPE ");
    puts_(o, name);
    puts_(o, " ");
    puts_(o, type);
    puts_(o, "\n");
}

static void sample_u64(struct out *o, const char *name, uint64_t v)
{
    puts_(o, name);
    puts_(o, " ");
    put_u64(o, v);
    puts_(o, "\n");
}

static void single(struct out *o, const char *name, const char *type, const char *help, uint64_t v)
{
    family(o, name, type, help);
    sample_u64(o, name, v);
}

static void put_route_cluster(struct out *o, const char *route, const char *cluster)
{
    puts_(o, "{route=\"");
    put_esc(o, route);
    puts_(o, "\",cluster=\"");
    put_esc(o, cluster);
    puts_(o, "\"");
}

static void render_process(struct out *o, const struct stats_process *p)
{
    single(o, "nuncio_config_generation", "gauge", "Configuration generation in use.", p->config_generation);
    family(o, "nuncio_config_reloads_total", "counter", "Configuration reloads, by result.");
    puts_(o, "nuncio_config_reloads_total{result=\"failed\"} ");
    put_u64(o, p->reloads_failed);
    puts_(o, "\nnuncio_config_reloads_total{result=\"ok\"} ");
    put_u64(o, p->reloads_ok);
    puts_(o, "\n");
    family(o, "nuncio_config_last_reload_success_timestamp_seconds", "gauge",
           "Unix time of the last successful configuration load (0: never).");
    puts_(o, "nuncio_config_last_reload_success_timestamp_seconds ");
    put_double(o, p->last_reload_success_time);
    puts_(o, "\n");
    family(o, "nuncio_process_start_time_seconds", "gauge", "Unix time the process started.");
    puts_(o, "nuncio_process_start_time_seconds ");
    put_double(o, p->start_time);
    puts_(o, "\n");
    single(o, "nuncio_workers", "gauge", "Worker threads.", p->workers);
    single(o, "nuncio_access_log_dropped_total", "counter",
           "Access log lines dropped (the writer fell behind, or writes failed).", p->access_log_dropped);
}

static int cmp_worker(const void *a, const void *b)
{
    return cmp_int((*(struct stats_snap *const *)a)->g.worker, (*(struct stats_snap *const *)b)->g.worker);
}

/* Per-worker families, one series per worker index (equal indices summed). */
static void render_workers(struct out *o, struct stats_snap *const *snaps, size_t n)
{
    struct stats_snap **by = malloc((n ? n : 1) * sizeof *by);
    if (!by) {
        o->err = NU_ERR_NOMEM;
        return;
    }
    if (n)
        memcpy(by, snaps, n * sizeof *by);
    qsort(by, n, sizeof *by, cmp_worker);
    for (int f = 0; f < 2; f++) {
        const char *name = f ? "nuncio_worker_requests_total" : "nuncio_worker_downstream_connections_total";
        family(o, name, "counter", f ? "Requests finished, by worker." : "Downstream connections accepted, by worker.");
        for (size_t i = 0; i < n;) {
            uint64_t v = 0;
            size_t j = i;
            for (; j < n && by[j]->g.worker == by[i]->g.worker; j++)
                v += f ? by[j]->requests : by[j]->g.downstream_conns_total;
            char t[64];
            snprintf(t, sizeof t, "%s{worker=\"%d\"} ", name, by[i]->g.worker);
            puts_(o, t);
            put_u64(o, v);
            puts_(o, "\n");
            i = j;
        }
    }
    free(by);
}

void stats_gauges_add(struct stats_gauges *sum, const struct stats_gauges *g)
{
    sum->downstream_conns_active += g->downstream_conns_active;
    sum->downstream_conns_total += g->downstream_conns_total;
    sum->upstream_conns_active += g->upstream_conns_active;
    sum->upstream_conns_total += g->upstream_conns_total;
    sum->streams_active += g->streams_active;
    sum->upstream_retries += g->upstream_retries;
    sum->upstream_ejections += g->upstream_ejections;
    sum->lua_errors += g->lua_errors;
    for (int k = 0; k < H2_ABUSE_KINDS; k++)
        sum->h2_abuse[k] += g->h2_abuse[k];
}

static void render_sums(struct out *o, struct stats_snap *const *snaps, size_t n)
{
    struct stats_gauges t = {0};
    uint64_t dropped = 0;
    for (size_t i = 0; i < n; i++) {
        stats_gauges_add(&t, &snaps[i]->g);
        dropped += snaps[i]->dropped;
    }
    single(o, "nuncio_downstream_connections_active", "gauge", "Open downstream connections.",
           t.downstream_conns_active);
    single(o, "nuncio_downstream_connections_total", "counter", "Downstream connections accepted.",
           t.downstream_conns_total);
    single(o, "nuncio_upstream_connections_active", "gauge", "Open upstream connections.", t.upstream_conns_active);
    single(o, "nuncio_upstream_connections_total", "counter", "Upstream connections opened.", t.upstream_conns_total);
    single(o, "nuncio_streams_active", "gauge", "Requests in flight.", t.streams_active);
    single(o, "nuncio_upstream_retries_total", "counter", "Upstream request retries.", t.upstream_retries);
    single(o, "nuncio_upstream_ejections_total", "counter", "Upstream endpoints ejected.", t.upstream_ejections);
    single(o, "nuncio_lua_errors_total", "counter", "Errors raised by Lua filters.", t.lua_errors);
    single(o, "nuncio_stats_series_dropped_total", "counter",
           "Metric updates dropped because a worker reached its series or label bytes limit.", dropped);
    /* Every kind, zeros too: a scrape can tell "never" from "not reported". */
    family(o, "nuncio_http2_abuse_total", "counter",
           "HTTP/2 connections closed for breaking an abuse budget, by kind.");
    for (int k = 0; k < H2_ABUSE_KINDS; k++) {
        puts_(o, "nuncio_http2_abuse_total{kind=\"");
        puts_(o, h2_abuse_name(k));
        puts_(o, "\"} ");
        put_u64(o, t.h2_abuse[k]);
        puts_(o, "\n");
    }
}

static void render_requests(struct out *o, struct stats_snap *const *snaps, size_t n)
{
    size_t nr;
    struct ref *refs = collect(snaps, n, 0, &nr);
    if (!refs) {
        o->err = NU_ERR_NOMEM;
        return;
    }
    qsort(refs, nr, sizeof *refs, cmp_req);
    family(o, "nuncio_requests_total", "counter", "Requests finished, by route, cluster, status and grpc-status.");
    for (size_t i = 0; i < nr;) {
        uint64_t v = 0;
        size_t j = i;
        for (; j < nr && cmp_req(&refs[i], &refs[j]) == 0; j++)
            v += ((const struct req_series *)refs[j].rec)->count;
        const struct req_series *q = refs[i].rec;
        if (v) {
            puts_(o, "nuncio_requests_total");
            put_route_cluster(o, blob_str(refs[i].sn->blob, q->route), blob_str(refs[i].sn->blob, q->cluster));
            char t[48];
            puts_(o, ",status=\"");
            put_u64(o, (uint64_t)q->status);
            if (q->grpc_status >= 0)
                snprintf(t, sizeof t, "\",grpc_status=\"%d\"} ", (int)q->grpc_status);
            else
                snprintf(t, sizeof t, "\",grpc_status=\"\"} ");
            puts_(o, t);
            put_u64(o, v);
            puts_(o, "\n");
        }
        i = j;
    }
    free(refs);
}

static void render_rc(struct out *o, const struct rc_m *m, size_t n)
{
    family(o, "nuncio_request_duration_seconds", "histogram", "Downstream request duration, by route and cluster.");
    for (size_t i = 0; i < n; i++) {
        if (!m[i].v.count)
            continue;
        uint64_t cum = 0;
        for (int b = 0; b < DUR_N; b++) {
            cum += m[i].v.bucket[b];
            puts_(o, "nuncio_request_duration_seconds_bucket");
            put_route_cluster(o, m[i].route, m[i].cluster);
            puts_(o, ",le=\"");
            puts_(o, dur_le[b]);
            puts_(o, "\"} ");
            put_u64(o, cum);
            puts_(o, "\n");
        }
        puts_(o, "nuncio_request_duration_seconds_sum");
        put_route_cluster(o, m[i].route, m[i].cluster);
        puts_(o, "} ");
        put_double(o, m[i].v.sum);
        puts_(o, "\nnuncio_request_duration_seconds_count");
        put_route_cluster(o, m[i].route, m[i].cluster);
        puts_(o, "} ");
        put_u64(o, m[i].v.count);
        puts_(o, "\n");
    }
    for (int f = 0; f < 2; f++) {
        const char *name = f ? "nuncio_response_bytes_total" : "nuncio_request_bytes_total";
        family(o, name, "counter",
               f ? "Response body bytes, by route and cluster." : "Request body bytes, by route and cluster.");
        for (size_t i = 0; i < n; i++) {
            if (!m[i].v.count)
                continue;
            puts_(o, name);
            put_route_cluster(o, m[i].route, m[i].cluster);
            puts_(o, "} ");
            put_u64(o, f ? m[i].v.bytes_out : m[i].v.bytes_in);
            puts_(o, "\n");
        }
    }
}

/* A grpc_stats metric name: the prefix, the short service (named series), the suffix. */
static void put_grpc_name(struct out *o, const struct grpc_m *g, const char *suffix)
{
    puts_(o, GRPC_PREFIX);
    if (*g->service) {
        struct str s = service_short(g->service);
        for (size_t i = 0; i < s.n; i++) {
            char c = name_char(s.p[i]);
            put(o, &c, 1);
        }
        puts_(o, "_");
    }
    puts_(o, suffix);
}

static void put_grpc_labels(struct out *o, const struct grpc_m *g)
{
    puts_(o, "{envoy_cluster_name=\"");
    put_esc(o, g->cluster);
    if (*g->service) {
        puts_(o, "\",envoy_grpc_bridge_service=\"");
        put_esc(o, g->service);
        puts_(o, "\",envoy_grpc_bridge_method=\"");
        put_esc(o, g->method);
    }
    puts_(o, "\"");
}

static void grpc_family(struct out *o, const struct grpc_m *g, const char *suffix, const char *type, const char *help)
{
    puts_(o, "# HELP ");
    put_grpc_name(o, g, suffix);
    puts_(o, " ");
    puts_(o, help);
    puts_(o, "\n# TYPE ");
    put_grpc_name(o, g, suffix);
    puts_(o, " ");
    puts_(o, type);
    puts_(o, "\n");
}

/* The counters of a grpc_stats series: 0..16 by grpc-status, then these. */
enum { GV_SUCCESS = GRPC_NSTATUS, GV_FAILURE, GV_TOTAL, GV_REQ_MSGS, GV_RESP_MSGS, GV_END };

static uint64_t grpc_value(const struct grpc_series *v, int what)
{
    switch (what) {
    case GV_SUCCESS:
        return v->success;
    case GV_FAILURE:
        return v->failure;
    case GV_TOTAL:
        return v->total;
    case GV_REQ_MSGS:
        return v->req_msgs;
    case GV_RESP_MSGS:
        return v->resp_msgs;
    default:
        return v->status[what];
    }
}

/* One counter family over the series [g, g + n), which share a metric name.
 * Status counters exist only once charged (as Envoy's do); the others always. */
static void grpc_counter(struct out *o, const struct grpc_m *g, size_t n, int what)
{
    static const char *const names[] = {"success", "failure", "total", "request_message_count",
                                        "response_message_count"};
    char num[12];
    const char *suffix = num;
    if (what >= GRPC_NSTATUS)
        suffix = names[what - GRPC_NSTATUS];
    else
        snprintf(num, sizeof num, "%d", what);
    int any = what >= GRPC_NSTATUS;
    for (size_t i = 0; i < n && !any; i++)
        any = grpc_value(&g[i].v, what) != 0;
    if (!any)
        return;
    grpc_family(o, g, suffix, "counter", "Envoy grpc_stats counter.");
    for (size_t i = 0; i < n; i++) {
        uint64_t v = grpc_value(&g[i].v, what);
        if (what < GRPC_NSTATUS && !v)
            continue;
        put_grpc_name(o, &g[i], suffix);
        put_grpc_labels(o, &g[i]);
        puts_(o, "} ");
        put_u64(o, v);
        puts_(o, "\n");
    }
}

static void grpc_histogram(struct out *o, const struct grpc_m *g, size_t n)
{
    int any = 0;
    for (size_t i = 0; i < n && !any; i++)
        any = g[i].v.up_count != 0;
    if (!any)
        return;
    grpc_family(o, g, "upstream_rq_time", "histogram", "Envoy grpc_stats upstream request time (milliseconds).");
    for (size_t i = 0; i < n; i++) {
        if (!g[i].v.up_count)
            continue;
        uint64_t cum = 0;
        for (int b = 0; b < UP_N; b++) {
            cum += g[i].v.up_bucket[b];
            put_grpc_name(o, &g[i], "upstream_rq_time_bucket");
            put_grpc_labels(o, &g[i]);
            puts_(o, ",le=\"");
            puts_(o, up_le[b]);
            puts_(o, "\"} ");
            put_u64(o, cum);
            puts_(o, "\n");
        }
        put_grpc_name(o, &g[i], "upstream_rq_time_sum");
        put_grpc_labels(o, &g[i]);
        puts_(o, "} ");
        put_double(o, g[i].v.up_sum);
        puts_(o, "\n");
        put_grpc_name(o, &g[i], "upstream_rq_time_count");
        put_grpc_labels(o, &g[i]);
        puts_(o, "} ");
        put_u64(o, g[i].v.up_count);
        puts_(o, "\n");
    }
}

static int same_family(const struct grpc_m *a, const struct grpc_m *b)
{
    if ((*a->service != 0) != (*b->service != 0))
        return 0;
    return !*a->service || cmp_short(service_short(a->service), service_short(b->service)) == 0;
}

static void render_grpc(struct out *o, struct stats_snap *const *snaps, size_t n)
{
    size_t ng;
    struct grpc_m *g = merge_grpc(snaps, n, &ng);
    if (!g) {
        o->err = NU_ERR_NOMEM;
        return;
    }
    /* series with no request (left by an allocation failure) are not shown */
    size_t k = 0;
    for (size_t i = 0; i < ng; i++)
        if (g[i].v.total)
            g[k++] = g[i];
    for (size_t i = 0; i < k;) {
        size_t j = i + 1;
        while (j < k && same_family(&g[i], &g[j]))
            j++;
        for (int what = 0; what < GV_END; what++)
            grpc_counter(o, g + i, j - i, what);
        grpc_histogram(o, g + i, j - i);
        i = j;
    }
    free(g);
}

int stats_render(struct buf *out, struct stats_snap *const *snaps, size_t n, const struct stats_process *p)
{
    size_t before = buf_size(out);
    struct out o = {out, NU_OK};
    if (p)
        render_process(&o, p);
    render_sums(&o, snaps, n);
    render_workers(&o, snaps, n);
    render_requests(&o, snaps, n);
    size_t nrc;
    struct rc_m *rc = merge_rc(snaps, n, &nrc);
    if (rc)
        render_rc(&o, rc, nrc);
    else
        o.err = NU_ERR_NOMEM;
    free(rc);
    render_grpc(&o, snaps, n);
    if (o.err) {
        out->len = out->off + before; /* a compaction keeps the unread bytes first */
        return o.err;
    }
    return NU_OK;
}

int stats_each_route(struct stats_snap *const *snaps, size_t n,
                     void (*fn)(void *arg, const char *route, uint64_t requests, uint64_t errors_5xx,
                                uint64_t grpc_errors, double seconds_sum),
                     void *arg)
{
    size_t nrc;
    struct rc_m *m = merge_rc(snaps, n, &nrc);
    if (!m)
        return NU_ERR_NOMEM;
    /* sorted by route then cluster: a route's clusters are adjacent */
    for (size_t i = 0; i < nrc;) {
        struct rc_series t = {0};
        size_t j = i;
        for (; j < nrc && strcmp(m[j].route, m[i].route) == 0; j++) {
            t.count += m[j].v.count;
            t.errors_5xx += m[j].v.errors_5xx;
            t.grpc_errors += m[j].v.grpc_errors;
            t.sum += m[j].v.sum;
        }
        if (t.count)
            fn(arg, m[i].route, t.count, t.errors_5xx, t.grpc_errors, t.sum);
        i = j;
    }
    free(m);
    return NU_OK;
}
