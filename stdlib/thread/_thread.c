/* _thread.c: worker threads for asyncio.to_thread and run_in_executor
 * (asyncio._thread): thread pools whose threads each own a plain Lua
 * state (the standard libraries and require, no loop), and the copying of
 * functions and values between states.
 *
 * A job travels by value: the function as bytecode (lua_dump, with debug
 * information, so tracebacks name the user's lines) and its upvalues, the
 * arguments, and on the way back the results or the error and the
 * worker's traceback, all encoded in one malloc'ed buffer (encode/decode
 * below).  What can be copied: nil, booleans, numbers, strings, tables of
 * those (shared and cyclic tables keep their shape; metatables are not
 * copied), Lua functions the same way, light userdata (a C address, like
 * cjson.null); an upvalue that is a table of package.loaded is re-required
 * by name on the other side, a C function found in such a table (as in
 * `local insert = table.insert`) is looked up again there, and _ENV is the
 * other state's globals.  Anything else raises TypeError naming it.
 *
 * A pool is malloc'ed, shared by its threads and its Lua object, and freed
 * by whoever lets go of it last.  Threads start on demand up to the pool's
 * size, block every signal, and wait on the pool's condition variable.  A
 * finished job goes back to its state through the core's wake-up
 * (ml__wakeup_send), which wakes ev_run and a polling host alike; the loop
 * is held alive while jobs are out.  A job whose state has closed is
 * dropped by the worker (the send fails with -ESHUTDOWN). */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lualib.h>
#include "core/module.h"
#include "thread/copy.h"
#include "thread/remote.h"

#define ML_EXECUTOR "asyncio.ThreadPoolExecutor"

/* ---------------------------------------------------------------- */
/* Pools and jobs.                                                     */

typedef struct Job {
  struct Job *next;
  struct Pool *pool;
  ml_WakeNode node;
  ml_Wakeup *wake;
  int fref;       /* the Future, in the submitting state's registry */
  int ok;         /* the call succeeded */
  char *copy_err; /* "cls\0message": the results could not be copied */
  char *in, *out; /* encoded call; encoded results or error */
  size_t inlen, outlen;
  struct Paths *paths; /* package.path and cpath of the submitting state */
} Job;

/* The submitting state's package.path and cpath, shared by its jobs while
 * they do not change (the executor keeps the last one), so that a job
 * copies no string and a worker sets them only when they differ from
 * what it set last.  Reference counted: jobs, executors and workers. */
typedef struct Paths {
  atomic_int refs;
  char *path, *cpath;
} Paths;

static Paths *paths_ref(Paths *ps) {
  if (ps) atomic_fetch_add(&ps->refs, 1);
  return ps;
}

static void paths_unref(Paths *ps) {
  if (ps && atomic_fetch_sub(&ps->refs, 1) == 1) {
    free(ps->path);
    free(ps->cpath);
    free(ps);
  }
}

typedef struct Pool {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  Job *head, *tail;
  pthread_cond_t gone; /* a thread has exited (shutdown(wait) waits) */
  int max, nthreads, idle, refs, shutdown;
} Pool;

static void pool_unref(Pool *p) {
  int last;
  pthread_mutex_lock(&p->mu);
  last = --p->refs == 0;
  pthread_mutex_unlock(&p->mu);
  if (last) {
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_cond_destroy(&p->gone);
    free(p);
  }
}

static void job_free(Job *j) {
  free(j->in);
  free(j->out);
  paths_unref(j->paths);
  free(j->copy_err);
  free(j);
}

static const char tb_key = 0;

/* The worker's message handler: keeps the traceback (registry) and the
 * error unchanged.
 * msgh(error) -> error */
static int traceback_msgh(lua_State *L) {
  luaL_traceback(L, L, NULL, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &tb_key);
  return 1;
}

/* Runs the job on the worker's state W and encodes its outcome.
 * [-?, +0] leaves W's stack empty. */
