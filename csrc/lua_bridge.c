#include "lua_bridge.h"
#include "config.h"
#include "log.h"
#include "nuncio.h"
#include "stream.h"
#include "worker.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef NUNCIO_LUA_DIR
#define NUNCIO_LUA_DIR "lua"
#endif
#ifndef NUNCIO_FILTERS_DIR
#define NUNCIO_FILTERS_DIR "filters"
#endif

int luaopen_nuncio_yaml(lua_State *L); /* yaml.c */

/* Registry keys of the runtime's phase functions, filled at load. */
static const char *const phase_fn[LB_PHASE_COUNT] = {"request_headers", "response_headers", "response_trailers", "log"};
static const char RUNTIME_KEY[] = "nuncio.runtime";

static int append_dir(luaL_Buffer *b, const char *dir)
{
    luaL_addstring(b, dir);
    luaL_addstring(b, "/?.lua;");
    luaL_addstring(b, dir);
    luaL_addstring(b, "/?/init.lua;");
    return 0;
}

/* Per-VM state of the request path, kept in a userdata the registry anchors
 * (at the address of VM_KEY) so every VM, one per worker, has its own. */
#define LB_POOL_MAX 64 /* idle phase coroutines kept; more only while many wait */
struct lb_vm {
    lua_State *L;
    int phase_ref[LB_PHASE_COUNT]; /* registry refs of the runtime's phase functions */
    int n_idle;
    lua_State *idle[LB_POOL_MAX]; /* finished coroutines, ready for another phase */
    int idle_ref[LB_POOL_MAX];    /* their registry refs (what keeps them alive) */
};
static const char VM_KEY = 0;

/* The last VM looked up, per thread: the registry lookup costs a hash probe
 * per phase otherwise. */
static _Thread_local struct lb_vm *last_vm;

static struct lb_vm *vm_of(lua_State *L)
{
    struct lb_vm *vm = last_vm;
    if (vm && vm->L == L)
        return vm;
    lua_pushlightuserdata(L, (void *)&VM_KEY);
    lua_rawget(L, LUA_REGISTRYINDEX);
    vm = lua_touserdata(L, -1);
    lua_pop(L, 1);
    last_vm = vm;
    return vm;
}

/* Under lua_cpcall: allocations may raise. */
static int vm_create(lua_State *L)
{
    struct lb_vm *vm = lua_newuserdata(L, sizeof *vm);
    memset(vm, 0, sizeof *vm);
    vm->L = L;
    lua_pushlightuserdata(L, (void *)&VM_KEY);
    lua_insert(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_getfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
    for (int p = 0; p < LB_PHASE_COUNT; p++) {
        lua_getfield(L, -1, phase_fn[p]);
        if (!lua_isfunction(L, -1))
            return luaL_error(L, "nuncio.runtime has no %s function", phase_fn[p]);
        vm->phase_ref[p] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

struct lua_State *lua_bridge_new(const struct lua_bridge_opts *o)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        nu_log(NU_LOG_ERROR, "cannot create a Lua state: out of memory");
        return NULL;
    }
    luaL_openlibs(L);
    /* Search order: --lua-path dirs, $NUNCIO_LUA_PATH, then the bundled
     * modules and filters; a user module with a bundled name wins. */
    const char *lua_dir = getenv("NUNCIO_LUA_DIR");
    if (!lua_dir || !*lua_dir)
        lua_dir = NUNCIO_LUA_DIR;
    const char *filters_dir = getenv("NUNCIO_FILTERS_DIR");
    if (!filters_dir || !*filters_dir)
        filters_dir = NUNCIO_FILTERS_DIR;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    /* The buffer owns the stack top until pushresult: add the old path last via addvalue. */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; i < o->n_lua_path; i++)
        append_dir(&b, o->lua_path[i]);
    const char *envp = getenv("NUNCIO_LUA_PATH");
    if (envp && *envp) {
        luaL_addstring(&b, envp);
        luaL_addstring(&b, ";");
    }
    append_dir(&b, lua_dir);
    append_dir(&b, filters_dir);
    luaL_pushresult(&b);
    lua_insert(L, -2);
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_nuncio_yaml);
    lua_setfield(L, -2, "nuncio.yaml");
    lua_pop(L, 2);

    lua_getglobal(L, "require");
    lua_pushstring(L, RUNTIME_KEY);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        nu_log(NU_LOG_ERROR, "cannot load the Lua runtime: %s", lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    lua_setfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
    if (lua_cpcall(L, vm_create, NULL) != 0) {
        nu_log(NU_LOG_ERROR, "cannot set up the Lua runtime: %s", lua_tostring(L, -1));
        lua_close(L);
        return NULL;
    }
    return L;
}

