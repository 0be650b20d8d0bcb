/* host_util.h: what the library's Check suites (check_embed.c,
 * check_process.c, check_threads.c) do to a state the way a host does:
 * run a chunk as a task and read what it returned.  Each takes the state
 * and its Lua state; a failure fails the running Check test. */
#ifndef ML_HOST_UTIL_H
#define ML_HOST_UTIL_H

#include "moonloop.h"

/* Loads src and spawns it as a task; returns the task's handle. */
ml_Future *hu_spawn(ml_State *S, lua_State *L, const char *src);
/* The message of the failed future f, as tostring() gives it (static). */
const char *hu_error_of(lua_State *L, ml_Future *f);
/* Asserts that task t finished with a result, and returns its first value
 * as a string (static), or "" if it has none. */
const char *hu_result_of(lua_State *L, ml_Future *t);
/* Runs src as a task until the loop is idle; returns its first result. */
const char *hu_run(ml_State *S, lua_State *L, const char *src);

#endif
