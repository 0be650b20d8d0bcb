/* embed.c: the embedding API's states: per-state data, errors, loading,
 * spawning, running and stepping from a foreign loop, host functions.
 * Futures are in hostfuture.c, limits and the sandbox in sandbox.c. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "embed.h"
#include "dialect/asyncpass.h"

#define EMBED_MT "moonloop.embed"

/* Registry keys: their addresses. */
static const char anchors_key = 'A', box_key = 'B';

/* ---- per-state data ---- */

static int embed_gc(lua_State *L) {
  ml_Embed **box = luaL_testudata(L, 1, EMBED_MT), *E;
  if (box == NULL || (E = *box) == NULL) return 0;
  *box = NULL;
  ml__hostfuture_close(E);
  if (E->S->embed == E) E->S->embed = NULL;
  free(E);
  return 0;
}

/* Makes the registry box that frees E with the Lua state.  [-0, +0] */
static int embed_box(lua_State *L) {
  ml_Embed **box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = lua_touserdata(L, 1);
  if (luaL_newmetatable(L, EMBED_MT)) {
    lua_pushcfunction(L, embed_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &box_key);
  return 0;
}

/* The stdlib on top of the core, and the global asyncio.  [-0, +0] */
static int open_stdlib(lua_State *L) {
  ml__stdlib_open(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "asyncio");
  lua_call(L, 1, 1);
  lua_setglobal(L, "asyncio");
  return 0;
}

ml_State *ml_state_new(struct ev_loop *loop) {
  ml_State *S = ml__state_new(loop);
  if (S == NULL) return NULL;
  lua_pushcfunction(S->L, open_stdlib);
  if (lua_pcall(S->L, 0, 0, 0) != LUA_OK || ml__embed(S) == NULL) {
    ml__state_close(S);
    return NULL;
  }
  return S;
}

void ml_state_close(ml_State *S) { ml__state_close(S); }

lua_State *ml_state_lua(ml_State *S) { return S->L; }

ml_Embed *ml__embed(ml_State *S) {
  ml_Embed *E = S->embed;
  lua_State *L = S->L;
  if (E) return E;
  E = calloc(1, sizeof *E);
  if (E == NULL) return NULL;
  E->S = S;
  E->backend_fd = -2;
  if (!lua_checkstack(L, 3)) {
    free(E);
    return NULL;
  }
  lua_pushcfunction(L, embed_box);
  lua_pushlightuserdata(L, E);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    free(E);
    return NULL;
  }
  /* From here on the box owns E. */
  S->embed = E;
  return E;
}

int ml__embed_fail(ml_State *S, int rc, const char *fmt, ...) {
  ml_Embed *E = S->embed;
  va_list ap;
  if (E == NULL) return rc;
  va_start(ap, fmt);
  vsnprintf(E->err, sizeof E->err, fmt, ap);
  va_end(ap);
  return rc;
}

/* Clears the last error at the start of an entry point.  Returns E, or
 * NULL if there is no memory for it. */
static ml_Embed *enter(ml_State *S) {
  ml_Embed *E = ml__embed(S);
  if (E) E->err[0] = '\0';
  return E;
}

#define ENTER(S, E)       \
  ml_Embed *E = enter(S); \
  if (E == NULL) return -ENOMEM

/* tostring(v) for the message of an error value, in protected mode. */
static int tostring_p(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* Records the error value on top of L as S's message and pops it.
 * Returns rc, or -ENOMEM for a memory error (status LUA_ERRMEM). */
static int record_error(lua_State *L, int status, int rc) {
  ml_State *S = ml__state(L);
  const char *msg = NULL;
  if (status == LUA_ERRMEM) {
    lua_pop(L, 1);
    return ml__embed_fail(S, -ENOMEM, "MemoryError: not enough memory (Lua heap: %zu bytes in use)",
                          ml__alloc_used(S->alloc));
  }
  if (lua_type(L, -1) == LUA_TSTRING) {
    msg = lua_tostring(L, -1);
  } else if (lua_checkstack(L, 2)) {
    lua_pushcfunction(L, tostring_p);
    lua_pushvalue(L, -2);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
      lua_replace(L, -2);
      msg = lua_tostring(L, -1);
    } else {
      lua_pop(L, 1);
    }
  }
  ml__embed_fail(S, rc, "%s", msg ? msg : "(error object is not a string)");
  lua_pop(L, 1);
  return rc;
}

int ml__embed_pcall(lua_State *L, lua_CFunction f, void *ud) {
  int st;
  if (!lua_checkstack(L, 3)) return ml__embed_fail(ml__state(L), -ENOMEM, "not enough memory");
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, ud);
  st = lua_pcall(L, 1, 0, 0);
  return st == LUA_OK ? ML_OK : record_error(L, st, -EINVAL);
}

