/* threads.c: a host whose other threads reach into a state: a watchdog
 * thread that interrupts a script which never awaits (and catches every
 * error it can), and four worker threads that complete 10,000 promises
 * while the loop's thread closes the state halfway.  Built and run by
 * tests/embed/hosts.sh (make test), also under ASan (make test SAN=1),
 * where a completion that touched the closed state would be a
 * use-after-free.
 *
 * Why there is no data race (the reasoning TSan would check): the other
 * threads call only ml_state_interrupt, ml_promise_resolve and
 * ml_promise_release.  ml_state_interrupt reads S->step_seq and writes
 * S->interrupt_seq with atomics, then puts the budget's hook on the
 * thread running the step with the state's allocator gate closed (no
 * free can take what it reads away) after a membarrier (vm/core/budget.c,
 * "Arming from another thread"); the loop's thread reads interrupt_seq
 * atomically in the budget's hook.  A promise is reference counted (atomics) and separate
 * from the state; its completion is claimed by an atomic exchange and
 * queued on the state's wake-up under its mutex, which ml_state_close
 * shuts (vm/core/wakeup.c): after that every completion returns
 * -ESHUTDOWN without touching the state.  The state itself (S) is used
 * by the watchdog only while the main thread keeps it open: the main
 * thread joins the watchdog before closing it. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "moonloop.h"

static int passed, failed;

#define CHECK(cond, ...)                          \
  do {                                            \
    if (cond) {                                   \
      passed++;                                   \
    } else {                                      \
      failed++;                                   \
      printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      printf(__VA_ARGS__);                        \
      printf("\n");                               \
    }                                             \
  } while (0)

static ml_State *new_state(void) {
  ml_State *S = ml_state_new(NULL);
  if (S == NULL) {
    fprintf(stderr, "no state\n");
    exit(1);
  }
  return S;
}

static ml_Future *spawn(ml_State *S, const char *src) {
  lua_State *L = ml_state_lua(S);
  ml_Future *t = NULL;
  if (ml_load_string(L, src, strlen(src), "=script") != ML_OK ||
      ml_task_spawn(L, 0, "script", &t) != ML_OK) {
    fprintf(stderr, "spawn: %s\n", ml_state_error(S));
    exit(1);
  }
  return t;
}

/* How task t ended: "ok:<result>" or "error:<message>" (static). */
static const char *outcome(ml_State *S, ml_Future *t) {
  static char out[1024];
  lua_State *L = ml_state_lua(S);
  if (ml_future_state(t) == ML_FUTURE_RESULT) {
    int n = ml_future_push_result(L, t);
    snprintf(out, sizeof out, "ok:%s", n > 0 && lua_tostring(L, -n) ? lua_tostring(L, -n) : "");
    lua_pop(L, n);
  } else if (ml_future_push_error(L, t) == ML_OK) {
    snprintf(out, sizeof out, "error:%s", luaL_tolstring(L, -1, NULL));
    lua_pop(L, 2);
  } else {
    snprintf(out, sizeof out, "state:%d", ml_future_state(t));
  }
  return out;
}

static void pause_briefly(void) {
  struct timespec ts = {0, 1000000}; /* 1 ms */
  nanosleep(&ts, NULL);
}

/* ---- a watchdog thread interrupts a script that never awaits ---- */

typedef struct Watchdog {
  ml_State *S;
  int rc; /* what the interrupt that landed returned */
  int tries;
} Watchdog;

/* Interrupts S as soon as a task step runs (-ESRCH until then: the main
 * thread may not have started the loop yet).  Bounded: 10 s. */
static void *watchdog(void *ud) {
  Watchdog *w = ud;
  for (w->tries = 0; w->tries < 10000; w->tries++) {
    w->rc = ml_state_interrupt(w->S);
    if (w->rc != -ESRCH) break;
    pause_briefly();
  }
  return NULL;
}

static const char *catch_everything =
  "while true do\n"
  "  pcall(function() while true do end end)\n"
  "  xpcall(function() while true do end end, function() while true do end end)\n"
  "  local co = coroutine.wrap(function() while true do pcall(function() while true do end end) end end)\n"
  "  pcall(co)\n"
  "end";

