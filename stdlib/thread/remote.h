/* remote.h: worker states reaching a loop (remote.c): what copy.c and
 * _thread.c call. */
#ifndef ML_THREAD_REMOTE_H
#define ML_THREAD_REMOTE_H

#include "core/module.h"

/* [-0, +1] pushes a RemoteLoop for the loop of w (it takes a reference):
 * what a loop becomes when copied into a worker's state. */
void ml__remote_push_loop(lua_State *L, ml_Wakeup *w);
/* [-0, +0] the wake-up of the RemoteLoop at idx, or NULL if it is not one. */
ml_Wakeup *ml__remote_test_loop(lua_State *L, int idx);
/* [-0, +1] pushes a RemoteFuture for the Future at registry reference
 * ref of w's state (it takes over the reference, and a reference on w):
 * what a Future becomes when copied into a worker's state. */
void ml__remote_push_future(lua_State *L, ml_Wakeup *w, int ref);
/* [-0, +0] the wake-up of the RemoteFuture at idx, its reference in *ref,
 * or NULL (*ref untouched) if it is not one. */
ml_Wakeup *ml__remote_test_future(lua_State *L, int idx, int *ref);
/* The C function of a copied async function in a worker (upvalues: name,
 * fn); copy.c recognises it to copy it on. */
int ml__remote_async_call(lua_State *L);
/* Sets up a worker's state: package.preload.asyncio, the part of asyncio
 * a thread has (run_coroutine_threadsafe).  [-0, +0] */
void ml__remote_worker_open(lua_State *W);
/* [-0, +0] adds _set_spawner to the asyncio._thread table on top. */
void ml__remote_open(lua_State *L);

#endif
