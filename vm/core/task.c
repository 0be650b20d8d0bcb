/* task.c: asyncio.Task, a Future that runs a function in its own Lua
 * thread.  task_step is the one place in moonloop that calls lua_resume. */
#include <errno.h>
#include <string.h>
#include "task.h"
#include "coro.h"
#include "sched.h"
#include "exc.h"
#include "loop.h"

const char ml__await_marker = 'A';
/* Returned (first) by task_body when the task's function raised. */
static const char err_marker = 'E';

ml_Task *ml__task_current(lua_State *L) { return ml__state(L)->current; }

/* [-0, +1] pushes task t (anchored while pending). */
void ml__task_push(lua_State *L, ml_Task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
}

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
  ml__traceback(L, task_body);  /* the last frame, task_body, is moonloop's */
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
  lua_State *co[THREAD_POOL_MAX + 1];  /* by slot (1..); NULL: none yet */
  int idle[THREAD_POOL_MAX];           /* slots to lend, a stack */
  int nidle, nslots;
};

/* [-0, +1] pushes the pool's userdata. */
static void push_pool(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &pool_key);
}

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
    co = lua_newthread(L);  /* may raise: nothing is taken yet */
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
  if (n > 0) {  /* the task below its results */
    lua_insert(L, tidx - n);
    tidx -= n;
  }
  if (t->co) {
    lua_State *co = t->co;
    t->co = NULL;
    give_thread(S, L, t, tidx, co);
  }
  t->awaiting = NULL;
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
    int lonely = S->report_at_finish && t->fut.waiter == NULL && t->fut.ncallbacks == 0
                 && !t->fut.host_held;
    ml__future_set_exception(L, tidx);
    if (lonely) ml__future_report_now(L, tidx, &t->fut);
  }
  if (t->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
  }
  lua_settop(L, tidx - 1);
}

/* The CPU budget: the hook counts instructions in slices, and a task step
 * that runs past the state's budget is terminated: from then on the hook
 * fires at every instruction, call and return of the task's threads and
 * raises each time, so a pcall, an error handler or a __close that
 * catches the error only gets one instruction further - the task's frames
 * unwind to the scheduler (as V8's TerminateExecution).  Threads a task
 * creates inherit the hook.
 *
 * Its cost: Lua 5.4 runs luaG_traceexec before every instruction while a
 * count hook is set, whatever the count (the count only says how often
 * the hook itself runs), so a budgeted step runs Lua code about 1.9-2.2x
 * slower (docs/performance.md, "Embedding"); BUDGET_SLICE only sets how
 * often the hook adds up (1 in 1,000 instructions: under 1% of it).
 *
 * Interrupts.  ml_state_interrupt(S) may come from any thread, so it
 * touches no Lua state: it writes the number of the step it wants stopped
 * to S->interrupt_seq (an atomic store), and the hook, which runs on the
 * loop's thread, compares it with the step under way at its next slice
 * and terminates the step as the budget does (but with KeyboardInterrupt).
 * S->step_seq numbers the steps: its low bit says a step runs, bit 1 that
 * it has the hook (a state with a budget).  A number once passed is never
 * reused, so an interrupt meant for a step that ended first stops nothing
 * later.  Without the hook (no budget) only the loop's own thread - a
 * signal handler interrupting the step, or a host function the step
 * called, which ml__tls_stepping tells - can stop it: with lua_sethook on
 * the task's thread, which Lua allows from a signal handler (lua.c's
 * Ctrl+C does the same) and which is no race on the thread that runs it. */
#define BUDGET_SLICE 1000

__thread ml_State *ml__tls_stepping __attribute__((tls_model("initial-exec")));

/* A step begins (hooked: it has the budget's hook) or ends. */
static void step_seq_begin(ml_State *S, int hooked) {
  unsigned long n = ((S->step_seq >> 2) + 1) << 2 | (hooked ? 3 : 1);
  __atomic_store_n(&S->step_seq, n, __ATOMIC_RELEASE);
}

