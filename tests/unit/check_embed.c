/* check_embed.c: the embedding API, driven the way a host program drives
 * it (only moonloop.h, libev and the Lua C API). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>
#include <check.h>
#include <ev.h>
#include "moonloop.h"
#include "host_util.h"
#include "embed_fixture.h"


static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  ck_assert_ptr_nonnull(d);
  while (readdir(d)) n++;
  closedir(d);
  return n;
}

/* ---- loops ---- */

START_TEST(test_embed_private_loop_runs_a_script) {
  ck_assert_str_eq(run("local v = await asyncio.sleep(0.01, 'hi')\n"
                       "local t = asyncio.create_task((async function() return 2 end)())\n"
                       "return v .. (await t)"),
                   "hi2");
}
END_TEST

/* A host watcher on the shared loop, which resolves a host future. */
static ml_Future *timer_future;
static void resolve_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  lua_pushstring(L, "from the host's timer");
  lua_pushinteger(L, 7);
  ck_assert_int_eq(ml_future_resolve(L, timer_future, 2), ML_OK);
}

static int host_later(lua_State *Lt) {
  timer_future = ml_future_new(Lt);
  if (timer_future == NULL) return luaL_error(Lt, "no memory");
  return 1;
}

START_TEST(test_embed_shared_loop_runs_host_watchers) {
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  ev_timer w;
  ml_State *s2;
  lua_State *l2;
  /* A second state on the host's loop; the fixture's state is unused. */
  s2 = ml_state_new(loop);
  ck_assert_ptr_nonnull(s2);
  ck_assert_ptr_eq(ml_state_loop(s2), loop);
  l2 = ml_state_lua(s2);
  ck_assert_int_eq(ml_state_register(s2, "later", host_later), ML_OK);
  ev_timer_init(&w, resolve_cb, 0.01, 0.);
  ev_timer_start(loop, &w);
  {
    lua_State *save = L;
    ml_State *saveS = S;
    ml_Future *t;
    const char *src = "local a, b = await later(); return a .. ' ' .. b";
    L = l2;
    S = s2;
    ck_assert_int_eq(ml_load_string(L, src, strlen(src), "=shared"), ML_OK);
    ck_assert_int_eq(ml_task_spawn(L, 0, NULL, &t), ML_OK);
    ck_assert_int_eq(ml_state_run(S), ML_OK);
    ck_assert_str_eq(result_of(t), "from the host's timer 7");
    ml_future_release(L, t);
    L = save;
    S = saveS;
  }
  ml_state_close(s2);
  /* The state left the host's loop as it found it: nothing active. */
  ck_assert_int_eq(ev_run(loop, EVRUN_NOWAIT), 0);
  ev_loop_destroy(loop);
}
END_TEST

/* A foreign loop built on poll(2): steps until idle, waiting on the
 * state's fd with its timeout.  Returns the number of steps. */
static int poll_loop(ml_State *s, int *saw_timer) {
  int steps = 0, fd, rc;
  double timeout;
  while ((rc = ml_state_step(s, &fd, &timeout)) > 0) {
    struct pollfd p = {fd, POLLIN, 0};
    steps++;
    ck_assert_int_lt(steps, 10000);
    if (timeout > 0 && saw_timer) *saw_timer = 1;
    if (timeout != 0) poll(&p, fd >= 0 ? 1 : 0, timeout < 0 ? -1 : (int)(timeout * 1000));
  }
  ck_assert_int_eq(rc, 0);
  return steps;
}

START_TEST(test_embed_foreign_loop_steps_with_fd_and_timeout) {
  int saw_timer = 0, steps;
  ml_Future *t = spawn(
    "local r = {}\n"
    "r[#r + 1] = await asyncio.sleep(0.02, 'sleep')\n"
    "local ok, e = pcall(function() return await asyncio.wait_for(asyncio.sleep(10), 0.02) end)\n"
    "r[#r + 1] = asyncio.isinstance(e, asyncio.TimeoutError) and 'timeout' or tostring(e)\n"
    "return table.concat(r, ',')");
  steps = poll_loop(S, &saw_timer);
  ck_assert_str_eq(result_of(t), "sleep,timeout");
  /* Waiting on timers, the host sleeps in poll() instead of spinning. */
  ck_assert_int_eq(saw_timer, 1);
  ck_assert_int_lt(steps, 50);
  ml_future_release(L, t);
}
END_TEST

START_TEST(test_embed_step_reports_idle_and_fd) {
  int fd = -5;
  double timeout = 5;
  ck_assert_int_eq(ml_state_step(S, &fd, &timeout), 0);
  ck_assert_int_ge(fd, 0);
  ck_assert(timeout < 0);
}
END_TEST

