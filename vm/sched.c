/* sched.c: the scheduler loop, callbacks (handles) and the loop object.
 *
 * One iteration runs the entries that were ready when it began, then
 * polls I/O.  The poll rule: while the ready queue never empties, the
 * kernel is polled (ev_run NOWAIT) after every POLL_STEPS entries run or
 * POLL_SECONDS elapsed, whichever comes first, so a ready socket waits at
 * most that long; when the queue empties, the loop blocks in ev_run ONCE.
 * Polling on every iteration (asyncio's rule) costs one epoll_wait per
 * sleep(0) round trip, which measured ~2x slower on the sleep(0) bench. */
#include <errno.h>
#include <string.h>
#include <time.h>
#include "internal.h"

#define POLL_STEPS 64
#define POLL_SECONDS 0.0005
#define ML_HANDLE_MT "asyncio.Handle"
#define ML_LOOP_MT "asyncio.Loop"
#define CBTB_KEY "moonloop.cbtb"
#define HANDLER_KEY "moonloop.exception_handler"

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- callbacks in protected mode ---- */

static int callback_msgh(lua_State *L) {
  luaL_traceback(L, L, NULL, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
  return 1;
}

int ml__callback(lua_State *L, int nargs, const char *context) {
  int base = lua_gettop(L) - nargs, st;
  lua_pushcfunction(L, callback_msgh);
  lua_insert(L, base);
  st = lua_pcall(L, nargs, 0, base);
  if (st != LUA_OK) {
    lua_getfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
    ml__report_tb(L, context);
  }
  lua_remove(L, base);
  return st;
}

/* ---- handles: call_soon, call_later, call_at ---- */

typedef struct Handle {
  ml_State *S;
  ev_timer timer;
  int ref;         /* anchors the handle while its timer runs */
  int nargs;
  double when;     /* loop:time() it fires at, or -1 */
  unsigned char cancelled;
} Handle;

static void handle_queue(ml_State *S, Handle *h, int ref) {
  ml_Entry e = { ML_RUN_HANDLE, h, ref };
  if (ml__readyq_push(&S->ready, e) < 0) {
    luaL_unref(S->L, LUA_REGISTRYINDEX, ref);
    h->cancelled = 1;
  }
}

static void handle_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  Handle *h = w->data;
  int ref = h->ref;
  (void)loop; (void)revents;
  h->ref = LUA_NOREF;
  handle_queue(h->S, h, ref);  /* libev callbacks only queue work */
}

/* [-0, +1] makes a handle for fn at index fidx and the values above it. */
static Handle *handle_new(lua_State *L, int fidx) {
  int i, n = lua_gettop(L) - fidx;
  Handle *h;
  luaL_checktype(L, fidx, LUA_TFUNCTION);
  h = lua_newuserdatauv(L, sizeof(Handle), n + 1);
  memset(h, 0, sizeof *h);
  h->S = ml__state(L);
  h->ref = LUA_NOREF;
  h->nargs = n;
  h->when = -1;
  ev_init(&h->timer, handle_timer_cb);
  h->timer.data = h;
  luaL_setmetatable(L, ML_HANDLE_MT);
  for (i = 0; i <= n; i++) {
    lua_pushvalue(L, fidx + i);
    lua_setiuservalue(L, -2, i + 1);
  }
  return h;
}

/* Runs a queued handle (pushed).  [-1, +0] */
static void handle_run(lua_State *L) {
  Handle *h = lua_touserdata(L, -1);
  int i;
  if (h->cancelled) {
    lua_pop(L, 1);
    return;
  }
  luaL_checkstack(L, h->nargs + 4, "too many arguments");
  for (i = 0; i <= h->nargs; i++) lua_getiuservalue(L, -1 - i, i + 1);
  lua_remove(L, -h->nargs - 2);
  ml__callback(L, h->nargs, "Exception in callback");
}

static int loop_call_soon(lua_State *L) {
  ml_State *S = ml__state(L);
  Handle *h = handle_new(L, 2);
  lua_pushvalue(L, -1);
  handle_queue(S, h, luaL_ref(L, LUA_REGISTRYINDEX));
  return 1;
}

