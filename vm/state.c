/* state.c: a moonloop state: the Lua VM, its allocator, its loop, the
 * embedded stdlib, and the loader that runs the async pass. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lualib.h>
#include "internal.h"

int ml__load(lua_State *L, const char *src, size_t len, const char *chunkname) {
  ml_Buf out = { 0 };
  char err[512];
  int rc;
  /* A first line starting with '#' (a shebang) is skipped, keeping its
   * newline so that line numbers stay right. */
  if (len > 0 && src[0] == '#') {
    while (len > 0 && *src != '\n') src++, len--;
  }
  if (len > 0 && src[0] == 0x1b) {
    lua_pushfstring(L, "%s: binary chunks are not loaded", chunkname);
    return LUA_ERRSYNTAX;
  }
  rc = ml__asyncpass(src, len, chunkname, &out, err, sizeof err);
  if (rc == -ENOMEM) {
    ml__buf_free(&out);
    lua_pushliteral(L, "not enough memory");
    return LUA_ERRMEM;
  }
  if (rc < 0) {
    ml__buf_free(&out);
    lua_pushstring(L, err);
    return LUA_ERRSYNTAX;
  }
  rc = luaL_loadbufferx(L, out.data ? out.data : "", out.len, chunkname, "t");
  ml__buf_free(&out);
  return rc;
}

void ml__emit_error(ml_State *S, const char *msg) {
  if (S->on_error) S->on_error(S, msg, S->on_error_ud);
  else fprintf(stderr, "moonloop: %s\n", msg);
}

/* package.preload entry for an embedded Lua module (upvalue: its index):
 * bytecode that stdlib/embed.c made at build time. */
static int load_embedded(lua_State *L) {
  const ml_Embedded *m = &ml__embedded_lua[lua_tointeger(L, lua_upvalueindex(1))];
  if (luaL_loadbufferx(L, m->src, m->len, m->name, "b") != LUA_OK) return lua_error(L);
  lua_pushstring(L, m->name);
  lua_call(L, 1, 1);
  return 1;
}

/* package.searchers[2], for Lua files on package.path: like Lua's own,
 * but the file goes through the async pass, so modules may use the
 * dialect too. */
static int search_lua(lua_State *L) {
  const char *name = luaL_checkstring(L, 1), *path;
  FILE *f;
  luaL_Buffer b;
  size_t n;
  int st;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  lua_pushvalue(L, 1);
  lua_getfield(L, -3, "path");
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2)) return 1;  /* the "no file ..." list */
  lua_pop(L, 1);
  path = lua_tostring(L, -1);
  if ((f = fopen(path, "rb")) == NULL)
    return luaL_error(L, "cannot read module '%s' from file '%s'", name, path);
  luaL_buffinit(L, &b);
  do {
    char *p = luaL_prepbuffer(&b);
    n = fread(p, 1, LUAL_BUFFERSIZE, f);
    luaL_addsize(&b, n);
  } while (n == LUAL_BUFFERSIZE);
  fclose(f);
  luaL_pushresult(&b);
  lua_pushfstring(L, "@%s", path);
  {
    size_t len;
    const char *src = lua_tolstring(L, -2, &len);
    st = ml__load(L, src, len, lua_tostring(L, -1));
  }
  if (st != LUA_OK)
    return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, path,
                      lua_tostring(L, -1));
  lua_pushvalue(L, -4);  /* the file name, the loader's second argument */
  return 2;
}

/* State set-up, run in protected mode. */
static int init(lua_State *L) {
  int i;
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  lua_pushcfunction(L, search_lua);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (i = 0; ml__embedded_lua[i].name; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, load_embedded, 1);
    lua_setfield(L, -2, ml__embedded_lua[i].name);
  }
  for (i = 0; ml__embedded_c[i].name; i++) {
    lua_pushcfunction(L, ml__embedded_c[i].func);
    lua_setfield(L, -2, ml__embedded_c[i].name);
  }
  lua_pop(L, 1);
  ml__future_open(L);
  ml__task_open(L);
  ml__coro_open(L);
  ml__exc_init(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "asyncio");
  lua_call(L, 1, 1);
  lua_setglobal(L, "asyncio");
  return 0;
}

ml_State *ml_state_new(struct ev_loop *loop) {
  ml_State *S = calloc(1, sizeof *S);
  lua_State *L;
  if (S == NULL) return NULL;
  S->alloc = ml__alloc_new(0);
  if (S->alloc == NULL) goto fail;
  L = lua_newstate(ml__alloc_lua, S->alloc);
  if (L == NULL) goto fail;
  S->L = L;
  *(ml_State **)lua_getextraspace(L) = S;
  S->loop = loop;
  if (loop == NULL) {
    S->loop = ev_loop_new(EVFLAG_AUTO);
    S->own_loop = 1;
    if (S->loop == NULL) goto fail;
  }
  if (getenv("MOONLOOP_DEBUG") && *getenv("MOONLOOP_DEBUG") && strcmp(getenv("MOONLOOP_DEBUG"), "0"))
    S->debug = 1;
  lua_pushcfunction(L, init);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) goto fail;
  if (ml__embed(S) == NULL) goto fail;
  return S;
fail:
  if (S->L) lua_close(S->L);
  if (S->own_loop && S->loop) ev_loop_destroy(S->loop);
  if (S->alloc) ml__alloc_free(S->alloc);
  free(S);
  return NULL;
}

lua_State *ml_state_lua(ml_State *S) { return S->L; }

/* How many loop iterations a closing state gives cancelled tasks to run
 * their cleanup (to-be-closed variables, except blocks); it never blocks. */
#define CLOSE_ITERATIONS 100

void ml_state_close(ml_State *S) {
  int i;
  if (S == NULL) return;
  for (i = 0; i < CLOSE_ITERATIONS && S->tasks; i++) {
    ml_Task *t;
    if (i == 0)
      for (t = S->tasks; t; t = t->next) ml__task_cancel(S->L, t, 0);
    ml__sched_step(S);
  }
  lua_close(S->L);
  ml__readyq_free(&S->ready);
  if (S->own_loop) ev_loop_destroy(S->loop);
  ml__alloc_free(S->alloc);
  free(S);
}
