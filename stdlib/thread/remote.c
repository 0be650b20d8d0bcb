/* remote.c: reaching a loop from a worker thread's Lua state
 * (docs/processes.md, "From a worker back to the loop").
 *
 * A loop copied into a worker (an argument or upvalue of a to_thread
 * function) arrives as a RemoteLoop: a counted reference on its state's
 * wake-up (wakeup.c).  loop:call_soon_threadsafe(fn, ...) copies fn and
 * its arguments (copy.c) into a record sent through that wake-up; the
 * loop's thread copies them into its state and calls fn there, as a
 * callback.  An async function copied into a worker arrives as a
 * RemoteAsync: calling it makes a RemoteCoroutine (the function and its
 * arguments, nothing runs), which only asyncio.run_coroutine_threadsafe
 * (the worker's asyncio module: package.preload) takes: the loop's thread
 * makes the real coroutine, runs it as a task, and settles a
 * ConcurrentFuture (XFut: a mutex, a condition variable and the copied
 * outcome) that the worker may block on with result(timeout).
 *
 * Lifetimes: an XFut is shared by the worker's ConcurrentFuture and the
 * loop side's handle (reference counted); a handle collected before its
 * task finished (its state closed) settles it with an error, so a worker
 * never waits forever on a state that is gone. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "core/module.h"
#include "thread/copy.h"
#include "thread/remote.h"

#define ML_RLOOP "asyncio.RemoteLoop"
#define ML_RCORO "asyncio.RemoteCoroutine"
#define ML_CFUT "asyncio.ConcurrentFuture"
#define ML_CFUT_HANDLE "asyncio._ConcurrentFutureHandle"

/* ---------------------------------------------------------------- */
/* Concurrent futures.                                                 */

enum { XF_PENDING, XF_OK, XF_ERROR };

typedef struct XFut {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_int refs;
  int state;       /* mu */
  ml_Copy out;     /* mu: XF_OK the results */
  char *msg;       /* mu: XF_ERROR the error, as a string */
  ml_Wakeup *home; /* the loop's wake-up: loops in the results go back as it */
} XFut;

static XFut *xf_new(ml_Wakeup *home) {
  XFut *f = calloc(1, sizeof *f);
  if (f == NULL) return NULL;
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->cv, NULL);
  atomic_init(&f->refs, 1);
  f->home = home;
  ml__wakeup_retain(home);
  return f;
}

static void xf_unref(XFut *f) {
  if (f && atomic_fetch_sub(&f->refs, 1) == 1) {
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->out.p);
    free(f->msg);
    ml__wakeup_release(f->home);
    free(f);
  }
}

/* Any thread: settles f once (later calls are ignored): with the results
 * in out (taken over) or, if out is NULL, the error message msg. */
static void xf_settle(XFut *f, ml_Copy *out, const char *msg) {
  pthread_mutex_lock(&f->mu);
  if (f->state == XF_PENDING) {
    if (out) {
      f->state = XF_OK;
      f->out = *out;
      memset(out, 0, sizeof *out);
    } else {
      f->state = XF_ERROR;
      f->msg = strdup(msg);
    }
    pthread_cond_broadcast(&f->cv);
  }
  pthread_mutex_unlock(&f->mu);
  if (out) free(out->p);
}

static void xf_fail(XFut *f, const char *msg) { xf_settle(f, NULL, msg); }

/* [-0, +1] pushes a new userdata of metatable mt holding f (one reference
 * of the caller's, taken over). */
static void push_xf(lua_State *L, const char *mt, XFut *f, const luaL_Reg *methods);

/* The loop side's handle: h:_settle(ok, ...) -> nothing.  ok true: the
 * results follow; false: the error message. */
