/* Unit tests for the access log (csrc/access_log.c): every operator, Envoy's
 * default format byte for byte, JSON that parses back, whole lines from two
 * threads, drops when the writer is stuck, close flushing, reopen, and the
 * cost of one line. */
#include "../../csrc/access_log.c"
#include "check.h"

#include <sys/stat.h>

/* ---- helpers ---- */

static char tmpdir[] = "/tmp/nuncio-al-XXXXXX";

static void tmp_path(char *dst, size_t n, const char *name)
{
    snprintf(dst, n, "%s/%s", tmpdir, name);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *d = malloc(cap + 1);
    size_t k;
    while (d && (k = fread(d + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            char *nd = realloc(d, cap * 2 + 1);
            if (!nd) {
                free(d);
                d = NULL;
                break;
            }
            d = nd;
            cap *= 2;
        }
    }
    fclose(f);
    if (d)
        d[n] = 0;
    if (len)
        *len = n;
    return d;
}

static void add(struct hdr_map *m, const char *name, const char *value)
{
    hdr_add(m, name, strlen(name), value, strlen(value));
}

static struct hdr_map req, resp, trl;

static struct access_log_rec sample(void)
{
    hdr_clear(&req);
    hdr_clear(&resp);
    hdr_clear(&trl);
    add(&req, ":method", "POST");
    add(&req, ":path", "/helloworld.Greeter/SayHello?x=1");
    add(&req, ":authority", "grpc.example.com");
    add(&req, "content-type", "application/grpc");
    add(&req, "user-agent", "grpc-python/1.51");
    add(&req, "x-request-id", "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2");
    add(&req, "x-forwarded-for", "10.0.35.28");
    add(&resp, ":status", "200");
    add(&resp, "content-type", "application/grpc");
    add(&trl, "grpc-status", "0");
    add(&trl, "grpc-message", "");
    struct access_log_rec r = {
        .start_time = 1795500062.123, /* 2026-11-24T06:01:02.123Z */
        .req = &req,
        .resp = &resp,
        .trailers = &trl,
        .protocol = "HTTP/2",
        .response_code = 200,
        .response_flags = "-",
        .response_code_details = "via_upstream",
        .bytes_received = 154,
        .bytes_sent = 12,
        .duration_ms = 226,
        .response_duration_ms = 100,
        .upstream_service_time_ms = -1,
        .upstream_host = "10.0.2.1:50051",
        .upstream_cluster = "cluster_greeter",
        .route_name = "greeter",
        .downstream_remote_address = "192.168.1.7:53312",
        .downstream_local_address = "10.0.0.5:8080",
        .requested_server_name = "grpc.example.com",
        .grpc_status = -1,
        .connection_id = 42,
        .attempts = 1,
    };
    return r;
}

static struct access_log *open_text(const char *format, const char *path)
{
    struct nu_access_log_cfg cfg = {.enabled = 1, .path = (char *)(path ? path : "/dev/null"), .format = (char *)format};
    char err[256];
    struct access_log *al = access_log_open(&cfg, err, sizeof err);
    if (!al)
        fprintf(stderr, "open failed: %s\n", err);
    return al;
}

/* Renders one line with al's format without any thread or file. */
static char line_buf[65536];
static const char *render(struct access_log *al, const struct access_log_rec *r)
{
    static struct access_log_buf *b;
    if (!b)
        b = access_log_buf_new();
    struct batch *c = batch_new();
    struct out o = {c, 0};
    format_line(&o, al, b, r);
    size_t n = c->len < sizeof line_buf - 1 ? c->len : sizeof line_buf - 1;
    memcpy(line_buf, c->data, n);
    line_buf[n] = 0;
    batch_free(c);
    return line_buf;
}

/* One operator alone: its text without the newline the log adds. */
static const char *op1(const char *format, const struct access_log_rec *r)
{
    struct access_log *al = open_text(format, NULL);
    if (!al)
        return "(open failed)";
    const char *s = render(al, r);
    access_log_close(al);
    size_t n = strlen(s);
    if (n && s[n - 1] == '\n')
        line_buf[n - 1] = 0;
    return line_buf;
}

static const char *open_error(const char *format)
{
    static char err[256];
    struct nu_access_log_cfg cfg = {.enabled = 1, .path = "/dev/null", .format = (char *)format};
    err[0] = 0;
    struct access_log *al = access_log_open(&cfg, err, sizeof err);
    if (al) {
        access_log_close(al);
        return "(opened)";
    }
    return err;
}

/* ---- a small JSON reader: one flat object of strings, numbers and null ---- */

struct jv {
    char key[64];
    int type; /* 's' string, 'n' number, '0' null */
    char s[1024];
    double num;
};

static const char *jstr(const char *p, char *dst, size_t cap)
{
    if (*p++ != '"')
        return NULL;
    size_t n = 0;
    while (*p != '"') {
        unsigned char c = (unsigned char)*p;
        if (c < 0x20 || !c)
            return NULL; /* raw control bytes are invalid JSON */
        if (c == '\\') {
            p++;
            char e = *p++;
            unsigned v = 0;
            switch (e) {
            case '"': v = '"'; break;
            case '\\': v = '\\'; break;
            case '/': v = '/'; break;
            case 'n': v = '\n'; break;
            case 'r': v = '\r'; break;
            case 't': v = '\t'; break;
            case 'b': v = '\b'; break;
            case 'f': v = '\f'; break;
            case 'u':
                for (int i = 0; i < 4; i++, p++) {
                    char h = *p;
                    v <<= 4;
                    if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
                    else return NULL;
                }
                if (v > 0xff)
                    return NULL; /* the tests only produce \u00XX */
                break;
            default:
                return NULL;
            }
            if (n + 1 < cap)
                dst[n++] = (char)v;
            continue;
        }
        if (n + 1 < cap)
            dst[n++] = (char)c;
        p++;
    }
    dst[n] = 0;
    return p + 1;
}

/* Parses one line "{...}\n"; returns the number of members or -1. */
static int jparse(const char *line, struct jv *out, int max)
{
    const char *p = line;
    if (*p++ != '{')
        return -1;
    int n = 0;
    if (*p == '}')
        return p[1] == '\n' ? 0 : -1;
    for (;;) {
        if (n >= max)
            return -1;
        struct jv *v = &out[n];
        if (!(p = jstr(p, v->key, sizeof v->key)) || *p++ != ':')
            return -1;
        if (*p == '"') {
            v->type = 's';
            if (!(p = jstr(p, v->s, sizeof v->s)))
                return -1;
        } else if (!strncmp(p, "null", 4)) {
            v->type = '0';
            p += 4;
        } else {
            char *e;
            v->type = 'n';
            v->num = strtod(p, &e);
            if (e == p)
                return -1;
            p = e;
        }
        n++;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == '}' && p[1] == '\n' && !p[2])
            return n;
        return -1;
    }
}

