/* coro.c: Coroutine objects (what calling an async function returns) and
 * the global `await`, which dispatches on what it is given. */
#include <string.h>
#include "task.h"
#include "coro.h"

#define ML_CORO_MT "asyncio.Coroutine"

typedef struct Coro { /* at the start of a block of sizeof(ml_Task) */
  int nargs;
  int line;                   /* where it was created (line in the creator) */
  unsigned char awaited : 1;  /* consumed by await, a task, or close() */
  unsigned char reusable : 1; /* a shared constant coroutine: sleep(0) */
  unsigned char by_pcall : 1; /* made by pcall(f, ...): line is its caller's */
} Coro;

/* A Coroutine is a Task to be: its block is the size of an ml_Task (the
 * Coro at its start), and its user values are laid out as a Task's, so
 * that create_task turns it into its Task in place (ml__coro_take: a
 * metatable, a memset, one user value cleared) instead of making a second
 * userdata that keeps it (docs/performance.md, "Tasks (gather)").  Nearly
 * every Coroutine becomes a task (`await f()` makes none), so the ~100
 * bytes a plain one carries for it are rarely wasted; a parked task made
 * so has no more user values than one made of a function (for up to one
 * argument).  User values: its name (FUV_RESULT, where a task keeps its
 * name), the function that created it (FUV_MISC's slot: a task clears it
 * for its callbacks, having no use for it), the function (TUV_THREAD's
 * slot, until the task starts), then the arguments. */
#define CORO_OF(ud) ((Coro *)(ud))
enum { CUV_NAME = FUV_RESULT, CUV_CREATOR = FUV_MISC, CUV_FN = TUV_THREAD, CUV_ARGS };

_Static_assert(sizeof(Coro) <= sizeof(ml_Task), "a Coroutine's block is a Task's");

/* The callable an async function becomes: makes a Coroutine of the
 * function (upvalue 2) and the call's arguments; runs nothing.
 * f(...) -> coroutine */
static int coro_make(lua_State *L) {
  int i, n = lua_gettop(L);
  lua_Debug ar;
  Coro *c;
  if (n > 65000) return luaL_error(L, "too many arguments to an async function (%d)", n);
  c = CORO_OF(lua_newuserdatauv(L, sizeof(ml_Task), CUV_ARGS - 1 + n));
  c->nargs = n;
  c->awaited = 0;
  c->reusable = 0;
  c->by_pcall = 0;
  c->line = -1;
  lua_rawgeti(L, LUA_REGISTRYINDEX,
              ml__state(L)->udata_mtref[ML_UT_CORO]); /* ml__udata_setmt, inline */
  lua_setmetatable(L, -2);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setiuservalue(L, -2, CUV_NAME);
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setiuservalue(L, -2, CUV_FN);
  if (ml__state(L)->debug) {
    /* Debug mode keeps the whole traceback of the creation. */
    luaL_traceback(L, L, NULL, 1);
    lua_setiuservalue(L, -2, CUV_CREATOR);
  } else if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "lf", &ar)) {
    if (ar.currentline < 0 && lua_getinfo(L, "n", &ar) && ar.name != NULL &&
        (strcmp(ar.name, "pcall") == 0 || strcmp(ar.name, "xpcall") == 0) &&
        lua_getstack(L, 2, &ar) && lua_getinfo(L, "lf", &ar)) {
      /* pcall(f, ...) made it, and runs nothing of f: the newcomer's trap.
       * The report names the pcall's line and the idiom. */
      lua_replace(L, -2);
      c->by_pcall = 1;
    }
    c->line = ar.currentline;
    lua_setiuservalue(L, -2, CUV_CREATOR);
  }
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, i);
    lua_setiuservalue(L, -2, CUV_ARGS - 1 + i);
  }
  return 1;
}

static int sleep_make(lua_State *L);

/* __ml_async(name, fn) -> the value of `async function name(...)`. */
static int l_async(lua_State *L) {
  luaL_checktype(L, 2, LUA_TFUNCTION);
  if (!lua_isnil(L, 1)) luaL_checktype(L, 1, LUA_TSTRING); /* the pass gives one */
  if (lua_isnil(L, 1)) {
    lua_Debug ar;
    lua_pushvalue(L, 2);
    lua_getinfo(L, ">S", &ar);
    lua_pushfstring(L, "async function at %s:%d", ar.short_src, ar.linedefined);
    lua_replace(L, 1);
  }
  lua_settop(L, 2);
  lua_pushcclosure(L, coro_make, 2);
  return 1;
}

