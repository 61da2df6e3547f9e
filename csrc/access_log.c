/* The access log (see access_log.h for the threading and ownership rules).
 *
 * A format is compiled once into a list of ops: literal text or one Envoy
 * command operator with its parsed argument. A JSON format is a list of
 * (key, ops) fields. Formatting walks the ops and appends straight into the
 * worker's current batch; only a batch that must grow (a line longer than
 * anything seen before) ever reallocates. */
#include "access_log.h"

#include "config.h"
#include "grpc.h"
#include "hdr.h"
#include "log.h"
#include "nuncio.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Envoy's default format (docs: configuration/observability/access_log/usage). */
#define ENVOY_DEFAULT_FORMAT                                                                                          \
    "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% "               \
    "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "                 \
    "\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" "                  \
    "\"%UPSTREAM_HOST%\"\n"

#define BATCH_CAP (64 * 1024)        /* a batch is handed over once it holds this much */
#define BATCH_KEEP_MAX (256 * 1024)  /* a batch grown past this by a huge line is not recycled */
#define FREE_BATCHES_MAX 32          /* spare batches a log keeps for the workers */
#define LINE_ROOM 2048               /* reserved before each line: most lines need no further check */
#define CLOSE_WAIT_S 5               /* access_log_close() waits this long for the writer */

/* ------------------------------------------------------------------------ */
/* Operators */

enum op_kind {
    OP_LIT,
    OP_NONE, /* an Envoy operator nuncio has no data for (DYNAMIC_METADATA): always absent */
    OP_START_TIME,
    OP_REQ,
    OP_RESP,
    OP_TRAILER,
    OP_REQ_WITHOUT_QUERY,
    OP_PROTOCOL,
    OP_RESPONSE_CODE,
    OP_RESPONSE_FLAGS,
    OP_RESPONSE_CODE_DETAILS,
    OP_BYTES_RECEIVED,
    OP_BYTES_SENT,
    OP_DURATION,
    OP_RESPONSE_DURATION,
    OP_UPSTREAM_HOST,
    OP_UPSTREAM_CLUSTER,
    OP_UPSTREAM_LOCAL_ADDRESS,
    OP_UPSTREAM_TRANSPORT_FAILURE_REASON,
    OP_ROUTE_NAME,
    OP_DOWNSTREAM_REMOTE_ADDRESS,
    OP_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT,
    OP_DOWNSTREAM_LOCAL_ADDRESS,
    OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT,
    OP_REQUESTED_SERVER_NAME,
    OP_GRPC_STATUS,
    OP_GRPC_STATUS_NUMBER,
    OP_HOSTNAME,
    OP_CONNECTION_ID,
    OP_UPSTREAM_REQUEST_ATTEMPT_COUNT,
};

enum { ARG_NO, ARG_OPTIONAL, ARG_REQUIRED };

/* The operators nuncio knows. lua/nuncio/ambassador/access_log.lua keeps the
 * same table to refuse an unknown one at load with the file and line. */
