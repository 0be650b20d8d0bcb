/* check_future.c: futures and tasks through the internal C API, on a real
 * state: the state machine, callbacks, waking waiters, invalid states. */
#include <check.h>
#include <errno.h>
#include <string.h>
#include "core/task.h"
#include "core/sched.h"
#include "dialect/loader.h"

static ml_State *S;

/* The tasks of S not yet done. */
static int pending_tasks(void) {
  int n = 0;
  ml_Task *t;
  for (t = S->tasks; t; t = t->next) n++;
  return n;
}
static lua_State *L;

/* A state with the core alone: asyncio is asyncio.core here. */
static void setup(void) {
  S = ml__state_new(NULL);
  ck_assert_ptr_nonnull(S);
  L = S->L;
  luaL_requiref(L, "asyncio", ml__corelib_open, 1);
  lua_pop(L, 1);
}

static void teardown(void) { ml__state_close(S); }

/* Runs a chunk of the dialect as a task until idle; returns its first
 * result as an integer (or -1 if it failed). */
static lua_Integer run_task(const char *src) {
  lua_Integer r;
  ml_Future *f;
  ck_assert_int_eq(ml__load(L, src, strlen(src), "=test"), LUA_OK);
  ml__task_spawn(L, 0, "test");
  f = lua_touserdata(L, -1);
  ml__sched_run(S, NULL);
  if (f->state != ML_RESULT) {
    f->log_exc = 0; /* retrieved: the caller checks the -1 */
    lua_pop(L, 1);
    return -1;
  }
  ml__future_unwrap(L, -1);
  r = lua_tointeger(L, -1);
  lua_pop(L, 2);
  return r;
}

/* The core's references: a slot let go is taken back first, holds false
 * meanwhile (so luaL_ref, which other code uses on the same registry,
 * never hands it out), and tasks that come and go reuse their slots
 * rather than grow the registry. */
#define TASKS_1000                                          \
  "local f, t = async function() end, {} "                  \
  "for i = 1, 1000 do t[i] = asyncio.create_task(f()) end " \
  "for i = 1, 1000 do await t[i] end return 1"
START_TEST(test_refs_reused_not_shared) {
  int a, b, c, other, before, i;
  lua_pushinteger(L, 1);
  a = ml__ref(L);
  lua_pushinteger(L, 2);
  b = ml__ref(L);
  ck_assert_int_ne(a, b);
  ml__unref(L, a);
  ck_assert_int_eq(lua_rawgeti(L, LUA_REGISTRYINDEX, a), LUA_TBOOLEAN);
  lua_pop(L, 1);
  lua_pushinteger(L, 3);
  other = luaL_ref(L, LUA_REGISTRYINDEX); /* not a: it holds a value */
  ck_assert_int_ne(other, a);
  ck_assert_int_ne(other, b);
  lua_pushinteger(L, 4);
  c = ml__ref(L);
  ck_assert_int_eq(c, a); /* taken back */
  lua_rawgeti(L, LUA_REGISTRYINDEX, c);
  ck_assert_int_eq(lua_tointeger(L, -1), 4);
  lua_rawgeti(L, LUA_REGISTRYINDEX, other);
  ck_assert_int_eq(lua_tointeger(L, -1), 3);
  lua_pop(L, 2);
  ml__unref(L, LUA_NOREF); /* ignored */
  ml__unref(L, LUA_REFNIL);
  ml__unref(L, b);
  ml__unref(L, c);
  luaL_unref(L, LUA_REGISTRYINDEX, other);
  /* 1,000 tasks twice: the second round takes no new slot. */
  ck_assert_int_eq(run_task(TASKS_1000), 1);
  before = (int)lua_rawlen(L, LUA_REGISTRYINDEX);
  for (i = 0; i < 2; i++) ck_assert_int_eq(run_task(TASKS_1000), 1);
  ck_assert_int_le((int)lua_rawlen(L, LUA_REGISTRYINDEX), before + 8);
}
END_TEST

START_TEST(test_future_starts_pending) {
  ml_Future *f = ml__future_new(L);
  ck_assert_int_eq(ml__future_state(f), ML_PENDING);
  ck_assert_ptr_eq(ml__future_test(L, -1), f);
  lua_pushinteger(L, 1);
  ck_assert_ptr_null(ml__future_test(L, -1));
  lua_pop(L, 2);
}
END_TEST

START_TEST(test_future_result_once) {
  ml_Future *f = ml__future_new(L);
  int fidx = lua_gettop(L);
  lua_pushinteger(L, 7);
  lua_pushstring(L, "x");
  ck_assert_int_eq(ml__future_set_result(L, fidx, 2), 0);
  ck_assert_int_eq(lua_gettop(L), fidx);
  ck_assert_int_eq(ml__future_state(f), ML_RESULT);
  lua_pushinteger(L, 8);
  ck_assert_int_eq(ml__future_set_result(L, fidx, 1), -EINVAL);
  ck_assert_int_eq(lua_gettop(L), fidx); /* the value was popped anyway */
  ck_assert_int_eq(ml__future_unwrap(L, fidx), 2);
  ck_assert_int_eq(lua_tointeger(L, -2), 7);
  ck_assert_str_eq(lua_tostring(L, -1), "x");
  lua_settop(L, 0);
}
END_TEST

