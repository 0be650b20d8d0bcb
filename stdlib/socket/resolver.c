/* resolver.c: name lookups on the core's thread pool (ml__pool_submit in
 * core/module.h), which runs them on a worker and hands them back to the
 * loop that asked through the state's wake-up - the one cross-thread path,
 * which also wakes a host stepping the loop from its own poll().
 *
 * Ownership: a request has two references, its script handle and the
 * pool's (from submission until the pool's done call); the last one frees
 * it.  If the state closes while a worker runs a lookup, the pool's done
 * call comes with S == NULL, on the worker, and only drops the reference:
 * so the count is atomic. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "socket/resolver.h"

static void req_free(ml_Lookup *q) {
  if (q->ai) freeaddrinfo(q->ai);
  free(q);
}

static void req_unref(ml_Lookup *q) {
  if (__atomic_sub_fetch(&q->refs, 1, __ATOMIC_ACQ_REL) == 0) req_free(q);
}

void ml__lookup_run(ml_Lookup *q) {
  if (q->kind == ML_LOOKUP_GAI) {
    errno = 0;
    q->rc =
      getaddrinfo(q->has_host ? q->host : NULL, q->has_serv ? q->serv : NULL, &q->hints, &q->ai);
    q->err = errno;
  } else {
    errno = 0;
    q->rc = getnameinfo((struct sockaddr *)&q->sa, q->salen, q->host, sizeof q->host, q->serv,
                        sizeof q->serv, q->flags);
    q->err = errno;
  }
}

/* ---------------------------------------------------------------- */
/* The pool's two calls, and the script handles of requests.          */

static void lookup_work(void *ud) { ml__lookup_run(ud); }

/* Loop thread: the lookup is done (S == NULL: the state closed; any
 * thread then, and nothing to wake). */
static void lookup_done(ml_State *S, void *ud) {
  ml_Lookup *q = ud;
  if (S && q->task) {
    ml_Task *t = q->task;
    q->task = NULL;
    ml__task_wake(t);
  }
  req_unref(q);
}

#define REQ_MT "moonloop.ResolveRequest"

/* A request handle: the userdata that owns the script side of a request. */
static int reqhandle_gc(lua_State *L) {
  ml_Lookup **pq = ml__udata_test(L, 1, ML_UT_LOOKUP);
  if (pq && *pq) {
    (*pq)->task = NULL;
    req_unref(*pq);
    *pq = NULL;
  }
  return 0;
}

ml_Lookup *ml__lookup_new(lua_State *L, int kind) {
  ml_Lookup **pq = lua_newuserdatauv(L, sizeof *pq, 0);
  *pq = NULL;
  if (ml__udata_newmt(L, ML_UT_LOOKUP, REQ_MT)) {
    lua_pushcfunction(L, reqhandle_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  ml_Lookup *q = calloc(1, sizeof *q);
  if (q == NULL) luaL_error(L, "not enough memory");
  q->kind = kind;
  q->refs = 1;
  *pq = q;
  return q;
}

ml_Lookup *ml__lookup_check(lua_State *L, int idx) {
  ml_Lookup **pq = ml__udata_check(L, idx, ML_UT_LOOKUP);
  return *pq;
}

/* The cancel hook of a task waiting for q: the worker finishes, the
 * handle frees the result.  [-0, +0] */
static int req_hook(lua_State *L, ml_Task *t, void *ud) {
  ml_Lookup *q = ud;
  (void)L;
  (void)t;
  q->task = NULL; /* the worker finishes; the handle frees the result */
  return 0;
}

int ml__lookup_submit(lua_State *L, ml_Lookup *q, lua_KContext ctx, lua_KFunction k) {
  int rc;
  ml__task_check_suspendable(L);
  __atomic_add_fetch(&q->refs, 1, __ATOMIC_ACQ_REL); /* the pool's */
  rc = ml__pool_submit(ml__state(L), lookup_work, lookup_done, q);
  if (rc < 0) {
    q->refs--; /* nothing was queued */
    if (rc == -ENOMEM) luaL_error(L, "not enough memory");
    /* No thread could be started: resolve here rather than fail. */
    ml__lookup_run(q);
    return k(L, LUA_OK, ctx);
  }
  q->task = ml__task_current(L);
  return ml__task_suspend(L, req_hook, q, ctx, k);
}
