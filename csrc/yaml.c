/*
 * nuncio.yaml: libyaml events turned into Lua tables, with line numbers.
 *
 * Contract: docs/internals.md §1. The module exports load(text[, filename]),
 * line(tbl[, key]) and null.
 *
 * Memory rules. Every Lua API call that allocates may raise (out of memory),
 * and a raise is a longjmp/unwind. The libyaml parser and the current event
 * therefore belong to l_load (in a userdata anchored on its stack), and all
 * table building runs inside a lua_pcall below it: whatever happens in there,
 * control comes back to l_load, which frees the parser and the event before
 * returning. Nothing raises while a libyaml object is live outside that pcall.
 *
 * Positions are kept in a weak-keyed side table (an upvalue shared by load
 * and line) so pairs() over a loaded mapping sees only the YAML keys:
 *   lines[tbl] = info, info[0] = start line, info[-1] = true for sequences,
 *   info[key] = line of that key (mappings) or item (sequences).
 * Mapping keys are always strings, sequence indexes are >= 1, so 0 and -1
 * never collide with real entries.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <yaml.h>

/* The proxy registers this in package.preload; specs load it with package.loadlib. */
int luaopen_nuncio_yaml(lua_State *L);

/* Deeper than any real configuration; low enough that a hostile file cannot
 * exhaust the Lua stack or make later recursive walkers overflow the C stack. */
#define NU_YAML_MAX_DEPTH 256

/* The address is the identity: one sentinel for every lua_State. */
static const char nu_yaml_null_tag = 0;
#define NU_YAML_NULL ((void *)&nu_yaml_null_tag)

#define TAG_STR "tag:yaml.org,2002:str"
#define TAG_INT "tag:yaml.org,2002:int"
#define TAG_FLOAT "tag:yaml.org,2002:float"
#define TAG_BOOL "tag:yaml.org,2002:bool"
#define TAG_NULL "tag:yaml.org,2002:null"

struct frame {
    int is_map;
    int tindex;   /* stack slot of the container; its info table is at tindex + 1 */
    int have_key; /* a mapping key waits at tindex + 2 for its value */
    int key_is_merge;
    int key_line;
    int line;      /* where the container starts */
    lua_Integer n; /* items appended so far (sequences) */
};

struct load_state {
    yaml_parser_t parser;
    yaml_event_t event;
    int have_event; /* event holds memory not yet given back with yaml_event_delete */
    const char *text;
    size_t len;
    const char *filename;
    int failed;
    char err[512];
    int depth;
    struct frame frames[NU_YAML_MAX_DEPTH];
};

/* Stack slots of the protected parse: 1 state, 2 lines, 3 docs, 4 anchors. */
#define SLOT_LINES 2
#define SLOT_DOCS 3
#define SLOT_ANCHORS 4
#define SLOT_ROOT 5

static void fail_at(struct load_state *st, const yaml_mark_t *mark, const char *fmt, ...)
{
    int n;
    va_list ap;

    n = snprintf(st->err, sizeof st->err, "%s:%lu:%lu: ", st->filename, (unsigned long)mark->line + 1,
                 (unsigned long)mark->column + 1);
    if (n < 0 || (size_t)n >= sizeof st->err)
        n = 0;
    va_start(ap, fmt);
    vsnprintf(st->err + n, sizeof st->err - (size_t)n, fmt, ap);
    va_end(ap);
    st->failed = 1;
}

/* libyaml's reader reports a byte offset only; turn it into line:col so every
 * error has the same shape. */
static void offset_mark(const struct load_state *st, size_t offset, yaml_mark_t *mark)
{
    size_t i;

    memset(mark, 0, sizeof *mark);
    if (offset > st->len)
        offset = st->len;
    for (i = 0; i < offset; i++) {
        if (st->text[i] == '\n') {
            mark->line++;
            mark->column = 0;
        } else {
            mark->column++;
        }
    }
}

static void fail_parser(struct load_state *st)
{
    yaml_parser_t *p = &st->parser;
    yaml_mark_t mark;
    const char *problem = p->problem ? p->problem : "unknown YAML error";

    switch (p->error) {
    case YAML_MEMORY_ERROR:
        snprintf(st->err, sizeof st->err, "%s: out of memory while parsing YAML", st->filename);
        st->failed = 1;
        return;
    case YAML_READER_ERROR:
        offset_mark(st, p->problem_offset, &mark);
        fail_at(st, &mark, "%s", problem);
        return;
    default:
        if (p->context)
            fail_at(st, &p->problem_mark, "%s (%s at line %lu)", problem, p->context,
                    (unsigned long)p->context_mark.line + 1);
        else
            fail_at(st, &p->problem_mark, "%s", problem);
        return;
    }
}

