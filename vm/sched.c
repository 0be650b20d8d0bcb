/* sched.c: the scheduler loop, callbacks (handles) and the loop object.
 *
 * One iteration runs the entries that were ready when it began, then
 * polls I/O.  The poll rule: while the ready queue never empties, the
 * kernel is polled (ev_run NOWAIT) after every POLL_STEPS entries run or
 * POLL_SECONDS elapsed, whichever comes first, so a ready socket waits at
 * most that long; when the queue empties, the loop blocks in ev_run ONCE.
 * Polling on every iteration (asyncio's rule) costs one epoll_wait per
 * sleep(0) round trip, which measured ~2x slower on the sleep(0) bench.
 * The clock is read only once POLL_CLOCK_STEPS entries have run since the
 * last poll: a clock_gettime is 25 ns here, a sixth of a sleep(0) round
 * trip, and iterations of one entry each (ping-pong between two tasks)
 * read it on every step.  So with slow steps a socket may wait up to
 * POLL_CLOCK_STEPS of them instead of one. */
#include <errno.h>
#include <string.h>
#include <time.h>
#include "internal.h"

#define POLL_STEPS 64
#define POLL_SECONDS 0.0005
#define POLL_CLOCK_STEPS 4
#define ML_HANDLE_MT "asyncio.Handle"
#define ML_LOOP_MT "asyncio.Loop"
#define CBTB_KEY "moonloop.cbtb"
#define HANDLER_KEY "moonloop.exception_handler"
/* In debug mode, an entry that held the loop longer than this is reported,
 * as asyncio's slow_callback_duration. */
#define SLOW_CALLBACK 0.1

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- callbacks in protected mode ---- */

static int timers_batch(lua_State *L);

static int callback_msgh(lua_State *L) {
  lua_Debug ar;
  int level = 1;
  luaL_traceback(L, L, NULL, 1);
  /* Under timers_run, the last frame is timers_batch's, which the user
   * did not write: leave its line out, as a callback's own pcall would. */
  while (lua_getstack(L, level + 1, &ar)) level++;
  if (lua_getstack(L, level, &ar) && lua_getinfo(L, "f", &ar)) {
    if (lua_tocfunction(L, -1) == timers_batch) {
      size_t len;
      const char *tb = lua_tolstring(L, -2, &len), *nl = tb + len;
      while (nl > tb && *nl != '\n') nl--;
      lua_pushlstring(L, tb, nl > tb ? (size_t)(nl - tb) : len);
      lua_replace(L, -3);
    }
    lua_pop(L, 1);
  }
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

/* ---- handles: call_soon, call_later, call_at ----
 *
 * asyncio's design: the state has one ev_timer, armed for the earliest of
 * a 4-ary heap of timer handles ordered by (when, seq), instead of one
 * libev timer per handle.  When it fires, one ready entry is queued that
 * runs every handle due then, in time order, under one protected call
 * (timers_run).  A Handle is a small userdata with its function and
 * arguments as user values and no __gc.  While it is in the heap or the
 * ready queue it is anchored in one slot of the anchor table (slots are
 * reused through a stack of free slots in C, not the registry's
 * luaL_ref).  cancel() is O(1): the handle drops its function and stays
 * in the heap until it reaches the top, or until cancelled handles are
 * more than half of the heap, when the heap is rebuilt without them
 * (asyncio's rule).  The top of the heap is never a cancelled handle, so
 * the ev_timer is active exactly while a live timer is pending: a
 * cancelled call_later(100, f) keeps nothing alive.  Cancelled handles
 * leave through the ready queue, which releases their slots (and skips
 * them), so the heap code never touches the Lua stack. */

enum { H_DONE = 0, H_HEAP, H_READY };

typedef struct Handle {
  double when;          /* loop:time() it fires at, or -1 (call_soon) */
  uint64_t seq;         /* equal when: the first scheduled runs first */
  int slot;             /* its anchor slot while H_HEAP or H_READY */
  int nargs;
  unsigned char where;  /* H_* */
  unsigned char cancelled;
} Handle;

/* A heap entry's key orders by (when, seq) in one unsigned comparison,
 * which compiles without branches: the high half is when's bits mapped so
 * that doubles order as integers, the low half is seq.  Sifting reads no
 * handle, and a mispredicted branch per level costs more than the level. */
#ifdef __SIZEOF_INT128__
typedef unsigned __int128 Key;
#define KEY(hi, lo) (((Key)(hi) << 64) | (lo))
#define KEY_LT(a, b) ((a) < (b))
#else
typedef struct Key { uint64_t hi, lo; } Key;
static Key key_make(uint64_t hi, uint64_t lo) { Key k = { hi, lo }; return k; }
#define KEY(hi, lo) key_make(hi, lo)
#define KEY_LT(a, b) ((a).hi < (b).hi || ((a).hi == (b).hi && (a).lo < (b).lo))
#endif

typedef struct HeapEnt {
  Key key;
  Handle *h;
} HeapEnt;

static uint64_t when_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return (u >> 63) ? ~u : u | (UINT64_C(1) << 63);
}