/* Steps until nothing is ready; returns the timeout of the last step. */
static double step_until_waiting(ml_State *s) {
  int i, fd;
  double timeout = 0;
  for (i = 0; i < 100 && timeout == 0; i++) ck_assert_int_ge(ml_state_step(s, &fd, &timeout), 0);
  return timeout;
}

/* The step's timeout is the earliest sleeper's, whatever order they went
 * to sleep in, and moves on when that one is cancelled or wakes (the
 * deadlines' heap, not a walk over the tasks). */
START_TEST(test_embed_step_timeout_is_the_first_sleeper) {
  double timeout;
  ml_Future *t = spawn("A = asyncio.create_task(asyncio.sleep(50))\n"
                       "B = asyncio.create_task(asyncio.sleep(10))\n"
                       "C = asyncio.create_task(asyncio.sleep(30))\n"
                       "for i = 1, 100 do asyncio.create_task(asyncio.sleep(40 + i)) end\n"
                       "await asyncio.sleep(0)\n"
                       "return 'ok'");
  timeout = step_until_waiting(S);
  ck_assert_msg(timeout > 9.9 && timeout <= 10.001, "timeout %f, wanted B's 10 s", timeout);
  ml_future_release(L, t);
  t = spawn("B:cancel() return 'ok'");
  timeout = step_until_waiting(S);
  ck_assert_msg(timeout > 29.9 && timeout <= 30.001, "timeout %f, wanted C's 30 s", timeout);
  ml_future_release(L, t);
  t = spawn("C:cancel() A:cancel() return 'ok'");
  timeout = step_until_waiting(S);
  ck_assert_msg(timeout > 40.9 && timeout <= 41.001, "timeout %f, wanted the 41 s sleeper's",
                timeout);
  ml_future_release(L, t);
}
END_TEST

/* ---- host futures ---- */

static int host_fail(lua_State *Lt) {
  ml_Future *f = ml_future_new(Lt);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(ml_future_reject(Lt, f, "TimeoutError", "host gave up"), ML_OK);
  /* A second completion is refused. */
  return 1;
}

START_TEST(test_embed_future_resolved_on_loop_thread) {
  ck_assert_int_eq(ml_state_register(S, "later", host_later), ML_OK);
  ck_assert_int_eq(ml_state_register(S, "fail", host_fail), ML_OK);
  {
    ev_timer w;
    ev_timer_init(&w, resolve_cb, 0.001, 0.);
    ev_timer_start(ml_state_loop(S), &w);
    ck_assert_str_eq(
      run("local a, b = await later()\n"
          "local ok, e = pcall(function() return await fail() end)\n"
          "assert(not ok and asyncio.isinstance(e, asyncio.TimeoutError), tostring(e))\n"
          "return a .. '/' .. b .. '/' .. tostring(e)"),
      "from the host's timer/7/TimeoutError: host gave up");
  }
}
END_TEST

START_TEST(test_embed_future_completion_is_refused_twice) {
  ml_Future *f = ml_future_new(L);
  ck_assert_ptr_nonnull(f);
  ck_assert_int_eq(ml_future_state(f), ML_FUTURE_PENDING);
  lua_setglobal(L, "fut");
  /* A script cancels it; the host's late completion only releases it. */
  ck_assert_str_eq(run("fut:cancel() return tostring(fut:cancelled())"), "true");
  ck_assert_int_eq(ml_future_state(f), ML_FUTURE_CANCELLED);
  lua_pushinteger(L, 1);
  ck_assert_int_eq(ml_future_resolve(L, f, 1), -EINVAL);
  ck_assert_int_eq(lua_gettop(L), 0);
  /* The loop is idle again: the cancelled future no longer keeps it. */
  ck_assert_int_eq(ml_state_run(S), ML_OK);
}
END_TEST

/* A worker thread per job: computes, then completes the future. */
typedef struct Job {
  ml_Future *f;
  int n;
  pthread_t th;
} Job;

static Job jobs[8];
static int njobs;

static void *worker(void *arg) {
  Job *j = arg;
  char buf[64];
  long sum = 0;
  for (int i = 1; i <= j->n; i++) sum += i;
  if (j->n < 0) {
    ml_future_reject_threadsafe(j->f, "ValueError", "negative job");
  } else {
    snprintf(buf, sizeof buf, "%ld", sum);
    ml_future_resolve_threadsafe(j->f, buf, strlen(buf));
  }
  return NULL;
}