static const struct opdef {
    const char *name;
    unsigned char kind, arg, len; /* len: accepts :Z */
} opdefs[] = {
    {"START_TIME", OP_START_TIME, ARG_OPTIONAL, 0},
    {"REQ", OP_REQ, ARG_REQUIRED, 1},
    {"RESP", OP_RESP, ARG_REQUIRED, 1},
    {"TRAILER", OP_TRAILER, ARG_REQUIRED, 1},
    {"REQ_WITHOUT_QUERY", OP_REQ_WITHOUT_QUERY, ARG_REQUIRED, 1},
    {"PROTOCOL", OP_PROTOCOL, ARG_NO, 0},
    {"RESPONSE_CODE", OP_RESPONSE_CODE, ARG_NO, 0},
    {"RESPONSE_FLAGS", OP_RESPONSE_FLAGS, ARG_NO, 0},
    {"RESPONSE_CODE_DETAILS", OP_RESPONSE_CODE_DETAILS, ARG_NO, 0},
    {"BYTES_RECEIVED", OP_BYTES_RECEIVED, ARG_NO, 0},
    {"BYTES_SENT", OP_BYTES_SENT, ARG_NO, 0},
    {"DURATION", OP_DURATION, ARG_NO, 0},
    {"RESPONSE_DURATION", OP_RESPONSE_DURATION, ARG_NO, 0},
    {"UPSTREAM_HOST", OP_UPSTREAM_HOST, ARG_NO, 0},
    {"UPSTREAM_CLUSTER", OP_UPSTREAM_CLUSTER, ARG_NO, 0},
    {"UPSTREAM_LOCAL_ADDRESS", OP_UPSTREAM_LOCAL_ADDRESS, ARG_NO, 0},
    {"UPSTREAM_TRANSPORT_FAILURE_REASON", OP_UPSTREAM_TRANSPORT_FAILURE_REASON, ARG_NO, 0},
    {"ROUTE_NAME", OP_ROUTE_NAME, ARG_NO, 0},
    {"DOWNSTREAM_REMOTE_ADDRESS", OP_DOWNSTREAM_REMOTE_ADDRESS, ARG_NO, 0},
    {"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", OP_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, ARG_NO, 0},
    {"DOWNSTREAM_LOCAL_ADDRESS", OP_DOWNSTREAM_LOCAL_ADDRESS, ARG_NO, 0},
    {"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT, ARG_NO, 0},
    {"REQUESTED_SERVER_NAME", OP_REQUESTED_SERVER_NAME, ARG_NO, 0},
    {"GRPC_STATUS", OP_GRPC_STATUS, ARG_OPTIONAL, 0},
    {"GRPC_STATUS_NUMBER", OP_GRPC_STATUS_NUMBER, ARG_NO, 0},
    {"HOSTNAME", OP_HOSTNAME, ARG_NO, 0},
    {"CONNECTION_ID", OP_CONNECTION_ID, ARG_NO, 0},
    {"UPSTREAM_REQUEST_ATTEMPT_COUNT", OP_UPSTREAM_REQUEST_ATTEMPT_COUNT, ARG_NO, 0},
    {"DYNAMIC_METADATA", OP_NONE, ARG_REQUIRED, 1},
};

enum { GRPC_CAMEL, GRPC_SNAKE, GRPC_NUMBER };

/* START_TIME(fmt) split at nuncio's own specifiers; the rest goes to strftime. */
enum { TP_STRF, TP_EPOCH, TP_FRAC };
struct tpiece {
    int kind;
    int digits; /* TP_FRAC */
    char *fmt;  /* TP_STRF: NUL-terminated strftime format (owned) */
};

struct op {
    int kind;
    int arg;    /* GRPC_STATUS: GRPC_*; START_TIME: 1 with a format */
    size_t max; /* :Z, 0: none */
    char *s;    /* literal text, or header X (lower case); owned */
    size_t slen;
    char *s2; /* header Y; owned */
    size_t s2len;
    struct tpiece *tp;
    size_t ntp;
};

struct fmt {
    struct op *ops;
    size_t n;
};

struct jfield {
    char *key; /* `"key":` JSON-escaped, owned */
    size_t klen;
    struct fmt f;
    int single; /* the value is exactly one operator: typed (number / null) */
};

/* ------------------------------------------------------------------------ */
/* The log and its batches */

struct batch {
    struct batch *next;
    char *data;
    size_t len, cap;
    uint32_t lines;
};

struct access_log {
    atomic_uint refs;
    int json;
    struct fmt text;
    struct jfield *fields;
    size_t nfields;
    char *path;
    char hostname[256];
    int fd;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu: */
    struct batch *head, *tail; /* queued for the writer, oldest first */
    struct batch *spare;       /* recycled batches for the workers */
    unsigned nspare;
    size_t queued; /* bytes queued or being written */
    size_t max_queued;
    int stopping, writer_done, detached, reopen;

    atomic_uint_fast64_t dropped;
    int last_errno; /* writer only: the write error last reported */
};

struct access_log_buf {
    struct access_log *al; /* the log cur's lines are for (referenced); NULL: nothing pending */
    struct batch *cur;     /* being filled (owned); kept across flushes when possible */
    /* START_TIME's calendar part changes once a second: computed once per second */
    int64_t tsec;
    struct tm tm;
    char tdate[64]; /* "YYYY-MM-DDTHH:MM:SS" (room for any int the compiler imagines) */
};

/* ------------------------------------------------------------------------ */
/* Compiling formats */

static void fmt_free(struct fmt *f)
{
    for (size_t i = 0; i < f->n; i++) {
        struct op *o = &f->ops[i];
        free(o->s);
        free(o->s2);
        for (size_t k = 0; k < o->ntp; k++)
            free(o->tp[k].fmt);
        free(o->tp);
    }
    free(f->ops);
    f->ops = NULL;
    f->n = 0;
}

static struct op *fmt_push(struct fmt *f)
{
    struct op *v = realloc(f->ops, (f->n + 1) * sizeof *v);
    if (!v)
        return NULL;
    f->ops = v;
    memset(&v[f->n], 0, sizeof v[f->n]);
    return &v[f->n++];
}

static char *dup_lower(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++)
        d[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] + 32) : s[i];
    d[n] = 0;
    return d;
}

static int add_lit(struct fmt *f, const char *s, size_t n)
{
    if (!n)
        return NU_OK;
    /* glue onto a preceding literal: fewer ops to walk per line */
    if (f->n && f->ops[f->n - 1].kind == OP_LIT) {
        struct op *o = &f->ops[f->n - 1];
        char *v = realloc(o->s, o->slen + n + 1);
        if (!v)
            return NU_ERR_NOMEM;
        memcpy(v + o->slen, s, n);
        o->slen += n;
        v[o->slen] = 0;
        o->s = v;
        return NU_OK;
    }
    struct op *o = fmt_push(f);
    if (!o || !(o->s = malloc(n + 1)))
        return NU_ERR_NOMEM;
    o->kind = OP_LIT;
    memcpy(o->s, s, n);
    o->s[n] = 0;
    o->slen = n;
    return NU_OK;
}

static int add_tpiece(struct op *o, int kind, int digits, const char *s, size_t n)
{
    struct tpiece *v = realloc(o->tp, (o->ntp + 1) * sizeof *v);
    if (!v)
        return NU_ERR_NOMEM;
    o->tp = v;
    struct tpiece *t = &v[o->ntp];
    t->kind = kind;
    t->digits = digits;
    t->fmt = NULL;
    if (kind == TP_STRF) {
        if (!(t->fmt = malloc(n + 1)))
            return NU_ERR_NOMEM;
        memcpy(t->fmt, s, n);
        t->fmt[n] = 0;
    }
    o->ntp++;
    return NU_OK;
}

/* START_TIME(fmt): %s (epoch seconds), %f / %1f..%9f (fraction digits, 9 by
 * default) are Envoy's additions; everything else is strftime's, in UTC. */
static int compile_time(struct op *o, const char *s, size_t n)
{
    size_t run = 0; /* start of the pending strftime text */
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%' || i + 1 >= n)
            continue;
        int kind = -1, digits = 9;
        size_t skip = 2;
        if (s[i + 1] == 's') {
            kind = TP_EPOCH;
        } else if (s[i + 1] == 'f') {
            kind = TP_FRAC;
        } else if (s[i + 1] >= '1' && s[i + 1] <= '9' && i + 2 < n && s[i + 2] == 'f') {
            kind = TP_FRAC, digits = s[i + 1] - '0', skip = 3;
        } else {
            i++; /* a strftime conversion (or %%): keep both bytes */
            continue;
        }
        if (i > run && add_tpiece(o, TP_STRF, 0, s + run, i - run) != NU_OK)
            return NU_ERR_NOMEM;
        if (add_tpiece(o, kind, digits, NULL, 0) != NU_OK)
            return NU_ERR_NOMEM;
        i += skip - 1;
        run = i + 1;
    }
    if (n > run && add_tpiece(o, TP_STRF, 0, s + run, n - run) != NU_OK)
        return NU_ERR_NOMEM;
    return NU_OK;
}

