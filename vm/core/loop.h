/* loop.h: the loop object (loop.c), asyncio's AbstractEventLoop: its
 * clock, its callbacks (call_soon, call_later, call_at), debug mode
 * and the exception handler that every uncaught error goes to. */
#ifndef ML_LOOP_H
#define ML_LOOP_H

#include "state.h"

/* The loop's clock, loop:time(): monotonic seconds. */
double ml__now(void);
/* [-0, +1] pushes the loop object. */
void ml__push_loop(lua_State *L);
/* Makes the loop object, its Handles and timers.  [-0, +1] pushes the
 * loop's methods table (asyncio.core.Loop: modules add methods to it). */
void ml__loop_open(lua_State *L);

#endif