/* ---- scalar typing: PyYAML's YAML 1.1 implicit resolvers ---------------- */

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int digit_value(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return 99;
}

static int is_one_of(const char *s, size_t n, const char *const *words)
{
    for (; *words; words++)
        if (strlen(*words) == n && memcmp(*words, s, n) == 0)
            return 1;
    return 0;
}

static const char *const null_words[] = {"~", "null", "Null", "NULL", NULL};
static const char *const true_words[] = {"yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", NULL};
static const char *const false_words[] = {"no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", NULL};

/* Digits (and '_' separators) in one base, at least one digit. */
static int parse_digits(const char *s, size_t n, int base, double *out)
{
    double v = 0;
    size_t i;
    int seen = 0;

    if (n == 0)
        return 0;
    for (i = 0; i < n; i++) {
        int d;
        if (s[i] == '_')
            continue;
        d = digit_value((unsigned char)s[i]);
        if (d >= base)
            return 0;
        v = v * base + d;
        seen = 1;
    }
    *out = v;
    return seen;
}

/* "[1-9][0-9_]*(:[0-5]?[0-9])+" with the leading part already validated by
 * the caller; PyYAML reads it as base 60. frac_ok allows a trailing
 * ".[0-9_]*" (the float form). */
static int parse_sexagesimal(const char *s, size_t n, int frac_ok, double *out)
{
    size_t i = 0, start;
    double v = 0, part;
    int groups = 0;

    start = i;
    while (i < n && (is_digit((unsigned char)s[i]) || s[i] == '_'))
        i++;
    if (i == start || !parse_digits(s + start, i - start, 10, &part))
        return 0;
    v = part;
    while (i < n && s[i] == ':') {
        i++;
        start = i;
        while (i < n && is_digit((unsigned char)s[i]))
            i++;
        if (i - start == 0 || i - start > 2 || (i - start == 2 && s[start] > '5'))
            return 0;
        parse_digits(s + start, i - start, 10, &part);
        v = v * 60 + part;
        groups++;
    }
    if (groups == 0)
        return 0;
    if (i < n) {
        char buf[64];
        size_t j, k = 0;
        if (!frac_ok || s[i] != '.')
            return 0;
        buf[k++] = '0';
        for (j = i; j < n && k < sizeof buf - 1; j++) {
            if (s[j] == '_')
                continue;
            if (j > i && !is_digit((unsigned char)s[j]))
                return 0;
            buf[k++] = s[j];
        }
        if (j < n)
            return 0;
        buf[k] = 0;
        v += strtod(buf, NULL);
    } else if (frac_ok) {
        return 0;
    }
    *out = v;
    return 1;
}

static int parse_int(const char *s, size_t n, double *out)
{
    double sign = 1, v;
    size_t i = 0;

    if (n > 0 && (s[0] == '-' || s[0] == '+')) {
        sign = s[0] == '-' ? -1 : 1;
        i = 1;
    }
    s += i;
    n -= i;
    if (n == 0 || !is_digit((unsigned char)s[0]))
        return 0;
    if (s[0] == '0') {
        if (n == 1) {
            v = 0;
        } else if (s[1] == 'b') {
            if (!parse_digits(s + 2, n - 2, 2, &v))
                return 0;
        } else if (s[1] == 'x') {
            if (!parse_digits(s + 2, n - 2, 16, &v))
                return 0;
        } else if (s[1] == 'o') {
            /* YAML 1.2 spelling; PyYAML leaves it a string, internals.md lists it as an int. */
            if (!parse_digits(s + 2, n - 2, 8, &v))
                return 0;
        } else {
            /* "0[0-7_]+": "0_" is 0, so separators alone are allowed after the 0 */
            size_t j;
            for (j = 1; j < n; j++)
                if (s[j] != '_' && (s[j] < '0' || s[j] > '7'))
                    return 0;
            if (!parse_digits(s, n, 8, &v))
                return 0;
        }
    } else {
        size_t j;
        for (j = 0; j < n && (is_digit((unsigned char)s[j]) || s[j] == '_'); j++)
            ;
        if (j == n) {
            parse_digits(s, n, 10, &v);
        } else if (s[j] == ':') {
            if (!parse_sexagesimal(s, n, 0, &v))
                return 0;
        } else {
            return 0;
        }
    }
    *out = v == 0 ? 0 : sign * v; /* "-0" is 0, not Lua's -0 */
    return 1;
}

