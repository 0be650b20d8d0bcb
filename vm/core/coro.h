/* coro.h: Coroutine objects and await (coro.c): what an async function returns, and how await dispatches. */
#ifndef ML_CORO_H
#define ML_CORO_H

#include "state.h"

/* Sets up the Coroutine metatable.  [-0, +0] */
void ml__coro_open(lua_State *L);
/* If the value at idx is a Coroutine: marks it awaited (raising
 * RuntimeError if it already was) and pushes its function and arguments,
 * returning how many values it pushed.  Otherwise returns -1.  */
int ml__coro_unpack(lua_State *L, int idx);
/* If the value at idx is a Coroutine, marks it taken (by a task), raising
 * RuntimeError if it already was awaited, and returns 1; else 0.  [-0, +0] */
int ml__coro_claim(lua_State *L, int idx);
/* What ml__coro_take made of the value it was given. */
enum { ML_CORO_NOT, ML_CORO_CLAIMED, ML_CORO_IN_PLACE };
/* If the value at idx is a Coroutine, claims it for a task (RuntimeError
 * if it was awaited already) and turns it into that Task in place (*t;
 * ML_CORO_IN_PLACE), or, the shared sleep(0) one, claims it only
 * (ML_CORO_CLAIMED: a Task of its own keeps it).  ML_CORO_NOT otherwise.
 * [-0, +0] */
int ml__coro_take(lua_State *L, int idx, ml_Task **t);
/* [-0, +nargs] pushes the nargs arguments of the task made in place of a
 * Coroutine at idx (an absolute index), and lets them go from it; its
 * function is in its user value TUV_THREAD until it starts. */
void ml__coro_unload(lua_State *L, int idx, int nargs);
/* Pushes the function and arguments of the Coroutine at idx (which must
 * be one: a task made of it) without marking it; returns how many. */
int ml__coro_push(lua_State *L, int idx);
/* [-0, +1] pushes the name of the Coroutine at idx. */
void ml__coro_push_name(lua_State *L, int idx);
/* [-1, +1] replaces the traceback string on top with one without the
 * frames of __awcall and __awmeth (what the pass makes of `await f()`):
 * the user wrote an await there, not a call of them. */
void ml__coro_clean_traceback(lua_State *L);
/* await of a pending-or-done Future/Task at stack index 1. */
int ml__await_future(lua_State *L, ml_Future *f);
int ml__coro_iscoroutine(lua_State *L);         /* (x) -> boolean */
int ml__coro_iscoroutinefunction(lua_State *L); /* (f) -> boolean */
/* 1 if the value at idx is an async function (calling it makes a
 * Coroutine).  [-0, +0] */
int ml__coro_isasyncfn(lua_State *L, int idx);

/* The same for asyncio.sleep, whose sleep(0) is one shared Coroutine. */
void ml__push_async_sleep(lua_State *L, lua_CFunction f);

#endif
