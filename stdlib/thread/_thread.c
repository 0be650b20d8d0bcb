/* _thread.c: worker threads for asyncio.to_thread and run_in_executor
 * (asyncio._thread): thread pools whose threads each own a plain Lua
 * state (the standard libraries and require, no loop), and the copying of
 * functions and values between states.
 *
 * A job travels by value: the function as bytecode (lua_dump, with debug
 * information, so tracebacks name the user's lines) and its upvalues, the
 * arguments, and on the way back the results or the error and the
 * worker's traceback, all encoded in one malloc'ed buffer (encode/decode
 * below).  What can be copied: nil, booleans, numbers, strings, tables of
 * those (shared and cyclic tables keep their shape; metatables are not
 * copied), Lua functions the same way, light userdata (a C address, like
 * cjson.null); an upvalue that is a table of package.loaded is re-required
 * by name on the other side, a C function found in such a table (as in
 * `local insert = table.insert`) is looked up again there, and _ENV is the
 * other state's globals.  Anything else raises TypeError naming it.
 *
 * A pool is malloc'ed, shared by its threads and its Lua object, and freed
 * by whoever lets go of it last.  Threads start on demand up to the pool's
 * size, block every signal, and wait on the pool's condition variable.  A
 * finished job goes back to its state through the core's wake-up
 * (ml__wakeup_send), which wakes ev_run and a polling host alike; the loop
 * is held alive while jobs are out.  A job whose state has closed is
 * dropped by the worker (the send fails with -ESHUTDOWN). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lualib.h>
#include "core/module.h"

/* The error of a copy that does not decode (a bug, or memory overwritten). */
#define CORRUPT_COPY "corrupt copy"

#define ML_EXECUTOR "asyncio.ThreadPoolExecutor"
#define MAX_DEPTH 200

/* ---------------------------------------------------------------- */
/* Encoding values.                                                   */

enum {
  T_NIL, T_FALSE, T_TRUE, T_INT, T_FLT, T_STR, T_TABLE, T_REF, T_FUNC, T_MODULE,
  T_CFUNC, T_GLOBALS, T_LIGHT, T_END
};

typedef struct Buf {
  char *p;
  size_t n, cap;
  int oom;
} Buf;

static void put(Buf *b, const void *s, size_t n) {
  if (b->oom) return;
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
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

static void put_byte(Buf *b, int c) {
  unsigned char u = (unsigned char)c;
  put(b, &u, 1);
}

static void put_size(Buf *b, size_t n) { put(b, &n, sizeof n); }

static void put_str(Buf *b, const char *s, size_t n) {
  put_size(b, n);
  put(b, s, n);
}

/* lua_Writer for lua_dump: [-0, +0], appends to the Buf. */
static int dump_writer(lua_State *L, const void *p, size_t n, void *ud) {
  (void)L;
  put(ud, p, n);
  return ((Buf *)ud)->oom;
}

/* The encoder's context: idx of the table of tables seen (table -> index),
 * of the reverse map of package.loaded (value -> name), and a counter. */
typedef struct Enc {
  Buf *b;
  int seen, names;
  int ntables;
  const char *what;   /* "argument", "result" ... for messages */
} Enc;

static int encode(lua_State *L, Enc *e, int idx, int depth, const char *name);

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
  if (lua_getfield(L, -1, "asyncio.exceptions") == LUA_TTABLE) return ml__exc_raise(L, cls, "%s", msg);
  lua_pushfstring(L, "%s%c%s", cls, 0, msg);
  return lua_error(L);
}

/* [-0, +0] raises TypeError naming the value at idx: never returns. */
static int type_error(lua_State *L, Enc *e, const char *name, int idx) {
  return enc_raise(L, "TypeError", "cannot copy %s to another thread: a %s cannot cross (nil, "
                       "booleans, numbers, strings, tables, Lua functions and modules can)",
                       name ? name : e->what, luaL_typename(L, idx));
}

