/* handle.h: Handles and TimerHandles (handle.c): the callbacks of
 * call_soon, call_later and call_at, the one ev_timer over the timer
 * heap, and calling back in protected mode (ml__callback, module.h). */
#ifndef ML_HANDLE_H
#define ML_HANDLE_H

#include "state.h"

/* Makes the state's Timers (the heap, its ev_timer and the anchor table
 * of pending handles) and the Handle metatable.  [-0, +0] */
void ml__handles_open(lua_State *L);
/* [-0, +3] pushes the upvalues that ml__handle_soon and ml__handle_at
 * expect of the C function calling them: the Handle metatable, the
 * Timers, the anchor table. */
void ml__handles_push_upvalues(lua_State *L);

/* The loop's methods that make handles (loop.c registers them), with
 * the upvalues of ml__handles_push_upvalues.  Each raises on a bad
 * argument, or out of memory before anything was scheduled, or once the
 * state is closing ("the event loop is closed").
 *   loop:call_soon(fn, ...): fn(...) runs in a later iteration, in the
 *     order of the calls; returns a Handle.
 *   loop:call_later(delay, fn, ...), loop:call_at(when, fn, ...): fn(...)
 *     runs delay seconds from now (a negative delay is a deadline in the
 *     past, before those of the timers due now), or at
 *     loop:time() when (not NaN); timers of one deadline run in the
 *     order of the calls; returns a TimerHandle. */
int ml__handle_call_soon(lua_State *L);
int ml__handle_call_later(lua_State *L);
int ml__handle_call_at(lua_State *L);

/* For the scheduler (sched.c), which runs a ML_RUN_HANDLE entry:
 * [-0, +1] pushes the anchor table of pending handles, and returns the
 * Timers. */
struct Timers *ml__handles_push_anchor(lua_State *L);
/* Runs the entry e of one queued handle (e->p != NULL), or every timer
 * due at the last firing of the ev_timer (e->p == NULL), in time order;
 * errors go to the loop's exception handler.  anchor: the stack index of
 * the anchor table.  [-0, +0] */
void ml__handles_run(lua_State *L, struct Timers *T, int anchor, const ml_Entry *e);
/* A sleeping task's ev_timer fired (sleep.c): queues the timers due by
 * now before the task wakes, as asyncio's one heap runs every timer due
 * at a poll before a task that a timer woke.  libev orders its own
 * timers by the time each was armed for, and the heap's ev_timer, re-armed
 * at "now" for an overdue top (after a long callback batch, or a step
 * that blocked), sorts after a sleep whose deadline passed earlier: the
 * sleeper ran first, before handles whose deadline was before its own. */
void ml__handles_queue_due(ml_State *S);
/* Seconds until the heap's ev_timer fires (0 if overdue): 1 with *r set,
 * or 0 if it is not armed (no live timer). */
int ml__handles_remaining(ml_State *S, double *r);

#endif
