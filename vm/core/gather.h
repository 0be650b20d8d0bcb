/* gather.h: gather's bookkeeping in C (gather.c). */
#ifndef ML_GATHER_H
#define ML_GATHER_H

#include "future.h"

int ml__gather(lua_State *L);  /* core._gather(outer, children, return_exceptions, ensure) */
/* If the callback at cbidx is a gather's, runs it for its child, the done
 * future at fidx, and returns 1; else returns 0.  [-0, +0] */
int ml__gather_done(lua_State *L, int cbidx, int fidx);

#endif