/* work(n) -> awaitable: the sum 1..n, computed on a worker thread. */
static int host_work(lua_State *Lt) {
  Job *j;
  ck_assert_int_lt(njobs, 8);
  j = &jobs[njobs++];
  j->n = (int)luaL_checkinteger(Lt, 1);
  j->f = ml_future_new(Lt);
  if (j->f == NULL) return luaL_error(Lt, "no memory");
  ck_assert_int_eq(pthread_create(&j->th, NULL, worker, j), 0);
  return 1;
}

static int calls;
static void on_loop(ml_State *s, void *ud) {
  ck_assert_ptr_eq(s, S);
  calls += *(int *)ud;
}

static void *caller(void *arg) {
  static int one = 1;
  (void)arg;
  ck_assert_int_eq(ml_state_call_threadsafe(S, on_loop, &one), ML_OK);
  return NULL;
}

START_TEST(test_embed_future_resolved_from_other_threads) {
  pthread_t th;
  njobs = 0;
  calls = 0;
  ck_assert_int_eq(ml_state_register(S, "work", host_work), ML_OK);
  ck_assert_str_eq(run("local r = await asyncio.gather(work(10), work(100), work(1000))\n"
                       "local ok, e = pcall(function() return await work(-1) end)\n"
                       "assert(asyncio.isinstance(e, asyncio.ValueError), tostring(e))\n"
                       "return table.concat(r, ' ')"),
                   "55 5050 500500");
  for (int i = 0; i < njobs; i++) pthread_join(jobs[i].th, NULL);
  /* A thread-safe call runs on the loop's thread at its next step. */
  ck_assert_int_eq(pthread_create(&th, NULL, caller, NULL), 0);
  pthread_join(th, NULL);
  ck_assert_int_eq(calls, 0);
  ck_assert_int_ge(ml_state_step(S, NULL, NULL), 0);
  ck_assert_int_eq(calls, 1);
}
END_TEST

START_TEST(test_embed_foreign_loop_wakes_for_thread_completion) {
  ml_Future *t;
  njobs = 0;
  ck_assert_int_eq(ml_state_register(S, "work", host_work), ML_OK);
  /* Nothing but a worker thread can finish this task: the step's
   * timeout is unbounded, and the fd is what wakes the host. */
  t = spawn("return await work(3)");
  poll_loop(S, NULL);
  ck_assert_str_eq(result_of(t), "6");
  pthread_join(jobs[0].th, NULL);
  ml_future_release(L, t);
}
END_TEST

/* An HTTP GET (libcurl's multi-socket API on moonloop's watchers) from a
 * host that steps moonloop from its own poll(): curl's sockets and its
 * timer are the state's, so the state's fd and timeout are all the host
 * needs.  The server is a moonloop stream server in the same state. */
START_TEST(test_embed_foreign_loop_runs_an_http_get) {
  ml_Future *t =
    spawn("local http = require 'http'\n"
          "local srv = await asyncio.start_server(async function(r, w)\n"
          "  while true do\n"
          "    local line = await r:readline()\n"
          "    if line == '' then break end\n"
          "    if line == '\\r\\n' then\n"
          "      w:write('HTTP/1.1 200 OK\\r\\nContent-Length: 11\\r\\n\\r\\nfrom a host')\n"
          "    end\n"
          "  end\n"
          "  w:close()\n"
          "end, '127.0.0.1', 0)\n"
          "local port = srv.sockets[1]:getsockname()[2]\n"
          "local s <close> = http.Session()\n"
          "local r = await s:get('http://127.0.0.1:' .. port .. '/')\n"
          "local r2 = await s:get('http://127.0.0.1:' .. port .. '/again')\n"
          "local body = r.status .. ' ' .. (await r:text()) .. ', ' .. (await r2:text())\n"
          "srv:close()\n"
          "return body");
  poll_loop(S, NULL);
  ck_assert_str_eq(result_of(t), "200 from a host, from a host");
  ml_future_release(L, t);
}
END_TEST

/* ---- limits ---- */

START_TEST(test_embed_memory_cap_stops_a_script_not_the_host) {
  ml_Future *t;
  ck_assert_int_eq(ml_state_set_memory_limit(S, 8u << 20), ML_OK);
  t = spawn("local t = {}\n"
            "while true do t[#t + 1] = string.rep('x', 100) .. #t end");
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_ERROR);
  ck_assert_str_eq(error_of(t), "MemoryError: not enough memory");
  ml_future_release(L, t);
  ck_assert_uint_le(ml_state_memory_peak(S), 8u << 20);
  /* The state carries on: another script runs in it. */
  ck_assert_str_eq(run("return 'still ' .. (await asyncio.sleep(0, 'here'))"), "still here");
  /* A limit below what the state uses is refused. */
  ck_assert_int_eq(ml_state_set_memory_limit(S, 1000), -ENOMEM);
}
END_TEST

