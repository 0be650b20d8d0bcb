/* check_embed_control.c: the host's controls over a running state (the
 * embedding API of vm/embed/control.c) - stopping a run, interrupting code
 * that never awaits, cancelling, reading how a task failed, the error
 * handler - and the dialect's calls for tools, driven the way a host
 * program drives them (only moonloop.h, libev and the Lua C API).  Moved
 * out of check_embed.c; the fixture both use is embed_fixture.h. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <check.h>
#include <ev.h>
#include "embed_fixture.h"


/* ---- controls: stop, interrupt, cancel, reading a failure ---- */

/* Calls ml_state_stop from a task (a host C function). */
static int host_stop(lua_State *Lt) {
  lua_pushinteger(Lt, ml_state_stop(ml_state_from_lua(Lt)));
  return 1;
}

/* Reads the global name as an integer. */
static lua_Integer global_int(const char *name) {
  lua_Integer v;
  lua_getglobal(L, name);
  v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

START_TEST(test_embed_stop_from_a_host_function_ends_the_run) {
  ml_Future *t;
  ck_assert_int_eq(ml_state_register(S, "stop", host_stop), ML_OK);
  /* The task would run for ever: the stop ends the run, not the task. */
  t = spawn("n = 0\n"
            "while true do\n"
            "  n = n + 1\n"
            "  if n % 3 == 0 then assert(stop() == 0) end\n"
            "  await asyncio.sleep(0)\n"
            "end");
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_PENDING);
  ck_assert_int_eq(global_int("n"), 3);
  /* The next run carries on with the same task, and stops again. */
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_int_eq(global_int("n"), 6);
  /* Outside a run there is nothing to stop, and no later run is cut. */
  ck_assert_int_eq(ml_state_stop(S), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "not running"));
  ck_assert_int_eq(ml_future_cancel(L, t, "enough"), ML_OK);
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_CANCELLED);
  ck_assert_int_eq(global_int("n"), 6); /* raised in the await it was in */
  ml_future_release(L, t);
}
END_TEST

/* A host watcher on a shared loop that stops the state's run on its
 * third tick; the watcher stays active all along. */
static int ticks;
static ml_State *tick_state;
static void stop_tick_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  if (++ticks % 3 == 0) ck_assert_int_eq(ml_state_stop(tick_state), ML_OK);
}

START_TEST(test_embed_stop_from_a_libev_callback_on_a_shared_loop) {
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  ev_timer w;
  ml_State *s2 = ml_state_new(loop);
  lua_State *l2;
  ml_Future *t;
  const char *src = "while true do await asyncio.sleep(0.001) end";
  ck_assert_ptr_nonnull(s2);
  l2 = ml_state_lua(s2);
  tick_state = s2;
  ticks = 0;
  ev_timer_init(&w, stop_tick_cb, 0.001, 0.001);
  ev_timer_start(loop, &w);
  ck_assert_int_eq(ml_load_string(l2, src, strlen(src), "=forever"), ML_OK);
  ck_assert_int_eq(ml_task_spawn(l2, 0, NULL, &t), ML_OK);
  ck_assert_int_eq(ml_state_run(s2), ML_OK);
  ck_assert_int_eq(ticks, 3);
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_PENDING);
  ck_assert_int_eq(ml_state_run(s2), ML_OK);
  ck_assert_int_eq(ticks, 6);
  /* With the task gone, the host's watcher alone still keeps the run
   * going until it stops it. */
  ck_assert_int_eq(ml_future_cancel(l2, t, NULL), ML_OK);
  ck_assert_int_eq(ml_state_run(s2), ML_OK);
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_CANCELLED);
  ck_assert_int_eq(ticks, 9);
  ml_future_release(l2, t);
  ev_timer_stop(loop, &w);
  ml_state_close(s2);
  ev_loop_destroy(loop);
}
END_TEST

START_TEST(test_embed_cancel_asks_a_task_and_cancels_a_future) {
  ml_Future *t = spawn("local ok, e = pcall(function() return await asyncio.sleep(100) end)\n"
                       "return 'caught ' .. tostring(e)");
  ml_Future *f;
  ck_assert_int_eq(ml_state_step(S, NULL, NULL), 1); /* the task is parked */
  ck_assert_int_eq(ml_future_cancel(L, t, "enough"), ML_OK);
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_PENDING); /* it unwinds first */
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  /* The task caught the cancellation, with its message, and returned. */
  ck_assert_str_eq(result_of(t), "caught CancelledError: enough");
  ck_assert_int_eq(ml_future_cancel(L, t, NULL), -EALREADY);
  ml_future_release(L, t);
  /* A host future is cancelled at once. */
  f = ml_future_new(L);
  ck_assert_ptr_nonnull(f);
  lua_pop(L, 1);
  ck_assert_int_eq(ml_future_cancel(L, f, NULL), ML_OK);
  ck_assert_int_eq(ml_future_state(f), ML_FUTURE_CANCELLED);
  ck_assert_int_eq(ml_future_release(L, f), ML_OK);
  ck_assert_int_eq(ml_future_cancel(L, NULL, NULL), -EINVAL);
}
END_TEST