/* Optional "[eE][-+][0-9]+" (PyYAML demands the sign: "1.0e5" stays a string). */
static int exponent_ok(const char *s, size_t n)
{
    size_t i;

    if (n == 0)
        return 1;
    if ((s[0] != 'e' && s[0] != 'E') || n < 3 || (s[1] != '+' && s[1] != '-'))
        return 0;
    for (i = 2; i < n; i++)
        if (!is_digit((unsigned char)s[i]))
            return 0;
    return 1;
}

static int parse_float(const char *s, size_t n, double *out)
{
    char buf[128];
    size_t i = 0, j, k = 0;
    int signed_ = 0;
    double sign = 1;

    if (n > 0 && (s[0] == '-' || s[0] == '+')) {
        sign = s[0] == '-' ? -1 : 1;
        signed_ = 1;
        i = 1;
    }
    if (n - i == 4 && s[i] == '.' &&
        (!memcmp(s + i + 1, "inf", 3) || !memcmp(s + i + 1, "Inf", 3) || !memcmp(s + i + 1, "INF", 3))) {
        *out = sign * HUGE_VAL;
        return 1;
    }
    if (!signed_ && n == 4 && (!memcmp(s, ".nan", 4) || !memcmp(s, ".NaN", 4) || !memcmp(s, ".NAN", 4))) {
        *out = NAN;
        return 1;
    }
    if (i < n && s[i] == '.') {
        /* ".5" is a float, "-.5" is not (PyYAML's second alternative has no sign) */
        if (signed_ || i + 1 >= n || !is_digit((unsigned char)s[i + 1]))
            return 0;
    } else {
        if (i >= n || !is_digit((unsigned char)s[i]))
            return 0;
    }
    for (j = i; j < n && (is_digit((unsigned char)s[j]) || s[j] == '_'); j++)
        ;
    if (j < n && s[j] == ':') {
        if (!parse_sexagesimal(s + i, n - i, 1, out))
            return 0;
        *out *= sign;
        return 1;
    }
    if (j >= n || s[j] != '.')
        return 0;
    for (j++; j < n && (is_digit((unsigned char)s[j]) || s[j] == '_'); j++)
        ;
    if (!exponent_ok(s + j, n - j))
        return 0;
    if (n >= sizeof buf)
        return 0;
    for (j = 0; j < n; j++)
        if (s[j] != '_')
            buf[k++] = s[j];
    buf[k] = 0;
    *out = strtod(buf, NULL);
    return 1;
}

enum scalar_kind {
    SK_AUTO = 0,
    SK_STR,
    SK_INT,
    SK_FLOAT,
    SK_BOOL,
    SK_NULL,
};

/* Pushes the Lua value of a scalar; returns 0 if an explicit tag cannot be honoured. */
static int push_scalar(lua_State *L, const yaml_event_t *ev, int *is_merge)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    enum scalar_kind kind = SK_STR;
    double num;

    *is_merge = 0;
    if (tag == NULL) {
        /* only plain scalars are typed; quoted and block scalars stay strings */
        if (ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            kind = SK_AUTO;
    } else if (!strcmp(tag, TAG_INT)) {
        kind = SK_INT;
    } else if (!strcmp(tag, TAG_FLOAT)) {
        kind = SK_FLOAT;
    } else if (!strcmp(tag, TAG_BOOL)) {
        kind = SK_BOOL;
    } else if (!strcmp(tag, TAG_NULL)) {
        kind = SK_NULL;
    } else if (strcmp(tag, TAG_STR) && strcmp(tag, "!") && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
        /* an application tag we know nothing about: read the text as if untagged */
        kind = SK_AUTO;
    }

    switch (kind) {
    case SK_STR:
        lua_pushlstring(L, s, n);
        return 1;
    case SK_NULL:
        if (n == 0 || is_one_of(s, n, null_words)) {
            lua_pushlightuserdata(L, NU_YAML_NULL);
            return 1;
        }
        return 0;
    case SK_BOOL:
        if (is_one_of(s, n, true_words) || is_one_of(s, n, false_words)) {
            lua_pushboolean(L, is_one_of(s, n, true_words));
            return 1;
        }
        return 0;
    case SK_INT:
        if (parse_int(s, n, &num)) {
            lua_pushnumber(L, num);
            return 1;
        }
        return 0;
    case SK_FLOAT:
        if (parse_float(s, n, &num) || parse_int(s, n, &num)) {
            lua_pushnumber(L, num);
            return 1;
        }
        return 0;
    case SK_AUTO:
        break;
    }

    if (n == 0 || is_one_of(s, n, null_words)) {
        lua_pushlightuserdata(L, NU_YAML_NULL);
    } else if (is_one_of(s, n, true_words)) {
        lua_pushboolean(L, 1);
    } else if (is_one_of(s, n, false_words)) {
        lua_pushboolean(L, 0);
    } else if (parse_float(s, n, &num) || parse_int(s, n, &num)) {
        /* float first, as PyYAML registers it first: "1:30.5" is a float, "1:30" an int */
        lua_pushnumber(L, num);
    } else {
        if (n == 2 && s[0] == '<' && s[1] == '<')
            *is_merge = 1;
        lua_pushlstring(L, s, n);
    }
    return 1;
}