static void test_watchdog(void) {
  ml_State *S = new_state();
  ml_Future *t;
  pthread_t th;
  Watchdog w = {S, 0, 0};
  /* The budget's hook is what lets another thread in: one this large
   * never runs out. */
  ml_state_set_cpu_budget(S, (unsigned long)-1);
  t = spawn(S, catch_everything);
  pthread_create(&th, NULL, watchdog, &w);
  CHECK(ml_state_run(S) == ML_OK, "run: %s", ml_state_error(S));
  pthread_join(th, NULL);
  CHECK(w.rc == ML_OK, "the watchdog's interrupt returned %d after %d tries", w.rc, w.tries);
  CHECK(strcmp(outcome(S, t), "error:KeyboardInterrupt") == 0, "the script ended with %s",
        outcome(S, t));
  ml_future_release(ml_state_lua(S), t);
  /* The state goes on, and an interrupt meant for that step stops no
   * later one. */
  t = spawn(S, "local n = 0 for i = 1, 100000 do n = n + i end return await asyncio.sleep(0, n)");
  CHECK(ml_state_run(S) == ML_OK, "run again: %s", ml_state_error(S));
  CHECK(strcmp(outcome(S, t), "ok:5000050000") == 0, "the next script ended with %s",
        outcome(S, t));
  ml_future_release(ml_state_lua(S), t);
  CHECK(ml_state_interrupt(S) == -ESRCH, "an interrupt with nothing running");
  ml_state_close(S);
}

/* A host function that interrupts from another thread while the step
 * that called it runs; returns what ml_state_interrupt returned. */
static void *interrupt_once(void *ud) {
  Watchdog *w = ud;
  w->rc = ml_state_interrupt(w->S);
  return NULL;
}

static int from_other_thread(lua_State *L) {
  Watchdog w = {ml_state_from_lua(L), 0, 0};
  pthread_t th;
  pthread_create(&th, NULL, interrupt_once, &w);
  pthread_join(th, NULL);
  lua_pushinteger(L, w.rc);
  return 1;
}

/* The loop's own thread (a host function, as a signal handler would):
 * the same uncatchable stop, budget or not. */
static int from_this_thread(lua_State *L) {
  lua_pushinteger(L, ml_state_interrupt(ml_state_from_lua(L)));
  return 1;
}

static void test_interrupt_without_budget(void) {
  ml_State *S = new_state();
  ml_Future *t;
  char want[32];
  ml_state_register(S, "from_other_thread", from_other_thread);
  ml_state_register(S, "from_this_thread", from_this_thread);
  /* Without a budget another thread gets in too: it puts the hook on
   * the running thread (here while the step is in a host function,
   * which returns first). */
  t = spawn(S, "RC = from_other_thread()\n"
               "while true do pcall(function() while true do end end) end");
  ml_state_run(S);
  CHECK(strcmp(outcome(S, t), "error:KeyboardInterrupt") == 0, "from another thread, no budget: %s",
        outcome(S, t));
  lua_getglobal(ml_state_lua(S), "RC");
  snprintf(want, sizeof want, "%d", (int)lua_tointeger(ml_state_lua(S), -1));
  CHECK(strcmp(want, "0") == 0, "the interrupt from another thread returned %s", want);
  lua_pop(ml_state_lua(S), 1);
  ml_future_release(ml_state_lua(S), t);
  t = spawn(S, "pcall(function() from_this_thread() while true do end end)\n"
               "while true do pcall(function() while true do end end) end");
  ml_state_run(S);
  CHECK(strcmp(outcome(S, t), "error:KeyboardInterrupt") == 0, "from the loop's thread: %s",
        outcome(S, t));
  ml_future_release(ml_state_lua(S), t);
  ml_state_close(S);
}

/* ---- an interrupt lands on the coroutine that runs, not the task ---- */

static int coroutine_running; /* atomic: the script's coroutine has started */

static int running_now(lua_State *L) {
  (void)L;
  __atomic_store_n(&coroutine_running, 1, __ATOMIC_RELEASE);
  return 0;
}

/* Interrupts S once the script said its coroutine runs (bounded: 10 s). */
static void *interrupt_when_running(void *ud) {
  Watchdog *w = ud;
  for (w->tries = 0; w->tries < 10000; w->tries++) {
    if (__atomic_load_n(&coroutine_running, __ATOMIC_ACQUIRE)) break;
    pause_briefly();
  }
  w->rc = ml_state_interrupt(w->S);
  return NULL;
}