typedef struct Timers {
  ml_State *S;
  ev_timer timer;       /* armed for heap[0].when while n > 0 */
  double armed;         /* the deadline it was armed for */
  HeapEnt *heap;
  int n, cap;
  int ncancelled;       /* cancelled handles still in the heap */
  int *free;            /* free anchor slots: a stack with room for all */
  int nfree, nslots, capslots;
  uint64_t seq;
  double due_when;      /* timers_run runs the handles due at the last */
  uint64_t due_seq;     /* firing, and none scheduled after it */
  int queued;           /* the entry that runs them is queued */
  int closed;           /* the state is closing: no more handles */
} Timers;

/* More than this many cancelled handles, and more than half of the heap:
 * rebuild it (asyncio's _MIN_SCHEDULED_TIMER_HANDLES, 50%). */
#define MIN_COMPACT 100

static const char timers_key = 0;  /* registry[&timers_key] = the Timers */

static int ent_lt(const HeapEnt *a, const HeapEnt *b) {
  return KEY_LT(a->key, b->key);
}

/* The heap is 4-ary (libev's choice too): half the levels of a binary
 * heap, and a node's children are adjacent in memory. */
#define PARENT(i) (((i) - 1) / 4)
#define CHILD(i) (4 * (i) + 1)

static void sift_up(HeapEnt *hp, int i) {
  HeapEnt e = hp[i];
  while (i > 0) {
    int p = PARENT(i);
    if (!ent_lt(&e, &hp[p])) break;
    hp[i] = hp[p];
    i = p;
  }
  hp[i] = e;
}

/* The index of the smallest of the children c.. of a node, n entries:
 * a tournament of three comparisons, without branches. */
static inline int min_child(const HeapEnt *hp, int n, int c) {
  int a, b, k;
  if (c + 3 < n) {
    a = c + ent_lt(&hp[c + 1], &hp[c]);
    b = c + 2 + ent_lt(&hp[c + 3], &hp[c + 2]);
    return ent_lt(&hp[b], &hp[a]) ? b : a;
  }
  for (a = c, k = c + 1; k < n; k++) a = ent_lt(&hp[k], &hp[a]) ? k : a;
  return a;
}

static void sift_down(HeapEnt *hp, int n, int i) {
  HeapEnt e = hp[i];
  int c;
  while ((c = CHILD(i)) < n) {
    c = min_child(hp, n, c);
    if (!ent_lt(&hp[c], &e)) break;
    hp[i] = hp[c];
    i = c;
  }
  hp[i] = e;
}

/* Removes the top.  Floyd's order: the hole at the top moves down along
 * the smallest children to a leaf, and the last entry rises from there,
 * usually not far: popping every due timer is most of the heap's work. */
static void heap_pop(Timers *T) {
  HeapEnt *hp = T->heap;
  int n = --T->n, i = 0, c;
  if (n == 0) return;
  while ((c = CHILD(i)) < n) {
    c = min_child(hp, n, c);
    hp[i] = hp[c];
    i = c;
  }
  hp[i] = hp[n];
  sift_up(hp, i);
}

/* Grows an array of the state's allocator (so the memory cap applies) to
 * hold at least need elements; raises MemoryError. */
