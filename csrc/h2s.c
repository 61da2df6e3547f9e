#include "h2s.h"
#include "conn.h"
#include "exchange.h"
#include "h2_common.h"
#include "h2_guard.h"
#include "h2_mem.h"
#include "log.h"
#include "nuncio.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Request header blocks above this are refused (RST_STREAM) when the
 * listener sets no limit (h2s_opts.max_header_list_size 0); Envoy's default is 60 KiB. */
#define H2S_MAX_HEADER_BYTES (60 * 1024)

/* How often the watchdog looks for zero-window stalls and slow reads
 * (h2_guard.h) while streams are open: a stall is seen at most this late. */
#define H2S_WATCH_TICK 2.0

/* nghttp2's own limits, behind the budgets of h2_guard.h (which trip first,
 * and are the ones logged and counted). Outgoing SETTINGS/PING ACKs queued
 * because the client does not read them: nghttp2's default. */
#define H2S_MAX_OUTBOUND_ACK 1000
/* nghttp2 counts every RST_STREAM, cancels of finished or long-lived streams
 * too (its default, 1000 then 33/s, would cut a busy client whose deadlines
 * expire); the premature-reset budget is the real one. */
#define H2S_RESET_BURST 10000
#define H2S_RESET_RATE 1000
/* Our HPACK encoder's table, whatever SETTINGS_HEADER_TABLE_SIZE the client
 * offers: a client cannot make us keep more per connection (nghttp2's default). */
#define H2S_DEFLATE_TABLE 4096

/* After our GOAWAY, a client that does not read it still loses the connection this much later. */
#define H2S_GOAWAY_LINGER 5.0

/* A connection without a stream this long gives its write buffer and frame
 * buffer pages back: 10 000 idle clients then cost about 6 KiB each, not 18. */
#define H2S_QUIET 0.5

#define H2S_FRAME_DATA 0x0
#define H2S_FRAME_HEADERS 0x1
#define H2S_FRAME_SETTINGS 0x4
#define H2S_FRAME_CONTINUATION 0x9
#define H2S_FLAG_END_HEADERS 0x4
#define H2S_FLAG_PADDED 0x8

/* The client's frames as the request-header timeout and the abuse budgets
 * see them, read off the raw bytes: nghttp2 says nothing about a header
 * block it ignores (a refused stream's), nothing while a frame's payload
 * trickles in, and a flood is best cut before nghttp2 works on it. */
struct h2s_framer {
    uint32_t preface_left; /* client preface bytes still to come */
    uint8_t head[9];       /* the frame header being read */
    uint8_t head_len;
    uint8_t type, flags;
    uint32_t length;            /* of the current frame */
    uint32_t payload_left;      /* of the current frame */
    unsigned pad_pending : 1;   /* a PADDED DATA frame whose pad length byte is still to come */
    int32_t block_stream;       /* stream of the open (or last) header block */
    int32_t last_complete;      /* highest stream whose header block ended */
    int32_t max_opened;         /* highest stream a HEADERS frame named */
    int32_t suspect;            /* a HEADERS frame named a lower stream: open (trailers) or not (an error)? */
    unsigned settings_done : 1; /* the client's first SETTINGS frame is in, whole */
    unsigned in_block : 1;      /* a HEADERS frame came and its block has not ended */
};

/* What hdr_timer is timing. */
enum { H2S_WATCH_NONE, H2S_WATCH_PREFACE, H2S_WATCH_BLOCK };

struct h2s {
    struct conn *conn;
    nghttp2_session *ng;
    h2s_open_fn open;
    void *open_arg;
    struct side *sides;                  /* open streams that have an exchange */
    int heard_client;                    /* the client's preface arrived: our SETTINGS may go out */
    double idle_timeout, header_timeout; /* seconds; 0: off */
    ev_timer idle_timer;                 /* runs while no stream is open */
    ev_timer hdr_timer;                  /* the preface, then each header block */
    ev_timer linger_timer;               /* after our GOAWAY */
    int watching;                        /* H2S_WATCH_* */
    int terminating;                     /* GOAWAY submitted: the connection closes once it is written */
    int released;                        /* the quiet release ran since the last stream closed */
    int abused;                          /* an abuse budget was broken and answered: nothing more is read */
    uint32_t max_header_list;            /* request header block limit (bytes of names and values) */
    int32_t refuse_id;                   /* the stream whose header block went over it: reset at the block's end */
    int32_t block_id;                    /* the stream whose request header block is being decoded, */
    struct exchange *block_x;            /* and its exchange: on_header's lookup, a dozen per request */
    ev_timer watch_timer;                /* the stall watchdog: runs while streams are open or output is stuck */
    struct h2g_stall zero_window, slow_read;
    uint64_t data_sent; /* response DATA bytes framed */
    uint64_t drained;   /* output bytes the conn wrote to the socket */
    size_t out_mark;    /* conn_pending() when last looked at (see note_drained) */
    struct h2_guard guard;
    struct h2s_framer fr;
    struct h2_mem_session mem; /* the session's allocator state (h2_mem.c); outlives the session */
    struct h2s_event *ev;      /* owned: request events of this read, reported once it is decoded */
    uint32_t n_ev, cap_ev;
    struct buf held; /* owned: the DATA payloads those events carry */
};

