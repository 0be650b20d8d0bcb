/* copy.c: copying values between Lua states that run on different
 * threads (asyncio._thread's jobs, call_soon_threadsafe and
 * run_coroutine_threadsafe from a worker): encoding into a flat buffer
 * on one side, decoding on the other.  copy.h says what crosses.
 *
 * A Lua function crosses as its bytecode, dumped once per closure (the
 * function cache below), an id unique in the process, and its upvalues;
 * the receiving state keeps the function it loaded for an id and, sent the
 * same id again, reuses it with fresh upvalue cells instead of loading it
 * again. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/module.h"
#include "thread/copy.h"
#include "thread/remote.h"

#define MAX_DEPTH 200

enum {
  T_NIL,
  T_FALSE,
  T_TRUE,
  T_INT,
  T_FLT,
  T_STR,
  T_TABLE,
  T_REF,
  T_FUNC,
  T_MODULE,
  T_CFUNC,
  T_GLOBALS,
  T_LIGHT,
  T_END,
  T_FUNC1, /* a function that is not met again (not numbered for T_REF) */
  T_LOOP,  /* the ml_Wakeup of a loop: ml_Copy.home */
  T_ASYNC, /* an async function: its name and function follow */
  T_FUTURE /* a Future of the loop's state: the ml_Wakeup, a registry reference */
};


static void put(ml_Copy *b, const void *s, size_t n) {
  if (b->oom) return;
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 512;
    char *np;
    while (cap < b->n + n) cap *= 2;
    np = realloc(b->p, cap);
    if (np == NULL) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}

static void put_byte(ml_Copy *b, int c) {
  unsigned char u = (unsigned char)c;
  put(b, &u, 1);
}

static void put_size(ml_Copy *b, size_t n) { put(b, &n, sizeof n); }

static void put_str(ml_Copy *b, const char *s, size_t n) {
  put_size(b, n);
  put(b, s, n);
}

/* lua_Writer for lua_dump: [-0, +0], appends to the ml_Copy. */
static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  put(ud, p, n);
  return ((ml_Copy *)ud)->oom;
}

/* The encoder's context: stack slots of the table of tables seen (table
 * -> index), of the reverse map of package.loaded (value -> name) and of
 * the function cache (below), each nil until first needed (most jobs are
 * a cached function and a few numbers or strings), and a counter. */
typedef struct Enc {
  ml_Copy *b;
  int seen, names, fcache;
  int ntables;
  const char *what; /* "argument", "result" ... for messages */
} Enc;

/* Where a value sits, for error messages only: built on the C stack as
 * the encoder descends and turned into words only when a value cannot
 * cross ("upvalue 'sock' of argument #1").  NULL: e->what. */
typedef struct Where {
  const struct Where *up; /* the function whose upvalue this is */
  const char *upname;     /* the upvalue's name, or NULL: an argument */
  int argno;              /* 0: the function itself */
} Where;

/* Writes w's words into out (n bytes). */
static void where_str(const Where *w, char *out, size_t n) {
  char parent[256];
  if (w->upname == NULL) {
    if (w->argno == 0) snprintf(out, n, "the function");
    else snprintf(out, n, "argument #%d", w->argno);
    return;
  }
  if (w->up) where_str(w->up, parent, sizeof parent);
  snprintf(out, n, "upvalue '%s'%s%s", *w->upname ? w->upname : "?", w->up ? " of " : "",
           w->up ? parent : "");
}

static int encode(lua_State *L, Enc *e, int idx, int depth, const Where *w);

/* Raises cls(message); in a worker's state, which has no exception
 * classes, a string "cls\0message" that run_job hands back as such.
 * [-0, +2] never returns. */
static int enc_raise(lua_State *L, const char *cls, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "asyncio.exceptions") == LUA_TTABLE)
    return ml__exc_raise(L, cls, "%s", msg);
  lua_pushfstring(L, "%s%c%s", cls, 0, msg);
  return lua_error(L);
}

