/* budget.h: the CPU budget and interrupts of task steps (budget.c):
 * what task.c's step needs of it.  Core-internal. */
#ifndef ML_BUDGET_H
#define ML_BUDGET_H

#include "state.h"

/* The budget's lua_Hook: raises once the step's budget is spent or an
 * interrupt was asked for it. */
void ml__budget_hook(lua_State *L, lua_Debug *ar);

/* S->step_seq numbers the steps (budget.c, "Interrupts"). */
/* A step begins (hooked: it has the budget's hook) or ends. */
static inline void ml__step_seq_begin(ml_State *S, int hooked) {
  unsigned long n = ((S->step_seq >> 2) + 1) << 2 | (hooked ? 3 : 1);
  __atomic_store_n(&S->step_seq, n, __ATOMIC_RELEASE);
}

static inline void ml__step_seq_end(ml_State *S) {
  __atomic_store_n(&S->step_seq, S->step_seq & ~3UL, __ATOMIC_RELEASE);
}

#endif
