/* future.c: asyncio.Future, a userdata whose completion wakes tasks. */
#include <errno.h>
#include <string.h>
#include "task.h"
#include "coro.h"
#include "loop.h"
#include "exc.h"

/* [-0, +1] pushes a new zeroed future (or task, is_task) userdata of
 * size bytes and nuv user values. */
ml_Future *ml__future_alloc(lua_State *L, size_t size, int nuv, int is_task) {
  ml_State *S = ml__state(L);
  ml_Future *f = lua_newuserdatauv(L, size, nuv);
  memset(f, 0, size);
  f->S = S;
  lua_rawgeti(L, LUA_REGISTRYINDEX, S->udata_mtref[is_task ? ML_UT_TASK : ML_UT_FUTURE]);
  lua_setmetatable(L, -2);
  return f;
}

/* [-0, +1] pushes a new pending Future. */
ml_Future *ml__future_new(lua_State *L) {
  return ml__future_alloc(L, sizeof(ml_Future), FUV_NFUTURE, 0);
}

/* [-0, +0] the future or task at idx, or NULL. */
ml_Future *ml__future_test(lua_State *L, int idx) {
  ml_Future *f = lua_touserdata(L, idx);
  const void *mt;
  if (f == NULL || !lua_getmetatable(L, idx)) return NULL;
  mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  return ml__is_future_mt(ml__state(L), mt) ? f : NULL;
}

/* [-0, +0] the same, or a type error. */
static ml_Future *check_future(lua_State *L, int idx) {
  ml_Future *f = ml__future_test(L, idx);
  if (f == NULL) luaL_typeerror(L, idx, "Future");
  return f;
}

int ml__future_state(const ml_Future *f) { return f->state; }

/* [-0, +1] pushes field key of the extra table of the future at idx
 * (nil if it has none); returns its type. */
int ml__xget(lua_State *L, int idx, int key) {
  ml_Future *f = lua_touserdata(L, idx);
  int t;
  if (!f->has_extra) {
    lua_pushnil(L);
    return LUA_TNIL;
  }
  lua_getiuservalue(L, idx, FUV_MISC);
  t = lua_rawgeti(L, -1, key);
  lua_remove(L, -2);
  return t;
}

/* [-1, +0] pops the value on top into field key of the extra table of
 * the future at idx (made on first need). */
void ml__xset(lua_State *L, int idx, int key) {
  ml_Future *f = lua_touserdata(L, idx);
  idx = lua_absindex(L, idx);
  if (!f->has_extra) {
    if (lua_isnil(L, -1)) { /* nothing to clear */
      lua_pop(L, 1);
      return;
    }
    /* Make the table, and move the callbacks into it. */
    lua_createtable(L, X_CBS, 0);
    lua_getiuservalue(L, idx, FUV_MISC);
    lua_rawseti(L, -2, X_CBS);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, idx, FUV_MISC);
    f->has_extra = 1;
  } else {
    lua_getiuservalue(L, idx, FUV_MISC);
  }
  lua_insert(L, -2);
  lua_rawseti(L, -2, key);
  lua_pop(L, 1);
}

/* [-0, +1] pushes the done callbacks of the future f at fidx (nil, one
 * callback, or a list: see FUV_MISC). */
static void cbs_get(lua_State *L, int fidx, ml_Future *f) {
  lua_getiuservalue(L, fidx, FUV_MISC);
  if (f->has_extra) {
    lua_rawgeti(L, -1, X_CBS);
    lua_remove(L, -2);
  }
}

/* [-1, +0] pops the value at top into f's done callbacks. */
static void cbs_set(lua_State *L, int fidx, ml_Future *f) {
  if (f->has_extra) {
    lua_getiuservalue(L, fidx, FUV_MISC);
    lua_insert(L, -2);
    lua_rawseti(L, -2, X_CBS);
    lua_pop(L, 1);
  } else {
    lua_setiuservalue(L, fidx, FUV_MISC);
  }
}

/* The record (module.h, ml_DoneCb) at idx, of Lua type tp, or NULL.  A
 * callback list holds functions, tasks (waiters) and records: a light
 * userdata is a record, and a full one that is not a Task.  A record
 * without a metatable (gather's) is told in one API call.
 * [-0, +0] */
