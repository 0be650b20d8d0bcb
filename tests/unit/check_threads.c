/* check_threads.c: the embedding API across threads - the one wake-up
 * path (a poll()-stepped host resolving a name), the thread pool
 * (ml_work_submit), promises and their lifetimes - driven as a host
 * drives it (only moonloop.h, libev and the Lua C API). */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <check.h>
#include "moonloop.h"
#include "host_util.h"

static ml_State *S;
static lua_State *L;

static void setup(void) {
  S = ml_state_new(NULL);
  ck_assert_ptr_nonnull(S);
  L = ml_state_lua(S);
}

static void teardown(void) {
  ml_state_close(S);
  S = NULL;
  L = NULL;
}

/* Loads src and spawns it as a task; returns the task's handle. */
static ml_Future *spawn(const char *src) { return hu_spawn(S, L, src); }

/* The first result of the successful task t as a string (static). */
static const char *result_of(ml_Future *t) { return hu_result_of(L, t); }

static const char *run(const char *src) { return hu_run(S, L, src); }

/* A foreign loop built on poll(2) and nothing else: steps until idle,
 * waiting on the state's fd with its timeout. */
static void poll_loop(ml_State *s) {
  int steps = 0, fd, rc;
  double timeout;
  while ((rc = ml_state_step(s, &fd, &timeout)) > 0) {
    struct pollfd p = {fd, POLLIN, 0};
    ck_assert_int_lt(++steps, 10000);
    if (timeout != 0) poll(&p, fd >= 0 ? 1 : 0, timeout < 0 ? -1 : (int)(timeout * 1000));
  }
  ck_assert_int_eq(rc, 0);
}

/* The host that hung before: it steps moonloop from its own poll() and a
 * script resolves a name on the thread pool.  The pool completes through
 * the state's wake-up, so the fd poll() waits on becomes readable. */
START_TEST(test_embed_foreign_loop_wakes_for_getaddrinfo) {
  ml_Future *t =
    spawn("local infos = await asyncio.get_running_loop():getaddrinfo('localhost', 80)\n"
          "return #infos > 0 and infos[1][5][2] == 80 and 'resolved' or 'empty'");
  poll_loop(S);
  ck_assert_str_eq(result_of(t), "resolved");
  ml_future_release(L, t);
}
END_TEST

/* ml_work_submit: work on a pool thread, its results pushed on the loop's. */
typedef struct SumWork {
  int n;
  long long sum;
  int freed;
} SumWork;

static void sum_work(void *ud) {
  SumWork *w = ud;
  for (int i = 1; i <= w->n; i++) w->sum += i;
}

static int sum_done(lua_State *l, void *ud) {
  SumWork *w = ud;
  if (l == NULL) {
    w->freed = 1;
    return 0;
  }
  if (w->n < 0) return luaL_error(l, "negative work");
  lua_pushinteger(l, w->sum);
  lua_pushstring(l, "done");
  return 2;
}

static SumWork sums[4];
static int nsums;

static int host_sum(lua_State *l) {
  SumWork *w = &sums[nsums++];
  int rc;
  memset(w, 0, sizeof *w);
  w->n = (int)luaL_checkinteger(l, 1);
  rc = ml_work_submit(l, sum_work, sum_done, w);
  if (rc < 0) return luaL_error(l, "ml_work_submit: %d", rc);
  return 1;
}

START_TEST(test_embed_work_submit_runs_on_the_pool) {
  nsums = 0;
  ck_assert_int_eq(ml_state_register(S, "sum", host_sum), ML_OK);
  ck_assert_str_eq(run("local a, b = await sum(100)\n"
                       "local ok, e = pcall(function() return await sum(-1) end)\n"
                       "assert(not ok and tostring(e):find('negative work'), tostring(e))\n"
                       "return a .. ' ' .. b"),
                   "5050 done");
  ck_assert_int_eq(ml_work_submit(L, NULL, sum_done, NULL), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "ml_work_submit"));
  ck_assert_int_eq(lua_gettop(L), 0);
}
END_TEST

/* Promises: a worker completes with a table; a script's timeout calls the
 * cancel callback and a late completion is told -ECANCELED. */
typedef struct Remote {
  ml_Promise *p;
  int cancelled;
  int rc;
  pthread_t th;
} Remote;

static void on_promise_cancel(ml_Promise *p, void *ud) {
  Remote *r = ud;
  (void)p;
  r->cancelled++;
}

static void *remote_resolve(void *arg) {
  Remote *r = arg;
  ml_Values *v = ml_values_new();
  ml_values_push_integer(v, 42);
  ml_values_push_table(v);
  ml_values_push_string(v, "name", 4);
  ml_values_push_string(v, "moon", 4);
  ml_values_push_integer(v, 1);
  ml_values_push_boolean(v, 1);
  ml_values_push_string(v, "nested", 6);
  ml_values_push_table(v);
  ml_values_push_integer(v, 1);
  ml_values_push_number(v, 2.5);
  ml_values_end_table(v);
  ml_values_end_table(v);
  ml_values_push_nil(v);
  r->rc = ml_promise_resolve(r->p, v);
  ml_promise_release(r->p);
  return NULL;
}

