/* Unit tests for the metrics module (csrc/stats.c) and the gRPC message
 * counter that feeds it (grpc_msg_count in csrc/grpc.c). */
#include <stdlib.h>

/* Allocation failures on demand, for stats.c only: the allocations left
 * before one fails, or -1 for never. */
static long fail_after = -1;

static int may_alloc(void)
{
    if (fail_after < 0)
        return 1;
    return fail_after-- > 0;
}

static void *t_malloc(size_t n)
{
    return may_alloc() ? malloc(n) : NULL;
}

static void *t_calloc(size_t n, size_t size)
{
    return may_alloc() ? calloc(n, size) : NULL;
}

static void *t_realloc(void *p, size_t n)
{
    return may_alloc() ? realloc(p, n) : NULL;
}

#define malloc t_malloc
#define calloc t_calloc
#define realloc t_realloc
#include "../../csrc/stats.c"
#undef malloc
#undef calloc
#undef realloc

#include "check.h"
#include "grpc.h"

#include <time.h>

/* ---- helpers ---- */

/* Renders the snapshots into a NUL-terminated string the caller frees. */
static char *render_n(struct stats_snap *const *snaps, size_t n, const struct stats_process *p)
{
    struct buf b = {0};
    if (stats_render(&b, snaps, n, p) != NU_OK || buf_append(&b, "", 1) != NU_OK) {
        buf_free(&b);
        return NULL;
    }
    return (char *)b.data;
}

static char *render1(struct stats *s)
{
    struct stats_gauges g = {0};
    struct stats_snap *sn = stats_snapshot(s, &g);
    char *text = sn ? render_n(&sn, 1, NULL) : NULL;
    stats_snap_free(sn);
    return text;
}

/* The value of the sample whose "name{labels}" is exactly series; -1 when absent. */
static double value_of(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL)
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            return strtod(l + n + 1, NULL);
    return -1;
}

static struct stats_req req(const char *route, const char *cluster, int status, double seconds)
{
    return (struct stats_req){.route = route,
                              .cluster = cluster,
                              .status = status,
                              .grpc_status = -1,
                              .seconds = seconds,
                              .upstream_seconds = -1};
}

static struct stats_req grpc_req(const char *cluster, const char *path, int grpc_status)
{
    return (struct stats_req){.route = "r",
                              .cluster = cluster,
                              .grpc_path = path,
                              .status = 200,
                              .grpc_status = grpc_status,
                              .seconds = 0.002,
                              .upstream_seconds = 0.0017,
                              .req_msgs = 1,
                              .resp_msgs = 2};
}

/* ---- a small validator of the text format (0.0.4) ---- */

#define V_MAX 4096

struct family {
    char name[256];
    char type[16];
    int help, closed;
};