static void push_names(lua_State *L);

/* [-0, +0] the name in package.loaded of the value at idx, or NULL
 * (the names table at e->names is made on first call). */
static const char *loaded_name(lua_State *L, Enc *e, int idx, size_t *len) {
  const char *s = NULL;
  if (lua_isnil(L, e->names)) {  /* made on first need: most jobs never look */
    push_names(L);
    lua_replace(L, e->names);
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->names) == LUA_TSTRING) s = lua_tolstring(L, -1, len);
  lua_pop(L, 1);  /* the string stays alive in the names table */
  return s;
}

/* [-0, +0] encodes the function at idx: a C function by its name in
 * package.loaded, a Lua one as bytecode and its upvalues. */
static int encode_func(lua_State *L, Enc *e, int idx, int depth, const char *name) {
  int i;
  lua_Debug ar;
  if (lua_iscfunction(L, idx)) {
    size_t len = 0;
    const char *n = loaded_name(L, e, idx, &len);
    if (n == NULL) return type_error(L, e, name, idx);
    put_byte(e->b, T_CFUNC);
    put_str(e->b, n, len);
    return 0;
  }
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->seen) == LUA_TNUMBER) {  /* recursion: local function f() ... f() end */
    size_t ref = (size_t)lua_tointeger(L, -1);
    lua_pop(L, 1);
    put_byte(e->b, T_REF);
    put_size(e->b, ref);
    return 0;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, ++e->ntables);
  lua_rawset(L, e->seen);
  put_byte(e->b, T_FUNC);
  lua_pushvalue(L, idx);
  lua_getinfo(L, ">u", &ar);
  {
    Buf code = { 0 };
    lua_pushvalue(L, idx);
    lua_dump(L, dump_writer, &code, 0);
    lua_pop(L, 1);
    if (code.oom) {
      free(code.p);
      return enc_raise(L, "MemoryError", "copying a function");
    }
    put_str(e->b, code.p, code.n);
    free(code.p);
  }
  put_byte(e->b, ar.nups);
  for (i = 1; i <= ar.nups; i++) {
    const char *up = lua_getupvalue(L, idx, i);
    char label[128];
    int top = lua_gettop(L);
    snprintf(label, sizeof label, "upvalue '%s'%s%s", up && *up ? up : "?",
             name ? " of " : "", name ? name : "");
    encode(L, e, top, depth + 1, label);
    lua_settop(L, top - 1);
  }
  return 0;
}

/* Encodes the value at idx.  Raises TypeError for what cannot cross.
 * [-0, +0] */