static const struct jv *jget(const struct jv *v, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].key, key))
            return &v[i];
    return NULL;
}

/* ---- tests ---- */

static void test_default_format(void)
{
    struct access_log_rec r = sample();
    struct access_log *al = open_text(NULL, NULL);
    CHECK(al != NULL);
    /* Envoy's documented example line, with nuncio's sample values */
    CHECK_STR(render(al, &r), "[2026-11-24T06:01:02.123Z] \"POST /helloworld.Greeter/SayHello?x=1 HTTP/2\" 200 - 154 12 "
                              "226 - \"10.0.35.28\" \"grpc-python/1.51\" \"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2\" "
                              "\"grpc.example.com\" \"10.0.2.1:50051\"\n");
    /* an original path wins over :path; absent headers are "-" */
    add(&req, "x-envoy-original-path", "/orig");
    hdr_remove(&req, HDR_LIT("user-agent"));
    r.upstream_host = NULL;
    r.response_flags = "UF,URX";
    r.upstream_service_time_ms = 7;
    CHECK_STR(render(al, &r), "[2026-11-24T06:01:02.123Z] \"POST /orig HTTP/2\" 200 UF,URX 154 12 226 7 \"10.0.35.28\" "
                              "\"-\" \"cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2\" \"grpc.example.com\" \"-\"\n");
    access_log_close(al);
}

