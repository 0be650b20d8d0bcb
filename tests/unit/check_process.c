/* check_process.c: child processes from embedded states, on loops that are
 * not libev's default one (where a pidfd, or the polling fallback, tells
 * of a child's exit): a private loop run by ml_state_run, a host stepping
 * the state from poll(), and a state closed with a child still running. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <check.h>
#include <ev.h>
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
  if (S) ml_state_close(S);
  S = NULL;
  L = NULL;
  unsetenv("MOONLOOP_NO_PIDFD");
}

static ml_Future *spawn(const char *src) { return hu_spawn(S, L, src); }

/* The first result of the finished task t, as a string (static). */
static const char *result_of(ml_Future *t) { return hu_result_of(L, t); }

static const char *run(const char *src) { return hu_run(S, L, src); }

static const char script[] = "local p = await asyncio.create_subprocess_shell('cat; exit 3',\n"
                             "  { stdin = asyncio.PIPE, stdout = asyncio.PIPE })\n"
                             "local out = await p:communicate('through')\n"
                             "local k = await asyncio.create_subprocess_exec('sleep', '30')\n"
                             "k:kill()\n"
                             "return out .. ' ' .. p.returncode .. ' ' .. await k:wait()";

START_TEST(test_process_exit_on_a_private_loop) { ck_assert_str_eq(run(script), "through 3 -9"); }
END_TEST

START_TEST(test_process_exit_without_pidfd_polls) {
  setenv("MOONLOOP_NO_PIDFD", "1", 1);
  ck_assert_str_eq(run(script), "through 3 -9");
}
END_TEST

/* A host that waits in its own poll() on the state's fd. */
START_TEST(test_process_exit_wakes_a_polling_host) {
  ml_Future *t = spawn(script);
  int fd, rc, steps = 0;
  double timeout;
  while ((rc = ml_state_step(S, &fd, &timeout)) > 0) {
    struct pollfd p = {fd, POLLIN, 0};
    ck_assert_int_lt(++steps, 10000);
    if (timeout != 0) poll(&p, fd >= 0 ? 1 : 0, timeout < 0 ? -1 : (int)(timeout * 1000));
  }
  ck_assert_int_eq(rc, 0);
  ck_assert_str_eq(result_of(t), "through 3 -9");
  ml_future_release(L, t);
}
END_TEST

/* 'R', 'S', 'Z'... of process pid, or 0 if there is none. */
static char proc_state(int pid) {
  char path[64], buf[512], *p;
  FILE *f;
  size_t n;
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  if ((f = fopen(path, "r")) == NULL) return 0;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  p = strrchr(buf, ')');
  return p && p[1] == ' ' ? p[2] : 0;
}

START_TEST(test_process_state_close_leaves_the_child_running_then_reaped) {
  int pid, i;
  char st;
  struct timespec ms = {0, 10 * 1000 * 1000};
  pid = atoi(run("local p = await asyncio.create_subprocess_exec('sleep', '0.3',\n"
                 "  { stdout = asyncio.PIPE })\n"
                 "asyncio.get_running_loop():stop()\n"
                 "return tostring(p.pid)"));
  ck_assert_int_gt(pid, 0);
  ml_state_close(S);
  S = NULL;
  st = proc_state(pid);
  ck_assert_msg(st != 0 && st != 'Z', "the child is left running (state %c)", st ? st : '-');
  /* Bounded: 10 s.  The reaper thread waits for it: no zombie. */
  for (i = 0; i < 1000 && (st = proc_state(pid)) != 0; i++) nanosleep(&ms, NULL);
  ck_assert_msg(st == 0, "the child was not reaped (state %c)", st);
}
END_TEST

/* ---- worker threads ---- */

/* Worker completions wake a host polling the state's fd, and a private
 * loop run by ml_state_run. */
static const char thread_script[] =
  "local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end\n"
  "local futs = {}\n"
  "for i = 1, 50 do futs[i] = asyncio.to_thread(fib, 15) end\n"
  "local r = await asyncio.gather(table.unpack(futs))\n"
  "return tostring(r[1] + r[50])";

