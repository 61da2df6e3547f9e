#include "admin.h"
#include "conn.h"
#include "h2c.h"
#include "log.h"
#include "nuncio.h"
#include "stream.h"
#include "upstream.h"
#include "worker.h"

#include <http_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct admin_conn {
    struct conn *conn;
    struct worker *w;
    http_parser parser;
    char url[256];
    size_t url_len;
};

static double started_at = -1;

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

static void reply(struct admin_conn *a, int status, const char *reason, const char *body, int keep_alive)
{
    char head[256];
    size_t blen = strlen(body);
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %zu\r\nconnection: %s\r\n\r\n",
                     status, reason, blen, keep_alive ? "keep-alive" : "close");
    if (buf_append(&a->conn->wbuf, head, (size_t)n) != NU_OK || buf_append(&a->conn->wbuf, body, blen) != NU_OK) {
        conn_close(a->conn, NU_ERR_NOMEM);
        return;
    }
    if (!keep_alive)
        a->conn->finishing = 1;
    conn_want_write(a->conn);
}

static int on_message_complete(http_parser *p)
{
    struct admin_conn *a = p->data;
    struct worker *w = a->w;
    int ka = http_should_keep_alive(p);
    char body[1024];
    double up = ev_now(w->loop) - started_at;
    char *q = strchr(a->url, '?');
    if (q)
        *q = '\0';
    if (strcmp(a->url, "/ready") == 0) {
        if (w->ready)
            reply(a, 200, "OK", "LIVE\n", ka);
        else
            reply(a, 503, "Service Unavailable", "PRE_INITIALIZING\n", ka);
    } else if (strcmp(a->url, "/ambassador/v0/check_ready") == 0) {
        if (w->ready) {
            snprintf(body, sizeof body, "ambassador readiness check OK (%.0f s)\n", up);
            reply(a, 200, "OK", body, ka);
        } else {
            reply(a, 503, "Service Unavailable", "ambassador waiting for config\n", ka);
        }
    } else if (strcmp(a->url, "/ambassador/v0/check_alive") == 0) {
        snprintf(body, sizeof body, "ambassador liveness check OK (%.0f s)\n", up);
        reply(a, 200, "OK", body, ka);
    } else if (strcmp(a->url, "/stats") == 0) {
        /* Plain counters for tests and humans until the Prometheus endpoint lands. */
        unsigned long long connects = 0;
        for (size_t i = 0; w->ups && i < w->ups->n; i++)
            connects += w->ups->v[i].connects;
        /* This admin connection itself is one of the live ones: leave it out. */
        snprintf(body, sizeof body,
                 "live_streams %llu\nlive_conns %llu\nupstream_connects %llu\nlive_upstream_conns %llu\n"
                 "upstream_retries %llu\nupstream_ejections %llu\nlua_errors %llu\n",
                 (unsigned long long)w->live_streams, (unsigned long long)(w->live_conns - 1), connects,
                 (unsigned long long)w->live_upstream_conns,
                 (unsigned long long)(w->ups ? w->ups->retries : 0), (unsigned long long)(w->ups ? w->ups->ejections : 0),
                 (unsigned long long)stream_api_counter(STREAM_API_LUA_ERRORS));
        reply(a, 200, "OK", body, ka);
    } else {
        reply(a, 404, "Not Found", "not found\n", ka);
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
    size_t done = http_parser_execute(&a->parser, &settings, (const char *)p, n);
    if (a->parser.http_errno != HPE_OK || done != n) {
        reply(a, 400, "Bad Request", "bad request\n", 0);
        return 0;
    }
    return 0;
}

static int admin_fill(struct conn *c)
{
    return 0;
}

static void admin_on_close(struct conn *c, int err)
{
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

int admin_attach(struct conn *c, void *worker)
{
    struct admin_conn *a = calloc(1, sizeof *a);
    if (!a)
        return NU_ERR_NOMEM;
    struct worker *w = worker;
    if (started_at < 0)
        started_at = ev_now(w->loop);
    a->conn = c;
    a->w = w;
    http_parser_init(&a->parser, HTTP_REQUEST);
    a->parser.data = a;
    conn_set_handler(c, &admin_handler, a);
    return NU_OK;
}
