/* task.c: asyncio.Task, a Future that runs a function in its own Lua
 * thread.  task_step is the one place in moonloop that calls lua_resume.
 * Sleeping (asyncio.sleep, its timers and deadlines) is sleep.c. */
#include <errno.h>
#include <string.h>
#include "task.h"
#include "budget.h"
#include "coro.h"
#include "sched.h"
#include "exc.h"
#include "loop.h"

/* Returned (first) by task_body when the task's function raised. */
static const char err_marker = 'E';

ml_Task *ml__task_current(lua_State *L) { return ml__state(L)->current; }

/* Thread co is marked parked in an await: the low bit of its extra space
 * (ml__set_parked), set by suspend as it yields, cleared by resume_k. */
static int is_parked(lua_State *co) { return (int)(*(uintptr_t *)lua_getextraspace(co) & 1); }

/* [-0, +1] pushes task t (anchored while pending). */
void ml__task_push(lua_State *L, ml_Task *t) { lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref); }

void ml__task_wake(ml_Task *t) {
  ml_Entry e;
  if (!t->suspended || t->queued) return;
  t->suspended = 0;
  t->queued = 1;
  e.kind = ML_RUN_TASK;
  e.p = t;
  e.ref = LUA_NOREF;
  /* Out of memory here would strand the task; the ring grows by doubling
   * and tasks are few compared to memory, so treat failure as fatal to
   * the task: it is left queued=0 and reported by ml_state_close. */
  if (ml__readyq_push(&t->fut.S->ready, e) < 0) t->queued = 0;
}

/* ---- running a task ---- */

static int task_body(lua_State *L);

/* The message handler of a task's body: records the traceback of an error
 * where it was raised, leaving the error value itself unchanged.
 * msgh(error) -> error */
static int task_msgh(lua_State *L) {
  ml_State *S = ml__state(L);
  ml_Task *t = S->current;
  if (t == NULL || ml__exc_is(L, 1, "CancelledError")) return 1;
  ml__traceback(L, task_body); /* the last frame, task_body, is moonloop's */
  ml__task_push(L, t);
  /* If this error is one that await re-raised from another task, prepend
   * that task's traceback: the chain of awaits. */
  ml__xget(L, -1, X_CAUSE_EXC);
  if (lua_rawequal(L, -1, 1)) {
    ml__xget(L, -2, X_CAUSE_TB);
    if (lua_isstring(L, -1)) {
      lua_pushstring(L, "\n(the error above was raised in an awaited task; the awaiting task:)\n");
      lua_pushvalue(L, 2);
      lua_concat(L, 3);
      lua_replace(L, 2);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  lua_pushvalue(L, 2);
  ml__xset(L, -2, X_TB);
  lua_settop(L, 1);
  return 1;
}

/* push_memory_error() -> MemoryError */
static int push_memory_error(lua_State *L) {
  ml__exc_push(L, "MemoryError", "not enough memory");
  return 1;
}

/* Continuation of task_body's pcall: -> results, or err_marker and the
 * error. */
static int task_body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  if (status == LUA_ERRMEM) {
    /* Lua's own out-of-memory error is a bare string: make it a
     * MemoryError if the memory for one is there now. */
    lua_pushcfunction(L, push_memory_error);
    if (lua_pcall(L, 0, 1, 0) == LUA_OK) {
      lua_replace(L, -2);
    } else {
      /* Still no memory: the MemoryError made when the limit was set. */
      lua_pop(L, 2);
      ml__push_memory_error(L);
    }
  }
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushlightuserdata(L, (void *)&err_marker);
    lua_insert(L, -2);
    return 2;
  }
  return lua_gettop(L) - 1;
}

/* The first function of every task thread: calls the task's function in
 * protected mode, so that to-be-closed variables are closed (and may
 * await) as an error unwinds, and the traceback is taken where it was
 * raised.  [msgh, fn, args...] -> results, or err_marker and the error. */
static int task_body(lua_State *L) {
  /* [msgh, fn, args...]: start() put the handler first, for pcall. */
  return task_body_k(L, lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 1, 0, task_body_k), 0);
}

