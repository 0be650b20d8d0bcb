/* sched.h: the scheduler (sched.c): the loop iteration, timers and Handles, and the loop object. */
#ifndef ML_SCHED_H
#define ML_SCHED_H

#include "state.h"

/* Runs the loop until the ready queue is empty and nothing is left that
 * could wake a task (no active referenced watcher), or until stop.
 * until_done: if not NULL, returns as soon as that future is done.
 * Returns 0, or -EDEADLK if until_done is still pending with nothing left
 * to wake it. */
int ml__sched_run(ml_State *S, ml_Future *until_done);
/* Runs one iteration without blocking on I/O (for foreign loops).
 * Returns 1 if more work is ready, 0 if idle. */
int ml__sched_step(ml_State *S);

/* [-0, +1] pushes the loop object (asyncio's AbstractEventLoop). */
void ml__push_loop(lua_State *L);
/* Seconds until the earliest timer of S fires (call_later/call_at handles
 * and sleeping tasks; 0 if one is overdue), or -1 if none is armed: what a
 * foreign loop stepping moonloop should wait at most. */
double ml__sched_next_timer(ml_State *S);
/* Makes the loop object; [-0, +1] pushes its methods table. */
void ml__sched_open(lua_State *L);
#endif