static int handle_settle(lua_State *L) {
  XFut **h = luaL_checkudata(L, 1, ML_CFUT_HANDLE);
  ml_Copy out = {0};
  int n = lua_gettop(L);
  if (*h == NULL) return 0;
  if (!lua_toboolean(L, 2)) {
    xf_fail(*h, luaL_tolstring(L, 3, NULL));
    return 0;
  }
  out.home = (*h)->home;
  lua_pushcfunction(L, ml__copy_encode_p);
  lua_pushlightuserdata(L, &out);
  lua_pushliteral(L, "result");
  for (int i = 3; i <= n; i++) lua_pushvalue(L, i);
  if (lua_pcall(L, n, 0, 0) != LUA_OK) {
    free(out.p);
    xf_fail(*h, luaL_tolstring(L, -1, NULL));
  } else if (out.oom) {
    free(out.p);
    xf_fail(*h, "MemoryError: the results could not be copied");
  } else {
    xf_settle(*h, &out, NULL);
  }
  return 0;
}

/* __gc of the handle: a task that never finished (its state closed)
 * fails its future, so nobody waits forever. */
static int handle_gc(lua_State *L) {
  XFut **h = luaL_checkudata(L, 1, ML_CFUT_HANDLE);
  if (*h) {
    xf_fail(*h, "RuntimeError: the event loop closed before the coroutine finished");
    xf_unref(*h);
    *h = NULL;
  }
  return 0;
}

static const luaL_Reg handle_methods[] = {
  {"_settle", handle_settle},
  {NULL, NULL},
};

/* [-0, +0] waits until f is settled or timeout (seconds, < 0: forever)
 * passes; returns f's state (XF_PENDING on a timeout). */
static int xf_wait(XFut *f, double timeout) {
  int st;
  struct timespec until;
  if (timeout >= 0) {
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)timeout;
    until.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
  }
  pthread_mutex_lock(&f->mu);
  while (f->state == XF_PENDING) {
    if (timeout < 0) pthread_cond_wait(&f->cv, &f->mu);
    else if (pthread_cond_timedwait(&f->cv, &f->mu, &until) == ETIMEDOUT) break;
  }
  st = f->state;
  pthread_mutex_unlock(&f->mu);
  return st;
}

/* [-0, +0] the timeout argument at idx: nil (forever) or seconds >= 0. */
static double opt_timeout(lua_State *L, int idx) {
  double t;
  if (lua_isnoneornil(L, idx)) return -1;
  t = luaL_checknumber(L, idx);
  luaL_argcheck(L, t >= 0, idx, "timeout must be non-negative");
  return t;
}

/* [-0, +n] decodes f's settled outcome into L; returns how many values. */
static int xf_push(lua_State *L, XFut *f) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, ml__copy_decode_p);
  lua_pushlightuserdata(L, f->out.p);
  lua_pushinteger(L, (lua_Integer)f->out.n);
  lua_call(L, 2, LUA_MULTRET); /* the copy was made for this: it decodes */
  return lua_gettop(L) - top;
}

/* cf:result([timeout]) -> the coroutine's results; raises its error (a
 * string, "ValueError: ..."), or "TimeoutError: ..." after timeout
 * seconds. */
static int cfut_result(lua_State *L) {
  XFut **h = luaL_checkudata(L, 1, ML_CFUT);
  int st = xf_wait(*h, opt_timeout(L, 2));
  lua_settop(L, 1);
  if (st == XF_PENDING) return luaL_error(L, "TimeoutError: the coroutine did not finish in time");
  if (st == XF_ERROR) {
    lua_pushstring(L, (*h)->msg ? (*h)->msg : "MemoryError: not enough memory");
    return lua_error(L);
  }
  return xf_push(L, *h);
}

/* cf:exception([timeout]) -> the error message, or nil */
static int cfut_exception(lua_State *L) {
  XFut **h = luaL_checkudata(L, 1, ML_CFUT);
  int st = xf_wait(*h, opt_timeout(L, 2));
  lua_settop(L, 1);
  if (st == XF_PENDING) return luaL_error(L, "TimeoutError: the coroutine did not finish in time");
  if (st == XF_ERROR) lua_pushstring(L, (*h)->msg ? (*h)->msg : "MemoryError: not enough memory");
  else lua_pushnil(L);
  return 1;
}