/* A Coroutine has one of two metatables: the one made with its __gc
 * (which reports it if never awaited), and, once a task took it, the same
 * without __gc (S->coro_taken_mt): a taken Coroutine can never need the
 * report, and its collection then skips the finaliser's call
 * (docs/performance.md, "Tasks (gather)"). */
#define is_coro_mt(S, mt) ((mt) == (S)->udata_mt[ML_UT_CORO] || (mt) == (S)->coro_taken_mt)

/* ml__udata_test(L, idx, ML_UT_CORO), inline, for both metatables: once
 * per task spawned.  [-0, +0] */
static Coro *test_coro(lua_State *L, int idx) {
  const void *mt;
  ml_State *S;
  if (!lua_getmetatable(L, idx)) return NULL;
  mt = lua_topointer(L, -1);
  lua_pop(L, 1);
  S = ml__state(L);
  return is_coro_mt(S, mt) ? CORO_OF(lua_touserdata(L, idx)) : NULL;
}

/* [-0, +0] the Coroutine at idx, or a type error. */
static Coro *check_coro(lua_State *L, int idx) {
  Coro *c = test_coro(L, idx);
  if (c == NULL) luaL_typeerror(L, idx, ML_CORO_MT);
  return c;
}

/* [-0, +(nargs+1)|0] pushes the function and arguments of the Coroutine
 * at idx and returns how many (it is awaited from now on), or returns
 * -1 with nothing pushed if it is not one; raises if it was awaited. */
int ml__coro_unpack(lua_State *L, int idx) {
  Coro *c = test_coro(L, idx);
  int i;
  if (c == NULL) return -1;
  if (c->awaited) {
    lua_getiuservalue(L, idx, CUV_NAME);
    return ml__exc_raise(L, "RuntimeError", "cannot reuse already awaited coroutine '%s'",
                         lua_tostring(L, -1));
  }
  c->awaited = !c->reusable;
  luaL_checkstack(L, c->nargs + 2, "too many arguments");
  lua_getiuservalue(L, idx, CUV_FN);
  for (i = 1; i <= c->nargs; i++) lua_getiuservalue(L, idx, CUV_ARGS - 1 + i);
  return c->nargs + 1;
}

/* [-0, +0] marks the Coroutine at idx awaited: 1, or 0 if it is not one;
 * raises if it was awaited already. */
int ml__coro_claim(lua_State *L, int idx) {
  Coro *c = test_coro(L, idx);
  if (c == NULL) return 0;
  if (c->awaited) {
    lua_getiuservalue(L, idx, CUV_NAME);
    ml__exc_raise(L, "RuntimeError", "cannot reuse already awaited coroutine '%s'",
                  lua_tostring(L, -1));
  }
  c->awaited = !c->reusable;
  if (!c->reusable) { /* taken: it needs no finaliser from now on */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ml__state(L)->coro_taken_mtref);
    lua_setmetatable(L, idx);
  }
  return 1;
}

/* [-0, +0] If the value at idx is a Coroutine: claims it for a task
 * (RuntimeError if it was awaited) and, unless it is the shared sleep(0)
 * one, makes it that Task in place: its ml_Task zeroed, the Task
 * metatable set, *t set to it, and returns ML_CORO_IN_PLACE.  The shared
 * one is claimed as ml__coro_claim does (ML_CORO_CLAIMED, a task of its
 * own keeps it).  Else ML_CORO_NOT.  The Task's fields are spawn's to set;
 * its user values hold the name, creator, function and arguments
 * (ml__coro_unload). */
int ml__coro_take(lua_State *L, int idx, ml_Task **t) {
  Coro *c = test_coro(L, idx);
  int n;
  if (c == NULL) return ML_CORO_NOT;
  if (c->reusable) return ml__coro_claim(L, idx) ? ML_CORO_CLAIMED : ML_CORO_NOT;
  if (c->awaited) {
    lua_getiuservalue(L, idx, CUV_NAME);
    ml__exc_raise(L, "RuntimeError", "cannot reuse already awaited coroutine '%s'",
                  lua_tostring(L, -1));
  }
  n = c->nargs;
  c->awaited = 1;
  lua_pushnil(L); /* the creator: the slot is the task's callbacks' */
  lua_setiuservalue(L, idx, CUV_CREATOR);
  *t = lua_touserdata(L, idx);
  memset(*t, 0, sizeof(ml_Task));
  (*t)->coro_nargs = (unsigned short)n;
  /* The Task's metatable has no __gc: the finaliser's call is skipped, as
   * for a claimed Coroutine (is_coro_mt). */
  lua_rawgeti(L, LUA_REGISTRYINDEX, ml__state(L)->udata_mtref[ML_UT_TASK]);
  lua_setmetatable(L, idx);
  return ML_CORO_IN_PLACE;
}

