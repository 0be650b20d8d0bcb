/* handle.c: Handles and TimerHandles (asyncio's call_soon, call_later and
 * call_at callbacks), the one ev_timer that fires them, and calling back
 * in protected mode.
 *
 * asyncio's design: the state has one ev_timer, armed for the earliest of
 * a heap of timer handles ordered by (when, push order) (timerheap.c), instead of
 * one libev timer per handle.  When it fires, one ready entry is queued
 * that runs every handle due then, in time order, under one protected
 * call (run_due).
 *
 * A pending handle (in the heap or the ready queue) owns one id of the
 * heap, which is also its slot in the anchor table.  The anchor slot
 * holds the function itself when there are no arguments, else the Handle,
 * whose user values are the function and the arguments.  The Handle that
 * call_later returns is a small userdata without __gc (when, seq, slot,
 * cancelled), which refers to its slot only while the heap says the id
 * still carries its seq (ml__theap_id_live): a slot reused by a later
 * handle is told apart.  So the common handle is one small userdata that
 * nothing anchors: a script that drops it leaves it to the collector at
 * once, and it holds no user value for the collector to traverse.
 *
 * The invariant this layout keeps: making and firing a timer takes one
 * small userdata, no user value on it and no table of its own; the
 * profile that chose it is in docs/performance.md ("Timers").
 *
 * cancel() is O(1): the handle lets go of its function and arguments (it
 * clears its anchor slot) and the heap keeps its entry until it reaches
 * the top or the heap is compacted (timerheap.h).  A cancelled handle
 * holds nothing in Lua, so the heap releases its id in C, never touching
 * the Lua stack.  The top of the heap is never a cancelled handle, so the
 * ev_timer is active exactly while a live timer is pending: a cancelled
 * call_later(100, f) keeps nothing alive.  A handle cancelled in the
 * ready queue keeps its slot until the queue reaches it.
 *
 * Reentrancy: lua_newuserdatauv may run a collector step, and so
 * finalizers that schedule handles themselves; a handle's slot is chosen
 * after it, and nothing is taken until the last step that can raise. */
#include <limits.h>
#include <math.h>
#include <string.h>
#include "handle.h"
#include "loop.h"
#include "sched.h"
#include "timerheap.h"

#define ML_HANDLE_MT "asyncio.Handle"
#define CBTB_KEY "moonloop.cbtb"

/* The Handle userdata: all its methods need, also after it ran. */
typedef struct Handle {
  double when;          /* loop:time() it fires at, or NaN (call_soon) */
  uint64_t seq;         /* names it: its slot's id carries seq while pending */
  int slot;             /* its anchor slot, an id of the heap */
  unsigned short nargs; /* its user values are fn and the arguments */
  unsigned char cancelled;
} Handle;

typedef struct Timers {
  ml_State *S;
  ev_timer timer; /* armed for the top of the heap while it has one */
  double armed;   /* the deadline it was armed for */
  ml_TimerHeap heap;
  int queued; /* the entry that runs the due ones is queued */
} Timers;

static const char timers_key = 0; /* registry[&timers_key] = the Timers */

/* ---- callbacks in protected mode ---- */

static int run_batch(lua_State *L);

/* Message handler: msgh(error) -> error; keeps the traceback in the
 * registry for ml__callback_traceback. */
int ml__callback_msgh(lua_State *L) {
  /* Under run_due, the last frame is run_batch's, which the user did not
   * write: leave its line out, as a callback's own pcall would. */
  ml__traceback(L, run_batch);
  lua_setfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
  return 1;
}

/* [-0, +1] pushes the traceback the message handler kept. */
void ml__callback_traceback(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
  /* Used once: a memory error does not run the handler, and must not be
   * reported with an older error's traceback. */
  lua_pushnil(L);
  lua_setfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
}

/* [-(nargs+1), +0] calls the function below the nargs arguments
 * protected; an error goes to the exception handler with context. */
int ml__callback(lua_State *L, int nargs, const char *context) {
  int base = lua_gettop(L) - nargs, st;
  ML_STACK_MARK(L);
  lua_pushcfunction(L, ml__callback_msgh);
  lua_insert(L, base);
  st = lua_pcall(L, nargs, 0, base);
  if (st != LUA_OK) {
    ml__callback_traceback(L);
    ml__report_tb(L, context);
  }
  lua_remove(L, base);
  ML_STACK_CHECK(L, -(nargs + 1));
  return st;
}

/* ---- the ev_timer ---- */

/* Raises MemoryError.  [-0, +1] */
static int memory_error(lua_State *L) {
  ml__push_memory_error(L);
  return lua_error(L);
}

