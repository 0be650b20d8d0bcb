/* hostfuture.c: futures that C creates and completes: host futures
 * (ml_future_new) completed on the loop's thread or through the legacy
 * *_threadsafe calls, promises (ml_promise_new) that worker threads hold
 * with a counted reference and complete with plain values (ml_Values),
 * and ml_work_submit.  Every cross-thread completion travels through the
 * state's one wake-up (core/wakeup.c). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "embed.h"

enum { POST_RESOLVE = 1, POST_REJECT };

/* A completion queued by the legacy *_threadsafe calls. */
typedef struct ml_Post {
  ml_WakeNode node;
  int kind; /* POST_* */
  ml_Future *f;
  char *s, *cls; /* malloc'd copies */
  size_t len;
} ml_Post;

/* ---- the loop keeps running while host futures are pending ----
 * Each pending host future holds the loop (as an I/O operation in flight
 * would) until its done callback runs. */

static void pending_inc(ml_Embed *E) {
  E->npending++;
  ml__loop_hold(E->S);
}

static void pending_dec(ml_Embed *E) {
  if (E->npending > 0) {
    E->npending--;
    ml__loop_unhold(E->S);
  }
}

/* Done callback of every host future. */
static int hostfuture_done(lua_State *L) {
  ml_Embed *E = ml__state(L)->embed;
  if (E) pending_dec(E);
  return 0;
}

/* ---- creating ---- */

static int new_p(lua_State *L) {
  ml_Future **out = lua_touserdata(L, 1);
  ml_State *S = ml__state(L);
  ml_HostFuture *h;
  lua_pop(L, 1);
  h = (ml_HostFuture *)ml__future_alloc(L, sizeof *h, FUV_NFUTURE, 0);
  h->E = S->embed;
  lua_getfield(L, -1, "add_done_callback");
  lua_pushvalue(L, -2);
  lua_pushcfunction(L, hostfuture_done);
  lua_call(L, 2, 0);
  ml__anchor_set(L, -1, h);
  *out = &h->fut;
  return 1;
}

ml_Future *ml_future_new(lua_State *L) {
  ml_State *S = ml__state(L);
  ml_Embed *E = ml__embed(S);
  ml_Future *f = NULL;
  int st;
  if (E == NULL || !lua_checkstack(L, 3)) return NULL;
  E->err[0] = '\0';
  lua_pushcfunction(L, new_p);
  lua_pushlightuserdata(L, &f);
  st = lua_pcall(L, 1, 1, 0);
  if (st != LUA_OK) {
    lua_pop(L, 1);
    ml__embed_fail(S, -ENOMEM, "ml_future_new: not enough memory");
    return NULL;
  }
  pending_inc(E);
  return f;
}

/* The host future p's userdata, pushed, if p is an anchored host future:
 * returns 1; otherwise pushes nothing and returns 0. */
