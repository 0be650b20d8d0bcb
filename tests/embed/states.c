/* states.c: the two ways docs/embedding.md ("States, threads and loops")
 * runs several states in one process: several states on one libev loop
 * of the host's, stepped in turn by the host's own loop; and one state
 * per thread, four threads at once.  Built and run by tests/embed/hosts.sh
 * (make test), also under ASan. */
#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* The first result of the finished task t as an integer, or -1. */
static long long result(ml_State *S, ml_Future *t) {
  lua_State *L = ml_state_lua(S);
  long long v = -1;
  if (ml_future_state(t) == ML_FUTURE_RESULT && ml_future_push_result(L, t) == 1) {
    v = lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  ml_future_release(L, t);
  return v;
}

/* ---- several states on one loop ---- */

/* A timer of the host's on the same loop, counting its ticks. */
static int ticks;
static void on_tick(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  ticks++;
}

static void test_states_on_one_loop(void) {
  enum { N = 3 };
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  ml_State *S[N];
  ml_Future *t[N];
  ev_timer tick;
  int i, rounds = 0;
  /* Timers, sleep(0) (work ready at once: the host must not block then)
   * and a queue, in each state. */
  static const char *src =
    "local q, n = asyncio.Queue(), 0\n"
    "local async function producer() for i = 1, 50 do await q:put(i) await asyncio.sleep(0) end end\n"
    "local p = asyncio.create_task(producer())\n"
    "for i = 1, 50 do n = n + await q:get() if i %% 10 == 0 then await asyncio.sleep(0.002 * %d) end end\n"
    "await p\n"
    "return n";
  ev_timer_init(&tick, on_tick, 0.001, 0.001);
  ev_timer_start(loop, &tick);
  for (i = 0; i < N; i++) {
    char buf[1024];
    S[i] = ml_state_new(loop);
    snprintf(buf, sizeof buf, src, i + 1);
    t[i] = spawn(S[i], buf);
  }
  /* The host's loop: step every state, then wait in libev for the next
   * event of any of them (or of the host's own watchers) - unless one has
   * work ready now, which no event will announce.  On a shared loop a
   * state counts the host's active watchers as work left too (it cannot
   * tell them from its own), so the host ends the loop by its own
   * measure: here, when its tasks are done. */
  for (;;) {
    int pending = 0, ready = 0;
    for (i = 0; i < N; i++) pending += ml_future_state(t[i]) == ML_FUTURE_PENDING;
    if (pending == 0 || ++rounds > 100000) break;
    for (i = 0; i < N; i++) {
      double timeout;
      int rc = ml_state_step(S[i], NULL, &timeout);
      if (rc < 0) {
        printf("FAIL step: %s\n", ml_state_error(S[i]));
        exit(1);
      }
      if (rc > 0 && timeout == 0) ready = 1;
    }
    if (!ready) ev_run(loop, EVRUN_ONCE);
  }
  CHECK(rounds <= 100000, "the tasks never finished");
  for (i = 0; i < N; i++) CHECK(result(S[i], t[i]) == 1275, "state %d's sum", i);
  CHECK(ticks > 0, "the host's own timer ran on the shared loop too");
  for (i = 0; i < N; i++)
    CHECK(ml_state_step(S[i], NULL, NULL) == 1, "the host's timer is work left");
  ev_timer_stop(loop, &tick);
  for (i = 0; i < N; i++)
    CHECK(ml_state_step(S[i], NULL, NULL) == 0, "state %d idle once the host's timer stopped", i);
  for (i = 0; i < N; i++) ml_state_close(S[i]);
  ev_loop_destroy(loop);
}

/* ---- one state per thread ---- */

typedef struct Worker {
  pthread_t th;
  int id;
  long long sum;
} Worker;

static void *worker(void *ud) {
  Worker *w = ud;
  ml_State *S = ml_state_new(NULL); /* its own state, its own loop */
  char src[256];
  ml_Future *t;
  snprintf(src, sizeof src,
           "local n = 0\n"
           "for i = 1, 200 do n = n + (await asyncio.sleep(0, i)) end\n"
           "return n * %d",
           w->id);
  t = spawn(S, src);
  w->sum = ml_state_run(S) == ML_OK ? result(S, t) : -1;
  ml_state_close(S);
  return NULL;
}

static void test_one_state_per_thread(void) {
  Worker w[4];
  int i;
  for (i = 0; i < 4; i++) {
    w[i].id = i + 1;
    pthread_create(&w[i].th, NULL, worker, &w[i]);
  }
  for (i = 0; i < 4; i++) {
    pthread_join(w[i].th, NULL);
    CHECK(w[i].sum == 20100LL * (i + 1), "thread %d's state: %lld", i, w[i].sum);
  }
}

int main(void) {
  test_states_on_one_loop();
  test_one_state_per_thread();
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