/* [-0, +0] raises TypeError naming the value at idx: never returns. */
static int type_error(lua_State *L, Enc *e, const Where *w, int idx) {
  char name[512];
  if (w) where_str(w, name, sizeof name);
  return enc_raise(L, "TypeError",
                   "cannot copy %s to another thread: a %s cannot cross (nil, "
                   "booleans, numbers, strings, tables, Lua functions and modules can)",
                   w ? name : e->what, luaL_typename(L, idx));
}

/* [-0, +0] the table of tables seen, made in its slot on first need. */
static int seen_table(lua_State *L, Enc *e) {
  if (lua_isnil(L, e->seen)) {
    lua_newtable(L);
    lua_replace(L, e->seen);
  }
  return e->seen;
}

/* [-0, +0] the index given to the table or function at idx if it was
 * seen already, else 0. */
static size_t seen_ref(lua_State *L, Enc *e, int idx) {
  size_t ref = 0;
  if (lua_isnil(L, e->seen)) return 0;
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->seen) == LUA_TNUMBER) ref = (size_t)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return ref;
}

/* [-0, +0] gives the table or function at idx the next index. */
static void seen_add(lua_State *L, Enc *e, int idx) {
  int t = seen_table(L, e);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, ++e->ntables);
  lua_rawset(L, t);
}

/* A function's bytecode, dumped once per closure: the function cache of
 * a state (registry[&fcache_key], weak keys) maps each Lua function it
 * has copied to one of these (a userdata).  The id is unique in the
 * process: a worker keeps the function it loaded from an id and, sent the
 * same id again, reuses it instead of loading the bytecode again. */
typedef struct FuncCode {
  size_t id, n;
  char code[];
} FuncCode;

static const char fcache_key = 0;
static atomic_size_t next_func_id;

/* [-0, +0] the FuncCode of the Lua function at idx, dumped and cached on
 * first sight; raises MemoryError. */
static const FuncCode *func_code(lua_State *L, Enc *e, int idx) {
  FuncCode *fc;
  ml_Copy code = {0};
  if (lua_isnil(L, e->fcache)) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &fcache_key) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_createtable(L, 0, 1);
      lua_pushliteral(L, "k");
      lua_setfield(L, -2, "__mode");
      lua_setmetatable(L, -2);
      lua_pushvalue(L, -1);
      lua_rawsetp(L, LUA_REGISTRYINDEX, &fcache_key);
    }
    lua_replace(L, e->fcache);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->fcache) == LUA_TUSERDATA) {
    fc = lua_touserdata(L, -1);
    lua_pop(L, 1); /* the cache keeps it while the function lives */
    return fc;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_dump(L, dump_writer, &code, 0);
  lua_pop(L, 1);
  if (code.oom) {
    free(code.p);
    enc_raise(L, "MemoryError", "copying a function");
  }
  fc = lua_newuserdatauv(L, sizeof *fc + code.n, 0); /* raises: the dump leaks (memory error) */
  fc->id = atomic_fetch_add(&next_func_id, 1) + 1;
  fc->n = code.n;
  memcpy(fc->code, code.p, code.n);
  free(code.p);
  lua_pushvalue(L, idx);
  lua_insert(L, -2);
  lua_rawset(L, e->fcache);
  return fc;
}

static void push_names(lua_State *L);

/* [-0, +0] the name in package.loaded of the value at idx, or NULL
 * (the names table at e->names is made on first call). */
static const char *loaded_name(lua_State *L, Enc *e, int idx, size_t *len) {
  const char *s = NULL;
  if (lua_isnil(L, e->names)) { /* made on first need: most jobs never look */
    push_names(L);
    lua_replace(L, e->names);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->names) == LUA_TSTRING) s = lua_tolstring(L, -1, len);
  lua_pop(L, 1); /* the string stays alive in the names table */
  return s;
}

/* [-0, +0] 1 if the C function at idx is an async function: made by
 * `async function` in a loop's state, or a copy of one in a worker's. */