static ml_DoneCb *test_done_cb(lua_State *L, int idx, int tp, ml_State *S) {
  if (tp == LUA_TUSERDATA) {
    if (lua_getmetatable(L, idx)) {
      const void *mt = lua_topointer(L, -1);
      lua_pop(L, 1);
      if (mt == S->udata_mt[ML_UT_TASK]) return NULL;
    }
  } else if (tp != LUA_TLIGHTUSERDATA) {
    return NULL;
  }
  return lua_touserdata(L, idx);
}

/* [-0, +0] wakes the done future's waiter and queues its callbacks (a
 * lone C record runs now). */
void ml__future_schedule(lua_State *L, int fidx, ml_Future *f) {
  ml_Task *t = f->waiter;
  if (t) {
    f->waiter = NULL;
    if (ml__task_awaits(t, f)) ml__task_wake(t);
  }
  if (f->ncallbacks == 1 && !f->cb_queued && f->is_task && ((ml_Task *)f)->ref != LUA_NOREF) {
    /* A task finishing whose one callback is a C record (a gather's
     * child): the record runs now rather than from the ready queue, as no
     * script runs in between (a gather's outer future may be done an
     * iteration sooner than asyncio's; its awaiters still wake through
     * the queue).  A queued callback entry costs more than the record
     * (docs/performance.md, "Tasks (gather)"). */
    ml_DoneCb *rec;
    cbs_get(L, fidx, f);
    if ((rec = test_done_cb(L, -1, lua_type(L, -1), f->S)) != NULL) {
      lua_pushnil(L); /* the stack anchors the record from here on */
      cbs_set(L, fidx, f);
      f->ncallbacks = 0;
      rec->fn(L, rec, fidx);
      lua_pop(L, 1);
      return;
    }
    lua_pop(L, 1);
  }
  if (f->ncallbacks > 0 && !f->cb_queued) {
    ml_Entry e;
    e.kind = ML_RUN_FUTURE_CALLBACKS;
    e.p = f;
    if (f->is_task && ((ml_Task *)f)->ref != LUA_NOREF) {
      /* A task completes only as it finishes, when its own reference is
       * let go: the entry takes it over (one ml__ref and unref fewer). */
      e.ref = ((ml_Task *)f)->ref;
      ((ml_Task *)f)->ref = LUA_NOREF;
    } else {
      lua_pushvalue(L, fidx);
      e.ref = ml__ref(L);
    }
    if (ml__readyq_push(&f->S->ready, e) < 0) {
      ml__unref(L, e.ref);
      luaL_error(L, "not enough memory");
    }
    f->cb_queued = 1;
  }
}

/* The done callbacks are kept in FUV_MISC: the callback itself while
 * there is one (a gather's child, a task awaiting it), a list from the
 * second on: no table per future (docs/performance.md, "Tasks (gather)"). */

/* Runs or wakes callback cb (at the top) of the done future at fidx.
 * [-1, +0] */
static void run_callback(lua_State *L, int fidx, ml_Future *f) {
  int tp = lua_type(L, -1);
  ml_DoneCb *rec;
  if (tp == LUA_TFUNCTION) {
    lua_pushvalue(L, fidx);
    ml__callback(L, 1, "done callback");
  } else if ((rec = test_done_cb(L, -1, tp, f->S)) != NULL) {
    rec->fn(L, rec, fidx);
    lua_pop(L, 1);
  } else {
    /* A task that awaits f is woken if it still does. */
    ml_Task *t = lua_touserdata(L, -1);
    if (ml__task_awaits(t, f)) ml__task_wake(t);
    lua_pop(L, 1);
  }
}

/* [-1, +0] pops the future on top and runs its done callbacks. */
void ml__future_run_callbacks(lua_State *L) {
  int fidx = lua_gettop(L), i, n;
  ml_Future *f = lua_touserdata(L, fidx);
  f->cb_queued = 0;
  /* Take the list: callbacks added while these run form a new one. */
  n = f->ncallbacks;
  f->ncallbacks = 0;
  if (n == 0) {
    lua_settop(L, fidx - 1);
    return;
  }
  cbs_get(L, fidx, f);
  lua_pushnil(L);
  cbs_set(L, fidx, f);
  if (n == 1) {
    run_callback(L, fidx, f);
  } else {
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, fidx + 1, i);
      run_callback(L, fidx, f);
    }
  }
  lua_settop(L, fidx - 1);
}

/* Moves the pending future at fidx to state st.  [-0, +0] */
static void complete(lua_State *L, int fidx, ml_Future *f, int st) {
  f->state = st;
  ml__future_schedule(L, fidx, f);
}

