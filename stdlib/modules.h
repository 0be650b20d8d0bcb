/* modules.h: the modules compiled into libmoonloop (init.c lists the C
 * ones; the build-time tool stdlib/tools/bytecode.c writes the Lua ones,
 * as bytecode, into embedded.c). */
#ifndef ML_MODULES_H
#define ML_MODULES_H

#include "core/module.h"

/* The Lua modules, ending with name == NULL (embedded.c, generated). */
extern const ml_Embedded ml__embedded_lua[];

/* Puts every stdlib module, C and Lua, in package.preload.  [-0, +0] */
void ml__stdlib_open(lua_State *L);

/* [-0, +1] pushes {C module name = its capability} (init.c), which the
 * sandbox reads. */
void ml__stdlib_caps(lua_State *L);

#endif