static void test_operators(void)
{
    struct access_log_rec r = sample();
    CHECK_STR(op1("%START_TIME%", &r), "2026-11-24T06:01:02.123Z");
    CHECK_STR(op1("%START_TIME(%Y/%m/%d %H:%M:%S)%", &r), "2026/11/24 06:01:02");
    CHECK_STR(op1("%START_TIME(%s.%3f)%", &r), "1795500062.123");
    CHECK_STR(op1("%START_TIME(%s.%6f)%", &r), "1795500062.123000");
    CHECK_STR(op1("%START_TIME(%s.%9f)%", &r), "1795500062.123000000");
    CHECK_STR(op1("%START_TIME(%s.%f|%%)%", &r), "1795500062.123000000|%");
    r.start_time = 1795500062.9999996; /* rounds up into the next second */
    CHECK_STR(op1("%START_TIME%", &r), "2026-11-24T06:01:03.000Z");
    r = sample();

    CHECK_STR(op1("%REQ(:METHOD)%", &r), "POST");
    CHECK_STR(op1("%REQ(:path)%", &r), "/helloworld.Greeter/SayHello?x=1");
    CHECK_STR(op1("%REQ(X-MISSING?User-Agent)%", &r), "grpc-python/1.51");
    CHECK_STR(op1("%REQ(X-MISSING?X-ALSO-MISSING)%", &r), "-");
    CHECK_STR(op1("%REQ(USER-AGENT):4%", &r), "grpc");
    CHECK_STR(op1("%REQ_WITHOUT_QUERY(:PATH)%", &r), "/helloworld.Greeter/SayHello");
    CHECK_STR(op1("%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH):6%", &r), "/hello");
    CHECK_STR(op1("%RESP(:STATUS)%", &r), "200");
    CHECK_STR(op1("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", &r), "-");
    r.upstream_service_time_ms = 12;
    CHECK_STR(op1("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", &r), "12");
    CHECK_STR(op1("%TRAILER(GRPC-STATUS)%", &r), "0");
    CHECK_STR(op1("%TRAILER(grpc-message)%", &r), ""); /* present but empty: empty, as Envoy */
    CHECK_STR(op1("%TRAILER(X-NONE)%", &r), "-");
    /* HTTP/1.1 requests carry Host rather than :authority */
    hdr_remove(&req, HDR_LIT(":authority"));
    add(&req, "host", "h1.example.com");
    CHECK_STR(op1("%REQ(:AUTHORITY)%", &r), "h1.example.com");

    CHECK_STR(op1("%PROTOCOL%", &r), "HTTP/2");
    CHECK_STR(op1("%RESPONSE_CODE%", &r), "200");
    CHECK_STR(op1("%RESPONSE_FLAGS%", &r), "-");
    CHECK_STR(op1("%RESPONSE_CODE_DETAILS%", &r), "via_upstream");
    CHECK_STR(op1("%BYTES_RECEIVED% %BYTES_SENT%", &r), "154 12");
    CHECK_STR(op1("%DURATION% %RESPONSE_DURATION%", &r), "226 100");
    CHECK_STR(op1("%UPSTREAM_HOST%|%UPSTREAM_CLUSTER%|%ROUTE_NAME%", &r), "10.0.2.1:50051|cluster_greeter|greeter");
    CHECK_STR(op1("%UPSTREAM_LOCAL_ADDRESS%|%UPSTREAM_TRANSPORT_FAILURE_REASON%", &r), "-|-");
    CHECK_STR(op1("%DOWNSTREAM_REMOTE_ADDRESS%", &r), "192.168.1.7:53312");
    CHECK_STR(op1("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", &r), "192.168.1.7");
    CHECK_STR(op1("%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", &r),
              "10.0.0.5:8080 10.0.0.5");
    r.downstream_remote_address = "[2001:db8::1]:443";
    CHECK_STR(op1("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", &r), "2001:db8::1");
    CHECK_STR(op1("%REQUESTED_SERVER_NAME%", &r), "grpc.example.com");
    CHECK_STR(op1("%CONNECTION_ID% %UPSTREAM_REQUEST_ATTEMPT_COUNT%", &r), "42 1");
    CHECK_STR(op1("%DYNAMIC_METADATA(istio.mixer:status)%", &r), "-");
    CHECK_STR(op1("100%% sure", &r), "100% sure");
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    CHECK_STR(op1("%HOSTNAME%", &r), host);

    /* GRPC_STATUS: Envoy's names, from trailers, then headers, then the HTTP status */
    CHECK_STR(op1("%GRPC_STATUS%", &r), "OK");
    CHECK_STR(op1("%GRPC_STATUS_NUMBER%", &r), "0");
    hdr_set(&trl, HDR_LIT("grpc-status"), HDR_LIT("3"));
    CHECK_STR(op1("%GRPC_STATUS%", &r), "InvalidArgument");
    CHECK_STR(op1("%GRPC_STATUS(CAMEL_STRING)%", &r), "InvalidArgument");
    CHECK_STR(op1("%GRPC_STATUS(SNAKE_STRING)%", &r), "INVALID_ARGUMENT");
    CHECK_STR(op1("%GRPC_STATUS(NUMBER)%", &r), "3");
    hdr_clear(&trl);
    add(&resp, "grpc-status", "14");
    CHECK_STR(op1("%GRPC_STATUS%", &r), "Unavailable"); /* trailers-only */
    hdr_remove(&resp, HDR_LIT("grpc-status"));
    r.response_code = 503;
    CHECK_STR(op1("%GRPC_STATUS%", &r), "Unavailable"); /* Envoy's HTTP -> gRPC mapping */
    r.response_code = 0;
    CHECK_STR(op1("%GRPC_STATUS%", &r), "-");
    r.grpc_status = 16; /* the integrator knows (gRPC-Web moved it into the body) */
    CHECK_STR(op1("%GRPC_STATUS%", &r), "Unauthenticated");
    r.grpc_status = 99;
    CHECK_STR(op1("%GRPC_STATUS%", &r), "99");
    r = sample();
    hdr_set(&req, HDR_LIT("content-type"), HDR_LIT("application/json"));
    CHECK_STR(op1("%GRPC_STATUS%", &r), "-"); /* not a gRPC request */

    /* a response never sent: code 0, as Envoy logs it */
    r = sample();
    r.response_code = 0;
    r.response_duration_ms = -1;
    r.protocol = NULL;
    CHECK_STR(op1("%RESPONSE_CODE% %RESPONSE_DURATION% %PROTOCOL%", &r), "0 - -");

    /* control bytes in a header cannot end the line */
    add(&req, "x-evil", "a\nb\x01" "c");
    CHECK_STR(op1("%REQ(X-EVIL)%", &r), "a\\x0ab\\x01c");
}

