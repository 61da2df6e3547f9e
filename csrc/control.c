#include "control.h"
#include "access_log.h"
#include "admin.h"
#include "buf.h"
#include "listener.h"
#include "log.h"
#include "lua_bridge.h"
#include "nuncio.h"
#include "tls.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 64
#define DEBOUNCE_S 0.3 /* editors write a file in several steps: reload once they are done */
#define SCRAPE_TIMEOUT_S 1.0

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* workers: auto is the CPUs this process may run on: its affinity mask
 * (taskset, a container's cpuset) and a cgroup v2 CPU quota, whichever is
 * less; a container limited to 2 CPUs on a 64-core node gets 2 workers. */
static int resolve_workers(int n)
{
    if (n > 0)
        return n > MAX_WORKERS ? MAX_WORKERS : n;
    cpu_set_t set;
    long cores = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : sysconf(_SC_NPROCESSORS_ONLN);
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "r");
    if (f) {
        long long quota, period;
        if (fscanf(f, "%lld %lld", &quota, &period) == 2 && quota > 0 && period > 0) {
            long limit = (long)((quota + period - 1) / period);
            if (limit < cores)
                cores = limit;
        }
        fclose(f);
    }
    return cores < 1 ? 1 : cores > MAX_WORKERS ? MAX_WORKERS : (int)cores;
}

/* Calls runtime.<fn>(s) in the control state, ignoring results. */
static void runtime_call(lua_State *L, const char *fn, const char *arg)
{
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "nuncio.runtime");
    lua_getfield(L, -1, fn);
    if (lua_isfunction(L, -1)) {
        lua_pushstring(L, arg);
        if (lua_pcall(L, 1, 0, 0) != 0)
            nu_log(NU_LOG_ERROR, "runtime.%s: %s", fn, lua_tostring(L, -1));
    }
    lua_settop(L, top);
}

/* The configuration as the control state reads it now, checked as far as the
 * workers would (TLS material included) without opening anything. */
static int check_config(struct control *ctl, struct nu_config *cfg)
{
    if (lua_bridge_load_config(ctl->L, ctl->opts, cfg, LB_LOAD_VALIDATE) != NU_OK)
        return NU_ERR_CONFIG;
    char err[512];
    if (tls_config_check(cfg, err, sizeof err) != NU_OK) {
        nu_log(NU_LOG_ERROR, "config error: %s", err);
        runtime_call(ctl->L, "reject", err); /* diagnostics show it with the others */
        config_free(cfg);
        return NU_ERR_CONFIG;
    }
    return NU_OK;
}

static int same_str(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int same_access_log(const struct nu_access_log_cfg *a, const struct nu_access_log_cfg *b)
{
    if (a->enabled != b->enabled || a->json != b->json || !same_str(a->path, b->path) ||
        !same_str(a->format, b->format) || a->n_json != b->n_json)
        return 0;
    for (size_t i = 0; i < a->n_json; i++)
        if (!same_str(a->json_keys[i], b->json_keys[i]) || !same_str(a->json_fmts[i], b->json_fmts[i]))
            return 0;
    return 1;
}

/* ------------------------------------------------------------ file watching */

static void watch_dir(struct control *ctl, const char *dir, int depth)
{
    uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB;
    if (inotify_add_watch(ctl->inotify_fd, dir, mask) < 0) {
        nu_log(NU_LOG_WARN, "cannot watch %s for changes: %s (SIGHUP still reloads)", dir, strerror(errno));
        return;
    }
    if (depth <= 0)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') /* also Kubernetes' ..data: the parent's watch sees it swapped */
            continue;
        char sub[4096];
        struct stat st;
        if (snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) >= (int)sizeof sub)
            continue;
        if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            watch_dir(ctl, sub, depth - 1);
    }
    closedir(d);
}

static void watch_path(struct control *ctl, const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        watch_dir(ctl, path, 8);
        return;
    }
    /* A file: watch its folder, since editors and ConfigMaps replace files
     * (rename over them) rather than write in place. */
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    watch_dir(ctl, dir, 0);
}

