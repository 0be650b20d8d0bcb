/* loader.h: loading the dialect (loader.c): every chunk that enters a
 * state goes through the async pass here.  Needs lua.h; knows no core. */
#ifndef ML_LOADER_H
#define ML_LOADER_H

#include <stddef.h>
#include <lua.h>

/* Loads src (the dialect) as a chunk.  [-0, +1] pushes the function, or
 * the error message; returns a LUA_* status. */
int ml__load(lua_State *L, const char *src, size_t len, const char *chunkname);

/* Installs the dialect's loaders: package.searchers[2], load, loadfile,
 * dofile.  [-0, +0] */
void ml__loader_open(lua_State *L);

#endif