static void step_seq_end(ml_State *S) {
  __atomic_store_n(&S->step_seq, S->step_seq & ~3UL, __ATOMIC_RELEASE);
}

/* ml_state_interrupt asked for this step to stop. */
static int interrupt_asked(ml_State *S) {
  return __atomic_load_n(&S->interrupt_seq, __ATOMIC_ACQUIRE) == S->step_seq;
}

static void budget_hook(lua_State *L, lua_Debug *ar);

/* Starts terminating the step under way, from the hook on thread L. */
static void terminate_step(ml_State *S, lua_State *L) {
  S->over_budget = 1;
  if (S->current && S->current->co && S->current->co != L)
    lua_sethook(S->current->co, budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
  lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
}

/* Raises the error of the step being terminated (never returns). */
static void raise_terminated(ml_State *S, lua_State *L) {
  if (S->interrupted) ml__exc_raise(L, "KeyboardInterrupt", NULL);
  ml__exc_raise(L, "RuntimeError",
                "task ran past its CPU budget of %I instructions without awaiting; "
                "it was stopped so the loop keeps running (await something, or "
                "raise the budget with ml_state_set_cpu_budget)", (lua_Integer)S->instr_budget);
}

/* Adds n to the step's count: 0 while within the budget, 1 if that
 * spent it (the step is then being terminated). */
static int spend(ml_State *S, lua_State *L, unsigned long n) {
  S->step_instr += n;
  if (S->step_instr <= S->instr_budget) return 0;
  if (S->budget_whole_state) {
    S->budget_dead = 1;
    S->stopping = 1;
  }
  terminate_step(S, L);
  return 1;
}

/* A lua_Hook: raises RuntimeError once the budget is spent, or
 * KeyboardInterrupt once an interrupt was asked (never returns then). */
static void budget_hook(lua_State *L, lua_Debug *ar) {
  ml_State *S = ml__state(L);
  (void)ar;
  if (!S->over_budget) {
    if (interrupt_asked(S)) {
      S->interrupted = 1;
      terminate_step(S, L);
      raise_terminated(S, L);
    }
    if (S->instr_budget == 0) {  /* a thread hooked by an old termination */
      lua_sethook(L, NULL, 0, 0);
      return;
    }
    if (!spend(S, L, BUDGET_SLICE)) return;
  } else if (lua_gethookcount(L) != 1) {
    lua_sethook(L, budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
  }
  raise_terminated(S, L);
}

void ml__budget_charge(lua_State *L, unsigned long n) {
  ml_State *S = ml__state(L);
  if (!(S->step_seq & 1)) return;  /* no task step runs: nothing to count */
  if (!S->over_budget) {
    if (interrupt_asked(S)) {
      S->interrupted = 1;
      terminate_step(S, L);
      raise_terminated(S, L);
    }
    if (S->instr_budget == 0 || !spend(S, L, n)) return;
  }
  raise_terminated(S, L);
}

int ml__task_interrupt(ml_State *S) {
  unsigned long seq = __atomic_load_n(&S->step_seq, __ATOMIC_ACQUIRE);
  if (!(seq & 1)) return -ESRCH;
  if (ml__tls_stepping == S) {
    /* On the thread running the step: a signal handler or a host
     * function.  Only stores and lua_sethook: async-signal-safe. */
    lua_State *co = S->current ? S->current->co : NULL;
    if (co == NULL) return -ESRCH;
    __atomic_store_n(&S->interrupt_seq, seq, __ATOMIC_RELEASE);
    lua_sethook(co, budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
    return 0;
  }
  if (!(seq & 2)) return -ENOTSUP;  /* no hook: nothing would look */
  __atomic_store_n(&S->interrupt_seq, seq, __ATOMIC_RELEASE);
  return 0;
}

/* [-0, +0] */
void ml__budget_arm(lua_State *co) {
  ml_State *S = ml__state(co);
  if (S->instr_budget == 0) return;
  if (S->over_budget) lua_sethook(co, budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
  else lua_sethook(co, budget_hook, LUA_MASKCOUNT, BUDGET_SLICE);
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
  if (t->packed) {  /* a function's arguments, packed by spawn */
    lua_getiuservalue(L, tidx, TUV_THREAD);
    lua_pushnil(L);
    lua_setiuservalue(L, tidx, TUV_THREAD);
  }
  co = take_thread(S, L, t, tidx);
  t->co = co;
  t->started = 1;
  base = lua_gettop(L);
  lua_pushcfunction(L, task_body);
  lua_pushcfunction(L, task_msgh);
  lua_getiuservalue(L, tidx, FUV_RESULT);  /* see FUV_MISC */
  if (t->from_coro) {
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
  if (prev == NULL) {  /* an eager step is part of its creator's */
    S->step_instr = 0;
    S->over_budget = 0;
    S->interrupted = 0;
  }
  if (S->instr_budget) ml__budget_arm(co);
  else if (lua_gethook(co) == budget_hook) lua_sethook(co, NULL, 0, 0);
  if (prev == NULL) {
    stepping = ml__tls_stepping;
    ml__tls_stepping = S;
    step_seq_begin(S, S->instr_budget != 0);
  }
  status = lua_resume(co, L, nargs, &nres);
  if (prev == NULL) {
    step_seq_end(S);
    ml__tls_stepping = stepping;
  }
  S->current = prev;

  if (status == LUA_YIELD) {
    if (nres == 1 && lua_touserdata(co, -1) == &ml__await_marker) {
      lua_pop(co, 1);
      return;  /* parked: whatever it waits for will wake it */
    }
    /* A plain coroutine.yield() reached the scheduler: not an await. */
    lua_pop(co, nres);
    lua_resetthread(co);
    ml__exc_push(L, "RuntimeError",
                 "task '%s' yielded with coroutine.yield() outside a generator; "
                 "use await to wait for something", push_task_name(L, t));
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
void ml__task_step(ml_State *S, ml_Task *t) {
  step(S, S->L, t);
}

/* ---- suspension ---- */

/* A thread parked in an await is marked (ml__set_parked), so that the
 * coroutine library (stdlib/asyncio.lua) can refuse to resume or close it
 * from anywhere but its task: that would leave whatever wakes the task
 * pointing at a dead thread.  The mark is a bit of the thread's extra
 * space: no API call on the task switch. */
int ml__task_parked(lua_State *co) {
  return lua_status(co) == LUA_YIELD && (*(uintptr_t *)lua_getextraspace(co) & 1);
}

/* The continuation of every suspension: -> what the suspension's k
 * returns, or raises CancelledError. */
static int resume_k(lua_State *L, int status, lua_KContext unused) {
  ml_Task *t = ml__state(L)->current;
  lua_KFunction k;
  lua_KContext ctx;
  (void)unused;
  if (t == NULL || t->k == NULL)  /* resumed by something else: see above */
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
static int suspend(lua_State *L, ml_CancelHook hook, void *ud,
                   lua_KContext ctx, lua_KFunction k, int requeue, int always) {
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
  lua_pushlightuserdata(L, (void *)&ml__await_marker);
  return lua_yieldk(L, 1, 0, resume_k);
}

/* [-0, +0]; suspends; k runs when woken (not on cancellation). */
int ml__task_suspend(lua_State *L, ml_CancelHook hook, void *ud,
                     lua_KContext ctx, lua_KFunction k) {
  return suspend(L, hook, ud, ctx, k, 0, 0);
}

/* [-0, +0]; suspends; k runs on cancellation too (status LUA_ERRRUN,
 * the CancelledError on top). */
int ml__task_suspend_always(lua_State *L, ml_CancelHook hook, void *ud,
                            lua_KContext ctx, lua_KFunction k) {
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
static ml_Task *spawn(lua_State *L, int nargs, const char *name, int kind, int eager) {
  ml_State *S = ml__state(L);
  int fidx = lua_gettop(L) - nargs;  /* the function or Coroutine */
  ml_Task *t;

  t = (ml_Task *)ml__future_alloc(L, sizeof(ml_Task), TUV_NTASK, 1);
  t->fut.is_task = 1;
  t->ref = LUA_NOREF;
  t->id = ++S->task_seq;
  lua_insert(L, fidx);  /* task below the function */
  fidx++;
  if (name) {
    lua_pushstring(L, name);
    ml__xset(L, fidx - 1, X_NAME);
  }
  /* A Coroutine is the task's from now on. */
  t->from_coro = kind == SPAWN_CORO || ml__coro_claim(L, fidx) != 0;
  lua_pushvalue(L, fidx);
  lua_setiuservalue(L, fidx - 1, FUV_RESULT);  /* until it starts */
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
  lua_settop(L, fidx - 1);  /* leaves the task on top */
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  t->next = S->tasks;
  if (S->tasks) S->tasks->prev = t;
  S->tasks = t;
  if (eager && (S->running > 0 || S->current != NULL)) {
    step(S, L, t);  /* leaves the task on top */
    return t;
  }
  t->suspended = 1;
  ml__task_wake(t);
  return t;
}

/* [-(nargs+1), +1] */
ml_Task *ml__task_spawn(lua_State *L, int nargs, const char *name) {
  return spawn(L, nargs, name, SPAWN_ANY, 0);
}

/* [-1, +1] */
ml_Task *ml__task_spawn_coro(lua_State *L, const char *name, int eager) {
  return spawn(L, 0, name, SPAWN_CORO, eager);
}

/* [-1, +1] */
ml_Task *ml__task_spawn_fn(lua_State *L, const char *name, int eager) {
  return spawn(L, 0, name, SPAWN_ANY, eager);
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
  if (t->fut.state != ML_PENDING || lua_getiuservalue(L, 1, FUV_RESULT) == LUA_TSTRING)
    lua_pushnil(L);
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
                      ar.name ? "function '" : "main chunk",
                      ar.name ? ar.name : "", ar.name ? "'" : "");
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
    case LUA_TSTRING:  /* started */
      lua_pushfstring(L, "<coroutine %s>", lua_tostring(L, -1));
      break;
    case LUA_TFUNCTION: {  /* made of a function (the main task: the chunk) */
      lua_Debug ar;
      lua_pushvalue(L, -1);
      lua_getinfo(L, ">S", &ar);
      if (*ar.what == 'C')
        lua_pushliteral(L, "<function [C]>");
      else if (*ar.what == 'm')
        lua_pushfstring(L, "<main chunk of %s>", ar.short_src);
      else
        lua_pushfstring(L, "<function at %s:%d>", ar.short_src, ar.linedefined);
      break;
    }
    default:
      luaL_tolstring(L, -1, NULL);
    }
    lua_pushfstring(L, "<Task pending name='%s' coro=%s>", name, lua_tostring(L, -1));
    break;
  case ML_CANCELLED:
    lua_pushfstring(L, "<Task cancelled name='%s'>", name);
    break;
  case ML_EXCEPTION:
    lua_getiuservalue(L, 1, FUV_RESULT);
    lua_pushfstring(L, "<Task finished name='%s' exception=%s>", name,
                    luaL_tolstring(L, -1, NULL));
    break;
  default:
    if (t->fut.nres == 0) {
      lua_pushnil(L);
    } else {
      ml__future_unwrap(L, 1);
      lua_settop(L, 3);  /* the first result */
    }
    lua_pushfstring(L, "<Task finished name='%s' result=%s>", name,
                    luaL_tolstring(L, -1, NULL));
  }
  return 1;
}

static const luaL_Reg task_methods[] = {
  { "cancel", task_cancel },
  { "cancelling", task_cancelling },
  { "uncancel", task_uncancel },
  { "get_name", task_get_name },
  { "set_name", task_set_name },
  { "get_coro", task_get_coro },
  { "get_stack", task_get_stack },
  { "get_traceback", task_get_traceback },
  { NULL, NULL }
};

/* ---- sleep ----
 * A sleeping task's ev_timer is allocated for the sleep, kept as the
 * suspension's hook_ud (with sleep_hook as its hook), and freed when it
 * fires or is stopped: parked tasks that do not sleep (most) carry no
 * timer at all.
 *
 * The next deadline: a host stepping the loop (ml_state_step) asks for
 * it after every step, and libev has no call for its own next timer.  So
 * from the first time it is asked, the sleepers' deadlines are also kept
 * in S->sleepers (a timerheap.c heap: a push is a store when sleeps come
 * in deadline order, a wake-up a lazy cancel), and the answer is its top,
 * not a walk over every task (10,000 sleepers: 234 us a step).  Until
 * then - a loop run by ml_state_run never asks - sleeping costs no heap
 * (it measured +250 instructions a sleep, the heap's pops). */

typedef struct Sleep {
  ev_timer w;               /* first: the hook_ud is also the ev_timer */
  int id;                   /* its entry in S->sleepers, or 0 */
} Sleep;

static int sleep_hook(lua_State *L, ml_Task *t, void *ud);

static Sleep *sleep_of(ml_Task *t) {
  return t->suspended && t->hook == sleep_hook ? t->hook_ud : NULL;
}

/* Puts s, sleeping until now + remaining, in S->sleepers; 0 or -ENOMEM. */
static int sleep_track(ml_State *S, Sleep *s, double remaining) {
  int id = ml__theap_prepare(&S->sleepers);
  if (id < 0) return id;
  ml__theap_push(&S->sleepers, ml__now() + remaining, id);
  s->id = id;
  return 0;
}

/* Starts keeping the deadlines: every sleeper's goes in the heap once. */
static int sleepers_track(ml_State *S) {
  ml_Task *t;
  for (t = S->tasks; t; t = t->next) {
    Sleep *s = sleep_of(t);
    if (s && s->id == 0 && sleep_track(S, s, ev_timer_remaining(S->loop, &s->w)) < 0) {
      for (t = S->tasks; t; t = t->next)  /* out of memory: as before */
        if ((s = sleep_of(t))) s->id = 0;
      ml__theap_free(&S->sleepers);
      return -ENOMEM;
    }
  }
  S->track_sleepers = 1;
  return 0;
}

int ml__task_sleep_next(ml_State *S, double *remaining) {
  double when, best = 0;
  int found = 0;
  ml_Task *t;
  if (S->nsleeping == 0) return 0;
  if (S->track_sleepers || sleepers_track(S) == 0) {
    if (!ml__theap_top(&S->sleepers, &when)) return 0;
    when -= ml__now();
    *remaining = when > 0 ? when : 0;
    return 1;
  }
  for (t = S->tasks; t; t = t->next) {  /* no memory for the heap */
    Sleep *s = sleep_of(t);
    if (s) {
      double r = ev_timer_remaining(S->loop, &s->w);
      if (!found || r < best) best = r;
      found = 1;
    }
  }
  *remaining = best > 0 ? best : 0;
  return found;
}

/* Stops and frees s, the timer of task t.  [-0, +0] */
static void sleep_stop(ml_State *S, ml_Task *t, Sleep *s) {
  void *ud;
  lua_Alloc f = lua_getallocf(S->L, &ud);
  if (s == NULL) return;
  if (t->hook_ud == s) t->hook_ud = NULL;
  ev_timer_stop(S->loop, &s->w);
  if (s->id) ml__theap_cancel(&S->sleepers, s->id);
  f(ud, s, sizeof *s, 0);
  S->nsleeping--;
}

void ml__task_stop_timers(ml_State *S) {
  ml_Task *t;
  for (t = S->tasks; t && S->nsleeping > 0; t = t->next) sleep_stop(S, t, sleep_of(t));
}

static void sleep_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  ml_Task *t = w->data;
  (void)loop; (void)revents;
  sleep_stop(t->fut.S, t, (Sleep *)w);
  ml__task_wake(t);
}

/* [-0, +0] */
static int sleep_hook(lua_State *L, ml_Task *t, void *ud) {
  (void)L;
  sleep_stop(t->fut.S, t, ud);
  return 0;
}

/* Continuation: -> the values after the delay. */
static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status; (void)ctx;
  return lua_gettop(L) - 1;  /* the values after the delay */
}

/* Continuation: -> nothing. */
static int yield_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L; (void)status; (void)ctx;
  return 0;
}

/* Yields to the other ready tasks: -> nothing. */
int ml__task_yield_now(lua_State *L) {
  if (ml__state(L)->current == NULL) return ml__task_raise_outside(L);
  return suspend(L, NULL, NULL, 0, yield_k, 1, 0);
}

/* asyncio.sleep(delay, ...): returns its extra arguments after delay
 * seconds; sleep(0) only yields to the other ready tasks.
 * -> the extra arguments */
int ml__task_sleep(lua_State *L) {
  ml_State *S = ml__state(L);
  ml_Task *t = S->current;
  int isnum;
  lua_Number d = lua_tonumberx(L, 1, &isnum);
  Sleep *w;
  /* Named here: run inline by an await, a C body has no name of its own
   * for luaL_argerror ("bad argument #1 to '?'"). */
  if (!isnum) return ml__exc_raise(L, "TypeError", "sleep() delay must be a number, got %s", luaL_typename(L, 1));
  if (t == NULL) return ml__task_raise_outside(L);
  if (d != d) return luaL_argerror(L, 1, "delay is NaN");
  if (lua_gettop(L) == 2 && lua_type(L, 2) == LUA_TTABLE && !lua_getmetatable(L, 2)) {
    /* sleep(d, {result = x}): Python's keyword; a plain table whose only
     * key is result.  Any other table is a value sleep returns. */
    lua_pushnil(L);
    if (lua_next(L, 2) && lua_type(L, -2) == LUA_TSTRING && strcmp(lua_tostring(L, -2), "result") == 0) {
      lua_pop(L, 1);
      if (!lua_next(L, 2)) {
        lua_getfield(L, 2, "result");
        lua_replace(L, 2);
      }
    }
    lua_settop(L, 2);
  }
  if (d <= 0) return suspend(L, NULL, NULL, 0, sleep_k, 1, 0);  /* no libev */
  /* What would make the suspension raise, raise now: a timer left running
   * for a task that never slept would wake it, or a task long gone. */
  ml__task_check_suspendable(L);
  {
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);
    w = f(ud, NULL, 0, sizeof *w);
    if (w) w->id = 0;
    if (w && S->track_sleepers && sleep_track(S, w, d) < 0) {
      f(ud, w, sizeof *w, 0);
      w = NULL;
    }
    if (w == NULL) {
      ml__push_memory_error(L);
      return lua_error(L);
    }
    ev_timer_init(&w->w, sleep_cb, d, 0.);
    w->w.data = t;
    ev_now_update(S->loop);  /* libev's time is from the last poll */
    ev_timer_start(S->loop, &w->w);
    S->nsleeping++;
  }
  return ml__task_suspend(L, sleep_hook, w, 0, sleep_k);
}

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
static int await_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Task *t = ml__state(L)->current;
  (void)status; (void)ctx;
  t->awaiting = NULL;
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
  t->awaiting = f;
  return ml__task_suspend(L, await_cancel_hook, L, 0, await_k);
}

lua_KContext ml__task_kctx(const ml_Task *t) { return t->kctx; }

void ml__task_disarm(ml_Task *t, ml_CancelHook hook, void *ud) {
  if (t->hook == hook && t->hook_ud == ud) t->hook = NULL;
}