static int is_cmd_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* One command operator at s (just after its '%'): fills o, returns its length up
 * to and including the closing '%', or 0 with a message in err. */
static size_t compile_op(struct op *o, const char *s, char *err, size_t errlen)
{
    size_t i = 0;
    while (is_cmd_char(s[i]))
        i++;
    size_t nlen = i;
    const char *arg = NULL;
    size_t alen = 0, max = 0;
    int has_len = 0;
    if (!nlen) {
        snprintf(err, errlen, "'%%' that starts no command operator (write %%%% for a literal %%)");
        return 0;
    }
    if (s[i] == '(') {
        arg = s + i + 1;
        const char *close = strchr(arg, ')');
        if (!close) {
            snprintf(err, errlen, "%%%.*s(: missing ')'", (int)nlen, s);
            return 0;
        }
        alen = (size_t)(close - arg);
        i += alen + 2;
    }
    if (s[i] == ':') {
        i++;
        has_len = 1;
        size_t d = i;
        while (s[i] >= '0' && s[i] <= '9') {
            if (max < 100000000)
                max = max * 10 + (size_t)(s[i] - '0');
            i++;
        }
        if (i == d) {
            snprintf(err, errlen, "%%%.*s: ':' must be followed by a length", (int)nlen, s);
            return 0;
        }
    }
    if (s[i] != '%') {
        snprintf(err, errlen, "%%%.*s: missing the closing '%%'", (int)nlen, s);
        return 0;
    }
    const struct opdef *d = NULL;
    for (size_t k = 0; k < NU_ARRAY_LEN(opdefs); k++)
        if (strlen(opdefs[k].name) == nlen && memcmp(opdefs[k].name, s, nlen) == 0)
            d = &opdefs[k];
    if (!d) {
        snprintf(err, errlen, "unknown command operator %%%.*s%%", (int)nlen, s);
        return 0;
    }
    if ((d->arg == ARG_NO && arg) || (d->arg == ARG_REQUIRED && (!arg || !alen))) {
        snprintf(err, errlen, "%%%s%%: %s", d->name, d->arg == ARG_NO ? "takes no argument" : "needs an argument");
        return 0;
    }
    if (has_len && !d->len) {
        snprintf(err, errlen, "%%%s%%: takes no :length", d->name);
        return 0;
    }
    o->kind = d->kind;
    o->max = max;
    switch (d->kind) {
    case OP_REQ:
    case OP_RESP:
    case OP_TRAILER:
    case OP_REQ_WITHOUT_QUERY: {
        const char *q = memchr(arg, '?', alen);
        size_t xlen = q ? (size_t)(q - arg) : alen;
        if (!xlen || (q && (size_t)(q - arg) + 1 == alen) || (q && memchr(q + 1, '?', alen - xlen - 1))) {
            snprintf(err, errlen, "%%%s(%.*s)%%: expected HEADER or HEADER?ALTERNATIVE", d->name, (int)alen, arg);
            return 0;
        }
        if (!(o->s = dup_lower(arg, xlen)))
            goto nomem;
        o->slen = xlen;
        if (q) {
            if (!(o->s2 = dup_lower(q + 1, alen - xlen - 1)))
                goto nomem;
            o->s2len = alen - xlen - 1;
        }
        break;
    }
    case OP_START_TIME:
        if (arg && alen) {
            o->arg = 1;
            if (compile_time(o, arg, alen) != NU_OK)
                goto nomem;
        }
        break;
    case OP_GRPC_STATUS:
        o->arg = GRPC_CAMEL;
        if (arg) {
            if (alen == 12 && memcmp(arg, "CAMEL_STRING", 12) == 0)
                o->arg = GRPC_CAMEL;
            else if (alen == 12 && memcmp(arg, "SNAKE_STRING", 12) == 0)
                o->arg = GRPC_SNAKE;
            else if (alen == 6 && memcmp(arg, "NUMBER", 6) == 0)
                o->arg = GRPC_NUMBER;
            else {
                snprintf(err, errlen, "%%GRPC_STATUS(%.*s)%%: expected CAMEL_STRING, SNAKE_STRING or NUMBER",
                         (int)alen, arg);
                return 0;
            }
        }
        break;
    }
    return i + 1;
nomem:
    snprintf(err, errlen, "out of memory");
    return 0;
}

static int compile(struct fmt *f, const char *s, char *err, size_t errlen)
{
    const char *p = s;
    while (*p) {
        if (*p != '%') {
            const char *e = strchr(p, '%');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            if (add_lit(f, p, n) != NU_OK)
                goto nomem;
            p += n;
            continue;
        }
        if (p[1] == '%') {
            if (add_lit(f, "%", 1) != NU_OK)
                goto nomem;
            p += 2;
            continue;
        }
        struct op *o = fmt_push(f);
        if (!o)
            goto nomem;
        size_t n = compile_op(o, p + 1, err, errlen);
        if (!n)
            return NU_ERR_CONFIG;
        p += n + 1;
    }
    return NU_OK;
nomem:
    snprintf(err, errlen, "out of memory");
    return NU_ERR_NOMEM;
}

/* ------------------------------------------------------------------------ */
/* Output into a batch */

struct out {
    struct batch *b;
    int oom;
};

static int grow(struct out *o, size_t n)
{
    struct batch *b = o->b;
    size_t cap = b->cap * 2;
    if (cap < b->len + n + LINE_ROOM)
        cap = b->len + n + LINE_ROOM;
    char *d = realloc(b->data, cap);
    if (!d) {
        o->oom = 1;
        return 0;
    }
    b->data = d;
    b->cap = cap;
    return 1;
}