static void unlink_task(ml_State *S, ml_Task *t) {
  if (t->prev) t->prev->next = t->next;
  if (t->next) t->next->prev = t->prev;
  if (S->tasks == t) S->tasks = t->next;
  t->prev = t->next = NULL;
}

/* Task threads are pooled: a task takes one when it first runs and gives
 * it back when it finishes, so a task that never suspends costs no thread
 * of its own, and creating many tasks allocates no thread until they run.
 * A pooled thread stays anchored in its slot of the pool (a user value of
 * the pool's userdata) while a task has it, so lending and returning it
 * is C bookkeeping only (docs/performance.md, "Tasks (gather)").  Past THREAD_POOL_MAX threads
 * lent at once, a task's thread is its own, anchored in TUV_THREAD.  (A
 * script that kept coroutine.running() of a finished task would see the
 * thread reused; nothing in asyncio's model gives it reason to.) */
#define THREAD_POOL_MAX 256
static const char pool_key = 'P';

struct ml_Pool {
  lua_State *co[THREAD_POOL_MAX + 1]; /* by slot (1..); NULL: none yet */
  int idle[THREAD_POOL_MAX];          /* slots to lend, a stack */
  int nidle, nslots;
};

/* [-0, +1] pushes the pool's userdata. */
static void push_pool(lua_State *L) { lua_rawgetp(L, LUA_REGISTRYINDEX, &pool_key); }

/* Gives task t (at tidx of L) a thread: a pooled one, or its own.
 * [-0, +0] */
static lua_State *take_thread(ml_State *S, lua_State *L, ml_Task *t, int tidx) {
  struct ml_Pool *P = S->pool;
  lua_State *co;
  int slot;
  if (P->nidle > 0 && P->co[P->idle[P->nidle - 1]] != NULL) {
    slot = P->idle[--P->nidle];
  } else if (P->nidle > 0 || P->nslots < THREAD_POOL_MAX) {
    slot = P->nidle > 0 ? P->idle[P->nidle - 1] : P->nslots + 1;
    push_pool(L);
    co = lua_newthread(L); /* may raise: nothing is taken yet */
    lua_setiuservalue(L, -2, slot);
    lua_pop(L, 1);
    if (P->nidle > 0) P->nidle--;
    else P->nslots++;
    P->co[slot] = co;
  } else {
    co = lua_newthread(L);
    lua_setiuservalue(L, tidx, TUV_THREAD);
    t->pool_slot = 0;
    return co;
  }
  t->pool_slot = slot;
  return P->co[slot];
}

/* Task t (at tidx of L) is done with its thread co.  [-0, +0] */
static void give_thread(ml_State *S, lua_State *L, ml_Task *t, int tidx, lua_State *co) {
  struct ml_Pool *P = S->pool;
  int slot = t->pool_slot;
  if (slot == 0) {
    lua_pushnil(L);
    lua_setiuservalue(L, tidx, TUV_THREAD);
    return;
  }
  t->pool_slot = 0;
  if (lua_status(co) != LUA_OK || lua_gettop(co) != 0) {
    /* Left in an error: not reusable; the slot gets a new one. */
    P->co[slot] = NULL;
    push_pool(L);
    lua_pushnil(L);
    lua_setiuservalue(L, -2, slot);
    lua_pop(L, 1);
  } else if (lua_gethook(co)) {
    lua_sethook(co, NULL, 0, 0);
  }
  P->idle[P->nidle++] = slot;
}

/* Completes task t with the n values on top of L (the thread that
 * steps it: the main state, or an eager task's creator), or, if failed,
 * the error value on top.  [-n, +0] */