START_TEST(test_future_exception_then_invalid) {
  ml_Future *f = ml__future_new(L);
  int fidx = lua_gettop(L);
  ml__exc_push(L, "ValueError", "bad");
  ck_assert_int_eq(ml__future_set_exception(L, fidx), 0);
  ck_assert_int_eq(ml__future_state(f), ML_EXCEPTION);
  ck_assert_int_eq(ml__future_cancel(L, fidx, NULL), 0);
  ml__exc_push(L, "ValueError", "again");
  ck_assert_int_eq(ml__future_set_exception(L, fidx), -EINVAL);
  f->log_exc = 0; /* retrieved by this test */
  lua_settop(L, 0);
}
END_TEST

START_TEST(test_future_cancel_once) {
  ml_Future *f = ml__future_new(L);
  int fidx = lua_gettop(L);
  ck_assert_int_eq(ml__future_cancel(L, fidx, "why"), 1);
  ck_assert_int_eq(ml__future_state(f), ML_CANCELLED);
  ck_assert_int_eq(ml__future_cancel(L, fidx, NULL), 0);
  lua_pushinteger(L, 1);
  ck_assert_int_eq(ml__future_set_result(L, fidx, 1), -EINVAL);
  lua_settop(L, 0);
}
END_TEST

START_TEST(test_future_callbacks_are_scheduled_not_called) {
  ck_assert_int_eq(run_task("local f = asyncio.Future()\n"
                            "local n = 0\n"
                            "f:add_done_callback(function() n = n + 1 end)\n"
                            "f:add_done_callback(function() n = n + 10 end)\n"
                            "f:set_result(1)\n"
                            "local before = n\n"
                            "await asyncio.sleep(0)\n"
                            "return before * 100 + n\n"),
                   11);
}
END_TEST

START_TEST(test_future_cancel_wakes_waiter) {
  ck_assert_int_eq(
    run_task(
      "local f = asyncio.Future()\n"
      "local t = asyncio.create_task(function() local ok = pcall(await, f); return ok and 1 or 2 end)\n"
      "await asyncio.sleep(0)\n"
      "f:cancel()\n"
      "return await t\n"),
    2);
}
END_TEST

START_TEST(test_future_many_waiters_all_wake) {
  ck_assert_int_eq(
    run_task("local f = asyncio.Future()\n"
             "local ts = {}\n"
             "for i = 1, 50 do ts[i] = asyncio.create_task(function() return await f end) end\n"
             "await asyncio.sleep(0)\n"
             "f:set_result(2)\n"
             "local sum = 0\n"
             "for i = 1, 50 do sum = sum + await ts[i] end\n"
             "return sum\n"),
    100);
}
END_TEST

START_TEST(test_task_runs_and_finishes) {
  ck_assert_int_eq(run_task("return await asyncio.sleep(0.001, 42)"), 42);
  ck_assert_int_eq(pending_tasks(), 0);
  ck_assert_ptr_null(S->tasks);
}
END_TEST

START_TEST(test_task_error_fails_it) {
  ck_assert_int_eq(run_task("error('x')"), -1);
  ck_assert_int_eq(pending_tasks(), 0);
}
END_TEST

/* Closing a state with tasks still pending (sleeping, awaiting) cancels
 * them and releases everything (ASan checks the "everything"). */
START_TEST(test_task_close_with_pending) {
  const char *src = "for i = 1, 20 do asyncio.create_task(asyncio.sleep(100)) end\n"
                    "asyncio.create_task(function() await asyncio.Future() end)\n";
  ck_assert_int_eq(ml__load(L, src, strlen(src), "=test"), LUA_OK);
  ml__task_spawn(L, 0, "test");
  lua_pop(L, 1);
  ml__sched_step(S);
  ml__sched_step(S);
  ck_assert_int_eq(pending_tasks(), 21);
}
END_TEST

/* ---- C done-callback records (module.h, ml_DoneCb) ---- */

typedef struct Rec {
  ml_DoneCb cb;
  int fired;
  int state_seen;  /* the future's state when it fired */
  int top_is_self; /* the record's value was on the top of the stack */
  int order;       /* its place among the callbacks that fired */
} Rec;

static int fired_seq;

static void rec_fn(lua_State *L, ml_DoneCb *self, int fidx) {
  Rec *r = (Rec *)self;
  r->fired++;
  r->state_seen = ml__future_state(lua_touserdata(L, fidx));
  r->top_is_self = lua_touserdata(L, -1) == (void *)r;
  r->order = ++fired_seq;
}

/* [-0, +1] a full-userdata record. */
static Rec *push_rec(void) {
  Rec *r = lua_newuserdatauv(L, sizeof *r, 0);
  memset(r, 0, sizeof *r);
  r->cb.fn = rec_fn;
  return r;
}

/* A record fires once, after the future is done, from the ready queue
 * (not inside add, not inside set_result), with itself on the top. */