static int name_ok(const char *s, size_t n)
{
    if (!n || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '_' || s[i] == ':' || (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

static int find_family(struct family *f, int nf, const char *name, size_t n)
{
    for (int i = 0; i < nf; i++)
        if (strlen(f[i].name) == n && memcmp(f[i].name, name, n) == 0)
            return i;
    return -1;
}

static int ends_with(const char *s, size_t n, const char *suffix, size_t *stem)
{
    size_t k = strlen(suffix);
    if (n <= k || memcmp(s + n - k, suffix, k) != 0)
        return 0;
    *stem = n - k;
    return 1;
}

/* Returns NULL when text is well formed, else what is wrong (line in bad[]). */
static const char *validate(const char *text, char *bad, size_t badn)
{
    static struct family fam[V_MAX];
    static char *series[V_MAX];
    int nf = 0, ns = 0, last = -1;
    const char *err = NULL;
    if (*text && text[strlen(text) - 1] != '\n')
        return "no final newline";
#define FAIL(msg)                                                                                                      \
    do {                                                                                                               \
        err = msg;                                                                                                     \
        goto done;                                                                                                     \
    } while (0)
    for (const char *l = text; *l && !err;) {
        const char *eol = strchr(l, '\n');
        size_t len = (size_t)(eol - l);
        snprintf(bad, badn, "%.*s", (int)len, l);
        if (len >= 7 && (memcmp(l, "# HELP ", 7) == 0 || memcmp(l, "# TYPE ", 7) == 0)) {
            const char *name = l + 7, *sp = memchr(name, ' ', (size_t)(eol - name));
            if (!sp || !name_ok(name, (size_t)(sp - name))) {
                err = "bad comment";
                break;
            }
            int i = find_family(fam, nf, name, (size_t)(sp - name));
            if (i < 0) {
                if (nf == V_MAX || (size_t)(sp - name) >= sizeof fam[0].name)
                    FAIL("too many families");
                i = nf++;
                memset(&fam[i], 0, sizeof fam[i]);
                memcpy(fam[i].name, name, (size_t)(sp - name));
            } else if (fam[i].closed) {
                err = "family comment after its samples";
            }
            if (l[2] == 'H') {
                err = fam[i].help++ ? "two HELP lines" : err;
            } else {
                size_t tn = (size_t)(eol - sp - 1);
                if (fam[i].type[0])
                    err = "two TYPE lines";
                else if (tn >= sizeof fam[i].type)
                    err = "bad type";
                else
                    memcpy(fam[i].type, sp + 1, tn);
                if (!err && strcmp(fam[i].type, "counter") && strcmp(fam[i].type, "gauge") &&
                    strcmp(fam[i].type, "histogram"))
                    err = "unknown type";
            }
        } else if (len && l[0] == '#') {
            /* other comments are allowed */
        } else {
            const char *p = l;
            while (p < eol && *p != '{' && *p != ' ')
                p++;
            size_t nn = (size_t)(p - l), stem;
            if (!name_ok(l, nn))
                FAIL("bad sample name");
            if (*p == '{') {
                p++;
                while (*p != '}') {
                    const char *ls = p;
                    while (p < eol && *p != '=')
                        p++;
                    if (p >= eol || !name_ok(ls, (size_t)(p - ls)) || p[1] != '"')
                        FAIL("bad label name");
                    for (p += 2; p < eol && *p != '"'; p++)
                        if (*p == '\\' && (p[1] == '\\' || p[1] == '"' || p[1] == 'n'))
                            p++;
                        else if (*p == '\\')
                            FAIL("bad escape");
                    if (p >= eol)
                        FAIL("unterminated label value");
                    p++;
                    if (*p == ',')
                        p++;
                    else if (*p != '}')
                        FAIL("bad label list");
                }
                p++;
            }
            if (*p != ' ')
                FAIL("no value");
            char *vend;
            strtod(p + 1, &vend);
            if (vend != eol)
                FAIL("bad value");
            int f = find_family(fam, nf, l, nn);
            if (f < 0 && (ends_with(l, nn, "_bucket", &stem) || ends_with(l, nn, "_sum", &stem) ||
                          ends_with(l, nn, "_count", &stem))) {
                f = find_family(fam, nf, l, stem);
                if (f >= 0 && strcmp(fam[f].type, "histogram") != 0)
                    f = -1;
            }
            if (f < 0 || !fam[f].type[0])
                FAIL("sample without a TYPE");
            if (f != last && last >= 0)
                fam[last].closed = 1;
            if (fam[f].closed)
                FAIL("family samples not together");
            last = f;
            size_t key = (size_t)(p - l);
            for (int i = 0; i < ns; i++)
                if (strlen(series[i]) == key && memcmp(series[i], l, key) == 0)
                    err = "duplicate series";
            if (ns == V_MAX)
                FAIL("too many series");
            series[ns] = strndup(l, key);
            if (!series[ns])
                FAIL("out of memory");
            ns++;
        }
        l = eol + 1;
    }
#undef FAIL
    /* a histogram's sample names must not be another family's name */
    for (int i = 0; i < nf && !err; i++) {
        char t[300];
        static const char *const sfx[] = {"_bucket", "_sum", "_count"};
        for (int k = 0; k < 3 && !strcmp(fam[i].type, "histogram"); k++) {
            snprintf(t, sizeof t, "%s%s", fam[i].name, sfx[k]);
            if (find_family(fam, nf, t, strlen(t)) >= 0)
                err = "family names collide";
        }
        if (!fam[i].type[0])
            err = "family without TYPE";
    }
done:
    for (int i = 0; i < ns; i++)
        free(series[i]);
    return err;
}

static int valid(const char *text)
{
    char bad[512];
    const char *err = text ? validate(text, bad, sizeof bad) : "no text";
    if (err)
        fprintf(stderr, "invalid exposition: %s at: %s\n", err, bad);
    return err == NULL;
}

/* ---- tests ---- */

static void test_two_workers(void)
{
    struct stats *a = stats_new(), *b = stats_new();
    CHECK(a && b);
    struct stats_req r = req("route-a", "cluster-a", 200, 0.003);
    r.bytes_in = 10;
    r.bytes_out = 100;
    for (int i = 0; i < 3; i++)
        CHECK(stats_request(a, &r, NULL) == NU_OK);
    for (int i = 0; i < 2; i++)
        CHECK(stats_request(b, &r, NULL) == NU_OK);
    struct stats_req e = req("route-a", "cluster-a", 503, 0.2);
    CHECK(stats_request(b, &e, NULL) == NU_OK);
    struct stats_req none = req(NULL, NULL, 404, 0.0001);
    CHECK(stats_request(a, &none, NULL) == NU_OK);
    struct stats_req reset = req("route-b", "", 0, 1);
    CHECK(stats_request(a, &reset, NULL) == NU_OK);

    struct stats_gauges ga = {.worker = 0,
                              .downstream_conns_active = 2,
                              .downstream_conns_total = 7,
                              .upstream_conns_total = 1,
                              .lua_errors = 1};
    struct stats_gauges gb = {.worker = 1,
                              .downstream_conns_active = 3,
                              .downstream_conns_total = 5,
                              .streams_active = 4,
                              .upstream_retries = 2};
    struct stats_snap *snaps[2] = {stats_snapshot(a, &ga), stats_snapshot(b, &gb)};
    CHECK(snaps[0] && snaps[1]);
    /* a snapshot is a copy: later requests do not change it */
    CHECK(stats_request(a, &r, NULL) == NU_OK);
    stats_free(a);
    stats_free(b);

    struct stats_process p = {.config_generation = 3,
                              .reloads_ok = 2,
                              .reloads_failed = 1,
                              .workers = 2,
                              .start_time = 1700000000.5,
                              .last_reload_success_time = 1700000100};
    char *t = render_n(snaps, 2, &p);
    CHECK(t && valid(t));
    CHECK(value_of(t, "nuncio_requests_total{route=\"route-a\",cluster=\"cluster-a\",status=\"200\","
                      "grpc_status=\"\"}") == 5);
    CHECK(value_of(t, "nuncio_requests_total{route=\"route-a\",cluster=\"cluster-a\",status=\"503\","
                      "grpc_status=\"\"}") == 1);
    CHECK(value_of(t, "nuncio_requests_total{route=\"\",cluster=\"\",status=\"404\",grpc_status=\"\"}") == 1);
    CHECK(value_of(t, "nuncio_requests_total{route=\"route-b\",cluster=\"\",status=\"0\",grpc_status=\"\"}") == 1);
    CHECK(value_of(t, "nuncio_request_bytes_total{route=\"route-a\",cluster=\"cluster-a\"}") == 50);
    CHECK(value_of(t, "nuncio_response_bytes_total{route=\"route-a\",cluster=\"cluster-a\"}") == 500);
    CHECK(value_of(t, "nuncio_request_duration_seconds_count{route=\"route-a\",cluster=\"cluster-a\"}") == 6);
    CHECK(value_of(t, "nuncio_worker_requests_total{worker=\"0\"}") == 5);
    CHECK(value_of(t, "nuncio_worker_requests_total{worker=\"1\"}") == 3);
    CHECK(value_of(t, "nuncio_worker_downstream_connections_total{worker=\"1\"}") == 5);
    CHECK(value_of(t, "nuncio_downstream_connections_active") == 5);
    CHECK(value_of(t, "nuncio_downstream_connections_total") == 12);
    CHECK(value_of(t, "nuncio_upstream_connections_total") == 1);
    CHECK(value_of(t, "nuncio_streams_active") == 4);
    CHECK(value_of(t, "nuncio_upstream_retries_total") == 2);
    CHECK(value_of(t, "nuncio_lua_errors_total") == 1);
    CHECK(value_of(t, "nuncio_stats_series_dropped_total") == 0);
    CHECK(value_of(t, "nuncio_config_generation") == 3);
    CHECK(value_of(t, "nuncio_config_reloads_total{result=\"ok\"}") == 2);
    CHECK(value_of(t, "nuncio_config_reloads_total{result=\"failed\"}") == 1);
    CHECK(value_of(t, "nuncio_config_last_reload_success_timestamp_seconds") == 1700000100);
    CHECK(value_of(t, "nuncio_process_start_time_seconds") == 1700000000.5);
    CHECK(value_of(t, "nuncio_workers") == 2);
    CHECK(strstr(t, "envoy_") == NULL);

    /* the same snapshots in another order render the same bytes */
    struct stats_snap *swapped[2] = {snaps[1], snaps[0]};
    char *t2 = render_n(swapped, 2, &p);
    CHECK(t2 && strcmp(t, t2) == 0);
    free(t2);
    free(t);
    stats_snap_free(snaps[0]);
    stats_snap_free(snaps[1]);
}

static void test_histogram(void)
{
    struct stats *s = stats_new();
    static const double secs[] = {0.0001, 0.0005, 0.0007, 0.003, 0.003, 0.7, 45, 100, -1};
    for (size_t i = 0; i < NU_ARRAY_LEN(secs); i++) {
        struct stats_req r = req("h", "c", 200, secs[i]);
        CHECK(stats_request(s, &r, NULL) == NU_OK);
    }
    char *t = render1(s);
    CHECK(t && valid(t));
#define B(le) value_of(t, "nuncio_request_duration_seconds_bucket{route=\"h\",cluster=\"c\",le=\"" le "\"}")
    CHECK(B("0.0005") == 3); /* 0.0001, 0.0005 (le is inclusive) and -1 counted as 0 */
    CHECK(B("0.001") == 4);
    CHECK(B("0.0025") == 4);
    CHECK(B("0.005") == 6);
    CHECK(B("0.5") == 6);
    CHECK(B("1") == 7);
    CHECK(B("30") == 7);
    CHECK(B("60") == 8);
    CHECK(B("+Inf") == 9);
#undef B
    CHECK(value_of(t, "nuncio_request_duration_seconds_count{route=\"h\",cluster=\"c\"}") == 9);
    double sum = value_of(t, "nuncio_request_duration_seconds_sum{route=\"h\",cluster=\"c\"}");
    CHECK(sum > 145.7072 && sum < 145.7074);
    /* cumulative all the way: never decreasing */
    double prev = 0;
    for (size_t i = 0; i < NU_ARRAY_LEN(dur_le); i++) {
        char k[128];
        snprintf(k, sizeof k, "nuncio_request_duration_seconds_bucket{route=\"h\",cluster=\"c\",le=\"%s\"}", dur_le[i]);
        double v = value_of(t, k);
        CHECK(v >= prev);
        prev = v;
    }
    free(t);
    stats_free(s);
}

static void test_escaping(void)
{
    struct stats *s = stats_new();
    struct stats_req r = req("a\"b\\c\nd", "cl", 200, 0.01);
    CHECK(stats_request(s, &r, NULL) == NU_OK);
    char *t = render1(s);
    CHECK(t && valid(t));
    CHECK(value_of(t, "nuncio_requests_total{route=\"a\\\"b\\\\c\\nd\",cluster=\"cl\",status=\"200\","
                      "grpc_status=\"\"}") == 1);
    free(t);
    stats_free(s);
}

static void test_grpc_all_methods(void)
{
    struct stats *s = stats_new();
    struct stats_grpc_cfg g = {.enabled = 1, .all_methods = 1, .upstream_stats = 1};
    struct stats_req r = grpc_req("cluster_echo", "/echo.EchoService/Echo", 0);
    CHECK(stats_request(s, &r, &g) == NU_OK);
    CHECK(stats_request(s, &r, &g) == NU_OK);
    r.grpc_status = 13;
    CHECK(stats_request(s, &r, &g) == NU_OK);
    r.grpc_status = -1; /* reset: no grpc-status */
    r.upstream_seconds = -1;
    CHECK(stats_request(s, &r, &g) == NU_OK);
    struct stats_req odd = grpc_req("c2", "/my.pkg.Foo-Bar/Do", 0);
    CHECK(stats_request(s, &odd, &g) == NU_OK);
    struct stats_req bad = grpc_req("c2", "/no-method", 0); /* not /service/method: generic */
    CHECK(stats_request(s, &bad, &g) == NU_OK);
    char *t = render1(s);
    CHECK(t && valid(t));
#define L                                                                                                              \
    "{envoy_cluster_name=\"cluster_echo\",envoy_grpc_bridge_service=\"echo.EchoService\","                             \
    "envoy_grpc_bridge_method=\"Echo\"}"
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_0" L) == 2);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_13" L) == 1);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_14" L) == -1);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_success" L) == 2);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_failure" L) == 2);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_total" L) == 4);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_request_message_count" L) == 4);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_response_message_count" L) == 8);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_upstream_rq_time_count" L) == 3);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_upstream_rq_time_sum" L) == 3); /* 1.7 ms -> 1 */
#undef L
#define L                                                                                                              \
    "{envoy_cluster_name=\"cluster_echo\",envoy_grpc_bridge_service=\"echo.EchoService\","                             \
    "envoy_grpc_bridge_method=\"Echo\",le=\""
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_upstream_rq_time_bucket" L "0.5\"}") == 0);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_upstream_rq_time_bucket" L "1\"}") == 3);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_upstream_rq_time_bucket" L "3600000\"}") == 3);
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_upstream_rq_time_bucket" L "+Inf\"}") == 3);
#undef L
    CHECK(value_of(t, "envoy_cluster_grpc_Foo_Bar_0{envoy_cluster_name=\"c2\",envoy_grpc_bridge_service="
                      "\"my.pkg.Foo-Bar\",envoy_grpc_bridge_method=\"Do\"}") == 1);
    CHECK(value_of(t, "envoy_cluster_grpc_0{envoy_cluster_name=\"c2\"}") == 1);
    CHECK(value_of(t, "nuncio_requests_total{route=\"r\",cluster=\"cluster_echo\",status=\"200\","
                      "grpc_status=\"13\"}") == 1);
    free(t);
    stats_free(s);
}