/* cf:done() -> boolean */
static int cfut_done(lua_State *L) {
  XFut **h = luaL_checkudata(L, 1, ML_CFUT);
  int st;
  pthread_mutex_lock(&(*h)->mu);
  st = (*h)->state;
  pthread_mutex_unlock(&(*h)->mu);
  lua_pushboolean(L, st != XF_PENDING);
  return 1;
}

static int cfut_gc(lua_State *L) {
  XFut **h = luaL_checkudata(L, 1, ML_CFUT);
  xf_unref(*h);
  *h = NULL;
  return 0;
}

static int cfut_tostring(lua_State *L) {
  XFut **h = luaL_checkudata(L, 1, ML_CFUT);
  int st;
  pthread_mutex_lock(&(*h)->mu);
  st = (*h)->state;
  pthread_mutex_unlock(&(*h)->mu);
  lua_pushfstring(L, "<ConcurrentFuture %s>",
                  st == XF_PENDING ? "pending"
                  : st == XF_OK    ? "finished"
                                   : "failed");
  return 1;
}

static const luaL_Reg cfut_methods[] = {
  {"result", cfut_result},
  {"exception", cfut_exception},
  {"done", cfut_done},
  {NULL, NULL},
};

static void push_xf(lua_State *L, const char *mt, XFut *f, const luaL_Reg *methods) {
  XFut **h = lua_newuserdatauv(L, sizeof *h, 0);
  *h = f;
  if (methods == handle_methods) ml__class_new(L, mt, methods, handle_gc, NULL);
  else ml__class_new(L, mt, methods, cfut_gc, cfut_tostring);
  luaL_setmetatable(L, mt);
}

/* ---------------------------------------------------------------- */
/* Remote loops.                                                       */

typedef struct RLoop {
  ml_Wakeup *w;
} RLoop;

/* A record sent to the loop: a copy of values, and for
 * run_coroutine_threadsafe the future to settle. */
typedef struct Sent {
  ml_WakeNode node;
  ml_Copy in;
  XFut *f;
} Sent;

static const char spawner_key = 0;

/* [-0, +n] decodes s->in into the loop's state; returns how many values,
 * or -1 with the error on the stack. */
static int sent_decode(lua_State *L, Sent *s) {
  int top = lua_gettop(L);
  lua_pushcfunction(L, ml__copy_decode_p);
  lua_pushlightuserdata(L, s->in.p);
  lua_pushinteger(L, (lua_Integer)s->in.n);
  if (lua_pcall(L, 2, LUA_MULTRET, 0) != LUA_OK) return -1;
  return lua_gettop(L) - top;
}

static void sent_free(Sent *s) {
  free(s->in.p);
  xf_unref(s->f);
  free(s);
}

/* Loop thread: fn(...) of a call_soon_threadsafe, as a callback. */
static void call_run(ml_State *S, void *ud) {
  Sent *s = ud;
  lua_State *L;
  int top, n;
  if (S == NULL) {
    sent_free(s);
    return;
  }
  L = ml__main_lua(S);
  top = lua_gettop(L);
  n = sent_decode(L, s);
  if (n < 0) {
    /* Report it as a failed callback would be. */
    lua_pushcfunction(L, lua_error);
    lua_insert(L, -2);
    ml__callback(L, 1, "call_soon_threadsafe from a worker thread");
  } else if (n > 0) {
    ml__callback(L, n - 1, "call_soon_threadsafe callback");
  }
  lua_settop(L, top);
  sent_free(s);
}

/* Loop thread: the coroutine of a run_coroutine_threadsafe becomes a task
 * (the spawner of asyncio.threads); the handle settles s->f. */