static inline int room(struct out *o, size_t n)
{
    return o->b->len + n <= o->b->cap || grow(o, n);
}

static inline void put(struct out *o, const void *p, size_t n)
{
    if (!n || !room(o, n))
        return;
    memcpy(o->b->data + o->b->len, p, n);
    o->b->len += n;
}

static inline void putc_(struct out *o, char c)
{
    if (!room(o, 1))
        return;
    o->b->data[o->b->len++] = c;
}

static size_t fmt_u64(char *dst, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

static void put_i64(struct out *o, int64_t v)
{
    if (!room(o, 21))
        return;
    char *d = o->b->data + o->b->len;
    if (v < 0) {
        *d++ = '-';
        o->b->len++;
        o->b->len += fmt_u64(d, (uint64_t)0 - (uint64_t)v);
    } else {
        o->b->len += fmt_u64(d, (uint64_t)v);
    }
}

/* Eight bytes at a time: most header values need no escaping at all, and
 * testing a word costs what testing one byte does (the has-less-than and
 * has-zero-byte tricks, exact for thresholds up to 128). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
static inline uint64_t load8(const void *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}
static inline uint64_t has_less(uint64_t w, unsigned n)
{
    return (w - ONES * n) & ~w & HIGHS;
}
static inline uint64_t has_byte(uint64_t w, unsigned c)
{
    return has_less(w ^ (ONES * c), 1);
}
static inline uint64_t text_special(uint64_t w)
{
    return has_less(w, 0x20) | has_byte(w, 0x7f);
}
static inline uint64_t json_special(uint64_t w)
{
    return (w & HIGHS) | has_less(w, 0x20) | has_byte(w, '"') | has_byte(w, '\\');
}

static const char hexd[] = "0123456789abcdef";

/* Text lines: values are copied as they are, except control bytes, written
 * \xHH so that no header value can end a line or forge another one. */
static void put_text(struct out *o, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (i + 8 <= n && !(text_special(load8(p + i))))
            i += 8;
        while (i < n && (unsigned char)p[i] >= 0x20 && p[i] != 0x7f)
            i++;
        put(o, p + run, i - run);
        if (i < n) {
            unsigned char c = (unsigned char)p[i++];
            char e[4] = {'\\', 'x', hexd[c >> 4], hexd[c & 15]};
            put(o, e, 4);
        }
    }
}

/* Length of the valid UTF-8 sequence at p (2..4), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    unsigned min;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    unsigned cp = c & (0x7f >> len);
    for (size_t k = 1; k < len; k++) {
        if ((p[k] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* JSON string contents: quotes, backslashes and control bytes escaped; a byte
 * that is not part of valid UTF-8 becomes \u00XX (its Latin-1 reading), so the
 * line stays valid JSON whatever a header carried. */
static void put_json(struct out *o, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        size_t run = i;
        while (i + 8 <= n && !json_special(load8(p + i)))
            i += 8;
        while (i < n && p[i] >= 0x20 && p[i] < 0x80 && p[i] != '"' && p[i] != '\\')
            i++;
        put(o, p + run, i - run);
        if (i >= n)
            break;
        unsigned char c = p[i];
        if (c >= 0x80) {
            size_t l = utf8_len(p + i, n - i);
            if (l) {
                put(o, p + i, l);
                i += l;
                continue;
            }
        }
        i++;
        char e[6] = {'\\', 0, 0, 0, 0, 0};
        switch (c) {
        case '"':
        case '\\':
            e[1] = (char)c;
            put(o, e, 2);
            break;
        case '\n':
            put(o, "\\n", 2);
            break;
        case '\r':
            put(o, "\\r", 2);
            break;
        case '\t':
            put(o, "\\t", 2);
            break;
        default:
            e[1] = 'u', e[2] = '0', e[3] = '0', e[4] = hexd[c >> 4], e[5] = hexd[c & 15];
            put(o, e, 6);
        }
    }
}

enum { M_TEXT, M_JSTR, M_JVAL }; /* text line; inside a JSON string; a whole JSON value */

static void emit_str(struct out *o, int mode, const char *p, size_t n, size_t max)
{
    if (max && n > max)
        n = max;
    if (mode == M_TEXT) {
        put_text(o, p, n);
    } else if (mode == M_JSTR) {
        put_json(o, p, n);
    } else {
        putc_(o, '"');
        put_json(o, p, n);
        putc_(o, '"');
    }
}

static void emit_none(struct out *o, int mode)
{
    if (mode == M_JVAL)
        put(o, "null", 4);
    else
        putc_(o, '-');
}

static void emit_cstr(struct out *o, int mode, const char *s)
{
    if (!s || !*s)
        emit_none(o, mode);
    else
        emit_str(o, mode, s, strlen(s), 0);
}

static void emit_int(struct out *o, int mode, int64_t v)
{
    put_i64(o, v); /* a number is the same text in every mode, and valid JSON */
}

/* "ip:port" -> "ip", "[v6]:port" -> "v6" (Envoy prints addresses without brackets). */
static void emit_no_port(struct out *o, int mode, const char *s)
{
    if (!s || !*s) {
        emit_none(o, mode);
        return;
    }
    size_t n = strlen(s);
    const char *c = strrchr(s, ':');
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (e) {
            emit_str(o, mode, s + 1, (size_t)(e - s - 1), 0);
            return;
        }
    } else if (c && !memchr(s, ':', (size_t)(c - s))) { /* one colon: ipv4:port; more: a bare v6 */
        n = (size_t)(c - s);
    }
    emit_str(o, mode, s, n, 0);
}

static const char *const grpc_camel[] = {
    "OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
    "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
    "Internal", "Unavailable", "DataLoss", "Unauthenticated",
};
static const char *const grpc_snake[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
};

static int parse_status(const char *v, size_t n)
{
    if (!v || !n || n > 9)
        return -1;
    int s = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        s = s * 10 + (v[i] - '0');
    }
    return s;
}