/* ---- building tables ---------------------------------------------------- */

static void set_line(lua_State *L, int info, int line)
{
    /* key on top */
    lua_pushinteger(L, line);
    lua_rawset(L, info);
}

/* Makes the key on top of the stack a string, as the contract promises. */
static int normalize_key(lua_State *L, struct load_state *st)
{
    switch (lua_type(L, -1)) {
    case LUA_TSTRING:
        return 1;
    case LUA_TNUMBER:
        lua_tostring(L, -1); /* converts in place */
        return 1;
    case LUA_TBOOLEAN: {
        int b = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_pushstring(L, b ? "true" : "false");
        return 1;
    }
    case LUA_TLIGHTUSERDATA:
        lua_pop(L, 1);
        lua_pushliteral(L, "null");
        return 1;
    default:
        fail_at(st, &st->event.start_mark, "mapping keys must be scalars");
        return 0;
    }
}

/* YAML 1.1 merge key: copies the entries of the mapping (or list of
 * mappings) on top of the stack into the frame's mapping, without replacing
 * keys already there; later explicit keys overwrite as usual, which gives
 * PyYAML's "explicit keys win, earlier merge sources win" rule. */
static int merge_one(lua_State *L, struct load_state *st, const struct frame *f, int src)
{
    int srcinfo;

    lua_pushvalue(L, src);
    lua_rawget(L, SLOT_LINES);
    srcinfo = lua_gettop(L);
    if (!lua_istable(L, src) || !lua_istable(L, srcinfo) || (lua_rawgeti(L, srcinfo, -1), !lua_isnil(L, -1))) {
        fail_at(st, &st->event.start_mark, "merge key '<<' needs a mapping or a list of mappings");
        return 0;
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    while (lua_next(L, src)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, f->tindex);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -2);
            lua_rawset(L, f->tindex);
            lua_pushvalue(L, -2);
            lua_pushvalue(L, -1);
            lua_rawget(L, srcinfo);
            lua_rawset(L, f->tindex + 1);
        } else {
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_settop(L, srcinfo - 1);
    return 1;
}

static int merge_into(lua_State *L, struct load_state *st, const struct frame *f)
{
    int src = lua_gettop(L), ok = 1;

    if (lua_istable(L, src)) {
        lua_pushvalue(L, src);
        lua_rawget(L, SLOT_LINES);
        if (lua_istable(L, -1)) {
            lua_rawgeti(L, -1, -1);
            if (lua_toboolean(L, -1)) {
                /* a list of mappings: the first one wins, so walk it in order */
                lua_settop(L, src);
                for (int i = 1;; i++) {
                    lua_rawgeti(L, src, i);
                    if (lua_isnil(L, -1))
                        break;
                    ok = merge_one(L, st, f, lua_gettop(L));
                    lua_pop(L, 1);
                    if (!ok)
                        break;
                }
                lua_settop(L, src - 1);
                return ok;
            }
        }
        lua_settop(L, src);
    }
    ok = merge_one(L, st, f, src);
    lua_settop(L, src - 1);
    return ok;
}

