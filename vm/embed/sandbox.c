/* sandbox.c: per-state limits (memory cap, CPU budget) and the module
 * allow-list that lets a host run untrusted scripts. */
#include <errno.h>
#include <string.h>
#include "embed.h"
#include "core/budget.h"

/* ---- memory ---- */

/* Makes the MemoryError raised at the cap while memory is still there. */
static int memerr_p(lua_State *L) { return ml__prepare_memory_error(L); }

int ml_state_set_memory_limit(ml_State *S, size_t bytes) {
  ml_Embed *E = ml__embed(S);
  int rc;
  if (E == NULL) return -ENOMEM;
  E->err[0] = '\0';
  if (bytes) {
    if ((rc = ml__embed_pcall(S->L, memerr_p, NULL)) < 0) return rc;
    if (bytes <= ml__alloc_used(S->alloc))
      return ml__embed_fail(S, -ENOMEM, "memory limit %zu is below the %zu bytes in use", bytes,
                            ml__alloc_used(S->alloc));
  }
  E->cap = bytes;
  ml__alloc_set_cap(S->alloc, bytes);
  return ML_OK;
}

size_t ml_state_memory_used(ml_State *S) { return ml__alloc_used(S->alloc); }
size_t ml_state_memory_peak(ml_State *S) { return ml__alloc_peak(S->alloc); }

/* ---- CPU ---- */

static int strmatch_p(lua_State *L) {
  lua_pop(L, 1);
  ml__strmatch_install(L);
  return 0;
}

void ml_state_set_cpu_budget(ml_State *S, unsigned long instructions) {
  ml_Embed *E = ml__embed(S);
  if (E) E->err[0] = '\0';
  /* Watched first: a step that begins once the budget is set is seen.
   * Without a watchdog (no thread could start) the budget counts from
   * the first instruction of each step (budget.c). */
  if (instructions) ml__budget_watch(S);
  __atomic_store_n(&S->instr_budget, instructions, __ATOMIC_RELAXED);
  /* The string library's pattern functions count their steps from now on
   * (strmatch.c); only a memory error can stop that (then a long match
   * stays one instruction, and ml_state_error says so). */
  if (instructions) ml__embed_pcall(S->L, strmatch_p, NULL);
}

int ml_state_set_time_budget(ml_State *S, unsigned long microseconds) {
  ml_Embed *E = ml__embed(S);
  int rc;
  if (E) E->err[0] = '\0';
  if (microseconds) {
    rc = ml__budget_watch(S);
    if (rc < 0)
      return ml__embed_fail(S, rc, "ml_state_set_time_budget: no watchdog thread could start");
  }
  __atomic_store_n(&S->time_budget_us, microseconds, __ATOMIC_RELAXED);
  /* The pattern matcher is stopped at its next charge (strmatch.c). */
  if (microseconds) ml__embed_pcall(S->L, strmatch_p, NULL);
  return ML_OK;
}

int ml_state_set_budget_scope(ml_State *S, int scope) {
  ml_Embed *E = ml__embed(S);
  if (E == NULL) return -ENOMEM;
  E->err[0] = '\0';
  if (scope != ML_BUDGET_TASK && scope != ML_BUDGET_STATE)
    return ml__embed_fail(S, -EINVAL,
                          "ml_state_set_budget_scope: ML_BUDGET_TASK or ML_BUDGET_STATE");
  S->budget_whole_state = scope == ML_BUDGET_STATE;
  return ML_OK;
}

/* ---- the sandbox ----
 *
 * The policy is Lua (sandbox.lua, embedded as bytecode with the module
 * graph the build derives from the module list): it returns the scripts'
 * new globals, which replace the state's; the old ones are kept aside as
 * the trusted environment the stdlib runs in (state.c). */

/* sandbox.lua (sandbox_lua.c, generated). */
extern const ml_Embedded ml__sandbox_lua[];

/* Finalizers: a __gc wrapped by the policy runs on a thread of its own,
 * where hooks work (Lua turns them off for the finalizing thread), with
 * the state's CPU budget - or, under a time budget alone or while the
 * state closes, a fixed limit (the time is the step's), so
 * that a finalizer that never stops cannot keep the state from closing. */
#define GC_SLICE 1000
#define GC_CLOSE_LIMIT 10000000UL

