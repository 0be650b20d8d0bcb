/* register.c: how the networking modules add their functions to a
 * table (sync ones as they are, async ones as async functions) and reach
 * the loop's methods table. */
#include "socket/net.h"

void ml__net_setfuncs(lua_State *L, int idx, const char *prefix, const luaL_Reg *sync,
                      const luaL_Reg *async) {
  ML_STACK_MARK(L);
  idx = lua_absindex(L, idx);
  for (; sync && sync->name; sync++) {
    lua_pushcfunction(L, sync->func);
    lua_setfield(L, idx, sync->name);
  }
  for (; async && async->name; async++) {
    lua_pushfstring(L, "%s%s", prefix, async->name);
    ml__push_async(L, lua_tostring(L, -1), async->func);
    lua_setfield(L, idx, async->name);
    lua_pop(L, 1);
  }
  ML_STACK_CHECK(L, 0);
}

void ml__net_push_loop_methods(lua_State *L) {
  ml__require(L, "asyncio.core");
  lua_getfield(L, -1, "Loop");
  lua_remove(L, -2);
  if (!lua_istable(L, -1)) luaL_error(L, "asyncio.core has no Loop methods table");
}