static void push_string_list(lua_State *L, const char *const *v, int n)
{
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushstring(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static void log_list(lua_State *L, int idx, int level, const char *what)
{
    if (!lua_istable(L, idx))
        return;
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        nu_log(level, "%s%s", what, lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
        lua_pop(L, 1);
    }
}

int lua_bridge_load_config(struct lua_State *L, const struct lua_bridge_opts *o, struct nu_config *cfg, int mode)
{
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
    lua_getfield(L, -1, "configure");
    lua_createtable(L, 0, 4);
    if (o->config_path) {
        lua_pushstring(L, o->config_path);
        lua_setfield(L, -2, "config");
    }
    push_string_list(L, o->ambassador, o->n_ambassador);
    lua_setfield(L, -2, "ambassador");
    lua_pushboolean(L, mode == LB_LOAD_VALIDATE);
    lua_setfield(L, -2, "validate_only");
    lua_pushboolean(L, mode == LB_LOAD_STAGE || mode == LB_LOAD_STAGE_QUIET);
    lua_setfield(L, -2, "stage");
    if (lua_pcall(L, 1, 3, 0) != 0) {
        nu_log(NU_LOG_ERROR, "configuration: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        return NU_ERR_CONFIG;
    }
    int model = top + 2, errs = top + 3, warns = top + 4;
    /* Workers load what the control thread already checked and reported. */
    int quiet = mode == LB_LOAD_STAGE_QUIET;
    if (!quiet)
        log_list(L, warns, NU_LOG_WARN, "config: ");
    if (lua_isnil(L, model)) {
        log_list(L, errs, NU_LOG_ERROR, "config error: ");
        lua_settop(L, top);
        return NU_ERR_CONFIG;
    }
    char err[512];
    int rc = config_from_lua(L, model, cfg, err, sizeof err);
    if (rc != NU_OK)
        nu_log(NU_LOG_ERROR, "config error: %s", err);
    lua_settop(L, top);
    return rc;
}

static void call_runtime(lua_State *L, const char *fn)
{
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
    lua_getfield(L, -1, fn);
    if (lua_pcall(L, 0, 0, 0) != 0)
        nu_log(NU_LOG_ERROR, "runtime.%s: %s", fn, lua_tostring(L, -1));
    lua_settop(L, top);
}

void lua_bridge_commit(struct lua_State *L, unsigned char wants[LB_PHASE_COUNT])
{
    call_runtime(L, "commit");
    lua_getfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
    lua_getfield(L, -1, "wants");
    for (int p = 0; p < LB_PHASE_COUNT; p++) {
        lua_getfield(L, -1, phase_fn[p]);
        wants[p] = (unsigned char)lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 2);
}

void lua_bridge_discard(struct lua_State *L)
{
    call_runtime(L, "discard");
}

/* Turns a finished (or yielded) phase into an lb_result, logging filter errors
 * with the stream in the line. Results sit at co's stack from base + 1. */
static int phase_result(struct stream *st, lua_State *co, int rc, int base)
{
    const char *err = NULL;
    int result = LB_CONTINUE;
    if (rc == LUA_YIELD)
        return LB_YIELDED;
    if (rc != 0) {
        err = lua_tostring(co, -1);
    } else {
        int code = (int)lua_tointeger(co, base + 1);
        if (code < 0)
            err = lua_tostring(co, base + 2);
        else if (code == LB_REPLIED)
            result = LB_REPLIED;
    }
    if (err || rc != 0) {
        nu_log(NU_LOG_ERROR, "[c%llu s%llu] %s", (unsigned long long)st->conn_id, (unsigned long long)st->id,
               err ? err : "filter error");
        result = NU_ERR_LUA;
    }
    return result;
}

struct new_co {
    lua_State *co;
    int ref;
};

/* Under lua_cpcall: lua_newthread and luaL_ref raise when out of memory. */
static int new_coroutine(lua_State *L)
{
    struct new_co *nc = lua_touserdata(L, 1);
    nc->co = lua_newthread(L);
    nc->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* pops it */
    return 0;
}

/* A coroutine for one phase run: an idle one from the pool, else a new one
 * anchored by a registry ref. NULL (and *ref 0) when out of memory. */
static lua_State *take_coroutine(struct lb_vm *vm, int *ref)
{
    if (vm->n_idle > 0) {
        vm->n_idle--;
        *ref = vm->idle_ref[vm->n_idle];
        return vm->idle[vm->n_idle];
    }
    struct new_co nc = {NULL, 0};
    if (lua_cpcall(vm->L, new_coroutine, &nc) != 0) {
        lua_pop(vm->L, 1); /* the error: out of memory */
        return NULL;
    }
    *ref = nc.ref;
    return nc.co;
}

/* A coroutine whose function returned can run the next phase (lua_resume
 * starts whatever function sits on its empty stack); one that raised is dead
 * and one that yielded is still inside a filter: those are dropped. */
static void put_coroutine(struct lb_vm *vm, lua_State *co, int ref, int rc)
{
    if (rc == 0 && vm->n_idle < LB_POOL_MAX) {
        lua_settop(co, 0);
        vm->idle[vm->n_idle] = co;
        vm->idle_ref[vm->n_idle] = ref;
        vm->n_idle++;
        return;
    }
    luaL_unref(vm->L, LUA_REGISTRYINDEX, ref);
}

/* The runtime gets the stream's address as a number, not a light userdata:
 * LuaJIT compiles ffi.cast from a number but not from a light userdata, and
 * that cast starts every phase (a user-space address fits a double exactly). */
static void push_stream(lua_State *L, struct stream *st)
{
    lua_pushnumber(L, (lua_Number)(uintptr_t)st);
}

/* Tells the runtime a phase of st will not go on (it waited and is dropped,
 * or it raised): runtime.abandon lets go of the stream's Lua object when no
 * later phase would. Runs on the main thread, never inside a phase. */
static void abandon(lua_State *L, struct stream *st)
{
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, RUNTIME_KEY);
    lua_getfield(L, -1, "abandon");
    if (lua_isfunction(L, -1)) {
        push_stream(L, st);
        if (lua_pcall(L, 1, 0, 0) != 0)
            nu_log(NU_LOG_ERROR, "[c%llu s%llu] %s", (unsigned long long)st->conn_id, (unsigned long long)st->id,
                   lua_tostring(L, -1) ? lua_tostring(L, -1) : "runtime.abandon failed");
    }
    lua_settop(L, top);
}

int lua_bridge_run(struct worker *w, struct stream *st, int phase)
{
    lua_State *L = w->L;
    struct lb_vm *vm = vm_of(L);
    int result;
    if (phase == LB_PHASE_LOG) {
        /* The log phase never waits, so it skips the coroutine. */
        int top = lua_gettop(L);
        lua_rawgeti(L, LUA_REGISTRYINDEX, vm->phase_ref[phase]);
        push_stream(L, st);
        int rc = lua_pcall(L, 1, 2, 0);
        result = phase_result(st, L, rc, top);
        lua_settop(L, top);
        return result;
    }
    /* A pooled coroutine per phase run, so a filter can wait without blocking
     * the loop; creating one per run cost more than the filters themselves. */
    int ref;
    lua_State *co = take_coroutine(vm, &ref);
    if (!co) {
        nu_log(NU_LOG_ERROR, "[c%llu s%llu] out of memory starting a filter phase", (unsigned long long)st->conn_id,
               (unsigned long long)st->id);
        return NU_ERR_LUA;
    }
    lua_rawgeti(co, LUA_REGISTRYINDEX, vm->phase_ref[phase]);
    push_stream(co, st);
    int rc = lua_resume(co, 1);
    result = phase_result(st, co, rc, 0);
    if (result == LB_YIELDED)
        st->co_ref = ref; /* keeps the coroutine alive until resumed or released */
    else
        put_coroutine(vm, co, ref, rc);
    if (rc != 0 && rc != LUA_YIELD)
        abandon(L, st); /* raised past the chain */
    return result;
}

int lua_bridge_resume(struct worker *w, struct stream *st)
{
    lua_State *L = w->L;
    int ref = st->co_ref;
    if (!ref)
        return NU_ERR_LUA;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref); /* stays on L's stack while it runs */
    lua_State *co = lua_tothread(L, -1);
    int result = NU_ERR_LUA;
    int rc = LUA_ERRRUN;
    /* Not waiting while it runs: a release from inside the phase must neither
     * drop the running coroutine nor call into Lua again. */
    st->co_ref = 0;
    if (co) {
        rc = lua_resume(co, 0);
        result = phase_result(st, co, rc, 0);
    }
    if (result == LB_YIELDED)
        st->co_ref = ref;
    else if (co)
        put_coroutine(vm_of(L), co, ref, rc);
    else
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
    lua_settop(L, top);
    if (rc != 0 && rc != LUA_YIELD)
        abandon(L, st); /* raised past the chain */
    return result;
}

/* The exchange will not resume its waiting phase: tell the runtime, then drop
 * the coroutine. */
void lua_bridge_release(struct worker *w, struct stream *st)
{
    if (!st->co_ref)
        return;
    lua_State *L = w->L;
    abandon(L, st);
    luaL_unref(L, LUA_REGISTRYINDEX, st->co_ref);
    st->co_ref = 0;
}

void lua_bridge_close(struct lua_State *L)
{
    if (!L)
        return;
    if (last_vm && last_vm->L == L)
        last_vm = NULL; /* a later VM may get this address */
    lua_close(L);
}
