/* libFuzzer harness: the YAML loader (csrc/yaml.c, nuncio.yaml: libyaml
 * events to Lua tables with line numbers, anchors, aliases, merge keys, the
 * YAML 1.1 scalar types). Each input gets a fresh LuaJIT state: load(text,
 * "fuzz.yaml") runs in a pcall; its result is walked (each table once, aliases
 * and cycles included) asking line() for every table and key, as the config
 * checkers do. load must answer either the documents or nil and a message
 * that starts with the file name; it must never raise. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_nuncio_yaml(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_ASSERT(cond)                                                                                                \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond);                          \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

/* Stack: ... module(mod) seen(seen) value(top). Walks the value at the top. */
static void walk(lua_State *L, int mod, int seen, int depth)
{
    int v = lua_gettop(L);
    if (lua_type(L, v) != LUA_TTABLE || depth > 2000)
        return;
    lua_pushvalue(L, v);
    lua_rawget(L, seen);
    int was = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (was)
        return;
    lua_pushvalue(L, v);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    FZ_ASSERT(lua_checkstack(L, 8));

    lua_getfield(L, mod, "line");
    lua_pushvalue(L, v);
    lua_call(L, 1, 1);
    FZ_ASSERT(lua_isnil(L, -1) || lua_type(L, -1) == LUA_TNUMBER);
    lua_pop(L, 1);

    lua_pushnil(L);
    while (lua_next(L, v)) {
        /* key at -2, value at -1 */
        int kt = lua_type(L, -2);
        FZ_ASSERT(kt == LUA_TSTRING || kt == LUA_TNUMBER || kt == LUA_TBOOLEAN || kt == LUA_TTABLE ||
                  kt == LUA_TLIGHTUSERDATA);
        lua_getfield(L, mod, "line");
        lua_pushvalue(L, v);
        lua_pushvalue(L, -4);
        lua_call(L, 2, 1);
        FZ_ASSERT(lua_isnil(L, -1) || lua_type(L, -1) == LUA_TNUMBER);
        lua_pop(L, 1);
        walk(L, mod, seen, depth + 1); /* the value */
        lua_settop(L, v + 1);          /* back to the key */
    }
}

static int run(lua_State *L)
{
    size_t n;
    const char *text = lua_tolstring(L, 1, &n);
    lua_pushcfunction(L, luaopen_nuncio_yaml);
    lua_call(L, 0, 1);
    int mod = lua_gettop(L);
    lua_getfield(L, mod, "load");
    lua_pushlstring(L, text, n);
    lua_pushliteral(L, "fuzz.yaml");
    lua_call(L, 2, 2); /* load raising is a bug: run's pcall reports it */
    if (lua_isnil(L, -2)) {
        size_t ml;
        const char *msg = lua_tolstring(L, -1, &ml);
        FZ_ASSERT(msg && ml >= 9 && memcmp(msg, "fuzz.yaml", 9) == 0);
        return 0;
    }
    FZ_ASSERT(lua_type(L, -2) == LUA_TTABLE);
    lua_pop(L, 1);
    int docs = lua_gettop(L);
    lua_newtable(L);
    int seen = lua_gettop(L);
    lua_pushvalue(L, docs);
    walk(L, mod, seen, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    lua_State *L = luaL_newstate();
    FZ_ASSERT(L);
    lua_pushcfunction(L, run);
    lua_pushlstring(L, (const char *)data, size);
    int rc = lua_pcall(L, 1, 0, 0);
    if (rc != 0) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "nuncio.yaml raised: %s\n", msg ? msg : "?");
        /* out of memory is the one raise load may let through; LuaJIT's heap is large */
        abort();
    }
    lua_close(L);
    return 0;
}