/* Request events are reported to the streams once a whole read is decoded,
 * not from inside nghttp2's callbacks: a read from a busy client holds a
 * dozen requests, and running their filter chains one after another keeps
 * the Lua code and its data in the CPU's caches, where interleaving each
 * with HPACK decoding evicted them (bench/profile: fewer cache misses and
 * mispredictions per call). They are reported in two passes (report_all):
 * the request heads, then per stream its upstream start (on_start), body
 * and end. Per stream, the order is kept: a stream with events held has the
 * rest held too (side.queued) until they are reported, and before its close. */
enum { H2S_EV_HEADERS, H2S_EV_DATA, H2S_EV_END };
#define H2S_HELD_KEEP 4096 /* bytes of held's buffer kept from one read to the next */

struct h2s_event {
    struct exchange *x; /* NULL once reported */
    uint32_t off, len;  /* DATA: the payload in held */
    uint8_t type;
    uint8_t end; /* HEADERS: the frame carried END_STREAM */
};

static const struct side_ops h2s_ops;

static void link_side(struct h2s *s, struct side *sd)
{
    sd->prev = NULL;
    sd->next = s->sides;
    if (s->sides)
        s->sides->prev = sd;
    s->sides = sd;
}

static void unlink_side(struct h2s *s, struct side *sd)
{
    if (sd->prev)
        sd->prev->next = sd->next;
    else if (s->sides == sd)
        s->sides = sd->next;
    if (sd->next)
        sd->next->prev = sd->prev;
    sd->prev = sd->next = NULL;
}

static struct exchange *stream_x(nghttp2_session *ng, int32_t id)
{
    return nghttp2_session_get_stream_user_data(ng, id);
}

/* Reads the client's bytes p[0..n) into f, counting each frame against g
 * (NULL: no budgets, the unit tests' framer). Stops early after a header
 * block frame, so that nghttp2, fed exactly the bytes returned, decodes the
 * block while g knows its size on the wire (h2_guard_field). On a broken
 * budget *abuse is set and the count returned stops before the frame that
 * broke it: nghttp2 never sees that frame. */
static size_t framer_step(struct h2s_framer *f, struct h2_guard *g, double now, const uint8_t *p, size_t n, int *abuse)
{
    const uint8_t *start = p;
    /* Where the current frame began in p; negative: before p. */
    ptrdiff_t frame_at = -1;
    *abuse = H2_ABUSE_NONE;
    size_t k = n < f->preface_left ? n : f->preface_left;
    f->preface_left -= (uint32_t)k;
    p += k;
    n -= k;
    while (n > 0) {
        if (f->head_len < sizeof f->head) {
            if (f->head_len == 0)
                frame_at = p - start;
            k = sizeof f->head - f->head_len;
            if (k > n)
                k = n;
            memcpy(f->head + f->head_len, p, k);
            f->head_len += (uint8_t)k;
            p += k;
            n -= k;
            if (f->head_len < sizeof f->head)
                break;
            f->length = f->payload_left = (uint32_t)f->head[0] << 16 | (uint32_t)f->head[1] << 8 | f->head[2];
            f->type = f->head[3];
            f->flags = f->head[4];
            f->pad_pending = 0;
            if (f->type == H2S_FRAME_HEADERS) {
                f->in_block = 1;
                f->block_stream = (int32_t)(((uint32_t)f->head[5] & 0x7f) << 24 | (uint32_t)f->head[6] << 16 |
                                            (uint32_t)f->head[7] << 8 | f->head[8]);
                if (f->block_stream < f->max_opened)
                    f->suspect = f->block_stream;
                else
                    f->max_opened = f->block_stream;
            }
            if (g) {
                if (f->type == H2S_FRAME_DATA && (f->flags & H2S_FLAG_PADDED) && f->length > 0)
                    f->pad_pending = 1; /* empty or not: the pad length byte tells */
                else
                    *abuse = h2_guard_frame(g, now, f->type, f->flags, f->length, f->length == 0);
                if (*abuse != H2_ABUSE_NONE)
                    return frame_at > 0 ? (size_t)frame_at : 0;
            }
        }
        if (f->pad_pending && n > 0) {
            f->pad_pending = 0;
            *abuse = h2_guard_frame(g, now, f->type, f->flags, f->length, f->length == 1u + p[0]);
            if (*abuse != H2_ABUSE_NONE)
                return frame_at > 0 ? (size_t)frame_at : 0;
        }
        k = n < f->payload_left ? n : f->payload_left;
        f->payload_left -= (uint32_t)k;
        p += k;
        n -= k;
        if (f->payload_left > 0)
            break;
        f->head_len = 0;
        if (f->type == H2S_FRAME_SETTINGS)
            f->settings_done = 1;
        if (f->type == H2S_FRAME_HEADERS || f->type == H2S_FRAME_CONTINUATION) {
            if (f->flags & H2S_FLAG_END_HEADERS) {
                f->in_block = 0;
                if (f->block_stream > f->last_complete)
                    f->last_complete = f->block_stream;
            }
            if (g)
                break;
        }
    }
    return (size_t)(p - start);
}

static void on_linger(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2s *s = nu_container_of(t, struct h2s, linger_timer);
    nu_log(NU_LOG_DEBUG, "[c%llu] GOAWAY not written within %.0f s: closed", (unsigned long long)s->conn->id,
           H2S_GOAWAY_LINGER);
    conn_close(s->conn, NU_ERR_TIMEOUT);
}

