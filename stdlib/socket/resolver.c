/* resolver.c: the resolver pool: up to POOL_MAX detached pthreads, shared
 * by every state of the process, that run name lookups (ml_Lookup, see
 * resolver.h) and hand them back to the loop that asked.
 *
 * Ownership: a request has two references, its script handle and the
 * pipeline (queued, running, or finished and not yet delivered); a loop's
 * Resolver has one for its userdata (anchored in the registry) and one
 * per request not delivered, so a state may close while a worker still
 * runs one of its lookups: the worker then frees what it finishes.
 * Every count and list below is under pool.mu. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "socket/resolver.h"

struct ml_Resolver {
  ev_async async;          /* the completion path's watcher (see below) */
  struct ev_loop *loop;
  ml_Lookup *done, *done_tail;  /* finished by workers; pool.mu */
  int refs;                /* the userdata + requests not delivered; pool.mu */
  int closed;              /* pool.mu */
  int inflight;            /* loop thread: submitted, not delivered */
};

#define POOL_MAX 4

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ml_Lookup *head, *tail;
  int nthreads, idle;
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0 };

static void req_free(ml_Lookup *q) {
  if (q->ai) freeaddrinfo(q->ai);
  free(q);
}

static void req_unref(ml_Lookup *q) {
  int n;
  pthread_mutex_lock(&pool.mu);
  n = --q->refs;
  pthread_mutex_unlock(&pool.mu);
  if (n == 0) req_free(q);
}

void ml__lookup_run(ml_Lookup *q) {
  if (q->kind == ML_LOOKUP_GAI) {
    errno = 0;
    q->rc = getaddrinfo(q->has_host ? q->host : NULL, q->has_serv ? q->serv : NULL,
                        &q->hints, &q->ai);
    q->err = errno;
  } else {
    errno = 0;
    q->rc = getnameinfo((struct sockaddr *)&q->sa, q->salen, q->host, sizeof q->host,
                        q->serv, sizeof q->serv, q->flags);
    q->err = errno;
  }
}

/* ---------------------------------------------------------------- */
/* The completion path: how a finished request reaches its loop.  A worker
 * queues it on r->done and signals; on the loop thread, deliver() wakes
 * the waiting tasks.  The signal is an ev_async today, started while
 * requests are in flight: these four small functions are the only ones
 * that know it. */

static void deliver(ml_Resolver *r);

static void async_cb(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop; (void)revents;
  deliver(w->data);
}

static void completion_init(ml_Resolver *r) {
  ev_async_init(&r->async, async_cb);
  r->async.data = r;
}

/* Loop thread: requests are in flight (start) or none is (stop, also when
 * the resolver closes). */
static void completion_start(ml_Resolver *r) { ev_async_start(r->loop, &r->async); }
static void completion_stop(ml_Resolver *r) { ev_async_stop(r->loop, &r->async); }

/* Any thread, pool.mu held: r->done has a request for the loop. */
static void completion_signal(ml_Resolver *r) { ev_async_send(r->loop, &r->async); }

/* Hands a finished request back to its loop; pool.mu held.  Returns 1 if
 * the caller must free the resolver (it was closed and this was the last
 * reference). */
static int finish_locked(ml_Lookup *q) {
  ml_Resolver *r = q->r;
  if (r->closed) {
    if (--q->refs == 0) req_free(q);
    return --r->refs == 0;
  }
  q->next = NULL;
  if (r->done_tail) r->done_tail->next = q;
  else r->done = q;
  r->done_tail = q;
  completion_signal(r);
  return 0;
}

/* Loop thread: wakes the task of every request the workers finished. */
static void deliver(ml_Resolver *r) {
  ml_Lookup *list;
  pthread_mutex_lock(&pool.mu);
  list = r->done;
  r->done = r->done_tail = NULL;
  pthread_mutex_unlock(&pool.mu);
  while (list) {
    ml_Lookup *q = list;
    list = q->next;
    r->inflight--;
    if (q->task) {
      ml_Task *t = q->task;
      q->task = NULL;
      ml__task_wake(t);
    }
    pthread_mutex_lock(&pool.mu);
    r->refs--;  /* never the last: the userdata holds one */
    pthread_mutex_unlock(&pool.mu);
    req_unref(q);
  }
  if (r->inflight == 0) completion_stop(r);
}

/* ---------------------------------------------------------------- */
/* The workers.                                                       */

static void *worker(void *arg) {
  (void)arg;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    ml_Lookup *q;
    while (pool.head == NULL) {
      pool.idle++;
      pthread_cond_wait(&pool.cv, &pool.mu);
      pool.idle--;
    }
    q = pool.head;
    pool.head = q->next;
    if (pool.head == NULL) pool.tail = NULL;
    pthread_mutex_unlock(&pool.mu);
    ml__lookup_run(q);
    pthread_mutex_lock(&pool.mu);
    ml_Resolver *r = q->r;
    if (finish_locked(q)) free(r);
  }
  return NULL;
}

