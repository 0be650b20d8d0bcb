/* budget.c: the CPU budget of task steps (instructions or time) and
 * ml_state_interrupt: a watchdog thread, the budget's hook, and the
 * running thread's record that lets the watchdog put the hook on it.
 * task.c's step calls ml__budget_step_begin/_end around its lua_resume.
 *
 * What it costs, and why it is built this way.  Lua 5.4 runs
 * luaG_traceexec before every instruction while a count hook is set on
 * a thread, whatever the count (the count only says how often the hook
 * itself runs): a hook set at the start of every budgeted step made Lua
 * code run 2.0-3.0x slower.  So no hook is set while a step is short.  A
 * watchdog thread (one per process, started by the first state that gets
 * a budget) looks at the steps of the states it watches every slice
 * (WATCH_TICK_NS, 1 ms); a step that it finds still running at two
 * ticks in a row - one that has run for at least one slice - gets the
 * hook put on the thread running it, from the watchdog's thread.  From
 * then on the hook counts (every BUDGET_SLICE instructions) and
 * terminates as before.  A step shorter than a slice runs at full speed;
 * what it pays is a few stores and loads at its start and end and at
 * each coroutine switch (docs/embedding.md, "What a budget costs").
 *
 * Contracts.  An instruction budget (ml_state_set_cpu_budget) counts from
 * the moment the hook is on: a step runs its first 1-2 ms free, then N
 * instructions (a host that wants a bound in time has the time budget).
 * A time budget (ml_state_set_time_budget) is wall-clock time of one
 * step, measured by the watchdog itself, which terminates the step with
 * no cost at all to the VM before: the step is stopped between T and
 * T + 2 ms (plus however late the system runs the watchdog).  Both stop
 * the step as V8's TerminateExecution does: from then on the hook fires
 * at every instruction, call and return of the step's threads and raises
 * each time, so a pcall, an error handler or a __close that catches the
 * error only gets one instruction further - the task's frames unwind to
 * the scheduler.
 *
 * The running thread.  A task resumes coroutines (coroutine.resume,
 * coroutine.wrap's function, asyncio's generators, which use these), and
 * those run on other lua_States: a hook on the task's thread alone would
 * let `coroutine.wrap(function() while true do end end)()` escape.  So
 * S->running_L names the thread running the step's code: the task's
 * thread (step begin), the thread of an eager step, a coroutine
 * (ml__budget_open replaces coroutine.resume and .wrap before any code
 * runs, so asyncio.lua and the sandbox capture these), a message handler
 * (sandbox.c).  At each switch, if the step has the hook (hook_seq is the
 * step's number) the new thread gets it too, unless it has it already
 * (its count goes on: a switch does not reset it, or a ping-pong of two
 * coroutines would never reach the hook).  Finalizers run on threads of
 * their own with a hook from their start (sandbox.c), and are not
 * switched to: an arm meant for the step while one runs lands on the
 * step's thread, which takes it when the finalizer returns.
 *
 * Arming from another thread.  The watchdog and ml_state_interrupt from
 * another thread call lua_sethook on running_L while the loop's thread
 * runs it.  lua_sethook writes the thread's hook, mask and counts and
 * sets `trap` in each Lua frame of its CallInfo list; luaV_execute
 * re-reads its frame's trap at every jump and FORLOOP ("to allow a signal
 * to break the loop", which is how lua.c's Ctrl+C works) and the mask at
 * every call, so the loop's thread sees the stores soon (they are plain
 * aligned stores; no lock is needed for it to see them eventually).  Two
 * things could make it unsafe, and both are closed:
 *  - the objects read could be freed meanwhile: the thread itself (a
 *    coroutine that finished and was collected) or CallInfo nodes (which
 *    the collector frees as the stack shrinks).  Every free of the state
 *    goes through its allocator, which has a gate (alloc.h): the armer
 *    closes it, then runs membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED),
 *    which makes every thread of the process pass a full barrier, then
 *    reads running_L and arms it, then opens the gate.  A free on the
 *    loop's thread checks the gate after a compiler barrier: either the
 *    check comes after that barrier point and the free waits until the
 *    gate opens, or it came before, and then so did the store that made
 *    the freed object unreachable (running_L changed, the frame returned)
 *    and the armer, reading after the barrier, does not find it.  This is
 *    the asymmetric fence of RCU and of the JVM's safepoints: the loop's
 *    thread pays a compiler barrier, the rare armer a system call.  (No
 *    membarrier - a kernel before 4.14 - and the loop's side fences
 *    fully instead: ml__alloc_full_fence.)
 *  - the loop's thread could change the same fields at the same time,
 *    leaving a mix of the two writes.  Any mix of two arms is an armed
 *    thread (the hook is ours, the mask has the count bit) and the hook
 *    sets its own mode when it runs; but an arm mixed with a disarm
 *    could leave a thread traced with no hook, or a hook never called.
 *    So the loop's thread disarms only with the gate closed (it is the
 *    armers' lock too), and the watchdog arms again at every tick until
 *    the hook has run for the step (S->hooked_seq), so an arm that landed
 *    on a thread just switched away from is followed by one on the next.
 *    The same barrier pairs the armer's hook_seq store with a switch's
 *    running_L store: either the armer sees the new thread, or the switch
 *    sees hook_seq and arms it.
 * ASan and UBSan see none of this (they do not look for races); a freed
 * block of the pools is poisoned, so an arm that wrote to one would be
 * caught there.
 *
 * Interrupts.  ml_state_interrupt(S) writes the number of the step it
 * wants stopped to S->interrupt_seq and arms the running thread (from the
 * loop's own thread - a signal handler, a host function - directly; from
 * another, as the watchdog does, which also retries while the state is
 * watched); the hook compares the numbers and terminates the step as the
 * budget does, with KeyboardInterrupt.  S->step_seq numbers the steps:
 * its low bit says a step runs.  A number once passed is never reused, so
 * an interrupt meant for a step that ended first stops nothing later.
 * With the watchdog's mechanism every state can be interrupted from any
 * thread, budget or not. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include "task.h"
#include "budget.h"
#include "exc.h"

#define BUDGET_SLICE 1000      /* instructions between two runs of the hook */
#define WATCH_TICK_NS 1000000L /* the watchdog's slice: 1 ms */
#define WATCH_IDLE_TICKS 2     /* ticks with no step running before it sleeps */
#define TERMINATE_MASK (LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET)