static void run_job(lua_State *W, Job *j, Paths **applied) {
  int st, n;
  ml_Copy out = {0};
  out.home = j->wake; /* the loop goes back as itself */
  lua_settop(W, 0);
  /* An earlier job may have replaced package: raw access, no metamethods,
   * as nothing here may raise outside a protected call. */
  if (j->paths && j->paths != *applied) {
    lua_pushglobaltable(W);
    lua_pushliteral(W, "package");
    if (lua_rawget(W, -2) == LUA_TTABLE) {
      lua_pushliteral(W, "path");
      lua_pushstring(W, j->paths->path);
      lua_rawset(W, -3);
      lua_pushliteral(W, "cpath");
      lua_pushstring(W, j->paths->cpath);
      lua_rawset(W, -3);
    }
    paths_unref(*applied);
    *applied = paths_ref(j->paths);
  }
  lua_settop(W, 0);
  lua_pushcfunction(W, traceback_msgh);
  lua_pushcfunction(W, ml__copy_decode_p);
  lua_pushlightuserdata(W, j->in);
  lua_pushinteger(W, (lua_Integer)j->inlen);
  st = lua_pcall(W, 2, LUA_MULTRET, 1);
  if (st == LUA_OK) {
    /* [msgh, fn, args...] */
    n = lua_gettop(W) - 2;
    st = lua_pcall(W, n, LUA_MULTRET, 1);
  }
  if (st == LUA_OK) {
    j->ok = 1;
    if (ml__copy_fast(W, &out, 2, lua_gettop(W), 0)) goto encoded;
    lua_pushcfunction(W, ml__copy_encode_p);
    lua_insert(W, 2);
    lua_pushlightuserdata(W, &out);
    lua_insert(W, 3);
    lua_pushliteral(W, "result");
    lua_insert(W, 4);
    if (lua_pcall(W, lua_gettop(W) - 2, 0, 0) != LUA_OK) {
      size_t n;
      const char *m = lua_tolstring(W, -1, &n);
      j->ok = 0;
      free(out.p);
      memset(&out, 0, sizeof out);
      if (m && (j->copy_err = malloc(n + 1)) != NULL) memcpy(j->copy_err, m, n + 1);
      lua_settop(W, 0);
      return;
    }
  } else {
    /* [msgh, error]; the traceback is in the registry (missing for errors
     * the handler did not see, as memory errors) */
    lua_settop(W, 2);
    if (st == LUA_ERRRUN) lua_rawgetp(W, LUA_REGISTRYINDEX, &tb_key);
    else lua_pushnil(W);
    lua_pushnil(W);
    lua_rawsetp(W, LUA_REGISTRYINDEX, &tb_key);
    lua_pushcfunction(W, ml__copy_encode_p);
    lua_insert(W, 2);
    lua_pushlightuserdata(W, &out);
    lua_insert(W, 3);
    lua_pushliteral(W, "error");
    lua_insert(W, 4);
    if (lua_pcall(W, 4, 0, 0) != LUA_OK) {
      /* The error itself cannot be copied: the reason goes back. */
      size_t n = 0;
      const char *m = lua_type(W, -1) == LUA_TSTRING ? lua_tolstring(W, -1, &n) : NULL;
      free(out.p);
      memset(&out, 0, sizeof out);
      if (m && (j->copy_err = malloc(n + 1)) != NULL) memcpy(j->copy_err, m, n + 1);
      lua_settop(W, 0);
      return;
    }
  }
encoded:
  lua_settop(W, 0);
  j->out = out.p;
  j->outlen = out.oom ? 0 : out.n;
  if (out.oom) j->ok = 0;
}

/* A thread's Lua states, one per state whose jobs it runs (so that the
 * process's shared pool never lets one state's jobs see another's worker
 * globals): made on the first job of each, closed on the first job after
 * their state has closed, or when an executor's own thread ends. */
#define WSTATES_MAX 8
typedef struct WState {
  ml_Wakeup *owner; /* a reference */
  lua_State *W;
  Paths *applied;
} WState;
static __thread WState wstates[WSTATES_MAX];
static __thread int nwstates;

static void wstate_close(WState *ws) {
  if (ws->W) lua_close(ws->W);
  paths_unref(ws->applied);
  ml__wakeup_release(ws->owner);
  memset(ws, 0, sizeof *ws);
}

/* This thread's state for the jobs of owner, or NULL (out of memory). */
static WState *wstate_for(ml_Wakeup *owner) {
  int i;
  WState *ws;
  for (i = 0; i < nwstates; i++)
    if (wstates[i].owner == owner) return &wstates[i];
  for (i = 0; i < nwstates;) { /* drop the states of closed states */
    if (ml__wakeup_closed(wstates[i].owner)) {
      wstate_close(&wstates[i]);
      wstates[i] = wstates[--nwstates];
      memset(&wstates[nwstates], 0, sizeof wstates[0]);
    } else {
      i++;
    }
  }
  if (nwstates == WSTATES_MAX) { /* the oldest makes room */
    wstate_close(&wstates[0]);
    memmove(&wstates[0], &wstates[1], sizeof wstates[0] * (WSTATES_MAX - 1));
    memset(&wstates[--nwstates], 0, sizeof wstates[0]);
  }
  ws = &wstates[nwstates];
  if ((ws->W = luaL_newstate()) == NULL) return NULL;
  luaL_openlibs(ws->W);
  ml__remote_worker_open(ws->W);
  ws->owner = owner;
  ml__wakeup_retain(owner);
  nwstates++;
  return ws;
}

