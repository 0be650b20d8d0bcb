/* lua_property.h: the libFuzzer entry point shared by the targets whose
 * property is a Lua file (stream_reader.c, http_request.c).  The file
 * FUZZ_DIR/FUZZ_PROPERTY.lua returns a table whose check(data) is run as
 * a task on one state made at the first input; a check that raises
 * aborts, with its error on stderr.  Inputs longer than FUZZ_MAX_INPUT
 * are skipped.  Define FUZZ_PROPERTY and FUZZ_MAX_INPUT, then include
 * this once. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <lua.h>
#include <lauxlib.h>
#include "moonloop.h"

#ifndef FUZZ_DIR
#define FUZZ_DIR "tests/fuzz"
#endif

static ml_State *S;
static int check_ref;

static int init(void) {
  lua_State *L;
  S = ml_state_new(NULL);
  if (S == NULL) return -1;
  L = ml_state_lua(S);
  if (ml_load_file(L, FUZZ_DIR "/" FUZZ_PROPERTY ".lua") != 0 || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, FUZZ_PROPERTY ": %s\n", lua_tostring(L, -1));
    return -1;
  }
  lua_getfield(L, -1, "check");
  check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  lua_State *L;
  ml_Future *t;
  if (!ready) {
    if (init() != 0) abort();
    ready = 1;
  }
  if (size > FUZZ_MAX_INPUT) return 0;
  L = ml_state_lua(S);
  lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
  lua_pushlstring(L, (const char *)data, size);
  if (ml_task_spawn(L, 1, "fuzz", &t) != 0) abort();
  if (ml_state_run_until(S, t) != 0) abort();
  if (ml_future_state(t) != ML_FUTURE_RESULT) {
    ml_future_push_error(L, t);
    fprintf(stderr, FUZZ_PROPERTY ": %s\n", lua_tostring(L, -1));
    abort();
  }
  ml_future_release(L, t);
  lua_settop(L, 0);
  return 0;
}