/* Hands the complete value on top of the stack to its parent. */
static int attach(lua_State *L, struct load_state *st, int line, int is_merge_key)
{
    struct frame *f;

    if (st->depth == 0)
        return 1; /* the document root: stays at SLOT_ROOT until DOCUMENT-END */
    f = &st->frames[st->depth - 1];
    if (!f->is_map) {
        f->n++;
        lua_rawseti(L, f->tindex, (int)f->n);
        lua_pushinteger(L, f->n);
        set_line(L, f->tindex + 1, line);
        return 1;
    }
    if (!f->have_key) {
        if (!normalize_key(L, st))
            return 0;
        f->have_key = 1;
        f->key_is_merge = is_merge_key;
        f->key_line = line;
        return 1;
    }
    f->have_key = 0;
    if (f->key_is_merge) {
        lua_remove(L, -2); /* the "<<" key itself never reaches the table */
        return merge_into(L, st, f);
    }
    lua_pushvalue(L, -2);
    set_line(L, f->tindex + 1, f->key_line);
    lua_rawset(L, f->tindex);
    return 1;
}

static void register_anchor(lua_State *L, const yaml_char_t *anchor)
{
    if (anchor == NULL)
        return;
    lua_pushstring(L, (const char *)anchor);
    lua_pushvalue(L, -2);
    lua_rawset(L, SLOT_ANCHORS);
}

static int open_container(lua_State *L, struct load_state *st, int is_map, const yaml_char_t *anchor)
{
    struct frame *f;

    if (st->depth >= NU_YAML_MAX_DEPTH) {
        fail_at(st, &st->event.start_mark, "nesting deeper than %d levels", NU_YAML_MAX_DEPTH);
        return 0;
    }
    if (!lua_checkstack(L, 8)) {
        fail_at(st, &st->event.start_mark, "nesting too deep for the Lua stack");
        return 0;
    }
    lua_newtable(L);
    register_anchor(L, anchor);
    f = &st->frames[st->depth++];
    memset(f, 0, sizeof *f);
    f->is_map = is_map;
    f->tindex = lua_gettop(L);
    f->line = (int)st->event.start_mark.line + 1;
    /* info table, then lines[tbl] = info */
    lua_newtable(L);
    lua_pushinteger(L, f->line);
    lua_rawseti(L, -2, 0);
    if (!is_map) {
        lua_pushboolean(L, 1);
        lua_rawseti(L, -2, -1);
    }
    lua_pushvalue(L, f->tindex);
    lua_pushvalue(L, -2);
    lua_rawset(L, SLOT_LINES);
    return 1;
}

static int close_container(lua_State *L, struct load_state *st)
{
    struct frame *f = &st->frames[st->depth - 1];
    int line = f->line;

    lua_settop(L, f->tindex); /* drops the info table */
    st->depth--;
    return attach(L, st, line, 0);
}

static int push_alias(lua_State *L, struct load_state *st)
{
    int i;

    lua_pushstring(L, (const char *)st->event.data.alias.anchor);
    lua_rawget(L, SLOT_ANCHORS);
    if (lua_isnil(L, -1)) {
        fail_at(st, &st->event.start_mark, "found undefined alias '%s'", (const char *)st->event.data.alias.anchor);
        return 0;
    }
    /* A node that contains its own alias would make a cyclic table; every
     * consumer of configuration would then have to guard against loops. */
    for (i = 0; i < st->depth; i++) {
        if (lua_rawequal(L, -1, st->frames[i].tindex)) {
            fail_at(st, &st->event.start_mark, "alias '%s' refers to a node that contains it",
                    (const char *)st->event.data.alias.anchor);
            return 0;
        }
    }
    return 1;
}

static int handle_event(lua_State *L, struct load_state *st)
{
    yaml_event_t *ev = &st->event;
    int line = (int)ev->start_mark.line + 1, is_merge = 0;

    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        lua_settop(L, SLOT_ANCHORS - 1);
        lua_newtable(L); /* anchors are scoped to one document */
        return 1;
    case YAML_DOCUMENT_END_EVENT:
        /* a null root is an empty document (e.g. between two '---'): skipped */
        if (lua_gettop(L) >= SLOT_ROOT &&
            !(lua_islightuserdata(L, SLOT_ROOT) && lua_touserdata(L, SLOT_ROOT) == NU_YAML_NULL)) {
            lua_pushvalue(L, SLOT_ROOT);
            lua_rawseti(L, SLOT_DOCS, (int)lua_objlen(L, SLOT_DOCS) + 1);
        }
        lua_settop(L, SLOT_ANCHORS);
        return 1;
    case YAML_SCALAR_EVENT:
        if (!lua_checkstack(L, 8)) {
            fail_at(st, &ev->start_mark, "nesting too deep for the Lua stack");
            return 0;
        }
        if (!push_scalar(L, ev, &is_merge)) {
            fail_at(st, &ev->start_mark, "cannot read '%.40s' as %s", (const char *)ev->data.scalar.value,
                    (const char *)ev->data.scalar.tag);
            return 0;
        }
        register_anchor(L, ev->data.scalar.anchor);
        return attach(L, st, line, is_merge);
    case YAML_ALIAS_EVENT:
        if (!push_alias(L, st))
            return 0;
        return attach(L, st, line, 0);
    case YAML_SEQUENCE_START_EVENT:
        return open_container(L, st, 0, ev->data.sequence_start.anchor);
    case YAML_MAPPING_START_EVENT:
        return open_container(L, st, 1, ev->data.mapping_start.anchor);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        return close_container(L, st);
    default:
        return 1;
    }
}