static void *grow(lua_State *L, void *p, int *cap, int need, size_t elem) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  int ncap = *cap ? *cap : 64;
  void *np;
  while (ncap < need) ncap *= 2;
  np = f(ud, p, p ? (size_t)*cap * elem : 0, (size_t)ncap * elem);
  if (np == NULL) {
    ml__push_memory_error(L);
    lua_error(L);
  }
  *cap = ncap;
  return np;
}

/* Puts h on the ready queue under its anchor slot; 0 or -ENOMEM. */
static int handle_queue(ml_State *S, Handle *h, int slot) {
  ml_Entry e = { ML_RUN_HANDLE, h, slot };
  int rc = ml__readyq_push(&S->ready, e);
  if (rc == 0) h->where = H_READY;
  return rc;
}

double ml__sched_next_timer(ml_State *S) {
  Timers *T = S->timers;
  ml_Task *t;
  double best = 0;
  int found = 0;
  if (T && ev_is_active(&T->timer)) {
    best = ev_timer_remaining(S->loop, &T->timer);
    found = 1;
  }
  for (t = S->tasks; t; t = t->next) {
    ev_timer *w = ml__task_sleep_timer(t);
    if (w) {
      double r = ev_timer_remaining(S->loop, w);
      if (!found || r < best) best = r;
      found = 1;
    }
  }
  if (!found) return -1;
  return best > 0 ? best : 0;
}

/* Arms the ev_timer for the top of the heap, or stops it. */
static void timers_arm(Timers *T) {
  struct ev_loop *loop = T->S->loop;
  double now, d;
  if (T->n == 0) {
    if (ev_is_active(&T->timer)) ev_timer_stop(loop, &T->timer);
    return;
  }
  if (ev_is_active(&T->timer)) {
    if (T->armed == T->heap[0].h->when) return;
    ev_timer_stop(loop, &T->timer);
  }
  T->armed = T->heap[0].h->when;
  now = now_mono();
  /* libev counts from its time of the last poll: bring it up to date, and
   * after our now, so the timer never fires before the deadline. */
  ev_now_update(loop);
  d = T->armed - now;
  ev_timer_set(&T->timer, d > 0 ? d : 0., 0.);
  ev_timer_start(loop, &T->timer);
}

/* Moves cancelled handles off the top of the heap to the ready queue,
 * which releases them. */
static void timers_settle(Timers *T) {
  while (T->n > 0 && T->heap[0].h->cancelled) {
    Handle *h = T->heap[0].h;
    if (handle_queue(T->S, h, h->slot) < 0) break;
    T->ncancelled--;
    heap_pop(T);
  }
}

/* Rebuilds the heap without its cancelled handles. */
static void timers_compact(Timers *T) {
  int i, j = 0;
  for (i = 0; i < T->n; i++) {
    Handle *h = T->heap[i].h;
    if (h->cancelled && handle_queue(T->S, h, h->slot) == 0) {
      T->ncancelled--;
      continue;
    }
    T->heap[j++] = T->heap[i];
  }
  T->n = j;
  for (i = T->n > 1 ? PARENT(T->n - 1) : -1; i >= 0; i--) sift_down(T->heap, T->n, i);
}

/* The ev_timer fired: libev callbacks only queue work, here one entry that
 * stands for every handle due now, queued once (timers_run runs them). */
static void timers_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  Timers *T = (Timers *)((char *)w - offsetof(Timers, timer));
  ml_Entry e = { ML_RUN_HANDLE, NULL, 0 };
  (void)loop; (void)revents;
  T->due_when = now_mono();
  T->due_seq = T->seq;
  if (!T->queued) {
    if (ml__readyq_push(&T->S->ready, e) == 0) T->queued = 1;
    else timers_arm(T);  /* out of memory: fires again at the next poll */
  }
}

static int timers_gc(lua_State *L) {
  Timers *T = lua_touserdata(L, 1);
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (ev_is_active(&T->timer)) ev_timer_stop(T->S->loop, &T->timer);
  f(ud, T->heap, (size_t)T->cap * sizeof *T->heap, 0);
  f(ud, T->free, (size_t)T->capslots * sizeof *T->free, 0);
  T->heap = NULL;
  T->free = NULL;
  T->n = T->cap = T->nfree = T->capslots = 0;
  T->closed = 1;
  if (T->S->timers == T) T->S->timers = NULL;
  return 0;
}