static int push_host(lua_State *L, ml_Future *p) {
  if (ml__anchor_push(L, p) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    return 0;
  }
  if (p->is_task || lua_rawlen(L, -1) != sizeof(ml_HostFuture)) {
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* ---- completing, on the loop's thread ---- */

typedef struct Done {
  ml_Future *f;
  int n;    /* result values below the arguments */
  int kind; /* POST_RESOLVE or POST_REJECT */
  const char *cls, *msg;
  int rc;
} Done;

/* [values..., done] -> completes the future; the values are consumed. */
static int complete_p(lua_State *L) {
  Done *d = lua_touserdata(L, -1);
  int fidx;
  lua_pop(L, 1);
  if (!push_host(L, d->f)) {
    d->rc = -EINVAL;
    return 0;
  }
  fidx = lua_gettop(L);
  if (d->kind == POST_RESOLVE) {
    lua_insert(L, fidx - d->n);
    d->rc = ml__future_set_result(L, fidx - d->n, d->n);
  } else {
    if (d->cls) ml__exc_push(L, d->cls, d->msg ? "%s" : NULL, d->msg);
    else lua_pushstring(L, d->msg ? d->msg : "error");
    d->rc = ml__future_set_exception(L, fidx);
  }
  ml__anchor_clear(L, d->f);
  return 0;
}

static int complete(lua_State *L, Done *d) {
  ml_State *S = ml__state(L);
  int st;
  if (!lua_checkstack(L, 3)) {
    lua_pop(L, d->n);
    return ml__embed_fail(S, -ENOMEM, "not enough memory");
  }
  lua_pushcfunction(L, complete_p);
  lua_insert(L, -d->n - 1);
  lua_pushlightuserdata(L, d);
  st = lua_pcall(L, d->n + 1, 0, 0);
  if (st != LUA_OK) {
    const char *m = lua_tostring(L, -1);
    ml__embed_fail(S, st == LUA_ERRMEM ? -ENOMEM : -EINVAL, "%s",
                   m ? m : "error completing a future");
    lua_pop(L, 1);
    return st == LUA_ERRMEM ? -ENOMEM : -EINVAL;
  }
  if (d->rc < 0)
    return ml__embed_fail(S, d->rc, "the future was already done, or is not a pending host future");
  return ML_OK;
}

int ml_future_resolve(lua_State *L, ml_Future *f, int n) {
  Done d = {f, n, POST_RESOLVE, NULL, NULL, 0};
  if (ml__embed(ml__state(L)) == NULL) {
    lua_pop(L, n);
    return -ENOMEM;
  }
  return complete(L, &d);
}

int ml_future_reject(lua_State *L, ml_Future *f, const char *cls, const char *msg) {
  Done d = {f, 0, POST_REJECT, cls, msg, 0};
  if (ml__embed(ml__state(L)) == NULL) return -ENOMEM;
  return complete(L, &d);
}

/* [f] -> cancels a pending host future and drops the anchor. */
static int release_p(lua_State *L) {
  ml_Future *f = lua_touserdata(L, 1);
  if (push_host(L, f) && f->state == ML_PENDING) ml__future_cancel(L, -1, NULL);
  ml__anchor_clear(L, f);
  return 0;
}

int ml_future_release(lua_State *L, ml_Future *f) {
  if (f == NULL) return ML_OK;
  return ml__embed_pcall(L, release_p, f);
}

/* ---- reading ---- */

int ml_future_state(const ml_Future *f) {
  /* The internal states are numbered as the public ones. */
  return f->state;
}

void ml_future_push(lua_State *L, ml_Future *f) { ml__anchor_push(L, f); }

static int unwrap_p(lua_State *L) {
  ml_Future *f = lua_touserdata(L, 1);
  lua_pop(L, 1);
  ml__anchor_push(L, f);
  return ml__future_unwrap(L, 1);
}

int ml_future_push_result(lua_State *L, ml_Future *f) {
  int top = lua_gettop(L), st;
  if (f->state == ML_PENDING) return -EAGAIN;
  if (f->state != ML_RESULT) return -EINVAL;
  if (!lua_checkstack(L, 3)) return -ENOMEM;
  lua_pushcfunction(L, unwrap_p);
  lua_pushlightuserdata(L, f);
  st = lua_pcall(L, 1, LUA_MULTRET, 0);
  if (st != LUA_OK) {
    lua_settop(L, top);
    return ml__embed_fail(ml__state(L), -ENOMEM, "not enough memory");
  }
  return lua_gettop(L) - top;
}

int ml_future_push_error(lua_State *L, ml_Future *f) {
  int st;
  if (f->state != ML_EXCEPTION && f->state != ML_CANCELLED) return -EINVAL;
  if (!lua_checkstack(L, 3)) return -ENOMEM;
  /* Unwrapping a failed future raises its exception: catch it. */
  lua_pushcfunction(L, unwrap_p);
  lua_pushlightuserdata(L, f);
  st = lua_pcall(L, 1, 0, 0);
  if (st == LUA_OK) return -EINVAL;
  return ML_OK;
}

/* ---- from other threads: the legacy calls ---- */

static void post_free(ml_Post *p) {
  free(p->s);
  free(p->cls);
  free(p);
}

/* A queued completion that could not be applied (the state is at its
 * memory cap): reported, and the future cancelled, so that nothing waits
 * for it forever. */
static void dropped(ml_State *S, ml_Future *f) {
  ml__emit_error(S, "a thread-safe completion was dropped: not enough memory");
  ml_future_release(S->L, f);
}

/* Pushes a string in protected mode (an allocation at the cap raises). */
static int pushstr_p(lua_State *L) {
  ml_Post *p = lua_touserdata(L, 1);
  lua_pushlstring(L, p->s, p->len);
  return 1;
}

/* The wake-up's call for a post: applies it (S == NULL: the state closed). */
static void post_apply(ml_State *S, void *ud) {
  ml_Post *p = ud;
  lua_State *L = S ? S->L : NULL;
  if (S == NULL) {
  } else if (!lua_checkstack(L, 4)) {
    ml__emit_error(S, "a thread-safe completion was dropped: no Lua stack space");
  } else if (p->kind == POST_REJECT) {
    if (ml_future_reject(L, p->f, p->cls, p->s) == -ENOMEM) dropped(S, p->f);
  } else if (p->s == NULL) {
    lua_pushnil(L);
    ml_future_resolve(L, p->f, 1);
  } else {
    /* The string is made in protected mode, so that a state at its
     * memory cap fails this one completion, not the loop. */
    lua_pushcfunction(L, pushstr_p);
    lua_pushlightuserdata(L, p);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      lua_pop(L, 1);
      dropped(S, p->f);
    } else if (ml_future_resolve(L, p->f, 1) == -ENOMEM) {
      dropped(S, p->f);
    }
  }
  post_free(p);
}

static int post(ml_Future *f, ml_Post *p) {
  int rc;
  p->node.fn = post_apply;
  p->node.ud = p;
  rc = ml__wakeup_send(((ml_HostFuture *)f)->E->S->wakeup, &p->node);
  if (rc < 0) post_free(p);
  return rc;
}

static char *copy(const char *s, size_t len) {
  char *d = malloc(len + 1);
  if (d) {
    memcpy(d, s, len);
    d[len] = '\0';
  }
  return d;
}

int ml_future_resolve_threadsafe(ml_Future *f, const char *s, size_t len) {
  ml_Post *p;
  if (f == NULL || f->is_task) return -EINVAL;
  p = calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->kind = POST_RESOLVE;
  p->f = f;
  if (s && (p->s = copy(s, len)) == NULL) {
    free(p);
    return -ENOMEM;
  }
  p->len = len;
  return post(f, p);
}

int ml_future_reject_threadsafe(ml_Future *f, const char *cls, const char *msg) {
  ml_Post *p;
  if (f == NULL || f->is_task) return -EINVAL;
  p = calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->kind = POST_REJECT;
  p->f = f;
  if (msg == NULL) msg = "error";
  if ((p->s = copy(msg, strlen(msg))) == NULL ||
      (cls && (p->cls = copy(cls, strlen(cls))) == NULL)) {
    post_free(p);
    return -ENOMEM;
  }
  return post(f, p);
}

int ml_state_call_threadsafe(ml_State *S, ml_ThreadsafeFn fn, void *ud) {
  if (S == NULL || S->embed == NULL || fn == NULL) return -EINVAL;
  return ml__wakeup_post(S, fn, ud);
}

/* ---- promises: host futures for other threads ----
 *
 * A promise is malloc'd and reference counted: the host's reference (the
 * handle ml_promise_new returns, and any taken with ml_promise_retain),
 * the Lua side's (while its Future is pending and the state open), and
 * one per completion in flight.  Whatever happens to the state, a thread
 * holding a reference may call ml_promise_resolve / _reject: they return
 * -ESHUTDOWN once the state is closed, never touching it.
 *
 * claimed goes 0 -> 1 once, for the first of: a completion queued by the
 * host, or the Lua side giving up (the script cancelled the Future, or the
 * state closed), which then calls on_cancel. */

typedef struct ml_Promise {
  int refs;        /* atomic */
  int claimed;     /* atomic */
  int cancelled;   /* atomic: the script cancelled the Future */
  ml_Wakeup *wake; /* counted reference */
  ml_CancelFn on_cancel;
  void *cancel_ud;
  /* Loop thread only. */
  ml_Embed *E;
  struct ml_Promise *prev, *next; /* E->promises, while the Lua side holds it */
} ml_Promise;

/* A completion on its way to the loop; it holds a reference on p. */
typedef struct Completion {
  ml_WakeNode node;
  ml_Promise *p;
  int kind; /* POST_RESOLVE or POST_REJECT */
  ml_Values *vals;
  char *cls, *msg;
} Completion;

static void promise_unref(ml_Promise *p) {
  if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) > 0) return;
  ml__wakeup_release(p->wake);
  free(p);
}