/* Runs under lua_pcall: may raise, never owns libyaml memory past a raise
 * (l_load frees the parser and the pending event whatever happens). */
static int parse_protected(lua_State *L)
{
    struct load_state *st = lua_touserdata(L, 1);
    int done = 0;

    lua_settop(L, SLOT_LINES);
    lua_newtable(L); /* SLOT_DOCS */
    lua_newtable(L); /* SLOT_ANCHORS */
    while (!done) {
        if (!yaml_parser_parse(&st->parser, &st->event)) {
            fail_parser(st);
            break;
        }
        st->have_event = 1;
        done = st->event.type == YAML_STREAM_END_EVENT;
        if (!handle_event(L, st))
            break;
        yaml_event_delete(&st->event);
        st->have_event = 0;
    }
    if (st->failed)
        return 0;
    lua_pushvalue(L, SLOT_DOCS);
    return 1;
}

/* load(text[, filename]) -> docs | nil, "file:line:col: message" */
static int l_load(lua_State *L)
{
    struct load_state *st;
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    const char *filename = luaL_optstring(L, 2, "<string>");
    int rc;

    /* Everything that can raise outside the pcall happens before the parser exists. */
    st = lua_newuserdata(L, sizeof *st);
    memset(st, 0, sizeof *st);
    st->text = text;
    st->len = len;
    st->filename = filename;
    lua_pushcfunction(L, parse_protected);
    lua_pushlightuserdata(L, st);
    lua_pushvalue(L, lua_upvalueindex(1));

    if (!yaml_parser_initialize(&st->parser)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s: out of memory while parsing YAML", filename);
        return 2;
    }
    yaml_parser_set_input_string(&st->parser, (const unsigned char *)text, len);

    rc = lua_pcall(L, 2, 1, 0);

    if (st->have_event)
        yaml_event_delete(&st->event);
    yaml_parser_delete(&st->parser);
    st->have_event = 0;

    if (rc != 0) {
        /* out of memory or Lua stack trouble: the message is already on the stack */
        const char *msg = lua_tostring(L, -1);
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", filename, msg ? msg : "out of memory while building tables");
        return 2;
    }
    if (st->failed) {
        lua_pushnil(L);
        lua_pushstring(L, st->err);
        return 2;
    }
    return 1;
}

/* line(tbl[, key]) -> integer | nil */
static int l_line(lua_State *L)
{
    lua_settop(L, 2);
    if (!lua_istable(L, 1))
        goto none;
    lua_pushvalue(L, 1);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_istable(L, -1))
        goto none;
    if (lua_isnil(L, 2)) {
        lua_rawgeti(L, -1, 0);
    } else if (lua_type(L, 2) == LUA_TSTRING || (lua_type(L, 2) == LUA_TNUMBER && lua_tonumber(L, 2) >= 1)) {
        /* 0 and -1 are the info table's own bookkeeping, never a user key */
        lua_pushvalue(L, 2);
        lua_rawget(L, -2);
    } else {
        goto none;
    }
    if (lua_type(L, -1) == LUA_TNUMBER)
        return 1;
none:
    lua_pushnil(L);
    return 1;
}

int luaopen_nuncio_yaml(lua_State *L)
{
    lua_createtable(L, 0, 3);

    /* the shared side table of positions; weak keys so it never keeps a config alive */
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);

    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_load, 1);
    lua_setfield(L, -3, "load");
    lua_pushcclosure(L, l_line, 1);
    lua_setfield(L, -2, "line");

    lua_pushlightuserdata(L, NU_YAML_NULL);
    lua_setfield(L, -2, "null");
    return 1;
}
