/* hostfuture.c: futures that C creates and completes, from the loop's
 * thread or, through a mutex-protected queue and an eventfd the loop
 * watches, from any other thread.
 *
 * Why not ev_async: ev_async_send only writes to libev's wake-up pipe
 * while the loop is blocked inside ev_run; otherwise it leaves a flag for
 * the next ev_run.  A host that drives moonloop with ml_state_step waits
 * in its own poll() on the loop's fd, outside ev_run, and would never
 * wake.  An eventfd in the loop's epoll set is written every time the
 * queue goes from empty to not empty, so both kinds of waiting wake. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "embed.h"

enum { POST_RESOLVE = 1, POST_REJECT, POST_CALL };

/* ---- the loop keeps running while host futures are pending ----
 *
 * The wake watcher itself is unreferenced, so an idle state with no
 * host future lets ml_state_run return; each pending host future takes
 * one reference back (as an I/O operation in flight would hold one), the
 * first one through ev_ref, until its done callback runs. */

static void pending_inc(ml_Embed *E) {
  if (E->npending++ == 0) ev_ref(E->S->loop);
}

static void pending_dec(ml_Embed *E) {
  if (E->npending > 0 && --E->npending == 0) ev_unref(E->S->loop);
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
  int n;             /* result values below the arguments */
  int kind;          /* POST_RESOLVE or POST_REJECT */
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
    ml__embed_fail(S, st == LUA_ERRMEM ? -ENOMEM : -EINVAL, "%s", m ? m : "error completing a future");
    lua_pop(L, 1);
    return st == LUA_ERRMEM ? -ENOMEM : -EINVAL;
  }
  if (d->rc < 0)
    return ml__embed_fail(S, d->rc, "the future was already done, or is not a pending host future");
  return ML_OK;
}

int ml_future_resolve(lua_State *L, ml_Future *f, int n) {
  Done d = { f, n, POST_RESOLVE, NULL, NULL, 0 };
  if (ml__embed(ml__state(L)) == NULL) {
    lua_pop(L, n);
    return -ENOMEM;
  }
  return complete(L, &d);
}

int ml_future_reject(lua_State *L, ml_Future *f, const char *cls, const char *msg) {
  Done d = { f, 0, POST_REJECT, cls, msg, 0 };
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

void ml_future_push(lua_State *L, ml_Future *f) {
  ml__anchor_push(L, f);
}

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

/* ---- from other threads ---- */

static void post_free(ml_Post *p) {
  free(p->s);
  free(p->cls);
  free(p);
}

/* A queued completion that could not be applied (the state is at its
 * memory cap): reported, and the future cancelled, so that nothing waits
 * for it forever. */
static void dropped(ml_Embed *E, ml_Future *f) {
  ml__emit_error(E->S, "a thread-safe completion was dropped: not enough memory");
  ml_future_release(E->S->L, f);
}

/* Pushes a string in protected mode (an allocation at the cap raises). */
static int pushstr_p(lua_State *L) {
  ml_Post *p = lua_touserdata(L, 1);
  lua_pushlstring(L, p->s, p->len);
  return 1;
}

static void wake_cb(struct ev_loop *loop, ev_io *w, int revents) {
  ml_Embed *E = w->data;
  ml_Post *p, *next;
  uint64_t n;
  ssize_t r;
  (void)loop; (void)revents;
  /* Read the count before taking the queue: a post that comes after the
   * queue was taken finds it empty and writes again. */
  do r = read(E->wake, &n, sizeof n); while (r < 0 && errno == EINTR);
  pthread_mutex_lock(&E->mu);
  p = E->head;
  E->head = E->tail = NULL;
  pthread_mutex_unlock(&E->mu);
  for (; p; p = next) {
    lua_State *L = E->S->L;
    next = p->next;
    if (p->kind != POST_CALL && !lua_checkstack(L, 4)) {
      ml__emit_error(E->S, "a thread-safe completion was dropped: no Lua stack space");
    } else if (p->kind == POST_CALL) {
      p->fn(E->S, p->ud);
    } else if (p->kind == POST_REJECT) {
      if (ml_future_reject(L, p->f, p->cls, p->s) == -ENOMEM) dropped(E, p->f);
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
        dropped(E, p->f);
      } else if (ml_future_resolve(L, p->f, 1) == -ENOMEM) {
        dropped(E, p->f);
      }
    }
    post_free(p);
  }
}

static int post(ml_Embed *E, ml_Post *p) {
  int was_empty;
  uint64_t one = 1;
  ssize_t r;
  pthread_mutex_lock(&E->mu);
  was_empty = E->head == NULL;
  if (E->tail) E->tail->next = p;
  else E->head = p;
  E->tail = p;
  pthread_mutex_unlock(&E->mu);
  if (was_empty) {
    do r = write(E->wake, &one, sizeof one); while (r < 0 && errno == EINTR);
  }
  return ML_OK;
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
  return post(((ml_HostFuture *)f)->E, p);
}

int ml_future_reject_threadsafe(ml_Future *f, const char *cls, const char *msg) {
  ml_Post *p;
  if (f == NULL || f->is_task) return -EINVAL;
  p = calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->kind = POST_REJECT;
  p->f = f;
  if (msg == NULL) msg = "error";
  if ((p->s = copy(msg, strlen(msg))) == NULL || (cls && (p->cls = copy(cls, strlen(cls))) == NULL)) {
    post_free(p);
    return -ENOMEM;
  }
  return post(((ml_HostFuture *)f)->E, p);
}

int ml_state_call_threadsafe(ml_State *S, ml_ThreadsafeFn fn, void *ud) {
  ml_Embed *E = S->embed;
  ml_Post *p;
  if (E == NULL || fn == NULL) return -EINVAL;
  p = calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->kind = POST_CALL;
  p->fn = fn;
  p->ud = ud;
  return post(E, p);
}

/* ---- set-up and close ---- */

int ml__hostfuture_init(ml_Embed *E) {
  E->wake = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (E->wake < 0) return -errno;
  if (pthread_mutex_init(&E->mu, NULL) != 0) {
    close(E->wake);
    E->wake = -1;
    return -ENOMEM;
  }
  ev_io_init(&E->wake_w, wake_cb, E->wake, EV_READ);
  E->wake_w.data = E;
  ev_io_start(E->S->loop, &E->wake_w);
  ev_unref(E->S->loop);  /* the queue alone does not keep the loop alive */
  return 0;
}

void ml__hostfuture_close(ml_Embed *E) {
  ml_Post *p, *next;
  /* libev wants an unreferenced watcher referenced again before it is
   * stopped; with host futures pending, that reference is already back. */
  if (E->wake < 0) return;
  if (E->npending == 0) ev_ref(E->S->loop);
  E->npending = 0;
  ev_io_stop(E->S->loop, &E->wake_w);
  pthread_mutex_lock(&E->mu);
  p = E->head;
  E->head = E->tail = NULL;
  pthread_mutex_unlock(&E->mu);
  for (; p; p = next) {
    next = p->next;
    if (p->kind == POST_CALL) p->fn(NULL, p->ud);
    post_free(p);
  }
  pthread_mutex_destroy(&E->mu);
  close(E->wake);
  E->wake = -1;
}