static int encode(lua_State *L, Enc *e, int idx, int depth, const char *name) {
  idx = lua_absindex(L, idx);
  if (depth > MAX_DEPTH) return enc_raise(L, "ValueError", "%s is nested too deeply to copy", e->what);
  luaL_checkstack(L, 8, "copying a value");
  switch (lua_type(L, idx)) {
  case LUA_TNIL: put_byte(e->b, T_NIL); break;
  case LUA_TBOOLEAN: put_byte(e->b, lua_toboolean(L, idx) ? T_TRUE : T_FALSE); break;
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) {
      lua_Integer v = lua_tointeger(L, idx);
      put_byte(e->b, T_INT);
      put(e->b, &v, sizeof v);
    } else {
      lua_Number v = lua_tonumber(L, idx);
      put_byte(e->b, T_FLT);
      put(e->b, &v, sizeof v);
    }
    break;
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    put_byte(e->b, T_STR);
    put_str(e->b, s, n);
    break;
  }
  case LUA_TLIGHTUSERDATA: {
    void *p = lua_touserdata(L, idx);
    put_byte(e->b, T_LIGHT);
    put(e->b, &p, sizeof p);
    break;
  }
  case LUA_TFUNCTION:
    return encode_func(L, e, idx, depth, name);
  case LUA_TTABLE: {
    const char *mod;
    lua_pushvalue(L, idx);
    if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
      size_t ref = (size_t)lua_tointeger(L, -1);
      lua_pop(L, 1);
      put_byte(e->b, T_REF);
      put_size(e->b, ref);
      break;
    }
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    if (lua_rawequal(L, -1, idx)) {
      lua_pop(L, 1);
      put_byte(e->b, T_GLOBALS);  /* _ENV: the other state's globals */
      break;
    }
    lua_pop(L, 1);
    size_t mlen = 0;
    if ((mod = loaded_name(L, e, idx, &mlen)) != NULL) {
      put_byte(e->b, T_MODULE);
      put_str(e->b, mod, mlen);
      break;
    }
    lua_pushvalue(L, idx);
    lua_pushinteger(L, ++e->ntables);
    lua_rawset(L, e->seen);
    put_byte(e->b, T_TABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      int top = lua_gettop(L);
      encode(L, e, top - 1, depth + 1, name);
      encode(L, e, top, depth + 1, name);
      lua_pop(L, 1);
    }
    put_byte(e->b, T_END);
    break;
  }
  default:
    return type_error(L, e, name, idx);
  }
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
    if (lua_type(L, -2) == LUA_TSTRING && lua_istable(L, -1) && strcmp(lua_tostring(L, -2), "_G") != 0) {
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

/* Protected: encodes values 2..n of the stack (1 is the Buf light
 * userdata, then what).
 * encode_p(buf, what, values...) -> nothing */
static int encode_p(lua_State *L) {
  Buf *b = lua_touserdata(L, 1);
  Enc e;
  int n = lua_gettop(L), i;
  e.b = b;
  e.what = lua_tostring(L, 2);
  e.ntables = 0;
  lua_newtable(L);
  e.seen = lua_gettop(L);
  lua_pushnil(L);
  e.names = lua_gettop(L);
  put_size(b, (size_t)(n - 2));
  for (i = 3; i <= n; i++) {
    char label[48];
    if (i == 3) snprintf(label, sizeof label, "the function");
    else snprintf(label, sizeof label, "argument #%d", i - 3);
    encode(L, &e, i, 0, strcmp(e.what, "argument") == 0 ? label : NULL);
  }
  return 0;
}

/* Decoding.  d->p .. d->end; tables seen, in order, in the table at seen. */
typedef struct Dec {
  const char *p, *end;
  int seen, ntables;
} Dec;

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
  case T_INT: { lua_Integer v = 0; get(L, d, &v, sizeof v); lua_pushinteger(L, v); break; }
  case T_FLT: { lua_Number v = 0; get(L, d, &v, sizeof v); lua_pushnumber(L, v); break; }
  case T_LIGHT: { void *p = NULL; get(L, d, &p, sizeof p); lua_pushlightuserdata(L, p); break; }
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
      lua_pushlstring(L, d->p, n);  /* keeps a terminated copy */
      push_cfunc(L, lua_tostring(L, -1), n);
      lua_remove(L, -2);
    }
    d->p += n;
    break;
  case T_GLOBALS: lua_pushglobaltable(L); break;
  case T_REF:
    get(L, d, &n, sizeof n);
    lua_rawgeti(L, d->seen, (lua_Integer)n);
    break;
  case T_TABLE:
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->seen, ++d->ntables);
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
  case T_FUNC: {
    unsigned char nups = 0;
    get(L, d, &n, sizeof n);
    if ((size_t)(d->end - d->p) < n) luaL_error(L, CORRUPT_COPY);
    if (luaL_loadbufferx(L, d->p, n, "=copied function", "b") != LUA_OK) lua_error(L);
    d->p += n;
    lua_pushvalue(L, -1);
    lua_rawseti(L, d->seen, ++d->ntables);
    get(L, d, &nups, 1);
    for (int i = 1; i <= nups; i++) {
      decode(L, d);
      if (lua_setupvalue(L, -2, i) == NULL) lua_pop(L, 1);
    }
    break;
  }
  default:
    luaL_error(L, CORRUPT_COPY);
  }
}

