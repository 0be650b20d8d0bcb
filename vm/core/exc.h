/* exc.h: exceptions (exc.c over stdlib/asyncio/exceptions.lua); module.h has the calls stdlib modules use. */
#ifndef ML_EXC_H
#define ML_EXC_H

#include "state.h"

/* Maps errno values to OSError subclasses; called once at state creation. */
void ml__exc_init(lua_State *L);

#endif