/* Envoy's Grpc::Common::getGrpcStatus with the stream info: trailers, then
 * headers, then the HTTP status mapped; and only for gRPC requests. */
static int grpc_status_of(const struct access_log_rec *r)
{
    if (r->grpc_status >= 0)
        return r->grpc_status;
    size_t n = 0;
    const char *ct = r->req ? hdr_get(r->req, HDR_LIT("content-type"), &n) : NULL;
    if (!ct || !grpc_is_grpc_content_type(ct, n))
        return -1;
    const char *v = r->trailers ? hdr_get(r->trailers, HDR_LIT("grpc-status"), &n) : NULL;
    if (!v && r->resp)
        v = hdr_get(r->resp, HDR_LIT("grpc-status"), &n);
    if (v)
        return parse_status(v, n);
    return r->response_code > 0 ? grpc_status_from_http(r->response_code) : -1;
}

static void emit_grpc(struct out *o, int mode, int style, const struct access_log_rec *r)
{
    int s = grpc_status_of(r);
    if (s < 0)
        emit_none(o, mode);
    else if (style == GRPC_NUMBER || s >= (int)NU_ARRAY_LEN(grpc_camel))
        emit_int(o, mode, s); /* Envoy falls back to the number for codes it has no name for */
    else
        emit_cstr(o, mode, style == GRPC_SNAKE ? grpc_snake[s] : grpc_camel[s]);
}

static const char *header(const struct hdr_map *m, const struct op *op, size_t *n)
{
    if (!m)
        return NULL;
    const char *v = hdr_get(m, op->s, op->slen, n);
    if (!v && op->s2)
        v = hdr_get(m, op->s2, op->s2len, n);
    /* HTTP/1.1 requests may carry Host where HTTP/2 has :authority; Envoy logs either */
    if (!v && m && op->slen == 10 && memcmp(op->s, ":authority", 10) == 0)
        v = hdr_get(m, HDR_LIT("host"), n);
    return v;
}

/* Splits t into whole seconds and microseconds (what a double holds exactly
 * enough), and refreshes the per-second calendar cache. */
static void start_time(struct access_log_buf *b, double t, int64_t *sec, long *usec)
{
    double fl = floor(t);
    int64_t s = (int64_t)fl;
    long us = lround((t - fl) * 1e6);
    if (us >= 1000000)
        s++, us -= 1000000;
    *sec = s;
    *usec = us;
    if (s != b->tsec) {
        time_t tt = (time_t)s;
        gmtime_r(&tt, &b->tm);
        snprintf(b->tdate, sizeof b->tdate, "%04d-%02d-%02dT%02d:%02d:%02d", b->tm.tm_year + 1900, b->tm.tm_mon + 1,
                 b->tm.tm_mday, b->tm.tm_hour, b->tm.tm_min, b->tm.tm_sec);
        b->tsec = s;
    }
}

static void emit_time(struct out *o, int mode, const struct op *op, struct access_log_buf *b,
                      const struct access_log_rec *r)
{
    int64_t sec;
    long us;
    start_time(b, r->start_time, &sec, &us);
    char tmp[512];
    size_t n = 0;
    if (!op->arg) { /* Envoy's default: 2026-11-24T06:01:02.123Z */
        n = strlen(b->tdate);
        memcpy(tmp, b->tdate, n);
        tmp[n++] = '.';
        long ms = us / 1000;
        tmp[n++] = (char)('0' + ms / 100);
        tmp[n++] = (char)('0' + ms / 10 % 10);
        tmp[n++] = (char)('0' + ms % 10);
        tmp[n++] = 'Z';
    } else {
        for (size_t k = 0; k < op->ntp && n < sizeof tmp - 32; k++) {
            const struct tpiece *t = &op->tp[k];
            if (t->kind == TP_EPOCH) {
                if (sec < 0)
                    tmp[n++] = '-';
                n += fmt_u64(tmp + n, sec < 0 ? (uint64_t)-sec : (uint64_t)sec);
            } else if (t->kind == TP_FRAC) {
                char d[9];
                long ns = us * 1000;
                for (int i = 8; i >= 0; i--, ns /= 10)
                    d[i] = (char)('0' + ns % 10);
                memcpy(tmp + n, d, (size_t)t->digits);
                n += (size_t)t->digits;
            } else {
                n += strftime(tmp + n, sizeof tmp - n, t->fmt, &b->tm);
            }
        }
    }
    emit_str(o, mode, tmp, n, 0);
}