/* Protected: pushes the values encoded in the buffer (light userdata 1,
 * size 2); returns how many.
 * decode_p(buf, size) -> the values */
static int decode_p(lua_State *L) {
  const char *p = lua_touserdata(L, 1);
  size_t len = (size_t)lua_tointeger(L, 2), n = 0;
  Dec d = { p, p + len, 0, 0 };
  lua_settop(L, 0);
  lua_newtable(L);
  d.seen = 1;
  get(L, &d, &n, sizeof n);
  luaL_checkstack(L, (int)(n > 100000 ? 100000 : n) + 8, "too many values");
  for (size_t i = 0; i < n; i++) decode(L, &d);
  return (int)n;
}

/* ---------------------------------------------------------------- */
/* Pools and jobs.                                                     */

typedef struct Job {
  struct Job *next;
  struct Pool *pool;
  ml_WakeNode node;
  ml_Wakeup *wake;
  int fref;          /* the Future, in the submitting state's registry */
  int ok;            /* the call succeeded */
  char *copy_err;    /* "cls\0message": the results could not be copied */
  char *in, *out;    /* encoded call; encoded results or error */
  size_t inlen, outlen;
  char *path, *cpath;
} Job;

typedef struct Pool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  Job *head, *tail;
  pthread_cond_t gone;   /* a thread has exited (shutdown(wait) waits) */
  int max, nthreads, idle, refs, shutdown;
} Pool;

static void pool_unref(Pool *p) {
  int last;
  pthread_mutex_lock(&p->mu);
  last = --p->refs == 0;
  pthread_mutex_unlock(&p->mu);
  if (last) {
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_cond_destroy(&p->gone);
    free(p);
  }
}

static void job_free(Job *j) {
  free(j->in);
  free(j->out);
  free(j->path);
  free(j->cpath);
  free(j->copy_err);
  free(j);
}

static const char tb_key = 0;

/* The worker's message handler: keeps the traceback (registry) and the
 * error unchanged.
 * msgh(error) -> error */
static int traceback_msgh(lua_State *L) {
  luaL_traceback(L, L, NULL, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &tb_key);
  return 1;
}

/* Runs the job on the worker's state W and encodes its outcome.
 * [-?, +0] leaves W's stack empty. */
