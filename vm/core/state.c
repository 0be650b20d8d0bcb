/* state.c: a moonloop state's core: the Lua VM, its allocator, its loop,
 * the dialect's loaders and asyncio.core.  The embedding layer adds the
 * stdlib (ml_state_new). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lualib.h>
#include "task.h"
#include "budget.h"
#include "coro.h"
#include "sched.h"
#include "exc.h"
#include "wakeup.h"
#include "worker.h"
#include "dialect/loader.h"

void ml__emit_error(ml_State *S, const char *msg) {
  if (S->on_error) S->on_error(S, msg, S->on_error_ud);
  else fprintf(stderr, "moonloop: %s\n", msg);
}

/* The core's own Lua modules (asyncio.exceptions), embedded by the
 * build in core_lua.c. */
extern const ml_Embedded ml__core_lua[];

/* package.preload entry for an embedded Lua module (upvalues: its list
 * and index).
 * preload(name) -> the module */
static int load_embedded(lua_State *L) {
  const ml_Embedded *list = lua_touserdata(L, lua_upvalueindex(1));
  const ml_Embedded *m = &list[lua_tointeger(L, lua_upvalueindex(2))];
  if (luaL_loadbufferx(L, m->src, m->len, m->name, "b") != LUA_OK) return lua_error(L);
  /* In a sandboxed state the globals are the scripts'; the stdlib runs in
   * the trusted ones the sandbox kept aside. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, ML_TRUSTED_ENV_KEY) == LUA_TTABLE) {
    if (lua_setupvalue(L, -2, 1) == NULL) lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
  }
  lua_pushstring(L, m->name);
  lua_call(L, 1, 1);
  return 1;
}

/* [-0, +0] puts a package.preload entry for each module of list. */
void ml__preload_embedded(lua_State *L, const ml_Embedded *list) {
  int i;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (i = 0; list[i].name; i++) {
    lua_pushlightuserdata(L, (void *)list);
    lua_pushinteger(L, i);
    lua_pushcclosure(L, load_embedded, 2);
    lua_setfield(L, -2, list[i].name);
  }
  lua_pop(L, 1);
}

/* State set-up, run in protected mode.
 * init() -> nothing */
static int init(lua_State *L) {
  luaL_openlibs(L);
  ml__budget_open(L); /* coroutine.resume/wrap, before any code captures them */
  ml__loader_open(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, ml__corelib_open);
  lua_setfield(L, -2, "asyncio.core");
  lua_pop(L, 1);
  ml__preload_embedded(L, ml__core_lua);
  ml__future_open(L);
  ml__task_open(L);
  ml__coro_open(L);
  ml__exc_init(L);
  return 0;
}

/* The test modes of docs/reliability.md, from the environment:
 * MOONLOOP_ALLOCFAIL=N[,K] refuses the state's allocations (growths)
 * number N to N+K-1 (K defaults to 2: the Nth and Lua's retry of it
 * after its emergency collection, so that the failure surfaces);
 * MOONLOOP_ALLOCFAIL=count only counts, and prints the count to stderr
 * when the state closes.  MOONLOOP_GCSTRESS=1 makes the collector run a
 * whole cycle at every step, which Lua takes at every allocation check
 * (pause 1%, step multiplier 1000, step size 2 bytes; lua_gc takes 0 as "unchanged"), the way Lua's own
 * HARDMEMTESTS collects fully there. */
static void fault_modes(ml_State *S) {
  const char *v = getenv("MOONLOOP_ALLOCFAIL");
  if (v != NULL && *v != '\0') {
    if (strcmp(v, "count") == 0) {
      ml__alloc_set_faults(S->alloc, 0, 0);
      S->alloc_count = 1;
    } else {
      char *end;
      unsigned long long n = strtoull(v, &end, 10), k = 2;
      if (*end == ',') k = strtoull(end + 1, &end, 10);
      if (n > 0) ml__alloc_set_faults(S->alloc, (size_t)n, (size_t)k);
    }
  }
  v = getenv("MOONLOOP_GCSTRESS");
  S->gc_stress = v != NULL && *v != '\0' && strcmp(v, "0") != 0;
}

/* [-0, +0] on the new state's stack: init runs protected. */
ml_State *ml__state_new(struct ev_loop *loop) {
  ml_State *S = calloc(1, sizeof *S);
  lua_State *L;
  if (S == NULL) return NULL;
  S->alloc = ml__alloc_new(0);
  if (S->alloc == NULL) goto fail;
  fault_modes(S);
  L = lua_newstate(ml__alloc_lua, S->alloc);
  if (L == NULL) goto fail;
  if (S->gc_stress) lua_gc(L, LUA_GCINC, 1, 1000, 1);
  ml__theap_init(&S->sleepers, ml__alloc_lua, S->alloc);
  S->L = L;
  *(ml_State **)lua_getextraspace(L) = S;
  S->loop = loop;
  if (loop == NULL) {
    S->loop = ev_loop_new(EVFLAG_AUTO);
    S->own_loop = 1;
    if (S->loop == NULL) goto fail;
  }
  if (getenv("MOONLOOP_DEBUG") && *getenv("MOONLOOP_DEBUG") &&
      strcmp(getenv("MOONLOOP_DEBUG"), "0"))
    S->debug = 1;
  if (ml__wakeup_open(S) < 0) goto fail;
  /* What init makes (the libraries, the core's metatables, the exception
   * classes) lives as long as the state: the collector has nothing to
   * find in it, so it waits (4% of a hello world's instructions,
   * docs/performance.md "Start-up").  An allocation that fails still
   * collects first, as Lua does when stopped. */
  if (!S->gc_stress) lua_gc(L, LUA_GCSTOP);
  lua_pushcfunction(L, init);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) goto fail;
  if (!S->gc_stress) lua_gc(L, LUA_GCRESTART);
  return S;
fail:
  ml__wakeup_close(S);
  if (S->L) lua_close(S->L);
  if (S->own_loop && S->loop) ev_loop_destroy(S->loop);
  if (S->alloc) ml__alloc_free(S->alloc);
  free(S);
  return NULL;
}