/* Arms the ev_timer for the top of the heap, or stops it. */
static void timers_arm(Timers *T) {
  struct ev_loop *loop = T->S->loop;
  double now, d, when;
  if (!ml__theap_top(&T->heap, &when)) {
    if (ev_is_active(&T->timer)) ev_timer_stop(loop, &T->timer);
    return;
  }
  if (ev_is_active(&T->timer)) {
    if (T->armed == when) return;
    ev_timer_stop(loop, &T->timer);
  }
  T->armed = when;
  now = ml__now();
  /* libev counts from its time of the last poll: bring it up to date, and
   * after our now, so the timer never fires before the deadline. */
  ev_now_update(loop);
  d = when - now;
  ev_timer_set(&T->timer, d > 0 ? d : 0., 0.);
  ev_timer_start(loop, &T->timer);
}

/* The ev_timer fired: libev callbacks only queue work, here one entry that
 * stands for every handle due now, queued once (run_due runs them). */
static void timers_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  Timers *T = (Timers *)((char *)w - offsetof(Timers, timer));
  ml_Entry e = {ML_RUN_HANDLE, NULL, 0};
  (void)loop;
  (void)revents;
  ml__theap_mark_due(&T->heap, ml__now());
  if (!T->queued) {
    if (ml__readyq_push(&T->S->ready, e) == 0) T->queued = 1;
    else timers_arm(T); /* out of memory: fires again at the next poll */
  }
}

void ml__handles_queue_due(ml_State *S) {
  Timers *T = S->timers;
  double when;
  if (T != NULL && ml__theap_top(&T->heap, &when) && when <= ml__now())
    timers_cb(S->loop, &T->timer, EV_TIMER);
}

int ml__handles_remaining(ml_State *S, double *r) {
  Timers *T = S->timers;
  if (T == NULL || !ev_is_active(&T->timer)) return 0;
  *r = ev_timer_remaining(S->loop, &T->timer);
  return 1;
}

/* __gc(timers) -> nothing */
static int timers_gc(lua_State *L) {
  Timers *T = lua_touserdata(L, 1);
  if (T == NULL || T != ml__state(L)->timers) return 0; /* only the state's own */
  if (ev_is_active(&T->timer)) ev_timer_stop(T->S->loop, &T->timer);
  ml__theap_free(&T->heap);
  T->S->timers = NULL;
  return 0;
}

/* ---- making handles ---- */

/* [-0, +1] makes the Handle for fn at index fidx and the values above it;
 * it is not pending yet (handle_anchor).  Upvalue 1: the Handle metatable.
 * May run finalizers (a collector step). */
static inline Handle *handle_make(lua_State *L, int fidx, double when) {
  int i, n = lua_gettop(L) - fidx;
  Handle *h;
  if (lua_type(L, fidx) != LUA_TFUNCTION) luaL_checktype(L, fidx, LUA_TFUNCTION);
  if (n > USHRT_MAX - 2) luaL_error(L, "too many arguments");
  h = lua_newuserdatauv(L, sizeof *h, n ? n + 1 : 0);
  h->when = when; /* seq and slot: handle_anchor */
  h->nargs = (unsigned short)n;
  h->cancelled = 0;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, -2);
  for (i = n ? n : -1; i >= 0; i--) {
    lua_pushvalue(L, fidx + i);
    lua_setiuservalue(L, -2, i + 1);
  }
  return h;
}

/* [-0, +0] anchors h's function, or h itself (on top of the stack, made
 * for fidx) when it has arguments, in slot, a free id of the heap that
 * the caller takes next.  Upvalue 3: the anchor table.  May raise
 * MemoryError, before the caller took anything; the caller must not
 * raise after it. */
static inline void handle_anchor(lua_State *L, Handle *h, int fidx, int slot) {
  if (slot < 0) memory_error(L);
  lua_pushvalue(L, h->nargs ? -1 : fidx);
  lua_rawseti(L, lua_upvalueindex(3), slot); /* may raise MemoryError */
  h->slot = slot;
}

/* Puts the handle of a slot on the ready queue; 0 or -ENOMEM.  The entry's
 * p is the Timers (p == NULL stands for every timer due). */
static int handle_queue(Timers *T, int slot) {
  ml_Entry e = {ML_RUN_HANDLE, T, slot};
  return ml__readyq_push(&T->S->ready, e);
}

/* The state's Timers (NULL once it closed): no API call, unlike the
 * upvalue the loop's methods also have.  [-0, +0]; raises if closed. */
static Timers *check_timers(lua_State *L) {
  Timers *T = ml__state(L)->timers;
  if (T == NULL) luaL_error(L, "the event loop is closed");
  return T;
}