static int is_async(lua_State *L, int idx) {
  int r;
  if (lua_tocfunction(L, idx) == ml__remote_async_call) return 1;
  lua_pushcfunction(L, ml__coro_iscoroutinefunction);
  lua_pushvalue(L, idx);
  lua_call(L, 1, 1);
  r = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return r;
}

/* [-0, +0] 1 in a loop's state, 0 in a worker's. */
static int is_loop_state(lua_State *L) {
  int r;
  ml__push_loop(L);
  r = !lua_isnil(L, -1);
  lua_pop(L, 1);
  return r;
}

/* [-0, +0] the wake-up of the loop at idx (a loop object of this state, or
 * a RemoteLoop), or NULL if it is not one. */
static ml_Wakeup *loop_of(lua_State *L, Enc *e, int idx) {
  int is;
  if (lua_type(L, idx) == LUA_TUSERDATA) return ml__remote_test_loop(L, idx);
  if (!lua_getmetatable(L, idx)) return NULL;
  luaL_getmetatable(L, "asyncio.Loop");
  is = lua_rawequal(L, -1, -2) && !lua_isnil(L, -1);
  lua_pop(L, 2);
  return is ? e->b->home : NULL;
}

/* [-0, +0] encodes the function at idx: a C function by its name in
 * package.loaded, a Lua one as its id, bytecode and upvalues. */
static int encode_func(lua_State *L, Enc *e, int idx, int depth, const Where *w) {
  int i;
  size_t ref;
  lua_Debug ar;
  const FuncCode *fc;
  if (lua_iscfunction(L, idx)) {
    size_t len = 0;
    const char *n = loaded_name(L, e, idx, &len);
    if (n == NULL) {
      if (is_async(L, idx)) { /* async function f(): its name and function */
        int top = lua_gettop(L);
        put_byte(e->b, T_ASYNC);
        lua_getupvalue(L, idx, 1);
        lua_getupvalue(L, idx, 2);
        if (lua_type(L, top + 1) != LUA_TSTRING || lua_type(L, top + 2) != LUA_TFUNCTION)
          return type_error(L, e, w, idx);
        encode(L, e, top + 1, depth + 1, w);
        encode(L, e, top + 2, depth + 1, w);
        lua_settop(L, top);
        return 0;
      }
      return type_error(L, e, w, idx);
    }
    put_byte(e->b, T_CFUNC);
    put_str(e->b, n, len);
    return 0;
  }
  if ((ref = seen_ref(L, e, idx)) != 0) { /* recursion: local function f() ... f() end */
    put_byte(e->b, T_REF);
    put_size(e->b, ref);
    return 0;
  }
  seen_add(L, e, idx);
  fc = func_code(L, e, idx);
  put_byte(e->b, T_FUNC);
  put_size(e->b, fc->id);
  put_str(e->b, fc->code, fc->n);
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  put_byte(e->b, ar.nups);
  for (i = 1; i <= ar.nups; i++) {
    Where uw;
    int top;
    uw.up = w;
    uw.upname = lua_getupvalue(L, idx, i);
    uw.argno = 0;
    if (uw.upname == NULL) uw.upname = "";
    top = lua_gettop(L);
    encode(L, e, top, depth + 1, &uw);
    lua_settop(L, top - 1);
  }
  return 0;
}

/* [-0, +0] encodes the value at idx if it is nil, a boolean, a number, a
 * string or a light userdata (which cannot raise) and returns 1; else
 * returns 0. */
static int put_simple(lua_State *L, ml_Copy *b, int idx) {
  switch (lua_type(L, idx)) {
  case LUA_TNIL: put_byte(b, T_NIL); return 1;
  case LUA_TBOOLEAN: put_byte(b, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); return 1;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      lua_Integer v = lua_tointeger(L, idx);
      put_byte(b, T_INT);
      put(b, &v, sizeof v);
    } else {
      lua_Number v = lua_tonumber(L, idx);
      put_byte(b, T_FLT);
      put(b, &v, sizeof v);
    }
    return 1;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    put_byte(b, T_STR);
    put_str(b, s, n);
    return 1;
  }
  case LUA_TLIGHTUSERDATA: {
    void *p = lua_touserdata(L, idx);
    put_byte(b, T_LIGHT);
    put(b, &p, sizeof p);
    return 1;
  }
  default: return 0;
  }
}