/* ---- exceptions nobody retrieves ----
 * asyncio reports, when a failed future is collected, an exception nobody
 * looked at.  Futures and tasks have no __gc: a finaliser costs every one
 * of them a second GC cycle and a place in a list each cycle walks, and
 * giving one to an existing object (lua_setmetatable) makes Lua search
 * its list of all objects for it, so failing many old futures was
 * quadratic.  A future that fails gets a sentinel instead: a small new
 * userdata with __gc, in its extra table, holding what the report needs
 * (the exception, a task's traceback, the report's words).  Only the
 * future refers to it, so it is collected with it; retrieving the
 * exception disarms it. */

typedef struct Sentinel {
  unsigned char armed;
} Sentinel;
enum { SUV_EXC = 1, SUV_TB, SUV_WHAT, SUV_N = SUV_WHAT };

/* __gc(sentinel) -> nothing; reports the exception if still armed. */
static int sentinel_gc(lua_State *L) {
  Sentinel *s = ml__udata_test(L, 1, ML_UT_SENTINEL); /* a script may call __gc on anything */
  if (s == NULL || !s->armed) return 0;
  s->armed = 0;
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, SUV_EXC);
  if (lua_getiuservalue(L, 1, SUV_TB) == LUA_TSTRING) {
    lua_pushfstring(L, "%s\n%s", luaL_tolstring(L, 2, NULL), lua_tostring(L, 3));
    lua_replace(L, 2);
  }
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, SUV_WHAT);
  lua_insert(L, 2); /* [sentinel, what, error] */
  ml__report(L, lua_tostring(L, 2));
  return 0;
}

/* Gives the future at fidx, which just failed, an armed sentinel.
 * [-0, +0] */
static void arm_sentinel(lua_State *L, int fidx, ml_Future *f) {
  Sentinel *s = lua_newuserdatauv(L, sizeof *s, SUV_N);
  s->armed = 1;
  ml__udata_setmt(L, ML_UT_SENTINEL); /* a new object: no search */
  lua_getiuservalue(L, fidx, FUV_RESULT);
  lua_setiuservalue(L, -2, SUV_EXC);
  if (f->is_task) {
    ml_Task *t = (ml_Task *)f;
    ml__xget(L, fidx, X_TB);
    lua_setiuservalue(L, -2, SUV_TB);
    if (ml__xget(L, fidx, X_NAME) == LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushfstring(L, "Task-%I", (lua_Integer)t->id);
    }
    lua_pushfstring(L, "Task exception was never retrieved (task '%s')", lua_tostring(L, -1));
    lua_remove(L, -2);
  } else {
    lua_pushliteral(L, "Future exception was never retrieved");
  }
  lua_setiuservalue(L, -2, SUV_WHAT);
  ml__xset(L, fidx, X_SENTINEL);
  f->log_exc = 1;
}

void ml__future_report_now(lua_State *L, int fidx, ml_Future *f) {
  fidx = lua_absindex(L, fidx);
  if (!f->log_exc || !lua_checkstack(L, 4)) return;
  lua_pushcfunction(L, sentinel_gc);
  if (ml__xget(L, fidx, X_SENTINEL) != LUA_TUSERDATA) {
    lua_pop(L, 2);
    return;
  }
  f->log_exc = 0;
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1); /* out of memory: unreported */
}

/* [-0, +0] disarms the future's sentinel: its exception was seen. */
void ml__future_retrieved(lua_State *L, int fidx, ml_Future *f) {
  if (!f->log_exc) return;
  f->log_exc = 0;
  if (ml__xget(L, fidx, X_SENTINEL) == LUA_TUSERDATA) {
    Sentinel *s = lua_touserdata(L, -1);
    s->armed = 0;
  }
  lua_pop(L, 1);
}

/* [-n, +0] pops the n results into the pending future at fidx and
 * completes it; -EINVAL (results popped) if it is done already. */
int ml__future_set_result(lua_State *L, int fidx, int n) {
  ml_Future *f = lua_touserdata(L, fidx);
  fidx = lua_absindex(L, fidx);
  if (f->state != ML_PENDING) {
    lua_pop(L, n);
    return -EINVAL;
  }
  if (n == 1) {
    lua_setiuservalue(L, fidx, FUV_RESULT);
  } else if (n > 1) {
    int i;
    lua_createtable(L, n, 0);
    lua_insert(L, -n - 1);
    for (i = n; i >= 1; i--) lua_rawseti(L, -i - 1, i);
    lua_setiuservalue(L, fidx, FUV_RESULT);
  }
  f->nres = n;
  complete(L, fidx, f, ML_RESULT);
  return 0;
}