/* Runs j on this thread, in the state for its owner. */
static void job_run_here(Job *j) {
  WState *ws = wstate_for(j->wake);
  if (ws) run_job(ws->W, j, &ws->applied);
  else {
    static const char err[] = "MemoryError\0no memory for a worker's Lua state";
    if ((j->copy_err = malloc(sizeof err)) != NULL) memcpy(j->copy_err, err, sizeof err);
  }
}

static void *worker_main(void *arg) {
  Pool *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    Job *j;
    while (p->head == NULL && !p->shutdown) {
      p->idle++;
      pthread_cond_wait(&p->cv, &p->mu);
      p->idle--;
    }
    if (p->head == NULL) { /* shut down and drained */
      pthread_mutex_unlock(&p->mu);
      break;
    }
    j = p->head;
    p->head = j->next;
    if (p->head == NULL) p->tail = NULL;
    pthread_mutex_unlock(&p->mu);
    job_run_here(j);
    if (ml__wakeup_send(j->wake, &j->node) != 0) {
      /* The state has closed: nobody wants the result. */
      ml__wakeup_release(j->wake);
      job_free(j);
    }
    pthread_mutex_lock(&p->mu);
  }
  while (nwstates > 0) wstate_close(&wstates[--nwstates]);
  pthread_mutex_lock(&p->mu);
  p->nthreads--;
  pthread_cond_broadcast(&p->gone);
  pthread_mutex_unlock(&p->mu);
  pool_unref(p);
  return NULL;
}

/* Starts a thread if none is idle and the pool may grow; mu held. */
static int pool_grow(Pool *p) {
  pthread_t th;
  pthread_attr_t a;
  sigset_t all, old;
  int r;
  if (p->idle > 0 || p->nthreads >= p->max) return 0;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&a, 2 * 1024 * 1024);
  sigfillset(&all); /* workers never take the process's signals */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  p->refs++;
  r = pthread_create(&th, &a, worker_main, p);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&a);
  if (r != 0) {
    p->refs--;
    return p->nthreads > 0 ? 0 : -r; /* the threads there are will do it */
  }
  p->nthreads++;
  return 0;
}

/* Loop thread: the job is back (or its state closed: S == NULL).
 * [-0, +0] on the main state: settles the job's Future. */
static void job_settle(ml_State *S, Job *j);

static void job_done(ml_State *S, void *ud) {
  Job *j = ud;
  if (S) ml__loop_unhold(S);
  job_settle(S, j);
}

/* The shared pool's two halves (threadpool.c holds the loop itself). */
static void shared_work(void *ud) { job_run_here(ud); }
static void shared_done(ml_State *S, void *ud) { job_settle(S, ud); }

static void job_settle(ml_State *S, Job *j) {
  lua_State *L;
  int top, st;
  if (S == NULL) {
    ml__wakeup_release(j->wake);
    job_free(j);
    return;
  }
  L = ml__main_lua(S);
  top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, j->fref);
  luaL_unref(L, LUA_REGISTRYINDEX, j->fref);
  if (ml__future_state(ml__future_test(L, -1)) == ML_PENDING) {
    if (j->copy_err) {
      const char *cls = j->copy_err, *msg = cls + strlen(cls) + 1;
      if (strcmp(cls, "TypeError") && strcmp(cls, "ValueError") && strcmp(cls, "MemoryError")) {
        msg = cls;
        cls = "TypeError";
      }
      ml__exc_push(L, cls, "%s", msg);
      st = LUA_ERRRUN;
    } else if (j->out == NULL) {
      ml__exc_push(L, "MemoryError", "the worker's results could not be copied");
      st = LUA_ERRMEM;
    } else {
      lua_pushcfunction(L, ml__copy_decode_p);
      lua_pushlightuserdata(L, j->out);
      lua_pushinteger(L, (lua_Integer)j->outlen);
      st = lua_pcall(L, 2, LUA_MULTRET, 0);
    }
    if (st != LUA_OK) {
      lua_settop(L, top + 2);
      ml__future_set_exception(L, top + 1);
    } else if (j->ok) {
      ml__future_set_result(L, top + 1, lua_gettop(L) - top - 1);
    } else {
      /* [future, error, traceback] */
      if (lua_gettop(L) < top + 3) lua_settop(L, top + 3);
      if (lua_istable(L, top + 2) && !lua_isnil(L, top + 3)) {
        lua_pushvalue(L, top + 3);
        lua_setfield(L, top + 2, "worker_traceback");
      }
      lua_settop(L, top + 2);
      ml__future_set_exception(L, top + 1);
    }
  }
  lua_settop(L, top);
  ml__wakeup_release(j->wake);
  job_free(j);
}

