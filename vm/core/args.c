/* args.c: checking integers that scripts pass to C, before any cast or
 * arithmetic: a value out of range is refused with an error naming the
 * argument, never truncated (an fd of 2^32 + 3 is not fd 3) or left to
 * overflow. */
#include "module.h"

/* [-0, +0] the integer argument arg, or an argument error naming the
 * range. */
lua_Integer ml__checkrange(lua_State *L, int arg, lua_Integer lo, lua_Integer hi) {
  lua_Integer v = luaL_checkinteger(L, arg);
  if (v < lo || v > hi)
    luaL_argerror(L, arg,
                  lua_pushfstring(L, "value %I out of range [%I, %I]", (LUAI_UACINT)v,
                                  (LUAI_UACINT)lo, (LUAI_UACINT)hi));
  return v;
}

/* [-0, +0] the same, def when arg is none or nil. */
lua_Integer ml__optrange(lua_State *L, int arg, lua_Integer def, lua_Integer lo, lua_Integer hi) {
  return lua_isnoneornil(L, arg) ? def : ml__checkrange(L, arg, lo, hi);
}