/* GOAWAY (with last_stream: the client may retry every later stream
 * elsewhere), then close once it is written. nghttp2 ignores whatever the
 * client sends from here on. Returns NU_OK, or NU_ERR_NOMEM when no GOAWAY
 * could be queued: the caller closes (never from inside an nghttp2 callback). */
static int goaway(struct h2s *s, int32_t last_stream, uint32_t code)
{
    struct ev_loop *loop = s->conn->w->loop;
    ev_timer_stop(loop, &s->idle_timer);
    ev_timer_stop(loop, &s->hdr_timer);
    ev_timer_stop(loop, &s->watch_timer);
    s->watching = H2S_WATCH_NONE;
    s->terminating = 1;
    /* A client we never heard may not speak HTTP/2 at all: no frames for it. */
    if (!s->heard_client || nghttp2_session_terminate_session2(s->ng, last_stream, code) != 0)
        return NU_ERR_NOMEM;
    ev_timer_set(&s->linger_timer, H2S_GOAWAY_LINGER, 0.);
    ev_timer_start(loop, &s->linger_timer);
    conn_want_write(s->conn);
    return NU_OK;
}

static void goaway_and_close(struct h2s *s, int32_t last_stream)
{
    if (goaway(s, last_stream, NGHTTP2_NO_ERROR) != NU_OK)
        conn_close(s->conn, NU_ERR_TIMEOUT);
}

/* The answer to every broken budget (h2_guard.h): counted, logged once, then
 * GOAWAY ENHANCE_YOUR_CALM and the close once it is written. A slow reader
 * would never read a GOAWAY: it is closed at once (outside nghttp2 callbacks
 * only, as the watchdog is). Returns NU_OK, or an error when the connection
 * must be failed instead (from a callback: NGHTTP2_ERR_CALLBACK_FAILURE). */
static int answer_abuse(struct h2s *s, int kind, const char *detail)
{
    if (s->abused)
        return NU_OK;
    s->abused = 1;
    struct conn *c = s->conn;
    c->w->h2_abuse[kind]++;
    int cut = kind == H2_ABUSE_SLOW_READ;
    nu_log(NU_LOG_WARN, "[c%llu] %s: HTTP/2 abuse %s (%s): %s", (unsigned long long)c->id, c->peer, h2_abuse_name(kind),
           detail, cut ? "closed" : "GOAWAY ENHANCE_YOUR_CALM, closing");
    if (cut) {
        s->terminating = 1;
        conn_close(c, NU_ERR_TIMEOUT);
        return NU_OK;
    }
    return goaway(s, nghttp2_session_get_last_proc_stream_id(s->ng), NGHTTP2_ENHANCE_YOUR_CALM);
}

/* Output bytes written since the last look: only fill adds output, so what
 * conn_pending() lost in between went to the socket. */
static void note_drained(struct h2s *s)
{
    size_t p = conn_pending(s->conn);
    if (p < s->out_mark)
        s->drained += s->out_mark - p;
    s->out_mark = p;
}

/* Response data waits, and the client's windows let none of it go. */
static int window_shut(struct h2s *s)
{
    int waiting = 0;
    int32_t conn_window = nghttp2_session_get_remote_window_size(s->ng);
    for (struct side *sd = s->sides; sd; sd = sd->next) {
        if (sd->x->resp.body.bytes == 0)
            continue;
        waiting = 1;
        if (conn_window > 0 && nghttp2_session_get_stream_remote_window_size(s->ng, sd->id) > 0)
            return 0;
    }
    return waiting;
}

static void watch_start(struct h2s *s)
{
    if (s->terminating || ev_is_active(&s->watch_timer))
        return;
    ev_timer_set(&s->watch_timer, H2S_WATCH_TICK, H2S_WATCH_TICK);
    ev_timer_start(s->conn->w->loop, &s->watch_timer);
}

static void on_watch(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2s *s = nu_container_of(t, struct h2s, watch_timer);
    double now = ev_now(loop);
    char d[128];
    note_drained(s);
    size_t pending = conn_pending(s->conn);
    /* The output must turn over: what was queued when it reached the mark
     * must be written within the period, however slowly. */
    if (h2_guard_stall(&s->slow_read, now, pending >= CONN_WBUF_HIGH, s->drained, pending, H2G_STALL)) {
        snprintf(d, sizeof d, "%zu bytes queued for it and not written within %.0f s", pending,
                 now - s->slow_read.since);
        answer_abuse(s, H2_ABUSE_SLOW_READ, d);
        return;
    }
    if (h2_guard_stall(&s->zero_window, now, window_shut(s), s->data_sent, H2G_STALL_MIN_BYTES, H2G_STALL)) {
        snprintf(d, sizeof d, "response data waiting behind its closed windows for %.0f s", now - s->zero_window.since);
        if (answer_abuse(s, H2_ABUSE_ZERO_WINDOW, d) != NU_OK)
            conn_close(s->conn, NU_ERR_NOMEM);
        return;
    }
    if (!s->sides && pending == 0 && !s->slow_read.on)
        ev_timer_stop(loop, t);
}

/* No stream for H2S_QUIET: what the connection only needs while it is busy
 * goes back (the frame buffer's pages fault back in zeroed; the write buffer,
 * if a stream ended without output after h2s_fill last ran, is reallocated
 * by the next frame). Nothing is pending by then. */