START_TEST(test_embed_memory_cap_in_call_later_keeps_the_timers_whole) {
  /* call_later until the cap stops it: the timers it made before all
   * fire once, the one it was making takes nothing, and the state goes on. */
  ck_assert_int_eq(ml_state_set_memory_limit(S, 4u << 20), ML_OK);
  ck_assert_str_eq(
    run("local loop = asyncio.get_running_loop()\n"
        "local n, fired = 0, 0\n"
        "local function cb() fired = fired + 1 end\n"
        "local ok, e = pcall(function()\n"
        "  while true do loop:call_later(0, cb); n = n + 1 end\n"
        "end)\n"
        "collectgarbage()\n"
        "await asyncio.sleep(0.01)\n"
        "return (tostring(e):find('not enough memory') and 'out of memory' or tostring(e))\n"
        "  .. ', ' .. (n > 1000 and fired == n and 'all fired' or fired .. ' of ' .. n)"),
    "out of memory, all fired");
  ck_assert_uint_le(ml_state_memory_peak(S), 4u << 20);
}
END_TEST

START_TEST(test_embed_cpu_budget_stops_a_busy_task) {
  ml_Future *busy, *other;
  ml_state_set_cpu_budget(S, 1000000);
  busy = spawn("while true do end");
  other = spawn("local n = 0\n"
                "for i = 1, 5 do await asyncio.sleep(0); n = n + 1 end\n"
                "return n");
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_int_eq(ml_future_state(busy), ML_FUTURE_ERROR);
  ck_assert_ptr_nonnull(strstr(error_of(busy), "CPU budget"));
  ck_assert_str_eq(result_of(other), "5");
  ml_future_release(L, busy);
  ml_future_release(L, other);
  /* Work that awaits often enough is not limited in total. */
  ck_assert_str_eq(
    run("local s = 0\n"
        "for i = 1, 50 do for j = 1, 10000 do s = s + 1 end; await asyncio.sleep(0) end\n"
        "return s"),
    "500000");
}
END_TEST

/* ---- the sandbox ---- */

static int host_secret(lua_State *Lt) {
  lua_pushliteral(Lt, "42");
  return 1;
}

static int open_hostmod(lua_State *Lt) {
  lua_newtable(Lt);
  lua_pushcfunction(Lt, host_secret);
  lua_setfield(Lt, -2, "secret");
  return 1;
}

START_TEST(test_embed_sandbox_removes_unsafe_modules) {
  static const luaL_Reg after[] = {{"secret", host_secret}, {NULL, NULL}};
  ck_assert_int_eq(ml_module_register(S, "game", open_hostmod), ML_OK);
  ck_assert_msg(ml_state_sandbox(S, NULL) == ML_OK, "sandbox: %s", ml_state_error(S));
  ck_assert_int_eq(ml_module_register_funcs(S, "late", after), ML_OK);
  ck_assert_str_eq(
    run(
      "local function gone(v, what) assert(v == nil, what .. ' is still there') end\n"
      "gone(io, 'io'); gone(debug, 'debug'); gone(package, 'package')\n"
      "gone(os.execute, 'os.execute'); gone(os.remove, 'os.remove'); gone(os.getenv, 'os.getenv')\n"
      "gone(dofile, 'dofile'); gone(loadfile, 'loadfile'); gone(string.dump, 'string.dump')\n"
      "gone(asyncio.open_connection, 'asyncio.open_connection')\n"
      "gone(asyncio.get_running_loop().sock_connect, 'loop:sock_connect')\n"
      "gone(asyncio.create_subprocess_exec, 'asyncio.create_subprocess_exec')\n"
      "gone(asyncio.to_thread, 'asyncio.to_thread'); gone(asyncio.ThreadPoolExecutor, 'ThreadPoolExecutor')\n"
      "gone(asyncio.get_running_loop().subprocess_exec, 'loop:subprocess_exec')\n"
      "for _, m in ipairs { 'io', 'debug', 'socket', 'asyncio._net', 'asyncio._process', 'asyncio._thread',\n"
      "                     'ssl', 'ssl._ssl', 'http', 'http.client', 'http._curl' } do\n"
      "  local ok = pcall(require, m); assert(not ok, 'require ' .. m .. ' worked')\n"
      "end\n"
      "assert(require('os').execute == nil, 'require os gives all of os')\n"
      "assert(not load('\\27Lua'), 'a binary chunk loaded')\n"
      "assert(load('return 1')() == 1, 'text chunks load')\n"
      "assert(require('json').encode({ 1, 2 }) == '[1,2]', 'json is kept')\n"
      "assert(type(os.time()) == 'number' and type(os.clock()) == 'number')\n"
      "assert(string.rep('a', 3) == 'aaa' and math.max(1, 2) == 2 and #table.pack(1, 2) == 2)\n"
      "assert(pcall(collectgarbage, 'stop') == false)\n"
      "local q = asyncio.Queue(); q:put_nowait(await asyncio.sleep(0.001, 'timers'))\n"
      "return q:get_nowait() .. ' ' .. require('game').secret() .. ' ' .. require('late').secret()"),
    "timers 42 42");
}
END_TEST