START_TEST(test_embed_cancel_all_cancels_every_task) {
  ml_Future *t = spawn("tasks = {}\n"
                       "for i = 1, 3 do tasks[i] = asyncio.create_task(asyncio.sleep(100)) end\n"
                       "await asyncio.sleep(100)");
  int i;
  for (i = 0; i < 3; i++) ml_state_step(S, NULL, NULL);
  ck_assert_int_eq(ml_task_cancel_all(S, "bye"), ML_OK);
  ck_assert_int_eq(ml_state_run(S), ML_OK); /* returns: nothing is left */
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_CANCELLED);
  ck_assert_str_eq(error_of(t), "CancelledError: bye");
  ml_future_release(L, t);
  ck_assert_str_eq(run("local r = {}\n"
                       "for i = 1, 3 do r[i] = tostring(tasks[i]:cancelled()) end\n"
                       "return table.concat(r, ' ')"),
                   "true true true");
}
END_TEST

START_TEST(test_embed_push_traceback_shows_where_a_task_failed) {
  ml_Future *t = spawn("local function deep() error('boom') end\n"
                       "await asyncio.sleep(0)\n"
                       "deep()");
  int top = lua_gettop(L);
  ck_assert_int_eq(ml_future_push_traceback(L, t), -EINVAL); /* still pending */
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_int_eq(ml_future_push_traceback(L, t), ML_OK);
  ck_assert_int_eq(lua_gettop(L), top + 1);
  ck_assert(lua_type(L, -1) == LUA_TSTRING);
  ck_assert_msg(strstr(lua_tostring(L, -1), "test:1: in") != NULL, "traceback: %s",
                lua_tostring(L, -1));
  ck_assert_msg(strstr(lua_tostring(L, -1), "test:3: in") != NULL, "traceback: %s",
                lua_tostring(L, -1));
  lua_pop(L, 1);
  /* The traceback alone does not retrieve the exception: it is reported
   * when the task is collected. */
  ml_future_release(L, t);
  lua_gc(L, LUA_GCCOLLECT);
  lua_gc(L, LUA_GCCOLLECT);
  ck_assert_int_eq(nreported, 1);
  ck_assert_ptr_nonnull(strstr(reported, "test:1: boom"));
  /* A cancelled task has no traceback. */
  t = spawn("await asyncio.sleep(100)");
  ck_assert_int_eq(ml_state_step(S, NULL, NULL), 1);
  ck_assert_int_eq(ml_future_cancel(L, t, NULL), ML_OK);
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_int_eq(ml_future_push_traceback(L, t), ML_OK);
  ck_assert(lua_isnil(L, -1));
  lua_pop(L, 1);
  ml_future_release(L, t);
}
END_TEST

static void on_alarm(int sig) {
  (void)sig;
  ml_state_interrupt(S);
}

/* Arms a one-shot SIGALRM, whose handler interrupts the running task. */
static int host_arm(lua_State *Lt) {
  struct itimerval it = {{0, 0}, {0, 10000}};
  (void)Lt;
  ck_assert_int_eq(setitimer(ITIMER_REAL, &it, NULL), 0);
  return 0;
}

START_TEST(test_embed_interrupt_stops_code_that_never_awaits) {
  struct sigaction sa, old;
  ml_Future *t;
  ck_assert_int_eq(ml_state_interrupt(S), -ESRCH); /* no task runs */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  ck_assert_int_eq(sigaction(SIGALRM, &sa, &old), 0);
  ck_assert_int_eq(ml_state_register(S, "arm", host_arm), ML_OK);
  t = spawn("await asyncio.sleep(0)\n"
            "arm()\n"
            "while true do end");
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  sigaction(SIGALRM, &old, NULL);
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_ERROR);
  ck_assert_str_eq(error_of(t), "KeyboardInterrupt");
  ml_future_release(L, t);
  /* The state goes on. */
  ck_assert_str_eq(run("return await asyncio.sleep(0, 'alive')"), "alive");
}
END_TEST

static void other_handler(ml_State *s, const char *msg, void *ud) {
  (void)s;
  (void)msg;
  (void)ud;
}

START_TEST(test_embed_error_handler_is_read_back) {
  void *ud = NULL;
  int token;
  ck_assert(ml_state_error_handler(S, &ud) == on_error);
  ml_state_set_error_handler(S, other_handler, &token);
  ck_assert(ml_state_error_handler(S, &ud) == other_handler);
  ck_assert_ptr_eq(ud, &token);
  ml_state_set_error_handler(S, NULL, NULL);
  ck_assert(ml_state_error_handler(S, NULL) == NULL);
}
END_TEST