static void release_quiet(struct h2s *s)
{
    struct conn *c = s->conn;
    if (s->sides || nghttp2_session_want_write(s->ng) || buf_size(&c->wbuf))
        return;
    buf_free(&c->wbuf); /* the conn owns it; empty, and the codec is its only writer */
    h2_mem_quiet(&s->mem);
    free(s->ev); /* nothing is held between reads */
    s->ev = NULL;
    s->cap_ev = 0;
    buf_free(&s->held);
}

static void on_idle(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2s *s = nu_container_of(t, struct h2s, idle_timer);
    if (!s->released) {
        /* The first expiry is the quiet one (idle_start); the idle timeout proper follows. */
        s->released = 1;
        release_quiet(s);
        if (s->idle_timeout <= 0)
            return;
        double rest = s->idle_timeout - H2S_QUIET;
        if (rest > 0) {
            ev_timer_set(&s->idle_timer, rest, 0.);
            ev_timer_start(loop, &s->idle_timer);
            return;
        }
    }
    nu_log(NU_LOG_INFO, "[c%llu] %s: no stream for %.3g s (idle timeout): GOAWAY, closing",
           (unsigned long long)s->conn->id, s->conn->peer, s->idle_timeout);
    goaway_and_close(s, nghttp2_session_get_last_proc_stream_id(s->ng));
}

static void on_header_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct h2s *s = nu_container_of(t, struct h2s, hdr_timer);
    int32_t last = nghttp2_session_get_last_proc_stream_id(s->ng);
    /* nghttp2 counts a stream as processed once its HEADERS begin; a request
     * whose headers never ended was never sent on, so the client may retry it. */
    if (s->watching == H2S_WATCH_BLOCK && s->fr.block_stream > s->fr.last_complete && last >= s->fr.block_stream)
        last = s->fr.block_stream > 2 ? s->fr.block_stream - 2 : 0;
    if (s->watching == H2S_WATCH_PREFACE)
        nu_log(NU_LOG_INFO,
               "[c%llu] %s: no HTTP/2 preface and SETTINGS within %.3g s (request headers timeout): closing",
               (unsigned long long)s->conn->id, s->conn->peer, s->header_timeout);
    else
        nu_log(NU_LOG_INFO,
               "[c%llu s%d] %s: request headers not complete within %.3g s (request headers timeout): GOAWAY, closing",
               (unsigned long long)s->conn->id, s->fr.block_stream, s->conn->peer, s->header_timeout);
    goaway_and_close(s, last);
}

/* Times what the framer says is pending: the preface (armed at attach, never
 * again), then each header block from its first frame. */
static void watch_headers(struct h2s *s)
{
    if (s->header_timeout <= 0 || s->terminating)
        return;
    int want = !s->fr.settings_done ? H2S_WATCH_PREFACE : s->fr.in_block ? H2S_WATCH_BLOCK : H2S_WATCH_NONE;
    if (want == s->watching)
        return;
    struct ev_loop *loop = s->conn->w->loop;
    ev_timer_stop(loop, &s->hdr_timer);
    s->watching = want;
    if (want == H2S_WATCH_BLOCK) {
        ev_timer_set(&s->hdr_timer, s->header_timeout, 0.);
        ev_timer_start(loop, &s->hdr_timer);
    }
}

/* The idle timer runs exactly while no stream is open: first until the
 * quiet release (H2S_QUIET, or the idle timeout if that is shorter), then
 * for the rest of the idle timeout (on_idle). */
static void idle_start(struct h2s *s)
{
    if (s->terminating)
        return;
    s->released = 0;
    double first = s->idle_timeout > 0 && s->idle_timeout < H2S_QUIET ? s->idle_timeout : H2S_QUIET;
    ev_timer_stop(s->conn->w->loop, &s->idle_timer);
    ev_timer_set(&s->idle_timer, first, 0.);
    ev_timer_start(s->conn->w->loop, &s->idle_timer);
}

static void hold(struct h2s *s, struct exchange *x, int type, int end, const uint8_t *p, size_t len);

/* Tells the stream about body bytes (borrowed: valid during the call). */
static void pass_data(struct exchange *x, const uint8_t *p, size_t len)
{
    x->down.unconsumed += len;
    x->req.body_bytes += len;
    x->down_ev->on_data(x, p, len);
}

/* The request ended (END_STREAM on DATA or trailers): told now, or held
 * behind what the stream already has held. */
static void pass_end(struct h2s *s, struct exchange *x)
{
    if (x->down.queued) {
        hold(s, x, H2S_EV_END, 0, NULL, 0);
        return;
    }
    x->req.end = 1;
    x->down_ev->on_end(x);
}

static void report(struct h2s *s, struct h2s_event *e)
{
    struct exchange *x = e->x;
    e->x = NULL;
    switch (e->type) {
    case H2S_EV_HEADERS:
        if (e->end)
            x->req.end = 1;
        x->down_ev->on_headers(x);
        if (e->end)
            x->down_ev->on_end(x);
        break;
    case H2S_EV_DATA:
        pass_data(x, s->held.data + e->off, e->len);
        break;
    default:
        pass_end(s, x); /* x->down.queued is clear by now */
        break;
    }
}

/* Reports what is held for x, in order (it closes, or more cannot be held). */
static void report_stream(struct h2s *s, struct exchange *x)
{
    x->down.queued = 0;
    for (uint32_t i = 0; i < s->n_ev; i++)
        if (s->ev[i].x == x)
            report(s, &s->ev[i]);
}