START_TEST(test_embed_sandbox_allow_list_keeps_what_is_named) {
  static const char *const allow[] = {"string", "asyncio", "os", "socket", NULL};
  ck_assert_int_eq(ml_state_sandbox(S, allow), ML_OK);
  ck_assert_str_eq(run("assert(io == nil and table == nil and math == nil)\n"
                       "assert(os.getenv and require('socket').socketpair)\n"
                       "assert(require('ssl').create_default_context().check_hostname)\n"
                       "assert(require('http').Session, 'networking brings http')\n"
                       "return tostring(asyncio.get_running_loop().sock_recv ~= nil)"),
                   "true");
}
END_TEST

/* ---- errors ---- */

static int host_nested_run(lua_State *Lt) {
  lua_pushinteger(Lt, ml_state_run(ml_state_from_lua(Lt)));
  return 1;
}

START_TEST(test_embed_errors_are_return_codes) {
  const char *bad = "local x = = 1";
  ml_Future *t;
  ck_assert_int_eq(ml_load_string(L, bad, strlen(bad), "=bad"), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "bad:1:"));
  ck_assert_int_eq(lua_gettop(L), 0);
  ck_assert_int_eq(ml_load_file(L, "/nonexistent/script.lua"), -ENOENT);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "/nonexistent/script.lua"));
  ck_assert_int_eq(ml_state_register(S, "nested", host_nested_run), ML_OK);
  ck_assert_str_eq(run("return nested()"), "-16"); /* -EBUSY */
  t = spawn("await asyncio.sleep(0) error('boom')");
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_str_eq(error_of(t), "test:1: boom");
  ml_future_release(L, t);
  ck_assert_int_eq(nreported, 0);
}
END_TEST

static int host_nreported(lua_State *Lt) {
  lua_pushinteger(Lt, nreported);
  return 1;
}

/* With an error handler, a task that fails with nobody to see it is
 * reported when it finishes, while a variable still keeps it (at
 * collection it would be reported only at close); an awaited one, one
 * with a done callback, or one the host holds is not; off, the report
 * waits for the collection. */
START_TEST(test_embed_report_at_finish) {
  const char *src =
    "KEEP = asyncio.create_task((async function() error('lonely') end)())\n"
    "local awaited = asyncio.create_task((async function() error('awaited') end)())\n"
    "local watched = asyncio.create_task((async function() error('watched') end)())\n"
    "watched:add_done_callback(function(t) t:exception() end)\n"
    "pcall(await, awaited)\n"
    "await asyncio.sleep(0)\n"
    "return tostring(nreported())";
  ck_assert_int_eq(ml_state_register(S, "nreported", host_nreported), ML_OK);
  ck_assert_str_eq(run(src), "1");
  ck_assert_int_eq(nreported, 1);
  ck_assert_ptr_nonnull(strstr(reported, "Task exception was never retrieved"));
  ck_assert_ptr_nonnull(strstr(reported, "lonely"));
  /* Not again at collection. */
  ck_assert_str_eq(run("KEEP = nil collectgarbage() collectgarbage() return 'ok'"), "ok");
  ck_assert_int_eq(nreported, 1);
  /* Off: nothing until the task is collected. */
  ml_state_set_report_at_finish(S, 0);
  ck_assert_str_eq(run(src), "1");
  ck_assert_int_eq(nreported, 1);
  ck_assert_str_eq(run("KEEP = nil collectgarbage() collectgarbage() return 'ok'"), "ok");
  ck_assert_int_eq(nreported, 2);
  ck_assert_ptr_nonnull(strstr(reported, "lonely"));
}
END_TEST

START_TEST(test_embed_uncaught_task_error_goes_to_handler) {
  const char *src = "local function deep() error('lost') end\n"
                    "await asyncio.sleep(0)\n"
                    "deep()";
  ck_assert_int_eq(ml_load_string(L, src, strlen(src), "=lost.lua"), ML_OK);
  ck_assert_int_eq(ml_task_spawn(L, 0, "orphan", NULL), ML_OK);
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  ck_assert_int_eq(nreported, 1);
  ck_assert_ptr_nonnull(strstr(reported, "orphan"));
  ck_assert_ptr_nonnull(strstr(reported, "lost.lua:1: lost"));
  ck_assert_ptr_nonnull(strstr(reported, "traceback"));
}
END_TEST

