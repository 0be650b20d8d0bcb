/* task.h: Tasks (task.c): the struct, stepping (the one lua_resume), spawning, cancelling; sleeping (sleep.c) and the CPU budget (budget.c). */
#ifndef ML_TASK_H
#define ML_TASK_H

#include "future.h"

/* What a parked task costs is the size of this struct plus its user
 * values and thread (docs/performance.md): keep it small.  A sleeping
 * task's timer is its hook_ud (see task.c). */
struct ml_Task {
  ml_Future fut;        /* a Task is a Future */
  lua_State *co;        /* the task's thread, NULL once done */
  int ref;              /* registry reference while pending */
  int pool_slot;        /* co's slot in the thread pool, or 0 */
  ml_Task *prev, *next; /* the state's list of pending tasks */
  /* One byte of flags (a byte each made the struct 8 bytes longer). */
  unsigned char started : 1, suspended : 1, queued : 1, must_cancel : 1;
  unsigned char k_always : 1;  /* k runs on cancellation too */
  unsigned char from_coro : 1; /* made of a Coroutine (else a function) */
  unsigned char packed : 1;    /* a function's arguments wait in TUV_THREAD */
  unsigned char in_place : 1;  /* made in place of its Coroutine (coro.c) */
  unsigned short coro_nargs;   /* in_place: its arguments, until it starts */
  int num_cancels;             /* cancel() requests not uncancelled */
  unsigned long id;
  ml_CancelHook hook; /* while suspended: what to do on cancel() */
  void *hook_ud;
  lua_KFunction k; /* continuation of the suspended C function */
  lua_KContext kctx;
};

/* The continuation of an await of a future (ml__await_future): while a
 * task is suspended there, its k is this and its kctx the future, which
 * is how a future that finishes tells that its waiter still awaits it
 * (no field of its own: it would cost every parked task 8 bytes). */
int ml__await_k(lua_State *L, int status, lua_KContext ctx);
static inline int ml__task_awaits(const ml_Task *t, const ml_Future *f) {
  return t->k == ml__await_k && t->kctx == (lua_KContext)f;
}

/* ml_state_interrupt (budget.c, "Interrupts"): asks the task step under way
 * to stop with KeyboardInterrupt, which the script cannot catch.  Any
 * thread; async-signal-safe.  0 or -ESRCH (no step runs). */
int ml__task_interrupt(ml_State *S);
/* Counts n steps of a long C call made on thread L (the string matcher,
 * vm/embed/strmatch.c) as n instructions of the task step under way, and
 * raises as the budget's hook does if that spends the budget or an
 * interrupt was asked for the step (and at once while the step is being
 * terminated).  Outside a task step it does nothing.  [-0, +0] */
void ml__budget_charge(lua_State *L, unsigned long n);
/* The state whose task step this thread runs now, or NULL. */
extern __thread ml_State *ml__tls_stepping __attribute__((tls_model("initial-exec")));
/* Stops the timer of every sleeping task (the state is closing). */
void ml__task_stop_timers(ml_State *S);
/* Seconds until the first sleeping task wakes (0 if overdue) in
 * *remaining, and 1; 0 if no task sleeps.  From its first call on, the
 * deadlines are also kept in a heap (S->sleepers), so that it is O(1) and
 * a sleep O(log n): a host stepping the loop does not walk 10,000
 * sleepers to learn its timeout (sleep.c). */
int ml__task_sleep_next(ml_State *S, double *remaining);
/* Suspends the running task and puts it at the end of the ready queue
 * at once: k runs on its next step (sleep(0), sleep.c).  [-0, +0] */
int ml__task_requeue(lua_State *L, lua_KFunction k);
/* Runs one step of t (the one place that calls lua_resume). */
void ml__task_step(ml_State *S, ml_Task *t);
/* Sets up the Task metatable.  [-0, +0] */
void ml__task_open(lua_State *L);
/* task:cancel(msg) with msg at msgidx (0 for none); 1 if cancelled. */
int ml__task_cancel(lua_State *L, ml_Task *t, int msgidx);
/* Raises RuntimeError "await outside of a running task"; never returns.
 * (ml__task_check_suspendable checks for it and more.) */
int ml__task_raise_outside(lua_State *L);
/* await asyncio.sleep(0): back to the end of the ready queue, at once. */
int ml__task_yield_now(lua_State *L);
/* asyncio.sleep */
int ml__task_sleep(lua_State *L);
/* 1 if thread co is parked in an await (ml__task_suspend and kin). */
int ml__task_parked(lua_State *co);
/* [-(nargs+1), +1] pops a function (or a Coroutine) and its arguments,
 * pushes a new Task that will run it.  name may be NULL. */
ml_Task *ml__task_spawn(lua_State *L, int nargs, const char *name);
/* The same for a Coroutine already taken (ml__coro_take): in_place is
 * the Task it was made (the value on top), or NULL if it was only
 * claimed; with eager, its first step runs at once if the loop is running
 * (an eager task, Python 3.12's eager_start): [-1, +1]. */
ml_Task *ml__task_spawn_coro(lua_State *L, const char *name, int eager, ml_Task *in_place);
/* The same for a function with no arguments.  [-1, +1] */
ml_Task *ml__task_spawn_fn(lua_State *L, const char *name, int eager);

/* asyncio.create_task(coro, {name=}) */
int ml__core_create_task(lua_State *L);

#endif