START_TEST(test_embed_dialect_translate_keeps_lines_and_reports_syntax) {
  const char *src = "local async function f(x)\n  return await g(x)\nend\n";
  const char *bad = "\nasync x";
  char *out = (char *)1, err[256];
  size_t len = 0, i, lines = 0;
  ck_assert_int_eq(ml_dialect_translate(src, strlen(src), "f.lua", &out, &len, err, sizeof err),
                   ML_OK);
  ck_assert_ptr_nonnull(out);
  ck_assert_uint_eq(strlen(out), len);
  for (i = 0; i < len; i++) lines += out[i] == '\n';
  ck_assert_uint_eq(lines, 3);
  ck_assert_ptr_null(strstr(out, "async function"));
  ck_assert_ptr_null(strstr(out, "await"));
  ck_assert_ptr_nonnull(strstr(out, "__awcall(g, x)"));
  free(out);
  ck_assert_int_eq(ml_dialect_translate(bad, strlen(bad), "@bad.lua", &out, &len, err, sizeof err),
                   -EINVAL);
  ck_assert_ptr_null(out);
  ck_assert_str_eq(err, "bad.lua:2: 'function' expected after 'async' near 'x'");
  ck_assert_int_eq(ml_dialect_translate("", 0, NULL, &out, NULL, NULL, 0), ML_OK);
  ck_assert_str_eq(out, "");
  free(out);
}
END_TEST

/* ml_file_read reads what ml_load_file reads: the whole file, an empty one
 * as "", a missing one as NULL with errno. */
START_TEST(test_embed_file_read_reads_whole_files) {
  char path[] = "/tmp/moonloop_check_XXXXXX";
  const char *text = "return 40 + 2\n";
  size_t len = 99;
  char *got;
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  ck_assert_int_eq(write(fd, text, strlen(text)), (int)strlen(text));
  close(fd);
  got = ml_file_read(path, &len);
  ck_assert_ptr_nonnull(got);
  ck_assert_uint_eq(len, strlen(text));
  ck_assert_str_eq(got, text);
  free(got);
  ck_assert_int_eq(ml_load_file(L, path), ML_OK);
  ck_assert_int_eq(lua_pcall(L, 0, 1, 0), LUA_OK);
  ck_assert_int_eq(lua_tointeger(L, -1), 42);
  lua_pop(L, 1);
  fd = open(path, O_WRONLY | O_TRUNC);
  ck_assert_int_ge(fd, 0);
  close(fd);
  got = ml_file_read(path, &len);
  ck_assert_ptr_nonnull(got);
  ck_assert_uint_eq(len, 0);
  ck_assert_str_eq(got, "");
  free(got);
  unlink(path);
  errno = 0;
  ck_assert_ptr_null(ml_file_read(path, &len));
  ck_assert_int_eq(errno, ENOENT);
  ck_assert_int_eq(ml_load_file(L, path), -ENOENT);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "cannot open"));
}
END_TEST

/* The reserved words, the list the REPL completes and prints names by. */
START_TEST(test_embed_dialect_keyword_lists_reserved_words) {
  int i, n = 0;
  ck_assert_str_eq(ml_dialect_keyword(0), "and");
  for (i = 0; ml_dialect_keyword(i) != NULL; i++) {
    n++;
    if (i > 0) ck_assert_int_lt(strcmp(ml_dialect_keyword(i - 1), ml_dialect_keyword(i)), 0);
    ck_assert_str_ne(ml_dialect_keyword(i), "async");
    ck_assert_str_ne(ml_dialect_keyword(i), "await");
  }
  ck_assert_int_eq(n, 22);
  ck_assert_str_eq(ml_dialect_keyword(21), "while");
  ck_assert_ptr_null(ml_dialect_keyword(-1));
}
END_TEST

Suite *embed_control_suite(void) {
  Suite *s = suite_create("embed_control");
  TCase *tc;

  tc = tcase_create("controls");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_embed_stop_from_a_host_function_ends_the_run);
  tcase_add_test(tc, test_embed_stop_from_a_libev_callback_on_a_shared_loop);
  tcase_add_test(tc, test_embed_cancel_asks_a_task_and_cancels_a_future);
  tcase_add_test(tc, test_embed_cancel_all_cancels_every_task);
  tcase_add_test(tc, test_embed_push_traceback_shows_where_a_task_failed);
  tcase_add_test(tc, test_embed_interrupt_stops_code_that_never_awaits);
  tcase_add_test(tc, test_embed_error_handler_is_read_back);
  tcase_add_test(tc, test_embed_dialect_translate_keeps_lines_and_reports_syntax);
  tcase_add_test(tc, test_embed_file_read_reads_whole_files);
  tcase_add_test(tc, test_embed_dialect_keyword_lists_reserved_words);
  suite_add_tcase(s, tc);
  return s;
}
