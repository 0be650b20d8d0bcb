/* corelib.c: asyncio.core, the core's face to Lua (the Lua half of the
 * asyncio module, stdlib/asyncio.lua, builds the public module on it). */
#include <errno.h>
#include <string.h>
#include "task.h"
#include "coro.h"
#include "sched.h"
#include "loop.h"
#include "gather.h"
#include "worker.h"

/* Raises TypeError unless every key of the options table at idx is one
 * of allowed (NULL-terminated), as Python does for an unknown keyword.
 * [-0, +0] */
void ml__check_options(lua_State *L, int idx, const char *fname, const char *const allowed[]) {
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int i, ok = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING)
      for (i = 0; allowed[i] && !ok; i++) ok = strcmp(lua_tostring(L, -1), allowed[i]) == 0;
    if (!ok) {
      if (lua_type(L, -1) == LUA_TSTRING)
        ml__exc_raise(L, "TypeError", "%s() got an unexpected option '%s'", fname,
                      lua_tostring(L, -1));
      ml__exc_raise(L, "TypeError",
                    "%s() got an unexpected option [%s] (options are named: {name = value})", fname,
                    luaL_tolstring(L, -1, NULL));
    }
  }
}

/* Makes a task of the coroutine (or function) at 1 with the options
 * table at 2 (or none), whose keys must be among opts; eager runs its
 * first step at once, as does the option eager_start if allowed.
 * [-0, +1] pushes the task. */
static int new_task(lua_State *L, const char *fname, const char *const opts[], int eager) {
  const char *name = NULL;
  int tp = lua_type(L, 1), kind = ML_CORO_NOT;
  ml_Task *t = NULL;
  if (lua_type(L, 2) == LUA_TTABLE) {
    ml__check_options(L, 2, fname, opts);
    if (lua_getfield(L, 2, "name") != LUA_TNIL) name = luaL_tolstring(L, -1, NULL);
    if (lua_getfield(L, 2, "eager_start") != LUA_TNIL) eager = lua_toboolean(L, -1);
  } else if (!lua_isnoneornil(L, 2)) {
    return ml__exc_raise(L, "TypeError", "%s() options must be a table, got %s", fname,
                         luaL_typename(L, 2));
  }
  /* create_task(f) of an async function runs its body, f(): a task of the
   * function itself would only make the Coroutine and return it, never
   * awaited (Python refuses a coroutine function with TypeError). */
  if (tp == LUA_TFUNCTION && ml__coro_isasyncfn(L, 1)) {
    lua_pushvalue(L, 1);
    lua_call(L, 0, 1);
    lua_replace(L, 1);
    tp = lua_type(L, 1);
  }
  /* One type test: taking tells a Coroutine too (and makes it the Task). */
  if (tp != LUA_TFUNCTION &&
      (tp != LUA_TUSERDATA || (kind = ml__coro_take(L, 1, &t)) == ML_CORO_NOT))
    return ml__exc_raise(L, "TypeError", "a coroutine was expected, got %s",
                         luaL_tolstring(L, 1, NULL));
  lua_pushvalue(L, 1);
  if (tp == LUA_TFUNCTION) ml__task_spawn_fn(L, name, eager);
  else ml__task_spawn_coro(L, name, eager, kind == ML_CORO_IN_PLACE ? t : NULL);
  return 1;
}

/* asyncio.eager_task_factory's, without the loop argument. */
static int core_eager_task_factory_body(lua_State *L) {
  static const char *const opts[] = {"name", "eager_start", NULL};
  return new_task(L, "create_task", opts, 1);
}

/* create_task(coro | fn, {name=}) -> task, or what the loop's task
 * factory returns: factory(loop, coro, opts). */
int ml__core_create_task(lua_State *L) {
  static const char *const opts[] = {"name", NULL};
  ml_State *S = ml__state(L);
  if (S->task_factory_ref > 0 && !S->task_factory_eager) {
    lua_settop(L, 2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, S->task_factory_ref);
    ml__push_loop(L);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_call(L, 3, 1);
    return 1;
  }
  if (S->task_factory_eager) return core_eager_task_factory_body(L);
  return new_task(L, "create_task", opts, 0);
}

/* Task(coro | fn, {name=, eager_start=, loop=}) -> task: the Task
 * constructor, which no task factory sees (Python's asyncio.Task). */
static int core_task(lua_State *L) {
  static const char *const opts[] = {"name", "eager_start", "loop", NULL};
  return new_task(L, "Task", opts, 0);
}

/* eager_task_factory(loop, coro, {name=}) -> task, whose first step has
 * run (Python 3.12's asyncio.eager_task_factory). */
static int core_eager_task_factory(lua_State *L) {
  lua_remove(L, 1);
  return core_eager_task_factory_body(L);
}

