/* asyncpass_fixture.h: what the two suites of the source pass
 * (check_asyncpass.c: the text it writes; check_asyncpass_lua.c: what
 * that text means when Lua runs it, and robustness) share: the output and
 * error buffers of each test, the calls that run the pass, and the
 * helpers that count lines and compile with Lua. */
#ifndef ML_ASYNCPASS_FIXTURE_H
#define ML_ASYNCPASS_FIXTURE_H

#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "dialect/asyncpass.h"

/* The fixture: one output buffer and one error buffer per test. */
static ml_Buf out;
static char err[256];

static inline void setup(void) {
  memset(&out, 0, sizeof out);
  err[0] = '\0';
}

static inline void teardown(void) { ml__buf_free(&out); }

/* Runs the pass on src with chunkname "@t.lua"; returns its status. */
static inline int run_rc(const char *src) {
  out.len = 0;
  return ml__asyncpass(src, strlen(src), "@t.lua", &out, err, sizeof err);
}

/* Runs the pass, which must succeed, and returns the output. */
static inline const char *run(const char *src) {
  int rc = run_rc(src);
  ck_assert_msg(rc == 0, "pass failed (%d) on [%s]: %s", rc, src, err);
  return out.data;
}

static inline int count_lines(const char *s, size_t n) {
  int lines = 1;
  size_t i;
  for (i = 0; i < n; i++)
    if (s[i] == '\n') lines++;
  return lines;
}

/* Lines as Lua counts them: "\r\n" and "\n\r" are one line break. */
static inline int lua_lines(const char *s, size_t n) {
  int lines = 1;
  size_t i;
  for (i = 0; i < n; i++) {
    if (s[i] != '\n' && s[i] != '\r') continue;
    if (i + 1 < n && (s[i + 1] == '\n' || s[i + 1] == '\r') && s[i + 1] != s[i]) i++;
    lines++;
  }
  return lines;
}

/* The line of the first occurrence of needle in s (1-based), or 0. */
static inline int line_of(const char *s, const char *needle) {
  const char *at = strstr(s, needle);
  return at ? count_lines(s, (size_t)(at - s)) : 0;
}

#define EXPECT(src, want) ck_assert_str_eq(run(src), want)
#define SAME(src) EXPECT(src, src)

/* luaL_loadbuffer on lua: returns NULL if it compiles, else Lua's message
 * (static storage). */
static inline const char *lua_compile(const char *lua, size_t len) {
  static char msg[512];
  lua_State *L = luaL_newstate();
  int st;
  ck_assert_ptr_nonnull(L);
  st = luaL_loadbuffer(L, lua, len, "=t.lua");
  if (st == LUA_OK) {
    lua_close(L);
    return NULL;
  }
  snprintf(msg, sizeof msg, "%s", lua_tostring(L, -1));
  lua_close(L);
  return msg;
}

static inline void assert_compiles(const char *src) {
  const char *msg;
  run(src);
  msg = lua_compile(out.data, out.len);
  ck_assert_msg(msg == NULL, "output does not compile: %s\n--- output:\n%s", msg, out.data);
}

/* With -DSTANDALONE (a file's header says how to build it alone), the
 * main that runs the file's one suite. */
#define ASYNCPASS_MAIN(suite)                         \
  int main(void) {                                    \
    SRunner *sr = srunner_create(suite());            \
    int failed;                                       \
    srunner_run_all(sr, CK_NORMAL);                   \
    failed = srunner_ntests_failed(sr);               \
    srunner_free(sr);                                 \
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE; \
  }

#endif
