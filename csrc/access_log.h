/* The access log: one line per request, in Envoy's command-operator format
 * (text) or as one JSON object per line (Module envoy_log_type / envoy_log_format
 * / envoy_log_path, or the native config's access_log key).
 *
 * Cost and blocking. Formatting happens on the worker's loop, into the worker's
 * own `struct access_log_buf`, with no lock and no allocation in steady state
 * (the batches it fills circulate between the workers and the writer). Once per
 * loop iteration the worker's sweep calls access_log_flush(), which hands the
 * filled batch to the log's writer thread under a mutex; the writer does the
 * blocking write() calls. When the writer falls more than ACCESS_LOG_MAX_QUEUED
 * bytes behind (a full disk, a pipe nobody reads), whole batches are dropped and
 * counted (access_log_dropped()); a worker never waits for the file.
 *
 * Ownership (the rule every caller follows):
 * - `struct access_log` is shared by all workers and refcounted with atomics.
 *   access_log_open() returns it with one reference (the opener's). Each holder
 *   (a worker's generation, the main thread's "current log" pointer) takes its
 *   own with access_log_ref() and drops it with access_log_unref(), from any
 *   thread. A buffer holding unflushed lines of a log also holds a reference, so
 *   a reload may swap workers to a new log while the old one drains.
 * - The last access_log_unref() never blocks: it tells the writer to write what
 *   is queued and exit; the writer closes the file and frees the log itself.
 *   access_log_close() is the same but waits (up to ~5 s) for that to happen:
 *   for the main thread at exit, so the last lines reach the file.
 * - `struct access_log_buf` belongs to one worker thread, for the worker's whole
 *   life; it is not bound to one log: access_log_write() with a different log
 *   than the buffer's pending lines hands those over first.
 *
 * Lines are always whole: a batch holds only complete lines, one writer thread
 * per log writes batches in order (partial writes are completed), and the file
 * is opened O_APPEND. A text format that does not end in "\n" gets one. */
#ifndef NUNCIO_ACCESS_LOG_H
#define NUNCIO_ACCESS_LOG_H

#include <stddef.h>
#include <stdint.h>

struct hdr_map;
struct nu_access_log_cfg;
struct access_log;
struct access_log_buf;

/* The writer may be this far behind before lines are dropped. */
#define ACCESS_LOG_MAX_QUEUED (8u << 20)

/* What one request's line is made of; the integrator fills it from the stream
 * when the stream's log phase runs. Pointers are borrowed for the duration of
 * access_log_write(): it copies what it needs. NULL or "" strings print "-"
 * (JSON: null). */
struct access_log_rec {
    double start_time;                          /* unix seconds (microsecond precision is kept) */
    const struct hdr_map *req, *resp, *trailers; /* REQ / RESP / TRAILER; any may be NULL */
    const char *protocol;                       /* "HTTP/2", "HTTP/1.1" */
    int response_code;                          /* 0: no response was sent (printed as 0, like Envoy) */
    const char *response_flags;                 /* Envoy short codes, "UF,URX"; NULL: "-" */
    const char *response_code_details;          /* e.g. "route_not_found"; NULL: "-" */
    uint64_t bytes_received, bytes_sent;        /* body bytes */
    int64_t duration_ms;                        /* start to last byte out */
    int64_t response_duration_ms;               /* start to first upstream response byte; -1: none */
    int64_t upstream_service_time_ms;           /* -1: none; else what RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)
                                                 * prints when the response has no such header */
    const char *upstream_host;                  /* "ip:port" of the endpoint used */
    const char *upstream_cluster;
    const char *upstream_local_address;
    const char *upstream_transport_failure_reason;
    const char *route_name;
    const char *downstream_remote_address;      /* "ip:port", "[v6]:port" */
    const char *downstream_local_address;
    const char *requested_server_name;          /* TLS SNI */
    int grpc_status; /* >= 0: this status; -1: derived as Envoy does (response trailers, then response
                      * headers, then the HTTP status mapped, for gRPC requests only) */
    uint64_t connection_id;
    int attempts; /* UPSTREAM_REQUEST_ATTEMPT_COUNT */
};

/* Compiles cfg's format (text, JSON or Envoy's default text format when
 * cfg->format is NULL), opens cfg->path (O_WRONLY|O_APPEND|O_CREAT|O_CLOEXEC,
 * 0644) and starts the writer thread. NULL with a message in err when the
 * format is invalid, the path cannot be opened or memory runs out: the caller
 * refuses to start or, on reload, keeps the log it has. cfg is not kept. */
struct access_log *access_log_open(const struct nu_access_log_cfg *cfg, char *err, size_t errlen);
struct access_log *access_log_ref(struct access_log *al);
void access_log_unref(struct access_log *al);
/* access_log_unref() that waits (bounded) until the queued lines are written
 * if it was the last reference. */
void access_log_close(struct access_log *al);
/* Log rotation (SIGUSR1): the writer reopens the path before its next write.
 * Cheap, any thread; if the reopen fails the old file stays in use. */
void access_log_reopen(struct access_log *al);
/* Lines dropped so far (writer behind, write errors, out of memory). */
uint64_t access_log_dropped(const struct access_log *al);
const char *access_log_path(const struct access_log *al);

/* One per worker thread. NULL on out of memory. */
struct access_log_buf *access_log_buf_new(void);
/* Hands over what is pending, then frees the buffer. */
void access_log_buf_free(struct access_log_buf *b);
/* Formats one line into b for al (NULL: no log, nothing done). 0, or
 * NU_ERR_NOMEM when the line was dropped (and counted); lines dropped later
 * because the writer is behind are counted, not reported here. Never blocks. */
int access_log_write(struct access_log_buf *b, struct access_log *al, const struct access_log_rec *r);
/* Hands b's pending lines to their log's writer; cheap when there are none.
 * Call once per loop iteration (the worker's sweep). */
void access_log_flush(struct access_log_buf *b);

#endif