/* loop:set_task_factory(factory | nil) -> nothing: create_task calls
 * factory(loop, coro, opts) from now on.  asyncio.eager_task_factory is
 * recognised and not called: create_task makes the eager task itself. */
static int loop_set_task_factory(lua_State *L) {
  ml_State *S = ml__state(L);
  int ref = 0;
  if (!lua_isnoneornil(L, 2)) {
    if (!lua_isfunction(L, 2) && luaL_getmetafield(L, 2, "__call") == LUA_TNIL)
      return ml__exc_raise(L, "TypeError", "task factory must be a callable or nil, got %s",
                           luaL_typename(L, 2));
    S->task_factory_eager = lua_tocfunction(L, 2) == core_eager_task_factory;
    lua_settop(L, 2);
    ref = luaL_ref(L, LUA_REGISTRYINDEX);
  } else {
    S->task_factory_eager = 0;
  }
  if (S->task_factory_ref > 0) luaL_unref(L, LUA_REGISTRYINDEX, S->task_factory_ref);
  S->task_factory_ref = ref;
  return 0;
}

/* loop:get_task_factory() -> factory | nil */
static int loop_get_task_factory(lua_State *L) {
  ml_State *S = ml__state(L);
  if (S->task_factory_ref > 0) lua_rawgeti(L, LUA_REGISTRYINDEX, S->task_factory_ref);
  else lua_pushnil(L);
  return 1;
}

/* _parked(co) -> boolean: the thread co is parked in an await. */
static int core_parked(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  lua_pushboolean(L, co != NULL && co != L && ml__task_parked(co));
  return 1;
}

/* _park(on) -> nothing: marks the calling thread as parked in an await, or not (a
 * generator's await passes through it: asyncio.lua's pass). */
static int core_park(lua_State *L) {
  ml__set_parked(L, lua_toboolean(L, 1));
  return 0;
}

/* current_task() -> task | nil */
static int core_current_task(lua_State *L) {
  ml_Task *t = ml__task_current(L);
  if (t) ml__task_push(L, t);
  else lua_pushnil(L);
  return 1;
}

/* all_tasks() -> the pending tasks, as a list with n. */
static int core_all_tasks(lua_State *L) {
  ml_Task *t;
  int n = 0;
  lua_newtable(L);
  for (t = ml__state(L)->tasks; t; t = t->next) {
    ml__task_push(L, t);
    lua_rawseti(L, -2, ++n);
  }
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "n");
  return 1;
}

/* The loop objects of the lifecycle (stdlib/asyncio.lua): the one of the
 * run in progress (loop:run_until_complete, run_forever, asyncio.run,
 * Runner:run), and the one set_event_loop set.  Either may be nil; the
 * state's own loop object (ml__push_loop) stands in for both. */
#define RUNNING_LOOP_KEY "asyncio.Loop.running"
#define CURRENT_LOOP_KEY "asyncio.Loop.current"

/* get_running_loop() -> loop; RuntimeError outside the running loop. */
static int core_get_running_loop(lua_State *L) {
  ml_State *S = ml__state(L);
  if (S->running == 0 && S->current == NULL)
    return ml__exc_raise(L, "RuntimeError", "no running event loop");
  if (lua_getfield(L, LUA_REGISTRYINDEX, RUNNING_LOOP_KEY) == LUA_TNIL) ml__push_loop(L);
  return 1;
}

/* get_event_loop() -> loop: the running one, else the one set, else the
 * state's own. */
static int core_get_event_loop(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, RUNNING_LOOP_KEY) != LUA_TNIL) return 1;
  if (lua_getfield(L, LUA_REGISTRYINDEX, CURRENT_LOOP_KEY) != LUA_TNIL) return 1;
  ml__push_loop(L);
  return 1;
}

/* _set_running(loop | nil), _set_current(loop | nil) -> nothing */
static int core_set_running(lua_State *L) {
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, RUNNING_LOOP_KEY);
  return 0;
}

static int core_set_current(lua_State *L) {
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, CURRENT_LOOP_KEY);
  return 0;
}

/* _own_loop() -> the state's own loop object. */
static int core_own_loop(lua_State *L) {
  ml__push_loop(L);
  return 1;
}

/* isfuture(x) -> boolean */
static int core_isfuture(lua_State *L) {
  lua_pushboolean(L, ml__future_test(L, 1) != NULL);
  return 1;
}

/* run_until_complete(fut): drives the loop from outside any task until
 * fut is done, then returns its results (or raises its exception).
 * run_until_complete(fut) -> fut's results */