/* Reports everything held, in two passes (see struct h2s_event): the
 * request heads, then per stream in arrival order its upstream start, body
 * and end. Stops if a report closed the connection. */
static void report_all(struct h2s *s)
{
    /* First the request heads: their filter chains run back to back. A
     * stream routed here defers its upstream start while side.queued is set. */
    for (uint32_t i = 0; i < s->n_ev && !s->conn->closing; i++) {
        struct h2s_event *e = &s->ev[i];
        if (!e->x || e->type != H2S_EV_HEADERS)
            continue;
        if (e->end)
            e->x->req.end = 1;
        e->x->down_ev->on_headers(e->x);
    }
    /* Then per stream, in arrival order: the upstream start, the body, the end. */
    for (uint32_t i = 0; i < s->n_ev && !s->conn->closing; i++) {
        struct h2s_event *e = &s->ev[i];
        struct exchange *x = e->x;
        if (!x)
            continue;
        x->down.queued = 0;
        if (e->type == H2S_EV_HEADERS) {
            e->x = NULL;
            if (x->down_ev->on_start)
                x->down_ev->on_start(x);
            if (e->end && x->down.ops)
                x->down_ev->on_end(x);
        } else {
            report(s, e);
        }
    }
    s->n_ev = 0;
    s->held.off = s->held.len = 0;
    /* A read that began large uploads held up to a read's worth of DATA:
     * that much is not kept for the connection's busy life. */
    if (s->held.cap > H2S_HELD_KEEP)
        buf_free(&s->held);
}

/* Holds an event for x; if that fails (out of memory), reports what x has
 * held and then this one at once: later, but in order. */
static void hold(struct h2s *s, struct exchange *x, int type, int end, const uint8_t *p, size_t len)
{
    struct h2s_event e = {.x = x, .type = (uint8_t)type, .end = (uint8_t)end, .len = (uint32_t)len};
    int ok = 1;
    if (s->n_ev == s->cap_ev) {
        uint32_t cap = s->cap_ev ? 2 * s->cap_ev : 32;
        struct h2s_event *v = realloc(s->ev, cap * sizeof *v);
        if (v) {
            s->ev = v;
            s->cap_ev = cap;
        } else {
            ok = 0;
        }
    }
    if (ok && type == H2S_EV_DATA) {
        e.off = (uint32_t)s->held.len; /* held.off stays 0 until report_all empties it */
        ok = len <= UINT32_MAX - s->held.len && buf_append(&s->held, p, len) == NU_OK;
    }
    if (!ok) {
        nu_log(NU_LOG_DEBUG, "[c%llu s%d] out of memory holding a request event: reported now",
               (unsigned long long)s->conn->id, x->down.id);
        report_stream(s, x);
        if (type == H2S_EV_DATA)
            pass_data(x, p, len);
        else
            report(s, &e);
        return;
    }
    x->down.queued = 1;
    s->ev[s->n_ev++] = e;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2s *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct exchange *x = s->open(s->open_arg, s->conn);
    if (!x)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets just this stream */
    x->down.ops = &h2s_ops;
    x->down.codec = s;
    x->down.id = frame->hd.stream_id;
    x->down.x = x;
    link_side(s, &x->down);
    ev_timer_stop(s->conn->w->loop, &s->idle_timer);
    h2_guard_stream_open(&s->guard, ev_now(s->conn->w->loop), frame->hd.stream_id);
    watch_start(s);
    nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, x);
    s->block_id = frame->hd.stream_id;
    s->block_x = x;
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    struct h2s *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (h2_guard_field(&s->guard, nlen, vlen) != H2_ABUSE_NONE) {
        char d[160];
        h2_guard_describe(&s->guard, H2_ABUSE_HPACK_BOMB, d, sizeof d);
        /* Paused: mem_recv returns now rather than decode the rest (nghttp2 ignores it all from here). */
        return answer_abuse(s, H2_ABUSE_HPACK_BOMB, d) == NU_OK ? NGHTTP2_ERR_PAUSE : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    int32_t id = frame->hd.stream_id;
    /* A header block is never interleaved with another stream's (RFC 9113
     * 6.10), so its fields belong to the stream on_begin_headers opened. */
    struct exchange *x = id == s->block_id ? s->block_x : stream_x(ng, id);
    if (!x || id == s->refuse_id)
        return 0;
    struct hdr_map *m = frame->headers.cat == NGHTTP2_HCAT_REQUEST ? &x->req.hdrs : &x->req.trailers;
    if (m->bytes + nlen + vlen > s->max_header_list) {
        nu_log(NU_LOG_INFO, "[c%llu s%d] request headers over %u bytes: stream refused",
               (unsigned long long)s->conn->id, id, s->max_header_list);
        /* Reset at the block's end (on_frame_recv): until then the block is
         * still decoded and counted, which tells an HPACK bomb from merely
         * large headers. */
        s->refuse_id = id;
        return 0;
    }
    if (hdr_add_lower(m, (const char *)name, nlen, (const char *)value, vlen) != NU_OK)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2s *s = ud;
    struct exchange *x;
    int end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        x = frame->hd.stream_id == s->block_id ? s->block_x : stream_x(ng, frame->hd.stream_id);
        s->block_id = 0; /* the block is complete */
        if (!x)
            return 0;
        if (frame->hd.stream_id == s->refuse_id) {
            /* As nghttp2 does for a callback's NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE: this stream only. */
            s->refuse_id = 0;
            return nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_INTERNAL_ERROR) == 0
                       ? 0
                       : NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
            hold(s, x, H2S_EV_HEADERS, end, NULL, 0);
        else
            pass_end(s, x); /* trailers always carry END_STREAM (nghttp2 checks) */
        break;
    case NGHTTP2_DATA:
        x = stream_x(ng, frame->hd.stream_id);
        if (x && end)
            pass_end(s, x);
        break;
    case NGHTTP2_RST_STREAM: {
        /* Called before nghttp2 closes the stream: its exchange is still here. */
        if (!stream_x(ng, frame->hd.stream_id))
            break;
        int done = nghttp2_session_get_stream_local_close(ng, frame->hd.stream_id) == 1;
        if (h2_guard_reset(&s->guard, ev_now(s->conn->w->loop), frame->hd.stream_id, done) != H2_ABUSE_NONE) {
            char d[160];
            h2_guard_describe(&s->guard, H2_ABUSE_RAPID_RESET, d, sizeof d);
            return answer_abuse(s, H2_ABUSE_RAPID_RESET, d) == NU_OK ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        break;
    }
    default:
        break;
    }
    return 0;
}

