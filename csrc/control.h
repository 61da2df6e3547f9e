/* The control thread: signals, configuration checks and reloads (SIGHUP and
 * inotify), graceful drain, the workers' lives, and the admin listener with
 * everything it reports (metrics gathered from the workers by message). It
 * runs no request of the data path. */
#ifndef NUNCIO_CONTROL_H
#define NUNCIO_CONTROL_H

#include <ev.h>
#include <stdint.h>

#include "config.h"
#include "stats.h"
#include "worker.h"

struct lua_bridge_opts;
struct access_log;

/* What a worker sends back for a snapshot request (MAIL_SNAPSHOT_DONE's ptr). */
struct worker_report {
    struct stats_snap *snap; /* NULL when the worker had no memory for it */
    struct stats_gauges gauges;
};

/* One gathering of every worker's report (for /metrics, /stats, diag). */
struct scrape {
    struct scrape *next;
    struct control *ctl;
    int waiting; /* reports still to come */
    int n;
    struct worker_report **reports;  /* per worker; NULL when it has not answered */
    void (*done)(struct scrape *sc); /* called once, on the control thread; then the scrape is freed */
    void *arg;
    ev_timer timeout;
};

struct control {
    struct worker cw;    /* the control thread's loop; admin connections live here */
    struct lua_State *L; /* checks configurations and renders diagnostics */
    const struct lua_bridge_opts *opts;
    struct worker *workers;
    int n_workers;
    struct nu_config cfg;    /* the last configuration that passed checks */
    struct access_log *alog; /* the access log the current generation writes */
    uint64_t generation;     /* the newest generation handed to the workers */
    uint64_t serving;        /* the newest one every worker took (what metrics and diag report) */
    uint64_t reloads_ok, reloads_failed;
    double started, last_reload_ok; /* unix seconds */
    int ready;                      /* every worker serves a generation */
    int draining;
    int starting;       /* MAIL_STARTED replies awaited */
    int reload_waiting; /* MAIL_RELOADED replies awaited */
    int reload_all_ok;
    int reload_again; /* another change arrived while a reload was under way */
    int exited;       /* workers whose loop ended */
    int exit_code;
    ev_signal sighup, sigterm, sigint, sigquit, sigusr1;
    ev_timer debounce, deadline;
    ev_io inotify_io;
    int inotify_fd;
    struct scrape *scrapes;
};

/* Runs nuncio: checks the configuration, starts the workers, serves until
 * drained or stopped. Returns the process exit status. */
int control_run(const struct lua_bridge_opts *opts);
/* nuncio -t: check, print what would run, exit status. */
int control_check(const struct lua_bridge_opts *opts, int dump_routes);
/* Asks every worker for a report; done(sc) runs when all answered (or after
 * a second, with the ones that did). */
int control_scrape(struct control *ctl, void (*done)(struct scrape *sc), void *arg);
/* Renders diagnostics through the control Lua state: *status, *ctype and
 * body (appended) for the query string q (may be NULL). */
int control_diag(struct control *ctl, struct scrape *sc, const char *query, int peer_local, int *status,
                 const char **ctype, struct buf *body);

#endif