static int core_run_until_complete(lua_State *L) {
  ml_State *S = ml__state(L);
  ml_Future *f = ml__future_test(L, 1);
  int rc;
  if (f == NULL) return luaL_typeerror(L, 1, "Future or Task");
  if (S->current || S->running > 0) /* in a task, or a callback of the running loop */
    return ml__exc_raise(L, "RuntimeError", "this event loop is already running");
  lua_settop(L, 1);
  rc = ml__sched_run(S, f);
  if (rc == -EDEADLK)
    return ml__exc_raise(L, "RuntimeError",
                         "the awaited task can never finish: nothing is left that could wake it "
                         "(no ready task, timer or I/O watcher)");
  if (f->state == ML_PENDING)
    return ml__exc_raise(L, "RuntimeError", "Event loop stopped before Future completed.");
  return ml__future_unwrap(L, 1);
}

/* _run_forever(): drives the loop from outside any task until stop()
 * (or until nothing is left that could wake anything).
 * _run_forever() -> nothing */
static int core_run_forever(lua_State *L) {
  ml_State *S = ml__state(L);
  if (S->current || S->running > 0)
    return ml__exc_raise(L, "RuntimeError", "this event loop is already running");
  ml__sched_run(S, NULL);
  return 0;
}

/* _stop(): stops the scheduler's run in progress (the host's, the
 * CLI's) after the current iteration.  _stop() -> nothing */
static int core_stop(lua_State *L) {
  ml__state(L)->stopping = 1;
  return 0;
}

/* _in_loop() -> boolean: code runs inside the scheduler (a task or a
 * callback), as all script code does. */
static int core_in_loop(lua_State *L) {
  ml_State *S = ml__state(L);
  lua_pushboolean(L, S->running > 0 || S->current != NULL);
  return 1;
}

/* _set_debug(b) -> nothing */
static int core_set_debug(lua_State *L) {
  ml__state(L)->debug = lua_toboolean(L, 1);
  return 0;
}

/* The allocation-failure mode's knob for tests (docs/reliability.md), in
 * a state made with MOONLOOP_ALLOCFAIL set (=count, say).
 * _fail_alloc(n[, k]) -> nothing: refuses the state's nth growth from now
 * and the k - 1 after it (k: 2, the growth and Lua's retry after its
 * emergency collection, so that the failure surfaces); n 0: none. */
static int core_fail_alloc(lua_State *L) {
  lua_Integer n = ml__checkrange(L, 1, 0, LUA_MAXINTEGER);
  lua_Integer k = luaL_opt(L, ml__checkint, 2, 2);
  luaL_argcheck(L, k >= 1, 2, "must be at least 1");
  if (ml__alloc_fail_next(ml__state(L)->alloc, (size_t)n, (size_t)k) < 0)
    return ml__exc_raise(L, "RuntimeError",
                         "_fail_alloc: the state was not made with MOONLOOP_ALLOCFAIL set");
  return 0;
}

/* _allocs() -> the state's growths so far (while counting), or nil. */
static int core_allocs(lua_State *L) {
  ml_State *S = ml__state(L);
  if (!ml__alloc_counting(S->alloc)) return 0;
  lua_pushinteger(L, (lua_Integer)ml__alloc_growths(S->alloc));
  return 1;
}

static const luaL_Reg core_funcs[] = {
  {"_fail_alloc", core_fail_alloc},
  {"_allocs", core_allocs},
  {"Future", ml__future_lnew},
  {"create_task", ml__core_create_task},
  {"Task", core_task},
  {"eager_task_factory", core_eager_task_factory},
  {"current_task", core_current_task},
  {"all_tasks", core_all_tasks},
  {"get_running_loop", core_get_running_loop},
  {"get_event_loop", core_get_event_loop},
  {"iscoroutine", ml__coro_iscoroutine},
  {"iscoroutinefunction", ml__coro_iscoroutinefunction},
  {"isfuture", core_isfuture},
  {"run_until_complete", core_run_until_complete},
  {"_run_forever", core_run_forever},
  {"_set_running", core_set_running},
  {"_set_current", core_set_current},
  {"_own_loop", core_own_loop},
  {"_stop", core_stop},
  {"_in_loop", core_in_loop},
  {"_set_debug", core_set_debug},
  {"_set_cancel_hook", ml__future_set_cancel_hook},
  {"_gather", ml__gather},
  {"_parked", core_parked},
  {"_park", core_park},
  {NULL, NULL},
};

/* [-0, +1] pushes the asyncio.core table. */
int ml__corelib_open(lua_State *L) {
  luaL_newlib(L, core_funcs);
  ml__worker_open(L);
  ml__loop_open(L);
  lua_pushcfunction(L, loop_set_task_factory);
  lua_setfield(L, -2, "set_task_factory");
  lua_pushcfunction(L, loop_get_task_factory);
  lua_setfield(L, -2, "get_task_factory");
  lua_setfield(L, -2, "Loop");
  ml__push_async_sleep(L, ml__task_sleep);
  lua_setfield(L, -2, "sleep");
  lua_getglobal(L, "await");
  lua_setfield(L, -2, "await");
  return 1;
}