/* [-0, +1] makes a handle for fn at index fidx and the values above it,
 * anchored in a slot of the anchor table (upvalue 3).  Upvalues: the
 * Handle metatable, the Timers, the anchor table. */
static Handle *handle_new(lua_State *L, Timers *T, int fidx) {
  int i, n = lua_gettop(L) - fidx, slot;
  Handle *h;
  if (lua_type(L, fidx) != LUA_TFUNCTION) luaL_checktype(L, fidx, LUA_TFUNCTION);
  if (T->closed) luaL_error(L, "the event loop is closed");
  h = lua_newuserdatauv(L, sizeof(Handle), n + 1);
  h->when = -1;
  h->seq = 0;
  h->nargs = n;
  h->where = H_DONE;
  h->cancelled = 0;
  h->slot = 0;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, -2);
  for (i = n; i >= 0; i--) {
    lua_pushvalue(L, fidx + i);
    lua_setiuservalue(L, -2, i + 1);
  }
  if (T->nfree > 0) {
    slot = T->free[--T->nfree];
  } else {
    if (T->nslots == T->capslots)
      T->free = grow(L, T->free, &T->capslots, T->nslots + 1, sizeof *T->free);
    slot = ++T->nslots;
  }
  lua_pushvalue(L, -1);
  lua_rawseti(L, lua_upvalueindex(3), slot);
  h->slot = slot;
  return h;
}

/* Releases the anchor slot of a handle that left the heap and the ready
 * queue.  anchor: the anchor table's stack index.  [-0, +0] */
static void handle_release(lua_State *L, Timers *T, int anchor, int slot) {
  lua_pushnil(L);
  lua_rawseti(L, anchor, slot);
  T->free[T->nfree++] = slot;
}

/* Runs a queued handle; anchor: the anchor table's stack index.  [-0, +0] */
static void handle_run(lua_State *L, Timers *T, int anchor, ml_Entry *e) {
  Handle *h = e->p;
  int i, n = h->nargs, hidx;
  lua_rawgeti(L, anchor, e->ref);  /* the stack anchors it from now on */
  handle_release(L, T, anchor, e->ref);
  h->slot = 0;
  h->where = H_DONE;
  if (h->cancelled || !lua_checkstack(L, n + 3)) {
    lua_pop(L, 1);
    return;
  }
  hidx = lua_gettop(L);
  /* The message handler goes first, below the function: no rotation. */
  lua_pushcfunction(L, callback_msgh);
  for (i = 1; i <= n + 1; i++) lua_getiuservalue(L, hidx, i);
  if (lua_pcall(L, n, 0, hidx + 1) != LUA_OK) {
    lua_getfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
    ml__report_tb(L, "Exception in callback");
  }
  lua_settop(L, hidx - 1);
}

static void warn_slow(ml_State *S, ml_Entry *e, double took);

/* The body of timers_run, in protected mode: (Timers, anchor table).
 * Each handle is called with lua_call: one protected call for the batch,
 * not one per callback.  An error leaves the rest for the next call. */
static int timers_batch(lua_State *L) {
  Timers *T = lua_touserdata(L, 1);
  ml_State *S = T->S;
  while (T->n > 0) {
    Handle *h = T->heap[0].h;
    int i, n = h->nargs, slot = h->slot;
    double t0 = 0;
    if (h->when > T->due_when || h->seq > T->due_seq) break;
    if (h->cancelled) T->ncancelled--;
    heap_pop(T);
    h->where = H_DONE;
    h->slot = 0;
    lua_rawgeti(L, 2, slot);  /* the stack anchors it from now on */
    handle_release(L, T, 2, slot);
    if (h->cancelled) {
      lua_settop(L, 2);
      continue;
    }
    if (n > 15) luaL_checkstack(L, n + 1, "too many arguments");  /* else */
    for (i = 1; i <= n + 1; i++) lua_getiuservalue(L, 3, i);
    if (S->debug) t0 = now_mono();
    lua_call(L, n, 0);
    if (S->debug && now_mono() - t0 > SLOW_CALLBACK) {
      ml_Entry e = { ML_RUN_HANDLE, h, 0 };
      lua_pushnil(L);
      warn_slow(S, &e, now_mono() - t0);
    }
    lua_settop(L, 2);
  }
  return 0;
}