/* Service names chosen to make metric names meet: the output must stay valid. */
static void test_grpc_name_clashes(void)
{
    static const char *const paths[] = {"/p.upstream_rq_time/M", "/p.0/M",           "/p./M",
                                        "/p.request_message/M",  "/q.upstream_rq/M", "/p.EchoService_0/M",
                                        "/p.Echo-Service/M",     "/p.Echo_Service/M"};
    struct stats *s = stats_new();
    struct stats_grpc_cfg g = {.enabled = 1, .all_methods = 1, .upstream_stats = 1};
    for (size_t i = 0; i < NU_ARRAY_LEN(paths); i++) {
        struct stats_req r = grpc_req("c", paths[i], (int)i);
        CHECK(stats_request(s, &r, &g) == NU_OK);
        r.grpc_path = "/generic";
        CHECK(stats_request(s, &r, &g) == NU_OK);
    }
    char *t = render1(s);
    CHECK(t && valid(t));
    /* two services with one metric name share the family, told apart by label */
    CHECK(value_of(t, "envoy_cluster_grpc_Echo_Service_total{envoy_cluster_name=\"c\",envoy_grpc_bridge_service="
                      "\"p.Echo-Service\",envoy_grpc_bridge_method=\"M\"}") == 1);
    CHECK(value_of(t, "envoy_cluster_grpc_Echo_Service_total{envoy_cluster_name=\"c\",envoy_grpc_bridge_service="
                      "\"p.Echo_Service\",envoy_grpc_bridge_method=\"M\"}") == 1);
    free(t);
    stats_free(s);
}