static void coro_run(ml_State *S, void *ud) {
  Sent *s = ud;
  lua_State *L;
  int top, n;
  if (S == NULL) {
    xf_fail(s->f, "RuntimeError: the event loop closed before the coroutine ran");
    sent_free(s);
    return;
  }
  L = ml__main_lua(S);
  top = lua_gettop(L);
  n = sent_decode(L, s); /* name, fn, args... */
  if (n < 2) {
    xf_fail(s->f, n < 0 ? luaL_tolstring(L, -1, NULL) : "RuntimeError: corrupt copy");
    lua_settop(L, top);
    sent_free(s);
    return;
  }
  /* [name, fn, args...] -> spawner(handle, __ml_async(name, fn), args...) */
  lua_getglobal(L, "__ml_async");
  lua_pushvalue(L, top + 1);
  lua_pushvalue(L, top + 2);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    xf_fail(s->f, luaL_tolstring(L, -1, NULL));
    lua_settop(L, top);
    sent_free(s);
    return;
  }
  lua_replace(L, top + 2);
  atomic_fetch_add(&s->f->refs, 1);
  push_xf(L, ML_CFUT_HANDLE, s->f, handle_methods);
  lua_replace(L, top + 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &spawner_key);
  lua_insert(L, top + 1);
  ml__callback(L, n, "run_coroutine_threadsafe"); /* the spawner settles the handle on error */
  lua_settop(L, top);
  sent_free(s);
}

/* [-0, +0] copies values first..top into a new Sent for r and sends it
 * with fn; raises what the copy raises, or RuntimeError if the loop's
 * state has closed.  Takes over f (may be NULL). */
static void send(lua_State *L, RLoop *r, int first, ml_WakeFn fn, XFut *f) {
  Sent *s;
  int top = lua_gettop(L);
  ml_Copy in = {0};
  in.home = r->w;
  if (!ml__copy_fast(L, &in, first, top, 0)) {
    lua_pushcfunction(L, ml__copy_encode_p);
    lua_pushlightuserdata(L, &in);
    lua_pushliteral(L, "argument");
    for (int i = first; i <= top; i++) lua_pushvalue(L, i);
    if (lua_pcall(L, top - first + 3, 0, 0) != LUA_OK) {
      free(in.p);
      xf_unref(f);
      lua_error(L);
    }
  }
  if (in.oom || (s = calloc(1, sizeof *s)) == NULL) {
    free(in.p);
    xf_unref(f);
    luaL_error(L, "MemoryError: not enough memory");
    return;
  }
  s->in = in;
  s->f = f;
  s->node.fn = fn;
  s->node.ud = s;
  if (ml__wakeup_send(r->w, &s->node) != 0) {
    sent_free(s);
    luaL_error(L, "RuntimeError: Event loop is closed");
  }
}

static void fut_run(ml_State *S, void *ud);

/* Protected: rfut_send_p(rloop, op, ref) sends a RemoteFuture's
 * operation (from __gc, which must not raise). */
static int rfut_send_p(lua_State *L) {
  RLoop *r = lua_touserdata(L, 1);
  send(L, r, 2, fut_run, NULL);
  return 0;
}

/* loop:call_soon_threadsafe(fn, ...) -> nothing: fn(...) runs on the
 * loop's thread, copied there. */
static int rloop_call_soon_threadsafe(lua_State *L) {
  RLoop *r = luaL_checkudata(L, 1, ML_RLOOP);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  send(L, r, 2, call_run, NULL);
  return 0;
}

/* loop:is_closed() -> boolean */
static int rloop_is_closed(lua_State *L) {
  RLoop *r = luaL_checkudata(L, 1, ML_RLOOP);
  lua_pushboolean(L, ml__wakeup_closed(r->w));
  return 1;
}

static int rloop_gc(lua_State *L) {
  RLoop *r = luaL_checkudata(L, 1, ML_RLOOP);
  ml__wakeup_release(r->w);
  r->w = NULL;
  return 0;
}

static int rloop_tostring(lua_State *L) {
  luaL_checkudata(L, 1, ML_RLOOP);
  lua_pushliteral(L, "<RemoteLoop: a loop of another thread>");
  return 1;
}

static const luaL_Reg rloop_methods[] = {
  {"call_soon_threadsafe", rloop_call_soon_threadsafe},
  {"is_closed", rloop_is_closed},
  {NULL, NULL},
};

void ml__remote_push_loop(lua_State *L, ml_Wakeup *w) {
  RLoop *r = lua_newuserdatauv(L, sizeof *r, 0);
  r->w = w;
  ml__wakeup_retain(w);
  ml__class_new(L, ML_RLOOP, rloop_methods, rloop_gc, rloop_tostring);
  luaL_setmetatable(L, ML_RLOOP);
}