/* Encodes the value at idx.  Raises TypeError for what cannot cross.
 * [-0, +0] */
static int encode(lua_State *L, Enc *e, int idx, int depth, const Where *w) {
  idx = lua_absindex(L, idx);
  if (depth > MAX_DEPTH)
    return enc_raise(L, "ValueError", "%s is nested too deeply to copy", e->what);
  luaL_checkstack(L, 8, "copying a value");
  if (put_simple(L, e->b, idx)) goto done;
  if (lua_type(L, idx) == LUA_TUSERDATA && e->b->home) {
    int ref = -1;
    ml_Wakeup *fw = ml__remote_test_future(L, idx, &ref);
    if (fw == NULL && ref < 0 && is_loop_state(L) && ml__future_test(L, idx)) {
      /* The worker's RemoteFuture holds this reference until collected. */
      lua_pushvalue(L, idx);
      ref = luaL_ref(L, LUA_REGISTRYINDEX);
      fw = e->b->home;
    }
    if (fw == e->b->home && ref >= 0) {
      put_byte(e->b, T_FUTURE);
      put(e->b, &fw, sizeof fw);
      put(e->b, &ref, sizeof ref);
      goto done;
    }
  }
  if (lua_type(L, idx) == LUA_TTABLE || lua_type(L, idx) == LUA_TUSERDATA) {
    ml_Wakeup *lw = loop_of(L, e, idx);
    if (lw != NULL || (lua_type(L, idx) == LUA_TUSERDATA && ml__remote_test_loop(L, idx))) {
      char name[512];
      if (lw == e->b->home && lw != NULL) {
        put_byte(e->b, T_LOOP);
        put(e->b, &lw, sizeof lw);
        goto done;
      }
      if (w) where_str(w, name, sizeof name);
      return enc_raise(L, "TypeError",
                       "cannot copy %s to another thread: a loop crosses only "
                       "between its own state and its workers",
                       w ? name : e->what);
    }
  }
  switch (lua_type(L, idx)) {
  case LUA_TFUNCTION: return encode_func(L, e, idx, depth, w);
  case LUA_TTABLE: {
    const char *mod;
    size_t ref;
    if ((ref = seen_ref(L, e, idx)) != 0) {
      put_byte(e->b, T_REF);
      put_size(e->b, ref);
      break;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    if (lua_rawequal(L, -1, idx)) {
      lua_pop(L, 1);
      put_byte(e->b, T_GLOBALS); /* _ENV: the other state's globals */
      break;
    }
    lua_pop(L, 1);
    size_t mlen = 0;
    if ((mod = loaded_name(L, e, idx, &mlen)) != NULL) {
      put_byte(e->b, T_MODULE);
      put_str(e->b, mod, mlen);
      break;
    }
    seen_add(L, e, idx);
    put_byte(e->b, T_TABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      int top = lua_gettop(L);
      encode(L, e, top - 1, depth + 1, w);
      encode(L, e, top, depth + 1, w);
      lua_pop(L, 1);
    }
    put_byte(e->b, T_END);
    break;
  }
  default: return type_error(L, e, w, idx);
  }
done:
  if (e->b->oom) return enc_raise(L, "MemoryError", "copying a value");
  return 0;
}

/* [-0, +1] the reverse map of package.loaded: each module table -> its
 * name, and each C function field of one -> "name\0field". */
static void push_names(lua_State *L) {
  lua_newtable(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1) &&
        strcmp(lua_tostring(L, -2), "_G") != 0) {
      const char *mod = lua_tostring(L, -2);
      lua_pushvalue(L, -1);
      lua_pushvalue(L, -3);
      lua_rawset(L, -6);
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
          lua_pushvalue(L, -1);
          lua_rawget(L, -7);
          if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, -1);
            lua_pushfstring(L, "%s%c%s", mod, 0, lua_tostring(L, -3));
            lua_rawset(L, -8);
          } else {
            lua_pop(L, 1);
          }
        }
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  /* The base library's C functions (print, pairs...) through _G. */
  lua_pushglobaltable(L);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -2) == LUA_TSTRING && lua_iscfunction(L, -1)) {
      lua_pushvalue(L, -1);
      if (lua_rawget(L, -5) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushfstring(L, "_G%c%s", 0, lua_tostring(L, -3));
        lua_rawset(L, -6);
      } else {
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Protected: encodes values 2..n of the stack (1 is the ml_Copy light
 * userdata, then what).
 * encode_p(buf, what, values...) -> nothing */
int ml__copy_encode_p(lua_State *L) {
  ml_Copy *b = lua_touserdata(L, 1);
  Enc e;
  int n = lua_gettop(L), i;
  e.b = b;
  e.what = lua_tostring(L, 2);
  int args = strcmp(e.what, "argument") == 0;
  e.ntables = 0;
  lua_settop(L, n + 3); /* three nils: the slots of seen, names, fcache */
  e.seen = n + 1;
  e.names = n + 2;
  e.fcache = n + 3;
  put_size(b, (size_t)(n - 2));
  for (i = 3; i <= n; i++) {
    Where w = {NULL, NULL, i - 3};
    encode(L, &e, i, 0, args ? &w : NULL);
  }
  return 0;
}

/* [-0, +0] encodes values first..last as encode_p does, without a
 * protected call, when nothing can raise: nil, booleans, numbers, strings,
 * light userdata, and (first only, if fn) a Lua function found in the
 * function cache whose upvalues are such values or _ENV.  Returns 1 if it
 * did; 0 with b emptied if the general encoder is needed. */
int ml__copy_fast(lua_State *L, ml_Copy *b, int first, int last, int fn) {
  int i = first, top = lua_gettop(L);
  put_size(b, (size_t)(last - first + 1));
  if (fn) {
    const FuncCode *fc;
    lua_Debug ar;
    int u;
    if (lua_iscfunction(L, i) || lua_rawgetp(L, LUA_REGISTRYINDEX, &fcache_key) != LUA_TTABLE)
      goto slow;
    lua_pushvalue(L, i);
    if (lua_rawget(L, -2) != LUA_TUSERDATA) goto slow;
    fc = lua_touserdata(L, -1);
    lua_pushvalue(L, i);
    lua_getinfo(L, ">u", &ar);
    put_byte(b, T_FUNC1);
    put_size(b, fc->id);
    put_str(b, fc->code, fc->n);
    put_byte(b, ar.nups);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    for (u = 1; u <= ar.nups; u++) {
      lua_getupvalue(L, i, u);
      if (lua_rawequal(L, -1, -2)) put_byte(b, T_GLOBALS);
      else if (!put_simple(L, b, -1)) goto slow;
      lua_pop(L, 1);
    }
    lua_settop(L, top);
    i++;
  }
  for (; i <= last; i++)
    if (!put_simple(L, b, i)) goto slow;
  if (!b->oom) return 1;
slow:
  lua_settop(L, top);
  b->n = 0;
  b->oom = 0;
  return 0;
}

/* Decoding.  d->p .. d->end; tables seen, in order, in the table at
 * stack slot seen (nil until the first table or function); the loaded
 * functions by id at slot funcs (nil until the first function). */
typedef struct Dec {
  const char *p, *end;
  int seen, funcs, ntables;
} Dec;

/* [-0, +0] records the value on top as the next table or function seen. */
static void dec_seen(lua_State *L, Dec *d) {
  if (lua_isnil(L, d->seen)) {
    lua_newtable(L);
    lua_replace(L, d->seen);
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->seen, ++d->ntables);
}

/* The functions a state has loaded from copies, by id (registry[&funcs_key]):
 * a function sent again is the same function object, given fresh upvalue
 * cells (a closure made by the cell maker, registry[&cell_key], lends its
 * one cell through lua_upvaluejoin) so that closures the earlier call left
 * behind keep theirs.  Bounded: past FUNCS_MAX entries the table starts
 * again (closures made afresh for every job each have a new id). */
#define FUNCS_MAX 256
static const char funcs_key = 0, cell_key = 0;

/* [-0, +1] pushes a new closure whose one upvalue is a fresh cell. */
static void push_cell(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &cell_key) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    if (luaL_loadstring(L, "local c return function() return c end") != LUA_OK) lua_error(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &cell_key);
  }
  lua_call(L, 0, 1);
}