static void test_validator(void)
{
    char bad[512];
    CHECK(validate("# TYPE a counter\na 1\n", bad, sizeof bad) == NULL);
    CHECK(validate("a 1\n", bad, sizeof bad) != NULL);
    CHECK(validate("# TYPE a counter\n# TYPE a gauge\na 1\n", bad, sizeof bad) != NULL);
    CHECK(validate("# TYPE a counter\n# TYPE b counter\na 1\nb 1\na{x=\"1\"} 1\n", bad, sizeof bad) != NULL);
    CHECK(validate("# TYPE a counter\na{x=\"\\q\"} 1\n", bad, sizeof bad) != NULL);
    CHECK(validate("# TYPE a counter\na 1\na 2\n", bad, sizeof bad) != NULL);
    CHECK(validate("# TYPE h histogram\n# TYPE h_count counter\nh_count 1\n", bad, sizeof bad) != NULL);
    CHECK(validate("# TYPE a counter\na x\n", bad, sizeof bad) != NULL);
}

static void test_grpc_allowlist(void)
{
    struct stats *s = stats_new();
    static const char *const allow[] = {"echo.EchoService/Echo", "pkg.Any/"};
    /* all_methods is ignored under an allowlist */
    struct stats_grpc_cfg g = {.enabled = 1, .all_methods = 1, .allow = allow, .n_allow = 2};
    struct stats_req r = grpc_req("c", "/echo.EchoService/Echo", 0);
    CHECK(stats_request(s, &r, &g) == NU_OK);
    r.grpc_path = "/echo.EchoService/Other";
    CHECK(stats_request(s, &r, &g) == NU_OK);
    r.grpc_path = "/echo.EchoService/Ech";
    CHECK(stats_request(s, &r, &g) == NU_OK);
    r.grpc_path = "/pkg.Any/Whatever";
    r.grpc_status = 7;
    CHECK(stats_request(s, &r, &g) == NU_OK);
    r.grpc_path = "/pkg.Anything/Whatever";
    CHECK(stats_request(s, &r, &g) == NU_OK);
    char *t = render1(s);
    CHECK(t && valid(t));
    CHECK(value_of(t, "envoy_cluster_grpc_EchoService_0{envoy_cluster_name=\"c\",envoy_grpc_bridge_service="
                      "\"echo.EchoService\",envoy_grpc_bridge_method=\"Echo\"}") == 1);
    CHECK(value_of(t, "envoy_cluster_grpc_0{envoy_cluster_name=\"c\"}") == 2);
    CHECK(value_of(t, "envoy_cluster_grpc_7{envoy_cluster_name=\"c\"}") == 1);
    CHECK(value_of(t, "envoy_cluster_grpc_total{envoy_cluster_name=\"c\"}") == 3);
    CHECK(value_of(t, "envoy_cluster_grpc_Any_7{envoy_cluster_name=\"c\",envoy_grpc_bridge_service="
                      "\"pkg.Any\",envoy_grpc_bridge_method=\"Whatever\"}") == 1);
    CHECK(strstr(t, "Other") == NULL && strstr(t, "Anything") == NULL);
    CHECK(strstr(t, "upstream_rq_time") == NULL); /* upstream_stats off */
    free(t);
    stats_free(s);
}

