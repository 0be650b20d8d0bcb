/* init.c: the stdlib's module list, as Lua's linit.c is the standard
 * library's.  A new C module is added here by hand; a new Lua module is
 * found by the Makefile (every every stdlib .lua file) and embedded as bytecode. */
#include <lauxlib.h>
#include "modules.h"

int luaopen_socket(lua_State *L);
int luaopen_asyncio__net(lua_State *L);
int luaopen_asyncio__process(lua_State *L);
int luaopen_asyncio__queue(lua_State *L);
int luaopen_asyncio__signal(lua_State *L);
int luaopen_asyncio__thread(lua_State *L);
int luaopen_asyncio__server(lua_State *L);
int luaopen_asyncio__stream(lua_State *L);
int luaopen_asyncio__transport(lua_State *L);
int luaopen_ssl__ssl(lua_State *L);

/* The C modules, by the name scripts require them by. */
static const luaL_Reg c_modules[] = {
  { "socket", luaopen_socket },
  { "asyncio._net", luaopen_asyncio__net },
  { "asyncio._process", luaopen_asyncio__process },
  { "asyncio._queue", luaopen_asyncio__queue },
  { "asyncio._server", luaopen_asyncio__server },
  { "asyncio._signal", luaopen_asyncio__signal },
  { "asyncio._thread", luaopen_asyncio__thread },
  { "asyncio._stream", luaopen_asyncio__stream },
  { "asyncio._transport", luaopen_asyncio__transport },
  { "ssl._ssl", luaopen_ssl__ssl },
  { NULL, NULL }
};

void ml__stdlib_open(lua_State *L) {
  const luaL_Reg *c;
  ml__preload_embedded(L, ml__embedded_lua);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (c = c_modules; c->name; c++) {
    lua_pushcfunction(L, c->func);
    lua_setfield(L, -2, c->name);
  }
  lua_pop(L, 1);
}