static Remote remotes[4];
static int nremotes;

/* remote(resolve) -> a Future a worker completes (now, or never). */
static int host_remote(lua_State *l) {
  Remote *r = &remotes[nremotes++];
  memset(r, 0, sizeof *r);
  if (ml_promise_new(l, on_promise_cancel, r, &r->p) != ML_OK) return luaL_error(l, "no memory");
  if (lua_toboolean(l, 1)) ck_assert_int_eq(pthread_create(&r->th, NULL, remote_resolve, r), 0);
  return 1;
}

START_TEST(test_embed_promise_carries_tables_and_learns_of_cancel) {
  ml_Values *bad;
  nremotes = 0;
  ck_assert_int_eq(ml_state_register(S, "remote", host_remote), ML_OK);
  ck_assert_str_eq(
    run("local n, t, z = await remote(true)\n"
        "local ok, e = pcall(function() return await asyncio.wait_for(remote(false), 0.01) end)\n"
        "assert(asyncio.isinstance(e, asyncio.TimeoutError), tostring(e))\n"
        "return string.format('%d %s %s %s %s %s', n, t.name, tostring(t[1]),\n"
        "  tostring(t.nested[1]), tostring(z), select('#', n, t, z))"),
    "42 moon true 2.5 nil 3");
  pthread_join(remotes[0].th, NULL);
  ck_assert_int_eq(remotes[0].rc, ML_OK);
  ck_assert_int_eq(remotes[0].cancelled, 0);
  /* The timeout cancelled the second: the host was told, and a late
   * completion is refused. */
  ck_assert_int_eq(remotes[1].cancelled, 1);
  ck_assert_int_eq(ml_promise_resolve(remotes[1].p, NULL), -ECANCELED);
  /* A list of the wrong shape is refused whole. */
  bad = ml_values_new();
  ck_assert_int_eq(ml_values_push_table(bad), ML_OK);
  ck_assert_int_eq(ml_values_push_nil(bad), -EINVAL);
  ck_assert_int_eq(ml_values_push_integer(bad, 1), -EINVAL);
  ck_assert_int_eq(ml_promise_resolve(remotes[1].p, bad), -EINVAL);
  ml_promise_release(remotes[1].p);
}
END_TEST

/* A promise outlives its state: completions then say -ESHUTDOWN, and the
 * cancel callback ran during the close. */
START_TEST(test_embed_promise_outlives_the_state) {
  ml_State *s = ml_state_new(NULL);
  lua_State *l = ml_state_lua(s);
  Remote r;
  memset(&r, 0, sizeof r);
  ck_assert_int_eq(ml_promise_new(l, on_promise_cancel, &r, &r.p), ML_OK);
  lua_setglobal(l, "pending");
  ck_assert_int_eq(ml_promise_resolve(NULL, NULL), -EINVAL);
  ml_state_close(s);
  ck_assert_int_eq(r.cancelled, 1);
  ck_assert_int_eq(ml_promise_resolve(r.p, ml_values_new()), -ESHUTDOWN);
  ck_assert_int_eq(ml_promise_reject(r.p, "ValueError", "late"), -ESHUTDOWN);
  ml_promise_release(r.p);
}
END_TEST

/* ml_task_spawn runs an async function's body; refuses what cannot run. */
START_TEST(test_embed_spawn_runs_async_functions_and_refuses_values) {
  ml_Future *t = NULL, *c = NULL;
  const char *src = "return async function(x) await asyncio.sleep(0) return 'ran ' .. x end";
  ck_assert_int_eq(ml_load_string(L, src, strlen(src), "=af"), ML_OK);
  ck_assert_int_eq(lua_pcall(L, 0, 1, 0), LUA_OK);
  lua_pushvalue(L, -1);
  lua_pushinteger(L, 7);
  ck_assert_int_eq(ml_task_spawn(L, 1, "af", &t), ML_OK);
  lua_pushinteger(L, 8);
  ck_assert_int_eq(lua_pcall(L, 1, 1, 0), LUA_OK); /* a Coroutine */
  ck_assert_int_eq(ml_task_spawn(L, 0, "coro", &c), ML_OK);
  lua_pushinteger(L, 42);
  ck_assert_int_eq(ml_task_spawn(L, 0, "n", NULL), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "not callable"));
  ck_assert_int_eq(lua_gettop(L), 0);
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_str_eq(result_of(t), "ran 7");
  ck_assert_str_eq(result_of(c), "ran 8");
  ml_future_release(L, t);
  ml_future_release(L, c);
}
END_TEST

Suite *threads_suite(void) {
  Suite *s = suite_create("threads");
  TCase *tc = tcase_create("wake-up, pool, promises");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_embed_foreign_loop_wakes_for_getaddrinfo);
  tcase_add_test(tc, test_embed_work_submit_runs_on_the_pool);
  tcase_add_test(tc, test_embed_promise_carries_tables_and_learns_of_cancel);
  tcase_add_test(tc, test_embed_promise_outlives_the_state);
  tcase_add_test(tc, test_embed_spawn_runs_async_functions_and_refuses_values);
  suite_add_tcase(s, tc);
  return s;
}