/* [-0, +nargs] A task made in place of a Coroutine (at idx) starts:
 * pushes its nargs arguments and lets them go from its user values (the
 * thread holds them now).  The function is start()'s (task.c): its slot
 * is where the task keeps a thread of its own. */
void ml__coro_unload(lua_State *L, int idx, int nargs) {
  int i;
  luaL_checkstack(L, nargs + 2, "too many arguments");
  for (i = CUV_ARGS; i < CUV_ARGS + nargs; i++) lua_getiuservalue(L, idx, i);
  for (i = CUV_ARGS; i < CUV_ARGS + nargs; i++) {
    lua_pushnil(L);
    lua_setiuservalue(L, idx, i);
  }
}

/* [-0, +(nargs+1)] pushes the function and arguments of the task's
 * Coroutine at idx; returns how many. */
int ml__coro_push(lua_State *L, int idx) {
  Coro *c = CORO_OF(lua_touserdata(L, idx)); /* a task's: known to be one */
  int i;
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, c->nargs + 2, "too many arguments");
  lua_getiuservalue(L, idx, CUV_FN);
  for (i = 1; i <= c->nargs; i++) lua_getiuservalue(L, idx, CUV_ARGS - 1 + i);
  return c->nargs + 1;
}

/* [-0, +1] pushes the name of the Coroutine at idx. */
void ml__coro_push_name(lua_State *L, int idx) { lua_getiuservalue(L, idx, CUV_NAME); }

/* Continuation: returns the values above base. */
static int call_k(lua_State *L, int status, lua_KContext base) {
  (void)status;
  return lua_gettop(L) - (int)base;
}

/* await(x): a Coroutine runs inline; a Future or Task suspends the task
 * until it is done; an object with __await has it called.
 * await(x) -> x's results */
static lua_CFunction async_c_body(const ml_State *S, const void *p);

static int l_await(lua_State *L) {
  ml_State *S = ml__state(L);
  lua_CFunction aw;
  void *p = lua_touserdata(L, 1);
  int n;
  lua_settop(L, 1);
  if (S->current == NULL) return ml__task_raise_outside(L);
  if (p == S->sleep0) return ml__task_yield_now(L); /* the hot sleep(0) */
  if (p && lua_getmetatable(L, 1)) {
    const void *mt = lua_topointer(L, -1);
    lua_pop(L, 1);
    if (ml__is_future_mt(S, mt)) return ml__await_future(L, p);
    if (is_coro_mt(S, mt)) {
      n = ml__coro_unpack(L, 1);
      lua_callk(L, n - 1, LUA_MULTRET, 1, call_k);
      return call_k(L, LUA_OK, 1);
    }
    /* A metatable of ml__await_register: its body in this very frame. */
    if ((aw = async_c_body(S, mt)) != NULL) return aw(L);
  }
  if (luaL_getmetafield(L, 1, "__await") != LUA_TNIL) {
    lua_pushvalue(L, 1);
    lua_callk(L, 1, LUA_MULTRET, 1, call_k);
    return call_k(L, LUA_OK, 1);
  }
  return ml__exc_raise(L, "TypeError", "object is not awaitable (a %s value)", luaL_typename(L, 1));
}

/* What awcall does after calling something that is not an async
 * function: await its result (left at index 1).  -> its results */
static int awcall_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return l_await(L);
}

/* The async C functions (ml__push_async): a small open-addressed table
 * from the closure's address to its body, filled as they are made, with
 * the closures anchored (so an address is never reused while it is in the
 * table).  awcall finds a C body with one lua_topointer instead of
 * lua_tocfunction, lua_getupvalue and lua_tocfunction (docs/performance.md,
 * "Queue ping-pong"). */
#define ASYNC_C_SLOTS 64 /* a power of two; moonloop makes about ten */
static const char async_c_key = 'C';

struct ml_AsyncC {
  struct {
    const void *fn;
    lua_CFunction body;
  } e[ASYNC_C_SLOTS];
  int n;
};