ml_Promise *ml_promise_retain(ml_Promise *p) {
  if (p) __atomic_add_fetch(&p->refs, 1, __ATOMIC_ACQ_REL);
  return p;
}

void ml_promise_release(ml_Promise *p) {
  if (p) promise_unref(p);
}

/* Loop thread: the Lua side lets go of p (its Future is done, or the
 * state is closing).  The host's cancel callback runs if the host had not
 * completed it. */
static void promise_detach(ml_Promise *p) {
  ml_Embed *E = p->E;
  if (p->prev) p->prev->next = p->next;
  else if (E->promises == p) E->promises = p->next;
  if (p->next) p->next->prev = p->prev;
  p->prev = p->next = NULL;
  pending_dec(E);
  if (__atomic_exchange_n(&p->claimed, 1, __ATOMIC_ACQ_REL) == 0 && p->on_cancel)
    p->on_cancel(p, p->cancel_ud);
  promise_unref(p);
}

/* The done callback of a promise's Future (upvalue: p). */
static int promise_done(lua_State *L) {
  ml_Promise *p = lua_touserdata(L, lua_upvalueindex(1));
  ml__anchor_clear(L, p);
  __atomic_store_n(&p->cancelled, 1, __ATOMIC_RELEASE); /* read only if unclaimed */
  promise_detach(p);
  return 0;
}