static void test_grpc_disabled(void)
{
    struct stats *s = stats_new();
    struct stats_grpc_cfg g = {.enabled = 0, .all_methods = 1, .upstream_stats = 1};
    struct stats_req r = grpc_req("c", "/echo.EchoService/Echo", 0);
    CHECK(stats_request(s, &r, &g) == NU_OK);
    CHECK(stats_request(s, &r, NULL) == NU_OK);
    struct stats_grpc_cfg on = {.enabled = 1, .all_methods = 1};
    struct stats_req plain = req("r", "c", 200, 0.01); /* not gRPC */
    CHECK(stats_request(s, &plain, &on) == NU_OK);
    struct stats_req nocluster = grpc_req("", "/echo.EchoService/Echo", 14);
    CHECK(stats_request(s, &nocluster, &on) == NU_OK);
    char *t = render1(s);
    CHECK(t && valid(t));
    CHECK(strstr(t, "envoy_") == NULL);
    free(t);
    stats_free(s);
}

static void test_cap(void)
{
    struct stats *s = stats_new();
    stats_set_max_series(s, 5);
    struct stats_grpc_cfg g = {.enabled = 1, .all_methods = 1};
    char route[32];
    for (int i = 0; i < 50; i++) {
        snprintf(route, sizeof route, "route-%02d", i);
        struct stats_req r = req(route, "c", 200, 0.01);
        CHECK(stats_request(s, &r, &g) == NU_OK);
    }
    CHECK(s->n_req + s->n_rc + s->n_grpc <= 5);
    CHECK(s->requests == 50);
    /* an existing series still counts at the cap */
    struct stats_req r = req("route-00", "c", 200, 0.01);
    CHECK(stats_request(s, &r, &g) == NU_OK);
    char *t = render1(s);
    CHECK(t && valid(t));
    CHECK(value_of(t, "nuncio_requests_total{route=\"route-00\",cluster=\"c\",status=\"200\",grpc_status=\"\"}") == 2);
    CHECK(value_of(t, "nuncio_stats_series_dropped_total") > 0);
    CHECK(strstr(t, "route-49") == NULL);
    free(t);
    stats_free(s);
}