static int call_later(lua_State *L, double delay, int fidx) {
  ml_State *S = ml__state(L);
  Handle *h = handle_new(L, fidx);
  if (delay < 0) delay = 0;
  h->when = now_mono() + delay;
  ev_now_update(S->loop);  /* libev's time is from the last poll */
  ev_timer_set(&h->timer, delay, 0.);
  ev_timer_start(S->loop, &h->timer);
  lua_pushvalue(L, -1);
  h->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static int loop_call_later(lua_State *L) {
  lua_Number d = luaL_checknumber(L, 2);
  if (d != d) return luaL_argerror(L, 2, "delay is NaN");
  return call_later(L, d, 3);
}

static int loop_call_at(lua_State *L) {
  lua_Number when = luaL_checknumber(L, 2);
  if (when != when) return luaL_argerror(L, 2, "time is NaN");
  return call_later(L, when - now_mono(), 3);
}

static int handle_cancel(lua_State *L) {
  Handle *h = luaL_checkudata(L, 1, ML_HANDLE_MT);
  h->cancelled = 1;
  if (ev_is_active(&h->timer)) {
    ev_timer_stop(h->S->loop, &h->timer);
    luaL_unref(L, LUA_REGISTRYINDEX, h->ref);
    h->ref = LUA_NOREF;
  }
  return 0;
}

static int handle_cancelled(lua_State *L) {
  lua_pushboolean(L, ((Handle *)luaL_checkudata(L, 1, ML_HANDLE_MT))->cancelled);
  return 1;
}

static int handle_when(lua_State *L) {
  Handle *h = luaL_checkudata(L, 1, ML_HANDLE_MT);
  if (h->when < 0) lua_pushnil(L);
  else lua_pushnumber(L, h->when);
  return 1;
}

static int handle_tostring(lua_State *L) {
  Handle *h = luaL_checkudata(L, 1, ML_HANDLE_MT);
  lua_pushfstring(L, "<%sHandle%s>", h->when < 0 ? "" : "Timer",
                  h->cancelled ? " cancelled" : "");
  return 1;
}

static int handle_gc(lua_State *L) {
  Handle *h = lua_touserdata(L, 1);
  if (ev_is_active(&h->timer)) ev_timer_stop(h->S->loop, &h->timer);
  return 0;
}

/* ---- the scheduler ---- */

/* In debug mode, an entry that held the loop longer than this is reported,
 * as asyncio's slow_callback_duration. */
#define SLOW_CALLBACK 0.1

/* [-1, +0] pops the task that ran (or nil). */
static void warn_slow(ml_State *S, ml_Entry *e, double took) {
  lua_State *L = S->L;
  char msg[512];
  if (!lua_isnil(L, -1)) {
    snprintf(msg, sizeof msg, "Executing %s took %.3f seconds", luaL_tolstring(L, -1, NULL), took);
    lua_pop(L, 2);
  } else {
    lua_pop(L, 1);
    snprintf(msg, sizeof msg, "Executing a %s took %.3f seconds",
             e->kind == ML_RUN_TASK ? "task step" : e->kind == ML_RUN_HANDLE ? "callback" : "done callback",
             took);
  }
  ml__emit_error(S, msg);
}

static void run_entry(ml_State *S, ml_Entry *e) {
  lua_State *L = S->L;
  double t0 = 0;
  ml_Entry copy = *e;
  if (S->debug) {
    t0 = now_mono();
    if (e->kind == ML_RUN_TASK && ((ml_Task *)e->p)->ref != LUA_NOREF) ml__task_push(L, e->p);
    else lua_pushnil(L);
  }
  switch (e->kind) {
  case ML_RUN_TASK:
    ml__task_step(S, e->p);
    break;
  case ML_RUN_HANDLE:
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref);
    luaL_unref(L, LUA_REGISTRYINDEX, e->ref);
    handle_run(L);
    break;
  case ML_RUN_FUTURE_CALLBACKS:
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref);
    luaL_unref(L, LUA_REGISTRYINDEX, e->ref);
    ml__future_run_callbacks(L);
    break;
  }
  if (S->debug) {
    if (now_mono() - t0 > SLOW_CALLBACK) warn_slow(S, &copy, now_mono() - t0);
    else lua_pop(L, 1);
  }
}

static void poll_io(ml_State *S, int flags) {
  S->alive = ev_run(S->loop, flags);  /* nonzero: active watchers remain */
  S->last_poll = now_mono();
  S->last_poll_step = S->nstep;
}

/* Runs the entries ready now; then polls I/O by the rule at the top.  With
 * defer_idle_poll, an emptied queue is left for the caller to block on. */
static void iterate(ml_State *S, int defer_idle_poll) {
  size_t n = S->ready.len;
  ml_Entry e;
  while (n-- > 0 && ml__readyq_pop(&S->ready, &e) == 0) run_entry(S, &e);
  if (S->ready.len == 0) {
    if (!defer_idle_poll) poll_io(S, EVRUN_NOWAIT);
  } else if (S->nstep - S->last_poll_step >= POLL_STEPS
             || now_mono() - S->last_poll >= POLL_SECONDS) {
    poll_io(S, EVRUN_NOWAIT);
  }
}

int ml__sched_run(ml_State *S, ml_Future *until_done) {
  int rc = 0;
  S->running++;
  for (;;) {
    if (until_done && until_done->state != ML_PENDING) break;
    if (S->stopping) {
      S->stopping = 0;
      break;
    }
    if (S->ready.len == 0) {
      /* Block for I/O or a timer; libev returns at once if no watcher is
       * active, and then nothing can wake anything: idle, or a deadlock
       * if a result is still awaited. */
      poll_io(S, EVRUN_ONCE);
      if (S->ready.len == 0 && !S->alive) {
        if (until_done) rc = -EDEADLK;
        break;
      }
      continue;
    }
    iterate(S, 1);
  }
  S->running--;
  return rc;
}