typedef struct Exec {
  Pool *pool;   /* NULL for the default executor: the process's shared pool */
  Paths *paths; /* what its last job was given */
  int shared, shut;
} Exec;

/* [-0, +0] the executor at 1, or raises. */
static Exec *check_exec(lua_State *L) { return luaL_checkudata(L, 1, ML_EXECUTOR); }

/* new(n) -> executor: a pool of up to n threads (n >= 1). */
static int l_new(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  Exec *x;
  Pool *p;
  if (n < 1) return ml__exc_raise(L, "ValueError", "max_workers must be greater than 0");
  if (n > 1024) return ml__exc_raise(L, "ValueError", "max_workers must be at most 1024");
  x = lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  luaL_setmetatable(L, ML_EXECUTOR);
  p = calloc(1, sizeof *p);
  if (p == NULL) return ml__exc_raise(L, "MemoryError", "thread pool");
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  pthread_cond_init(&p->gone, NULL);
  p->max = (int)n;
  p->refs = 1;
  x->pool = p;
  return 1;
}

/* default_executor() -> executor: the default executor, whose threads are
 * the process's one pool (threadpool.c: min(32, cores + 4) threads, shared
 * with name resolution and ml_work_submit). */
static int l_default_executor(lua_State *L) {
  Exec *x = lua_newuserdatauv(L, sizeof *x, 0);
  memset(x, 0, sizeof *x);
  x->shared = 1;
  luaL_setmetatable(L, ML_EXECUTOR);
  return 1;
}

/* [-0, +0] a reference to the Paths of package.path and cpath now: the
 * executor's last one if they have not changed, or NULL (no package
 * table, no strings, or no memory: the worker keeps what it has). */
static Paths *current_paths(lua_State *L, Exec *x) {
  const char *path, *cpath;
  Paths *ps = NULL;
  if (lua_getglobal(L, "package") != LUA_TTABLE) {
    lua_pop(L, 1);
    return NULL;
  }
  lua_getfield(L, -1, "path");
  lua_getfield(L, -2, "cpath");
  path = lua_tostring(L, -2);
  cpath = lua_tostring(L, -1);
  if (path && cpath) {
    if (x->paths && strcmp(x->paths->path, path) == 0 && strcmp(x->paths->cpath, cpath) == 0) {
      ps = paths_ref(x->paths);
    } else if ((ps = calloc(1, sizeof *ps)) != NULL) {
      ps->path = strdup(path);
      ps->cpath = strdup(cpath);
      atomic_init(&ps->refs, 1);
      if (ps->path == NULL || ps->cpath == NULL) {
        paths_unref(ps);
        ps = NULL;
      } else {
        paths_unref(x->paths);
        x->paths = paths_ref(ps);
      }
    }
  }
  lua_pop(L, 3);
  return ps;
}