static void test_determinism(void)
{
    /* the same requests in another order and split over workers differently */
    static const char *const routes[] = {"b", "a", "c", "a\\", "a\""};
    struct stats *x = stats_new(), *y = stats_new(), *z = stats_new(), *idle = stats_new();
    struct stats_grpc_cfg g = {.enabled = 1, .all_methods = 1, .upstream_stats = 1};
    for (int i = 0; i < 5; i++) {
        struct stats_req r = grpc_req("cl", "/a.S/M", i);
        r.route = routes[i];
        struct stats_req q = grpc_req(i & 1 ? "c1" : "c0", i & 2 ? "/b.T/N" : "/a.S/M", 0);
        CHECK(stats_request(x, &r, &g) == NU_OK && stats_request(x, &q, &g) == NU_OK);
        CHECK(stats_request(i & 1 ? y : z, &q, &g) == NU_OK);
    }
    for (int i = 4; i >= 0; i--) {
        struct stats_req r = grpc_req("cl", "/a.S/M", i);
        r.route = routes[i];
        CHECK(stats_request(i & 1 ? z : y, &r, &g) == NU_OK);
    }
    struct stats_gauges g0 = {.worker = 0}, g1 = {.worker = 1};
    struct stats_snap *one[2] = {stats_snapshot(x, &g0), stats_snapshot(idle, &g1)};
    struct stats_snap *two[2] = {stats_snapshot(y, &g0), stats_snapshot(z, &g0)};
    char *a = render_n(one, 2, NULL), *b = render_n(two, 2, NULL);
    CHECK(a && b && valid(a) && valid(b));
    /* per-worker series differ by design; everything else must match */
    char *wa = strstr(a, "# HELP nuncio_worker_downstream"), *wb = strstr(b, "# HELP nuncio_worker_downstream");
    char *ra = strstr(a, "# HELP nuncio_requests_total"), *rb = strstr(b, "# HELP nuncio_requests_total");
    CHECK(wa && wb && ra && rb && wa - a == wb - b && memcmp(a, b, (size_t)(wa - a)) == 0 && strcmp(ra, rb) == 0);
    free(a);
    free(b);
    for (int i = 0; i < 2; i++) {
        stats_snap_free(one[i]);
        stats_snap_free(two[i]);
    }
    stats_free(x);
    stats_free(y);
    stats_free(z);
    stats_free(idle);
}