static size_t async_c_hash(const void *p) { return ((uintptr_t)p >> 4) & (ASYNC_C_SLOTS - 1); }

static lua_CFunction async_c_body(const ml_State *S, const void *p) {
  const struct ml_AsyncC *A = S->asyncc;
  size_t i = async_c_hash(p);
  while (A->e[i].fn != NULL) {
    if (A->e[i].fn == p) return A->e[i].body;
    i = (i + 1) & (ASYNC_C_SLOTS - 1);
  }
  return NULL;
}

/* Registers the async C function at the top, of body f.  [-0, +0] */
static void async_c_register(lua_State *L, lua_CFunction f) {
  ml_State *S = ml__state(L);
  struct ml_AsyncC *A = S->asyncc;
  const void *p = lua_topointer(L, -1);
  size_t i = async_c_hash(p);
  if (A == NULL || 2 * (A->n + 1) > ASYNC_C_SLOTS) return; /* awcall's slow path then */
  while (A->e[i].fn != NULL) i = (i + 1) & (ASYNC_C_SLOTS - 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, A); /* the anchors */
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, ++A->n);
  lua_pop(L, 1);
  A->e[i].fn = p;
  A->e[i].body = f;
}

/* Raises Lua's own error for calling the value at 1 from `await f(...)`:
 * "attempt to call a nil value (field 'typo')", naming the callee as the
 * pass recorded it (dialect/loader.c, registry "moonloop.awnames"), at
 * the line of the caller, level 1.  Never returns. */
static int awcall_error(lua_State *L) {
  lua_Debug ar;
  const char *what = NULL;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0 &&
      lua_getfield(L, LUA_REGISTRYINDEX, "moonloop.awnames") == LUA_TTABLE &&
      lua_getfield(L, -1, ar.source) == LUA_TTABLE &&
      lua_rawgeti(L, -1, ar.currentline) == LUA_TSTRING) {
    what = lua_tostring(L, -1);
    if (*what == '\'') {
      /* A name: a local of the caller, an upvalue of it, or a global. */
      size_t n = strlen(what) - 2;
      const char *kind = "global", *nm;
      int i;
      for (i = 1; (nm = lua_getlocal(L, &ar, i)) != NULL; i++) {
        lua_pop(L, 1);
        if (strlen(nm) == n && memcmp(nm, what + 1, n) == 0) kind = "local";
      }
      if (*kind == 'g' && lua_getinfo(L, "f", &ar)) {
        for (i = 1; (nm = lua_getupvalue(L, -1, i)) != NULL; i++) {
          lua_pop(L, 1);
          if (strlen(nm) == n && memcmp(nm, what + 1, n) == 0) kind = "upvalue";
        }
        lua_pop(L, 1);
      }
      what = lua_pushfstring(L, "%s %s", kind, what);
    }
  }
  if (what) return luaL_error(L, "attempt to call a %s value (%s)", luaL_typename(L, 1), what);
  return luaL_error(L, "attempt to call a %s value", luaL_typename(L, 1));
}

/* [f, args...]: an await of f(args...): an async function's body runs
 * inline with no Coroutine object; anything else is called and its result
 * awaited.  -> the await's results */
static int awcall(lua_State *L) {
  ml_State *S = ml__state(L);
  lua_CFunction cf;
  int n = lua_gettop(L) - 1;
  if (S->current == NULL) return ml__task_raise_outside(L);
  if ((cf = async_c_body(S, lua_topointer(L, 1))) != NULL) {
    /* An async C body runs in this very frame, its arguments at 1..n: its
     * continuations become ours, and a C call boundary is saved
     * (docs/performance.md, "Queue ping-pong"). */
    lua_remove(L, 1);
    return cf(L);
  }
  cf = lua_tocfunction(L, 1);
  if (cf == coro_make || cf == sleep_make) {
    if (cf == sleep_make && n == 1 && lua_type(L, 2) == LUA_TNUMBER && lua_tonumber(L, 2) <= 0)
      return ml__task_yield_now(L); /* the hot sleep(0) */
    lua_getupvalue(L, 1, 2);
    if ((cf = lua_tocfunction(L, -1)) != NULL) { /* a C body not in the table */
      lua_pop(L, 1);
      lua_remove(L, 1);
      return cf(L);
    }
    lua_replace(L, 1);
    lua_callk(L, n, LUA_MULTRET, 0, call_k);
    return lua_gettop(L);
  }
  if (!lua_isfunction(L, 1) && luaL_getmetafield(L, 1, "__call") == LUA_TNIL)
    return awcall_error(L);
  lua_settop(L, n + 1);
  lua_callk(L, n, 1, 0, awcall_k);
  return awcall_k(L, LUA_OK, 0);
}