static void run_job(lua_State *W, Job *j) {
  int st, n;
  Buf out = { 0 };
  lua_settop(W, 0);
  /* An earlier job may have replaced package: raw access, no metamethods,
   * as nothing here may raise outside a protected call. */
  lua_pushglobaltable(W);
  lua_pushliteral(W, "package");
  if (j->path && lua_rawget(W, -2) == LUA_TTABLE) {
    lua_pushliteral(W, "path");
    lua_pushstring(W, j->path);
    lua_rawset(W, -3);
    lua_pushliteral(W, "cpath");
    lua_pushstring(W, j->cpath);
    lua_rawset(W, -3);
  }
  lua_settop(W, 0);
  lua_pushcfunction(W, traceback_msgh);
  lua_pushcfunction(W, decode_p);
  lua_pushlightuserdata(W, j->in);
  lua_pushinteger(W, (lua_Integer)j->inlen);
  st = lua_pcall(W, 2, LUA_MULTRET, 1);
  if (st == LUA_OK) {
    /* [msgh, fn, args...] */
    n = lua_gettop(W) - 2;
    st = lua_pcall(W, n, LUA_MULTRET, 1);
  }
  if (st == LUA_OK) {
    j->ok = 1;
    lua_pushcfunction(W, encode_p);
    lua_insert(W, 2);
    lua_pushlightuserdata(W, &out);
    lua_insert(W, 3);
    lua_pushliteral(W, "result");
    lua_insert(W, 4);
    if (lua_pcall(W, lua_gettop(W) - 2, 0, 0) != LUA_OK) {
      size_t n;
      const char *m = lua_tolstring(W, -1, &n);
      j->ok = 0;
      free(out.p);
      memset(&out, 0, sizeof out);
      if (m && (j->copy_err = malloc(n + 1)) != NULL) memcpy(j->copy_err, m, n + 1);
      lua_settop(W, 0);
      return;
    }
  } else {
    /* [msgh, error]; the traceback is in the registry (missing for errors
     * the handler did not see, as memory errors) */
    lua_settop(W, 2);
    if (st == LUA_ERRRUN) lua_rawgetp(W, LUA_REGISTRYINDEX, &tb_key);
    else lua_pushnil(W);
    lua_pushnil(W);
    lua_rawsetp(W, LUA_REGISTRYINDEX, &tb_key);
    lua_pushcfunction(W, encode_p);
    lua_insert(W, 2);
    lua_pushlightuserdata(W, &out);
    lua_insert(W, 3);
    lua_pushliteral(W, "error");
    lua_insert(W, 4);
    if (lua_pcall(W, 4, 0, 0) != LUA_OK) {
      /* The error itself cannot be copied: the reason goes back. */
      size_t n = 0;
      const char *m = lua_type(W, -1) == LUA_TSTRING ? lua_tolstring(W, -1, &n) : NULL;
      free(out.p);
      memset(&out, 0, sizeof out);
      if (m && (j->copy_err = malloc(n + 1)) != NULL) memcpy(j->copy_err, m, n + 1);
      lua_settop(W, 0);
      return;
    }
  }
  lua_settop(W, 0);
  j->out = out.p;
  j->outlen = out.oom ? 0 : out.n;
  if (out.oom) j->ok = 0;
}

static void *worker_main(void *arg) {
  Pool *p = arg;
  lua_State *W = luaL_newstate();
  if (W) luaL_openlibs(W);
  pthread_mutex_lock(&p->mu);
  for (;;) {
    Job *j;
    while (p->head == NULL && !p->shutdown) {
      p->idle++;
      pthread_cond_wait(&p->cv, &p->mu);
      p->idle--;
    }
    if (p->head == NULL) {  /* shut down and drained */
      pthread_mutex_unlock(&p->mu);
      break;
    }
    j = p->head;
    p->head = j->next;
    if (p->head == NULL) p->tail = NULL;
    pthread_mutex_unlock(&p->mu);
    if (W) run_job(W, j);
    if (ml__wakeup_send(j->wake, &j->node) != 0) {
      /* The state has closed: nobody wants the result. */
      ml__wakeup_release(j->wake);
      job_free(j);
    }
    pthread_mutex_lock(&p->mu);
  }
  if (W) lua_close(W);
  pthread_mutex_lock(&p->mu);
  p->nthreads--;
  pthread_cond_broadcast(&p->gone);
  pthread_mutex_unlock(&p->mu);
  pool_unref(p);
  return NULL;
}

/* Starts a thread if none is idle and the pool may grow; mu held. */
static int pool_grow(Pool *p) {
  pthread_t th;
  pthread_attr_t a;
  sigset_t all, old;
  int r;
  if (p->idle > 0 || p->nthreads >= p->max) return 0;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&a, 2 * 1024 * 1024);
  sigfillset(&all);  /* workers never take the process's signals */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  p->refs++;
  r = pthread_create(&th, &a, worker_main, p);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&a);
  if (r != 0) {
    p->refs--;
    return p->nthreads > 0 ? 0 : -r;  /* the threads there are will do it */
  }
  p->nthreads++;
  return 0;
}

/* Loop thread: the job is back (or its state closed: S == NULL).
 * [-0, +0] on the main state: settles the job's Future. */
