/* gather.h: gather's bookkeeping in C (gather.c). */
#ifndef ML_GATHER_H
#define ML_GATHER_H

#include "future.h"

int ml__gather(lua_State *L); /* core._gather(outer, children, return_exceptions, ensure) */

#endif