struct route_seen {
    int n;
    char route[4][16];
    uint64_t requests[4], errors[4], grpc_errors[4];
    double seconds[4];
};

static void on_route(void *arg, const char *route, uint64_t requests, uint64_t errors_5xx, uint64_t grpc_errors,
                     double seconds_sum)
{
    struct route_seen *s = arg;
    if (s->n == 4)
        return;
    snprintf(s->route[s->n], sizeof s->route[0], "%s", route);
    s->requests[s->n] = requests;
    s->errors[s->n] = errors_5xx;
    s->grpc_errors[s->n] = grpc_errors;
    s->seconds[s->n++] = seconds_sum;
}

static void test_each_route(void)
{
    struct stats *a = stats_new(), *b = stats_new();
    struct stats_req r = req("z", "c1", 200, 1);
    CHECK(stats_request(a, &r, NULL) == NU_OK);
    r.cluster = "c2";
    r.status = 502;
    CHECK(stats_request(b, &r, NULL) == NU_OK);
    struct stats_req q = grpc_req("c1", "/a.S/M", 14);
    q.route = "y";
    q.seconds = 0.5;
    CHECK(stats_request(b, &q, NULL) == NU_OK);
    q.grpc_status = 0;
    CHECK(stats_request(a, &q, NULL) == NU_OK);
    struct stats_snap *snaps[2] = {stats_snapshot(a, NULL), stats_snapshot(b, NULL)};
    struct route_seen seen = {0};
    CHECK(stats_each_route(snaps, 2, on_route, &seen) == NU_OK);
    CHECK(seen.n == 2);
    CHECK_STR(seen.route[0], "y");
    CHECK(seen.requests[0] == 2 && seen.errors[0] == 0 && seen.grpc_errors[0] == 1 && seen.seconds[0] == 1);
    CHECK_STR(seen.route[1], "z");
    CHECK(seen.requests[1] == 2 && seen.errors[1] == 1 && seen.grpc_errors[1] == 0 && seen.seconds[1] == 2);
    stats_snap_free(snaps[0]);
    stats_snap_free(snaps[1]);
    stats_free(a);
    stats_free(b);
}

static void test_empty(void)
{
    char *t = render_n(NULL, 0, NULL);
    CHECK(t && valid(t));
    CHECK(value_of(t, "nuncio_downstream_connections_active") == 0);
    free(t);
}

static void count_route(void *arg, const char *route, uint64_t requests, uint64_t errors_5xx, uint64_t grpc_errors,
                        double seconds_sum)
{
    *(uint64_t *)arg += requests;
}

/* Every allocation in turn fails once: never a crash or a leak, a failed
 * request is not counted at all, a failed render leaves the buffer alone. */