/* Queues q for a worker, starting one if none is idle.  Returns 0, or -1
 * if no worker exists and none could be started (the caller runs q
 * itself). */
static int pool_submit(ml_Lookup *q) {
  int rc = 0;
  pthread_mutex_lock(&pool.mu);
  if (pool.idle == 0 && pool.nthreads < POOL_MAX) {
    pthread_t th;
    pthread_attr_t attr;
    sigset_t all, old;
    /* Workers must never take the process's signals (SIGINT, SIGCHLD). */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (pthread_create(&th, &attr, worker, NULL) == 0) pool.nthreads++;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pool.nthreads == 0) rc = -1;
  }
  if (rc == 0) {
    q->next = NULL;
    if (pool.tail) pool.tail->next = q;
    else pool.head = q;
    pool.tail = q;
    pthread_cond_signal(&pool.cv);
  }
  pthread_mutex_unlock(&pool.mu);
  return rc;
}

/* ---------------------------------------------------------------- */
/* A state's resolver and the script handles of requests.             */

#define RESOLVER_MT "moonloop.Resolver"
#define REQ_MT "moonloop.ResolveRequest"
static const char resolver_key = 0;

static int resolver_gc(lua_State *L) {
  ml_Resolver **pr = luaL_testudata(L, 1, RESOLVER_MT), *r;
  if (pr == NULL) return 0;  /* a script calling __gc on something else */
  r = *pr;
  ml_Lookup **pp, *done;
  int last;
  if (r == NULL) return 0;
  *pr = NULL;
  pthread_mutex_lock(&pool.mu);
  r->closed = 1;  /* from now on no worker signals r */
  pthread_mutex_unlock(&pool.mu);
  completion_stop(r);
  pthread_mutex_lock(&pool.mu);
  /* Queued requests of this resolver will never run. */
  for (pp = &pool.head; *pp;) {
    ml_Lookup *q = *pp;
    if (q->r == r) {
      *pp = q->next;
      r->refs--;
      if (--q->refs == 0) req_free(q);
    } else {
      pp = &q->next;
    }
  }
  pool.tail = NULL;
  for (ml_Lookup *q = pool.head; q; q = q->next) pool.tail = q;
  done = r->done;
  r->done = r->done_tail = NULL;
  while (done) {
    ml_Lookup *q = done;
    done = q->next;
    r->refs--;
    if (--q->refs == 0) req_free(q);
  }
  last = --r->refs == 0;
  pthread_mutex_unlock(&pool.mu);
  if (last) free(r);
  return 0;
}

/* The state's resolver, made on first use (its userdata is anchored in
 * the registry; its __gc closes it with the state).  [-0, +0] */
static ml_Resolver *get_resolver(lua_State *L) {
  ml_Resolver **pr;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &resolver_key) == LUA_TUSERDATA) {
    pr = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return *pr;
  }
  lua_pop(L, 1);
  pr = lua_newuserdatauv(L, sizeof *pr, 0);
  *pr = NULL;
  if (luaL_newmetatable(L, RESOLVER_MT)) {
    lua_pushcfunction(L, resolver_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  ml_Resolver *r = calloc(1, sizeof *r);
  if (r == NULL) luaL_error(L, "not enough memory");
  r->loop = ml__loop(ml__state(L));
  r->refs = 1;
  completion_init(r);
  *pr = r;
  lua_rawsetp(L, LUA_REGISTRYINDEX, &resolver_key);
  return r;
}

/* A request handle: the userdata that owns the script side of a request. */
static int reqhandle_gc(lua_State *L) {
  ml_Lookup **pq = luaL_testudata(L, 1, REQ_MT);
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
  if (luaL_newmetatable(L, REQ_MT)) {
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
  ml_Lookup **pq = luaL_checkudata(L, idx, REQ_MT);
  return *pq;
}

static int req_hook(lua_State *L, ml_Task *t, void *ud) {
  ml_Lookup *q = ud;
  (void)L; (void)t;
  q->task = NULL;  /* the worker finishes; the handle frees the result */
  return 0;
}

int ml__lookup_submit(lua_State *L, ml_Lookup *q, lua_KContext ctx, lua_KFunction k) {
  ml__task_check_suspendable(L);
  ml_Resolver *r = get_resolver(L);
  q->r = r;
  pthread_mutex_lock(&pool.mu);
  q->refs++;  /* the pipeline's */
  r->refs++;
  pthread_mutex_unlock(&pool.mu);
  if (r->inflight++ == 0) completion_start(r);
  q->task = ml__task_current(L);
  if (pool_submit(q) < 0) {
    /* No thread could be started: resolve here rather than fail. */
    ml__lookup_run(q);
    pthread_mutex_lock(&pool.mu);
    finish_locked(q);
    pthread_mutex_unlock(&pool.mu);
  }
  return ml__task_suspend(L, req_hook, q, ctx, k);
}
