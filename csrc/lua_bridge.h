/* The per-worker Lua VM: loads the bundled runtime, runs filter phases in
 * coroutines (pooled: a finished one runs the next phase), reports filter
 * errors. C enters Lua only here. */
#ifndef NUNCIO_LUA_BRIDGE_H
#define NUNCIO_LUA_BRIDGE_H

struct lua_State;
struct worker;
struct stream;
struct nu_config;

enum lb_phase {
    LB_PHASE_REQUEST_HEADERS = 0,
    LB_PHASE_RESPONSE_HEADERS = 1,
    LB_PHASE_RESPONSE_TRAILERS = 2,
    LB_PHASE_LOG = 3,
    LB_PHASE_COUNT,
};

enum lb_result {
    LB_CONTINUE = 0,
    LB_REPLIED = 1, /* a filter made a local reply */
    LB_YIELDED = 2, /* a filter waits (for a body); lua_bridge_resume continues it */
};

struct lua_bridge_opts {
    const char *config_path;       /* native config, may be NULL */
    const char *const *ambassador; /* Ambassador resource paths */
    int n_ambassador;
    const char *const *lua_path; /* directories searched before the bundled modules */
    int n_lua_path;
};

/* A new VM with the bundled modules on its path. NULL on failure (logged). */
struct lua_State *lua_bridge_new(const struct lua_bridge_opts *o);
enum lb_load_mode {
    LB_LOAD_VALIDATE = 0,    /* check and remember for diagnostics (the control thread) */
    LB_LOAD_STAGE = 1,       /* build the chain; lua_bridge_commit installs it */
    LB_LOAD_STAGE_QUIET = 2, /* the same without logging warnings (workers: control logged them) */
};
/* Loads and validates the configuration, logs its errors (and warnings unless
 * quiet), fills cfg. Staged chains wait for commit or discard. */
int lua_bridge_load_config(struct lua_State *L, const struct lua_bridge_opts *o, struct nu_config *cfg, int mode);
/* Installs the staged chain for new exchanges; fills which phases it acts in. */
void lua_bridge_commit(struct lua_State *L, unsigned char wants[LB_PHASE_COUNT]);
void lua_bridge_discard(struct lua_State *L);
/* Runs one phase of the chain for st. Returns an lb_result, or NU_ERR_LUA
 * after logging the filter's error (the caller replies 500). */
int lua_bridge_run(struct worker *w, struct stream *st, int phase);
/* Continues the phase whose coroutine yielded; same results as lua_bridge_run. */
int lua_bridge_resume(struct worker *w, struct stream *st);
/* Drops a yielded coroutine that will never be resumed (the exchange ended,
 * or the body it waits for will not come); runtime.abandon lets go of the
 * stream's Lua object when no later phase would. Calls into Lua. */
void lua_bridge_release(struct worker *w, struct stream *st);
void lua_bridge_close(struct lua_State *L);

#endif