static int on_data_chunk_recv(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud)
{
    struct exchange *x = stream_x(ng, id);
    if (!x) {
        /* No one will pass these bytes on: give the window back now. */
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    if (x->down.queued)
        hold(ud, x, H2S_EV_DATA, 0, data, len);
    else
        pass_data(x, data, len);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud)
{
    struct h2s *s = ud;
    struct exchange *x = stream_x(ng, id);
    if (!x)
        return 0;
    if (x->down.queued)
        report_stream(s, x); /* what it said before it closed comes first */
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    if (id == s->block_id)
        s->block_id = 0;
    unlink_side(s, &x->down);
    h2_guard_stream_end(&s->guard, ev_now(s->conn->w->loop));
    if (!s->sides)
        idle_start(s);
    /* Bytes still queued for this stream will never be consumed through it;
     * hand them back at connection level or the connection window shrinks for good. */
    if (x->down.unconsumed)
        nghttp2_session_consume_connection(ng, (size_t)x->down.unconsumed);
    x->down.unconsumed = 0;
    x->down.ops = NULL;
    x->down.codec = NULL;
    x->down_ev->on_close(x, error_code, NU_OK, NULL);
    return 0;
}

static ssize_t read_response_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *data_flags,
                                  nghttp2_data_source *source, void *ud)
{
    struct exchange *x = source->ptr;
    /* NO_COPY: send_response_data moves the bytes straight from the queue to
     * the conn's output once nghttp2 has framed them (buf is unused). */
    size_t n = h2_data_length(&x->resp.body, length);
    if (n > 0)
        *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == x->resp.body.bytes && x->resp.end) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (x->resp.trailers.n > 0) {
            /* gRPC's grpc-status travels here: trailers go out after the last DATA. */
            nghttp2_nv stackv[32];
            nghttp2_nv *nv = x->resp.trailers.n <= 32 ? stackv : malloc(x->resp.trailers.n * sizeof *nv);
            if (!nv)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            size_t k = h2_nv_from_hdrs(&x->resp.trailers, nv);
            int rv = nghttp2_submit_trailer(ng, id, nv, k);
            if (nv != stackv)
                free(nv);
            if (rv == 0)
                *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        return (ssize_t)n;
    }
    if (n == 0)
        return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)n;
}

/* Called by nghttp2_session_mem_send right after read_response_body chose
 * length (nothing runs in between, so the queue still holds those bytes). */
static int send_response_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                              nghttp2_data_source *source, void *ud)
{
    struct h2s *s = ud;
    struct exchange *x = source->ptr;
    int rv = h2_write_data_frame(s->conn, frame, framehd, &x->resp.body, length);
    if (rv != NGHTTP2_ERR_CALLBACK_FAILURE) {
        h2_guard_data_sent(&s->guard);
        s->data_sent += length;
        if (length > 0)
            x->down_ev->on_body_taken(x, length);
    }
    return rv;
}

static struct h2s *side_h2s(struct exchange *x)
{
    return x->down.codec;
}

static int h2s_submit_headers(struct exchange *x)
{
    struct h2s *s = side_h2s(x);
    struct hdr_map *m = &x->resp.hdrs;
    nghttp2_nv stackv[64];
    nghttp2_nv *nv = m->n <= 64 ? stackv : malloc(m->n * sizeof *nv);
    if (!nv)
        return NU_ERR_NOMEM;
    size_t k = h2_nv_from_hdrs(m, nv);
    int rv;
    if (x->resp.end && x->resp.body.bytes == 0 && x->resp.trailers.n == 0) {
        rv = nghttp2_submit_response(s->ng, x->down.id, nv, k, NULL);
    } else {
        nghttp2_data_provider prd = {.source.ptr = x, .read_callback = read_response_body};
        rv = nghttp2_submit_response(s->ng, x->down.id, nv, k, &prd);
    }
    if (nv != stackv)
        free(nv);
    conn_want_write(s->conn);
    return rv == 0 ? NU_OK : NU_ERR_PROTO;
}

static void h2s_resume(struct exchange *x)
{
    struct h2s *s = side_h2s(x);
    /* Fails harmlessly when the provider is not deferred (it will read anyway). */
    nghttp2_session_resume_data(s->ng, x->down.id);
    conn_want_write(s->conn);
}

