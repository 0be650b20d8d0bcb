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
int luaopen_http__server(lua_State *L);
int luaopen_http__ws(lua_State *L);
int luaopen_cjson(lua_State *L); /* lua-cjson's, linked in whole */
int luaopen_http__curl(lua_State *L);

/* The C modules, by the name scripts require them by, with what each
 * reaches outside the state: "net", "process", "signal", "thread",
 * "file", or "none".  The sandbox (vm/embed/sandbox.lua) allows a module
 * only if its capability and those of every module it requires are
 * allowed; the Lua modules' requires are read from their source by the
 * build, so only this column is written by hand. */
static const struct {
  const char *name;
  lua_CFunction open;
  const char *cap;
} c_modules[] = {{"socket", luaopen_socket, "net"},
                 {"asyncio._net", luaopen_asyncio__net, "net"},
                 {"asyncio._process", luaopen_asyncio__process, "process"},
                 {"asyncio._queue", luaopen_asyncio__queue, "none"},
                 {"asyncio._server", luaopen_asyncio__server, "net"},
                 {"asyncio._signal", luaopen_asyncio__signal, "signal"},
                 {"asyncio._thread", luaopen_asyncio__thread, "thread"},
                 {"asyncio._stream", luaopen_asyncio__stream, "net"},
                 {"asyncio._transport", luaopen_asyncio__transport, "net"},
                 {"ssl._ssl", luaopen_ssl__ssl, "net"},
                 {"http._server", luaopen_http__server, "net"},
                 {"http._ws", luaopen_http__ws, "none"},
                 {"json._cjson", luaopen_cjson, "none"},
                 {"http._curl", luaopen_http__curl, "net"},
                 {NULL, NULL, NULL}};

/* The graceful-shutdown hook (ml__at_shutdown): fn(main) closes every
 * server still open and then cancels main, asyncio.transports._shutdown
 * (loaded now if no script has loaded it). */
static int stdlib_shutdown(lua_State *L) {
  ml__require(L, "asyncio.transports");
  lua_getfield(L, -1, "_shutdown");
  lua_pushvalue(L, 1);
  lua_call(L, 1, 0);
  return 0;
}

void ml__stdlib_open(lua_State *L) {
  int i;
  ml__at_shutdown(L, stdlib_shutdown);
  ml__preload_embedded(L, ml__embedded_lua);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (i = 0; c_modules[i].name; i++) {
    lua_pushcfunction(L, c_modules[i].open);
    lua_setfield(L, -2, c_modules[i].name);
  }
  lua_pop(L, 1);
}

void ml__stdlib_caps(lua_State *L) {
  int i;
  lua_newtable(L);
  for (i = 0; c_modules[i].name; i++) {
    lua_pushstring(L, c_modules[i].cap ? c_modules[i].cap : "none");
    lua_setfield(L, -2, c_modules[i].name);
  }
}
