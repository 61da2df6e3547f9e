/* nuncio: command line, signals, and the worker's life. No protocol code. */
#include "config.h"
#include "log.h"
#include "lua_bridge.h"
#include "nuncio.h"
#include "tls.h"
#include "worker.h"

#include <ev.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PATHS 64

static void usage(FILE *f)
{
    fprintf(f, "usage: nuncio [-c FILE] [--ambassador PATH]... [options]\n"
               "\n"
               "An edge proxy for gRPC and HTTP with LuaJIT filters, configured with\n"
               "Ambassador/Emissary resources (Mapping, Host, Listener, TLSContext, Module).\n"
               "\n"
               "  -c, --config FILE      native configuration (e.g. conf/nuncio.yaml)\n"
               "  -a, --ambassador PATH  Ambassador resources: a YAML file or a folder (repeatable)\n"
               "  -L, --lua-path DIR     search DIR for Lua modules and filters first (repeatable)\n"
               "  -t, --test             validate the configuration and exit (0 valid, 1 invalid)\n"
               "  -l, --log-level LEVEL  debug, info, warn or error (overrides the config)\n"
               "  -v, --version          print the version and exit\n"
               "  -h, --help             this text\n");
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *s, int revents)
{
    nu_log(NU_LOG_INFO, "signal %d: shutting down", s->signum);
    ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},   {"ambassador", required_argument, NULL, 'a'},
        {"lua-path", required_argument, NULL, 'L'}, {"test", no_argument, NULL, 't'},
        {"log-level", required_argument, NULL, 'l'}, {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    const char *amb[MAX_PATHS], *lpath[MAX_PATHS];
    struct lua_bridge_opts o = {.ambassador = amb, .lua_path = lpath};
    int validate_only = 0, cli_level = -1, opt;
    while ((opt = getopt_long(argc, argv, "c:a:L:tl:vh", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            o.config_path = optarg;
            break;
        case 'a':
        case 'L':
            if ((opt == 'a' ? o.n_ambassador : o.n_lua_path) >= MAX_PATHS) {
                fprintf(stderr, "nuncio: at most %d paths for --%s\n", MAX_PATHS,
                        opt == 'a' ? "ambassador" : "lua-path");
                return 2;
            }
            if (opt == 'a')
                amb[o.n_ambassador++] = optarg;
            else
                lpath[o.n_lua_path++] = optarg;
            break;
        case 't':
            validate_only = 1;
            break;
        case 'l':
            cli_level = nu_log_parse_level(optarg);
            if (cli_level < 0) {
                fprintf(stderr, "nuncio: unknown log level '%s' (debug, info, warn, error)\n", optarg);
                return 2;
            }
            nu_log_level = cli_level;
            break;
        case 'v':
            printf("nuncio %s\n", NUNCIO_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nuncio: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!o.config_path && o.n_ambassador == 0) {
        fprintf(stderr, "nuncio: no configuration: give -c FILE and/or --ambassador PATH\n");
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    struct lua_State *L = lua_bridge_new(&o);
    if (!L)
        return 1;
    struct nu_config cfg;
    if (lua_bridge_load_config(L, &o, &cfg, validate_only) != NU_OK) {
        fprintf(stderr, "nuncio: the configuration is invalid (errors above)\n");
        lua_bridge_close(L);
        return 1;
    }
    char tls_err[512];
    if (tls_config_check(&cfg, tls_err, sizeof tls_err) != NU_OK) {
        nu_log(NU_LOG_ERROR, "config error: %s", tls_err);
        fprintf(stderr, "nuncio: the configuration is invalid (errors above)\n");
        config_free(&cfg);
        lua_bridge_close(L);
        return 1;
    }
    if (validate_only) {
        printf("nuncio: configuration OK (%zu listener(s), %zu cluster(s))\n", cfg.n_listeners, cfg.n_clusters);
        config_free(&cfg);
        lua_bridge_close(L);
        return 0;
    }
    if (cli_level < 0)
        nu_log_level = cfg.log_level;
    if (cfg.workers > 1)
        nu_log(NU_LOG_WARN, "workers: %d requested; this release runs a single worker", cfg.workers);

    struct ev_loop *loop = ev_default_loop(0);
    struct worker w;
    worker_init(&w, loop, &cfg);
    lua_bridge_attach(&w, L);
    int rc = worker_start(&w);
    if (rc != NU_OK) {
        nu_log(NU_LOG_ERROR, "cannot start: %s", nu_strerror(rc));
    } else {
        nu_log(NU_LOG_INFO, "nuncio %s ready", NUNCIO_VERSION);
        ev_signal sigint, sigterm;
        ev_signal_init(&sigint, on_stop_signal, SIGINT);
        ev_signal_init(&sigterm, on_stop_signal, SIGTERM);
        ev_signal_start(loop, &sigint);
        ev_signal_start(loop, &sigterm);
        ev_run(loop, 0);
        ev_signal_stop(loop, &sigint);
        ev_signal_stop(loop, &sigterm);
    }
    worker_stop(&w);
    worker_destroy(&w);
    lua_bridge_close(L);
    config_free(&cfg);
    ev_loop_destroy(loop);
    nu_log(NU_LOG_INFO, "stopped");
    return rc == NU_OK ? 0 : 1;
}