/* [-0, +1] pushes the function of id loaded before, with fresh upvalue
 * cells, or pushes nothing and returns 0. */
static int cached_func(lua_State *L, Dec *d, size_t id) {
  int nups, i;
  lua_Debug ar;
  if (lua_isnil(L, d->funcs)) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &funcs_key) != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_rawsetp(L, LUA_REGISTRYINDEX, &funcs_key);
    }
    lua_replace(L, d->funcs);
  }
  if (lua_rawgeti(L, d->funcs, (lua_Integer)id) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pushvalue(L, -1);
  lua_getinfo(L, ">u", &ar);
  nups = ar.nups;
  for (i = 1; i <= nups; i++) {
    push_cell(L);
    lua_upvaluejoin(L, -2, i, -1, 1);
    lua_pop(L, 1);
  }
  return 1;
}

/* [-0, +0] keeps the function on top as the one of id. */
static void cache_func(lua_State *L, Dec *d, size_t id) {
  lua_Integer n;
  if (id == 0 || lua_isnil(L, d->funcs)) return; /* cached_func made the slot */
  lua_rawgeti(L, d->funcs, 0);
  n = lua_tointeger(L, -1) + 1;
  lua_pop(L, 1);
  if (n > FUNCS_MAX) {
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &funcs_key);
    lua_replace(L, d->funcs);
    n = 1;
  }
  lua_pushinteger(L, n);
  lua_rawseti(L, d->funcs, 0);
  lua_pushvalue(L, -1);
  lua_rawseti(L, d->funcs, (lua_Integer)id);
}