/* Runs the handles that were due when the ev_timer last fired, in time
 * order; a handle scheduled meanwhile waits for the next firing, so a
 * callback that keeps rescheduling itself in the past cannot starve I/O.
 * An error in a callback is reported, and the batch goes on.  Queued by
 * timers_cb; anchor: the anchor table's stack index.  [-0, +0] */
static void timers_run(ml_State *S, Timers *T, int anchor) {
  lua_State *L = S->L;
  int st;
  T->queued = 0;
  do {
    lua_pushcfunction(L, callback_msgh);
    lua_pushcfunction(L, timers_batch);
    lua_pushlightuserdata(L, T);
    lua_pushvalue(L, anchor);
    st = lua_pcall(L, 2, 0, -4);
    if (st != LUA_OK) {
      lua_getfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
      ml__report_tb(L, "Exception in callback");
    }
    lua_pop(L, 1);
  } while (st != LUA_OK);
  timers_settle(T);
  timers_arm(T);
}

static Timers *check_timers(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(2));
}

static int loop_call_soon(lua_State *L) {
  Timers *T = check_timers(L);
  Handle *h = handle_new(L, T, 2);
  if (handle_queue(T->S, h, h->slot) < 0) {
    h->cancelled = 1;  /* out of memory: it never runs */
    lua_pushnil(L);
    lua_rawseti(L, lua_upvalueindex(3), h->slot);
    T->free[T->nfree++] = h->slot;
    h->slot = 0;
  }
  return 1;
}

static int call_later(lua_State *L, double when, int fidx) {
  Timers *T = check_timers(L);
  Handle *h;
  int i;
  if (T->n == T->cap) T->heap = grow(L, T->heap, &T->cap, T->n + 1, sizeof *T->heap);
  h = handle_new(L, T, fidx);
  h->when = when;
  h->seq = ++T->seq;
  h->where = H_HEAP;
  i = T->n++;
  T->heap[i].key = KEY(when_bits(when), h->seq);
  T->heap[i].h = h;
  sift_up(T->heap, i);
  if (T->heap[0].h == h) timers_arm(T);
  return 1;
}

static int loop_call_later(lua_State *L) {
  lua_Number d = luaL_checknumber(L, 2);
  if (d != d) return luaL_argerror(L, 2, "delay is NaN");
  return call_later(L, now_mono() + (d > 0 ? d : 0), 3);
}

static int loop_call_at(lua_State *L) {
  lua_Number when = luaL_checknumber(L, 2);
  if (when != when) return luaL_argerror(L, 2, "time is NaN");
  return call_later(L, when, 3);
}

/* The Handle at index 1 (upvalue 1 of its methods: the Timers). */
static Handle *check_handle(lua_State *L) {
  return luaL_checkudata(L, 1, ML_HANDLE_MT);
}

static int handle_cancel(lua_State *L) {
  Handle *h = check_handle(L);
  Timers *T = lua_touserdata(L, lua_upvalueindex(1));
  int i;
  if (h->cancelled) return 0;
  h->cancelled = 1;
  for (i = 1; i <= h->nargs + 1; i++) {  /* let go of fn and its arguments */
    lua_pushnil(L);
    lua_setiuservalue(L, 1, i);
  }
  if (h->where != H_HEAP) return 0;  /* queued: the ready queue skips it */
  T->ncancelled++;
  if (T->heap[0].h == h) {
    timers_settle(T);
    timers_arm(T);
  } else if (T->ncancelled > MIN_COMPACT && 2 * T->ncancelled > T->n) {
    timers_compact(T);
  }
  return 0;
}

static int handle_cancelled(lua_State *L) {
  lua_pushboolean(L, check_handle(L)->cancelled);
  return 1;
}

static int handle_when(lua_State *L) {
  Handle *h = check_handle(L);
  if (h->when < 0) lua_pushnil(L);
  else lua_pushnumber(L, h->when);
  return 1;
}

static int handle_tostring(lua_State *L) {
  Handle *h = check_handle(L);
  lua_pushfstring(L, "<%sHandle%s>", h->when < 0 ? "" : "Timer",
                  h->cancelled ? " cancelled" : "");
  return 1;
}