ml_Wakeup *ml__remote_test_loop(lua_State *L, int idx) {
  RLoop *r = luaL_testudata(L, idx, ML_RLOOP);
  return r ? r->w : NULL;
}

/* ---------------------------------------------------------------- */
/* Remote futures: a Future of the loop's state, in a worker.          */

#define ML_RFUT "asyncio.RemoteFuture"

typedef struct RFut {
  ml_Wakeup *w;
  int ref; /* the Future in its state's registry */
} RFut;

enum { OP_RESULT, OP_EXCEPTION, OP_CANCEL, OP_UNREF };

/* Loop thread: the operation of a RemoteFuture.  The record's values are
 * [op, ref, values...]. */
static void fut_run(ml_State *S, void *ud) {
  Sent *s = ud;
  lua_State *L;
  int top, n, op, ref;
  if (S == NULL) {
    sent_free(s);
    return;
  }
  L = ml__main_lua(S);
  top = lua_gettop(L);
  n = sent_decode(L, s);
  if (n < 2) {
    if (n < 0) ml__report(L, "a RemoteFuture's operation from a worker thread");
    lua_settop(L, top);
    sent_free(s);
    return;
  }
  op = (int)lua_tointeger(L, top + 1);
  ref = (int)lua_tointeger(L, top + 2);
  if (op == OP_UNREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
  } else {
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_replace(L, top + 2);
    /* A future done meanwhile (cancelled by its awaiter) ignores it, as
     * Python's call_soon_threadsafe(fut.set_result, ...) would raise
     * InvalidStateError in a callback nobody sees. */
    if (ml__future_state(ml__future_test(L, top + 2)) == ML_PENDING) {
      if (op == OP_RESULT) ml__future_set_result(L, top + 2, n - 2);
      else if (op == OP_EXCEPTION) {
        lua_settop(L, top + 3);
        ml__future_set_exception(L, top + 2);
      } else ml__future_cancel(L, top + 2, NULL);
    }
  }
  lua_settop(L, top);
  sent_free(s);
}

/* [-0, +0] sends op on the Future of f with the values from idx on. */
static void fut_send(lua_State *L, RFut *f, int op, int from) {
  RLoop r = {f->w};
  int n = lua_gettop(L);
  lua_pushinteger(L, op);
  lua_pushinteger(L, f->ref);
  for (int i = from; i <= n; i++) lua_pushvalue(L, i);
  send(L, &r, n + 1, fut_run, NULL);
  lua_settop(L, n);
}

/* fut:set_result(...) -> nothing, on the loop's thread (thread-safe) */
static int rfut_set_result(lua_State *L) {
  fut_send(L, luaL_checkudata(L, 1, ML_RFUT), OP_RESULT, 2);
  return 0;
}

/* fut:set_exception(e) -> nothing, on the loop's thread */
static int rfut_set_exception(lua_State *L) {
  RFut *f = luaL_checkudata(L, 1, ML_RFUT);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  fut_send(L, f, OP_EXCEPTION, 2);
  return 0;
}

/* fut:cancel() -> nothing, on the loop's thread */
static int rfut_cancel(lua_State *L) {
  RFut *f = luaL_checkudata(L, 1, ML_RFUT);
  lua_settop(L, 1);
  fut_send(L, f, OP_CANCEL, 2);
  return 0;
}

/* __gc: the loop's state lets go of the Future (if it is still there). */
static int rfut_gc(lua_State *L) {
  RFut *f = luaL_checkudata(L, 1, ML_RFUT);
  if (f->w) {
    lua_settop(L, 1);
    if (!ml__wakeup_closed(f->w)) {
      RLoop r = {f->w};
      lua_pushinteger(L, OP_UNREF);
      lua_pushinteger(L, f->ref);
      lua_pushcfunction(L, rfut_send_p);
      lua_insert(L, 2);
      lua_pushlightuserdata(L, &r);
      lua_insert(L, 3);
      lua_pcall(L, 3, 0, 0); /* out of memory: the reference stays (the state frees it on close) */
    }
    ml__wakeup_release(f->w);
    f->w = NULL;
  }
  return 0;
}