/* ex:_submit(fn, ...) -> Future: fn(...) on a worker thread. */
static int ex_submit(lua_State *L) {
  Exec *x = check_exec(L);
  Pool *p = x->pool;
  ml_State *S = ml__state(L);
  ml_Copy in = {0};
  Job *j;
  int n = lua_gettop(L), r;
  if (x->shut || (!x->shared && (p == NULL || p->shutdown)))
    return ml__exc_raise(L, "RuntimeError", "cannot schedule new futures after shutdown");
  luaL_checktype(L, 2, LUA_TFUNCTION);
  /* The loop may cross as itself: the job holds a reference on its
   * wake-up until the copy is decoded.  (The state holds one meanwhile.) */
  in.home = ml__wakeup_acquire(S);
  ml__wakeup_release(in.home);
  /* Encode fn and the arguments first: that raises on what cannot cross. */
  if (!ml__copy_fast(L, &in, 2, n, 1)) {
    lua_pushcfunction(L, ml__copy_encode_p);
    lua_pushlightuserdata(L, &in);
    lua_pushliteral(L, "argument");
    for (int i = 2; i <= n; i++) lua_pushvalue(L, i);
    if (lua_pcall(L, n + 1, 0, 0) != LUA_OK) {
      free(in.p);
      return lua_error(L);
    }
  }
  ml__future_new(L);
  j = calloc(1, sizeof *j);
  if (j == NULL || (j->wake = ml__wakeup_acquire(S)) == NULL) {
    free(j);
    free(in.p);
    return ml__exc_raise(L, "MemoryError", "thread job");
  }
  j->in = in.p;
  j->inlen = in.n;
  j->paths = current_paths(L, x);
  j->node.fn = job_done;
  j->node.ud = j;
  j->pool = p;
  lua_pushvalue(L, -1);
  j->fref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (x->shared) {
    r = ml__pool_submit(S, shared_work, shared_done, j);
    if (r != 0) {
      luaL_unref(L, LUA_REGISTRYINDEX, j->fref);
      ml__wakeup_release(j->wake);
      job_free(j);
      ml__exc_push_errno(L, -r, "starting a worker thread");
      return lua_error(L);
    }
    return 1;
  }
  pthread_mutex_lock(&p->mu);
  r = pool_grow(p);
  if (r == 0) {
    if (p->tail) p->tail->next = j;
    else p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
  if (r != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, j->fref);
    ml__wakeup_release(j->wake);
    job_free(j);
    ml__exc_push_errno(L, -r, "starting a worker thread");
    return lua_error(L);
  }
  ml__loop_hold(S);
  return 1;
}

/* ex:shutdown(wait): no new jobs; the queued ones still run.  With wait
 * (the default), blocks until every thread has finished.  -> nothing */
static int ex_shutdown(lua_State *L) {
  Exec *x = check_exec(L);
  Pool *p = x->pool;
  int wait = lua_isnone(L, 2) || lua_toboolean(L, 2);
  x->shut = 1; /* the shared pool itself runs on: it serves the process */
  if (p == NULL) return 0;
  pthread_mutex_lock(&p->mu);
  if (!p->shutdown) {
    p->shutdown = 1;
    pthread_cond_broadcast(&p->cv);
  }
  while (wait && p->nthreads > 0) pthread_cond_wait(&p->gone, &p->mu);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

/* __gc(ex) -> nothing: shuts down without waiting. */
static int ex_gc(lua_State *L) {
  Exec *x = luaL_testudata(L, 1, ML_EXECUTOR);
  if (x == NULL) return 0;
  paths_unref(x->paths);
  x->paths = NULL;
  if (x->pool == NULL) return 0;
  lua_settop(L, 1);
  lua_pushboolean(L, 0);
  ex_shutdown(L);
  pool_unref(x->pool);
  x->pool = NULL;
  return 0;
}

/* ex:max_workers() -> integer */
static int ex_max_workers(lua_State *L) {
  Exec *x = check_exec(L);
  lua_pushinteger(L, x->shared ? ml__pool_size() : x->pool ? x->pool->max : 0);
  return 1;
}

/* __tostring(ex) -> string */
static int ex_tostring(lua_State *L) {
  Exec *x = check_exec(L);
  lua_pushfstring(L, "<ThreadPoolExecutor max_workers=%d%s%s>",
                  x->shared ? ml__pool_size()
                  : x->pool ? x->pool->max
                            : 0,
                  x->shared ? " (the shared pool)" : "",
                  !x->shut && (x->shared || (x->pool && !x->pool->shutdown)) ? "" : " shutdown");
  return 1;
}

/* cpu_count() -> the number of online processors. */
static int l_cpu_count(lua_State *L) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  lua_pushinteger(L, n > 0 ? n : 1);
  return 1;
}

static const luaL_Reg ex_methods[] = {
  {"_submit", ex_submit},
  {"shutdown", ex_shutdown},
  {"max_workers", ex_max_workers},
  {NULL, NULL},
};

static const luaL_Reg funcs[] = {
  {"new", l_new},
  {"default_executor", l_default_executor},
  {"cpu_count", l_cpu_count},
  {NULL, NULL},
};

/* [-0, +1] pushes the module table (new, cpu_count, Executor). */
int luaopen_asyncio__thread(lua_State *L) {
  if (luaL_newmetatable(L, ML_EXECUTOR)) {
    luaL_newlib(L, ex_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ex_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ex_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  ml__remote_open(L);
  luaL_getmetatable(L, ML_EXECUTOR);
  lua_setfield(L, -2, "Executor"); /* the metatable: methods in __index */
  return 1;
}