__thread ml_State *ml__tls_stepping __attribute__((tls_model("initial-exec")));

/* ---- fences ---- */

static int have_membarrier;

/* At load time, before any state exists (so before any free looks at
 * ml__alloc_full_fence). */
__attribute__((constructor)) static void fences_init(void) {
  have_membarrier = syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  ml__alloc_full_fence = !have_membarrier;
}

/* The armer's side: every thread of the process passes a full barrier. */
static void heavy_fence(void) {
  if (!have_membarrier || syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0)
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}


/* ---- the hook ---- */

static int asked(ml_State *S, const unsigned long *field) {
  return __atomic_load_n(field, __ATOMIC_ACQUIRE) == S->step_seq;
}

/* Removes the budget's hook from thread L (the loop's thread), with the
 * armers' lock; if an armer holds it, the hook stays, and goes at its
 * next run. */
static void disarm(ml_State *S, lua_State *L) {
  if (!ml__alloc_gate_close(S->alloc)) return;
  lua_sethook(L, NULL, 0, 0);
  ml__alloc_gate_open(S->alloc);
}

/* Puts the hook on L (the loop's thread) for the step that has it: in
 * the terminating mode once the step is being terminated.  A thread
 * that has it already keeps its count. */
void ml__budget_arm_here(ml_State *S, lua_State *L) {
  if (S->over_budget) {
    if (lua_gethook(L) != ml__budget_hook || lua_gethookcount(L) != 1 ||
        lua_gethookmask(L) != TERMINATE_MASK)
      lua_sethook(L, ml__budget_hook, TERMINATE_MASK, 1);
  } else if (lua_gethook(L) != ml__budget_hook || !(lua_gethookmask(L) & LUA_MASKCOUNT)) {
    lua_sethook(L, ml__budget_hook, LUA_MASKCOUNT, BUDGET_SLICE);
  }
}

/* Starts terminating the step under way, from the loop's thread L. */
static void terminate_step(ml_State *S, lua_State *L) {
  S->over_budget = 1;
  __atomic_store_n(&S->hook_seq, S->step_seq, __ATOMIC_RELEASE);
  __atomic_store_n(&S->term_seq, S->step_seq, __ATOMIC_RELEASE); /* the watchdog is done */
  if (S->current && S->current->co && S->current->co != L) ml__budget_arm_here(S, S->current->co);
  ml__budget_arm_here(S, L);
}