static void job_done(ml_State *S, void *ud) {
  Job *j = ud;
  lua_State *L;
  int top, st;
  if (S == NULL) {
    ml__wakeup_release(j->wake);
    job_free(j);
    return;
  }
  L = ml__main_lua(S);
  ml__loop_unhold(S);
  top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, j->fref);
  luaL_unref(L, LUA_REGISTRYINDEX, j->fref);
  if (ml__future_state(ml__future_test(L, -1)) == ML_PENDING) {
    if (j->copy_err) {
      const char *cls = j->copy_err, *msg = cls + strlen(cls) + 1;
      if (strcmp(cls, "TypeError") && strcmp(cls, "ValueError") && strcmp(cls, "MemoryError")) {
        msg = cls;
        cls = "TypeError";
      }
      ml__exc_push(L, cls, "%s", msg);
      st = LUA_ERRRUN;
    } else if (j->out == NULL) {
      ml__exc_push(L, "MemoryError", "the worker's results could not be copied");
      st = LUA_ERRMEM;
    } else {
      lua_pushcfunction(L, decode_p);
      lua_pushlightuserdata(L, j->out);
      lua_pushinteger(L, (lua_Integer)j->outlen);
      st = lua_pcall(L, 2, LUA_MULTRET, 0);
    }
    if (st != LUA_OK) {
      lua_settop(L, top + 2);
      ml__future_set_exception(L, top + 1);
    } else if (j->ok) {
      ml__future_set_result(L, top + 1, lua_gettop(L) - top - 1);
    } else {
      /* [future, error, traceback] */
      if (lua_gettop(L) < top + 3) lua_settop(L, top + 3);
      if (lua_istable(L, top + 2) && !lua_isnil(L, top + 3)) {
        lua_pushvalue(L, top + 3);
        lua_setfield(L, top + 2, "worker_traceback");
      }
      lua_settop(L, top + 2);
      ml__future_set_exception(L, top + 1);
    }
  }
  lua_settop(L, top);
  ml__wakeup_release(j->wake);
  job_free(j);
}

typedef struct Exec {
  Pool *pool;
} Exec;

/* [-0, +0] the executor at 1, or raises. */
static Exec *check_exec(lua_State *L) {
  return luaL_checkudata(L, 1, ML_EXECUTOR);
}

/* new(n) -> executor: a pool of up to n threads (n >= 1). */
static int l_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  Exec *x;
  Pool *p;
  if (n < 1) return ml__exc_raise(L, "ValueError", "max_workers must be greater than 0");
  if (n > 1024) return ml__exc_raise(L, "ValueError", "max_workers must be at most 1024");
  x = lua_newuserdatauv(L, sizeof *x, 0);
  x->pool = NULL;
  luaL_setmetatable(L, ML_EXECUTOR);
  p = calloc(1, sizeof *p);
  if (p == NULL) return ml__exc_raise(L, "MemoryError", "thread pool");
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  pthread_cond_init(&p->gone, NULL);
  p->max = (int)n;
  p->refs = 1;
  x->pool = p;
  return 1;
}

/* [-0, +0] a malloc'd copy of package[field], or NULL. */
static char *dupstr(lua_State *L, const char *field) {
  const char *s;
  char *r;
  lua_getglobal(L, "package");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return NULL;
  }
  lua_getfield(L, -1, field);
  s = lua_tostring(L, -1);
  r = s ? strdup(s) : NULL;
  lua_pop(L, 2);
  return r;
}

