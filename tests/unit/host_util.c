/* host_util.c: running chunks as tasks for the library's Check suites
 * (host_util.h). */
#include <stdio.h>
#include <string.h>
#include <check.h>
#include "host_util.h"

ml_Future *hu_spawn(ml_State *S, lua_State *L, const char *src) {
  ml_Future *t = NULL;
  int rc = ml_load_string(L, src, strlen(src), "=test");
  ck_assert_msg(rc == ML_OK, "load failed (%d): %s", rc, ml_state_error(S));
  rc = ml_task_spawn(L, 0, "test", &t);
  ck_assert_msg(rc == ML_OK, "spawn failed (%d): %s", rc, ml_state_error(S));
  ck_assert_ptr_nonnull(t);
  return t;
}

const char *hu_error_of(lua_State *L, ml_Future *f) {
  static char buf[1024];
  int top = lua_gettop(L);
  ck_assert_int_eq(ml_future_push_error(L, f), ML_OK);
  snprintf(buf, sizeof buf, "%s", luaL_tolstring(L, -1, NULL));
  lua_settop(L, top);
  return buf;
}

const char *hu_result_of(lua_State *L, ml_Future *t) {
  static char buf[1024];
  int top = lua_gettop(L), n;
  ck_assert_msg(ml_future_state(t) == ML_FUTURE_RESULT, "task did not succeed (state %d): %s",
                ml_future_state(t),
                ml_future_state(t) == ML_FUTURE_ERROR ? hu_error_of(L, t) : "pending or cancelled");
  n = ml_future_push_result(L, t);
  ck_assert_int_ge(n, 0);
  snprintf(buf, sizeof buf, "%s",
           n > 0 && lua_tostring(L, top + 1) ? lua_tostring(L, top + 1) : "");
  lua_settop(L, top);
  return buf;
}

const char *hu_run(ml_State *S, lua_State *L, const char *src) {
  ml_Future *t = hu_spawn(S, L, src);
  const char *r;
  ck_assert_int_eq(ml_state_run(S), ML_OK);
  r = hu_result_of(L, t);
  ml_future_release(L, t);
  return r;
}
