/* loop.c: the loop object, asyncio's AbstractEventLoop: time,
 * call_soon, call_later, call_at, debug mode and the exception handler
 * (where every error nobody catches is reported).  Modules add methods to
 * its methods table (asyncio.core.Loop): sockets, servers, readers and
 * writers, and the lifecycle (run_until_complete, run_forever, stop,
 * close: policy, in stdlib/asyncio.lua and asyncio/runners.lua). */
#include <stdio.h>
#include <time.h>
#include "task.h"
#include "handle.h"
#include "loop.h"

#define ML_LOOP_MT "asyncio.Loop"
#define HANDLER_KEY "moonloop.exception_handler"

double ml__now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* [-0, +1] pushes the loop object. */
void ml__push_loop(lua_State *L) { lua_getfield(L, LUA_REGISTRYINDEX, ML_LOOP_MT ".instance"); }

/* loop:time() -> seconds (monotonic) */
static int loop_time(lua_State *L) {
  lua_pushnumber(L, ml__now());
  return 1;
}

/* loop:create_future() -> future */
static int loop_create_future(lua_State *L) {
  ml__future_new(L);
  return 1;
}

/* loop:create_task(coro, {name=}) -> task */
static int loop_create_task(lua_State *L) {
  lua_remove(L, 1);
  return ml__core_create_task(L);
}

/* loop:get_debug() -> boolean */
static int loop_get_debug(lua_State *L) {
  lua_pushboolean(L, ml__state(L)->debug);
  return 1;
}

/* loop:set_debug(b) -> nothing */
static int loop_set_debug(lua_State *L) {
  ml__state(L)->debug = lua_toboolean(L, 2);
  return 0;
}

/* loop:set_exception_handler(fn | nil) -> nothing */
static int loop_set_exception_handler(lua_State *L) {
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_setfield(L, LUA_REGISTRYINDEX, HANDLER_KEY);
  return 0;
}

/* loop:get_exception_handler() -> fn | nil */
static int loop_get_exception_handler(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLER_KEY);
  return 1;
}

/* [-0, +1] formats a context table as the default handler prints it. */
static void format_context(lua_State *L, int ctx) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (lua_getfield(L, ctx, "message") != LUA_TNIL) {
    luaL_tolstring(L, -1, NULL);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, ctx, "exception") != LUA_TNIL) {
    luaL_addstring(&b, ": ");
    luaL_tolstring(L, -1, NULL);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, ctx, "traceback") == LUA_TSTRING) {
    luaL_addchar(&b, '\n');
    lua_pushvalue(L, -1);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  luaL_pushresult(&b);
}

/* loop:default_exception_handler(context) -> nothing */
static int loop_default_exception_handler(lua_State *L) {
  ml_State *S = ml__state(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  format_context(L, 2);
  ml__emit_error(S, lua_tostring(L, -1));
  return 0;
}

/* loop:call_exception_handler(context) -> nothing */
static int loop_call_exception_handler(lua_State *L) {
  luaL_checktype(L, 2, LUA_TTABLE);
  if (lua_getfield(L, LUA_REGISTRYINDEX, HANDLER_KEY) == LUA_TFUNCTION) {
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) return 0;
    /* A failing handler: report both, as asyncio does. */
    fprintf(stderr, "moonloop: exception handler failed: %s\n", luaL_tolstring(L, -1, NULL));
  }
  lua_settop(L, 2);
  return loop_default_exception_handler(L);
}

/* report_p(context lightuserdata, error, traceback) -> nothing: the
 * body of ml__report_tb, protected (it allocates). */
static int report_p(lua_State *L) {
  lua_createtable(L, 0, 3); /* 4 */
  lua_pushstring(L, lua_touserdata(L, 1));
  lua_setfield(L, 4, "message");
  lua_pushvalue(L, 2);
  lua_setfield(L, 4, "exception");
  lua_pushvalue(L, 3);
  lua_setfield(L, 4, "traceback");
  lua_pushcfunction(L, loop_call_exception_handler);
  ml__push_loop(L);
  lua_pushvalue(L, 4);
  lua_call(L, 2, 0);
  return 0;
}

/* [-2, +0] pops the error and its traceback (or nil) and hands them to
 * the loop's exception handler as {message = context, exception,
 * traceback}.  Never raises: it runs from libev's callbacks, outside any
 * protected call, so even making the context table is protected (out of
 * memory there is written to stderr with the context). */
void ml__report_tb(lua_State *L, const char *context) {
  int top = lua_gettop(L);
  if (!lua_checkstack(L, 4)) {
    ml__emit_error(ml__state(L), context);
    lua_settop(L, top - 2);
    return;
  }
  lua_pushcfunction(L, report_p);
  lua_pushlightuserdata(L, (void *)context);
  lua_pushvalue(L, top - 1);
  lua_pushvalue(L, top);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    const char *e = lua_tostring(L, -1);
    char msg[512];
    snprintf(msg, sizeof msg, "%s (reporting it failed: %s)", context,
             e ? e : "error in error report");
    ml__emit_error(ml__state(L), msg);
  }
  lua_settop(L, top - 2);
}

/* [-1, +0] the same without a traceback. */
void ml__report(lua_State *L, const char *context) {
  lua_pushnil(L);
  ml__report_tb(L, context);
}

static const luaL_Reg loop_methods[] = {
  {"time", loop_time},
  {"create_future", loop_create_future},
  {"create_task", loop_create_task},
  {"get_debug", loop_get_debug},
  {"set_debug", loop_set_debug},
  {"set_exception_handler", loop_set_exception_handler},
  {"get_exception_handler", loop_get_exception_handler},
  {"call_exception_handler", loop_call_exception_handler},
  {"default_exception_handler", loop_default_exception_handler},
  {NULL, NULL},
};

/* The hot methods, which make Handles (handle.c).  Upvalues: those of
 * ml__handles_push_upvalues. */
static const luaL_Reg timer_methods[] = {
  {"call_soon", ml__handle_call_soon},
  {"call_later", ml__handle_call_later},
  {"call_at", ml__handle_call_at},
  {NULL, NULL},
};

/* [-0, +1] registers the loop object and pushes its methods table. */
void ml__loop_open(lua_State *L) {
  ml__state(L)->last_poll = ml__now(); /* the scheduler's poll rule starts now */
  ml__handles_open(L);
  luaL_newmetatable(L, ML_LOOP_MT);
  luaL_newlib(L, loop_methods);
  ml__handles_push_upvalues(L);
  luaL_setfuncs(L, timer_methods, 3);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  /* The loop object itself: a table holding the timer methods (the hot
   * ones: no __index hop per call_later; docs/performance.md, "Timers"), whose
   * metatable's __index has the rest, including those modules add. */
  lua_newtable(L);
  ml__handles_push_upvalues(L);
  luaL_setfuncs(L, timer_methods, 3);
  lua_pushvalue(L, -3);
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, ML_LOOP_MT ".instance");
  lua_remove(L, -2); /* leaves the methods table */
}
