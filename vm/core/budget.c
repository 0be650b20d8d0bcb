/* budget.c: the CPU budget of task steps and ml_state_interrupt (the
 * budget's hook), moved out of task.c as it was; task.c's step arms it
 * (ml__budget_arm) and numbers the steps (budget.h). */
#include <errno.h>
#include "task.h"
#include "budget.h"
#include "exc.h"

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

/* ml_state_interrupt asked for this step to stop. */
static int interrupt_asked(ml_State *S) {
  return __atomic_load_n(&S->interrupt_seq, __ATOMIC_ACQUIRE) == S->step_seq;
}

/* Starts terminating the step under way, from the hook on thread L. */
static void terminate_step(ml_State *S, lua_State *L) {
  S->over_budget = 1;
  if (S->current && S->current->co && S->current->co != L)
    lua_sethook(S->current->co, ml__budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
  lua_sethook(L, ml__budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
}

/* Raises the error of the step being terminated (never returns). */
static void raise_terminated(ml_State *S, lua_State *L) {
  if (S->interrupted) ml__exc_raise(L, "KeyboardInterrupt", NULL);
  ml__exc_raise(L, "RuntimeError",
                "task ran past its CPU budget of %I instructions without awaiting; "
                "it was stopped so the loop keeps running (await something, or "
                "raise the budget with ml_state_set_cpu_budget)",
                (lua_Integer)S->instr_budget);
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
void ml__budget_hook(lua_State *L, lua_Debug *ar) {
  ml_State *S = ml__state(L);
  (void)ar;
  if (!S->over_budget) {
    if (interrupt_asked(S)) {
      S->interrupted = 1;
      terminate_step(S, L);
      raise_terminated(S, L);
    }
    if (S->instr_budget == 0) { /* a thread hooked by an old termination */
      lua_sethook(L, NULL, 0, 0);
      return;
    }
    if (!spend(S, L, BUDGET_SLICE)) return;
  } else if (lua_gethookcount(L) != 1) {
    lua_sethook(L, ml__budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
  }
  raise_terminated(S, L);
}

void ml__budget_charge(lua_State *L, unsigned long n) {
  ml_State *S = ml__state(L);
  if (!(S->step_seq & 1)) return; /* no task step runs: nothing to count */
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
    lua_sethook(co, ml__budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
    return 0;
  }
  if (!(seq & 2)) return -ENOTSUP; /* no hook: nothing would look */
  __atomic_store_n(&S->interrupt_seq, seq, __ATOMIC_RELEASE);
  return 0;
}

/* [-0, +0] */
void ml__budget_arm(lua_State *co) {
  ml_State *S = ml__state(co);
  if (S->instr_budget == 0) return;
  if (S->over_budget)
    lua_sethook(co, ml__budget_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
  else lua_sethook(co, ml__budget_hook, LUA_MASKCOUNT, BUDGET_SLICE);
}