/* ---- anchors ---- */

/* [-0, +1] pushes the anchors table, making it on first use. */
static void push_anchors(lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &anchors_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &anchors_key);
}

void ml__anchor_set(lua_State *L, int idx, void *p) {
  idx = lua_absindex(L, idx);
  push_anchors(L);
  lua_pushvalue(L, idx);
  lua_rawsetp(L, -2, p);
  lua_pop(L, 1);
}

int ml__anchor_push(lua_State *L, void *p) {
  int t;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &anchors_key) != LUA_TTABLE) return LUA_TNIL;
  t = lua_rawgetp(L, -1, p);
  lua_remove(L, -2);
  return t;
}

void ml__anchor_clear(lua_State *L, void *p) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &anchors_key) == LUA_TTABLE) {
    lua_pushnil(L);
    lua_rawsetp(L, -2, p); /* clearing a field never allocates */
  }
  lua_pop(L, 1);
}

/* ---- the state ---- */

ml_State *ml_state_from_lua(lua_State *L) { return ml__state(L); }

struct ev_loop *ml_state_loop(ml_State *S) {
  return S->loop;
}

const char *ml_state_error(ml_State *S) {
  ml_Embed *E = S->embed;
  return E ? E->err : "";
}

void ml_state_set_error_handler(ml_State *S, ml_ErrorHandler h, void *ud) {
  ml_Embed *E = enter(S);
  S->on_error = h;
  S->on_error_ud = ud;
  /* A host that handles errors hears of a failed task when it fails. */
  if (E && !E->report_at_finish_set) S->report_at_finish = h != NULL;
}

void ml_state_set_report_at_finish(ml_State *S, int on) {
  ml_Embed *E = enter(S);
  if (E) E->report_at_finish_set = 1;
  S->report_at_finish = on != 0;
}

void ml_state_set_userdata(ml_State *S, void *ud) {
  ml_Embed *E = enter(S);
  if (E) E->userdata = ud;
}

void *ml_state_userdata(ml_State *S) {
  ml_Embed *E = S->embed;
  return E ? E->userdata : NULL;
}

/* ---- loading ---- */

typedef struct Load {
  const char *src, *name;
  size_t len;
  int status;
} Load;

/* [-0, +1] pushes the chunk, or its error message (status in Load). */
static int load_p(lua_State *L) {
  Load *a = lua_touserdata(L, 1);
  a->status = ml__load(L, a->src, a->len, a->name);
  return 1;
}

int ml_load_string(lua_State *L, const char *src, size_t len, const char *chunkname) {
  ml_State *S = ml__state(L);
  Load a = {src, chunkname ? chunkname : "=?", len, LUA_OK};
  int st;
  ENTER(S, E);
  if (!lua_checkstack(L, 3)) return ml__embed_fail(S, -ENOMEM, "not enough memory");
  lua_pushcfunction(L, load_p);
  lua_pushlightuserdata(L, &a);
  st = lua_pcall(L, 1, 1, 0);
  if (st != LUA_OK) return record_error(L, st, -EINVAL);
  if (a.status != LUA_OK) return record_error(L, a.status, -EINVAL);
  return ML_OK;
}

int ml_load_file(lua_State *L, const char *path) {
  ml_State *S = ml__state(L);
  ml_Buf b = {0};
  const char *failed, *shown = path ? path : "stdin";
  char name[1024];
  int rc;
  ENTER(S, E);
  rc = ml__buf_read_file(&b, path, &failed);
  if (rc < 0) {
    ml__buf_free(&b);
    if (rc == -ENOMEM) return ml__embed_fail(S, rc, "cannot read %s: not enough memory", shown);
    return ml__embed_fail(S, rc, "cannot %s %s: %s", failed, shown, strerror(-rc));
  }
  snprintf(name, sizeof name, path ? "@%s" : "=stdin", path);
  rc = ml_load_string(L, b.data ? b.data : "", b.len, name);
  ml__buf_free(&b);
  return rc;
}

/* ---- tasks ---- */

typedef struct Spawn {
  int nargs;
  const char *name;
  ml_Future **out;
} Spawn;

/* The done callback of a task nobody holds a handle on: reports its
 * failure at once, with the traceback, through the error handler. */
static int report_failure(lua_State *L) {
  ml_Future *f = ml__future_test(L, 1);
  if (f == NULL || f->state != ML_EXCEPTION || !f->log_exc) return 0;
  ml__future_retrieved(L, 1, f);
  lua_getfield(L, 1, "get_name");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  lua_pushfstring(L, "uncaught error in task '%s'", lua_tostring(L, -1));
  lua_getiuservalue(L, 1, FUV_RESULT);
  ml__xget(L, 1, X_TB);
  ml__report_tb(L, lua_tostring(L, -3));
  return 0;
}