static void test_errors(void)
{
    CHECK(strstr(open_error("%FOO%"), "unknown command operator %FOO%") != NULL);
    CHECK(strstr(open_error("[%START_TIME%] %REQ(:METHOD)"), "missing the closing '%'") != NULL);
    CHECK(strstr(open_error("%REQ%"), "%REQ%: needs an argument") != NULL);
    CHECK(strstr(open_error("%PROTOCOL(x)%"), "takes no argument") != NULL);
    CHECK(strstr(open_error("%DURATION:3%"), "takes no :length") != NULL);
    CHECK(strstr(open_error("%REQ(A?B?C)%"), "HEADER?ALTERNATIVE") != NULL);
    CHECK(strstr(open_error("%GRPC_STATUS(LOUD)%"), "CAMEL_STRING") != NULL);
    CHECK(strstr(open_error("50% off"), "starts no command operator") != NULL);
    CHECK(strstr(open_error("%REQ(X):%"), "followed by a length") != NULL);

    char err[256] = "";
    struct nu_access_log_cfg cfg = {.enabled = 1, .path = "/nonexistent-dir/sub/access.log"};
    CHECK(access_log_open(&cfg, err, sizeof err) == NULL);
    CHECK(strstr(err, "cannot open /nonexistent-dir/sub/access.log") != NULL);
    CHECK(strstr(err, "No such file or directory") != NULL);

    const char *keys[] = {"ok", "bad"}, *fmts[] = {"%PROTOCOL%", "%NOPE%"};
    struct nu_access_log_cfg jc = {.enabled = 1, .json = 1, .path = "/dev/null", .json_keys = (char **)keys,
                                   .json_fmts = (char **)fmts, .n_json = 2};
    CHECK(access_log_open(&jc, err, sizeof err) == NULL);
    CHECK(strstr(err, "json key \"bad\": unknown command operator %NOPE%") != NULL);
}

static void test_text_newline(void)
{
    struct access_log_rec r = sample();
    struct access_log *al = open_text("%REQ(:METHOD)%", NULL);
    CHECK_STR(render(al, &r), "POST\n"); /* a line always ends */
    access_log_close(al);
    al = open_text("%REQ(:METHOD)%\n", NULL);
    CHECK_STR(render(al, &r), "POST\n"); /* and gets no second newline */
    access_log_close(al);
}