START_TEST(test_process_thread_completion_wakes_a_polling_host) {
  ml_Future *t = spawn(thread_script);
  int fd, rc, steps = 0;
  double timeout;
  while ((rc = ml_state_step(S, &fd, &timeout)) > 0) {
    struct pollfd p = {fd, POLLIN, 0};
    ck_assert_int_lt(++steps, 100000);
    if (timeout != 0) poll(&p, fd >= 0 ? 1 : 0, timeout < 0 ? -1 : (int)(timeout * 1000));
  }
  ck_assert_int_eq(rc, 0);
  ck_assert_str_eq(result_of(t), "1220");
  ml_future_release(L, t);
}
END_TEST

START_TEST(test_process_thread_completion_on_a_private_loop) {
  ck_assert_str_eq(run(thread_script), "1220");
}
END_TEST

/* A state closed with jobs in flight: the workers drop the results. */
START_TEST(test_process_state_close_with_jobs_in_flight) {
  run(
    "for i = 1, 20 do asyncio.get_running_loop():run_in_executor(nil, function() local t = os.clock()\n"
    "  while os.clock() - t < 0.01 do end end) end\n"
    "asyncio.get_running_loop():stop()\n"
    "return 'ok'");
  ml_state_close(S);
  S = NULL;
}
END_TEST

/* ---- signals ---- */

START_TEST(test_process_signals_are_off_in_a_host_state) {
  ck_assert_str_eq(run("local ok, e = pcall(asyncio.get_running_loop().add_signal_handler,\n"
                       "  asyncio.get_running_loop(), 'SIGUSR1', print)\n"
                       "return tostring(e)"),
                   "RuntimeError: signal handling is off in this state (a host turns it on with "
                   "ml_state_enable_signals)");
}
END_TEST

/* A host polling the state's fd is woken by a signal it let the script
 * catch. */
START_TEST(test_process_signal_wakes_a_polling_host) {
  ml_Future *t;
  int fd, rc, steps = 0;
  double timeout;
  ck_assert_int_eq(ml_state_enable_signals(S, 1), ML_OK);
  t = spawn("local loop = asyncio.get_running_loop()\n"
            "local got = loop:create_future()\n"
            "loop:add_signal_handler('SIGUSR2', function(v) got:set_result(v) end, 'usr2')\n"
            "local p = await asyncio.create_subprocess_exec('sh', '-c',\n"
            "  'kill -USR2 ' .. require('asyncio._signal').getpid())\n"
            "await p:wait()\n"
            "local v = await got\n"
            "loop:remove_signal_handler('SIGUSR2')\n"
            "return v");
  while ((rc = ml_state_step(S, &fd, &timeout)) > 0) {
    struct pollfd p = {fd, POLLIN, 0};
    ck_assert_int_lt(++steps, 10000);
    if (timeout != 0) poll(&p, fd >= 0 ? 1 : 0, timeout < 0 ? -1 : (int)(timeout * 1000));
  }
  ck_assert_int_eq(rc, 0);
  ck_assert_str_eq(result_of(t), "usr2");
  ml_future_release(L, t);
}
END_TEST

Suite *process_suite(void) {
  Suite *s = suite_create("process");
  TCase *tc = tcase_create("exit");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_process_exit_on_a_private_loop);
  tcase_add_test(tc, test_process_exit_without_pidfd_polls);
  tcase_add_test(tc, test_process_exit_wakes_a_polling_host);
  tcase_add_test(tc, test_process_state_close_leaves_the_child_running_then_reaped);
  suite_add_tcase(s, tc);

  tc = tcase_create("threads");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_process_thread_completion_wakes_a_polling_host);
  tcase_add_test(tc, test_process_thread_completion_on_a_private_loop);
  tcase_add_test(tc, test_process_state_close_with_jobs_in_flight);
  suite_add_tcase(s, tc);

  tc = tcase_create("signals");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_process_signals_are_off_in_a_host_state);
  tcase_add_test(tc, test_process_signal_wakes_a_polling_host);
  suite_add_tcase(s, tc);
  return s;
}