/* [fn, args..., spawn] -> spawns; no results. */
static int spawn_p(lua_State *L) {
  Spawn *a = lua_touserdata(L, -1);
  ml_Task *t;
  int fidx;
  lua_pop(L, 1);
  fidx = lua_gettop(L) - a->nargs;
  /* An async function: call it for its Coroutine, which the task runs
   * (spawning the function itself would only make the Coroutine). */
  lua_pushcfunction(L, ml__coro_iscoroutinefunction);
  lua_pushvalue(L, fidx);
  lua_call(L, 1, 1);
  if (lua_toboolean(L, -1)) {
    lua_pop(L, 1);
    lua_call(L, a->nargs, 1);
    a->nargs = 0;
  } else {
    lua_pop(L, 1);
  }
  t = ml__task_spawn(L, a->nargs, a->name);
  if (a->out) {
    ml__anchor_set(L, -1, &t->fut);
    t->fut.host_held = 1; /* no report at finish: the host looks */
    *a->out = &t->fut;
  } else {
    lua_getfield(L, -1, "add_done_callback");
    lua_pushvalue(L, -2);
    lua_pushcfunction(L, report_failure);
    lua_call(L, 2, 0);
  }
  return 0;
}

/* 1 if the value at idx is a Coroutine.  [-0, +0]; never raises. */
static int is_coroutine(lua_State *L, int idx) {
  int r;
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, ml__coro_iscoroutine);
  lua_pushvalue(L, idx);
  lua_call(L, 1, 1);
  r = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return r;
}

int ml_task_spawn(lua_State *L, int nargs, const char *name, ml_Future **task) {
  ml_State *S = ml__state(L);
  ml_Embed *E = enter(S);
  Spawn a = {nargs, name, task};
  int st;
  if (task) *task = NULL;
  if (nargs < 0 || lua_gettop(L) < nargs + 1)
    return ml__embed_fail(S, -EINVAL, "ml_task_spawn: fewer than nargs + 1 values on the stack");
  if (!lua_isfunction(L, -nargs - 1) && !is_coroutine(L, -nargs - 1) &&
      !luaL_getmetafield(L, -nargs - 1, "__call")) {
    const char *tn = luaL_typename(L, -nargs - 1);
    lua_pop(L, nargs + 1);
    return ml__embed_fail(S, -EINVAL,
                          "ml_task_spawn: a %s is not callable (a function, an async "
                          "function or a Coroutine is needed)",
                          tn);
  } else if (!lua_isfunction(L, -nargs - 1) && !is_coroutine(L, -nargs - 1)) {
    lua_pop(L, 1); /* the metafield */
  }
  if (E == NULL || !lua_checkstack(L, 3)) {
    lua_pop(L, nargs + 1);
    return ml__embed_fail(S, -ENOMEM, "not enough memory");
  }
  lua_pushcfunction(L, spawn_p);
  lua_insert(L, -nargs - 2);
  lua_pushlightuserdata(L, &a);
  st = lua_pcall(L, nargs + 2, 0, 0);
  if (st != LUA_OK) {
    if (task) *task = NULL;
    return record_error(L, st, -EINVAL);
  }
  return ML_OK;
}

/* ---- running ---- */

typedef struct Run {
  ml_Future *until;
  int step; /* ml__sched_step instead of ml__sched_run */
  int rc;
} Run;

static int run_p(lua_State *L) {
  Run *a = lua_touserdata(L, 1);
  ml_State *S = ml__state(L);
  a->rc = a->step ? ml__sched_step(S) : ml__sched_run(S, a->until);
  return 0;
}

/* Runs the scheduler in protected mode, so that an error it cannot handle
 * (memory, in its own bookkeeping) is returned, not a panic. */
static int run(ml_State *S, Run *a) {
  int running = S->running, rc;
  ml_Task *current = S->current;
  if (S->running || S->current)
    return ml__embed_fail(S, -EBUSY, "the loop is already running (called from a host function?)");
  if (S->budget_dead) goto dead;
  rc = ml__embed_pcall(S->L, run_p, a);
  if (rc < 0) {
    S->running = running;
    S->current = current;
  }
  /* A stop (ml_state_stop, loop:stop()) ends the run it was made in and
   * no later one: the run may have ended first for another reason (its
   * future done, a step's one iteration over). */
  S->stopping = 0;
  if (S->budget_dead) goto dead;
  return rc;
dead:
  return ml__embed_fail(S, -ETIMEDOUT,
                        "a task ran past the CPU budget and the host chose to stop "
                        "the whole state (ML_BUDGET_STATE): it runs nothing more; close it");
}

