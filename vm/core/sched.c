/* sched.c: the scheduler loop: run what is ready, poll I/O, repeat.
 *
 * ml__sched_run below is the whole algorithm; its steps follow these
 * rules.
 *
 * Fairness.  One iteration runs the entries that were ready when it
 * began (tasks to step, handles, done callbacks): what they make ready
 * runs in the next iteration, after I/O had its chance (Python's rule).
 *
 * The poll rule.  While the ready queue never empties, the kernel is
 * polled (ev_run NOWAIT) after every POLL_STEPS entries run or
 * POLL_SECONDS elapsed, whichever comes first, so a ready socket waits at
 * most that long; when the queue empties, the loop blocks in ev_run ONCE.
 * Polling on every iteration (asyncio's rule) costs one epoll_wait per
 * sleep(0) round trip, which measured ~2x slower on the sleep(0) bench.
 * The clock is read once every POLL_CLOCK_STEPS task steps, not after
 * every iteration: a clock_gettime is 25 ns here, a sixth of a sleep(0)
 * round trip, and iterations of one entry each (ping-pong between two
 * tasks) read it on every step (perf: 8% of the queue benchmark's time).
 * So with slow steps a socket may wait up to POLL_CLOCK_STEPS of them
 * instead of one.  Every entry counts, callbacks and done callbacks as
 * well as task steps (a callback that re-schedules itself with call_soon
 * starved timers and I/O for ever when only task steps counted), so the
 * bound holds whatever the queue holds: a ready fd or a due timer is seen
 * after at most POLL_STEPS entries, or POLL_SECONDS plus
 * POLL_CLOCK_STEPS entries.  A watcher restarted during an iteration
 * (resume_reading) asks for a poll at its end (ml__sched_poll_soon): with
 * polls every POLL_STEPS entries, a rate limiter that resumes and pauses
 * on alternate iterations was paused at every poll and never read.
 *
 * The end.  The loop returns when the future it was asked to wait for is
 * done, when loop:stop() was called, or when nothing is ready and nothing
 * could make anything ready (no active referenced watcher: libev's
 * ev_run returns at once then): idle, or a deadlock if that future is
 * still pending. */
#include <errno.h>
#include <stdio.h>
#include "task.h"
#include "handle.h"
#include "loop.h"
#include "sched.h"
#include "wakeup.h"

#define POLL_STEPS 64
#define POLL_SECONDS 0.0005
#define POLL_CLOCK_STEPS 4

/* [-1, +0] on the main state: pops what ran (a task, or nil) and warns
 * that it took too long. */
void ml__sched_warn_slow(ml_State *S, const ml_Entry *e, double took) {
  lua_State *L = S->L;
  char msg[512];
  if (!lua_isnil(L, -1)) {
    snprintf(msg, sizeof msg, "Executing %s took %.3f seconds", ml__tostring(L, -1), took);
    lua_pop(L, 2);
  } else {
    lua_pop(L, 1);
    snprintf(msg, sizeof msg, "Executing a %s took %.3f seconds",
             e->kind == ML_RUN_TASK     ? "task step"
             : e->kind == ML_RUN_HANDLE ? "callback"
                                        : "done callback",
             took);
  }
  ml__emit_error(S, msg);
}

/* Runs one entry.  *anchor: the stack index of the handles' anchor
 * table, pushed (with *T) on the first handle of an iteration; the caller
 * pops it.  [-0, +1|0] on the main state: +1 only then. */