START_TEST(test_future_done_record_fires_once_from_queue) {
  Rec *r;
  int top;
  ml__future_new(L);
  r = push_rec();
  ml__future_add_done_cb(L, -2, -1);
  lua_pop(L, 1); /* only the future's callback list holds it now */
  lua_gc(L, LUA_GCCOLLECT);
  top = lua_gettop(L);
  lua_pushinteger(L, 7);
  ck_assert_int_eq(ml__future_set_result(L, -2, 1), 0);
  ck_assert_int_eq(r->fired, 0);
  ml__sched_step(S);
  ck_assert_int_eq(r->fired, 1);
  ck_assert_int_eq(r->state_seen, ML_RESULT);
  ck_assert_int_eq(r->top_is_self, 1);
  ck_assert_int_eq(lua_gettop(L), top);
  ml__sched_step(S);
  ck_assert_int_eq(r->fired, 1);
  lua_pop(L, 1);
}
END_TEST

/* Added to a future already done, it is scheduled, not called. */
START_TEST(test_future_done_record_on_done_future_is_scheduled) {
  Rec *r;
  ml__future_new(L);
  ml__future_cancel(L, -1, NULL);
  r = push_rec();
  ml__future_add_done_cb(L, -2, -1);
  ck_assert_int_eq(r->fired, 0);
  ml__sched_step(S);
  ck_assert_int_eq(r->fired, 1);
  ck_assert_int_eq(r->state_seen, ML_CANCELLED);
  lua_pop(L, 2);
}
END_TEST

/* Records, light or full, fire in order with Lua callbacks. */
START_TEST(test_future_done_records_keep_order_with_lua) {
  static Rec light;
  Rec *a;
  const char *src = "local f, n = ... ; f:add_done_callback(function() n.lua = n.count + 1 end)";
  int fidx;
  fired_seq = 0;
  memset(&light, 0, sizeof light);
  light.cb.fn = rec_fn;
  ml__future_new(L);
  fidx = lua_gettop(L);
  a = push_rec();
  ml__future_add_done_cb(L, fidx, -1);
  lua_pop(L, 1);
  ck_assert_int_eq(ml__load(L, src, strlen(src), "=test"), LUA_OK);
  lua_pushvalue(L, fidx);
  lua_newtable(L);
  lua_pushinteger(L, 1);
  lua_setfield(L, -2, "count");
  lua_pushvalue(L, -1);
  lua_setglobal(L, "N");
  lua_call(L, 2, 0);
  lua_pushlightuserdata(L, &light);
  ml__future_add_done_cb(L, fidx, -1);
  lua_pop(L, 1);
  ml__future_set_result(L, fidx, 0);
  ml__sched_step(S);
  ck_assert_int_eq(a->fired, 1);
  ck_assert_int_eq(light.fired, 1);
  ck_assert_int_eq(a->order, 1);
  ck_assert_int_eq(light.order, 2);
  ck_assert_int_eq(light.top_is_self, 1);
  lua_getglobal(L, "N");
  ck_assert_int_eq(lua_getfield(L, -1, "lua"), LUA_TNUMBER); /* the Lua one ran too */
  lua_pop(L, 3);
}
END_TEST

/* The only callback of a task fires as the task finishes. */
START_TEST(test_future_done_record_of_finishing_task_fires_at_once) {
  const char *src = "return 1";
  Rec *r;
  ck_assert_int_eq(ml__load(L, src, strlen(src), "=test"), LUA_OK);
  ml__task_spawn(L, 0, "test");
  r = push_rec();
  ml__future_add_done_cb(L, -2, -1);
  lua_pop(L, 1);
  ml__sched_step(S); /* the task runs and finishes */
  ck_assert_int_eq(r->fired, 1);
  ck_assert_int_eq(r->state_seen, ML_RESULT);
  ck_assert_int_eq(r->top_is_self, 1);
  lua_pop(L, 1);
}
END_TEST

Suite *future_suite(void) {
  Suite *s = suite_create("future");
  TCase *tc = tcase_create("state");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_future_starts_pending);
  tcase_add_test(tc, test_future_result_once);
  tcase_add_test(tc, test_future_exception_then_invalid);
  tcase_add_test(tc, test_future_cancel_once);
  suite_add_tcase(s, tc);
  tc = tcase_create("callbacks");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_future_callbacks_are_scheduled_not_called);
  tcase_add_test(tc, test_future_cancel_wakes_waiter);
  tcase_add_test(tc, test_future_many_waiters_all_wake);
  tcase_add_test(tc, test_future_done_record_fires_once_from_queue);
  tcase_add_test(tc, test_future_done_record_on_done_future_is_scheduled);
  tcase_add_test(tc, test_future_done_records_keep_order_with_lua);
  tcase_add_test(tc, test_future_done_record_of_finishing_task_fires_at_once);
  suite_add_tcase(s, tc);
  tc = tcase_create("tasks");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_task_runs_and_finishes);
  tcase_add_test(tc, test_refs_reused_not_shared);
  tcase_add_test(tc, test_task_error_fails_it);
  tcase_add_test(tc, test_task_close_with_pending);
  suite_add_tcase(s, tc);
  return s;
}
