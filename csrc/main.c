/* nuncio: the command line. The process's life is control.c's. */
#include "control.h"
#include "log.h"
#include "lua_bridge.h"
#include "nuncio.h"

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
               "  -t, --test             validate the configuration, print a route summary, exit (0 valid, 1 invalid)\n"
               "      --dump-routes      with -t: print every route in evaluation order\n"
               "  -l, --log-level LEVEL  debug, info, warn or error (overrides the config)\n"
               "  -v, --version          print the version and exit\n"
               "  -h, --help             this text\n");
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"ambassador", required_argument, NULL, 'a'},
        {"lua-path", required_argument, NULL, 'L'},
        {"test", no_argument, NULL, 't'},
        {"log-level", required_argument, NULL, 'l'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"dump-routes", no_argument, NULL, 'R'},
        {NULL, 0, NULL, 0},
    };
    const char *amb[MAX_PATHS], *lpath[MAX_PATHS];
    struct lua_bridge_opts o = {.ambassador = amb, .lua_path = lpath};
    int validate_only = 0, dump_routes = 0, cli_level = -1, opt;
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
        case 'R':
            dump_routes = 1;
            break;
        case 'l':
            cli_level = nu_log_parse_level(optarg);
            if (cli_level < 0) {
                fprintf(stderr, "nuncio: unknown log level '%s' (debug, info, warn, error)\n", optarg);
                return 2;
            }
            nu_log_level = cli_level;
            nu_log_level_locked = 1;
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
    if (validate_only || dump_routes)
        return control_check(&o, dump_routes);
    return control_run(&o);
}