int ml__ref(lua_State *L) {
  ml_State *S = ml__state(L);
  int ref;
  if (S->nfree_refs == 0) return luaL_ref(L, LUA_REGISTRYINDEX);
  ref = S->free_refs[--S->nfree_refs];
  lua_rawseti(L, LUA_REGISTRYINDEX, ref); /* the slot exists: no allocation */
  return ref;
}

void ml__unref(lua_State *L, int ref) {
  ml_State *S = ml__state(L);
  if (ref <= 0) return;
  if (S->nfree_refs == S->capfree_refs) {
    size_t ncap = S->capfree_refs ? 2 * (size_t)S->capfree_refs : 64;
    int *p = ncap <= INT_MAX ? realloc(S->free_refs, ncap * sizeof *p) : NULL;
    if (p == NULL) { /* luaL_ref's own free list takes it */
      luaL_unref(L, LUA_REGISTRYINDEX, ref);
      return;
    }
    S->free_refs = p;
    S->capfree_refs = (int)ncap;
  }
  lua_pushboolean(L, 0);
  lua_rawseti(L, LUA_REGISTRYINDEX, ref);
  S->free_refs[S->nfree_refs++] = ref;
}

/* [-0, +1] pushes the metatable of type (made and registered on first
 * call); returns 1 if it was made now, so the caller fills it. */
int ml__udata_newmt(lua_State *L, int type, const char *tname) {
  ml_State *S = ml__state(L);
  int made = luaL_newmetatable(L, tname);
  S->udata_mt[type] = lua_topointer(L, -1);
  S->udata_name[type] = tname;
  if (S->udata_mtref[type] == 0) { /* 0: never made (refs are > 0) */
    lua_pushvalue(L, -1);
    S->udata_mtref[type] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return made;
}

/* [-0, +0] makes the class metatable tname on first call: a table of
 * methods as __index, gc as __gc, tostr as __tostring (either may be
 * NULL).  Returns 1 if it was made now. */
int ml__class_new(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction gc,
                  lua_CFunction tostr) {
  int made = luaL_newmetatable(L, tname);
  if (made) {
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    if (gc) {
      lua_pushcfunction(L, gc);
      lua_setfield(L, -2, "__gc");
    }
    if (tostr) {
      lua_pushcfunction(L, tostr);
      lua_setfield(L, -2, "__tostring");
    }
  }
  lua_pop(L, 1);
  return made;
}

/* [-0, +0] sets type's metatable on the userdata on top. */
void ml__udata_setmt(lua_State *L, int type) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, ml__state(L)->udata_mtref[type]);
  lua_setmetatable(L, -2);
}