int ml__sched_step(ml_State *S) {
  S->running++;
  iterate(S, 0);
  S->running--;
  return S->ready.len > 0;
}

/* ---- the loop object ---- */

void ml__push_loop(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, ML_LOOP_MT ".instance");
}

static int loop_time(lua_State *L) {
  lua_pushnumber(L, now_mono());
  return 1;
}

static int loop_create_future(lua_State *L) {
  ml__future_new(L);
  return 1;
}

static int loop_create_task(lua_State *L) {
  lua_remove(L, 1);
  return ml__core_create_task(L);
}

static int loop_stop(lua_State *L) {
  ml__state(L)->stopping = 1;
  return 0;
}

static int loop_is_running(lua_State *L) {
  ml_State *S = ml__state(L);
  lua_pushboolean(L, S->running > 0 || S->current != NULL);
  return 1;
}

static int loop_is_closed(lua_State *L) {
  lua_pushboolean(L, 0);
  return 1;
}

static int loop_get_debug(lua_State *L) {
  lua_pushboolean(L, ml__state(L)->debug);
  return 1;
}

static int loop_set_debug(lua_State *L) {
  ml__state(L)->debug = lua_toboolean(L, 2);
  return 0;
}

static int loop_set_exception_handler(lua_State *L) {
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_setfield(L, LUA_REGISTRYINDEX, HANDLER_KEY);
  return 0;
}

static int loop_get_exception_handler(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLER_KEY);
  return 1;
}

/* [-0, +1] formats a context table as the default handler prints it. */
static void format_context(lua_State *L, int ctx) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (lua_getfield(L, ctx, "message") != LUA_TNIL) {
    luaL_tolstring(L, -1, NULL);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, ctx, "exception") != LUA_TNIL) {
    luaL_addstring(&b, ": ");
    luaL_tolstring(L, -1, NULL);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, ctx, "traceback") == LUA_TSTRING) {
    luaL_addchar(&b, '\n');
    lua_pushvalue(L, -1);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  luaL_pushresult(&b);
}

static int loop_default_exception_handler(lua_State *L) {
  ml_State *S = ml__state(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  format_context(L, 2);
  ml__emit_error(S, lua_tostring(L, -1));
  return 0;
}

static int loop_call_exception_handler(lua_State *L) {
  luaL_checktype(L, 2, LUA_TTABLE);
  if (lua_getfield(L, LUA_REGISTRYINDEX, HANDLER_KEY) == LUA_TFUNCTION) {
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) return 0;
    /* A failing handler: report both, as asyncio does. */
    fprintf(stderr, "moonloop: exception handler failed: %s\n", luaL_tolstring(L, -1, NULL));
  }
  lua_settop(L, 2);
  return loop_default_exception_handler(L);
}

void ml__report_tb(lua_State *L, const char *context) {
  int top = lua_gettop(L);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, context);
  lua_setfield(L, -2, "message");
  lua_pushvalue(L, top - 1);
  lua_setfield(L, -2, "exception");
  lua_pushvalue(L, top);
  lua_setfield(L, -2, "traceback");
  lua_pushcfunction(L, loop_call_exception_handler);
  ml__push_loop(L);
  lua_pushvalue(L, -3);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK)
    ml__emit_error(ml__state(L), lua_tostring(L, -1) ? lua_tostring(L, -1) : "error in error report");
  lua_settop(L, top - 2);
}

void ml__report(lua_State *L, const char *context) {
  lua_pushnil(L);
  ml__report_tb(L, context);
}

static const luaL_Reg loop_methods[] = {
  { "time", loop_time },
  { "call_soon", loop_call_soon },
  { "call_later", loop_call_later },
  { "call_at", loop_call_at },
  { "create_future", loop_create_future },
  { "create_task", loop_create_task },
  { "stop", loop_stop },
  { "is_running", loop_is_running },
  { "is_closed", loop_is_closed },
  { "get_debug", loop_get_debug },
  { "set_debug", loop_set_debug },
  { "set_exception_handler", loop_set_exception_handler },
  { "get_exception_handler", loop_get_exception_handler },
  { "call_exception_handler", loop_call_exception_handler },
  { "default_exception_handler", loop_default_exception_handler },
  { NULL, NULL }
};

static const luaL_Reg handle_methods[] = {
  { "cancel", handle_cancel },
  { "cancelled", handle_cancelled },
  { "when", handle_when },
  { NULL, NULL }
};

/* Makes the loop object and the Handle type.  [-0, +1] pushes the loop's
 * methods table (asyncio.core.Loop: modules add methods to it). */
void ml__sched_open(lua_State *L) {
  ml_State *S = ml__state(L);
  S->last_poll = now_mono();
  luaL_newmetatable(L, ML_HANDLE_MT);
  luaL_newlib(L, handle_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, handle_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushcfunction(L, handle_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_newmetatable(L, ML_LOOP_MT);
  luaL_newlib(L, loop_methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_newtable(L);  /* the loop object itself: a plain table */
  lua_pushvalue(L, -3);
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, ML_LOOP_MT ".instance");
  lua_remove(L, -2);
}
