#include "admin.h"
#include "conn.h"
#include "access_log.h"
#include "control.h"
#include "log.h"
#include "nuncio.h"
#include "stats.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One admin client. Replies that need the workers' numbers wait for a
 * scrape; the scrape finds this object through `waiting`, and a client that
 * leaves first unhooks it so the scrape answers nobody. */
struct admin_conn {
    struct conn *conn;
    struct control *ctl;
    http_parser parser;
    char url[1024];
    size_t url_len;
    int keep_alive;
    int head; /* HEAD request: headers only */
    struct scrape *waiting;
    char query[1024];
};

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct admin_conn *a = p->data;
    size_t room = sizeof a->url - 1 - a->url_len;
    if (len > room)
        len = room;
    memcpy(a->url + a->url_len, at, len);
    a->url_len += len;
    a->url[a->url_len] = '\0';
    return 0;
}

static void reply_n(struct admin_conn *a, int status, const char *reason, const char *ctype, const char *body,
                    size_t blen)
{
    char head[320];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\ncache-control: no-store\r\n"
                     "connection: %s\r\n\r\n",
                     status, reason, ctype, blen, a->keep_alive ? "keep-alive" : "close");
    if (buf_append(&a->conn->wbuf, head, (size_t)n) != NU_OK ||
        (!a->head && buf_append(&a->conn->wbuf, body, blen) != NU_OK)) {
        conn_close(a->conn, NU_ERR_NOMEM);
        return;
    }
    if (!a->keep_alive)
        a->conn->finishing = 1;
    conn_want_write(a->conn);
    /* A pipelined request that waited behind this one goes on now. */
    http_parser_pause(&a->parser, 0);
}

static void reply(struct admin_conn *a, int status, const char *reason, const char *body)
{
    reply_n(a, status, reason, "text/plain; charset=utf-8", body, strlen(body));
}

static const char *reason_of(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 503:
        return "Service Unavailable";
    default:
        return status >= 500 ? "Internal Server Error" : "OK";
    }
}

/* Sums what /stats has always shown (tests and humans read it), over workers. */
static void render_stats(struct admin_conn *a, struct scrape *sc)
{
    struct stats_gauges sum = {0};
    char body[4096];
    size_t len = 0;
    for (int i = 0; i < sc->n; i++) {
        const struct stats_gauges *g = sc->reports[i] ? &sc->reports[i]->gauges : NULL;
        if (!g)
            continue;
        stats_gauges_add(&sum, g);
    }
    len += (size_t)snprintf(body + len, sizeof body - len,
                            "live_streams %llu\nlive_conns %llu\nupstream_connects %llu\nlive_upstream_conns %llu\n"
                            "upstream_retries %llu\nupstream_ejections %llu\nlua_errors %llu\n"
                            "downstream_connections %llu\ngeneration %llu\nreloads_ok %llu\nreloads_failed %llu\n",
                            (unsigned long long)sum.streams_active,
                            (unsigned long long)(sum.downstream_conns_active + sum.upstream_conns_active),
                            (unsigned long long)sum.upstream_conns_total, (unsigned long long)sum.upstream_conns_active,
                            (unsigned long long)sum.upstream_retries, (unsigned long long)sum.upstream_ejections,
                            (unsigned long long)sum.lua_errors, (unsigned long long)sum.downstream_conns_total,
                            (unsigned long long)a->ctl->serving, (unsigned long long)a->ctl->reloads_ok,
                            (unsigned long long)a->ctl->reloads_failed);
    for (int i = 0; i < sc->n && len < sizeof body; i++)
        if (sc->reports[i])
            len += (size_t)snprintf(body + len, sizeof body - len, "worker_%d_downstream_connections %llu\n", i,
                                    (unsigned long long)sc->reports[i]->gauges.downstream_conns_total);
    if (len > sizeof body - 1)
        len = sizeof body - 1;
    reply_n(a, 200, "OK", "text/plain; charset=utf-8", body, len);
}