/* Does a change to this name in a watched folder matter? Configuration,
 * certificates, Lua, and Kubernetes' ..data swap; not logs or editor swap files. */
static int relevant(const char *name)
{
    static const char *const ext[] = {".yaml", ".yml", ".lua", ".crt", ".key", ".pem", ".json"};
    if (strcmp(name, "..data") == 0)
        return 1;
    size_t n = strlen(name);
    for (size_t i = 0; i < NU_ARRAY_LEN(ext); i++) {
        size_t k = strlen(ext[i]);
        if (n > k && strcmp(name + n - k, ext[i]) == 0)
            return 1;
    }
    return 0;
}

/* Reads what fd has queued; a relevant change (re)starts the debounce timer. */
static void read_events(struct control *ctl, int fd)
{
    struct ev_loop *loop = ctl->cw.loop;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    int hit = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->len && relevant(ev->name))
                hit = 1;
            if (ev->mask & IN_Q_OVERFLOW)
                hit = 1;
            p += sizeof *ev + ev->len;
        }
    }
    if (hit && !ctl->draining) {
        ev_timer_stop(loop, &ctl->debounce);
        ev_timer_set(&ctl->debounce, DEBOUNCE_S, 0.);
        ev_timer_start(loop, &ctl->debounce);
    }
}

static void on_inotify(struct ev_loop *loop, ev_io *io, int revents)
{
    struct control *ctl = nu_container_of(io, struct control, inotify_io);
    read_events(ctl, ctl->inotify_fd);
}

/* Watches every path the configuration came from (fresh watches each time:
 * a reload may name other files). The new watches exist before the old ones
 * go, and what the old ones caught meanwhile is read first: a file changed
 * during a reload still triggers the next one. */
static void rewatch(struct control *ctl)
{
    int old = ctl->inotify_fd;
    ctl->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ctl->inotify_fd < 0) {
        nu_log(NU_LOG_WARN, "inotify: %s: files are not watched (SIGHUP reloads)", strerror(errno));
        ctl->inotify_fd = old; /* keep what we had */
        return;
    }
    if (ctl->opts->config_path)
        watch_path(ctl, ctl->opts->config_path);
    for (int i = 0; i < ctl->opts->n_ambassador; i++)
        watch_path(ctl, ctl->opts->ambassador[i]);
    lua_State *L = ctl->L;
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "nuncio.runtime");
    lua_getfield(L, -1, "watch_list");
    if (lua_isfunction(L, -1) && lua_pcall(L, 0, 1, 0) == 0 && lua_istable(L, -1)) {
        size_t n = lua_objlen(L, -1);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, (int)i);
            if (lua_isstring(L, -1))
                watch_path(ctl, lua_tostring(L, -1));
            lua_pop(L, 1);
        }
    }
    lua_settop(L, top);
    if (old >= 0) {
        ev_io_stop(ctl->cw.loop, &ctl->inotify_io);
        read_events(ctl, old);
        close(old);
    }
    ev_io_init(&ctl->inotify_io, on_inotify, ctl->inotify_fd, EV_READ);
    ev_io_start(ctl->cw.loop, &ctl->inotify_io);
}

/* ------------------------------------------------------------ reloads */

static void post_all(struct control *ctl, const struct mail *m)
{
    for (int i = 0; i < ctl->n_workers; i++)
        worker_post(&ctl->workers[i], m);
}