static void emit_op(struct out *o, int mode, const struct op *op, struct access_log *al, struct access_log_buf *b,
                    const struct access_log_rec *r)
{
    const char *v;
    size_t n = 0;
    switch (op->kind) {
    case OP_LIT:
        put(o, op->s, op->slen); /* JSON literals were escaped when compiled */
        return;
    case OP_NONE:
        emit_none(o, mode);
        return;
    case OP_START_TIME:
        emit_time(o, mode, op, b, r);
        return;
    case OP_REQ:
    case OP_REQ_WITHOUT_QUERY:
        v = header(r->req, op, &n);
        if (v && op->kind == OP_REQ_WITHOUT_QUERY) {
            const char *q = memchr(v, '?', n);
            if (q)
                n = (size_t)(q - v);
        }
        break;
    case OP_RESP:
        v = header(r->resp, op, &n);
        if (!v && r->upstream_service_time_ms >= 0 && op->slen == 29 &&
            memcmp(op->s, "x-envoy-upstream-service-time", 29) == 0) {
            /* Envoy's router puts this header on the response; nuncio does not, so
             * the time the integrator measured stands in for it (a string, as a header is) */
            char tmp[24];
            size_t k = fmt_u64(tmp, (uint64_t)r->upstream_service_time_ms);
            emit_str(o, mode, tmp, k, op->max);
            return;
        }
        break;
    case OP_TRAILER:
        v = header(r->trailers, op, &n);
        break;
    case OP_PROTOCOL:
        emit_cstr(o, mode, r->protocol);
        return;
    case OP_RESPONSE_CODE:
        emit_int(o, mode, r->response_code);
        return;
    case OP_RESPONSE_FLAGS:
        emit_cstr(o, mode, r->response_flags);
        return;
    case OP_RESPONSE_CODE_DETAILS:
        emit_cstr(o, mode, r->response_code_details);
        return;
    case OP_BYTES_RECEIVED:
        emit_int(o, mode, (int64_t)r->bytes_received);
        return;
    case OP_BYTES_SENT:
        emit_int(o, mode, (int64_t)r->bytes_sent);
        return;
    case OP_DURATION:
        emit_int(o, mode, r->duration_ms);
        return;
    case OP_RESPONSE_DURATION:
        if (r->response_duration_ms < 0)
            emit_none(o, mode);
        else
            emit_int(o, mode, r->response_duration_ms);
        return;
    case OP_UPSTREAM_HOST:
        emit_cstr(o, mode, r->upstream_host);
        return;
    case OP_UPSTREAM_CLUSTER:
        emit_cstr(o, mode, r->upstream_cluster);
        return;
    case OP_UPSTREAM_LOCAL_ADDRESS:
        emit_cstr(o, mode, r->upstream_local_address);
        return;
    case OP_UPSTREAM_TRANSPORT_FAILURE_REASON:
        emit_cstr(o, mode, r->upstream_transport_failure_reason);
        return;
    case OP_ROUTE_NAME:
        emit_cstr(o, mode, r->route_name);
        return;
    case OP_DOWNSTREAM_REMOTE_ADDRESS:
        emit_cstr(o, mode, r->downstream_remote_address);
        return;
    case OP_DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT:
        emit_no_port(o, mode, r->downstream_remote_address);
        return;
    case OP_DOWNSTREAM_LOCAL_ADDRESS:
        emit_cstr(o, mode, r->downstream_local_address);
        return;
    case OP_DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT:
        emit_no_port(o, mode, r->downstream_local_address);
        return;
    case OP_REQUESTED_SERVER_NAME:
        emit_cstr(o, mode, r->requested_server_name);
        return;
    case OP_GRPC_STATUS:
        emit_grpc(o, mode, op->arg, r);
        return;
    case OP_GRPC_STATUS_NUMBER:
        emit_grpc(o, mode, GRPC_NUMBER, r);
        return;
    case OP_HOSTNAME:
        emit_cstr(o, mode, al->hostname);
        return;
    case OP_CONNECTION_ID:
        emit_int(o, mode, (int64_t)r->connection_id);
        return;
    case OP_UPSTREAM_REQUEST_ATTEMPT_COUNT:
        emit_int(o, mode, r->attempts);
        return;
    default:
        emit_none(o, mode);
        return;
    }
    if (v)
        emit_str(o, mode, v, n, op->max);
    else
        emit_none(o, mode);
}

/* ------------------------------------------------------------------------ */
/* Lines */

static void format_line(struct out *o, struct access_log *al, struct access_log_buf *b,
                        const struct access_log_rec *r)
{
    if (!al->json) {
        for (size_t i = 0; i < al->text.n; i++)
            emit_op(o, M_TEXT, &al->text.ops[i], al, b, r);
        return;
    }
    putc_(o, '{');
    for (size_t i = 0; i < al->nfields; i++) {
        const struct jfield *f = &al->fields[i];
        if (i)
            putc_(o, ',');
        put(o, f->key, f->klen);
        if (f->single) {
            emit_op(o, M_JVAL, &f->f.ops[0], al, b, r);
        } else {
            putc_(o, '"');
            for (size_t k = 0; k < f->f.n; k++)
                emit_op(o, M_JSTR, &f->f.ops[k], al, b, r);
            putc_(o, '"');
        }
    }
    put(o, "}\n", 2);
}

static struct batch *batch_new(void)
{
    struct batch *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    if (!(b->data = malloc(BATCH_CAP + LINE_ROOM))) {
        free(b);
        return NULL;
    }
    b->cap = BATCH_CAP + LINE_ROOM;
    return b;
}

static void batch_free(struct batch *b)
{
    if (b) {
        free(b->data);
        free(b);
    }
}

/* Under al->mu: keeps b for reuse, unless the log has enough or b grew huge. */
static void recycle_locked(struct access_log *al, struct batch *b)
{
    if (al->nspare >= FREE_BATCHES_MAX || b->cap > BATCH_KEEP_MAX) {
        batch_free(b);
        return;
    }
    b->len = 0;
    b->lines = 0;
    b->next = al->spare;
    al->spare = b;
    al->nspare++;
}

static uint32_t count_lines(const char *p, size_t n)
{
    uint32_t k = 0;
    for (const char *e = p + n; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        k++;
    return k;
}

/* ------------------------------------------------------------------------ */
/* The writer thread */

static int is_stdout_path(const char *p)
{
    return !strcmp(p, "/dev/stdout") || !strcmp(p, "/dev/fd/1") || !strcmp(p, "/proc/self/fd/1");
}

static int is_stderr_path(const char *p)
{
    return !strcmp(p, "/dev/stderr") || !strcmp(p, "/dev/fd/2") || !strcmp(p, "/proc/self/fd/2");
}

static int open_path(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 && (errno == ENXIO || errno == ENOENT || errno == EACCES) &&
        (is_stdout_path(path) || is_stderr_path(path))) {
        /* stdout may be a socket (systemd's journal), which cannot be reopened
         * by name; or /dev may be minimal. The descriptor itself will do. */
        fd = fcntl(is_stdout_path(path) ? 1 : 2, F_DUPFD_CLOEXEC, 3);
    }
    if (fd < 0)
        snprintf(err, errlen, "access log: cannot open %s: %s", path, strerror(errno));
    return fd;
}

/* Writes all of p, riding out EINTR and (on a non-blocking descriptor) EAGAIN.
 * Returns the bytes that could not be written (0: all). */