/* Raises the error of the step being terminated (never returns). */
static void raise_terminated(ml_State *S, lua_State *L) {
  if (S->interrupted) ml__exc_raise(L, "KeyboardInterrupt", NULL);
  if (S->timed_out)
    ml__exc_raise(L, "RuntimeError",
                  "task ran past its time budget of %I ms without awaiting; "
                  "it was stopped so the loop keeps running (await something, or "
                  "raise the budget with ml_state_set_time_budget)",
                  (lua_Integer)(S->time_budget_us / 1000));
  ml__exc_raise(L, "RuntimeError",
                "task ran past its CPU budget of %I instructions without awaiting; "
                "it was stopped so the loop keeps running (await something, or "
                "raise the budget with ml_state_set_cpu_budget)",
                (lua_Integer)S->instr_budget);
}

/* An interrupt or the time budget asks for the step to stop: starts
 * terminating it (1) or not (0). */
static int stop_asked(ml_State *S, lua_State *L) {
  if (asked(S, &S->interrupt_seq)) {
    S->interrupted = 1;
  } else if (asked(S, &S->timeout_seq)) {
    S->timed_out = 1;
    if (S->budget_whole_state) { /* as spend: the host chose to stop the state */
      S->budget_dead = 1;
      S->stopping = 1;
    }
  } else {
    return 0;
  }
  terminate_step(S, L);
  return 1;
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

/* A lua_Hook: raises once the budget is spent, or an interrupt or the
 * time budget asked for the step to stop (never returns then). */
void ml__budget_hook(lua_State *L, lua_Debug *ar) {
  ml_State *S = ml__state(L);
  unsigned long seq = S->step_seq;
  (void)ar;
  if (!(seq & 1)) { /* left from a step that ended: outside steps nothing counts */
    disarm(S, L);
    return;
  }
  if (!S->over_budget) {
    if (__atomic_load_n(&S->hook_seq, __ATOMIC_ACQUIRE) != seq) {
      disarm(S, L); /* left from an earlier step */
      return;
    }
    __atomic_store_n(&S->hooked_seq, seq, __ATOMIC_RELEASE); /* the watchdog stops arming */
    if (!stop_asked(S, L)) {
      int count = lua_gethookcount(L);
      if (S->instr_budget == 0) { /* nothing to count (an arm that raced): rarely */
        if (count != BUDGET_SLICE) lua_sethook(L, ml__budget_hook, LUA_MASKCOUNT, BUDGET_SLICE);
        return;
      }
      if (spend(S, L, (unsigned long)count)) raise_terminated(S, L);
      if (count != BUDGET_SLICE || lua_gethookmask(L) != LUA_MASKCOUNT)
        lua_sethook(L, ml__budget_hook, LUA_MASKCOUNT, BUDGET_SLICE);
      return;
    }
  } else if (lua_gethookcount(L) != 1 || lua_gethookmask(L) != TERMINATE_MASK) {
    lua_sethook(L, ml__budget_hook, TERMINATE_MASK, 1);
  }
  raise_terminated(S, L);
}

void ml__budget_charge(lua_State *L, unsigned long n) {
  ml_State *S = ml__state(L);
  if (!(S->step_seq & 1)) return; /* no task step runs: nothing to count */
  if (!S->over_budget && !stop_asked(S, L)) {
    if (S->instr_budget == 0 || !spend(S, L, n)) return;
  }
  raise_terminated(S, L);
}

/* ---- coroutine.resume and coroutine.wrap ----
 *
 * Lua's own (lcorolib.c), with the running thread recorded around
 * lua_resume. */

static int resume(lua_State *L, lua_State *co, int narg) {
  ml_State *S = ml__state(L);
  lua_State *prev;
  int status, nres;
  if (!lua_checkstack(co, narg)) {
    lua_pushliteral(L, "too many arguments to resume");
    return -1;
  }
  lua_xmove(L, co, narg);
  prev = ml__budget_enter(S, co);
  status = lua_resume(co, L, narg, &nres);
  ml__budget_leave(S, prev);
  if (status == LUA_OK || status == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      lua_pushliteral(L, "too many results to resume");
      return -1;
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  lua_xmove(co, L, 1);
  return -1;
}

static int co_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  int r;
  luaL_argexpected(L, co, 1, "coroutine");
  r = resume(L, co, lua_gettop(L) - 1);
  if (r < 0) {
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -(r + 1));
  return r + 1;
}

static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int r = resume(L, co, lua_gettop(L));
  if (r < 0) {
    int st = lua_status(co);
    if (st != LUA_OK && st != LUA_YIELD) {
#if LUA_VERSION_RELEASE_NUM >= 50406
      st = lua_closethread(co, L);
#else
      st = lua_resetthread(co);
#endif
      lua_xmove(co, L, 1);
    }
    if (st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

static int co_wrap(lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

void ml__budget_open(lua_State *L) {
  if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
    lua_pushcfunction(L, co_resume);
    lua_setfield(L, -2, "resume");
    lua_pushcfunction(L, co_wrap);
    lua_setfield(L, -2, "wrap");
  }
  lua_pop(L, 1);
}

/* ---- arming from another thread ---- */

/* Puts the hook on the thread running step seq of S (count: how soon it
 * runs), from a thread other than the loop's.  Async-signal-safe: atomics,
 * a system call and lua_sethook. */
static void arm_remote(ml_State *S, unsigned long seq, int count) {
  lua_State *L;
  __atomic_store_n(&S->hook_seq, seq, __ATOMIC_RELEASE);
  if (!ml__alloc_gate_close(S->alloc)) return; /* another armer is at it */
  heavy_fence();
  L = __atomic_load_n(&S->running_L, __ATOMIC_RELAXED);
  if (L && __atomic_load_n(&S->step_seq, __ATOMIC_ACQUIRE) == seq)
    lua_sethook(L, ml__budget_hook, LUA_MASKCOUNT, count);
  ml__alloc_gate_open(S->alloc);
}

int ml__task_interrupt(ml_State *S) {
  unsigned long seq = __atomic_load_n(&S->step_seq, __ATOMIC_ACQUIRE);
  if (!(seq & 1)) return -ESRCH;
  __atomic_store_n(&S->interrupt_seq, seq, __ATOMIC_RELEASE);
  if (ml__tls_stepping == S) {
    /* On the loop's thread: a signal handler or a host function.  Only
     * stores and lua_sethook: async-signal-safe, and no race. */
    lua_State *L = S->running_L;
    if (L == NULL) return -ESRCH;
    __atomic_store_n(&S->hook_seq, seq, __ATOMIC_RELEASE);
    lua_sethook(L, ml__budget_hook, LUA_MASKCOUNT, 1);
    return 0;
  }
  arm_remote(S, seq, 1);
  return 0;
}

/* ---- the watchdog ---- */

typedef struct ml_Watch {
  ml_State *S;
  struct ml_Watch *next;
  unsigned long seen;    /* the step seen running at the last tick, or 0 */
  struct timespec since; /* when it was first seen */
} ml_Watch;

int ml__budget_sleeping;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_once_t once;
  int started; /* 1 running, -errno if it could not start */
  ml_Watch *list;
} wd = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_ONCE_INIT, 0, NULL};

static long elapsed_us(const struct timespec *a, const struct timespec *b) {
  return (b->tv_sec - a->tv_sec) * 1000000L + (b->tv_nsec - a->tv_nsec) / 1000;
}

/* One look at every watched state (wd.mu held); returns how many have a
 * step running. */
static int tick(const struct timespec *now) {
  int busy = 0;
  ml_Watch *w;
  for (w = wd.list; w; w = w->next) {
    ml_State *S = w->S;
    unsigned long seq = __atomic_load_n(&S->step_seq, __ATOMIC_ACQUIRE);
    unsigned long tb;
    if (!(seq & 1)) {
      w->seen = 0;
      continue;
    }
    busy++;
    if (seq != w->seen) { /* a new step: its first slice is free */
      w->seen = seq;
      w->since = *now;
      continue;
    }
    if (__atomic_load_n(&S->term_seq, __ATOMIC_ACQUIRE) == seq) continue; /* unwinding */
    if (__atomic_load_n(&S->hooked_seq, __ATOMIC_ACQUIRE) == seq &&
        __atomic_load_n(&S->interrupt_seq, __ATOMIC_ACQUIRE) != seq &&
        __atomic_load_n(&S->timeout_seq, __ATOMIC_ACQUIRE) != seq)
      goto time; /* the hook runs: it does the counting */
    if (__atomic_load_n(&S->interrupt_seq, __ATOMIC_ACQUIRE) == seq) {
      arm_remote(S, seq, 1); /* an interrupt's arm may not have landed */
      continue;
    }
    if (__atomic_load_n(&S->timeout_seq, __ATOMIC_ACQUIRE) == seq) {
      arm_remote(S, seq, 1);
      continue;
    }
    if (__atomic_load_n(&S->instr_budget, __ATOMIC_RELAXED)) arm_remote(S, seq, BUDGET_SLICE);
  time:
    tb = __atomic_load_n(&S->time_budget_us, __ATOMIC_RELAXED);
    if (tb && __atomic_load_n(&S->timeout_seq, __ATOMIC_ACQUIRE) != seq &&
        elapsed_us(&w->since, now) >= (long)tb) {
      __atomic_store_n(&S->timeout_seq, seq, __ATOMIC_RELEASE);
      arm_remote(S, seq, 1);
    }
  }
  return busy;
}

static void *watchdog(void *ud) {
  int idle = 0;
  struct timespec now, until;
  (void)ud;
  pthread_mutex_lock(&wd.mu);
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (tick(&now)) idle = 0;
    else if (++idle >= WATCH_IDLE_TICKS) {
      /* No step runs: sleep until one begins (no idle wake-ups).  The
       * flag, the heavy fence, then a last look; a step's begin stores
       * its number, then looks at the flag (light fence): either the
       * look here sees the step or the step sees the flag. */
      __atomic_store_n(&ml__budget_sleeping, 1, __ATOMIC_RELAXED);
      heavy_fence();
      if (tick(&now) == 0)
        while (__atomic_load_n(&ml__budget_sleeping, __ATOMIC_RELAXED))
          pthread_cond_wait(&wd.cv, &wd.mu);
      __atomic_store_n(&ml__budget_sleeping, 0, __ATOMIC_RELAXED);
      idle = 0;
      continue; /* a first look at once: the new step's slice starts */
    }
    until = now;
    until.tv_nsec += WATCH_TICK_NS;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
    while (pthread_cond_timedwait(&wd.cv, &wd.mu, &until) == 0) {
      /* a waker's signal while awake: the tick is still due */
    }
  }
  return NULL;
}

