/* future.h: Futures (future.c): the struct, its user values and the core's calls on it; module.h has what stdlib modules may use. */
#ifndef ML_FUTURE_H
#define ML_FUTURE_H

#include "state.h"

/* A Future's user values: its result, and one slot for the rest (so a
 * parked task is small; docs/performance.md), which holds
 *   - while the future has no extra table: its done callbacks, as nil,
 *     the callback itself (a function, or a task to wake), or a list;
 *   - once it has one (has_extra): the extra table, made when first needed
 *     for what few futures use (ml__xget/ml__xset), with the callbacks
 *     moved to its field X_CBS.
 * A pending task keeps in FUV_RESULT its Coroutine (or function) until it
 * starts, then the Coroutine's name, for its repr; a task made in place of
 * its Coroutine (coro.c) has the name there from the start. */
enum { FUV_RESULT = 1, FUV_MISC, FUV_NFUTURE = FUV_MISC };
/* A Task's, after the Future's: the arguments of a function it will call
 * (a list) until it starts, then its thread, unless a pooled one (which
 * the pool anchors). */
enum { TUV_THREAD = FUV_NFUTURE + 1, TUV_NTASK = TUV_THREAD };
/* Keys of the extra table. */
enum {
  X_MSG = 1,     /* the cancel message */
  X_CANCEL_HOOK, /* fut:cancel() calls it instead (gather) */
  X_NAME,        /* a task's name */
  X_TB,          /* the traceback where a task failed */
  X_CAUSE_EXC,   /* the error await last re-raised from a task, */
  X_CAUSE_TB,    /* and that task's traceback */
  X_CBS,         /* the done callbacks, once there is a table */
  X_SENTINEL
}; /* reports an exception never retrieved (future.c) */
/* [-0, +1] pushes field key of the future at idx's extra table (nil if
 * none); returns its type. */
int ml__xget(lua_State *L, int idx, int key);
/* [-1, +0] pops a value into field key of the future at idx. */
void ml__xset(lua_State *L, int idx, int key);

struct ml_Future {
  ml_State *S;
  unsigned char state; /* ML_PENDING, ML_RESULT, ... */
  unsigned char is_task;
  unsigned char log_exc;         /* an exception nobody retrieved yet: its
                                    X_SENTINEL reports it if it stays so */
  unsigned char cb_queued;       /* a ML_RUN_FUTURE_CALLBACKS entry is queued */
  unsigned char has_cancel_hook; /* cancel() calls X_CANCEL_HOOK instead */
  unsigned char has_extra;       /* FUV_MISC holds the extra table */
  unsigned char host_held;       /* a host's handle owns its outcome (embed.c) */
  int nres;                      /* result values (ML_RESULT) */
  int ncallbacks;                /* done callbacks (see FUV_MISC) */
  ml_Task *waiter;               /* the first task to await it: no table needed */
};

/* Userdata metatable names. */
#define ML_FUTURE_MT "asyncio.Future"
#define ML_TASK_MT "asyncio.Task"

/* 1 if mt (lua_topointer of a metatable) is a Future's or a Task's: the
 * test of ml__udata_test for two types at once. */
#define ml__is_future_mt(S, mt) \
  ((mt) == (S)->udata_mt[ML_UT_FUTURE] || (mt) == (S)->udata_mt[ML_UT_TASK])

/* Schedules a done future's waiters and callbacks.  [-0, +0] */
void ml__future_schedule(lua_State *L, int fidx, ml_Future *f);
/* Runs a queued ML_RUN_FUTURE_CALLBACKS entry (the future pushed).  [-1, +0] */
void ml__future_run_callbacks(lua_State *L);
/* Registers the running task t as a waiter of the future at fidx. [-0,+0] */
void ml__future_add_waiter(lua_State *L, int fidx, ml_Future *f, ml_Task *t);
/* Creates a Future's userdata with nuv user values, of size size, with
 * the metatable of a Task (is_task) or a Future.  [-0, +1] */
ml_Future *ml__future_alloc(lua_State *L, size_t size, int nuv, int is_task);
/* Appends the value at top (a function, or a task to wake) to the done
 * callbacks of the future at fidx; schedules them if it is done.  [-1, +0] */
void ml__future_add_callback(lua_State *L, int fidx, ml_Future *f);
/* Makes the metatable of Future or Task. */
void ml__future_mt_init(lua_State *L, int is_task, const luaL_Reg *methods, lua_CFunction tostring);
/* The exception of the failed future at fidx was seen (result(),
 * exception(), await, gather...): nothing will report it.  [-0, +0] */
void ml__future_retrieved(lua_State *L, int fidx, ml_Future *f);
/* [-0, +0] reports the exception of the failed future at fidx now, as its
 * collection would ("... was never retrieved"), and disarms it. */
void ml__future_report_now(lua_State *L, int fidx, ml_Future *f);
/* [-0, +1] pushes the CancelledError the cancelled future at fidx raises
 * (the one its task ended with, or one with its cancel message). */
void ml__future_push_cancelled(lua_State *L, int fidx);
/* Future's methods (for Task's metatable too). */
extern const luaL_Reg ml__future_methods[];
/* Sets up the Future metatable.  [-0, +0] */
void ml__future_open(lua_State *L);
int ml__future_lnew(lua_State *L);
int ml__future_set_cancel_hook(lua_State *L);   /* (fut, fn) */
int ml__future_add_done_callback(lua_State *L); /* fut:add_done_callback(fn) */

#endif
