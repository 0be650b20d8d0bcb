/* control.c: the host's controls over a running state - stopping the
 * loop, interrupting runaway code, cancelling tasks, reading how a task
 * failed, the error handler - and the dialect's translation for tools.
 * The moonloop command is built on these (vm/cli). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "embed.h"
#include "dialect/asyncpass.h"

/* ---- stopping and interrupting ---- */

int ml_state_stop(ml_State *S) {
  if (S->running == 0) return ml__embed_fail(S, -EINVAL, "ml_state_stop: the loop is not running");
  /* ml__sched_run looks at the flag between iterations; run() in embed.c
   * clears it when the run returns, so a stop never outlives its run. */
  S->stopping = 1;
  return ML_OK;
}

int ml_state_interrupt(ml_State *S) {
  /* Any thread, and signal handlers: the design is in core/task.c
   * ("interrupts").  No ml__embed_fail: formatting a message is not
   * async-signal-safe, and E->err is the loop thread's. */
  return ml__task_interrupt(S);
}

/* ---- cancelling ---- */

typedef struct Cancel {
  ml_Future *f;
  const char *msg;
  int rc;
} Cancel;

/* [cancel] -> cancels the handle's future (or every task); no results. */
static int cancel_p(lua_State *L) {
  Cancel *c = lua_touserdata(L, 1);
  ml_State *S = ml__state(L);
  lua_pop(L, 1);
  if (c->f == NULL) {
    ml_Task *t, *next;
    if (c->msg) lua_pushstring(L, c->msg);
    else lua_pushnil(L);
    /* Cancelling only marks a task and queues it: the list is not
     * changed under the walk, but next is read first all the same. */
    for (t = S->tasks; t; t = next) {
      next = t->next;
      ml__task_cancel(L, t, lua_gettop(L));
    }
    c->rc = ML_OK;
    return 0;
  }
  if (ml__anchor_push(L, c->f) != LUA_TUSERDATA) {
    c->rc = -EINVAL;
    return 0;
  }
  c->rc = ml__future_cancel(L, -1, c->msg) ? ML_OK : -EALREADY;
  return 0;
}

int ml_future_cancel(lua_State *L, ml_Future *f, const char *msg) {
  ml_State *S = ml__state(L);
  Cancel c = {f, msg, 0};
  int rc;
  if (f == NULL) return ml__embed_fail(S, -EINVAL, "ml_future_cancel: no future");
  if ((rc = ml__embed_pcall(L, cancel_p, &c)) < 0) return rc;
  if (c.rc == -EINVAL) return ml__embed_fail(S, -EINVAL, "ml_future_cancel: not a valid handle");
  if (c.rc == -EALREADY) return ml__embed_fail(S, -EALREADY, "the future is already done");
  return ML_OK;
}

int ml_task_cancel_all(ml_State *S, const char *msg) {
  Cancel c = {NULL, msg, 0};
  return ml__embed_pcall(S->L, cancel_p, &c);
}

/* ---- how a task failed ---- */

/* [f] -> the traceback of the handle f's failure, or nil. */
static int traceback_p(lua_State *L) {
  ml_Future *f = lua_touserdata(L, 1);
  lua_pop(L, 1);
  if (ml__anchor_push(L, f) != LUA_TUSERDATA) return 0;
  if (f->state == ML_EXCEPTION) ml__xget(L, -1, X_TB);
  else lua_pushnil(L);
  if (!lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  return 1;
}

int ml_future_push_traceback(lua_State *L, ml_Future *f) {
  ml_State *S = ml__state(L);
  int top = lua_gettop(L), st;
  if (f == NULL || (f->state != ML_EXCEPTION && f->state != ML_CANCELLED))
    return ml__embed_fail(S, -EINVAL, "ml_future_push_traceback: the future did not fail");
  if (!lua_checkstack(L, 4)) return ml__embed_fail(S, -ENOMEM, "not enough memory");
  lua_pushcfunction(L, traceback_p);
  lua_pushlightuserdata(L, f);
  st = lua_pcall(L, 1, 1, 0);
  if (st != LUA_OK || lua_gettop(L) != top + 1) {
    lua_settop(L, top);
    return ml__embed_fail(S, st == LUA_ERRMEM ? -ENOMEM : -EINVAL,
                          "ml_future_push_traceback: not a valid handle");
  }
  return ML_OK;
}

/* ---- the error handler ---- */

ml_ErrorHandler ml_state_error_handler(ml_State *S, void **ud) {
  if (ud) *ud = S->on_error_ud;
  return S->on_error;
}

/* ---- the dialect ---- */

char *ml_file_read(const char *path, size_t *len) {
  ml_Buf b = {0};
  int rc = ml__buf_read_file(&b, path, NULL);
  if (rc == 0 && b.data == NULL) rc = ml__buf_add(&b, NULL, 0); /* an empty file */
  if (rc < 0) {
    ml__buf_free(&b);
    errno = -rc;
    return NULL;
  }
  if (len) *len = b.len;
  return b.data; /* malloc'd by the buffer: the caller frees it */
}

const char *ml_dialect_keyword(int i) {
  int n = 0;
  while (ml__lua_keywords[n]) n++;
  return i >= 0 && i < n ? ml__lua_keywords[i] : NULL;
}

int ml_dialect_translate(const char *src, size_t len, const char *chunkname, char **out,
                         size_t *outlen, char *err, size_t errsz) {
  ml_Buf b = {0};
  char msg[512] = "";
  int rc;
  if (out) *out = NULL;
  if (outlen) *outlen = 0;
  if (err && errsz) err[0] = '\0';
  if (src == NULL || out == NULL) {
    if (err && errsz) snprintf(err, errsz, "ml_dialect_translate: no source or no output");
    return -EINVAL;
  }
  rc = ml__asyncpass(src, len, chunkname ? chunkname : "?", &b, msg, sizeof msg);
  if (rc < 0) {
    ml__buf_free(&b);
    if (err && errsz) snprintf(err, errsz, "%s", rc == -ENOMEM ? "not enough memory" : msg);
    return rc;
  }
  if (b.data == NULL && ml__buf_add(&b, NULL, 0) < 0) {
    if (err && errsz) snprintf(err, errsz, "not enough memory");
    return -ENOMEM;
  }
  *out = b.data; /* malloc'd by the buffer: the caller frees it */
  if (outlen) *outlen = b.len;
  return ML_OK;
}
