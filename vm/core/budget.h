/* budget.h: the CPU budget and interrupts of task steps (budget.c):
 * what task.c's step and the embedding layer need of it.  Core-internal. */
#ifndef ML_BUDGET_H
#define ML_BUDGET_H

#include "state.h"

/* The budget's lua_Hook: raises once the step's budget is spent or an
 * interrupt was asked for it. */
void ml__budget_hook(lua_State *L, lua_Debug *ar);

/* Replaces coroutine.resume and coroutine.wrap of the state being made
 * (state.c's init, before any other code) with versions that tell the
 * budget which thread runs (budget.c, "The running thread"). */
void ml__budget_open(lua_State *L);

/* ---- the running thread (budget.c, "The running thread") ----
 * Inline: they run at every task step and coroutine switch. */

/* Puts the hook on thread L of the loop's thread for the step that has
 * it (a thread that has it already keeps its count). */
void ml__budget_arm_here(ml_State *S, lua_State *L);
/* The watchdog sleeps (no budgeted step ran for a while); wakes it. */
extern int ml__budget_sleeping;
void ml__budget_wake(void);

/* The loop's side of the armers' heavy fence: a compiler barrier (the
 * armers' membarrier does the rest), or a full fence without membarrier. */
static inline void ml__budget_fence(void) {
  if (ml__alloc_full_fence) __atomic_thread_fence(__ATOMIC_SEQ_CST);
  else __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* Makes L the thread running the step's script code: the store, then
 * (paired with the armers' fence) the look at hook_seq. */
static inline void ml__budget_set_running(ml_State *S, lua_State *L) {
  unsigned long seq;
  __atomic_store_n(&S->running_L, L, __ATOMIC_RELAXED);
  ml__budget_fence();
  seq = S->step_seq;
  if (L && (seq & 1) && __atomic_load_n(&S->hook_seq, __ATOMIC_ACQUIRE) == seq)
    ml__budget_arm_here(S, L);
}

/* The thread running the step's code changes to co (an eager step, a
 * coroutine, a message handler on a thread of its own); returns the one
 * it replaces, for ml__budget_leave. */
static inline lua_State *ml__budget_enter(ml_State *S, lua_State *co) {
  lua_State *prev = S->running_L;
  ml__budget_set_running(S, co);
  return prev;
}

static inline void ml__budget_leave(ml_State *S, lua_State *prev) {
  ml__budget_set_running(S, prev);
}

/* A task step begins (the outermost: not an eager one inside another) on
 * thread co.  No lua_gethook here (an API call on every step): a thread
 * still hooked from an earlier step unhooks itself at the hook's next
 * run. */
static inline void ml__budget_step_begin(ml_State *S, lua_State *co) {
  unsigned long n = ((S->step_seq >> 1) + 1) << 1 | 1;
  S->step_instr = 0;
  S->over_budget = 0;
  S->interrupted = 0;
  S->timed_out = 0;
  /* running_L before step_seq: an armer that sees the new number sees
   * the thread too. */
  __atomic_store_n(&S->running_L, co, __ATOMIC_RELAXED);
  __atomic_store_n(&S->step_seq, n, __ATOMIC_RELEASE);
  if (S->watch) {
    ml__budget_fence(); /* step_seq, then the look (the watchdog's fence) */
    if (__atomic_load_n(&ml__budget_sleeping, __ATOMIC_RELAXED)) ml__budget_wake();
  } else if (S->instr_budget) {
    /* No watchdog could start: counted from the first instruction. */
    __atomic_store_n(&S->hook_seq, n, __ATOMIC_RELEASE);
    ml__budget_arm_here(S, co);
  }
}

static inline void ml__budget_step_end(ml_State *S) {
  __atomic_store_n(&S->step_seq, S->step_seq & ~1UL, __ATOMIC_RELEASE);
  __atomic_store_n(&S->running_L, NULL, __ATOMIC_RELAXED);
}

/* Has the watchdog watch S (its budgets need it); 0 or -errno (no
 * thread could be started: then an instruction budget counts from the
 * first instruction of each step, as a hook set at its start). */
int ml__budget_watch(ml_State *S);
/* S closes: the watchdog lets it go.  Before lua_close. */
void ml__budget_close(ml_State *S);

#endif