static void test_nomem(void)
{
    struct stats_grpc_cfg g = {.enabled = 1, .all_methods = 1, .upstream_stats = 1};
    int finished = 0;
    for (long k = 0; k < 10000 && !finished; k++) {
        int failed = 0;
        uint64_t counted = 0;
        fail_after = k;
        struct stats *s = stats_new();
        if (!s) {
            fail_after = -1;
            continue;
        }
        for (int i = 0; i < 60; i++) {
            char route[64], path[64];
            snprintf(route, sizeof route, "route-with-a-longer-name-%d", i % 25);
            snprintf(path, sizeof path, "/pkg.Service%d/Method%d", i % 7, i % 3);
            struct stats_req r = grpc_req(i % 2 ? "c1" : "c0", path, i % 17);
            r.route = route;
            uint64_t before = s->requests;
            int rc = stats_request(s, &r, &g);
            CHECK(rc == NU_OK ? s->requests == before + 1 : rc == NU_ERR_NOMEM && s->requests == before);
            failed |= rc != NU_OK;
            counted += rc == NU_OK;
        }
        struct stats_snap *sn = stats_snapshot(s, NULL);
        failed |= sn == NULL;
        if (sn) {
            struct buf b = {0};
            CHECK(buf_append(&b, "x", 1) == NU_OK);
            int rc = stats_render(&b, &sn, 1, NULL);
            CHECK(rc == NU_OK || (rc == NU_ERR_NOMEM && buf_size(&b) == 1));
            failed |= rc != NU_OK;
            if (rc == NU_OK && buf_append(&b, "", 1) == NU_OK) {
                CHECK(valid((char *)b.data + 1));
                CHECK(value_of((char *)b.data + 1, "nuncio_worker_requests_total{worker=\"0\"}") == (double)counted);
            }
            buf_free(&b);
            uint64_t total = 0;
            rc = stats_each_route(&sn, 1, count_route, &total);
            CHECK(rc == NU_OK ? total == counted : rc == NU_ERR_NOMEM);
            failed |= rc != NU_OK;
        }
        fail_after = -1;
        stats_snap_free(sn);
        stats_free(s);
        finished = !failed;
    }
    CHECK(finished);
}

/* The gRPC message counter, fed one body in random splits. */
static void test_msg_count(void)
{
    uint8_t body[4096];
    size_t n = 0;
    uint64_t msgs = 0;
    srand(7);
    while (n + 5 + 64 < sizeof body) {
        uint32_t len = (uint32_t)(rand() % 64) * (rand() % 3 != 0); /* empty messages too */
        body[n++] = (uint8_t)(rand() & 1);
        for (int i = 3; i >= 0; i--)
            body[n++] = (uint8_t)(len >> (8 * i));
        memset(body + n, 0xAB, len);
        n += len;
        msgs++;
    }
    for (int round = 0; round < 200; round++) {
        struct grpc_msg_counter c = {0};
        for (size_t off = 0; off < n;) {
            size_t k = round == 0 ? 1 : (size_t)(rand() % 13);
            if (k > n - off)
                k = n - off;
            grpc_msg_count(&c, body + off, k);
            off += k;
        }
        CHECK(c.msgs == msgs);
        CHECK(c.state == 0);
    }
    /* a message counts once its first byte is seen; a 4 GiB length is skipped, not read */
    struct grpc_msg_counter c = {0};
    const uint8_t huge[] = {0, 0xFF, 0xFF};
    grpc_msg_count(&c, huge, 1);
    CHECK(c.msgs == 1);
    grpc_msg_count(&c, huge + 1, 2);
    grpc_msg_count(&c, huge + 1, 2);
    CHECK(c.msgs == 1 && c.state == 5 && c.left == 0xFFFFFFFFu);
    grpc_msg_count(&c, body, sizeof body);
    CHECK(c.msgs == 1 && c.left == 0xFFFFFFFFu - sizeof body);
}

/* ns per stats_request on an existing series (set NUNCIO_STATS_BENCH to run). */
static void bench(void)
{
    struct stats *s = stats_new();
    struct stats_grpc_cfg g = {.enabled = 1, .all_methods = 1, .upstream_stats = 1};
    struct stats_req r = grpc_req("echo_cluster_default", "/echo.EchoService/Echo", 0);
    r.route = "echo-mapping-default";
    struct stats_req plain = req("echo-mapping-default", "echo_cluster_default", 200, 0.0021);
    for (int pass = 0; pass < 2; pass++) {
        const struct stats_req *q = pass ? &plain : &r;
        const int n = 5000000;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < n; i++)
            stats_request(s, q, pass ? NULL : &g);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / n;
        printf("stats_request (%s): %.1f ns\n", pass ? "http" : "grpc, grpc_stats all_methods", ns);
    }
    stats_free(s);
}

int main(void)
{
    test_two_workers();
    test_histogram();
    test_escaping();
    test_grpc_all_methods();
    test_grpc_name_clashes();
    test_grpc_allowlist();
    test_validator();
    test_grpc_disabled();
    test_cap();
    test_determinism();
    test_each_route();
    test_empty();
    test_nomem();
    test_msg_count();
    if (getenv("NUNCIO_STATS_BENCH"))
        bench();
    CHECK_DONE();
}