/* [-1, +1] replaces the traceback string on top by one without the
 * __awcall/__awmeth frames (the user wrote await). */
void ml__coro_clean_traceback(lua_State *L) {
  static const char frame[] = "\n\t[C]: in function '__aw";
  size_t len;
  const char *tb = lua_tolstring(L, -1, &len), *p, *end, *hit;
  luaL_Buffer b;
  if (tb == NULL || strstr(tb, frame) == NULL) return;
  end = tb + len;
  luaL_buffinit(L, &b);
  for (p = tb; (hit = strstr(p, frame)) != NULL;) {
    const char *nl = memchr(hit + 1, '\n', (size_t)(end - hit - 1));
    luaL_addlstring(&b, p, (size_t)(hit - p));
    p = nl ? nl : end;
  }
  luaL_addlstring(&b, p, (size_t)(end - p));
  luaL_pushresult(&b);
  lua_remove(L, -2);
}

/* __awcall(f, ...) -> the results: what the pass makes of `await f(...)`. */
static int l_awcall(lua_State *L) {
  luaL_checkany(L, 1);
  return awcall(L);
}

/* __awmeth(obj, name, ...) -> the results: what the pass makes of
 * `await obj:name(...)`.
 * The stack moves are the fewest API calls for each case: each costs
 * (docs/performance.md, "Where the time goes"), and a queue round trip makes
 * four of these. */
static int l_awmeth(lua_State *L) {
  ml_State *S = ml__state(L);
  lua_CFunction body;
  if (lua_gettop(L) < 2) return luaL_error(L, "__awmeth expects an object and a method name");
  lua_pushvalue(L, 2); /* the name is a string constant of the pass */
  if (lua_gettable(L, 1) == LUA_TNIL)
    return luaL_error(L, "attempt to call a nil value (method '%s')", luaL_checkstring(L, 2));
  if (S->current != NULL && (body = async_c_body(S, lua_topointer(L, -1))) != NULL) {
    lua_rotate(L, 2, -1); /* [obj, args..., method, name] */
    lua_settop(L, -3);    /* [obj, args...] */
    return body(L);
  }
  lua_rotate(L, 1, 1); /* [method, obj, name, args...] */
  lua_remove(L, 3);    /* [method, obj, args...] */
  return awcall(L);
}

/* asyncio.iscoroutine(x) -> boolean */
static int l_iscoroutine(lua_State *L) {
  lua_pushboolean(L, test_coro(L, 1) != NULL);
  return 1;
}

int ml__coro_isasyncfn(lua_State *L, int idx) {
  lua_CFunction f = lua_tocfunction(L, idx);
  return f != NULL && (f == coro_make || f == sleep_make);
}

/* asyncio.iscoroutinefunction(f) -> boolean */
static int l_iscoroutinefunction(lua_State *L) {
  lua_pushboolean(L, ml__coro_isasyncfn(L, 1));
  return 1;
}

/* c:close() -> nothing */
static int coro_close(lua_State *L) {
  Coro *c = check_coro(L, 1);
  c->awaited = 1;
  return 0;
}

/* __tostring(c) -> string */
static int coro_tostring(lua_State *L) {
  check_coro(L, 1);
  lua_getiuservalue(L, 1, CUV_NAME);
  lua_pushfstring(L, "<coroutine %s>", lua_tostring(L, -1));
  return 1;
}