/* ex:_submit(fn, ...) -> Future: fn(...) on a worker thread. */
static int ex_submit(lua_State *L) {
  Exec *x = check_exec(L);
  Pool *p = x->pool;
  ml_State *S = ml__state(L);
  Buf in = { 0 };
  Job *j;
  int n = lua_gettop(L), r;
  if (p == NULL || p->shutdown) return ml__exc_raise(L, "RuntimeError", "cannot schedule new futures after shutdown");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  /* Encode fn and the arguments first: that raises on what cannot cross. */
  lua_pushcfunction(L, encode_p);
  lua_pushlightuserdata(L, &in);
  lua_pushliteral(L, "argument");
  for (int i = 2; i <= n; i++) lua_pushvalue(L, i);
  if (lua_pcall(L, n + 1, 0, 0) != LUA_OK) {
    free(in.p);
    return lua_error(L);
  }
  ml__future_new(L);
  j = calloc(1, sizeof *j);
  if (j == NULL || (j->wake = ml__wakeup_acquire(S)) == NULL) {
    free(j);
    free(in.p);
    return ml__exc_raise(L, "MemoryError", "thread job");
  }
  j->in = in.p;
  j->inlen = in.n;
  j->path = dupstr(L, "path");
  j->cpath = dupstr(L, "cpath");
  if (j->path == NULL || j->cpath == NULL) {
    free(j->path);
    free(j->cpath);
    j->path = j->cpath = NULL;
  }
  j->node.fn = job_done;
  j->node.ud = j;
  j->pool = p;
  lua_pushvalue(L, -1);
  j->fref = luaL_ref(L, LUA_REGISTRYINDEX);
  pthread_mutex_lock(&p->mu);
  r = pool_grow(p);
  if (r == 0) {
    if (p->tail) p->tail->next = j;
    else p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
  if (r != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, j->fref);
    ml__wakeup_release(j->wake);
    job_free(j);
    ml__exc_push_errno(L, -r, "starting a worker thread");
    return lua_error(L);
  }
  ml__loop_hold(S);
  return 1;
}

/* ex:shutdown(wait): no new jobs; the queued ones still run.  With wait
 * (the default), blocks until every thread has finished.  -> nothing */
static int ex_shutdown(lua_State *L) {
  Exec *x = check_exec(L);
  Pool *p = x->pool;
  int wait = lua_isnone(L, 2) || lua_toboolean(L, 2);
  if (p == NULL) return 0;
  pthread_mutex_lock(&p->mu);
  if (!p->shutdown) {
    p->shutdown = 1;
    pthread_cond_broadcast(&p->cv);
  }
  while (wait && p->nthreads > 0) pthread_cond_wait(&p->gone, &p->mu);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

/* __gc(ex) -> nothing: shuts down without waiting. */
static int ex_gc(lua_State *L) {
  Exec *x = luaL_testudata(L, 1, ML_EXECUTOR);
  if (x == NULL || x->pool == NULL) return 0;
  lua_settop(L, 1);
  lua_pushboolean(L, 0);
  ex_shutdown(L);
  pool_unref(x->pool);
  x->pool = NULL;
  return 0;
}

/* ex:max_workers() -> integer */
static int ex_max_workers(lua_State *L) {
  Exec *x = check_exec(L);
  lua_pushinteger(L, x->pool ? x->pool->max : 0);
  return 1;
}

/* __tostring(ex) -> string */
static int ex_tostring(lua_State *L) {
  Exec *x = check_exec(L);
  lua_pushfstring(L, "<ThreadPoolExecutor max_workers=%d%s>", x->pool ? x->pool->max : 0,
                  x->pool && !x->pool->shutdown ? "" : " shutdown");
  return 1;
}

/* cpu_count() -> the number of online processors. */
static int l_cpu_count(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

static const luaL_Reg ex_methods[] = {
  {"_submit", ex_submit},
  {"shutdown", ex_shutdown},
  {"max_workers", ex_max_workers},
  {NULL, NULL}
};

static const luaL_Reg funcs[] = {
  {"new", l_new},
  {"cpu_count", l_cpu_count},
  {NULL, NULL}
};

/* [-0, +1] pushes the module table (new, cpu_count, Executor). */
int luaopen_asyncio__thread(lua_State *L) {
  if (luaL_newmetatable(L, ML_EXECUTOR)) {
    luaL_newlib(L, ex_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ex_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ex_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  luaL_getmetatable(L, ML_EXECUTOR);
  lua_setfield(L, -2, "Executor");  /* the metatable: methods in __index */
  return 1;
}
