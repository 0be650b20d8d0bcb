/* embed_fixture.h: the fixture of the embedding API's suites
 * (check_embed.c, check_embed_control.c): a fresh state per test, with
 * an error handler that keeps the last message reported, and the short
 * forms of tests/embed/host_util.h's calls on it. */
#ifndef ML_EMBED_FIXTURE_H
#define ML_EMBED_FIXTURE_H

#include <stdio.h>
#include <check.h>
#include "moonloop.h"
#include "host_util.h"

static ml_State *S;
static lua_State *L;

/* Errors the state reported through its handler, for assertions. */
static char reported[4096];
static int nreported;

static inline void on_error(ml_State *s, const char *msg, void *ud) {
  (void)s;
  (void)ud;
  nreported++;
  snprintf(reported, sizeof reported, "%s", msg);
}

static inline void setup(void) {
  S = ml_state_new(NULL);
  ck_assert_ptr_nonnull(S);
  L = ml_state_lua(S);
  reported[0] = '\0';
  nreported = 0;
  ml_state_set_error_handler(S, on_error, NULL);
}

static inline void teardown(void) {
  ml_state_close(S);
  S = NULL;
  L = NULL;
}

/* Loads src and spawns it as a task; returns the task's handle. */
static inline ml_Future *spawn(const char *src) { return hu_spawn(S, L, src); }

/* The message of a failed future, as tostring() gives it (static). */
static inline const char *error_of(ml_Future *f) { return hu_error_of(L, f); }

/* Asserts that task t finished with a result, and returns its first value
 * as a string (static), or "" if it has none. */
static inline const char *result_of(ml_Future *t) { return hu_result_of(L, t); }

/* Runs src as a task until the loop is idle; returns its first result. */
static inline const char *run(const char *src) { return hu_run(S, L, src); }

#endif
