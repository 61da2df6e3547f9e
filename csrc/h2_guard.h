/* HTTP/2 abuse budgets of one downstream connection (issue 9): counters and
 * one-second windows over what the client sends, with no I/O and no nghttp2,
 * so spec/c/test_h2_guard.c drives them with a made-up clock. h2s.c feeds it
 * the client's frame headers (read off the raw bytes before nghttp2 gets the
 * frame), stream resets, decoded header fields, its own DATA frames and a
 * periodic look at what waits for the client; a verdict is answered there
 * with GOAWAY and a close.
 *
 * The budgets are per connection and per time window, never lifetime totals:
 * a long-lived gRPC connection sends PINGs (BDP probes) and WINDOW_UPDATEs
 * all day. Each is set well above what a legitimate client sends:
 *
 *   kind           budget (the connection is answered when it is exceeded)
 *   rapid_reset    > 100 streams in one second reset by the client before
 *                  their response ended and within ~1 s of opening, and those
 *                  are more than half the streams that ended in that second
 *   continuation   a header block of more than H2G_MAX_CONTINUATIONS(list)
 *                  CONTINUATION frames (8 for the 60 KiB default), or more
 *                  than 2 empty ones
 *   settings       > 100 SETTINGS frames in one second, or one with more than
 *                  32 entries
 *   ping           > 100 PINGs in one second that no DATA frame of ours
 *                  explains (a BDP probe follows DATA the client received)
 *   empty_data     > 100 DATA frames in one second carrying no byte and no
 *                  END_STREAM (zero length, or padding only)
 *   priority       > 1000 PRIORITY frames in one second
 *   window_update  > 1000 WINDOW_UPDATEs in one second beyond two per DATA
 *                  frame we sent (one for the stream, one for the connection)
 *   hpack_bomb     a header block decoding to more than the header list limit
 *                  and to more than 64 times its size on the wire
 *   zero_window    for 30 s response data waits, the client's windows let
 *                  none of it go, and less than 16 KiB of DATA went out
 *   slow_read      for 30 s the output queued for the socket stays at the
 *                  high-water mark without turning over once (the bytes
 *                  queued when it got there are not all written) */
#ifndef NUNCIO_H2_GUARD_H
#define NUNCIO_H2_GUARD_H

#include <stddef.h>
#include <stdint.h>

enum h2_abuse {
    H2_ABUSE_NONE = -1,
    H2_ABUSE_RAPID_RESET,
    H2_ABUSE_CONTINUATION,
    H2_ABUSE_SETTINGS,
    H2_ABUSE_PING,
    H2_ABUSE_EMPTY_DATA,
    H2_ABUSE_PRIORITY,
    H2_ABUSE_WINDOW_UPDATE,
    H2_ABUSE_HPACK_BOMB,
    H2_ABUSE_ZERO_WINDOW,
    H2_ABUSE_SLOW_READ,
    H2_ABUSE_KINDS
};

#define H2G_WINDOW 1.0 /* seconds: the rate budgets count per window this long */
#define H2G_MAX_RAPID_RESETS 100
#define H2G_YOUNG 1.0 /* a stream reset this soon after it opened (up to twice that) is "rapid" */
#define H2G_MIN_CONTINUATIONS 8
#define H2G_MAX_EMPTY_CONTINUATIONS 2
#define H2G_MAX_SETTINGS 100
#define H2G_MAX_SETTINGS_ENTRIES 32
#define H2G_MAX_PINGS 100
#define H2G_MAX_EMPTY_DATA 100
#define H2G_MAX_PRIORITY 1000
#define H2G_MAX_WINDOW_UPDATES 1000
#define H2G_WU_PER_DATA 2
#define H2G_WU_CREDIT_MAX 256 /* explained WINDOW_UPDATEs saved up at most */
#define H2G_BOMB_RATIO 64
#define H2G_STALL 30.0                  /* seconds: zero_window and slow_read */
#define H2G_STALL_MIN_BYTES (16 * 1024) /* DATA that must go out within H2G_STALL while the windows are shut */

/* CONTINUATION frames one header block may have: twice what a block of the
 * header list limit needs in 16 KiB frames, at least 8 (nghttp2's default). */
static inline uint32_t h2g_max_continuations(uint32_t max_header_list)
{
    uint32_t need = 2 * ((max_header_list + 16383) / 16384);
    return need > H2G_MIN_CONTINUATIONS ? need : H2G_MIN_CONTINUATIONS;
}

struct h2g_rate {
    double start; /* the current window began here */
    uint32_t n;
};

/* A condition that must not last: see h2_guard_stall. */
struct h2g_stall {
    double since;
    uint64_t target; /* progress that ends the current period */
    unsigned on : 1;
};

struct h2_guard {
    uint32_t max_header_list; /* the listener's limit (bytes) */
    uint32_t max_continuations;
    struct h2g_rate settings, ping, empty_data, priority, window_update;
    /* rapid reset: one window counting both, so their ratio means something */
    double rr_start;
    uint32_t rr_premature, rr_ended;
    /* which streams are young: ids above floor opened less than ~2 windows ago */
    double epoch;
    int32_t floor, hi_before_epoch, hi;
    /* the header block being received */
    uint32_t blk_frames_empty, blk_continuations;
    uint64_t blk_wire, blk_decoded;
    /* what our DATA frames explain */
    uint32_t wu_credit;
    unsigned ping_credit : 1;
};

/* The metric label of a kind ("rapid_reset", ...); "" for anything else. */
const char *h2_abuse_name(int kind);

void h2_guard_init(struct h2_guard *g, uint32_t max_header_list, double now);

/* A frame header from the client. empty: for DATA, the frame carries no
 * byte (length 0, or padding only). Returns the kind whose budget it breaks,
 * else H2_ABUSE_NONE. */
int h2_guard_frame(struct h2_guard *g, double now, uint8_t type, uint8_t flags, uint32_t length, int empty);

/* We framed a DATA frame: it explains a PING and two WINDOW_UPDATEs. */
void h2_guard_data_sent(struct h2_guard *g);

/* A stream was opened (its HEADERS arrived). */
void h2_guard_stream_open(struct h2_guard *g, double now, int32_t id);
/* The client reset stream id; response_done: our side of it had ended. */
int h2_guard_reset(struct h2_guard *g, double now, int32_t id, int response_done);
/* A stream with an exchange ended (any way). */
void h2_guard_stream_end(struct h2_guard *g, double now);

/* One decoded field of the current header block. Returns H2_ABUSE_HPACK_BOMB
 * or H2_ABUSE_NONE. h2_guard_block_size is what the block decoded to so far
 * (RFC 9113 §6.5.2: name + value + 32 per field). */
int h2_guard_field(struct h2_guard *g, size_t nlen, size_t vlen);
static inline uint64_t h2_guard_block_size(const struct h2_guard *g)
{
    return g->blk_decoded;
}

/* What broke kind's budget, with the counts, for the one log line (the
 * frame, reset and header kinds; the stalls are described by their caller). */
void h2_guard_describe(const struct h2_guard *g, int kind, char *buf, size_t cap);

/* One look at a condition that must not last (the watchdog's tick):
 * blocked: it holds now; progress: a running count of what moves when it
 * is not really stuck; need: how much must move for a period to count as
 * progress (read when a period starts). Returns 1 once it has held for
 * limit seconds with less than `need` progress; a period with enough
 * progress starts a new one. */
int h2_guard_stall(struct h2g_stall *st, double now, int blocked, uint64_t progress, uint64_t need, double limit);

#endif
