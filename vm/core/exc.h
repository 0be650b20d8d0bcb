/* exc.h: exceptions (exc.c over stdlib/asyncio/exceptions.lua); module.h has the calls stdlib modules use. */
#ifndef ML_EXC_H
#define ML_EXC_H

#include "state.h"

/* Maps errno values to OSError subclasses; called once at state creation. */
void ml__exc_init(lua_State *L);
/* [-1, +1] replaces the value on top, a message of any type (nil: none),
 * with cls(message), or cls() for nil: a cancel message stays the value
 * the script gave (e.message == msg). */
void ml__exc_push_with(lua_State *L, const char *cls);

#endif
