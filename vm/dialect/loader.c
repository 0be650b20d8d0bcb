/* loader.c: loading the dialect: every way Lua code gets into a state
 * (scripts, require, load, loadfile, dofile) goes through the async pass. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lauxlib.h>
#include "asyncpass.h"
#include "loader.h"

/* The callees of the awaited calls of each chunk loaded from a file or a
 * named source ('@' or '=' chunknames: a bounded set, unlike load()'s
 * strings), by line: registry[AWNAMES][chunkname][line] = "field 'x'",
 * or false where a line's awaited calls are not told apart.  coro.c
 * reads it (by the same key) when an awaited call fails, to name what was
 * nil as Lua does.  A chunkname loaded again merges: a line that now
 * names something else becomes false, so a name shown is never wrong. */
#define AWNAMES "moonloop.awnames"

static void note_names(lua_State *L, const char *chunkname, const ml_Buf *names) {
  const char *p = names->data, *end = names->data + names->len;
  if (names->len == 0 || (*chunkname != '@' && *chunkname != '=')) return;
  if (lua_getfield(L, LUA_REGISTRYINDEX, AWNAMES) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, AWNAMES);
  }
  if (lua_getfield(L, -1, chunkname) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, chunkname);
  }
  while (p < end) {
    const char *tab = memchr(p, '\t', (size_t)(end - p)), *nl;
    lua_Integer line;
    if (tab == NULL || (nl = memchr(tab, '\n', (size_t)(end - tab))) == NULL) break;
    line = strtol(p, NULL, 10);
    if (nl > tab + 1) lua_pushlstring(L, tab + 1, (size_t)(nl - tab - 1));
    else lua_pushboolean(L, 0);
    switch (lua_rawgeti(L, -2, line)) {
    case LUA_TNIL: /* the first on the line */
      lua_pop(L, 1);
      lua_rawseti(L, -2, line);
      break;
    default:
      if (!lua_rawequal(L, -1, -2)) {
        lua_pushboolean(L, 0);
        lua_rawseti(L, -4, line);
      }
      lua_pop(L, 2);
    }
    p = nl + 1;
  }
  lua_pop(L, 2);
}

/* [-0, +0] note_names in protected mode: memory for it may be short. */
static int note_names_p(lua_State *L) {
  note_names(L, lua_touserdata(L, 1), lua_touserdata(L, 2));
  return 0;
}

/* Writes chunkname as Lua's messages show it (luaO_chunkid's rules, which
 * the API does not export): "=name" is name, "@file" is file (its tail,
 * after "...", if too long), a source string is [string "first line..."].
 * id has LUA_IDSIZE bytes. */
static void chunk_id(char *id, const char *chunkname) {
  size_t n = strlen(chunkname), room = LUA_IDSIZE - 1;
  if (*chunkname == '=') {
    snprintf(id, LUA_IDSIZE, "%.*s", (int)room, chunkname + 1);
  } else if (*chunkname == '@') {
    if (n - 1 <= room) snprintf(id, LUA_IDSIZE, "%s", chunkname + 1);
    else snprintf(id, LUA_IDSIZE, "...%s", chunkname + n - (room - 3));
  } else {
    const char *nl = strchr(chunkname, '\n');
    size_t keep = nl ? (size_t)(nl - chunkname) : n;
    room -= sizeof "[string \"...\"]" - 1;
    if (keep >= room || nl) {
      if (keep > room) keep = room;
      snprintf(id, LUA_IDSIZE, "[string \"%.*s...\"]", (int)keep, chunkname);
    } else {
      snprintf(id, LUA_IDSIZE, "[string \"%s\"]", chunkname);
    }
  }
}

/* Lua's parser counts nesting (blocks, brackets, function bodies,
 * operators, consecutive labels) in C levels and, past LUAI_MAXCCALLS
 * (200), fails with a bare "C stack overflow": no chunk, no line.  Says
 * what it means and where.  [-1, +1] replaces the message on top. */
static void explain_parse_error(lua_State *L, const char *id) {
  const char *msg = lua_tostring(L, -1);
  if (msg == NULL || strcmp(msg, "C stack overflow") != 0) return;
  lua_pop(L, 1);
  lua_pushfstring(L,
                  "%s: nesting too deep: Lua's parser allows about 200 levels of nested "
                  "blocks, brackets, functions and operators (C stack overflow)",
                  id);
}

int ml__load(lua_State *L, const char *src, size_t len, const char *chunkname) {
  ml_Buf out = {0}, names = {0};
  char err[512], id[LUA_IDSIZE + 1];
  int rc;
  if (chunkname == NULL) chunkname = "=?";
  /* The pass names the chunk as Lua will ("=" keeps it as it is). */
  id[0] = '=';
  chunk_id(id + 1, chunkname);
  /* A first line starting with '#' (a shebang) is skipped, keeping its
   * newline so that line numbers stay right. */
  if (len > 0 && src[0] == '#') {
    while (len > 0 && *src != '\n') src++, len--;
  }
  if (len > 0 && src[0] == 0x1b) {
    lua_pushfstring(L, "%s: binary chunks are not loaded", id + 1);
    return LUA_ERRSYNTAX;
  }
  rc = ml__asyncpass_names(src, len, id, &out, &names, err, sizeof err);
  if (rc == -ENOMEM) {
    ml__buf_free(&names);
    ml__buf_free(&out);
    lua_pushliteral(L, "not enough memory");
    return LUA_ERRMEM;
  }
  if (rc < 0) {
    ml__buf_free(&names);
    ml__buf_free(&out);
    lua_pushstring(L, err);
    return LUA_ERRSYNTAX;
  }
  rc = luaL_loadbufferx(L, out.data ? out.data : "", out.len, chunkname, "t");
  ml__buf_free(&out);
  if (rc != LUA_OK) explain_parse_error(L, id + 1);
  if (rc == LUA_OK && names.len > 0) {
    lua_pushcfunction(L, note_names_p);
    lua_pushlightuserdata(L, (void *)chunkname);
    lua_pushlightuserdata(L, &names);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1); /* only messages lose a name */
  }
  ml__buf_free(&names);
  return rc;
}