static void finish(ml_State *S, lua_State *L, ml_Task *t, int n, int failed) {
  int tidx;
  ml__task_push(L, t);
  tidx = lua_gettop(L);
  if (n > 0) { /* the task below its results */
    lua_insert(L, tidx - n);
    tidx -= n;
  }
  if (t->co) {
    lua_State *co = t->co;
    t->co = NULL;
    give_thread(S, L, t, tidx, co);
  }
  t->k = NULL; /* awaits nothing (ml__task_awaits) */
  unlink_task(S, t);
  if (!failed && t->must_cancel) {
    /* Cancelled while it ran (itself, or by a callback it ran), and it
     * returned before any await could raise: it ends cancelled, as
     * asyncio's task does, its results dropped. */
    t->must_cancel = 0;
    lua_settop(L, tidx);
    ml__xget(L, tidx, X_MSG);
    ml__exc_push_with(L, "CancelledError");
    failed = 1;
  }
  /* Completing it may hand t->ref over to the done callbacks' entry. */
  if (!failed) {
    ml__future_set_result(L, tidx, n);
  } else if (ml__exc_is(L, -1, "CancelledError")) {
    lua_setiuservalue(L, tidx, FUV_RESULT);
    t->fut.state = ML_CANCELLED;
    ml__future_schedule(L, tidx, &t->fut);
  } else {
    /* Report-at-finish (ml_state_set_report_at_finish): nobody awaits it
     * and it has no done callback, so nobody is there to see it now. */
    int lonely =
      S->report_at_finish && t->fut.waiter == NULL && t->fut.ncallbacks == 0 && !t->fut.host_held;
    ml__future_set_exception(L, tidx);
    if (lonely) ml__future_report_now(L, tidx, &t->fut);
  }
  if (t->ref != LUA_NOREF) {
    ml__unref(L, t->ref);
    t->ref = LUA_NOREF;
  }
  lua_settop(L, tidx - 1);
}

/* A task's first step: takes a thread and puts task_body, the function
 * and its arguments on it.  A Coroutine gives way to its name: a running
 * task keeps its function alive through its thread, and a parked task is
 * ~100 bytes smaller without it (get_coro() returns nil from then on).
 * [-0, +0] on L: task_body, the message handler, the function and its
 * arguments go to the thread it returns. */
static lua_State *start(ml_State *S, lua_State *L, ml_Task *t) {
  lua_State *co;
  int tidx, base, n;
  ml__task_push(L, t);
  tidx = lua_gettop(L);
  if (t->packed) { /* a function's arguments, packed by spawn */
    lua_getiuservalue(L, tidx, TUV_THREAD);
    lua_pushnil(L);
    lua_setiuservalue(L, tidx, TUV_THREAD);
  } else if (t->in_place) {
    /* Made in place of its Coroutine (coro.c): its function waits in
     * TUV_THREAD, which a thread of its own takes; its name is in
     * FUV_RESULT already. */
    lua_getiuservalue(L, tidx, TUV_THREAD);
  }
  co = take_thread(S, L, t, tidx); /* may raise: nothing is lost yet */
  if (t->in_place && t->pool_slot != 0) {
    lua_pushnil(L);
    lua_setiuservalue(L, tidx, TUV_THREAD);
  }
  t->co = co;
  t->started = 1;
  base = lua_gettop(L);
  lua_pushcfunction(L, task_body);
  lua_pushcfunction(L, task_msgh);
  if (t->in_place) {
    lua_pushvalue(L, base);
    ml__coro_unload(L, tidx, t->coro_nargs);
  } else if (lua_getiuservalue(L, tidx, FUV_RESULT), t->from_coro) { /* see FUV_MISC */
    n = ml__coro_push(L, -1);
    ml__coro_push_name(L, -n - 1);
    lua_setiuservalue(L, tidx, FUV_RESULT);
    lua_remove(L, -n - 1);
  } else if (t->packed) {
    int i, k = (int)lua_rawlen(L, base);
    luaL_checkstack(L, k + 2, "too many arguments");
    for (i = 1; i <= k; i++) lua_rawgeti(L, base, i);
  }
  n = lua_gettop(L) - base;
  luaL_checkstack(co, n + 4, "too many arguments");
  lua_xmove(L, co, n);
  lua_settop(L, tidx - 1);
  return co;
}