static void test_interrupt_in_coroutine(void) {
  ml_State *S = new_state();
  ml_Future *t;
  pthread_t th;
  Watchdog w = {S, 0, 0};
  ml_state_register(S, "running_now", running_now);
  /* No budget: nothing but the interrupt puts a hook anywhere.  The loop
   * runs two coroutines deep; the task's own thread only waits. */
  t = spawn(S, "local inner = coroutine.wrap(function()\n"
               "  running_now()\n"
               "  while true do pcall(function() while true do end end) end\n"
               "end)\n"
               "coroutine.wrap(function() inner() end)()\n"
               "return 'not stopped'");
  pthread_create(&th, NULL, interrupt_when_running, &w);
  CHECK(ml_state_run(S) == ML_OK, "run: %s", ml_state_error(S));
  pthread_join(th, NULL);
  CHECK(w.rc == ML_OK, "the interrupt returned %d", w.rc);
  CHECK(strcmp(outcome(S, t), "error:KeyboardInterrupt") == 0, "the coroutine's loop ended with %s",
        outcome(S, t));
  ml_future_release(ml_state_lua(S), t);
  ml_state_close(S);
}

/* ---- the time budget, with the whole state as its scope ---- */

static void test_time_budget_stops_the_state(void) {
  ml_State *S = new_state();
  ml_Future *t;
  CHECK(ml_state_set_time_budget(S, 10 * 1000) == ML_OK, "time budget: %s", ml_state_error(S));
  CHECK(ml_state_set_budget_scope(S, ML_BUDGET_STATE) == ML_OK, "scope: %s", ml_state_error(S));
  t = spawn(S, "while true do pcall(function() while true do end end) end");
  CHECK(ml_state_run(S) == -ETIMEDOUT, "run: %s", ml_state_error(S));
  CHECK(strstr(outcome(S, t), "time budget of 10 ms") != NULL, "the task ended with %s",
        outcome(S, t));
  CHECK(ml_state_run(S) == -ETIMEDOUT, "a later run: %s", ml_state_error(S));
  ml_future_release(ml_state_lua(S), t);
  ml_state_close(S);
}

/* ---- a watchdog stops a pattern match that would never end ---- */

/* gsub's replacement function, a C function: it has a thread interrupt
 * the step, waits until that is done, and returns nothing (the match is
 * kept as it was).  No Lua instruction runs between it and gsub's next
 * match, so what stops the task is the matcher's own check. */
static int interrupt_and_return(lua_State *L) {
  Watchdog w = {ml_state_from_lua(L), 0, 0};
  pthread_t th;
  pthread_create(&th, NULL, interrupt_once, &w);
  pthread_join(th, NULL);
  lua_pushinteger(L, w.rc);
  lua_setglobal(L, "interrupt_rc");
  return 0;
}

static void test_watchdog_stops_a_match(void) {
  ml_State *S = new_state();
  ml_Future *t;
  ml_state_register(S, "interrupt_and_return", interrupt_and_return);
  ml_state_set_cpu_budget(S, (unsigned long)-1);
  /* 'xb' matches at once; from the third character on, twenty a* before
   * a 'b' that never comes backtrack for longer than the universe. */
  t = spawn(S, "local s = 'xb' .. string.rep('a', 100000)\n"
               "pcall(string.gsub, s, 'x?' .. ('a*'):rep(20) .. 'b', interrupt_and_return)\n"
               "return 'not stopped'");
  CHECK(ml_state_run(S) == ML_OK, "run: %s", ml_state_error(S));
  CHECK(strcmp(outcome(S, t), "error:KeyboardInterrupt") == 0, "the match ended with %s",
        outcome(S, t));
  lua_getglobal(ml_state_lua(S), "interrupt_rc");
  CHECK(lua_tointeger(ml_state_lua(S), -1) == ML_OK, "the interrupt returned %d",
        (int)lua_tointeger(ml_state_lua(S), -1));
  lua_pop(ml_state_lua(S), 1);
  ml_future_release(ml_state_lua(S), t);
  ml_state_close(S);
}

/* ---- four threads complete 10,000 promises; the state closes halfway ---- */

enum { NPROMISES = 10000, NWORKERS = 4 };

typedef struct Pool {
  ml_Promise *p[NPROMISES];
  int next;    /* atomic: the next promise to complete */
  int closing; /* atomic: ml_state_close is called */
  int closed;  /* atomic: ml_state_close has returned */
  int ok, cancelled, shutdown, late, late_shutdown, other; /* atomic counts */
} Pool;

static Pool pool;