/* Loads the file at path (NULL: stdin) in the dialect.  [-0, +1] pushes the
 * function or the message; returns a LUA_* status. */
static int load_file(lua_State *L, const char *path) {
  ml_Buf b = {0};
  const char *failed;
  int rc, st;
  lua_pushfstring(L, path ? "@%s" : "=stdin", path);
  rc = ml__buf_read_file(&b, path, &failed);
  if (rc < 0) {
    ml__buf_free(&b);
    lua_pop(L, 1);
    lua_pushfstring(L, "cannot %s %s: %s", failed, path ? path : "stdin", strerror(-rc));
    return LUA_ERRFILE;
  }
  st = ml__load(L, b.data ? b.data : "", b.len, lua_tostring(L, -1));
  ml__buf_free(&b);
  lua_remove(L, -2);
  return st;
}

/* package.searchers[2], for Lua files on package.path: like Lua's own,
 * but the file goes through the async pass, so modules may use the
 * dialect too. */
static int search_lua(lua_State *L) {
  const char *name = luaL_checkstring(L, 1), *path;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchpath");
  lua_pushvalue(L, 1);
  lua_getfield(L, -3, "path");
  lua_call(L, 2, 2);
  if (lua_isnil(L, -2)) return 1; /* the "no file ..." list */
  lua_pop(L, 1);
  path = lua_tostring(L, -1);
  if (load_file(L, path) != LUA_OK)
    return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, path,
                      lua_tostring(L, -1));
  lua_insert(L, -2); /* the loader, then the file name as its second argument */
  return 2;
}

/* Sets the first upvalue of the loaded function (its _ENV) to the value
 * at env, if env is not 0.  [-0, +0] */
static void set_env(lua_State *L, int env) {
  if (env) {
    lua_pushvalue(L, env);
    if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1);
  }
}

/* load(chunk [, chunkname [, mode [, env]]]): Lua's load, with text chunks
 * in the dialect. */
static int l_load(lua_State *L) {
  const char *mode = luaL_optstring(L, 3, "bt"), *name, *s;
  int env = !lua_isnone(L, 4) ? 4 : 0, st;
  size_t len;
  if (lua_type(L, 1) == LUA_TSTRING) {
    s = lua_tolstring(L, 1, &len);
    name = luaL_optstring(L, 2, s);
  } else {
    /* A reader function: concatenate its pieces. */
    luaL_Buffer b;
    luaL_checktype(L, 1, LUA_TFUNCTION);
    name = luaL_optstring(L, 2, "=(load)");
    lua_settop(L, 4);
    luaL_buffinit(L, &b);
    for (;;) {
      lua_pushvalue(L, 1);
      lua_call(L, 0, 1);
      if (lua_isnil(L, -1) || (lua_isstring(L, -1) && lua_rawlen(L, -1) == 0)) {
        lua_pop(L, 1);
        break;
      }
      if (!lua_isstring(L, -1)) return luaL_error(L, "reader function must return a string");
      luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    lua_replace(L, 1);
    s = lua_tolstring(L, 1, &len);
  }
  if (len > 0 && s[0] == LUA_SIGNATURE[0]) {
    st = luaL_loadbufferx(L, s, len, name, mode); /* checks mode itself */
  } else if (strchr(mode, 't') == NULL) {
    lua_pushfstring(L, "attempt to load a text chunk (mode is '%s')", mode);
    st = LUA_ERRSYNTAX;
  } else {
    st = ml__load(L, s, len, name);
  }
  if (st != LUA_OK) {
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
  }
  set_env(L, env);
  return 1;
}

/* loadfile([filename [, mode [, env]]]) */
static int l_loadfile(lua_State *L) {
  const char *path = luaL_optstring(L, 1, NULL);
  int env = !lua_isnone(L, 3) ? 3 : 0;
  if (load_file(L, path) != LUA_OK) {
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
  }
  set_env(L, env);
  return 1;
}

static int dofile_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L) - 1;
}

/* dofile([filename]) */
static int l_dofile(lua_State *L) {
  const char *path = luaL_optstring(L, 1, NULL);
  lua_settop(L, 1);
  if (load_file(L, path) != LUA_OK) return lua_error(L);
  lua_callk(L, 0, LUA_MULTRET, 0, dofile_k);
  return dofile_k(L, LUA_OK, 0);
}

void ml__loader_open(lua_State *L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  lua_pushcfunction(L, search_lua);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
  lua_pushcfunction(L, l_load);
  lua_setglobal(L, "load");
  lua_pushcfunction(L, l_loadfile);
  lua_setglobal(L, "loadfile");
  lua_pushcfunction(L, l_dofile);
  lua_setglobal(L, "dofile");
}
