/* sleep.c: asyncio.sleep and sleep(0) for tasks (task.c), the timers of
 * sleeping tasks and the next deadline a host stepping the loop asks
 * for.  Moved out of task.c as it was; a sleep suspends through task.c's
 * ml__task_suspend / ml__task_requeue. */
#include <errno.h>
#include <string.h>
#include "task.h"
#include "sched.h"
#include "exc.h"
#include "loop.h"
#include "handle.h"

/* ---- sleep ----
 * A sleeping task's ev_timer is allocated for the sleep, kept as the
 * suspension's hook_ud (with sleep_hook as its hook), and freed when it
 * fires or is stopped: parked tasks that do not sleep (most) carry no
 * timer at all.
 *
 * The next deadline: a host stepping the loop (ml_state_step) asks for
 * it after every step, and libev has no call for its own next timer.  So
 * from the first time it is asked, the sleepers' deadlines are also kept
 * in S->sleepers (a timerheap.c heap: a push is a store when sleeps come
 * in deadline order, a wake-up a lazy cancel), and the answer is its top,
 * not a walk over every task (10,000 sleepers: 234 us a step).  Until
 * then - a loop run by ml_state_run never asks - sleeping costs no heap
 * (it measured +250 instructions a sleep, the heap's pops). */

typedef struct Sleep {
  ev_timer w; /* first: the hook_ud is also the ev_timer */
  int id;     /* its entry in S->sleepers, or 0 */
} Sleep;

static int sleep_hook(lua_State *L, ml_Task *t, void *ud);

static Sleep *sleep_of(ml_Task *t) {
  return t->suspended && t->hook == sleep_hook ? t->hook_ud : NULL;
}

/* Puts s, sleeping until now + remaining, in S->sleepers; 0 or -ENOMEM. */
static int sleep_track(ml_State *S, Sleep *s, double remaining) {
  int id = ml__theap_prepare(&S->sleepers);
  if (id < 0) return id;
  ml__theap_push(&S->sleepers, ml__now() + remaining, id);
  s->id = id;
  return 0;
}

/* Starts keeping the deadlines: every sleeper's goes in the heap once. */
static int sleepers_track(ml_State *S) {
  ml_Task *t;
  for (t = S->tasks; t; t = t->next) {
    Sleep *s = sleep_of(t);
    if (s && s->id == 0 && sleep_track(S, s, ev_timer_remaining(S->loop, &s->w)) < 0) {
      for (t = S->tasks; t; t = t->next) /* out of memory: as before */
        if ((s = sleep_of(t))) s->id = 0;
      ml__theap_free(&S->sleepers);
      return -ENOMEM;
    }
  }
  S->track_sleepers = 1;
  return 0;
}

int ml__task_sleep_next(ml_State *S, double *remaining) {
  double when, best = 0;
  int found = 0;
  ml_Task *t;
  if (S->nsleeping == 0) return 0;
  if (S->track_sleepers || sleepers_track(S) == 0) {
    if (!ml__theap_top(&S->sleepers, &when)) return 0;
    when -= ml__now();
    *remaining = when > 0 ? when : 0;
    return 1;
  }
  for (t = S->tasks; t; t = t->next) { /* no memory for the heap */
    Sleep *s = sleep_of(t);
    if (s) {
      double r = ev_timer_remaining(S->loop, &s->w);
      if (!found || r < best) best = r;
      found = 1;
    }
  }
  *remaining = best > 0 ? best : 0;
  return found;
}

/* Stops and frees s, the timer of task t.  [-0, +0] */
static void sleep_stop(ml_State *S, ml_Task *t, Sleep *s) {
  void *ud;
  lua_Alloc f = lua_getallocf(S->L, &ud);
  if (s == NULL) return;
  if (t->hook_ud == s) t->hook_ud = NULL;
  ev_timer_stop(S->loop, &s->w);
  if (s->id) ml__theap_cancel(&S->sleepers, s->id);
  f(ud, s, sizeof *s, 0);
  S->nsleeping--;
}

void ml__task_stop_timers(ml_State *S) {
  ml_Task *t;
  for (t = S->tasks; t && S->nsleeping > 0; t = t->next) sleep_stop(S, t, sleep_of(t));
}

static void sleep_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  ml_Task *t = w->data;
  (void)loop;
  (void)revents;
  sleep_stop(t->fut.S, t, (Sleep *)w);
  ml__handles_queue_due(t->fut.S); /* the timers due first (handle.h) */
  ml__task_wake(t);
}

/* [-0, +0] */
static int sleep_hook(lua_State *L, ml_Task *t, void *ud) {
  (void)L;
  sleep_stop(t->fut.S, t, ud);
  return 0;
}

/* Continuation: -> the values after the delay. */
static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L) - 1; /* the values after the delay */
}

/* Continuation: -> nothing. */
static int yield_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 0;
}

/* Yields to the other ready tasks: -> nothing. */
int ml__task_yield_now(lua_State *L) {
  if (ml__state(L)->current == NULL) return ml__task_raise_outside(L);
  return ml__task_requeue(L, yield_k);
}

/* asyncio.sleep(delay, ...): returns its extra arguments after delay
 * seconds; sleep(0) only yields to the other ready tasks.
 * -> the extra arguments */
int ml__task_sleep(lua_State *L) {
  ml_State *S = ml__state(L);
  ml_Task *t = S->current;
  int isnum;
  lua_Number d = lua_tonumberx(L, 1, &isnum);
  Sleep *w;
  /* Named here: run inline by an await, a C body has no name of its own
   * for luaL_argerror ("bad argument #1 to '?'"). */
  if (!isnum)
    return ml__exc_raise(L, "TypeError", "sleep() delay must be a number, got %s",
                         luaL_typename(L, 1));
  if (t == NULL) return ml__task_raise_outside(L);
  if (d != d) return luaL_argerror(L, 1, "delay is NaN");
  if (lua_gettop(L) == 2 && lua_type(L, 2) == LUA_TTABLE && !lua_getmetatable(L, 2)) {
    /* sleep(d, {result = x}): Python's keyword; a plain table whose only
     * key is result.  Any other table is a value sleep returns. */
    lua_pushnil(L);
    if (lua_next(L, 2) && lua_type(L, -2) == LUA_TSTRING &&
        strcmp(lua_tostring(L, -2), "result") == 0) {
      lua_pop(L, 1);
      if (!lua_next(L, 2)) {
        lua_getfield(L, 2, "result");
        lua_replace(L, 2);
      }
    }
    lua_settop(L, 2);
  }
  if (d <= 0) return ml__task_requeue(L, sleep_k); /* no libev */
  /* What would make the suspension raise, raise now: a timer left running
   * for a task that never slept would wake it, or a task long gone. */
  ml__task_check_suspendable(L);
  {
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);
    w = f(ud, NULL, 0, sizeof *w);
    if (w) w->id = 0;
    if (w && S->track_sleepers && sleep_track(S, w, d) < 0) {
      f(ud, w, sizeof *w, 0);
      w = NULL;
    }
    if (w == NULL) {
      ml__push_memory_error(L);
      return lua_error(L);
    }
    ev_timer_init(&w->w, sleep_cb, d, 0.);
    w->w.data = t;
    ev_now_update(S->loop); /* libev's time is from the last poll */
    ev_timer_start(S->loop, &w->w);
    S->nsleeping++;
  }
  return ml__task_suspend(L, sleep_hook, w, 0, sleep_k);
}