static void reload(struct control *ctl, const char *why)
{
    if (ctl->draining || !ctl->ready)
        return;
    if (ctl->reload_waiting) {
        ctl->reload_again = 1; /* once this one is in, the newest files load */
        return;
    }
    ctl->reload_again = 0;
    nu_log(NU_LOG_INFO, "reload (%s): checking the configuration", why);
    struct nu_config cfg;
    if (check_config(ctl, &cfg) != NU_OK) {
        ctl->reloads_failed++;
        nu_log(NU_LOG_ERROR,
               "reload (%s) refused: the configuration is invalid (errors above); generation %llu keeps "
               "serving",
               why, (unsigned long long)ctl->serving);
        return;
    }
    if (cfg.admin_enabled != ctl->cfg.admin_enabled || cfg.admin_port != ctl->cfg.admin_port ||
        !same_str(cfg.admin_address, ctl->cfg.admin_address))
        nu_log(NU_LOG_WARN, "reload: admin listener changes take effect at the next start");
    if (resolve_workers(cfg.workers) != ctl->n_workers)
        nu_log(NU_LOG_WARN, "reload: a new number of workers takes effect at the next start");
    if (!same_access_log(&cfg.access_log, &ctl->cfg.access_log)) {
        char err[512];
        struct access_log *al = NULL;
        if (!cfg.access_log.enabled || (al = access_log_open(&cfg.access_log, err, sizeof err))) {
            if (ctl->alog)
                access_log_unref(ctl->alog);
            ctl->alog = al;
        } else {
            nu_log(NU_LOG_ERROR, "reload: access log %s: %s; the old access log is kept", cfg.access_log.path, err);
        }
    }
    config_free(&ctl->cfg);
    ctl->cfg = cfg;
    if (!nu_log_level_locked)
        nu_log_level = ctl->cfg.log_level;
    ctl->generation++;
    ctl->reload_waiting = ctl->n_workers - ctl->exited;
    ctl->reload_all_ok = 1;
    for (int i = 0; i < ctl->n_workers; i++) {
        struct mail m = {.kind = MAIL_RELOAD,
                         .worker = -1,
                         .gen = ctl->generation,
                         .alog = ctl->alog ? access_log_ref(ctl->alog) : NULL};
        if (worker_post(&ctl->workers[i], &m) != NU_OK) {
            if (m.alog)
                access_log_unref(m.alog);
            ctl->reload_waiting--;
            ctl->reload_all_ok = 0;
        }
    }
    rewatch(ctl);
}

static void on_debounce(struct ev_loop *loop, ev_timer *t, int revents)
{
    reload(nu_container_of(t, struct control, debounce), "a watched file changed");
}

/* ------------------------------------------------------------ shutdown */

static void stop_now(struct control *ctl)
{
    struct mail m = {.kind = MAIL_STOP, .worker = -1};
    post_all(ctl, &m);
}

static void on_deadline(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct control *ctl = nu_container_of(t, struct control, deadline);
    nu_log(NU_LOG_WARN, "drain_timeout (%d ms) passed: stopping now", ctl->cfg.drain_timeout_ms);
    stop_now(ctl);
}

static void on_signal(struct ev_loop *loop, ev_signal *s, int revents)
{
    struct control *ctl = s->data;
    switch (s->signum) {
    case SIGHUP:
        reload(ctl, "SIGHUP");
        return;
    case SIGUSR1:
        if (ctl->alog)
            access_log_reopen(ctl->alog);
        nu_log(NU_LOG_INFO, "SIGUSR1: access log reopened");
        return;
    case SIGQUIT:
        nu_log(NU_LOG_INFO, "SIGQUIT: stopping now");
        stop_now(ctl);
        return;
    default:
        break;
    }
    if (ctl->draining) {
        nu_log(NU_LOG_INFO, "signal %d while draining: stopping now", s->signum);
        stop_now(ctl);
        return;
    }
    ctl->draining = 1;
    nu_log(NU_LOG_INFO, "signal %d: draining (in-flight calls get up to %d ms; a second signal stops at once)",
           s->signum, ctl->cfg.drain_timeout_ms);
    struct mail m = {.kind = MAIL_DRAIN, .worker = -1};
    post_all(ctl, &m);
    ev_timer_init(&ctl->deadline, on_deadline, ctl->cfg.drain_timeout_ms / 1000.0, 0.);
    ev_timer_start(loop, &ctl->deadline);
}

/* ------------------------------------------------------------ scrapes */