static size_t write_all(struct access_log *al, const char *p, size_t n)
{
    int waited_ms = 0;
    while (n) {
        ssize_t w = write(al->fd, p, n);
        if (w > 0) {
            p += w, n -= (size_t)w;
            waited_ms = 0;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pthread_mutex_lock(&al->mu);
            int stopping = al->stopping;
            pthread_mutex_unlock(&al->mu);
            if (stopping && waited_ms >= CLOSE_WAIT_S * 1000)
                break; /* shutting down and nobody reads: give up on the rest */
            struct pollfd pfd = {.fd = al->fd, .events = POLLOUT};
            poll(&pfd, 1, 100);
            waited_ms += 100;
            continue;
        }
        int e = w < 0 ? errno : EIO;
        if (e != al->last_errno) { /* once per kind of failure, not once per batch */
            nu_log(NU_LOG_ERROR, "access log %s: write failed: %s; lines are dropped until it works", al->path,
                   strerror(e));
            al->last_errno = e;
        }
        break;
    }
    if (!n && al->last_errno) {
        nu_log(NU_LOG_INFO, "access log %s: writing again", al->path);
        al->last_errno = 0;
    }
    return n;
}

static void writer_reopen(struct access_log *al)
{
    char err[256];
    int fd = open_path(al->path, err, sizeof err);
    if (fd < 0) {
        nu_log(NU_LOG_ERROR, "%s; still writing to the file opened before", err);
        return;
    }
    close(al->fd);
    al->fd = fd;
}

static void log_free(struct access_log *al);