/* loop:call_soon(fn, ...) -> handle */
int ml__handle_call_soon(lua_State *L) {
  Timers *T = check_timers(L);
  Handle *h = handle_make(L, 2, NAN); /* NaN: a call_soon's (call_at refuses NaN) */
  int slot = ml__theap_id_peek(&T->heap);
  handle_anchor(L, h, 2, slot);
  h->seq = ml__theap_id_take(&T->heap, slot);
  if (handle_queue(T, slot) < 0) {
    h->cancelled = 1; /* out of memory: it never runs */
    lua_pushnil(L);
    lua_rawseti(L, lua_upvalueindex(3), slot);
    ml__theap_id_free(&T->heap, slot);
  }
  return 1;
}

/* call_later(delay, fn, ...) if relative, else call_at(when, fn, ...):
 * one function for both, which their methods call last, so that the hot
 * path is one C frame.  -> handle */
static int call_timer(lua_State *L, int relative) {
  Timers *T = check_timers(L);
  Handle *h;
  int isnum, slot, top;
  lua_Number when = lua_tonumberx(L, 2, &isnum);
  if (!isnum) when = luaL_checknumber(L, 2);
  if (when != when) return luaL_argerror(L, 2, relative ? "delay is NaN" : "time is NaN");
  if (relative)
    when = ml__now() + when; /* a negative delay is a deadline in the past, as asyncio */
  h = handle_make(L, 3, when);
  slot = ml__theap_prepare(&T->heap);
  handle_anchor(L, h, 3, slot);
  top = ml__theap_push(&T->heap, when, slot);
  h->seq = ml__theap_id_seq(&T->heap, slot);
  if (top) timers_arm(T);
  return 1;
}

/* loop:call_later(delay, fn, ...) -> handle */
int ml__handle_call_later(lua_State *L) { return call_timer(L, 1); }

/* loop:call_at(when, fn, ...) -> handle */
int ml__handle_call_at(lua_State *L) { return call_timer(L, 0); }

/* ---- running them ---- */

/* Runs a queued handle; anchor: the anchor table's stack index.  [-0, +0] */
static void run_one(lua_State *L, Timers *T, int anchor, const ml_Entry *e) {
  int i, n = 0, slot = e->ref, base, cancelled = ml__theap_id_cancelled(&T->heap, slot);
  ml__theap_id_free(&T->heap, slot);
  if (cancelled) return; /* its anchor slot is clear already */
  /* The message handler goes first, below the function: no rotation. */
  lua_pushcfunction(L, ml__callback_msgh);
  base = lua_gettop(L);
  if (lua_rawgeti(L, anchor, slot) != LUA_TFUNCTION) /* the Handle */
    n = ((Handle *)lua_touserdata(L, -1))->nargs;
  lua_pushnil(L);
  lua_rawseti(L, anchor, slot); /* the stack anchors it from now on */
  if (!lua_checkstack(L, n + 2)) {
    lua_settop(L, base - 1);
    return;
  }
  for (i = 1; n && i <= n + 1; i++) lua_getiuservalue(L, base + 1, i);
  if (lua_pcall(L, n, 0, base) != LUA_OK) {
    ml__callback_traceback(L);
    ml__report_tb(L, "Exception in callback");
  }
  lua_settop(L, base - 1);
}

/* The body of run_due, in protected mode: (Timers, anchor table).  Each
 * handle is called with lua_call: one protected call for the batch, not
 * one per callback.  An error leaves the rest for the next call.  Nothing
 * here holds a pointer into the heap or its ids across a callback, which
 * may grow them.  run_batch(T, anchor) -> nothing */
static int run_batch(lua_State *L) {
  Timers *T = lua_touserdata(L, 1);
  ml_State *S = T->S;
  int slot;
  while ((slot = ml__theap_pop_due(&T->heap)) != 0) {
    int i, n = 0;
    double t0 = 0;
    /* The heap freed the slot: the stack anchors fn from here on. */
    if (lua_rawgeti(L, 2, slot) != LUA_TFUNCTION) /* the Handle */
      n = ((Handle *)lua_touserdata(L, 3))->nargs;
    lua_pushnil(L);
    lua_rawseti(L, 2, slot);
    if (n) {
      if (n > 15) luaL_checkstack(L, n + 1, "too many arguments"); /* else */
      for (i = 1; i <= n + 1; i++) lua_getiuservalue(L, 3, i);
    }
    if (S->debug) t0 = ml__now();
    lua_call(L, n, 0);
    if (S->debug && ml__now() - t0 > ML_SLOW_CALLBACK) {
      ml_Entry e = {ML_RUN_HANDLE, T, 0};
      lua_pushnil(L);
      ml__sched_warn_slow(S, &e, ml__now() - t0);
    }
    if (n) lua_settop(L, 2);
  }
  return 0;
}