/* [-1, +0] pops the exception into the pending future at fidx and
 * completes it; -EINVAL (popped) if it is done already. */
int ml__future_set_exception(lua_State *L, int fidx) {
  ml_Future *f = lua_touserdata(L, fidx);
  fidx = lua_absindex(L, fidx);
  if (f->state != ML_PENDING) {
    lua_pop(L, 1);
    return -EINVAL;
  }
  lua_setiuservalue(L, fidx, FUV_RESULT);
  arm_sentinel(L, fidx, f);
  complete(L, fidx, f, ML_EXCEPTION);
  return 0;
}

/* [-0, +0] cancels the future at fidx (message at msgidx, 0: none);
 * returns whether it took the request. */
int ml__future_cancel_msg(lua_State *L, int fidx, int msgidx) {
  ml_Future *f = lua_touserdata(L, fidx);
  fidx = lua_absindex(L, fidx);
  if (msgidx) msgidx = lua_absindex(L, msgidx);
  if (f->state != ML_PENDING) return 0;
  if (f->is_task) {
    /* A task is cancelled by asking it: CancelledError is raised where it
     * waits, and it finishes (cancelled) once it has unwound. */
    return ml__task_cancel(L, (ml_Task *)f, msgidx);
  }
  if (f->has_cancel_hook) {
    /* A composite future (gather) passes the cancellation on to its
     * children and completes when they have finished. */
    int r;
    ml__xget(L, fidx, X_CANCEL_HOOK);
    lua_pushvalue(L, fidx);
    if (msgidx) lua_pushvalue(L, msgidx);
    else lua_pushnil(L);
    lua_call(L, 2, 1);
    r = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return r;
  }
  if (msgidx && !lua_isnil(L, msgidx)) {
    lua_pushvalue(L, msgidx);
    ml__xset(L, fidx, X_MSG);
  }
  complete(L, fidx, f, ML_CANCELLED);
  return 1;
}

/* [-0, +0] the same with a C string message (NULL: none). */
int ml__future_cancel(lua_State *L, int fidx, const char *msg) {
  int r;
  fidx = lua_absindex(L, fidx);
  if (msg == NULL) return ml__future_cancel_msg(L, fidx, 0);
  lua_pushstring(L, msg);
  r = ml__future_cancel_msg(L, fidx, lua_gettop(L));
  lua_pop(L, 1);
  return r;
}

/* [-0, +1] pushes the CancelledError a cancelled future raises: the one a
 * task was cancelled with, or a new one carrying the cancel message. */
void ml__future_push_cancelled(lua_State *L, int fidx) {
  if (lua_getiuservalue(L, fidx, FUV_RESULT) != LUA_TNIL) return;
  lua_pop(L, 1);
  ml__xget(L, fidx, X_MSG);
  ml__exc_push_with(L, "CancelledError");
}

/* [-0, +nres] pushes the results of the done future at fidx and returns
 * how many; raises its exception, CancelledError or InvalidStateError. */
int ml__future_unwrap(lua_State *L, int fidx) {
  ml_Future *f = lua_touserdata(L, fidx);
  fidx = lua_absindex(L, fidx);
  switch (f->state) {
  case ML_RESULT:
    if (f->nres == 1) {
      lua_getiuservalue(L, fidx, FUV_RESULT);
    } else if (f->nres > 1) {
      int i, n = f->nres;
      luaL_checkstack(L, n + 1, "too many results");
      lua_getiuservalue(L, fidx, FUV_RESULT);
      for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
      lua_remove(L, -n - 1);
    }
    return f->nres;
  case ML_EXCEPTION:
    ml__future_retrieved(L, fidx, f);
    lua_getiuservalue(L, fidx, FUV_RESULT);
    if (f->is_task) {
      /* Remember where it came from, so a traceback can show the chain. */
      ml_Task *t = ml__task_current(L);
      if (t && t != (ml_Task *)f) {
        ml__task_push(L, t);
        lua_pushvalue(L, -2);
        ml__xset(L, -2, X_CAUSE_EXC);
        ml__xget(L, fidx, X_TB);
        ml__xset(L, -2, X_CAUSE_TB);
        lua_pop(L, 1);
      }
    }
    return lua_error(L);
  case ML_CANCELLED: ml__future_push_cancelled(L, fidx); return lua_error(L);
  default: return ml__exc_raise(L, "InvalidStateError", "Result is not set.");
  }
}

