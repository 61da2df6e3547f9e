#include "h2_guard.h"

#include <stdio.h>

#define H2G_DATA 0x0
#define H2G_HEADERS 0x1
#define H2G_PRIORITY 0x2
#define H2G_SETTINGS 0x4
#define H2G_PING 0x6
#define H2G_WINDOW_UPDATE 0x8
#define H2G_CONTINUATION 0x9
#define H2G_END_STREAM 0x1
#define H2G_END_HEADERS 0x4

static const char *const names[H2_ABUSE_KINDS] = {
    [H2_ABUSE_RAPID_RESET] = "rapid_reset",   [H2_ABUSE_CONTINUATION] = "continuation",
    [H2_ABUSE_SETTINGS] = "settings",         [H2_ABUSE_PING] = "ping",
    [H2_ABUSE_EMPTY_DATA] = "empty_data",     [H2_ABUSE_PRIORITY] = "priority",
    [H2_ABUSE_WINDOW_UPDATE] = "window_update", [H2_ABUSE_HPACK_BOMB] = "hpack_bomb",
    [H2_ABUSE_ZERO_WINDOW] = "zero_window",   [H2_ABUSE_SLOW_READ] = "slow_read",
};

const char *h2_abuse_name(int kind)
{
    return kind >= 0 && kind < H2_ABUSE_KINDS ? names[kind] : "";
}

void h2_guard_init(struct h2_guard *g, uint32_t max_header_list, double now)
{
    *g = (struct h2_guard){0};
    g->max_header_list = max_header_list;
    g->max_continuations = h2g_max_continuations(max_header_list);
    g->settings.start = g->ping.start = g->empty_data.start = g->priority.start = g->window_update.start = now;
    g->rr_start = g->epoch = now;
}

/* Fixed windows: simple, and a burst across a window edge gets at most
 * twice the budget, which every budget here allows for. */
static int over(struct h2g_rate *r, double now, uint32_t max)
{
    if (now - r->start >= H2G_WINDOW) {
        r->start = now;
        r->n = 0;
    }
    return ++r->n > max;
}

int h2_guard_frame(struct h2_guard *g, double now, uint8_t type, uint8_t flags, uint32_t length, int empty)
{
    switch (type) {
    case H2G_DATA:
        if (empty && !(flags & H2G_END_STREAM) && over(&g->empty_data, now, H2G_MAX_EMPTY_DATA))
            return H2_ABUSE_EMPTY_DATA;
        return H2_ABUSE_NONE;
    case H2G_HEADERS:
        g->blk_wire = length;
        g->blk_decoded = 0;
        g->blk_continuations = g->blk_frames_empty = 0;
        return H2_ABUSE_NONE;
    case H2G_CONTINUATION:
        /* Counted from the frame header, before its payload is read: the
         * flood is cut before it costs anything more. */
        g->blk_wire += length;
        if (length == 0 && !(flags & H2G_END_HEADERS))
            g->blk_frames_empty++;
        if (++g->blk_continuations > g->max_continuations || g->blk_frames_empty > H2G_MAX_EMPTY_CONTINUATIONS)
            return H2_ABUSE_CONTINUATION;
        return H2_ABUSE_NONE;
    case H2G_PRIORITY:
        return over(&g->priority, now, H2G_MAX_PRIORITY) ? H2_ABUSE_PRIORITY : H2_ABUSE_NONE;
    case H2G_SETTINGS:
        if (length / 6 > H2G_MAX_SETTINGS_ENTRIES || over(&g->settings, now, H2G_MAX_SETTINGS))
            return H2_ABUSE_SETTINGS;
        return H2_ABUSE_NONE;
    case H2G_PING:
        if (g->ping_credit) {
            g->ping_credit = 0;
            return H2_ABUSE_NONE;
        }
        return over(&g->ping, now, H2G_MAX_PINGS) ? H2_ABUSE_PING : H2_ABUSE_NONE;
    case H2G_WINDOW_UPDATE:
        if (g->wu_credit > 0) {
            g->wu_credit--;
            return H2_ABUSE_NONE;
        }
        return over(&g->window_update, now, H2G_MAX_WINDOW_UPDATES) ? H2_ABUSE_WINDOW_UPDATE : H2_ABUSE_NONE;
    default:
        return H2_ABUSE_NONE;
    }
}

void h2_guard_data_sent(struct h2_guard *g)
{
    g->ping_credit = 1;
    g->wu_credit = g->wu_credit + H2G_WU_PER_DATA > H2G_WU_CREDIT_MAX ? H2G_WU_CREDIT_MAX : g->wu_credit + H2G_WU_PER_DATA;
}

/* Ids above floor opened in this epoch or the one before: less than one to
 * two H2G_YOUNG ago. Client stream ids only grow, so two marks do it. */
