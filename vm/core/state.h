/* state.h: the moonloop state (state.c), shared by the files of vm/core
 * and the embedding layer; stdlib modules see it only through module.h. */
#ifndef ML_STATE_H
#define ML_STATE_H

#include <stddef.h>
#include <stdint.h>
#include <ev.h>
#include <lua.h>
#include <lauxlib.h>
#include "module.h"
#include "alloc.h"
#include "readyq.h"
#include "timerheap.h"

struct Timers;         /* handle.c: the handles, their timer heap and ev_timer */
struct ml_WorkerState; /* worker.c */

struct ml_State {
  lua_State *L;
  struct ev_loop *loop;
  int own_loop; /* we made loop and destroy it on close */
  ml_Alloc *alloc;
  ml_ReadyQ ready;
  ml_Task *current; /* the task being stepped, or NULL */
  ml_Task *tasks;   /* pending tasks, a list through prev/next */
  unsigned long task_seq;
  struct ml_Pool *pool;  /* task threads for reuse (task.c) */
  struct Timers *timers; /* call_soon/call_later/call_at handles (handle.c) */
  int nsleeping;         /* tasks in asyncio.sleep with a timer (task.c) */
  ml_TimerHeap sleepers; /* their deadlines, for the next timeout (task.c) */
  int track_sleepers;    /* kept in sleepers since a host first asked */
  int debug;             /* MOONLOOP_DEBUG / run(c, {debug=true}) */
  int gc_stress;         /* MOONLOOP_GCSTRESS (docs/reliability.md) */
  int alloc_count;       /* MOONLOOP_ALLOCFAIL=count: print the count at close */
  int stopping;          /* loop:stop() was called */
  int nstep;             /* entries run, for the I/O poll rule */
  int poll_soon;         /* poll at the end of this iteration (ml__sched_poll_soon) */
  int last_poll_step;
  int clock_step;             /* the step the poll rule last read the clock at */
  double last_poll;           /* monotonic time of the last I/O poll */
  int running;                /* depth of ml__sched_run / step calls */
  int alive;                  /* the last ev_run saw active watchers */
  unsigned long instr_budget; /* per task step, 0 = none */
  unsigned long step_instr;   /* instructions counted in this step */
  int over_budget;            /* this step is being terminated (budget or interrupt) */
  int interrupted;            /* ... because of ml_state_interrupt */
  /* The task step under way, for ml_state_interrupt from other threads
   * (task.c, "interrupts"): written by the loop's thread only, read by
   * any, atomically. */
  unsigned long step_seq;
  unsigned long interrupt_seq; /* the step to interrupt; atomic, any thread */
  /* The watchdog's (budget.c): the thread running the step's code (read
   * by other threads), the step that should have the hook, the step the
   * hook ran in, the step past its time budget, the step being
   * terminated; atomics. */
  lua_State *running_L;
  unsigned long hook_seq, hooked_seq, timeout_seq, term_seq;
  unsigned long time_budget_us; /* per task step, wall-clock; 0 = none */
  int timed_out;                /* the step is terminated for its time budget */
  struct ml_Watch *watch;       /* the watchdog's entry for S, or NULL */
  int budget_whole_state;       /* running past it stops the state, not the task */
  int budget_dead;              /* it did: the state runs nothing more */
  ml_ErrorHandler on_error;
  int report_at_finish; /* report a failed task nobody awaits at once */
  void *on_error_ud;
  struct ml_Embed *embed;   /* the embedding API's data (vm/embed) */
  int signals;              /* the host lets scripts catch signals */
  struct ml_Wakeup *wakeup; /* other threads' way in (wakeup.c) */
  /* Userdata types (module.h, ML_UT_*): their metatables, for type
   * tests, refs (registry slots) to set them without a name lookup, and
   * their names, for type errors. */
  const void *udata_mt[ML_UT_N];
  int udata_mtref[ML_UT_N];
  const char *udata_name[ML_UT_N];
  int closing;               /* lua_close is running (ml__state_close) */
  unsigned long gc_instr;    /* instructions of the running wrapped finalizer */
  int in_finalizer;          /* a wrapped finalizer runs (the string matcher's charge) */
  const void *sleep0;        /* the shared asyncio.sleep(0) coroutine */
  struct ml_AsyncC *asyncc;  /* async C functions, for await (coro.c) */
  const void *coro_taken_mt; /* a Coroutine's once a task took it: no __gc (coro.c) */
  int coro_taken_mtref;
  int task_factory_ref;          /* loop:set_task_factory's, a registry ref; 0: none */
  int task_factory_eager;        /* it is asyncio.eager_task_factory (no call) */
  struct ml_WorkerState *worker; /* a worker process's id and listeners, or NULL (worker.c) */
  int *free_refs;                /* registry slots ml__unref let go, holding false */
  int nfree_refs, capfree_refs;
};

/* Registry field: the globals the stdlib runs in, once ml_state_sandbox
 * gave scripts globals of their own (embedded modules load in it). */
#define ML_TRUSTED_ENV_KEY "moonloop.trustedenv"

/* Marks the thread L as parked in an await, or not: the low bit of its
 * extra space (ml__state masks it off).  A macro for the task switch. */
#define ml__set_parked(L, parked)       \
  (*(uintptr_t *)lua_getextraspace(L) = \
     (*(uintptr_t *)lua_getextraspace(L) & ~(uintptr_t)1) | (uintptr_t)((parked) != 0))

/* Makes a state on loop (a private one if NULL) with the core alone: the
 * standard Lua libraries, the dialect's loaders and asyncio.core
 * (preloaded).  The stdlib and the embedding layer build on it
 * (ml_state_new).  Returns NULL if memory ran out. */
ml_State *ml__state_new(struct ev_loop *loop);
/* Cancels the pending tasks, gives them a few iterations to unwind, and
 * frees everything S holds; S may be NULL. */
void ml__state_close(ml_State *S);

/* The core's registry references (a pending task's, a queued callbacks
 * entry's): luaL_ref's slots, which ml__unref keeps on a free list of
 * its own, holding false (never nil, so luaL_ref cannot hand them out):
 * taking one back is one lua_rawseti, where a luaL_ref and luaL_unref
 * pair costs ~520 instructions a task (docs/performance.md, "Tasks
 * (gather)").  A slot is read with lua_rawgeti(L, LUA_REGISTRYINDEX,
 * ref) as any.  ml__ref: [-1, +0] pops a value (not nil) into a slot and
 * returns it; raises only as luaL_ref does (out of memory).  ml__unref:
 * [-0, +0] lets ref go; LUA_NOREF and LUA_REFNIL are ignored. */
int ml__ref(lua_State *L);
void ml__unref(lua_State *L, int ref);

/* [-0, +1] pushes a MemoryError made in advance (when a memory limit was
 * set), or Lua's "not enough memory" string: it never allocates. */
void ml__push_memory_error(lua_State *L);
/* Makes that MemoryError while memory is still there (before a limit is
 * set).  [-0, +0]; raises on failure, so call it in protected mode. */
int ml__prepare_memory_error(lua_State *L);

/* The asyncio.core module (corelib.c): the core's face to Lua, which
 * stdlib/asyncio.lua builds the asyncio module on.  [-0, +1] */
int ml__corelib_open(lua_State *L);

/* Writes a finished error report: to the host's handler, or stderr. */
void ml__emit_error(ml_State *S, const char *msg);

#endif
