/* buffer.h: socket.buffer, a fixed-size mutable byte array (buffer.c). */
#ifndef ML_BUFFER_H
#define ML_BUFFER_H

#include "core/module.h"

#define ML_BUFFER "socket.buffer"

/* Makes the socket.buffer metatable (once per state).  [-0, +0] */
void ml__buffer_open(lua_State *L);
/* socket.buffer(size | string): a lua_CFunction.  [-0, +1] pushes a new
 * buffer of size zero bytes, or holding a copy of the string. */
int ml__buffer_new(lua_State *L);
/* The bytes of the socket.buffer at idx (raises a type error naming the
 * argument if it is not one); *size receives its size.  [-0, +0] */
char *ml__buffer_check(lua_State *L, int idx, size_t *size);
/* The same, or NULL if the value at idx is not a socket.buffer.
 * [-0, +0] */
char *ml__buffer_test(lua_State *L, int idx, size_t *size);

#endif