/* [-0, +1] pushes the anchor table; returns the Timers. */
static Timers *push_anchor(lua_State *L) {
  Timers *T;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &timers_key);
  T = lua_touserdata(L, -1);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  return T;
}

/* ---- the scheduler ---- */

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

/* Runs one entry.  *anchor: the anchor table's stack index, pushed (with
 * *T) on the first handle of an iteration; the caller pops it. */
static void run_entry(ml_State *S, ml_Entry *e, Timers **T, int *anchor) {
  lua_State *L = S->L;
  double t0 = 0;
  ml_Entry copy = *e;
  /* The due timers' entry times each of its callbacks itself. */
  int timed = S->debug && (e->kind != ML_RUN_HANDLE || e->p != NULL);
  if (e->kind == ML_RUN_HANDLE && !*anchor) {
    *T = push_anchor(L);
    *anchor = lua_gettop(L);
  }
  if (timed) {
    t0 = now_mono();
    if (e->kind == ML_RUN_TASK && ((ml_Task *)e->p)->ref != LUA_NOREF) ml__task_push(L, e->p);
    else lua_pushnil(L);
  }
  switch (e->kind) {
  case ML_RUN_TASK:
    ml__task_step(S, e->p);
    break;
  case ML_RUN_HANDLE:
    if (e->p) handle_run(L, *T, *anchor, e);
    else timers_run(S, *T, *anchor);
    break;
  case ML_RUN_FUTURE_CALLBACKS:
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref);
    luaL_unref(L, LUA_REGISTRYINDEX, e->ref);
    ml__future_run_callbacks(L);
    break;
  }
  if (timed) {
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
  Timers *T = NULL;
  int anchor = 0;
  while (n-- > 0 && ml__readyq_pop(&S->ready, &e) == 0) run_entry(S, &e, &T, &anchor);
  if (anchor) lua_remove(S->L, anchor);
  if (S->ready.len == 0) {
    if (!defer_idle_poll) poll_io(S, EVRUN_NOWAIT);
  } else if (S->nstep - S->last_poll_step >= POLL_STEPS
             || (S->nstep - S->last_poll_step >= POLL_CLOCK_STEPS
                 && now_mono() - S->last_poll >= POLL_SECONDS)) {
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

/* Upvalues: the Handle metatable, the Timers, the anchor table. */
static const luaL_Reg timer_methods[] = {
  { "call_soon", loop_call_soon },
  { "call_later", loop_call_later },
  { "call_at", loop_call_at },
  { NULL, NULL }
};

/* Upvalue: the Timers. */
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
  Timers *T;
  S->last_poll = now_mono();
  T = lua_newuserdatauv(L, sizeof *T, 1);  /* the Timers, kept in the registry */
  memset(T, 0, sizeof *T);
  T->S = S;
  ev_init(&T->timer, timers_cb);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, timers_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_newtable(L);  /* the anchor table */
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &timers_key);
  S->timers = T;
  luaL_newmetatable(L, ML_HANDLE_MT);
  lua_newtable(L);
  lua_pushvalue(L, -3);
  luaL_setfuncs(L, handle_methods, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, handle_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newmetatable(L, ML_LOOP_MT);
  luaL_newlib(L, loop_methods);
  lua_pushvalue(L, -3);                        /* the Handle metatable, */
  lua_pushvalue(L, -5);                        /* the Timers, */
  lua_getiuservalue(L, -1, 1);                 /* the anchor table */
  luaL_setfuncs(L, timer_methods, 3);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  /* The loop object itself: a table holding the timer methods (the hot
   * ones: no __index hop per call_later, -120 instructions a timer), whose
   * metatable's __index has the rest, including those modules add. */
  lua_newtable(L);
  lua_pushvalue(L, -4);                        /* the Handle metatable, */
  lua_pushvalue(L, -6);                        /* the Timers, */
  lua_getiuservalue(L, -1, 1);                 /* the anchor table */
  luaL_setfuncs(L, timer_methods, 3);
  lua_pushvalue(L, -3);
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, ML_LOOP_MT ".instance");
  lua_replace(L, -4);                          /* leaves the methods table */
  lua_pop(L, 2);
}