/* ---- Lua methods ---- */

/* Future() -> future */
static int future_new(lua_State *L) {
  ml__future_new(L);
  return 1;
}

/* f:result() -> the results */
static int future_result(lua_State *L) {
  check_future(L, 1);
  return ml__future_unwrap(L, 1);
}

/* f:exception() -> exception | nil */
static int future_exception(lua_State *L) {
  ml_Future *f = check_future(L, 1);
  switch (f->state) {
  case ML_PENDING: return ml__exc_raise(L, "InvalidStateError", "Exception is not set.");
  case ML_CANCELLED: ml__future_push_cancelled(L, 1); return lua_error(L);
  case ML_EXCEPTION:
    ml__future_retrieved(L, 1, f);
    lua_getiuservalue(L, 1, FUV_RESULT);
    return 1;
  default: lua_pushnil(L); return 1;
  }
}

/* f:set_result(...) -> nothing */
static int future_set_result(lua_State *L) {
  ml_Future *f = check_future(L, 1);
  if (f->is_task)
    return ml__exc_raise(L, "RuntimeError", "Task does not support set_result operation");
  if (ml__future_set_result(L, 1, lua_gettop(L) - 1) < 0)
    return ml__exc_raise(L, "InvalidStateError", "invalid state: the future is already done");
  return 0;
}

/* f:set_exception(exc) -> nothing */
static int future_set_exception(lua_State *L) {
  ml_Future *f = check_future(L, 1);
  if (f->is_task)
    return ml__exc_raise(L, "RuntimeError", "Task does not support set_exception operation");
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  if (ml__future_set_exception(L, 1) < 0)
    return ml__exc_raise(L, "InvalidStateError", "invalid state: the future is already done");
  return 0;
}

/* f:done() -> boolean */
static int future_done(lua_State *L) {
  lua_pushboolean(L, check_future(L, 1)->state != ML_PENDING);
  return 1;
}

/* f:cancelled() -> boolean */
static int future_cancelled(lua_State *L) {
  lua_pushboolean(L, check_future(L, 1)->state == ML_CANCELLED);
  return 1;
}

/* f:cancel(msg) -> boolean */
static int future_cancel(lua_State *L) {
  check_future(L, 1);
  lua_settop(L, 2);
  lua_pushboolean(L, ml__future_cancel_msg(L, 1, 2));
  return 1;
}

/* Appends the value at top to the callback list.  [-1, +0] */
static void add_callback(lua_State *L, int fidx, ml_Future *f) {
  if (f->ncallbacks == 1) { /* the second: make the list */
    lua_createtable(L, 4, 0);
    /* Making it may have run finalizers that added or ran callbacks of f:
     * then f is looked at again. */
    if (f->ncallbacks == 1) {
      cbs_get(L, fidx, f);
      lua_rawseti(L, -2, 1);
      lua_pushvalue(L, -1);
      cbs_set(L, fidx, f);
      lua_insert(L, -2);
      lua_rawseti(L, -2, ++f->ncallbacks);
      lua_pop(L, 1);
      return;
    }
    lua_pop(L, 1);
  }
  if (f->ncallbacks == 0) {
    cbs_set(L, fidx, f);
    f->ncallbacks = 1;
    return;
  }
  cbs_get(L, fidx, f);
  lua_insert(L, -2);
  lua_rawseti(L, -2, ++f->ncallbacks);
  lua_pop(L, 1);
}

/* [-1, +0] pops a callback (function, task or record) into the done
 * callbacks of the future at fidx; scheduled at once if it is done. */
void ml__future_add_callback(lua_State *L, int fidx, ml_Future *f) {
  fidx = lua_absindex(L, fidx);
  add_callback(L, fidx, f);
  if (f->state != ML_PENDING) ml__future_schedule(L, fidx, f);
}

/* [-0, +0] adds the record at recidx as a done callback. */
void ml__future_add_done_cb(lua_State *L, int fidx, int recidx) {
  ml_Future *f = lua_touserdata(L, fidx);
  fidx = lua_absindex(L, fidx);
  lua_pushvalue(L, recidx);
  ml__future_add_callback(L, fidx, f);
}

