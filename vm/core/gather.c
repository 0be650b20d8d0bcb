/* gather.c: the bookkeeping of asyncio.gather in C.  stdlib/asyncio.lua
 * turns the arguments into futures; this file counts them down, collects
 * the results in order, and passes a cancellation on to every child.  The
 * per-child done callback runs once per child, so it is C, not Lua. */
#include <string.h>
#include "task.h"
#include "gather.h"
#include "exc.h"


/* Every child's done callback is the Gather itself: a C record
 * (module.h, ml_DoneCb) anchored by each child's callback list, whose user
 * values keep the outer future and the children. */
typedef struct Gather {
  ml_DoneCb cb;     /* done_cb */
  ml_Future *outer; /* GUV_OUTER's, which keeps it alive */
  int n, left;
  unsigned char return_exc, cancel_requested;
} Gather;

/* User values of the Gather userdata. */
enum { GUV_OUTER = 1, GUV_CHILDREN, GUV_MSG, GUV_N = GUV_MSG }; /* GUV_MSG: cancel(msg)'s */

/* [-0, +1] pushes child's outcome as gather reports it: its first result,
 * its exception, or a CancelledError. */
static void push_outcome(lua_State *L, int cidx) {
  ml_Future *c = lua_touserdata(L, cidx);
  switch (c->state) {
  case ML_RESULT:
    if (c->nres == 0) {
      lua_pushnil(L);
    } else {
      int n = ml__future_unwrap(L, cidx);
      lua_pop(L, n - 1);
    }
    break;
  case ML_EXCEPTION:
    ml__future_retrieved(L, cidx, c);
    lua_getiuservalue(L, cidx, FUV_RESULT);
    break;
  default: ml__future_push_cancelled(L, cidx);
  }
}

/* A child's done callback, in protected mode: [gather, child].  done_cb
 * calls it without the closure call and message handler of a Lua
 * callback (why: docs/performance.md, "Tasks (gather)").
 * child_done(gather, child) -> nothing */
static int child_done(lua_State *L) {
  Gather *g = lua_touserdata(L, 1);
  ml_Future *child = lua_touserdata(L, 2), *outer;
  int oidx;
  g->left--;
  lua_getiuservalue(L, 1, GUV_OUTER);
  oidx = lua_gettop(L);
  outer = lua_touserdata(L, oidx);
  if (outer->state != ML_PENDING) {
    ml__future_retrieved(L, 2, child); /* the gather is over: it is seen */
    return 0;
  }
  if (!g->return_exc && child->state != ML_RESULT) {
    push_outcome(L, 2);
    ml__future_set_exception(L, oidx);
    return 0;
  }
  if (g->left == 0) {
    int i, cidx;
    if (g->cancel_requested) {
      lua_getiuservalue(L, 1, GUV_MSG);
      ml__exc_push_with(L, "CancelledError");
      ml__future_set_exception(L, oidx);
      return 0;
    }
    lua_getiuservalue(L, 1, GUV_CHILDREN);
    cidx = lua_gettop(L);
    lua_createtable(L, g->n, 1);
    for (i = 1; i <= g->n; i++) {
      lua_rawgeti(L, cidx, i);
      push_outcome(L, lua_gettop(L));
      lua_rawseti(L, cidx + 1, i);
      lua_pop(L, 1);
    }
    lua_pushinteger(L, g->n);
    lua_setfield(L, -2, "n");
    ml__future_set_result(L, oidx, 1);
  }
  return 0;
}

/* The Gather's ml_DoneCb: its child at fidx is done; the Gather is on
 * the top of the stack.  [-0, +0] */
static void done_cb(lua_State *L, ml_DoneCb *self, int fidx) {
  Gather *g = (Gather *)self;
  const ml_Future *child = lua_touserdata(L, fidx);
  if (child->state == ML_RESULT && g->left > 1 && g->outer->state == ML_PENDING) {
    /* Most children: one done, others still to come.  No API call, no
     * protected call (docs/performance.md, "Tasks (gather)"). */
    g->left--;
    return;
  }
  lua_pushcfunction(L, child_done);
  lua_pushvalue(L, -2);
  lua_pushvalue(L, fidx);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) ml__report(L, "Exception in gather");
}

/* The outer future's cancel: asks every child; the gather finishes once
 * they have.  Upvalue 1 the Gather; returns whether any child took it.
 * cancel(outer, msg) -> boolean */
static int outer_cancel(lua_State *L) {
  Gather *g = lua_touserdata(L, lua_upvalueindex(1));
  int i, any = 0;
  lua_settop(L, 2);
  lua_getiuservalue(L, lua_upvalueindex(1), GUV_CHILDREN);
  for (i = 1; i <= g->n; i++) {
    lua_rawgeti(L, -1, i);
    if (ml__future_cancel_msg(L, lua_gettop(L), 2)) any = 1;
    lua_pop(L, 1);
  }
  if (any) {
    g->cancel_requested = 1;
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, lua_upvalueindex(1), GUV_MSG);
  }
  lua_pushboolean(L, any);
  return 1;
}

/* core._gather(outer, children, return_exceptions, ensure_future): wires
 * the children (a list with n; what is not a future yet is replaced by
 * ensure_future(it)) to the pending future outer.  -> nothing */
int ml__gather(lua_State *L) {
  ml_Future *outer = ml__future_test(L, 1);
  Gather *g;
  int i, n;
  luaL_argcheck(L, outer != NULL, 1, "Future expected");
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TFUNCTION);
  lua_settop(L, 4);
  lua_pushnil(L); /* 5: what was wrapped, made when needed */
  lua_getfield(L, 2, "n");
  n = (int)luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    if (ml__future_test(L, -1) == NULL) {
      /* The same awaitable twice is wrapped once, and its future fills
       * both places (asyncio's arg_to_fut): a coroutine can run only
       * once.  Index 5 maps what was wrapped to its future, made on the
       * first child that needs it. */
      if (lua_type(L, 5) != LUA_TTABLE) {
        lua_newtable(L);
        lua_replace(L, 5);
      }
      lua_pushvalue(L, -1);
      if (lua_rawget(L, 5) != LUA_TNIL) {
        lua_rawseti(L, 2, i);
        lua_pop(L, 1);
        continue;
      }
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_pushvalue(L, 4);
      lua_insert(L, -2);
      lua_call(L, 1, 1);
      if (ml__future_test(L, -1) == NULL)
        return luaL_error(L, "gather: child %d is not a future", i);
      lua_pushvalue(L, -1);
      lua_rawseti(L, 2, i);
      lua_rawset(L, 5);
    } else {
      lua_pop(L, 1);
    }
  }
  g = lua_newuserdatauv(L, sizeof *g, GUV_N);
  memset(g, 0, sizeof *g);
  g->cb.fn = done_cb;
  g->outer = outer;
  g->n = g->left = n;
  g->return_exc = lua_toboolean(L, 3);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, GUV_OUTER);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, GUV_CHILDREN);
  /* The Gather is every child's callback (done_cb).  A child already
   * done with a result (an eager task that never suspended) is counted
   * here as done_cb would, with no callback entry queued for it: all but
   * the last, whose callback completes the gather. */
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 2, i);
    if (((ml_Future *)lua_touserdata(L, -1))->state == ML_RESULT && g->left > 1) g->left--;
    else ml__future_add_done_cb(L, -1, -2);
    lua_pop(L, 1);
  }
  lua_pushcfunction(L, ml__future_set_cancel_hook);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, outer_cancel, 1);
  lua_call(L, 2, 0);
  return 0;
}