/* [-0, +0] the userdata at idx if it is of type, else NULL. */
void *ml__udata_test(lua_State *L, int idx, int type) {
  const void *mt;
  /* A string has a metatable too, and transport:write tests each string
   * it is given for a socket.buffer: the type test first saves the
   * metatable's fetch (~100 instructions a message on the echo).  It also
   * keeps a light userdata out, whatever metatable debug.setmetatable
   * gave them all. */
  if (lua_type(L, idx) != LUA_TUSERDATA) return NULL;
  if (!lua_getmetatable(L, idx)) return NULL; /* no metatable, or not a userdata of ours */
  mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  return mt == ml__state(L)->udata_mt[type] ? lua_touserdata(L, idx) : NULL;
}

/* [-0, +0] the same, or a type error. */
void *ml__udata_check(lua_State *L, int idx, int type) {
  void *p = ml__udata_test(L, idx, type);
  if (p == NULL) {
    const char *name = ml__state(L)->udata_name[type];
    luaL_typeerror(L, idx, name ? name : "userdata");
  }
  return p;
}

struct ev_loop *ml__loop(ml_State *S) {
  return S->loop;
}

/* [-0, +1] pushes require(name) of the trusted globals (package.loaded
 * first). */
void ml__require(lua_State *L, const char *name) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, name) != LUA_TNIL) {
    lua_remove(L, -2);
    return;
  }
  lua_pop(L, 2);
  /* The trusted globals' require: a sandboxed script's refuses internals. */
  if (lua_getfield(L, LUA_REGISTRYINDEX, ML_TRUSTED_ENV_KEY) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  }
  lua_getfield(L, -1, "require");
  lua_remove(L, -2);
  lua_pushstring(L, name);
  lua_call(L, 1, 1);
}
lua_State *ml__main_lua(ml_State *S) { return S->L; }
int ml__signals_enabled(ml_State *S) { return S->signals; }

static const char memerr_key = 'M';

/* [-0, +1] pushes the prepared MemoryError, or Lua's own message;
 * never allocates. */
void ml__push_memory_error(lua_State *L) {
  /* Neither call allocates: the key is a light userdata, and "not enough
   * memory" is the string Lua keeps for its own memory errors. */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &memerr_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_pushliteral(L, "not enough memory");
}

/* [-0, +0] makes the MemoryError ml__push_memory_error pushes, once. */
int ml__prepare_memory_error(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &memerr_key) == LUA_TTABLE) {
    lua_pop(L, 1);
    return 0;
  }
  lua_pop(L, 1);
  ml__exc_push(L, "MemoryError", "not enough memory (the state's memory limit was reached)");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &memerr_key);
  return 0;
}

/* How many loop iterations a closing state gives cancelled tasks to run
 * their cleanup (to-be-closed variables, except blocks); it never blocks. */
#define CLOSE_ITERATIONS 100

/* Cancels the pending tasks and gives them a few iterations to unwind;
 * in protected mode, as out of memory can strike there too.
 * close_tasks() -> nothing */
static int close_tasks(lua_State *L) {
  ml_State *S = ml__state(L);
  int i;
  for (i = 0; i < CLOSE_ITERATIONS && S->tasks; i++) {
    ml_Task *t;
    if (i == 0)
      for (t = S->tasks; t; t = t->next) ml__task_cancel(L, t, 0);
    ml__sched_step(S);
  }
  return 0;
}

/* [-0, +0] on S's stack before it closes. */
void ml__state_close(ml_State *S) {
  if (S == NULL) return;
  lua_pushcfunction(S->L, close_tasks);
  if (lua_pcall(S->L, 0, 0, 0) != LUA_OK) lua_pop(S->L, 1); /* close anyway */
  ml__task_stop_timers(S);                                  /* a host's loop outlives us */
  ml__theap_free(&S->sleepers);
  /* Other threads see -ESHUTDOWN from here on; what they queued is freed. */
  ml__wakeup_close(S);
  ml__budget_close(S); /* no more watching */
  S->closing = 1;      /* finalizers run under a limit from here (sandbox.c) */
  lua_close(S->L);
  ml__readyq_free(&S->ready);
  free(S->free_refs);
  ml__worker_free(S);
  if (S->own_loop) ev_loop_destroy(S->loop);
  if (S->alloc_count)
    fprintf(stderr, "moonloop: MOONLOOP_ALLOCFAIL=count: %zu allocations\n",
            ml__alloc_growths(S->alloc));
  ml__alloc_free(S->alloc);
  free(S);
}