/* ---- many states ---- */

static void *state_thread(void *arg) {
  long id = (long)arg;
  ml_State *s = ml_state_new(NULL);
  lua_State *l;
  ml_Future *t;
  char src[512];
  long result = -1;
  if (s == NULL) return (void *)-1L;
  l = ml_state_lua(s);
  ml_state_set_memory_limit(s, 16u << 20);
  snprintf(
    src, sizeof src,
    "local q = asyncio.Queue()\n"
    "local async function producer() for i = 1, 200 do await q:put(i); await asyncio.sleep(0) end end\n"
    "local p = asyncio.create_task(producer())\n"
    "local s = 0\n"
    "for i = 1, 200 do s = s + await q:get() end\n"
    "await p; await asyncio.sleep(0.005)\n"
    "return s * %ld",
    id);
  if (ml_load_string(l, src, strlen(src), "=thread") == ML_OK &&
      ml_task_spawn(l, 0, NULL, &t) == ML_OK && ml_state_run(s) == ML_OK &&
      ml_future_push_result(l, t) == 1) {
    result = (long)lua_tointeger(l, -1);
    lua_pop(l, 1);
  }
  ml_state_close(s);
  return (void *)result;
}

START_TEST(test_embed_states_run_on_several_threads) {
  pthread_t th[6];
  for (long i = 0; i < 6; i++)
    ck_assert_int_eq(pthread_create(&th[i], NULL, state_thread, (void *)(i + 1)), 0);
  for (long i = 0; i < 6; i++) {
    void *r;
    pthread_join(th[i], &r);
    ck_assert_int_eq((long)r, 20100 * (i + 1));
  }
}
END_TEST

/* ---- closing ---- */

static int freed;
static void free_ud(ml_State *s, void *ud) {
  (void)s; /* the state during its closing iterations, or NULL after */
  free(ud);
  freed++;
}

/* A state closed on the host's loop leaves no watcher of its own behind,
 * even for a task that ignores its cancellation and goes back to sleep:
 * the host's loop runs on, and must not find a timer in freed memory. */
START_TEST(test_embed_close_on_host_loop_stops_sleeping_tasks) {
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  ml_State *s2 = ml_state_new(loop);
  lua_State *l2;
  ml_Future *t;
  const char *src = "asyncio.create_task(asyncio.sleep(100))\n"
                    "while true do\n"
                    "  local ok = pcall(function() await asyncio.sleep(100) end)\n"
                    "end\n";
  ck_assert_ptr_nonnull(s2);
  l2 = ml_state_lua(s2);
  ck_assert_int_eq(ml_load_string(l2, src, strlen(src), "=stubborn"), ML_OK);
  ck_assert_int_eq(ml_task_spawn(l2, 0, NULL, &t), ML_OK);
  for (int i = 0; i < 3; i++) ml_state_step(s2, NULL, NULL);
  /* ev_run returns nonzero while watchers are active: the two sleeps'. */
  ck_assert_int_ne(ev_run(loop, EVRUN_NOWAIT), 0);
  ml_state_close(s2);
  ck_assert_int_eq(ev_run(loop, EVRUN_NOWAIT), 0);
  ev_loop_destroy(loop);
}
END_TEST

START_TEST(test_embed_close_releases_pending_work) {
  int before;
  ml_State *s;
  lua_State *l;
  ml_Future *t, *f;
  const char *src =
    "local socket = require 'socket'\n"
    "local a, b = socket.socketpair()\n"
    "a:setblocking(false)\n"
    "for _ in pairs(asyncio) do end  -- loads asyncio's network part\n"
    "local loop = asyncio.get_running_loop()\n"
    "asyncio.create_task(loop:sock_recv(a, 10))\n"
    "asyncio.create_task(asyncio.sleep(100))\n"
    "loop:call_later(100, print, 'never')\n"
    "local t <close> = setmetatable({}, { __close = function() closed = true end })\n"
    "return await hostfut\n";
  ml_state_close(S); /* the fixture's: this test counts fds itself */
  S = NULL;
  before = count_fds();
  s = ml_state_new(NULL);
  ck_assert_ptr_nonnull(s);
  l = ml_state_lua(s);
  S = s; /* for the helpers; teardown does not close it again */
  L = l;
  f = ml_future_new(l);
  ck_assert_ptr_nonnull(f);
  lua_setglobal(l, "hostfut");
  ck_assert_int_eq(ml_load_string(l, src, strlen(src), "=pending"), ML_OK);
  ck_assert_int_eq(ml_task_spawn(l, 0, NULL, &t), ML_OK);
  for (int i = 0; i < 5; i++) ck_assert_int_eq(ml_state_step(s, NULL, NULL), 1);
  ck_assert_msg(ml_future_state(t) == ML_FUTURE_PENDING, "%s",
                ml_future_state(t) == ML_FUTURE_ERROR ? error_of(t) : "done");
  ck_assert_int_gt(count_fds(), before);
  freed = 0;
  ck_assert_int_eq(ml_state_call_threadsafe(s, free_ud, malloc(16)), ML_OK);
  S = NULL;
  ml_state_close(s);
  ck_assert_int_eq(count_fds(), before);
  /* The queued call ran (during the close) and could free its data. */
  ck_assert_int_eq(freed, 1);
}
END_TEST