static void gc_hook(lua_State *L, lua_Debug *ar) {
  ml_State *S = ml__state(L);
  unsigned long limit = S->instr_budget ? S->instr_budget : GC_CLOSE_LIMIT;
  (void)ar;
  S->gc_instr += GC_SLICE;
  if (S->gc_instr > limit) {
    /* From here on at every instruction: a pcall in the finalizer only
     * delays the end by one. */
    lua_sethook(L, gc_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
    luaL_error(L, "finalizer ran past its CPU budget and was stopped");
  }
}

void ml__finalizer_charge(lua_State *L, unsigned long n) {
  ml_State *S = ml__state(L);
  if (!(S->instr_budget || S->time_budget_us || S->closing)) return; /* as gc_run hooks */
  S->gc_instr += n;
  if (S->gc_instr > (S->instr_budget ? S->instr_budget : GC_CLOSE_LIMIT)) {
    lua_sethook(L, gc_hook, LUA_MASKCOUNT | LUA_MASKCALL | LUA_MASKRET, 1);
    luaL_error(L, "finalizer ran past its CPU budget and was stopped");
  }
}

/* The wrapped __gc (upvalue 1: the script's function). */
static int gc_run(lua_State *L) {
  ml_State *S = ml__state(L);
  lua_State *co;
  int nres, st, outer = S->in_finalizer;
  co = lua_newthread(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 2);
  S->gc_instr = 0;
  /* Hooked from the start (finalizers are rare): under a time budget
   * alone, with the fixed limit. */
  if (S->instr_budget || S->time_budget_us || S->closing)
    lua_sethook(co, gc_hook, LUA_MASKCOUNT, GC_SLICE);
  S->in_finalizer = 1;
  st = lua_resume(co, L, 1, &nres);
  S->in_finalizer = outer;
  if (st != LUA_OK && st != LUA_YIELD) {
    /* As Lua does for a failing finalizer: a warning, nothing else. */
    const char *m = lua_tostring(co, -1);
    lua_warning(L, "error in __gc: ", 1);
    lua_warning(L, m ? m : "(not a string)", 0);
  }
  lua_resetthread(co);
  lua_pop(L, 1);
  return 0;
}

static int wrap_gc(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_pushcclosure(L, gc_run, 1);
  return 1;
}

/* guarded(fn, ...): calls fn(...) on a thread of its own under the CPU
 * budget, and returns its results, or raises its error.  The sandbox's
 * xpcall runs the script's message handler through it: Lua calls a
 * message handler with hooks off when the error came from a hook (the
 * budget's), so a handler that loops would escape the budget. */
static int guarded(lua_State *L) {
  ml_State *S = ml__state(L);
  int n = lua_gettop(L), nres, st;
  lua_State *co, *prev;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_insert(L, 1);
  if (!lua_checkstack(co, n)) return luaL_error(L, "stack overflow");
  lua_xmove(L, co, n);
  prev = ml__budget_enter(S, co); /* the step's hook, if it has it */
  st = lua_resume(co, L, n - 1, &nres);
  ml__budget_leave(S, prev);
  if (st == LUA_YIELD) {
    lua_resetthread(co);
    return luaL_error(L, "a message handler cannot yield");
  }
  if (st != LUA_OK) {
    lua_xmove(co, L, 1);
    return lua_error(L);
  }
  if (!lua_checkstack(L, nres)) return luaL_error(L, "stack overflow");
  lua_xmove(co, L, nres);
  return nres;
}

/* copy_lib(t) -> a new table with t's pairs, raw, made for their number:
 * the policy's copies of the standard libraries (no table that grows and
 * rehashes on the way, as one filled from Lua does). */
static int copy_lib(lua_State *L) {
  int n = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    n++;
    lua_pop(L, 1);
  }
  lua_createtable(L, 0, n);
  lua_pushnil(L);
  while (lua_next(L, 1)) { /* t, c, k, v */
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, 2);
  }
  return 1;
}

typedef struct Sandbox {
  const char *const *allow;
} Sandbox;

static const char *const default_allow[] = {ML_SANDBOX_DEFAULT, NULL};

/* [-0, +1] pushes the result of the embedded chunk name (called with no
 * arguments if nargs < 0, or with the nargs values below it). */
static void run_embedded(lua_State *L, const char *name, int nargs) {
  const ml_Embedded *m;
  for (m = ml__sandbox_lua; m->name && strcmp(m->name, name) != 0; m++) {}
  if (m->name == NULL) luaL_error(L, "the sandbox policy %s is not built in", name);
  if (luaL_loadbufferx(L, m->src, m->len, m->name, "b") != LUA_OK) lua_error(L);
  if (nargs > 0) lua_insert(L, -nargs - 1);
  lua_call(L, nargs > 0 ? nargs : 0, 1);
}

static int sandbox_p(lua_State *L) {
  Sandbox *a = lua_touserdata(L, 1);
  const char *const *p;
  lua_settop(L, 0);
  if (lua_getfield(L, LUA_REGISTRYINDEX, ML_TRUSTED_ENV_KEY) != LUA_TNIL)
    return luaL_error(L, "ml_state_sandbox: the state is sandboxed already");
  lua_pop(L, 1);
  lua_newtable(L); /* allow */
  for (p = a->allow; *p; p++) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, *p);
  }
  luaL_getsubtable(L, LUA_REGISTRYINDEX, ML_HOSTMODS_KEY); /* hostmods */
  ml__stdlib_needs(L);                                     /* needs_of, switches */
  ml__strmatch_install(L); /* before the policy copies the string library */
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS); /* G */
  lua_pushcfunction(L, wrap_gc);
  lua_pushcfunction(L, guarded);
  lua_pushcfunction(L, copy_lib);
  run_embedded(L, "moonloop.sandbox", 8); /* env */
  luaL_checktype(L, -1, LUA_TTABLE);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_setfield(L, LUA_REGISTRYINDEX, ML_TRUSTED_ENV_KEY);
  lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  return 0;
}

int ml_state_sandbox(ml_State *S, const char *const *allow) {
  Sandbox a = {allow ? allow : default_allow};
  ml_Embed *E = ml__embed(S);
  int rc, stop;
  if (E == NULL) return -ENOMEM;
  E->err[0] = '\0';
  /* What the policy makes (the scripts' globals, the library copies)
   * lives as long as the state, as what state.c's init makes does: the
   * collector, stopped as it is there, has next to nothing to find in it
   * (0.1 M instructions a sandbox, docs/performance.md "Embedding").  An
   * allocation that fails still collects first.  A collector the host
   * stopped stays stopped. */
  stop = !S->gc_stress && lua_gc(S->L, LUA_GCISRUNNING);
  if (stop) lua_gc(S->L, LUA_GCSTOP);
  rc = ml__embed_pcall(S->L, sandbox_p, &a);
  if (stop) lua_gc(S->L, LUA_GCRESTART);
  return rc;
}