/* Runs the handles that were due when the ev_timer last fired, in time
 * order; a handle scheduled meanwhile waits for the next firing, so a
 * callback that keeps rescheduling itself in the past cannot starve I/O.
 * An error in a callback is reported, and the batch goes on.  Queued by
 * timers_cb; anchor: the anchor table's stack index.  [-0, +0] */
static void run_due(lua_State *L, Timers *T, int anchor) {
  int st;
  T->queued = 0;
  ml__theap_prepare_due(&T->heap);
  do {
    lua_pushcfunction(L, ml__callback_msgh);
    lua_pushcfunction(L, run_batch);
    lua_pushlightuserdata(L, T);
    lua_pushvalue(L, anchor);
    st = lua_pcall(L, 2, 0, -4);
    if (st != LUA_OK) {
      ml__callback_traceback(L);
      ml__report_tb(L, "Exception in callback");
    }
    lua_pop(L, 1);
  } while (st != LUA_OK);
  ml__theap_settle(&T->heap);
  timers_arm(T);
}

/* [-0, +0] runs the handle of entry e, or every due one. */
void ml__handles_run(lua_State *L, Timers *T, int anchor, const ml_Entry *e) {
  if (e->p) run_one(L, T, anchor, e);
  else run_due(L, T, anchor);
}

/* [-0, +1] pushes the anchor table; returns the state's Timers. */
struct Timers *ml__handles_push_anchor(lua_State *L) {
  Timers *T;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &timers_key);
  T = lua_touserdata(L, -1);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  return T;
}

/* ---- the Handle's methods ---- */

/* The Handle at index 1 (upvalues of its methods: the Timers, the anchor
 * table).  [-0, +0], or a type error. */
static Handle *check_handle(lua_State *L) { return ml__udata_check(L, 1, ML_UT_HANDLE); }

/* h:cancel() -> nothing */
static int handle_cancel(lua_State *L) {
  Handle *h = check_handle(L);
  Timers *T = lua_touserdata(L, lua_upvalueindex(1));
  int slot;
  if (h->cancelled) return 0;
  h->cancelled = 1;
  if ((slot = ml__theap_id_live(&T->heap, h->slot, h->seq)) == 0) return 0; /* it ran */
  lua_pushnil(L); /* let go of fn and its arguments */
  lua_rawseti(L, lua_upvalueindex(2), slot);
  /* Queued, the queue frees it; in the heap, the heap does. */
  if (ml__theap_cancel(&T->heap, slot)) timers_arm(T);
  return 0;
}

/* h:cancelled() -> boolean */
static int handle_cancelled(lua_State *L) {
  lua_pushboolean(L, check_handle(L)->cancelled);
  return 1;
}

/* h:when() -> time | nil (a call_soon handle) */
static int handle_when(lua_State *L) {
  Handle *h = check_handle(L);
  if (h->when != h->when) lua_pushnil(L); /* call_soon's */
  else lua_pushnumber(L, h->when);
  return 1;
}

/* __tostring(h) -> string */
static int handle_tostring(lua_State *L) {
  Handle *h = check_handle(L);
  lua_pushfstring(L, "<%sHandle%s>", h->when != h->when ? "" : "Timer",
                  h->cancelled ? " cancelled" : "");
  return 1;
}

/* Upvalues: the Timers, the anchor table. */
static const luaL_Reg handle_methods[] = {
  {"cancel", handle_cancel},
  {"cancelled", handle_cancelled},
  {"when", handle_when},
  {NULL, NULL},
};

/* [-0, +3] pushes the upvalues of the timer methods: the Handle
 * metatable, the Timers, the anchor table. */
void ml__handles_push_upvalues(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ml__state(L)->udata_mtref[ML_UT_HANDLE]);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &timers_key);
  lua_getiuservalue(L, -1, 1);
}

/* [-0, +0] makes the state's Timers and the Handle metatable. */
void ml__handles_open(lua_State *L) {
  ml_State *S = ml__state(L);
  Timers *T;
  void *ud;
  ml_Allocf f = lua_getallocf(L, &ud);
  T = lua_newuserdatauv(L, sizeof *T, 1); /* the Timers, kept in the registry */
  memset(T, 0, sizeof *T);
  T->S = S;
  ml__theap_init(&T->heap, f, ud);
  ev_init(&T->timer, timers_cb);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, timers_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_newtable(L); /* the anchor table */
  lua_setiuservalue(L, -2, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &timers_key);
  S->timers = T;
  ml__udata_newmt(L, ML_UT_HANDLE, ML_HANDLE_MT);
  lua_newtable(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &timers_key); /* the Timers, */
  lua_getiuservalue(L, -1, 1);                    /* the anchor table */
  luaL_setfuncs(L, handle_methods, 2);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, handle_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
}