static void scrape_free(struct scrape *sc)
{
    for (int i = 0; i < sc->n; i++) {
        if (sc->reports[i]) {
            stats_snap_free(sc->reports[i]->snap);
            free(sc->reports[i]);
        }
    }
    free(sc->reports);
    free(sc);
}

static void scrape_finish(struct scrape *sc)
{
    struct control *ctl = sc->ctl;
    struct scrape **pp = &ctl->scrapes;
    while (*pp && *pp != sc)
        pp = &(*pp)->next;
    if (*pp)
        *pp = sc->next;
    ev_timer_stop(ctl->cw.loop, &sc->timeout);
    sc->done(sc);
    scrape_free(sc);
}

static void on_scrape_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    struct scrape *sc = nu_container_of(t, struct scrape, timeout);
    nu_log(NU_LOG_WARN, "admin: %d worker(s) did not report within %.0f s", sc->waiting, SCRAPE_TIMEOUT_S);
    scrape_finish(sc);
}

int control_scrape(struct control *ctl, void (*done)(struct scrape *sc), void *arg)
{
    struct scrape *sc = calloc(1, sizeof *sc);
    if (!sc || !(sc->reports = calloc((size_t)ctl->n_workers + 1, sizeof *sc->reports))) {
        free(sc);
        return NU_ERR_NOMEM;
    }
    sc->ctl = ctl;
    sc->n = ctl->n_workers;
    sc->done = done;
    sc->arg = arg;
    sc->next = ctl->scrapes;
    ctl->scrapes = sc;
    ev_timer_init(&sc->timeout, on_scrape_timeout, SCRAPE_TIMEOUT_S, 0.);
    ev_timer_start(ctl->cw.loop, &sc->timeout);
    for (int i = 0; i < ctl->n_workers; i++) {
        struct mail m = {.kind = MAIL_SNAPSHOT, .worker = -1, .token = sc};
        if (ctl->exited < ctl->n_workers && worker_post(&ctl->workers[i], &m) == NU_OK)
            sc->waiting++;
    }
    if (sc->waiting == 0)
        scrape_finish(sc);
    return NU_OK;
}

static void scrape_report(struct control *ctl, struct mail *m)
{
    struct worker_report *r = m->ptr;
    struct scrape *sc = ctl->scrapes;
    while (sc && sc != m->token)
        sc = sc->next;
    if (!sc || m->worker < 0 || m->worker >= sc->n || sc->reports[m->worker]) {
        /* Late (the scrape timed out) or unasked: nobody wants it. */
        if (r) {
            stats_snap_free(r->snap);
            free(r);
        }
        return;
    }
    sc->reports[m->worker] = r;
    if (--sc->waiting == 0)
        scrape_finish(sc);
}

/* ------------------------------------------------------------ worker reports */