static void run_entry(ml_State *S, ml_Entry *e, struct Timers **T, int *anchor) {
  lua_State *L = S->L;
  double t0 = 0;
  ml_Entry copy = *e;
  /* The due timers' entry times each of its callbacks itself. */
  int timed = S->debug && (e->kind != ML_RUN_HANDLE || e->p != NULL);
  if (e->kind == ML_RUN_HANDLE && !*anchor) {
    *T = ml__handles_push_anchor(L);
    *anchor = lua_gettop(L);
  }
  if (timed) {
    t0 = ml__now();
    if (e->kind == ML_RUN_TASK && ((ml_Task *)e->p)->ref != LUA_NOREF) ml__task_push(L, e->p);
    else lua_pushnil(L);
  }
  switch (e->kind) {
  case ML_RUN_TASK: ml__task_step(S, e->p); break;
  case ML_RUN_HANDLE: ml__handles_run(L, *T, *anchor, e); break;
  case ML_RUN_FUTURE_CALLBACKS:
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref);
    ml__unref(L, e->ref);
    ml__future_run_callbacks(L);
    break;
  }
  if (timed) {
    if (ml__now() - t0 > ML_SLOW_CALLBACK) ml__sched_warn_slow(S, &copy, ml__now() - t0);
    else lua_pop(L, 1);
  }
}

/* Runs the entries that were ready when it was called (fairness).
 * [-0, +0] on the main state. */
static void run_ready(ml_State *S) {
  size_t n = S->ready.len;
  ml_Entry e;
  struct Timers *T = NULL;
  int anchor = 0;
  while (n-- > 0 && ml__readyq_pop(&S->ready, &e) == 0) {
    S->nstep++;
    run_entry(S, &e, &T, &anchor);
  }
  if (anchor) lua_remove(S->L, anchor);
}

/* Polls I/O and timers: libev's callbacks queue what they wake. */
static void poll_io(ml_State *S, int flags) {
  S->alive = ev_run(S->loop, flags); /* nonzero: active watchers remain */
  S->last_poll = ml__now();
  S->last_poll_step = S->clock_step = S->nstep;
  S->poll_soon = 0;
}

void ml__sched_poll_soon(ml_State *S) { S->poll_soon = 1; }

/* The poll rule, for a queue that did not empty: POLL_STEPS steps, or
 * POLL_SECONDS with the clock read at most every POLL_CLOCK_STEPS steps. */
static int poll_due(ml_State *S) {
  if (S->poll_soon) return 1;
  if (S->nstep - S->last_poll_step >= POLL_STEPS) return 1;
  if (S->nstep - S->clock_step < POLL_CLOCK_STEPS) return 0;
  S->clock_step = S->nstep;
  return ml__now() - S->last_poll >= POLL_SECONDS;
}

/* The future the run waits for is done (never, if there is none). */
static int awaited_done(const ml_Future *until_done) {
  return until_done != NULL && until_done->state != ML_PENDING;
}

/* Nothing is ready, and nothing is left that could make anything ready
 * (the last poll saw no active referenced watcher). */
static int idle(const ml_State *S) { return S->ready.len == 0 && !S->alive; }

/* loop:stop() was called: it stops one run. */
static int stop_requested(ml_State *S) {
  if (!S->stopping) return 0;
  S->stopping = 0;
  return 1;
}

int ml__sched_run(ml_State *S, ml_Future *until_done) {
  int rc = 0;
  S->running++;
  while (!awaited_done(until_done) && !stop_requested(S)) {
    if (S->ready.len == 0) {
      if (ml__wakeup_spin(S)) { /* a pool job's reply, caught by spinning */
        if (poll_due(S)) poll_io(S, EVRUN_NOWAIT);
        continue;
      }
      poll_io(S, EVRUN_ONCE); /* block for I/O or a timer */
      if (idle(S)) {
        if (until_done) rc = -EDEADLK;
        break;
      }
      continue;
    }
    run_ready(S);
    if (S->ready.len > 0 && poll_due(S)) poll_io(S, EVRUN_NOWAIT);
  }
  S->running--;
  return rc;
}

int ml__sched_step(ml_State *S) {
  S->running++;
  run_ready(S);
  if (S->ready.len == 0 || poll_due(S)) poll_io(S, EVRUN_NOWAIT);
  S->running--;
  return S->ready.len > 0;
}

double ml__sched_next_timer(ml_State *S) {
  double best = 0, r;
  int found = ml__handles_remaining(S, &best);
  /* Sleeping tasks have a timer each, their deadlines a heap. */
  if (ml__task_sleep_next(S, &r)) {
    if (!found || r < best) best = r;
    found = 1;
  }
  if (!found) return -1;
  return best > 0 ? best : 0;
}