/* [-0, +0] reads n bytes; raises "corrupt copy" past the end. */
static int get(lua_State *L, Dec *d, void *out, size_t n) {
  if ((size_t)(d->end - d->p) < n) return luaL_error(L, CORRUPT_COPY);
  memcpy(out, d->p, n);
  d->p += n;
  return 0;
}

static void decode(lua_State *L, Dec *d);

/* [-0, +1] pushes field of module mod (s is "mod\0field", n long),
 * required in this state; raises if it is not a function there. */
static void push_cfunc(lua_State *L, const char *s, size_t n) {
  const char *mod = s, *field = s + strlen(s) + 1;
  if (field > s + n) luaL_error(L, CORRUPT_COPY);
  if (strcmp(mod, "_G") == 0) lua_pushglobaltable(L);
  else {
    lua_getglobal(L, "require");
    lua_pushstring(L, mod);
    lua_call(L, 1, 1);
  }
  if (!lua_istable(L, -1) || lua_getfield(L, -1, field) != LUA_TFUNCTION)
    luaL_error(L, "function %s.%s is not in this thread's state", mod, field);
  lua_remove(L, -2);
}

/* [-0, +1] pushes the next value decoded. */
static void decode(lua_State *L, Dec *d) {
  unsigned char tag = 0;
  size_t n = 0;
  luaL_checkstack(L, 8, "copying a value");
  get(L, d, &tag, 1);
  switch (tag) {
  case T_NIL: lua_pushnil(L); break;
  case T_FALSE: lua_pushboolean(L, 0); break;
  case T_TRUE: lua_pushboolean(L, 1); break;
  case T_INT: {
    lua_Integer v = 0;
    get(L, d, &v, sizeof v);
    lua_pushinteger(L, v);
    break;
  }
  case T_FLT: {
    lua_Number v = 0;
    get(L, d, &v, sizeof v);
    lua_pushnumber(L, v);
    break;
  }
  case T_LIGHT: {
    void *p = NULL;
    get(L, d, &p, sizeof p);
    lua_pushlightuserdata(L, p);
    break;
  }
  case T_STR:
  case T_MODULE:
  case T_CFUNC:
    get(L, d, &n, sizeof n);
    if ((size_t)(d->end - d->p) < n) luaL_error(L, CORRUPT_COPY);
    if (tag == T_STR) {
      lua_pushlstring(L, d->p, n);
    } else if (tag == T_MODULE) {
      lua_getglobal(L, "require");
      lua_pushlstring(L, d->p, n);
      lua_call(L, 1, 1);
    } else {
      lua_pushlstring(L, d->p, n); /* keeps a terminated copy */
      push_cfunc(L, lua_tostring(L, -1), n);
      lua_remove(L, -2);
    }
    d->p += n;
    break;
  case T_GLOBALS: lua_pushglobaltable(L); break;
  case T_LOOP: {
    ml_Wakeup *w = NULL;
    get(L, d, &w, sizeof w);
    ml__push_loop(L); /* the loop's own state: the loop; nil in a worker's */
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      ml__remote_push_loop(L, w);
    }
    break;
  }
  case T_FUTURE: {
    ml_Wakeup *w = NULL;
    int ref = -1;
    get(L, d, &w, sizeof w);
    get(L, d, &ref, sizeof ref);
    if (is_loop_state(L)) lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    else ml__remote_push_future(L, w, ref);
    break;
  }
  case T_ASYNC:
    decode(L, d);                                          /* name */
    decode(L, d);                                          /* fn */
    if (lua_getglobal(L, "__ml_async") == LUA_TFUNCTION) { /* a loop's state */
      lua_insert(L, -3);
      lua_call(L, 2, 1);
    } else {
      lua_pop(L, 1);
      lua_pushcclosure(L, ml__remote_async_call, 2);
    }
    break;
  case T_REF:
    get(L, d, &n, sizeof n);
    if (lua_isnil(L, d->seen)) luaL_error(L, CORRUPT_COPY);
    lua_rawgeti(L, d->seen, (lua_Integer)n);
    break;
  case T_TABLE:
    lua_newtable(L);
    dec_seen(L, d);
    for (;;) {
      if (d->p < d->end && (unsigned char)*d->p == T_END) {
        d->p++;
        break;
      }
      decode(L, d);
      decode(L, d);
      if (lua_isnil(L, -2)) luaL_error(L, CORRUPT_COPY);
      lua_rawset(L, -3);
    }
    break;
  case T_FUNC:
  case T_FUNC1: {
    unsigned char nups = 0;
    size_t id = 0;
    get(L, d, &id, sizeof id);
    get(L, d, &n, sizeof n);
    if ((size_t)(d->end - d->p) < n) luaL_error(L, CORRUPT_COPY);
    if (id == 0 || !cached_func(L, d, id)) {
      if (luaL_loadbufferx(L, d->p, n, "=copied function", "b") != LUA_OK) lua_error(L);
      cache_func(L, d, id);
    }
    d->p += n;
    if (tag == T_FUNC) dec_seen(L, d);
    get(L, d, &nups, 1);
    for (int i = 1; i <= nups; i++) {
      decode(L, d);
      if (lua_setupvalue(L, -2, i) == NULL) lua_pop(L, 1);
    }
    break;
  }
  default: luaL_error(L, CORRUPT_COPY);
  }
}

/* Protected: pushes the values encoded in the buffer (light userdata 1,
 * size 2); returns how many.
 * decode_p(buf, size) -> the values */
int ml__copy_decode_p(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2), n = 0;
  Dec d = {p, p + len, 1, 2, 0};
  lua_settop(L, 2); /* two nils: the slots of seen and funcs */
  lua_pushnil(L);
  lua_replace(L, 1);
  lua_pushnil(L);
  lua_replace(L, 2);
  get(L, &d, &n, sizeof n);
  luaL_checkstack(L, (int)(n > 100000 ? 100000 : n) + 8, "too many values");
  for (size_t i = 0; i < n; i++) decode(L, &d);
  return (int)n;
}