static void render_metrics(struct admin_conn *a, struct scrape *sc)
{
    struct control *ctl = a->ctl;
    struct stats_snap *snaps[64];
    size_t n = 0;
    for (int i = 0; i < sc->n && n < NU_ARRAY_LEN(snaps); i++)
        if (sc->reports[i] && sc->reports[i]->snap)
            snaps[n++] = sc->reports[i]->snap;
    struct stats_process p = {
        .config_generation = ctl->serving,
        .access_log_dropped = ctl->alog ? access_log_dropped(ctl->alog) : 0,
        .reloads_ok = ctl->reloads_ok,
        .reloads_failed = ctl->reloads_failed,
        .workers = (uint64_t)ctl->n_workers,
        .start_time = ctl->started,
        .last_reload_success_time = ctl->last_reload_ok,
    };
    struct buf out = {0};
    if (stats_render(&out, snaps, n, &p) != NU_OK) {
        buf_free(&out);
        reply(a, 500, "Internal Server Error", "out of memory\n");
        return;
    }
    reply_n(a, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", (const char *)out.data + out.off, buf_size(&out));
    buf_free(&out);
}

static void render_diag(struct admin_conn *a, struct scrape *sc)
{
    struct buf out = {0};
    int status = 500;
    const char *ctype = "text/plain";
    const char *peer = a->conn->peer;
    int local = strncmp(peer, "127.", 4) == 0 || strncmp(peer, "[::1]", 5) == 0;
    if (control_diag(a->ctl, sc, a->query, local, &status, &ctype, &out) != NU_OK) {
        buf_free(&out);
        reply(a, 500, "Internal Server Error", "out of memory\n");
        return;
    }
    reply_n(a, status, reason_of(status), ctype, (const char *)out.data + out.off, buf_size(&out));
    buf_free(&out);
}

enum admin_page { PAGE_STATS = 1, PAGE_METRICS, PAGE_DIAG };

struct admin_wait {
    struct admin_conn *a;
    int page;
};

static void scrape_done(struct scrape *sc)
{
    struct admin_wait *wt = sc->arg;
    struct admin_conn *a = wt->a;
    if (a) {
        a->waiting = NULL;
        if (wt->page == PAGE_STATS)
            render_stats(a, sc);
        else if (wt->page == PAGE_METRICS)
            render_metrics(a, sc);
        else
            render_diag(a, sc);
    }
    free(wt);
}

static void gather(struct admin_conn *a, int page)
{
    struct admin_wait *wt = calloc(1, sizeof *wt);
    if (!wt) {
        reply(a, 500, "Internal Server Error", "out of memory\n");
        return;
    }
    wt->a = a;
    wt->page = page;
    /* Hold further pipelined requests until this answer is out, in order. */
    http_parser_pause(&a->parser, 1);
    struct control *ctl = a->ctl;
    struct scrape *before = ctl->scrapes;
    if (control_scrape(ctl, scrape_done, wt) != NU_OK) {
        free(wt);
        reply(a, 500, "Internal Server Error", "out of memory\n");
        return;
    }
    /* control_scrape may have finished at once (no workers): then wt is gone. */
    if (ctl->scrapes != before && ctl->scrapes && ctl->scrapes->arg == wt)
        a->waiting = ctl->scrapes;
}

static double uptime(struct control *ctl)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9 - ctl->started;
}

static int on_message_complete(http_parser *p)
{
    struct admin_conn *a = p->data;
    struct control *ctl = a->ctl;
    a->keep_alive = http_should_keep_alive(p);
    a->head = p->method == HTTP_HEAD;
    char body[256];
    char *q = strchr(a->url, '?');
    a->query[0] = '\0';
    if (q) {
        snprintf(a->query, sizeof a->query, "%s", q + 1);
        *q = '\0';
    }
    const char *path = a->url;
    int serving = ctl->ready && !ctl->draining;
    if (strcmp(path, "/ready") == 0) {
        if (serving)
            reply(a, 200, "OK", "LIVE\n");
        else
            reply(a, 503, "Service Unavailable", ctl->draining ? "DRAINING\n" : "PRE_INITIALIZING\n");
    } else if (strcmp(path, "/ambassador/v0/check_ready") == 0) {
        if (serving) {
            snprintf(body, sizeof body, "ambassador readiness check OK (%.0f s)\n", uptime(ctl));
            reply(a, 200, "OK", body);
        } else if (ctl->draining) {
            reply(a, 503, "Service Unavailable", "ambassador not ready (draining)\n");
        } else {
            reply(a, 503, "Service Unavailable", "ambassador waiting for config\n");
        }
    } else if (strcmp(path, "/ambassador/v0/check_alive") == 0) {
        snprintf(body, sizeof body, "ambassador liveness check OK (%.0f s)\n", uptime(ctl));
        reply(a, 200, "OK", body);
    } else if (strcmp(path, "/stats") == 0) {
        gather(a, PAGE_STATS);
    } else if (strcmp(path, "/metrics") == 0 || strcmp(path, "/stats/prometheus") == 0) {
        gather(a, PAGE_METRICS);
    } else if (strcmp(path, "/ambassador/v0/diag/") == 0 || strcmp(path, "/ambassador/v0/diag") == 0) {
        gather(a, PAGE_DIAG);
    } else {
        reply(a, 404, "Not Found", "not found\n");
    }
    a->url_len = 0;
    a->url[0] = '\0';
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_message_complete = on_message_complete,
};

static int admin_on_read(struct conn *c, const uint8_t *p, size_t n)
{
    struct admin_conn *a = c->codec;
    if (a->waiting || HTTP_PARSER_ERRNO(&a->parser) == HPE_PAUSED) {
        /* An answer is being gathered: one request at a time is plenty here. */
        conn_close(c, NU_ERR_PROTO);
        return 0;
    }
    size_t done = http_parser_execute(&a->parser, &settings, (const char *)p, n);
    if (HTTP_PARSER_ERRNO(&a->parser) == HPE_PAUSED)
        return 0;
    if (a->parser.http_errno != HPE_OK || done != n) {
        a->keep_alive = 0;
        reply(a, 400, "Bad Request", "bad request\n");
    }
    return 0;
}

static int admin_fill(struct conn *c)
{
    return 0;
}

static void admin_on_close(struct conn *c, int err)
{
    struct admin_conn *a = c->codec;
    if (a->waiting) {
        ((struct admin_wait *)a->waiting->arg)->a = NULL;
        a->waiting = NULL;
    }
}

static void admin_free(void *codec)
{
    free(codec);
}

static const struct conn_handler admin_handler = {
    .on_read = admin_on_read,
    .fill = admin_fill,
    .on_close = admin_on_close,
    .free = admin_free,
};

int admin_attach(struct conn *c, void *control)
{
    struct admin_conn *a = calloc(1, sizeof *a);
    if (!a)
        return NU_ERR_NOMEM;
    a->conn = c;
    a->ctl = control;
    http_parser_init(&a->parser, HTTP_REQUEST);
    a->parser.data = a;
    conn_set_handler(c, &admin_handler, a);
    return NU_OK;
}