static void h2s_reset(struct exchange *x, uint32_t h2_error)
{
    struct h2s *s = side_h2s(x);
    nghttp2_submit_rst_stream(s->ng, NGHTTP2_FLAG_NONE, x->down.id, h2_error);
    conn_want_write(s->conn);
}

static void h2s_consume(struct exchange *x, size_t n)
{
    struct h2s *s = side_h2s(x);
    if (n > x->down.unconsumed)
        n = (size_t)x->down.unconsumed;
    if (n == 0)
        return;
    x->down.unconsumed -= n;
    nghttp2_session_consume(s->ng, x->down.id, n);
    conn_want_write(s->conn);
}

static const struct side_ops h2s_ops = {
    .submit_headers = h2s_submit_headers,
    .resume = h2s_resume,
    .reset = h2s_reset,
    .consume = h2s_consume,
};

static int decode(struct conn *c, const uint8_t *p, size_t n)
{
    struct h2s *s = c->codec;
    double now = ev_now(c->w->loop);
    /* Answered: what else the client says is not read (nghttp2 would ignore it). */
    while (n > 0 && !s->abused) {
        int kind;
        size_t k = framer_step(&s->fr, &s->guard, now, p, n, &kind);
        /* RFC 9113 §5.1.1: a new stream must have a higher id than every
         * stream before it; HEADERS on a lower id that is not open (not
         * trailers) is a connection error, which nghttp2 would pass over in
         * silence. Asked before nghttp2 reads the frame: trailers may close it. */
        int32_t bad_id = 0;
        if (s->fr.suspect) {
            if (!nghttp2_session_find_stream(s->ng, s->fr.suspect))
                bad_id = s->fr.suspect;
            s->fr.suspect = 0;
        }
        if (k > 0) {
            ssize_t rv = nghttp2_session_mem_recv(s->ng, p, k);
            if (rv < 0) {
                /* nghttp2's own limits, behind ours: no GOAWAY can follow these errors. */
                int lim = rv == NGHTTP2_ERR_FLOODED                  ? H2_ABUSE_SLOW_READ
                          : rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS ? H2_ABUSE_CONTINUATION
                                                                     : H2_ABUSE_NONE;
                if (lim != H2_ABUSE_NONE) {
                    c->w->h2_abuse[lim]++;
                    nu_log(NU_LOG_WARN, "[c%llu] %s: HTTP/2 abuse %s (nghttp2: %s): closed", (unsigned long long)c->id,
                           c->peer, h2_abuse_name(lim), nghttp2_strerror((int)rv));
                } else {
                    nu_log(NU_LOG_INFO, "[c%llu] %s: HTTP/2 error: %s", (unsigned long long)c->id, c->peer,
                           nghttp2_strerror((int)rv));
                }
                return NU_ERR_PROTO;
            }
            s->heard_client = 1;
        }
        if (bad_id && !s->terminating) {
            nu_log(NU_LOG_INFO,
                   "[c%llu] %s: HEADERS on stream %d after stream %d (RFC 9113 5.1.1): GOAWAY PROTOCOL_ERROR",
                   (unsigned long long)c->id, c->peer, bad_id, s->fr.max_opened);
            if (goaway(s, nghttp2_session_get_last_proc_stream_id(s->ng), NGHTTP2_PROTOCOL_ERROR) != NU_OK)
                return NU_ERR_NOMEM;
            break;
        }
        if (kind != H2_ABUSE_NONE) {
            char d[160];
            h2_guard_describe(&s->guard, kind, d, sizeof d);
            if (answer_abuse(s, kind, d) != NU_OK)
                return NU_ERR_NOMEM;
            break;
        }
        p += k;
        n -= k;
    }
    return 0;
}

static int h2s_on_read(struct conn *c, const uint8_t *p, size_t n)
{
    struct h2s *s = c->codec;
    int rc = decode(c, p, n);
    /* Also after an error: what the read held before it is reported, as
     * nghttp2's callbacks would have; the connection closes after. */
    report_all(s);
    if (rc == 0)
        watch_headers(s);
    return rc;
}

static int h2s_fill(struct conn *c)
{
    struct h2s *s = c->codec;
    /* Say nothing until the client spoke: a peer that never sends the
     * preface (ALPN h2, then silence or junk) gets no frames. */
    if (!s->heard_client)
        return 0;
    note_drained(s);
    while (conn_pending(c) < CONN_WBUF_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(s->ng, &data);
        if (n < 0) {
            nu_log(NU_LOG_WARN, "[c%llu] HTTP/2 send error: %s", (unsigned long long)c->id, nghttp2_strerror((int)n));
            return NU_ERR_PROTO;
        }
        if (n == 0)
            break;
        /* mem_send's pointer is valid only until the next call: copy now. */
        if (buf_append(&c->wbuf, data, (size_t)n) != NU_OK)
            return NU_ERR_NOMEM;
    }
    s->out_mark = conn_pending(c);
    /* All written and no stream open: the connection may now sit idle for
     * hours, so its write buffer goes back at once rather than at the quiet
     * release (10 000 idle connections: 4 KiB each, 98 -> 88 MiB). A call
     * at a time on one connection pays a 4 KiB malloc per response. */
    if (s->out_mark == 0 && !s->sides && c->wbuf.data)
        buf_free(&c->wbuf); /* the conn owns it; empty, and the codec is its only writer */
    if (s->out_mark >= CONN_WBUF_HIGH)
        watch_start(s); /* the client may have stopped reading */
    if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng))
        return 1;
    return 0;
}