static void *worker(void *ud) {
  int i;
  (void)ud;
  while ((i = __atomic_fetch_add(&pool.next, 1, __ATOMIC_ACQ_REL)) < NPROMISES) {
    int late, rc, wait;
    /* The second half races with the close: it waits until the close
     * begins (bounded: 10 s). */
    for (wait = 0;
         i >= NPROMISES / 2 && wait < 10000 && !__atomic_load_n(&pool.closing, __ATOMIC_ACQUIRE);
         wait++)
      pause_briefly();
    late = __atomic_load_n(&pool.closed, __ATOMIC_ACQUIRE);
    ml_Values *v = ml_values_new();
    if (v == NULL) abort();
    ml_values_push_integer(v, i);
    rc = ml_promise_resolve(pool.p[i], v);
    ml_promise_release(pool.p[i]);
    if (rc == ML_OK) __atomic_add_fetch(&pool.ok, 1, __ATOMIC_RELAXED);
    else if (rc == -ECANCELED) __atomic_add_fetch(&pool.cancelled, 1, __ATOMIC_RELAXED);
    else if (rc == -ESHUTDOWN) __atomic_add_fetch(&pool.shutdown, 1, __ATOMIC_RELAXED);
    else __atomic_add_fetch(&pool.other, 1, __ATOMIC_RELAXED);
    if (late) {
      __atomic_add_fetch(&pool.late, 1, __ATOMIC_RELAXED);
      if (rc == -ESHUTDOWN) __atomic_add_fetch(&pool.late_shutdown, 1, __ATOMIC_RELAXED);
    }
    if (i % 64 == 0) sched_yield(); /* let the loop's thread in */
  }
  return NULL;
}

/* host.promises(n) -> a list of n Futures whose promises the workers
 * complete. */
static int make_promises(lua_State *L) {
  int i;
  lua_createtable(L, NPROMISES, 0);
  for (i = 0; i < NPROMISES; i++) {
    if (ml_promise_new(L, NULL, NULL, &pool.p[i]) != ML_OK)
      return luaL_error(L, "ml_promise_new failed");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static void test_close_halfway(void) {
  ml_State *S = new_state();
  lua_State *L = ml_state_lua(S);
  pthread_t th[NWORKERS];
  int i, steps, done_seen = 0;
  double timeout;
  memset(&pool, 0, sizeof pool);
  ml_state_register(S, "make_promises", make_promises);
  spawn(S, "local fs = make_promises()\n"
           "DONE = 0\n"
           "for i = 1, #fs do\n"
           "  local v = await fs[i]\n"
           "  if v ~= i - 1 then error('promise ' .. i .. ' gave ' .. tostring(v)) end\n"
           "  DONE = i\n"
           "end");
  /* The first step makes the promises; then the workers start. */
  CHECK(ml_state_step(S, NULL, &timeout) == 1, "first step: %s", ml_state_error(S));
  for (i = 0; i < NWORKERS; i++) pthread_create(&th[i], NULL, worker, NULL);
  /* Steps until half of the completions arrived (bounded: 10 s). */
  for (steps = 0; steps < 10000; steps++) {
    if (ml_state_step(S, NULL, &timeout) < 0) break;
    lua_getglobal(L, "DONE");
    done_seen = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (done_seen >= NPROMISES / 2) break;
    if (timeout != 0) pause_briefly();
  }
  CHECK(done_seen >= NPROMISES / 2, "only %d completions arrived", done_seen);
  __atomic_store_n(&pool.closing, 1, __ATOMIC_RELEASE);
  ml_state_close(S); /* halfway: the workers are still completing */
  __atomic_store_n(&pool.closed, 1, __ATOMIC_RELEASE);
  for (i = 0; i < NWORKERS; i++) pthread_join(th[i], NULL);
  CHECK(pool.ok + pool.cancelled + pool.shutdown == NPROMISES && pool.other == 0,
        "counts: %d ok + %d cancelled + %d shut down + %d other != %d", pool.ok, pool.cancelled,
        pool.shutdown, pool.other, NPROMISES);
  CHECK(pool.ok >= done_seen, "%d completions queued, %d seen by the script", pool.ok, done_seen);
  CHECK(pool.late == pool.late_shutdown, "%d completions after the close, only %d got -ESHUTDOWN",
        pool.late, pool.late_shutdown);
  printf(
    "close halfway: %d completed, %d cancelled by the close, %d shut down (%d after it returned)\n",
    pool.ok, pool.cancelled, pool.shutdown, pool.late);
}

int main(void) {
  test_watchdog();
  test_interrupt_without_budget();
  test_interrupt_in_coroutine();
  test_time_budget_stops_the_state();
  test_watchdog_stops_a_match();
  test_close_halfway();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