static int promise_new_p(lua_State *L) {
  ml_Promise *p = lua_touserdata(L, 1);
  lua_pop(L, 1);
  ml__future_new(L);
  lua_getfield(L, -1, "add_done_callback");
  lua_pushvalue(L, -2);
  lua_pushlightuserdata(L, p);
  lua_pushcclosure(L, promise_done, 1);
  lua_call(L, 2, 0);
  ml__anchor_set(L, -1, p);
  return 1;
}

int ml_promise_new(lua_State *L, ml_CancelFn on_cancel, void *ud, ml_Promise **out) {
  ml_State *S = ml__state(L);
  ml_Embed *E = ml__embed(S);
  ml_Promise *p;
  if (out) *out = NULL;
  if (E == NULL || !lua_checkstack(L, 4)) return -ENOMEM;
  E->err[0] = '\0';
  if (out == NULL) return ml__embed_fail(S, -EINVAL, "ml_promise_new: no place for the handle");
  if ((p = calloc(1, sizeof *p)) == NULL) return ml__embed_fail(S, -ENOMEM, "not enough memory");
  p->refs = 2; /* the host's and the Lua side's */
  p->on_cancel = on_cancel;
  p->cancel_ud = ud;
  p->E = E;
  lua_pushcfunction(L, promise_new_p);
  lua_pushlightuserdata(L, p);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    free(p);
    return ml__embed_fail(S, -ENOMEM, "ml_promise_new: not enough memory");
  }
  p->wake = ml__wakeup_acquire(S);
  p->next = E->promises;
  if (p->next) p->next->prev = p;
  E->promises = p;
  pending_inc(E);
  *out = p;
  return ML_OK;
}

void ml__hostfuture_close(ml_Embed *E) {
  /* The anchors go with the Lua state; the cancel callbacks say so. */
  while (E->promises) promise_detach(E->promises);
  E->npending = 0;
}

static void completion_free(Completion *c) {
  ml_values_free(c->vals);
  free(c->cls);
  free(c->msg);
  free(c);
}

/* [c] -> pushes the completion's values, or its exception. */
static int completion_values_p(lua_State *L) {
  Completion *c = lua_touserdata(L, 1);
  lua_pop(L, 1);
  if (c->kind == POST_RESOLVE) return ml__values_push(L, c->vals);
  if (c->cls) ml__exc_push(L, c->cls, "%s", c->msg);
  else lua_pushstring(L, c->msg);
  return 1;
}

/* The wake-up's call for a completion (S == NULL: the state closed). */
static void completion_apply(ml_State *S, void *ud) {
  Completion *c = ud;
  lua_State *L;
  int top, st;
  if (S != NULL) {
    L = S->L;
    top = lua_gettop(L);
    if (lua_checkstack(L, 4) && ml__anchor_push(L, c->p) == LUA_TUSERDATA) {
      lua_pushcfunction(L, completion_values_p);
      lua_pushlightuserdata(L, c);
      st = lua_pcall(L, 1, LUA_MULTRET, 0);
      if (st != LUA_OK) {
        /* Out of memory building the values: the Future fails with it. */
        lua_settop(L, top + 1);
        ml__push_memory_error(L);
        ml__future_set_exception(L, top + 1);
      } else if (c->kind == POST_RESOLVE) {
        ml__future_set_result(L, top + 1, lua_gettop(L) - top - 1);
      } else {
        ml__future_set_exception(L, top + 1);
      }
    }
    /* else the Future was cancelled meanwhile: the completion goes nowhere. */
    lua_settop(L, top);
  }
  promise_unref(c->p);
  completion_free(c);
}