/* Closing a state with HTTP transfers in flight (one mid-body and paused
 * by nobody reading it, one just started) releases their
 * sockets, curl's handles and the watchers: the fds are back where they
 * were (and a SAN build sees no leak). */
START_TEST(test_embed_close_releases_http_transfers) {
  int before, steps = 0, ready = 0;
  ml_State *s;
  lua_State *l;
  ml_Future *f, *t;
  const char *src =
    "local http = require 'http'\n"
    "local srv = await asyncio.start_server(async function(r, w)\n"
    "  await r:readline()\n"
    "  w:write('HTTP/1.1 200 OK\\r\\nContent-Length: 10000000\\r\\n\\r\\n' .. string.rep('x', 100000))\n"
    "  await asyncio.sleep(100)\n"
    "end, '127.0.0.1', 0)\n"
    "local port = srv.sockets[1]:getsockname()[2]\n"
    "local s = http.Session()\n"
    "local r = await s:get('http://127.0.0.1:' .. port .. '/big')\n"
    "assert(#r:chunks()() > 0)\n"
    "local other = asyncio.create_task(s:get('http://127.0.0.1:' .. port .. '/other'))\n"
    "await asyncio.sleep(0.05)\n"
    "assert(s._m:active() == 2, s._m:active())\n"
    "ready = true\n"
    "return await hostfut\n";
  ml_state_close(S); /* the fixture's: this test counts fds itself */
  S = NULL;
  before = count_fds();
  s = ml_state_new(NULL);
  ck_assert_ptr_nonnull(s);
  l = ml_state_lua(s);
  S = s;
  L = l;
  f = ml_future_new(l);
  ck_assert_ptr_nonnull(f);
  lua_setglobal(l, "hostfut");
  ck_assert_int_eq(ml_load_string(l, src, strlen(src), "=http"), ML_OK);
  ck_assert_int_eq(ml_task_spawn(l, 0, NULL, &t), ML_OK);
  while (!ready) {
    int fd;
    double timeout;
    struct pollfd p;
    ck_assert_int_gt(ml_state_step(s, &fd, &timeout), 0);
    ck_assert_msg(ml_future_state(t) == ML_FUTURE_PENDING, "%s",
                  ml_future_state(t) == ML_FUTURE_ERROR ? error_of(t) : "done");
    lua_getglobal(l, "ready");
    ready = lua_toboolean(l, -1);
    lua_pop(l, 1);
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    if (!ready && timeout != 0) poll(&p, 1, timeout < 0 ? 100 : (int)(timeout * 1000) + 1);
    ck_assert_int_lt(++steps, 10000);
  }
  ck_assert_int_gt(count_fds(), before);
  S = NULL;
  ml_state_close(s);
  ck_assert_int_eq(count_fds(), before);
}
END_TEST

/* asyncio.run called by a host outside any task drives the loop itself,
 * and cancels what the coroutine left behind. */
START_TEST(test_embed_run_from_host_drives_the_loop) {
  const char *src = "local left\n"
                    "local r = asyncio.run((async function()\n"
                    "  left = asyncio.create_task(asyncio.sleep(100))\n"
                    "  return await asyncio.sleep(0.001, 5)\n"
                    "end)())\n"
                    "return r * 10 + (left:cancelled() and 1 or 0)\n";
  ck_assert_int_eq(ml_load_string(L, src, strlen(src), "=host"), ML_OK);
  ck_assert_int_eq(lua_pcall(L, 0, 1, 0), LUA_OK);
  ck_assert_int_eq(lua_tointeger(L, -1), 51);
  lua_pop(L, 1);
  ck_assert_int_eq(ml_load_string(L, "return asyncio.all_tasks().n", 28, "=n"), ML_OK);
  ck_assert_int_eq(lua_pcall(L, 0, 1, 0), LUA_OK);
  ck_assert_int_eq(lua_tointeger(L, -1), 0);
  lua_pop(L, 1);
}
END_TEST