int ml_state_run(ml_State *S) {
  Run a = {NULL, 0, 0};
  int rc;
  ENTER(S, E);
  rc = run(S, &a);
  return rc < 0 ? rc : a.rc;
}

int ml_state_run_until(ml_State *S, ml_Future *f) {
  Run a = {f, 0, 0};
  int rc;
  ENTER(S, E);
  if (f == NULL) return ml__embed_fail(S, -EINVAL, "ml_state_run_until: no future");
  rc = run(S, &a);
  if (rc < 0) return rc;
  if (a.rc == -EDEADLK)
    return ml__embed_fail(S, -EDEADLK,
                          "the future can never complete: nothing is left that "
                          "could complete it (no ready task, timer, watcher or host future)");
  return a.rc;
}

/* ---- stepping from a foreign loop ----
 *
 * libev has no call for "the loop's fd" or "when is the next timer".  The
 * fd: an ev_embed watcher reads the backend fd of the loop it embeds, so a
 * throw-away helper loop embeds ours once to learn it (epoll's fd, which
 * is readable when any watched fd, the async pipe or a signal is).  The
 * timers: sched.c knows them (ml__sched_next_timer). */

static void embed_cb(struct ev_loop *loop, ev_embed *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
}

static int backend_fd(ml_Embed *E) {
  struct ev_loop *helper;
  ev_embed w;
  if (E->backend_fd != -2) return E->backend_fd;
  E->backend_fd = -1;
  if (!(ev_backend(E->S->loop) & ev_embeddable_backends())) return -1;
  helper = ev_loop_new(EVBACKEND_SELECT | EVFLAG_NOENV | EVFLAG_NOSIGMASK | EVFLAG_NOINOTIFY |
                       EVFLAG_NOTIMERFD);
  if (helper == NULL) return -1;
  ev_embed_init(&w, embed_cb, E->S->loop);
  ev_embed_start(helper, &w);
  E->backend_fd = w.io.fd;
  ev_embed_stop(helper, &w);
  ev_loop_destroy(helper);
  return E->backend_fd;
}

/* Seconds until the next timer, rounded up to the millisecond so that a
 * poll() with a millisecond timeout never wakes just before it; -1 if
 * none. */
static double next_timer(ml_State *S) {
  double d = ml__sched_next_timer(S);
  return d < 0 ? -1 : ceil(d * 1000.0) / 1000.0;
}

int ml_state_step(ml_State *S, int *fd, double *timeout) {
  Run a = {NULL, 1, 0};
  int rc;
  ENTER(S, E);
  if (fd) *fd = backend_fd(E);
  if (timeout) *timeout = 0;
  rc = run(S, &a);
  if (rc < 0) return rc;
  if (a.rc) return 1; /* more is ready: step again at once */
  if (!S->alive) {
    if (timeout) *timeout = -1;
    return 0;
  }
  if (timeout) *timeout = next_timer(S);
  return 1;
}

/* ---- host functions and modules ---- */

typedef struct Reg {
  const char *name;
  lua_CFunction f;
  const luaL_Reg *funcs;
  int global;
} Reg;

/* package.preload entry of a module made from a luaL_Reg list: returns
 * the table made at registration. */
static int preloaded_table(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

static int register_p(lua_State *L) {
  Reg *r = lua_touserdata(L, 1);
  if (r->global) {
    lua_pushcfunction(L, r->f);
    lua_setglobal(L, r->name);
    return 0;
  }
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  if (r->funcs) {
    lua_newtable(L);
    luaL_setfuncs(L, r->funcs, 0);
    lua_pushcclosure(L, preloaded_table, 1);
  } else {
    lua_pushcfunction(L, r->f);
  }
  lua_setfield(L, -2, r->name);
  /* A module registered again replaces the loaded one on next require. */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushnil(L);
  lua_setfield(L, -2, r->name);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, ML_HOSTMODS_KEY);
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, r->name);
  return 0;
}

static int do_register(ml_State *S, Reg *r) {
  ENTER(S, E);
  if (r->name == NULL || (r->f == NULL && r->funcs == NULL))
    return ml__embed_fail(S, -EINVAL, "register: a name and a function are needed");
  return ml__embed_pcall(S->L, register_p, r);
}

int ml_state_register(ml_State *S, const char *name, lua_CFunction f) {
  Reg r = {name, f, NULL, 1};
  return do_register(S, &r);
}

int ml_module_register(ml_State *S, const char *name, lua_CFunction open) {
  Reg r = {name, open, NULL, 0};
  return do_register(S, &r);
}

int ml_module_register_funcs(ml_State *S, const char *name, const luaL_Reg *funcs) {
  Reg r = {name, NULL, funcs, 0};
  return do_register(S, &r);
}