/* [-0, +1] pushes the name of task t (its get_name()) and returns it. */
static const char *push_task_name(lua_State *L, ml_Task *t) {
  ml__task_push(L, t);
  if (ml__xget(L, -1, X_NAME) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushfstring(L, "Task-%I", (lua_Integer)t->id);
  }
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

/* Runs one step of t from thread L: the main state (the scheduler), or
 * the running thread that creates t eagerly (spawn).  [-0, +0] on L. */
static void step(ml_State *S, lua_State *L, ml_Task *t) {
  lua_State *co = t->co;
  ml_Task *prev = S->current;
  ml_State *stepping = NULL;
  int nargs = 0, nres = 0, status;

  t->queued = 0;
  t->suspended = 0;
  if (t->fut.state != ML_PENDING) return;
  if (!t->started) {
    if (t->must_cancel) {
      /* Cancelled before it ever ran: its function never starts. */
      ml__task_push(L, t);
      ml__xget(L, -1, X_MSG);
      ml__exc_push_with(L, "CancelledError");
      lua_remove(L, -2);
      finish(S, L, t, 1, 1);
      return;
    }
    co = start(S, L, t);
    nargs = lua_gettop(co) - 1;
  }
  S->current = t;
  if (prev == NULL) { /* an eager step is part of its creator's */
    stepping = ml__tls_stepping;
    ml__tls_stepping = S;
    ml__budget_step_begin(S, co);
    status = lua_resume(co, L, nargs, &nres);
    ml__budget_step_end(S);
    ml__tls_stepping = stepping;
  } else {
    lua_State *running = ml__budget_enter(S, co);
    status = lua_resume(co, L, nargs, &nres);
    ml__budget_leave(S, running);
  }
  S->current = prev;

  if (status == LUA_YIELD) {
    /* An await yields no value and marks the thread parked (suspend):
     * telling it costs no API call on the task switch. */
    if (nres == 0 && is_parked(co)) return; /* whatever it waits for will wake it */
    /* A plain coroutine.yield() reached the scheduler: not an await. */
    lua_pop(co, nres);
    lua_resetthread(co);
    ml__exc_push(L, "RuntimeError",
                 "task '%s' yielded with coroutine.yield() outside a generator; "
                 "use await to wait for something",
                 push_task_name(L, t));
    lua_remove(L, -2);
    finish(S, L, t, 1, 1);
    return;
  }
  if (status == LUA_OK) {
    if (nres == 2 && lua_touserdata(co, -2) == &err_marker) {
      lua_xmove(co, L, 1);
      lua_settop(co, 0);
      finish(S, L, t, 1, 1);
    } else if (nres > 0 && !lua_checkstack(L, nres + LUA_MINSTACK)) {
      /* More results than a stack holds (about a million). */
      lua_settop(co, 0);
      ml__exc_push(L, "RuntimeError", "task '%s' returned too many values (%d)",
                   push_task_name(L, t), nres);
      lua_remove(L, -2);
      finish(S, L, t, 1, 1);
    } else {
      if (nres > 0) lua_xmove(co, L, nres);
      finish(S, L, t, nres, 0);
    }
    return;
  }
  /* An error task_body could not catch (out of memory in the handler, or
   * eager tasks nested past Lua's C stack limit). */
  lua_xmove(co, L, 1);
  finish(S, L, t, 1, 1);
}

/* [-0, +0] on the main state. */
void ml__task_step(ml_State *S, ml_Task *t) { step(S, S->L, t); }

/* ---- suspension ---- */

/* A thread parked in an await is marked (ml__set_parked), so that the
 * coroutine library (stdlib/asyncio.lua) can refuse to resume or close it
 * from anywhere but its task: that would leave whatever wakes the task
 * pointing at a dead thread.  The mark is a bit of the thread's extra
 * space: no API call on the task switch. */
int ml__task_parked(lua_State *co) { return lua_status(co) == LUA_YIELD && is_parked(co); }

/* The continuation of every suspension: -> what the suspension's k
 * returns, or raises CancelledError. */
static int resume_k(lua_State *L, int status, lua_KContext unused) {
  ml_Task *t = ml__state(L)->current;
  lua_KFunction k;
  lua_KContext ctx;
  (void)unused;
  if (t == NULL || t->k == NULL) /* resumed by something else: see above */
    return luaL_error(L, "a coroutine that awaits was resumed from outside its task");
  ml__set_parked(L, 0);
  k = t->k;
  ctx = t->kctx;
  t->k = NULL;
  t->hook = NULL;
  if (t->must_cancel) {
    int always = t->k_always;
    t->must_cancel = 0;
    t->k_always = 0;
    ml__task_push(L, t);
    ml__xget(L, -1, X_MSG);
    ml__exc_push_with(L, "CancelledError");
    lua_remove(L, -2);
    if (always) return k(L, LUA_ERRRUN, ctx);
    return lua_error(L);
  }
  t->k_always = 0;
  return k(L, status, ctx);
}

/* Suspends the running task; with requeue, it is put straight back on the
 * ready queue (sleep(0)); with always, k runs on cancellation too.
 * lua_yieldk does not return.
 * [-0, +1] raises RuntimeError: never returns. */
int ml__task_raise_outside(lua_State *L) {
  return ml__exc_raise(L, "RuntimeError", "await outside of a running task");
}

/* Raises the error of a suspension that cannot be: t is the running task
 * (or NULL).  Out of line: suspend() is on every await's path.  Never
 * returns. */
static int raise_unsuspendable(lua_State *L, ml_Task *t) {
  if (t == NULL) return ml__task_raise_outside(L);
  return ml__exc_raise(L, "RuntimeError",
                       "cannot await here: a C function or metamethod that cannot "
                       "yield is on the stack (for instance table.sort's comparator)");
}

/* [-0, +0] or raises RuntimeError. */
int ml__task_check_suspendable(lua_State *L) {
  ml_Task *t = ml__state(L)->current;
  if (t == NULL || !lua_isyieldable(L)) return raise_unsuspendable(L, t);
  return 0;
}

/* [-0, +0]: yields (lua_yieldk does not return); k then runs on the
 * stack as it was. */
static int suspend(lua_State *L, ml_CancelHook hook, void *ud, lua_KContext ctx, lua_KFunction k,
                   int requeue, int always) {
  ml_Task *t = ml__state(L)->current;
  if (t == NULL || !lua_isyieldable(L)) return raise_unsuspendable(L, t);
  t->hook = hook;
  t->hook_ud = ud;
  t->k = k;
  t->kctx = ctx;
  t->k_always = always != 0;
  t->suspended = 1;
  if (t->must_cancel) {
    /* It was cancelled while it ran (cancel() of itself): asyncio
     * interrupts it at this await, and cancels what it awaits.  If the
     * hook passed the cancellation on, what it awaits wakes it; else it
     * runs again at once and the CancelledError is raised here. */
    if (hook && hook(L, t, ud)) t->must_cancel = 0;
    if (t->must_cancel) requeue = 1;
    t->hook = NULL;
  }
  if (requeue) ml__task_wake(t);
  ml__set_parked(L, 1);
  return lua_yieldk(L, 0, 0, resume_k);
}

/* [-0, +0]; goes to the end of the ready queue at once (sleep.c). */
int ml__task_requeue(lua_State *L, lua_KFunction k) { return suspend(L, NULL, NULL, 0, k, 1, 0); }

/* [-0, +0]; suspends; k runs when woken (not on cancellation). */
int ml__task_suspend(lua_State *L, ml_CancelHook hook, void *ud, lua_KContext ctx,
                     lua_KFunction k) {
  return suspend(L, hook, ud, ctx, k, 0, 0);
}

/* [-0, +0]; suspends; k runs on cancellation too (status LUA_ERRRUN,
 * the CancelledError on top). */
int ml__task_suspend_always(lua_State *L, ml_CancelHook hook, void *ud, lua_KContext ctx,
                            lua_KFunction k) {
  return suspend(L, hook, ud, ctx, k, 0, 1);
}

/* ---- creating tasks ---- */

/* spawn's kind: what the value below the arguments is. */
enum { SPAWN_ANY, SPAWN_CORO };

/* [-(nargs+1), +1] pops the function (or Coroutine) and its nargs
 * arguments, pushes the new task, queued to run; or, eager and with the
 * loop running, runs its first step at once from L (Python 3.12's eager
 * tasks): a task that finishes in it never touches the ready queue, and
 * one that suspends is woken as any other.  The step runs as part of the
 * creator's (current_task() is the new task inside it, the creator's
 * again after; the CPU budget counts on). */
static ml_Task *spawn(lua_State *L, int nargs, const char *name, int kind, int eager,
                      ml_Task *in_place) {
  ml_State *S = ml__state(L);
  int fidx = lua_gettop(L) - nargs; /* the function or Coroutine */
  ml_Task *t;

  if (in_place) {
    /* The Coroutine on top is the Task already (ml__coro_take): one
     * userdata and one collection a task, not two. */
    t = in_place;
    t->fut.S = S;
    t->fut.is_task = 1;
    t->ref = LUA_NOREF;
    t->id = ++S->task_seq;
    t->from_coro = 1;
    t->in_place = 1;
    if (name) {
      lua_pushstring(L, name);
      ml__xset(L, -2, X_NAME);
    }
    goto anchor;
  }
  t = (ml_Task *)ml__future_alloc(L, sizeof(ml_Task), TUV_NTASK, 1);
  t->fut.is_task = 1;
  t->ref = LUA_NOREF;
  t->id = ++S->task_seq;
  lua_insert(L, fidx); /* task below the function */
  fidx++;
  if (name) {
    lua_pushstring(L, name);
    ml__xset(L, fidx - 1, X_NAME);
  }
  /* A Coroutine is the task's from now on. */
  t->from_coro = kind == SPAWN_CORO || ml__coro_claim(L, fidx) != 0;
  lua_pushvalue(L, fidx);
  lua_setiuservalue(L, fidx - 1, FUV_RESULT); /* until it starts */
  if (nargs > 0) {
    /* A function's arguments wait in the thread's slot until it starts. */
    int i;
    lua_createtable(L, nargs, 0);
    for (i = 1; i <= nargs; i++) {
      lua_pushvalue(L, fidx + i);
      lua_rawseti(L, -2, i);
    }
    lua_setiuservalue(L, fidx - 1, TUV_THREAD);
    t->packed = 1;
  }
  lua_settop(L, fidx - 1); /* leaves the task on top */
anchor:
  lua_pushvalue(L, -1);
  t->ref = ml__ref(L);
  t->next = S->tasks;
  if (S->tasks) S->tasks->prev = t;
  S->tasks = t;
  if (eager && (S->running > 0 || S->current != NULL)) {
    step(S, L, t); /* leaves the task on top */
    return t;
  }
  t->suspended = 1;
  ml__task_wake(t);
  return t;
}

/* [-(nargs+1), +1] */
ml_Task *ml__task_spawn(lua_State *L, int nargs, const char *name) {
  return spawn(L, nargs, name, SPAWN_ANY, 0, NULL);
}

/* [-1, +1] */
ml_Task *ml__task_spawn_coro(lua_State *L, const char *name, int eager, ml_Task *in_place) {
  return spawn(L, 0, name, SPAWN_CORO, eager, in_place);
}

/* [-1, +1] */
ml_Task *ml__task_spawn_fn(lua_State *L, const char *name, int eager) {
  return spawn(L, 0, name, SPAWN_ANY, eager, NULL);
}

/* ---- Lua methods ---- */

/* [-0, +0] the task at idx, or a type error. */
static ml_Task *check_task(lua_State *L, int idx) {
  ml_Future *f = ml__future_test(L, idx);
  if (f == NULL || !f->is_task) luaL_typeerror(L, idx, ML_TASK_MT);
  return (ml_Task *)f;
}

/* Cancel hook of a task awaiting a future: cancels that future.  The task
 * is woken by the future's completion.  ud is the thread that awaits (the
 * task's, or a generator's inside it), suspended in ml__await_future,
 * whose first value is the future: that keeps it alive, and a user value
 * of the task for it would cost every parked task 16 bytes.
 * [-0, +0] */
static int await_cancel_hook(lua_State *L, ml_Task *t, void *ud) {
  lua_State *aw = ud;
  int r;
  lua_pushvalue(aw, 1);
  lua_xmove(aw, L, 1);
  ml__task_push(L, t);
  ml__xget(L, -1, X_MSG);
  r = ml__future_test(L, -3) ? ml__future_cancel_msg(L, -3, lua_gettop(L)) : 0;
  lua_pop(L, 3);
  return r;
}

/* [-0, +0] asks task t to cancel (message at msgidx, 0: none); returns
 * 1 if it was pending. */
int ml__task_cancel(lua_State *L, ml_Task *t, int msgidx) {
  if (t->fut.state != ML_PENDING) return 0;
  t->num_cancels++;
  /* Tested before the push: t:cancel() with no message has none at 2,
   * where the task would be once pushed. */
  if (msgidx && lua_isnoneornil(L, msgidx)) msgidx = 0;
  ml__task_push(L, t);
  if (msgidx) lua_pushvalue(L, msgidx);
  else lua_pushnil(L);
  ml__xset(L, -2, X_MSG);
  lua_pop(L, 1);
  /* A task woken but not yet run is told too if it asked (k_always: the
   * queue's, whose getter may hold an item handed to it). */
  if ((t->suspended || (t->queued && t->k_always)) && t->hook) {
    ml_CancelHook hook = t->hook;
    t->hook = NULL;
    if (hook(L, t, t->hook_ud)) return 1;
  }
  t->must_cancel = 1;
  ml__task_wake(t);
  return 1;
}

/* t:cancel(msg) -> boolean */
static int task_cancel(lua_State *L) {
  ml_Task *t = check_task(L, 1);
  lua_pushboolean(L, ml__task_cancel(L, t, 2));
  return 1;
}

/* t:cancelling() -> integer */
static int task_cancelling(lua_State *L) {
  lua_pushinteger(L, check_task(L, 1)->num_cancels);
  return 1;
}

/* t:uncancel() -> integer */
static int task_uncancel(lua_State *L) {
  ml_Task *t = check_task(L, 1);
  if (t->num_cancels > 0 && --t->num_cancels == 0) t->must_cancel = 0;
  lua_pushinteger(L, t->num_cancels);
  return 1;
}

/* t:get_name() -> string */
static int task_get_name(lua_State *L) {
  ml_Task *t = check_task(L, 1);
  if (ml__xget(L, 1, X_NAME) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_pushfstring(L, "Task-%I", (lua_Integer)t->id);
  }
  return 1;
}

/* t:set_name(name) -> nothing */
static int task_set_name(lua_State *L) {
  check_task(L, 1);
  luaL_tolstring(L, 2, NULL);
  ml__xset(L, 1, X_NAME);
  return 0;
}

/* task:get_coro(): the Coroutine the task was made of, until it starts
 * (then nil: see start()); or its function, if made of one.
 * -> coroutine | function | nil */
static int task_get_coro(lua_State *L) {
  ml_Task *t = check_task(L, 1);
  if (t->fut.state != ML_PENDING || t->started) lua_pushnil(L);
  else if (t->in_place) lua_pushvalue(L, 1); /* it was that Coroutine */
  else lua_getiuservalue(L, 1, FUV_RESULT);
  return 1;
}

/* task:get_stack(): the frames of a suspended task, innermost first, as
 * strings "file:line: in function 'f'".  -> list with n */
static int task_get_stack(lua_State *L) {
  ml_Task *t = check_task(L, 1);
  lua_Debug ar;
  int level, n = 0;
  lua_newtable(L);
  if (t->co && t->started) {
    for (level = 0; lua_getstack(t->co, level, &ar); level++) {
      lua_getinfo(t->co, "Sln", &ar);
      if (ar.currentline <= 0) continue;
      lua_pushfstring(L, "%s:%d: in %s%s%s", ar.short_src, ar.currentline,
                      ar.name ? "function '" : "main chunk", ar.name ? ar.name : "",
                      ar.name ? "'" : "");
      lua_rawseti(L, -2, ++n);
    }
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  return 1;
}

/* task:get_traceback() -> the traceback recorded when the task failed,
 * or nil. */
static int task_get_traceback(lua_State *L) {
  check_task(L, 1);
  ml__xget(L, 1, X_TB);
  return 1;
}

/* <Task pending name='Task-1' coro=<coroutine worker>>, and once done
 * <Task finished name='Task-1' result=42> (or exception=..., or
 * <Task cancelled name='Task-1'>), as asyncio's repr.  __tostring(t) ->
 * string */
static int task_tostring(lua_State *L) {
  ml_Task *t = check_task(L, 1);
  const char *name;
  task_get_name(L);
  name = lua_tostring(L, -1);
  switch (t->fut.state) {
  case ML_PENDING:
    switch (lua_getiuservalue(L, 1, FUV_RESULT)) {
    case LUA_TSTRING: /* started */
      lua_pushfstring(L, "<coroutine %s>", lua_tostring(L, -1));
      break;
    case LUA_TFUNCTION: { /* made of a function (the main task: the chunk) */
      lua_Debug ar;
      lua_pushvalue(L, -1);
      lua_getinfo(L, ">S", &ar);
      if (*ar.what == 'C') lua_pushliteral(L, "<function [C]>");
      else if (*ar.what == 'm') lua_pushfstring(L, "<main chunk of %s>", ar.short_src);
      else lua_pushfstring(L, "<function at %s:%d>", ar.short_src, ar.linedefined);
      break;
    }
    default: luaL_tolstring(L, -1, NULL);
    }
    lua_pushfstring(L, "<Task pending name='%s' coro=%s>", name, lua_tostring(L, -1));
    break;
  case ML_CANCELLED: lua_pushfstring(L, "<Task cancelled name='%s'>", name); break;
  case ML_EXCEPTION:
    lua_getiuservalue(L, 1, FUV_RESULT);
    lua_pushfstring(L, "<Task finished name='%s' exception=%s>", name, luaL_tolstring(L, -1, NULL));
    break;
  default:
    if (t->fut.nres == 0) {
      lua_pushnil(L);
    } else {
      ml__future_unwrap(L, 1);
      lua_settop(L, 3); /* the first result */
    }
    lua_pushfstring(L, "<Task finished name='%s' result=%s>", name, luaL_tolstring(L, -1, NULL));
  }
  return 1;
}

static const luaL_Reg task_methods[] = {
  {"cancel", task_cancel},       {"cancelling", task_cancelling},       {"uncancel", task_uncancel},
  {"get_name", task_get_name},   {"set_name", task_set_name},           {"get_coro", task_get_coro},
  {"get_stack", task_get_stack}, {"get_traceback", task_get_traceback}, {NULL, NULL},
};

/* [-0, +0] makes the thread pool and the Task metatable. */
void ml__task_open(lua_State *L) {
  struct ml_Pool *P = lua_newuserdatauv(L, sizeof *P, THREAD_POOL_MAX);
  memset(P, 0, sizeof *P);
  ml__state(L)->pool = P;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &pool_key);
  ml__future_mt_init(L, 1, task_methods, task_tostring);
}

/* The await of futures and tasks: see coro.c for the dispatch.
 * Continuation: -> the future's results, or raises. */
int ml__await_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return ml__future_unwrap(L, 1);
}

/* await of f (at 1): -> its results, now or once it is done. */
int ml__await_future(lua_State *L, ml_Future *f) {
  ml_Task *t = ml__state(L)->current;
  if (f->state != ML_PENDING) return ml__future_unwrap(L, 1);
  if (t == NULL) return ml__task_raise_outside(L);
  if (&t->fut == f) return ml__exc_raise(L, "RuntimeError", "Task cannot await on itself");
  ml__task_check_suspendable(L);
  ml__future_add_waiter(L, 1, f, t);
  return ml__task_suspend(L, await_cancel_hook, L, (lua_KContext)f, ml__await_k);
}

lua_KContext ml__task_kctx(const ml_Task *t) { return t->kctx; }

void ml__task_disarm(ml_Task *t, ml_CancelHook hook, void *ud) {
  if (t->hook == hook && t->hook_ud == ud) t->hook = NULL;
}