/* Python's lifecycle from a host with no running task: each run drives
 * the loop itself. */
START_TEST(test_embed_loop_lifecycle_from_the_host) {
  const char *src =
    "local loop = asyncio.new_event_loop()\n"
    "local a = loop:run_until_complete((async function() return await asyncio.sleep(0.001, 'ran') end)())\n"
    "loop:call_later(0.001, loop.stop, loop)\n"
    "loop:run_forever()\n"
    "local ok, e = pcall(loop.run_until_complete, loop, (async function()\n"
    "  loop:stop(); await asyncio.sleep(0.01) end)())\n"
    "loop:close()\n"
    "local r = asyncio.Runner()\n"
    "local b = r:run((async function() return asyncio.get_running_loop() == r:get_loop() end)())\n"
    "r:close()\n"
    "return a .. '|' .. tostring(e) .. '|' .. tostring(b) .. '|' .. tostring(loop:is_closed())\n";
  ck_assert_int_eq(ml_load_string(L, src, strlen(src), "=host"), ML_OK);
  ck_assert_int_eq(lua_pcall(L, 0, 1, 0), LUA_OK);
  ck_assert_str_eq(lua_tostring(L, -1),
                   "ran|RuntimeError: Event loop stopped before Future completed.|true|true");
  lua_pop(L, 1);
}
END_TEST

/* asyncio.run from a host gives the tasks the coroutine made in its last
 * step their first step before cancelling them, as asyncio's loop does. */
START_TEST(test_embed_run_from_host_gives_leftover_tasks_a_first_step) {
  const char *src =
    "local ran = false\n"
    "asyncio.run((async function()\n"
    "  asyncio.create_task((async function() ran = true; await asyncio.sleep(100) end)())\n"
    "end)())\n"
    "return ran\n";
  ck_assert_int_eq(ml_load_string(L, src, strlen(src), "=host"), ML_OK);
  ck_assert_int_eq(lua_pcall(L, 0, 1, 0), LUA_OK);
  ck_assert_int_eq(lua_toboolean(L, -1), 1);
  lua_pop(L, 1);
}
END_TEST

Suite *embed_suite(void) {
  Suite *s = suite_create("embed");
  TCase *tc;

  tc = tcase_create("loops");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_embed_private_loop_runs_a_script);
  tcase_add_test(tc, test_embed_run_from_host_drives_the_loop);
  tcase_add_test(tc, test_embed_run_from_host_gives_leftover_tasks_a_first_step);
  tcase_add_test(tc, test_embed_loop_lifecycle_from_the_host);
  tcase_add_test(tc, test_embed_shared_loop_runs_host_watchers);
  tcase_add_test(tc, test_embed_foreign_loop_steps_with_fd_and_timeout);
  tcase_add_test(tc, test_embed_step_timeout_is_the_first_sleeper);
  tcase_add_test(tc, test_embed_report_at_finish);
  tcase_add_test(tc, test_embed_step_reports_idle_and_fd);
  suite_add_tcase(s, tc);

  tc = tcase_create("host futures");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_embed_future_resolved_on_loop_thread);
  tcase_add_test(tc, test_embed_future_completion_is_refused_twice);
  tcase_add_test(tc, test_embed_future_resolved_from_other_threads);
  tcase_add_test(tc, test_embed_foreign_loop_wakes_for_thread_completion);
  tcase_add_test(tc, test_embed_foreign_loop_runs_an_http_get);
  suite_add_tcase(s, tc);

  tc = tcase_create("limits");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_embed_memory_cap_stops_a_script_not_the_host);
  tcase_add_test(tc, test_embed_memory_cap_in_call_later_keeps_the_timers_whole);
  tcase_add_test(tc, test_embed_cpu_budget_stops_a_busy_task);
  tcase_add_test(tc, test_embed_sandbox_removes_unsafe_modules);
  tcase_add_test(tc, test_embed_sandbox_allow_list_keeps_what_is_named);
  suite_add_tcase(s, tc);

  tc = tcase_create("errors");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_embed_errors_are_return_codes);
  tcase_add_test(tc, test_embed_uncaught_task_error_goes_to_handler);
  suite_add_tcase(s, tc);

  tc = tcase_create("states");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 20);
  tcase_add_test(tc, test_embed_states_run_on_several_threads);
  tcase_add_test(tc, test_embed_close_releases_pending_work);
  tcase_add_test(tc, test_embed_close_releases_http_transfers);
  tcase_add_test(tc, test_embed_close_on_host_loop_stops_sleeping_tasks);
  suite_add_tcase(s, tc);
  return s;
}