static void *writer_main(void *arg)
{
    struct access_log *al = arg;
    pthread_mutex_lock(&al->mu);
    for (;;) {
        while (!al->head && !al->stopping && !al->reopen)
            pthread_cond_wait(&al->cv, &al->mu);
        if (al->reopen) {
            al->reopen = 0;
            pthread_mutex_unlock(&al->mu);
            writer_reopen(al);
            pthread_mutex_lock(&al->mu);
            continue;
        }
        if (!al->head)
            break; /* stopping, and everything queued is written */
        struct batch *list = al->head;
        al->head = al->tail = NULL;
        pthread_mutex_unlock(&al->mu);
        uint64_t lost = 0;
        for (struct batch *b = list; b; b = b->next) {
            size_t left = write_all(al, b->data, b->len);
            if (left)
                lost += count_lines(b->data + b->len - left, left);
        }
        if (lost)
            atomic_fetch_add(&al->dropped, lost);
        pthread_mutex_lock(&al->mu);
        while (list) {
            struct batch *b = list;
            list = b->next;
            al->queued -= b->len;
            recycle_locked(al, b);
        }
    }
    al->writer_done = 1;
    int detached = al->detached;
    pthread_mutex_unlock(&al->mu);
    if (detached)
        log_free(al); /* nobody will join: the last reference is gone */
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Opening and closing */

static void log_free(struct access_log *al)
{
    fmt_free(&al->text);
    for (size_t i = 0; i < al->nfields; i++) {
        free(al->fields[i].key);
        fmt_free(&al->fields[i].f);
    }
    free(al->fields);
    while (al->head) {
        struct batch *b = al->head;
        al->head = b->next;
        batch_free(b);
    }
    while (al->spare) {
        struct batch *b = al->spare;
        al->spare = b->next;
        batch_free(b);
    }
    if (al->fd >= 0)
        close(al->fd);
    pthread_cond_destroy(&al->cv);
    pthread_mutex_destroy(&al->mu);
    free(al->path);
    free(al);
}

/* A JSON value's text: a literal key `"k":` (escaped) and the value's ops, with
 * literals escaped once here rather than on every line. */
static int compile_field(struct jfield *f, const char *key, const char *fmt, char *err,
                         size_t errlen)
{
    struct batch tmp = {0};
    struct out o = {&tmp, 0};
    putc_(&o, '"');
    put_json(&o, key, strlen(key));
    put(&o, "\":", 2);
    f->key = tmp.data; /* before the check: freed at nomem either way */
    f->klen = tmp.len;
    if (o.oom)
        goto nomem;
    struct fmt raw = {0};
    char e2[200];
    if (compile(&raw, fmt, e2, sizeof e2) != NU_OK) {
        snprintf(err, errlen, "access log: json key \"%s\": %s", key, e2);
        fmt_free(&raw);
        free(f->key); /* the field is not counted yet: nobody else frees it */
        f->key = NULL;
        return NU_ERR_CONFIG;
    }
    f->f = raw;
    f->single = raw.n == 1 && raw.ops[0].kind != OP_LIT;
    for (size_t i = 0; i < raw.n; i++) {
        struct op *op = &raw.ops[i];
        if (op->kind != OP_LIT)
            continue;
        struct batch lb = {0};
        struct out lo = {&lb, 0};
        put_json(&lo, op->s, op->slen);
        putc_(&lo, 0);
        if (lo.oom) {
            free(lb.data);
            fmt_free(&f->f);
            goto nomem;
        }
        free(op->s);
        op->s = lb.data;
        op->slen = lb.len - 1;
    }
    return NU_OK;
nomem:
    free(f->key);
    f->key = NULL;
    snprintf(err, errlen, "out of memory");
    return NU_ERR_NOMEM;
}

struct access_log *access_log_open(const struct nu_access_log_cfg *cfg, char *err, size_t errlen)
{
    struct access_log *al = calloc(1, sizeof *al);
    if (!al) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    al->fd = -1;
    atomic_init(&al->refs, 1);
    atomic_init(&al->dropped, 0);
    al->max_queued = ACCESS_LOG_MAX_QUEUED;
    if (pthread_mutex_init(&al->mu, NULL) != 0) {
        free(al);
        snprintf(err, errlen, "access log: cannot make a mutex");
        return NULL;
    }
    if (pthread_cond_init(&al->cv, NULL) != 0) {
        pthread_mutex_destroy(&al->mu);
        free(al);
        snprintf(err, errlen, "access log: cannot make a condition variable");
        return NULL;
    }
    const char *path = cfg->path ? cfg->path : "/dev/stdout";
    if (!(al->path = strdup(path))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (gethostname(al->hostname, sizeof al->hostname - 1) != 0)
        strcpy(al->hostname, "-");
    al->json = cfg->json;
    if (cfg->json) {
        if (cfg->n_json && !(al->fields = calloc(cfg->n_json, sizeof *al->fields))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < cfg->n_json; i++) {
            if (compile_field(&al->fields[i], cfg->json_keys[i], cfg->json_fmts[i], err, errlen) != NU_OK)
                goto fail;
            al->nfields++;
        }
    } else {
        char e2[200];
        const char *f = cfg->format ? cfg->format : ENVOY_DEFAULT_FORMAT;
        if (compile(&al->text, f, e2, sizeof e2) != NU_OK) {
            snprintf(err, errlen, "access log: format: %s", e2);
            goto fail;
        }
        /* every line ends: a format without a final newline would glue lines together */
        struct op *last = al->text.n ? &al->text.ops[al->text.n - 1] : NULL;
        if (!last || last->kind != OP_LIT || last->s[last->slen - 1] != '\n') {
            if (add_lit(&al->text, "\n", 1) != NU_OK) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
        }
    }
    if ((al->fd = open_path(al->path, err, errlen)) < 0)
        goto fail;
    /* The writer takes no signal: they belong to the main thread's handlers, and
     * a write to a pipe whose reader left must fail with EPIPE, not kill us. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&al->thread, NULL, writer_main, al);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "access log: cannot start the writer thread: %s", strerror(rc));
        goto fail;
    }
    return al;
fail:
    log_free(al);
    return NULL;
}

struct access_log *access_log_ref(struct access_log *al)
{
    atomic_fetch_add_explicit(&al->refs, 1, memory_order_relaxed);
    return al;
}

static void release(struct access_log *al, int wait)
{
    if (!al || atomic_fetch_sub_explicit(&al->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_t t = al->thread;
    pthread_mutex_lock(&al->mu);
    al->stopping = 1;
    pthread_cond_signal(&al->cv);
    pthread_mutex_unlock(&al->mu);
    if (wait) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += CLOSE_WAIT_S + 1;
        if (pthread_timedjoin_np(t, NULL, &dl) == 0) {
            log_free(al);
            return;
        }
        nu_log(NU_LOG_WARN, "access log %s: the writer is stuck; exiting without its last lines", al->path);
    }
    pthread_mutex_lock(&al->mu);
    if (al->writer_done) {
        pthread_mutex_unlock(&al->mu);
        pthread_join(t, NULL); /* it is returning: no wait to speak of */
        log_free(al);
        return;
    }
    al->detached = 1; /* from here on the writer owns al and frees it */
    pthread_mutex_unlock(&al->mu);
    pthread_detach(t);
}

void access_log_unref(struct access_log *al)
{
    release(al, 0);
}

void access_log_close(struct access_log *al)
{
    release(al, 1);
}

void access_log_reopen(struct access_log *al)
{
    pthread_mutex_lock(&al->mu);
    al->reopen = 1;
    pthread_cond_signal(&al->cv);
    pthread_mutex_unlock(&al->mu);
}

uint64_t access_log_dropped(const struct access_log *al)
{
    return atomic_load(&((struct access_log *)al)->dropped);
}

const char *access_log_path(const struct access_log *al)
{
    return al->path;
}

/* ------------------------------------------------------------------------ */
/* Worker buffers */

struct access_log_buf *access_log_buf_new(void)
{
    struct access_log_buf *b = calloc(1, sizeof *b);
    if (b)
        b->tsec = INT64_MIN;
    return b;
}

void access_log_flush(struct access_log_buf *b)
{
    struct access_log *al = b->al;
    if (!al)
        return;
    struct batch *c = b->cur;
    if (c && c->len) {
        pthread_mutex_lock(&al->mu);
        if (al->queued + c->len > al->max_queued) {
            /* the writer is this far behind: lose these lines rather than memory or time */
            atomic_fetch_add(&al->dropped, c->lines);
            c->len = 0;
            c->lines = 0;
        } else {
            c->next = NULL;
            if (al->tail)
                al->tail->next = c;
            else
                al->head = c;
            al->tail = c;
            al->queued += c->len;
            pthread_cond_signal(&al->cv);
            /* a spare batch for the next lines: steady state allocates nothing */
            b->cur = al->spare;
            if (b->cur) {
                al->spare = b->cur->next;
                al->nspare--;
                b->cur->next = NULL;
            }
        }
        pthread_mutex_unlock(&al->mu);
    }
    b->al = NULL;
    access_log_unref(al); /* nothing pending: a reload's old log may go */
}

void access_log_buf_free(struct access_log_buf *b)
{
    if (!b)
        return;
    access_log_flush(b);
    batch_free(b->cur);
    free(b);
}

int access_log_write(struct access_log_buf *b, struct access_log *al, const struct access_log_rec *r)
{
    if (!al)
        return NU_OK; /* no log configured */
    if (b->al != al) {
        access_log_flush(b); /* pending lines belong to another log (a reload) */
        b->al = access_log_ref(al);
    }
    if (!b->cur && !(b->cur = batch_new())) {
        atomic_fetch_add(&al->dropped, 1);
        return NU_ERR_NOMEM;
    }
    struct batch *c = b->cur;
    size_t start = c->len;
    struct out o = {c, 0};
    if (room(&o, LINE_ROOM))
        format_line(&o, al, b, r);
    if (o.oom) {
        c->len = start; /* no half line ever reaches the file */
        atomic_fetch_add(&al->dropped, 1);
        return NU_ERR_NOMEM;
    }
    c->lines++;
    if (c->len >= BATCH_CAP)
        access_log_flush(b);
    return NU_OK;
}