static void test_json(void)
{
    const char *keys[] = {"start_time", "method", "path", "response_code", "bytes_sent", "duration",
                          "upstream_service_time", "user_agent", "weird", "combo", "quo\"te", "rd", "empty", "utf8",
                          "grpc"};
    const char *fmts[] = {"%START_TIME%", "%REQ(:METHOD)%", "%REQ(:PATH)%", "%RESPONSE_CODE%", "%BYTES_SENT%",
                          "%DURATION%", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "%REQ(USER-AGENT)%", "%REQ(X-WEIRD)%",
                          "\"%RESPONSE_CODE%\" in %DURATION%ms by %REQ(X-NONE)%", "%PROTOCOL%",
                          "%RESPONSE_DURATION%", "", "%REQ(X-UTF8)%", "%GRPC_STATUS%"};
    struct nu_access_log_cfg cfg = {.enabled = 1, .json = 1, .path = "/dev/null", .json_keys = (char **)keys,
                                    .json_fmts = (char **)fmts, .n_json = NU_ARRAY_LEN(keys)};
    char err[256];
    struct access_log *al = access_log_open(&cfg, err, sizeof err);
    CHECK(al != NULL);
    if (!al)
        return;
    struct access_log_rec r = sample();
    r.response_duration_ms = -1;
    add(&req, "x-weird", "say \"hi\"\\ \n\t\x01\x7f end\xff\xc3(");
    add(&req, "x-utf8", "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80");
    const char *line = render(al, &r);
    struct jv v[32];
    int n = jparse(line, v, 32);
    CHECK(n == (int)NU_ARRAY_LEN(keys));
    if (n != (int)NU_ARRAY_LEN(keys)) {
        fprintf(stderr, "line: %s", line);
        access_log_close(al);
        return;
    }
    for (int i = 0; i < n; i++) /* keys in the configured order */
        CHECK_STR(v[i].key, keys[i]);
    const struct jv *x;
    CHECK((x = jget(v, n, "start_time")) && x->type == 's' && !strcmp(x->s, "2026-11-24T06:01:02.123Z"));
    CHECK((x = jget(v, n, "method")) && x->type == 's' && !strcmp(x->s, "POST"));
    CHECK((x = jget(v, n, "response_code")) && x->type == 'n' && x->num == 200);
    CHECK((x = jget(v, n, "bytes_sent")) && x->type == 'n' && x->num == 12);
    CHECK((x = jget(v, n, "duration")) && x->type == 'n' && x->num == 226);
    CHECK((x = jget(v, n, "upstream_service_time")) && x->type == '0'); /* absent: null */
    CHECK((x = jget(v, n, "rd")) && x->type == '0');
    CHECK((x = jget(v, n, "weird")) && x->type == 's' &&
          !strcmp(x->s, "say \"hi\"\\ \n\t\x01\x7f end\xff\xc3("));
    CHECK((x = jget(v, n, "combo")) && x->type == 's' && !strcmp(x->s, "\"200\" in 226ms by -"));
    CHECK((x = jget(v, n, "quo\"te")) && x->type == 's' && !strcmp(x->s, "HTTP/2"));
    CHECK((x = jget(v, n, "empty")) && x->type == 's' && !strcmp(x->s, ""));
    CHECK((x = jget(v, n, "utf8")) && x->type == 's' && !strcmp(x->s, "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80"));
    CHECK((x = jget(v, n, "grpc")) && x->type == 's' && !strcmp(x->s, "OK"));
    /* valid UTF-8 passes as is; stray bytes are \u00XX; no raw control byte */
    CHECK(strstr(line, "h\xc3\xa9llo") != NULL);
    CHECK(strstr(line, "end\\u00ff\\u00c3(") != NULL);
    CHECK(strstr(line, "\\n\\t\\u0001") != NULL);
    access_log_close(al);

    /* no keys at all: still one object per line */
    struct nu_access_log_cfg empty = {.enabled = 1, .json = 1, .path = "/dev/null"};
    al = access_log_open(&empty, err, sizeof err);
    CHECK(al && !strcmp(render(al, &r), "{}\n"));
    access_log_close(al);
}

struct writer_arg {
    struct access_log *al;
    int id, lines;
    int failed; /* check.h's counters are not thread-safe: counted here, checked after the join */
};