void ml__budget_wake(void) {
  pthread_mutex_lock(&wd.mu);
  __atomic_store_n(&ml__budget_sleeping, 0, __ATOMIC_RELAXED);
  pthread_cond_signal(&wd.cv);
  pthread_mutex_unlock(&wd.mu);
}

static void start_watchdog(void) {
  pthread_condattr_t ca;
  pthread_attr_t at;
  pthread_t th;
  sigset_t all, old;
  int rc;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_destroy(&wd.cv);
  pthread_cond_init(&wd.cv, &ca);
  pthread_condattr_destroy(&ca);
  pthread_attr_init(&at);
  pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&at, 64 * 1024);
  /* No signal of the host's is ever delivered to it. */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(&th, &at, watchdog, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&at);
  wd.started = rc == 0 ? 1 : -rc;
}

int ml__budget_watch(ml_State *S) {
  ml_Watch *w;
  if (S->watch) return 0;
  pthread_once(&wd.once, start_watchdog);
  if (wd.started < 0) return wd.started;
  w = calloc(1, sizeof *w);
  if (w == NULL) return -ENOMEM;
  w->S = S;
  pthread_mutex_lock(&wd.mu);
  w->next = wd.list;
  wd.list = w;
  S->watch = w;
  pthread_mutex_unlock(&wd.mu);
  return 0;
}

void ml__budget_close(ml_State *S) {
  ml_Watch **p;
  if (S->watch == NULL) return;
  pthread_mutex_lock(&wd.mu); /* the watchdog holds it while it looks */
  for (p = &wd.list; *p; p = &(*p)->next)
    if (*p == S->watch) {
      *p = S->watch->next;
      break;
    }
  pthread_mutex_unlock(&wd.mu);
  free(S->watch);
  S->watch = NULL;
}