static int rfut_tostring(lua_State *L) {
  luaL_checkudata(L, 1, ML_RFUT);
  lua_pushliteral(L, "<RemoteFuture: a Future of another thread's loop>");
  return 1;
}

static const luaL_Reg rfut_methods[] = {
  {"set_result", rfut_set_result},
  {"set_exception", rfut_set_exception},
  {"cancel", rfut_cancel},
  {NULL, NULL},
};

void ml__remote_push_future(lua_State *L, ml_Wakeup *w, int ref) {
  RFut *f = lua_newuserdatauv(L, sizeof *f, 0);
  f->w = w;
  f->ref = ref;
  ml__wakeup_retain(w);
  ml__class_new(L, ML_RFUT, rfut_methods, rfut_gc, rfut_tostring);
  luaL_setmetatable(L, ML_RFUT);
}

ml_Wakeup *ml__remote_test_future(lua_State *L, int idx, int *ref) {
  RFut *f = luaL_testudata(L, idx, ML_RFUT);
  if (f == NULL || f->w == NULL) return NULL;
  *ref = f->ref;
  return f->w;
}

/* ---------------------------------------------------------------- */
/* Async functions and coroutines in a worker.                         */

static const luaL_Reg no_methods[] = {{NULL, NULL}};

/* A copied async function: calling it makes a RemoteCoroutine of its two
 * upvalues (name, fn) and the arguments (a table {n = count, ...}). */
int ml__remote_async_call(lua_State *L) {
  int n = lua_gettop(L);
  lua_newuserdatauv(L, 1, 3);
  ml__class_new(L, ML_RCORO, no_methods, NULL, NULL);
  luaL_setmetatable(L, ML_RCORO);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setiuservalue(L, -2, 2);
  lua_createtable(L, n, 1);
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  lua_setiuservalue(L, -2, 3);
  return 1;
}

/* asyncio.run_coroutine_threadsafe(coro, loop) -> ConcurrentFuture, in a
 * worker: coro (a copied async function's call) runs as a task on loop. */
static int w_run_coroutine_threadsafe(lua_State *L) {
  RLoop *r;
  XFut *f;
  lua_Integer n;
  luaL_checkudata(L, 1, ML_RCORO);
  r = luaL_checkudata(L, 2, ML_RLOOP);
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, 1); /* name */
  lua_getiuservalue(L, 1, 2); /* fn */
  lua_getiuservalue(L, 1, 3);
  lua_getfield(L, -1, "n");
  n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, (int)n + 8, "too many arguments");
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, 5, i);
  lua_remove(L, 5);
  if ((f = xf_new(r->w)) == NULL) return luaL_error(L, "MemoryError: not enough memory");
  atomic_fetch_add(&f->refs, 1); /* one for the record, one for the future */
  push_xf(L, ML_CFUT, f, cfut_methods);
  lua_replace(L, 1);
  send(L, r, 3, coro_run, f);
  lua_settop(L, 1);
  return 1;
}

/* package.preload.asyncio of a worker: what of asyncio a thread has. */
static int open_worker_asyncio(lua_State *L) {
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, w_run_coroutine_threadsafe);
  lua_setfield(L, -2, "run_coroutine_threadsafe");
  return 1;
}

void ml__remote_worker_open(lua_State *W) {
  luaL_getsubtable(W, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(W, open_worker_asyncio);
  lua_setfield(W, -2, "asyncio");
  lua_pop(W, 1);
}

/* _set_spawner(fn) -> nothing: fn(handle, coro) makes the task of a
 * worker's run_coroutine_threadsafe and settles the handle when it ends. */
static int l_set_spawner(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &spawner_key);
  return 0;
}

static const luaL_Reg remote_funcs[] = {
  {"_set_spawner", l_set_spawner},
  {NULL, NULL},
};

void ml__remote_open(lua_State *L) { luaL_setfuncs(L, remote_funcs, 0); }