static void *writer_thread(void *p)
{
    struct writer_arg *a = p;
    struct access_log_buf *b = access_log_buf_new();
    struct hdr_map m = {0};
    char seq[16];
    add(&m, "x-t", a->id == 0 ? "T0" : "T1");
    add(&m, "x-pad", "padding-padding-padding-padding-padding-padding-padding-padding-padding-padding");
    for (int i = 0; i < a->lines; i++) {
        snprintf(seq, sizeof seq, "%d", i);
        hdr_set(&m, HDR_LIT("x-seq"), seq, strlen(seq));
        struct access_log_rec r = {.req = &m, .start_time = 1795500062.0, .response_duration_ms = -1,
                                   .upstream_service_time_ms = -1, .grpc_status = -1};
        if (access_log_write(b, a->al, &r) != 0)
            a->failed++;
        if (i % 37 == 0)
            access_log_flush(b); /* one loop iteration */
    }
    access_log_buf_free(b);
    hdr_clear(&m);
    return NULL;
}

static void test_two_threads(void)
{
    char path[256];
    tmp_path(path, sizeof path, "two.log");
    struct access_log *al = open_text("%REQ(X-T)% %REQ(X-SEQ)% %REQ(X-PAD)% end", path);
    CHECK(al != NULL);
    if (!al)
        return;
    struct writer_arg a[2] = {{al, 0, 10000, 0}, {al, 1, 10000, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, writer_thread, &a[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    CHECK(a[0].failed == 0 && a[1].failed == 0);
    CHECK(access_log_dropped(al) == 0);
    access_log_close(al); /* flushes what is queued */
    size_t len;
    char *d = slurp(path, &len);
    CHECK(d != NULL);
    if (!d)
        return;
    int lines = 0, bad = 0, next[2] = {0, 0};
    for (char *p = d, *e; *p; p = e + 1) {
        if (!(e = strchr(p, '\n'))) {
            bad++;
            break;
        }
        *e = 0;
        int id, seq;
        char pad[128], end[8];
        if (sscanf(p, "T%d %d %127s %7s", &id, &seq, pad, end) != 4 || id < 0 || id > 1 || strcmp(end, "end") ||
            seq != next[id]) {
            bad++;
        } else {
            next[id]++;
        }
        lines++;
    }
    CHECK(lines == 20000);
    CHECK(bad == 0);
    CHECK(next[0] == 10000 && next[1] == 10000); /* each thread's lines whole and in order */
    free(d);
}

struct drain_arg {
    int fd;
    size_t lines;
};

static void *drain_thread(void *p)
{
    struct drain_arg *a = p;
    char buf[65536];
    ssize_t n;
    while ((n = read(a->fd, buf, sizeof buf)) > 0)
        a->lines += count_lines(buf, (size_t)n);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_stuck_writer_drops(void)
{
    int p[2];
    CHECK(pipe(p) == 0);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", p[1]); /* a pipe nobody reads yet */
    struct access_log *al = open_text(NULL, path);
    CHECK(al != NULL);
    if (!al)
        return;
    al->max_queued = 256 * 1024; /* ACCESS_LOG_MAX_QUEUED, scaled down to keep the test quick */
    struct access_log_buf *b = access_log_buf_new();
    struct access_log_rec r = sample();
    int total = 20000;
    double t0 = now_s();
    for (int i = 0; i < total; i++) {
        access_log_write(b, al, &r);
        if (i % 50 == 0)
            access_log_flush(b);
    }
    access_log_flush(b);
    double took = now_s() - t0;
    uint64_t dropped = access_log_dropped(al);
    CHECK(dropped > 0);
    CHECK(took < 2.0); /* the worker never waited for the pipe */
    printf("stuck writer: %llu of %d lines dropped in %.1f ms\n", (unsigned long long)dropped, total, took * 1000);
    /* a reader comes back: what was queued arrives, and nothing else went missing */
    struct drain_arg da = {p[0], 0};
    pthread_t t;
    pthread_create(&t, NULL, drain_thread, &da);
    access_log_buf_free(b);
    access_log_close(al);
    close(p[1]);
    pthread_join(t, NULL);
    close(p[0]);
    CHECK(da.lines + dropped == (uint64_t)total);
}

static void test_close_flushes_and_reload(void)
{
    char p1[256], p2[256];
    tmp_path(p1, sizeof p1, "gen1.log");
    tmp_path(p2, sizeof p2, "gen2.log");
    struct access_log *a1 = open_text("one %REQ(X-SEQ)%", p1), *a2 = open_text("two %REQ(X-SEQ)%", p2);
    CHECK(a1 && a2);
    if (!a1 || !a2)
        return;
    struct access_log_buf *b = access_log_buf_new();
    struct hdr_map m = {0};
    add(&m, "x-seq", "1");
    struct access_log_rec r = {.req = &m, .response_duration_ms = -1, .upstream_service_time_ms = -1, .grpc_status = -1};
    for (int i = 0; i < 3; i++)
        access_log_write(b, a1, &r);
    /* a reload: the old log loses its last holder while the buffer still has its lines */
    access_log_unref(a1);
    access_log_write(b, a2, &r); /* hands "one" lines over; the old writer drains and frees itself */
    access_log_buf_free(b);
    access_log_close(a2);
    char *d = NULL;
    for (int i = 0; i < 200; i++) { /* the old log's writer is detached: wait for it a little */
        free(d);
        d = slurp(p1, NULL);
        if (d && count_lines(d, strlen(d)) == 3)
            break;
        usleep(10000);
    }
    CHECK(d && !strcmp(d, "one 1\none 1\none 1\n"));
    free(d);
    d = slurp(p2, NULL);
    CHECK(d && !strcmp(d, "two 1\n"));
    free(d);
    hdr_clear(&m);
}

static void test_reopen(void)
{
    char p1[256], rotated[256];
    tmp_path(p1, sizeof p1, "rot.log");
    tmp_path(rotated, sizeof rotated, "rot.log.1");
    struct access_log *al = open_text("%REQ(X-SEQ)%", p1);
    CHECK(al != NULL);
    if (!al)
        return;
    struct access_log_buf *b = access_log_buf_new();
    struct hdr_map m = {0};
    add(&m, "x-seq", "before");
    struct access_log_rec r = {.req = &m, .response_duration_ms = -1, .upstream_service_time_ms = -1, .grpc_status = -1};
    access_log_write(b, al, &r);
    access_log_flush(b);
    for (int i = 0; i < 500; i++) { /* until the writer has written it */
        pthread_mutex_lock(&al->mu);
        size_t q = al->queued;
        pthread_mutex_unlock(&al->mu);
        if (!q)
            break;
        usleep(2000);
    }
    CHECK(rename(p1, rotated) == 0);
    access_log_reopen(al);
    hdr_set(&m, HDR_LIT("x-seq"), HDR_LIT("after"));
    access_log_write(b, al, &r);
    access_log_buf_free(b);
    access_log_close(al);
    char *d = slurp(rotated, NULL);
    CHECK(d && !strcmp(d, "before\n"));
    free(d);
    d = slurp(p1, NULL);
    CHECK(d && !strcmp(d, "after\n"));
    free(d);
    hdr_clear(&m);
}

static void test_cost(void)
{
    struct access_log *al = open_text(NULL, "/dev/null");
    CHECK(al != NULL);
    if (!al)
        return;
    struct access_log_buf *b = access_log_buf_new();
    struct access_log_rec r = sample();
    int n = 200000;
    for (int i = 0; i < 1000; i++) /* warm: batches allocated, time cached */
        access_log_write(b, al, &r);
    access_log_flush(b);
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        r.start_time += 0.0001;
        access_log_write(b, al, &r);
        if ((i & 63) == 63)
            access_log_flush(b);
    }
    access_log_flush(b);
    double ns = (now_s() - t0) * 1e9 / n;
    printf("default format: %.0f ns per line (flush every 64 lines)\n", ns);
    /* the formatting alone, without the hand-over to the writer */
    struct batch *c = batch_new();
    struct out o = {c, 0};
    t0 = now_s();
    for (int i = 0; i < n; i++) {
        c->len = 0;
        format_line(&o, al, b, &r);
    }
    printf("default format: %.0f ns per line formatting only\n", (now_s() - t0) * 1e9 / n);
    batch_free(c);
    CHECK(access_log_dropped(al) == 0);
    access_log_buf_free(b);
    access_log_close(al);
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_default_format();
    test_operators();
    test_errors();
    test_text_newline();
    test_json();
    test_two_threads();
    test_stuck_writer_drops();
    test_close_flushes_and_reload();
    test_reopen();
    test_cost();
    hdr_clear(&req);
    hdr_clear(&resp);
    hdr_clear(&trl);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    CHECK_DONE();
}