/* Any thread: claims p and queues c.  Frees c on failure. */
static int complete_remote(ml_Promise *p, Completion *c) {
  int rc;
  if (ml__wakeup_closed(p->wake)) {
    rc = -ESHUTDOWN;
  } else if (__atomic_exchange_n(&p->claimed, 1, __ATOMIC_ACQ_REL) != 0) {
    rc = __atomic_load_n(&p->cancelled, __ATOMIC_ACQUIRE) ? -ECANCELED : -EINVAL;
  } else {
    c->p = ml_promise_retain(p);
    c->node.fn = completion_apply;
    c->node.ud = c;
    if ((rc = ml__wakeup_send(p->wake, &c->node)) == 0) return 0;
    promise_unref(p);
  }
  completion_free(c);
  return rc;
}

int ml_promise_resolve(ml_Promise *p, ml_Values *v) {
  Completion *c;
  int rc;
  if (p == NULL || (rc = ml__values_check(v)) < 0) {
    ml_values_free(v);
    return p ? rc : -EINVAL;
  }
  if ((c = calloc(1, sizeof *c)) == NULL) {
    ml_values_free(v);
    return -ENOMEM;
  }
  c->kind = POST_RESOLVE;
  c->vals = v;
  return complete_remote(p, c);
}

int ml_promise_reject(ml_Promise *p, const char *cls, const char *msg) {
  Completion *c;
  if (p == NULL) return -EINVAL;
  if (msg == NULL) msg = "error";
  if ((c = calloc(1, sizeof *c)) == NULL) return -ENOMEM;
  c->kind = POST_REJECT;
  if ((c->msg = copy(msg, strlen(msg))) == NULL ||
      (cls && (c->cls = copy(cls, strlen(cls))) == NULL)) {
    completion_free(c);
    return -ENOMEM;
  }
  return complete_remote(p, c);
}

/* ---- ml_work_submit: C work on the thread pool ---- */

typedef struct Work {
  ml_WorkFn work;
  ml_WorkDoneFn done;
  void *ud;
  ml_Future *f; /* the host future, anchored */
  int n;        /* done's results */
} Work;

static void work_run(void *ud) {
  Work *w = ud;
  w->work(w->ud);
}

/* [w] -> done's results, counted in w->n. */
static int work_done_p(lua_State *L) {
  Work *w = lua_touserdata(L, 1);
  int top;
  lua_pop(L, 1);
  top = lua_gettop(L);
  w->n = w->done(L, w->ud);
  if (w->n < 0 || w->n > lua_gettop(L) - top)
    luaL_error(L, "ml_work_submit: done returned %d results", w->n);
  return w->n;
}

static void work_back(ml_State *S, void *ud) {
  Work *w = ud;
  lua_State *L;
  int top, st;
  if (S == NULL) {
    w->done(NULL, w->ud);
    free(w);
    return;
  }
  L = S->L;
  top = lua_gettop(L);
  lua_pushcfunction(L, work_done_p);
  lua_pushlightuserdata(L, w);
  st = lua_pcall(L, 1, LUA_MULTRET, 0);
  if (w->f->state != ML_PENDING) {
    lua_settop(L, top); /* cancelled by the script: done ran only to free */
    ml_future_release(L, w->f);
  } else if (st == LUA_OK) {
    ml_future_resolve(L, w->f, lua_gettop(L) - top);
  } else {
    ml__anchor_push(L, w->f);
    lua_insert(L, -2);
    ml__future_set_exception(L, -2);
    lua_pop(L, 1);
    ml__anchor_clear(L, w->f);
  }
  lua_settop(L, top);
  free(w);
}

int ml_work_submit(lua_State *L, ml_WorkFn work, ml_WorkDoneFn done, void *ud) {
  ml_State *S = ml__state(L);
  Work *w;
  int rc;
  if (ml__embed(S) == NULL) return -ENOMEM;
  if (work == NULL || done == NULL)
    return ml__embed_fail(S, -EINVAL, "ml_work_submit: work and done are needed");
  if ((w = calloc(1, sizeof *w)) == NULL) return ml__embed_fail(S, -ENOMEM, "not enough memory");
  w->work = work;
  w->done = done;
  w->ud = ud;
  if ((w->f = ml_future_new(L)) == NULL) {
    free(w);
    return -ENOMEM;
  }
  if ((rc = ml__pool_submit(S, work_run, work_back, w)) < 0) {
    lua_pop(L, 1);
    ml_future_release(L, w->f);
    free(w);
    return ml__embed_fail(S, rc, "ml_work_submit: %s",
                          rc == -EAGAIN ? "no worker thread could be started"
                                        : "not enough memory");
  }
  return ML_OK;
}
