/* http_request.c: a libFuzzer target for the HTTP server's request path
 * (issue #16): arbitrary bytes, in arbitrary chunkings, to a real
 * http.serve server over 127.0.0.1 (llhttp, the C dispatcher in
 * stdlib/http/_server.c, the response writer).  The property itself is
 * Lua, tests/fuzz/http_request.lua (its comment says what the input
 * decides and what is checked: pipelined requests, chunked bodies and
 * smuggling shapes answered as a model says; arbitrary bytes answered
 * with well-formed responses; the connection ending; the server still
 * serving); make test runs the same file over the seed corpus
 * (tests/scripts/test_fuzz_corpus.lua).  A failed property aborts, with
 * the divergence on stderr.
 * Run with `make fuzz` (clang's -fsanitize=fuzzer,address,undefined); the
 * seed corpus is tests/fuzz/http_request/. */
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
  if (ml_load_file(L, FUZZ_DIR "/http_request.lua") != 0 || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "http_request: %s\n", lua_tostring(L, -1));
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
  if (size > 4096) return 0;
  L = ml_state_lua(S);
  lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
  lua_pushlstring(L, (const char *)data, size);
  if (ml_task_spawn(L, 1, "fuzz", &t) != 0) abort();
  if (ml_state_run_until(S, t) != 0) abort();
  if (ml_future_state(t) != ML_FUTURE_RESULT) {
    ml_future_push_error(L, t);
    fprintf(stderr, "http_request: %s\n", lua_tostring(L, -1));
    abort();
  }
  ml_future_release(L, t);
  lua_settop(L, 0);
  return 0;
}