/* [-0, +0] makes task t a waiter of the future at fidx. */
void ml__future_add_waiter(lua_State *L, int fidx, ml_Future *f, ml_Task *t) {
  if (f->waiter == NULL && f->ncallbacks == 0) {
    f->waiter = t;
    return;
  }
  fidx = lua_absindex(L, fidx);
  ml__task_push(L, t);
  add_callback(L, fidx, f);
}

/* f:add_done_callback(fn) -> nothing */
int ml__future_add_done_callback(lua_State *L) {
  ml_Future *f = check_future(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  ml__future_add_callback(L, 1, f);
  return 0;
}

/* f:remove_done_callback(fn) -> how many were removed */
static int future_remove_done_callback(lua_State *L) {
  ml_Future *f = check_future(L, 1);
  int i, j = 0, n = f->ncallbacks;
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  if (n == 1) {
    cbs_get(L, 1, f);
    if (lua_rawequal(L, -1, 2)) {
      lua_pushnil(L);
      cbs_set(L, 1, f);
      f->ncallbacks = 0;
    } else {
      j = 1;
    }
  } else if (n > 1) {
    cbs_get(L, 1, f);
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, 3, i);
      if (lua_rawequal(L, -1, 2)) {
        lua_pop(L, 1);
        continue;
      }
      lua_rawseti(L, 3, ++j);
    }
    for (i = j + 1; i <= n; i++) {
      lua_pushnil(L);
      lua_rawseti(L, 3, i);
    }
    f->ncallbacks = j;
    if (j <= 1) { /* back to one callback, kept as itself, or none */
      lua_rawgeti(L, 3, 1);
      cbs_set(L, 1, f);
    }
  }
  lua_pushinteger(L, n - j);
  return 1;
}

/* f:get_loop() -> loop */
static int future_get_loop(lua_State *L) {
  check_future(L, 1);
  ml__push_loop(L);
  return 1;
}

/* __tostring(f) -> string */
static int future_tostring(lua_State *L) {
  ml_Future *f = check_future(L, 1);
  switch (f->state) {
  case ML_PENDING: lua_pushstring(L, "<Future pending>"); break;
  case ML_CANCELLED: lua_pushstring(L, "<Future cancelled>"); break;
  case ML_EXCEPTION:
    lua_getiuservalue(L, 1, FUV_RESULT);
    lua_pushfstring(L, "<Future finished exception=%s>", luaL_tolstring(L, -1, NULL));
    break;
  default:
    if (f->nres == 0) lua_pushstring(L, "<Future finished result=nil>");
    else {
      ml__future_unwrap(L, 1);
      lua_settop(L, 2);
      lua_pushfstring(L, "<Future finished result=%s>", luaL_tolstring(L, 2, NULL));
    }
  }
  return 1;
}

const luaL_Reg ml__future_methods[] = {
  {"result", future_result},
  {"exception", future_exception},
  {"set_result", future_set_result},
  {"set_exception", future_set_exception},
  {"done", future_done},
  {"cancelled", future_cancelled},
  {"cancel", future_cancel},
  {"add_done_callback", ml__future_add_done_callback},
  {"remove_done_callback", future_remove_done_callback},
  {"get_loop", future_get_loop},
  {NULL, NULL},
};

/* [-0, +0] registers the Future (or Task) metatable. */
void ml__future_mt_init(lua_State *L, int is_task, const luaL_Reg *methods,
                        lua_CFunction tostring) {
  if (is_task) ml__udata_newmt(L, ML_UT_TASK, ML_TASK_MT); /* sets __name */
  else ml__udata_newmt(L, ML_UT_FUTURE, ML_FUTURE_MT);
  lua_newtable(L);
  luaL_setfuncs(L, ml__future_methods, 0);
  if (methods) luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}

/* [-0, +0] */
void ml__future_open(lua_State *L) {
  ml__future_mt_init(L, 0, NULL, future_tostring);
  ml__udata_newmt(L, ML_UT_SENTINEL, "asyncio.ExceptionSentinel"); /* the sentinels' */
  lua_pushcfunction(L, sentinel_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

/* core._set_cancel_hook(fut, fn): fut:cancel(msg) calls fn(fut, msg) and
 * returns its result, instead of cancelling fut itself.  -> nothing */
int ml__future_set_cancel_hook(lua_State *L) {
  ml_Future *f = check_future(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  ml__xset(L, 1, X_CANCEL_HOOK);
  f->has_cancel_hook = 1;
  return 0;
}

/* asyncio.Future() -> a new pending future. */
int ml__future_lnew(lua_State *L) { return future_new(L); }
