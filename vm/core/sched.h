/* sched.h: the scheduler loop (sched.c): run what is ready, poll I/O. */
#ifndef ML_SCHED_H
#define ML_SCHED_H

#include "state.h"

/* In debug mode, an entry that held the loop longer than this many
 * seconds is reported, as asyncio's slow_callback_duration. */
#define ML_SLOW_CALLBACK 0.1

/* Runs the loop until the ready queue is empty and nothing is left that
 * could wake a task (no active referenced watcher), or until stop.
 * until_done: if not NULL, returns as soon as that future is done.
 * Returns 0, or -EDEADLK if until_done is still pending with nothing left
 * to wake it. */
int ml__sched_run(ml_State *S, ml_Future *until_done);
/* Runs one iteration without blocking on I/O (for foreign loops).
 * Returns 1 if more work is ready, 0 if idle. */
int ml__sched_step(ml_State *S);
/* Seconds until the earliest timer of S fires (call_later/call_at handles
 * and sleeping tasks; 0 if one is overdue), or -1 if none is armed: what a
 * foreign loop stepping moonloop should wait at most. */
double ml__sched_next_timer(ml_State *S);
/* Reports (debug mode) that entry e took took seconds.  [-1, +0] pops
 * what ran: the task, or nil. */
void ml__sched_warn_slow(ml_State *S, const ml_Entry *e, double took);

#endif