/* __gc(c) -> nothing; reports a coroutine never awaited. */
static int coro_gc(lua_State *L) {
  Coro *c;
  /* ml__udata_test, inline and leaving the metatable at 2 (nothing here
   * uses index 2): once per coroutine. */
  if (!lua_getmetatable(L, 1) || lua_topointer(L, -1) != ml__state(L)->udata_mt[ML_UT_CORO])
    return 0; /* a script calling __gc on something else */
  c = CORO_OF(lua_touserdata(L, 1));
  if (!c->awaited && !c->reusable) {
    lua_Debug ar;
    c->awaited = 1;
    lua_getiuservalue(L, 1, CUV_NAME);
    if (lua_getiuservalue(L, 1, CUV_CREATOR) == LUA_TSTRING)
      lua_pushfstring(
        L, "coroutine '%s' was never awaited\nCoroutine created at (most recent call first):\n%s",
        lua_tostring(L, -2), lua_tostring(L, -1));
    else if (c->line > 0 && lua_type(L, -1) == LUA_TFUNCTION && lua_getinfo(L, ">S", &ar))
      lua_pushfstring(L, "coroutine '%s' was never awaited (created at %s:%d%s%s%s)",
                      lua_tostring(L, -1), ar.short_src, c->line,
                      c->by_pcall ? " by pcall, which only made it: to run it and catch its "
                                    "errors, write pcall(await, "
                                  : "",
                      !c->by_pcall                       ? ""
                      : strchr(lua_tostring(L, -1), ' ') ? "f"
                                                         : lua_tostring(L, -1),
                      c->by_pcall ? "(...))" : "");
    else lua_pushfstring(L, "coroutine '%s' was never awaited", lua_tostring(L, -2));
    ml__report(L, "RuntimeWarning");
  }
  return 0;
}

static const luaL_Reg coro_methods[] = {
  {"close", coro_close},
  {NULL, NULL},
};

/* [-0, +0] registers the Coroutine metatable and the globals await,
 * __ml_async, __awcall, __awmeth. */
void ml__coro_open(lua_State *L) {
  ml__udata_newmt(L, ML_UT_CORO, ML_CORO_MT);
  luaL_newlib(L, coro_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, coro_tostring);
  lua_setfield(L, -2, "__tostring");
  /* The taken Coroutine's metatable: the same fields but __gc. */
  lua_createtable(L, 0, 4);
  lua_pushnil(L);
  while (lua_next(L, -3)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  ml__state(L)->coro_taken_mt = lua_topointer(L, -1);
  ml__state(L)->coro_taken_mtref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcfunction(L, coro_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  {
    struct ml_AsyncC *A = lua_newuserdatauv(L, sizeof *A, 0);
    memset(A, 0, sizeof *A);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &async_c_key); /* keeps A */
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, A); /* the anchors */
    ml__state(L)->asyncc = A;
  }
  lua_pushcfunction(L, l_await);
  lua_setglobal(L, "await");
  lua_pushcfunction(L, l_async);
  lua_setglobal(L, "__ml_async");
  lua_pushcfunction(L, l_awcall);
  lua_setglobal(L, "__awcall");
  lua_pushcfunction(L, l_awmeth);
  lua_setglobal(L, "__awmeth");
}

/* asyncio.sleep: like any async C function, except that sleep(0) (the
 * "let the others run" idiom, often in a hot loop) returns one shared,
 * reusable Coroutine instead of allocating one per call.
 * sleep(delay, ...) -> coroutine */
static int sleep_make(lua_State *L) {
  if (lua_gettop(L) == 1 && lua_type(L, 1) == LUA_TNUMBER && lua_tonumber(L, 1) <= 0) {
    lua_pushvalue(L, lua_upvalueindex(3));
    return 1;
  }
  return coro_make(L);
}

/* [-0, +1] pushes asyncio.sleep, of C body f. */
void ml__push_async_sleep(lua_State *L, lua_CFunction f) {
  Coro *c;
  lua_pushliteral(L, "sleep");
  lua_pushcfunction(L, f);
  lua_pushinteger(L, 0);
  lua_pushvalue(L, -3);
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, coro_make, 2);
  lua_insert(L, -2);
  lua_call(L, 1, 1); /* the shared sleep(0) coroutine */
  c = CORO_OF(lua_touserdata(L, -1));
  c->reusable = 1;
  c->awaited = 0;
  ml__state(L)->sleep0 = lua_touserdata(L, -1);
  lua_pushcclosure(L, sleep_make, 3);
  async_c_register(L, f); /* sleep(0) runs f too: it yields to the others */
}

/* [-0, +1] pushes an async function named name, of C body f. */
void ml__push_async(lua_State *L, const char *name, lua_CFunction f) {
  lua_pushstring(L, name);
  lua_pushcfunction(L, f);
  lua_pushcclosure(L, coro_make, 2);
  async_c_register(L, f);
}

/* Metatables' addresses share the async C table: a closure and a
 * metatable are different objects, so their addresses never meet. */
void ml__await_register(lua_State *L, lua_CFunction f) { async_c_register(L, f); }

/* For asyncio.core. */
int ml__coro_iscoroutine(lua_State *L) { return l_iscoroutine(L); }
int ml__coro_iscoroutinefunction(lua_State *L) { return l_iscoroutinefunction(L); }