static void control_on_mail(struct worker *cw, struct mail *m)
{
    struct control *ctl = nu_container_of(cw, struct control, cw);
    switch (m->kind) {
    case MAIL_STARTED:
        ctl->starting--;
        if (!m->ok) {
            nu_log(NU_LOG_ERROR, "worker %d could not start: %s", m->worker, m->msg);
            ctl->exit_code = 1;
        }
        if (ctl->starting == 0) {
            if (ctl->exit_code) {
                stop_now(ctl);
            } else if (!ctl->draining) {
                ctl->ready = 1;
                ctl->serving = ctl->generation;
                ctl->last_reload_ok = unix_now();
                nu_log(NU_LOG_INFO, "nuncio %s ready: %d worker(s), generation %llu", NUNCIO_VERSION, ctl->n_workers,
                       (unsigned long long)ctl->generation);
                rewatch(ctl);
            }
        }
        break;
    case MAIL_RELOADED:
        if (!m->ok && ctl->reload_all_ok) {
            ctl->reload_all_ok = 0;
            char why[320];
            snprintf(why, sizeof why, "generation %llu refused by worker %d: %s", (unsigned long long)m->gen, m->worker,
                     m->msg);
            runtime_call(ctl->L, "reject", why); /* diagnostics show it with the config errors */
        }
        if (ctl->reload_waiting > 0 && --ctl->reload_waiting == 0) {
            if (ctl->reload_all_ok) {
                ctl->serving = ctl->generation;
                ctl->reloads_ok++;
                ctl->last_reload_ok = unix_now();
                nu_log(NU_LOG_INFO, "generation %llu serving on every worker", (unsigned long long)ctl->generation);
            } else {
                ctl->reloads_failed++;
                /* A worker that took it serves it; one that refused keeps the
                 * one before. The next reload brings them together again. */
                nu_log(NU_LOG_ERROR,
                       "generation %llu was refused by a worker (see above); generation %llu is the "
                       "last every worker serves",
                       (unsigned long long)ctl->generation, (unsigned long long)ctl->serving);
            }
            if (ctl->reload_again)
                reload(ctl, "changes during the last reload");
        }
        break;
    case MAIL_SNAPSHOT_DONE:
        scrape_report(ctl, m);
        break;
    case MAIL_EXITED:
        if (++ctl->exited == ctl->n_workers)
            ev_break(ctl->cw.loop, EVBREAK_ALL);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------ diagnostics */

static void route_stat(void *arg, const char *route, uint64_t requests, uint64_t errors_5xx, uint64_t grpc_errors,
                       double seconds_sum)
{
    lua_State *L = arg;
    lua_createtable(L, 0, 4);
    lua_pushnumber(L, (lua_Number)requests);
    lua_setfield(L, -2, "requests");
    lua_pushnumber(L, (lua_Number)errors_5xx);
    lua_setfield(L, -2, "errors_5xx");
    lua_pushnumber(L, (lua_Number)grpc_errors);
    lua_setfield(L, -2, "grpc_errors");
    lua_pushnumber(L, seconds_sum);
    lua_setfield(L, -2, "seconds_sum");
    lua_setfield(L, -2, route);
}

int control_diag(struct control *ctl, struct scrape *sc, const char *query, int peer_local, int *status,
                 const char **ctype, struct buf *body)
{
    lua_State *L = ctl->L;
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "nuncio.runtime");
    lua_getfield(L, -1, "diag");
    lua_createtable(L, 0, 12);
    lua_pushnumber(L, (lua_Number)ctl->serving);
    lua_setfield(L, -2, "generation");
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, (lua_Number)ctl->reloads_ok);
    lua_setfield(L, -2, "ok");
    lua_pushnumber(L, (lua_Number)ctl->reloads_failed);
    lua_setfield(L, -2, "failed");
    lua_setfield(L, -2, "reloads");
    lua_pushnumber(L, ctl->started);
    lua_setfield(L, -2, "started");
    lua_pushnumber(L, unix_now());
    lua_setfield(L, -2, "now");
    lua_pushnumber(L, ctl->last_reload_ok);
    lua_setfield(L, -2, "last_reload_ok");
    lua_pushstring(L, NUNCIO_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushinteger(L, ctl->n_workers);
    lua_setfield(L, -2, "workers");
    lua_pushboolean(L, ctl->ready && !ctl->draining);
    lua_setfield(L, -2, "ready");
    lua_pushboolean(L, peer_local); /* Module diagnostics.enabled false: only local clients see the page */
    lua_setfield(L, -2, "peer_local");
    lua_createtable(L, 0, 2);
    lua_pushstring(L, ctl->cfg.admin_address ? ctl->cfg.admin_address : "");
    lua_setfield(L, -2, "address");
    lua_pushinteger(L, ctl->cfg.admin_port);
    lua_setfield(L, -2, "port");
    lua_setfield(L, -2, "admin");
    lua_newtable(L);
    if (sc) {
        struct stats_snap *snaps[MAX_WORKERS];
        size_t n = 0;
        for (int i = 0; i < sc->n; i++)
            if (sc->reports[i] && sc->reports[i]->snap)
                snaps[n++] = sc->reports[i]->snap;
        stats_each_route(snaps, n, route_stat, L);
    }
    lua_setfield(L, -2, "route_stats");
    lua_pushstring(L, query ? query : "");
    int rc = NU_OK;
    if (lua_pcall(L, 2, 3, 0) != 0) {
        nu_log(NU_LOG_ERROR, "admin: diagnostics failed: %s", lua_tostring(L, -1));
        *status = 500;
        *ctype = "text/plain";
        rc = buf_append(body, "diagnostics failed (see the error log)\n", 39);
    } else {
        *status = (int)lua_tointeger(L, -3);
        *ctype = strcmp(lua_tostring(L, -2) ? lua_tostring(L, -2) : "", "application/json") == 0
                     ? "application/json"
                     : "text/html; charset=utf-8";
        size_t len = 0;
        const char *s = lua_tolstring(L, -1, &len);
        rc = s ? buf_append(body, s, len) : NU_OK;
    }
    lua_settop(L, top);
    return rc;
}

/* ------------------------------------------------------------ run */

static void signals_start(struct control *ctl)
{
    struct {
        ev_signal *w;
        int sig;
    } sigs[] = {{&ctl->sighup, SIGHUP},
                {&ctl->sigterm, SIGTERM},
                {&ctl->sigint, SIGINT},
                {&ctl->sigquit, SIGQUIT},
                {&ctl->sigusr1, SIGUSR1}};
    for (size_t i = 0; i < NU_ARRAY_LEN(sigs); i++) {
        ev_signal_init(sigs[i].w, on_signal, sigs[i].sig);
        sigs[i].w->data = ctl;
        ev_signal_start(ctl->cw.loop, sigs[i].w);
        ev_unref(ctl->cw.loop); /* signals alone do not keep the loop running */
    }
}

static void signals_stop(struct control *ctl)
{
    ev_signal *sigs[] = {&ctl->sighup, &ctl->sigterm, &ctl->sigint, &ctl->sigquit, &ctl->sigusr1};
    for (size_t i = 0; i < NU_ARRAY_LEN(sigs); i++) {
        ev_ref(ctl->cw.loop);
        ev_signal_stop(ctl->cw.loop, sigs[i]);
    }
}

int control_run(const struct lua_bridge_opts *opts)
{
    static struct control ctl; /* one per process; signal watchers point into it */
    memset(&ctl, 0, sizeof ctl);
    ctl.opts = opts;
    ctl.inotify_fd = -1;
    ctl.started = unix_now();
    ctl.L = lua_bridge_new(opts);
    if (!ctl.L)
        return 1;
    if (check_config(&ctl, &ctl.cfg) != NU_OK) {
        fprintf(stderr, "nuncio: the configuration is invalid (errors above)\n");
        lua_bridge_close(ctl.L);
        return 1;
    }
    if (!nu_log_level_locked)
        nu_log_level = ctl.cfg.log_level;
    char err[512];
    if (ctl.cfg.access_log.enabled && !(ctl.alog = access_log_open(&ctl.cfg.access_log, err, sizeof err))) {
        nu_log(NU_LOG_ERROR, "access log %s: %s", ctl.cfg.access_log.path, err);
        fprintf(stderr, "nuncio: cannot open the access log (see above)\n");
        config_free(&ctl.cfg);
        lua_bridge_close(ctl.L);
        return 1;
    }
    struct ev_loop *loop = ev_default_loop(0);
    worker_init(&ctl.cw, loop, -1);
    ctl.cw.on_mail = control_on_mail;
    ev_timer_init(&ctl.debounce, on_debounce, DEBOUNCE_S, 0.);
    signals_start(&ctl);
    int rc = NU_OK;
    if (ctl.cfg.admin_enabled) {
        struct listener *l =
            listener_open(&ctl.cw, "admin", ctl.cfg.admin_address, ctl.cfg.admin_port, admin_attach, &ctl, &rc);
        if (l)
            nu_log(NU_LOG_INFO,
                   "admin on %s:%d (/ready, /ambassador/v0/check_ready, /ambassador/v0/check_alive, /metrics, "
                   "/ambassador/v0/diag/, /stats)",
                   ctl.cfg.admin_address, l->port);
    }
    ctl.n_workers = resolve_workers(ctl.cfg.workers);
    ctl.workers = calloc((size_t)ctl.n_workers, sizeof *ctl.workers);
    if (rc == NU_OK && !ctl.workers)
        rc = NU_ERR_NOMEM;
    ctl.generation = 1;
    int spawned = 0;
    for (int i = 0; rc == NU_OK && i < ctl.n_workers; i++) {
        rc = worker_spawn(&ctl.workers[i], i, &ctl.cw, opts, ctl.generation, ctl.alog);
        if (rc == NU_OK)
            spawned++;
    }
    ctl.starting = spawned;
    if (rc != NU_OK) {
        nu_log(NU_LOG_ERROR, "cannot start: %s", nu_strerror(rc));
        ctl.exit_code = 1;
        if (spawned)
            stop_now(&ctl);
    }
    ctl.n_workers = spawned; /* only those report back */
    if (spawned)
        ev_run(loop, 0);
    for (int i = 0; i < spawned; i++)
        pthread_join(ctl.workers[i].thread, NULL);
    ev_timer_stop(loop, &ctl.debounce);
    ev_timer_stop(loop, &ctl.deadline);
    if (ctl.inotify_fd >= 0) {
        ev_io_stop(loop, &ctl.inotify_io);
        close(ctl.inotify_fd);
    }
    while (ctl.scrapes)
        scrape_finish(ctl.scrapes);
    worker_stop(&ctl.cw); /* the admin listener and its connections */
    signals_stop(&ctl);
    worker_destroy(&ctl.cw);
    free(ctl.workers);
    if (ctl.alog)
        access_log_close(ctl.alog); /* waits for the last lines to reach the file */
    lua_bridge_close(ctl.L);
    config_free(&ctl.cfg);
    ev_loop_destroy(loop);
    nu_log(NU_LOG_INFO, "stopped");
    return ctl.exit_code;
}

int control_check(const struct lua_bridge_opts *opts, int dump_routes)
{
    struct control ctl;
    memset(&ctl, 0, sizeof ctl);
    ctl.opts = opts;
    ctl.L = lua_bridge_new(opts);
    if (!ctl.L)
        return 1;
    int rc = check_config(&ctl, &ctl.cfg);
    char err[512];
    if (rc == NU_OK && ctl.cfg.access_log.enabled) {
        struct access_log *al = access_log_open(&ctl.cfg.access_log, err, sizeof err);
        if (!al) {
            nu_log(NU_LOG_ERROR, "config error: access log %s: %s", ctl.cfg.access_log.path, err);
            rc = NU_ERR_CONFIG;
        } else {
            access_log_unref(al);
        }
    }
    if (rc != NU_OK) {
        fprintf(stderr, "nuncio: the configuration is invalid (errors above)\n");
    } else {
        printf("nuncio: configuration OK (%zu listener(s), %zu cluster(s), %zu route(s), %d worker(s))\n",
               ctl.cfg.n_listeners, ctl.cfg.n_clusters, ctl.cfg.n_routes, resolve_workers(ctl.cfg.workers));
        lua_State *L = ctl.L;
        lua_getfield(L, LUA_REGISTRYINDEX, "nuncio.runtime");
        lua_getfield(L, -1, "route_summary");
        lua_pushboolean(L, dump_routes);
        if (lua_pcall(L, 1, 1, 0) == 0 && lua_isstring(L, -1))
            fputs(lua_tostring(L, -1), stdout);
        else if (!lua_isstring(L, -1))
            ;
        else
            nu_log(NU_LOG_ERROR, "route summary: %s", lua_tostring(L, -1));
        lua_settop(L, 0);
        config_free(&ctl.cfg);
    }
    lua_bridge_close(ctl.L);
    return rc == NU_OK ? 0 : 1;
}