static void h2s_on_close(struct conn *c, int err)
{
    struct h2s *s = c->codec;
    ev_timer_stop(c->w->loop, &s->idle_timer);
    ev_timer_stop(c->w->loop, &s->hdr_timer);
    ev_timer_stop(c->w->loop, &s->linger_timer);
    ev_timer_stop(c->w->loop, &s->watch_timer);
    /* Held events of a read that closed the connection are not reported. */
    s->n_ev = 0;
    s->held.off = s->held.len = 0;
    s->block_id = 0;
    /* nghttp2_session_del reports no stream closes, so tell every stream here. */
    while (s->sides) {
        struct side *sd = s->sides;
        struct exchange *x = sd->x;
        unlink_side(s, sd);
        nghttp2_session_set_stream_user_data(s->ng, sd->id, NULL);
        sd->ops = NULL;
        sd->codec = NULL;
        sd->unconsumed = 0;
        x->down_ev->on_close(x, NGHTTP2_CANCEL, err == NU_OK ? NU_ERR_CLOSED : err, NULL);
    }
}

static void h2s_free(void *codec)
{
    struct h2s *s = codec;
    nghttp2_session_del(s->ng);
    free(s->ev);
    buf_free(&s->held);
    free(s);
}

/* Shutting down: first the shutdown notice (a GOAWAY with the highest
 * stream id: streams the client is opening right now still count), then the
 * real GOAWAY naming the last stream we took. Streams in flight finish; the
 * connection closes once none is left (h2s_fill sees nghttp2 wants nothing). */
static void h2s_drain(struct conn *c, int final)
{
    struct h2s *s = c->codec;
    if (s->terminating)
        return;
    if (!s->heard_client) {
        conn_close(c, NU_ERR_CLOSED);
        return;
    }
    int rc = final ? nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                                           NGHTTP2_NO_ERROR, NULL, 0)
                   : nghttp2_submit_shutdown_notice(s->ng);
    if (rc != 0) {
        conn_close(c, NU_ERR_NOMEM);
        return;
    }
    conn_want_write(c);
}

static const struct conn_handler h2s_handler = {
    .on_read = h2s_on_read,
    .fill = h2s_fill,
    .on_close = h2s_on_close,
    .free = h2s_free,
    .drain = h2s_drain,
};

int h2s_attach(struct conn *c, h2s_open_fn open, void *arg, const struct h2s_opts *o)
{
    double idle_timeout = o->idle_timeout, header_timeout = o->header_timeout;
    struct h2s *s = calloc(1, sizeof *s);
    if (!s)
        return NU_ERR_NOMEM;
    s->conn = c;
    s->open = open;
    s->open_arg = arg;
    s->idle_timeout = idle_timeout;
    s->header_timeout = header_timeout;
    s->fr.preface_left = NGHTTP2_CLIENT_MAGIC_LEN;
    s->max_header_list = o->max_header_list_size ? o->max_header_list_size : H2S_MAX_HEADER_BYTES;
    h2_guard_init(&s->guard, s->max_header_list, ev_now(c->w->loop));
    ev_timer_init(&s->watch_timer, on_watch, H2S_WATCH_TICK, H2S_WATCH_TICK);
    ev_timer_init(&s->idle_timer, on_idle, idle_timeout, 0.);
    ev_timer_init(&s->hdr_timer, on_header_timeout, header_timeout, 0.);
    ev_timer_init(&s->linger_timer, on_linger, H2S_GOAWAY_LINGER, 0.);
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) {
        free(s);
        return NU_ERR_NOMEM;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_response_data);
    nghttp2_option *opt = h2_new_option();
    if (opt) {
        nghttp2_option_set_max_continuations(opt, s->guard.max_continuations);
        nghttp2_option_set_max_settings(opt, H2G_MAX_SETTINGS_ENTRIES);
        nghttp2_option_set_max_outbound_ack(opt, H2S_MAX_OUTBOUND_ACK);
        nghttp2_option_set_stream_reset_rate_limit(opt, H2S_RESET_BURST, H2S_RESET_RATE);
        nghttp2_option_set_max_deflate_dynamic_table_size(opt, H2S_DEFLATE_TABLE);
    }
    int rv = opt ? nghttp2_session_server_new3(&s->ng, cb, s, opt, h2_mem_session(&s->mem, c->w)) : NGHTTP2_ERR_NOMEM;
    nghttp2_session_callbacks_del(cb);
    if (opt)
        nghttp2_option_del(opt);
    if (rv != 0 || h2_send_settings(s->ng, o->max_concurrent_streams) != NU_OK) {
        if (rv == 0)
            nghttp2_session_del(s->ng);
        free(s);
        return NU_ERR_NOMEM;
    }
    conn_set_handler(c, &h2s_handler, s);
    struct ev_loop *loop = c->w->loop;
    idle_start(s);
    if (header_timeout > 0) {
        /* The preface is due header_timeout after the TLS handshake, or after
         * accept in cleartext (the wait for the first byte counts). */
        double left = c->tls ? header_timeout : c->accepted_at + header_timeout - ev_now(loop);
        ev_timer_set(&s->hdr_timer, left > 0 ? left : 0., 0.);
        ev_timer_start(loop, &s->hdr_timer);
        s->watching = H2S_WATCH_PREFACE;
    }
    return NU_OK;
}