static void roll_epoch(struct h2_guard *g, double now)
{
    if (now - g->epoch >= 2 * H2G_YOUNG) {
        g->floor = g->hi_before_epoch = g->hi;
        g->epoch = now;
    } else if (now - g->epoch >= H2G_YOUNG) {
        g->floor = g->hi_before_epoch;
        g->hi_before_epoch = g->hi;
        g->epoch = now;
    }
}

void h2_guard_stream_open(struct h2_guard *g, double now, int32_t id)
{
    roll_epoch(g, now);
    if (id > g->hi)
        g->hi = id;
}

static void roll_rr(struct h2_guard *g, double now)
{
    if (now - g->rr_start >= H2G_WINDOW) {
        g->rr_start = now;
        g->rr_premature = g->rr_ended = 0;
    }
}

int h2_guard_reset(struct h2_guard *g, double now, int32_t id, int response_done)
{
    roll_epoch(g, now);
    roll_rr(g, now);
    if (response_done || id <= g->floor)
        return H2_ABUSE_NONE;
    g->rr_premature++;
    /* The ratio spares a busy client whose few cancels add up: the attack
     * resets (nearly) every stream it opens. */
    if (g->rr_premature > H2G_MAX_RAPID_RESETS && (uint64_t)g->rr_premature * 2 > g->rr_ended)
        return H2_ABUSE_RAPID_RESET;
    return H2_ABUSE_NONE;
}

void h2_guard_stream_end(struct h2_guard *g, double now)
{
    roll_rr(g, now);
    g->rr_ended++;
}

int h2_guard_field(struct h2_guard *g, size_t nlen, size_t vlen)
{
    g->blk_decoded += nlen + vlen + 32;
    /* A legitimate block is not over the limit at all; one far over it for
     * what it cost on the wire references table entries again and again. */
    if (g->blk_decoded > g->max_header_list && g->blk_decoded > (uint64_t)H2G_BOMB_RATIO * g->blk_wire)
        return H2_ABUSE_HPACK_BOMB;
    return H2_ABUSE_NONE;
}

void h2_guard_describe(const struct h2_guard *g, int kind, char *buf, size_t cap)
{
    switch (kind) {
    case H2_ABUSE_RAPID_RESET:
        snprintf(buf, cap, "%u streams reset before their response within %.0f s, of %u ended; budget %d",
                 g->rr_premature, H2G_WINDOW, g->rr_ended, H2G_MAX_RAPID_RESETS);
        break;
    case H2_ABUSE_CONTINUATION:
        snprintf(buf, cap, "%u CONTINUATION frames in one header block, %u empty; budget %u, %d empty",
                 g->blk_continuations, g->blk_frames_empty, g->max_continuations, H2G_MAX_EMPTY_CONTINUATIONS);
        break;
    case H2_ABUSE_SETTINGS:
        snprintf(buf, cap, "%u SETTINGS frames within %.0f s; budget %d, %d entries a frame", g->settings.n,
                 H2G_WINDOW, H2G_MAX_SETTINGS, H2G_MAX_SETTINGS_ENTRIES);
        break;
    case H2_ABUSE_PING:
        snprintf(buf, cap, "%u PINGs not following our DATA within %.0f s; budget %d", g->ping.n, H2G_WINDOW,
                 H2G_MAX_PINGS);
        break;
    case H2_ABUSE_EMPTY_DATA:
        snprintf(buf, cap, "%u empty DATA frames within %.0f s; budget %d", g->empty_data.n, H2G_WINDOW,
                 H2G_MAX_EMPTY_DATA);
        break;
    case H2_ABUSE_PRIORITY:
        snprintf(buf, cap, "%u PRIORITY frames within %.0f s; budget %d", g->priority.n, H2G_WINDOW,
                 H2G_MAX_PRIORITY);
        break;
    case H2_ABUSE_WINDOW_UPDATE:
        snprintf(buf, cap, "%u WINDOW_UPDATEs beyond our DATA within %.0f s; budget %d", g->window_update.n,
                 H2G_WINDOW, H2G_MAX_WINDOW_UPDATES);
        break;
    case H2_ABUSE_HPACK_BOMB:
        snprintf(buf, cap, "a header block decoded to %llu bytes from %llu on the wire; limit %u, ratio %d",
                 (unsigned long long)g->blk_decoded, (unsigned long long)g->blk_wire, g->max_header_list,
                 H2G_BOMB_RATIO);
        break;
    default:
        snprintf(buf, cap, "%s", h2_abuse_name(kind));
        break;
    }
}

int h2_guard_stall(struct h2g_stall *st, double now, int blocked, uint64_t progress, uint64_t need, double limit)
{
    if (!blocked) {
        st->on = 0;
        return 0;
    }
    if (!st->on || progress >= st->target) {
        st->on = 1;
        st->since = now;
        st->target = progress + (need ? need : 1);
        return 0;
    }
    /* A hair of slack: the watchdog's looks come every few seconds, and one
     * a millisecond short of the limit would add a whole period. */
    return now - st->since >= limit - 0.01;
}
