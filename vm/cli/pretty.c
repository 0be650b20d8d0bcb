/* pretty.c: the REPL's printer of values: short, depth-limited and
 * cycle-safe, with userdata (futures, tasks, exceptions) shown by their
 * __tostring.
 *
 * A table reads as a Lua constructor: the sequence 1..n first, then the
 * other keys in a stable order (numbers, then strings, then the rest), at
 * most MAX_ITEMS entries and MAX_DEPTH levels.  A table that fits in
 * WIDTH columns is printed on one line, else over several lines.  Only raw
 * access is used to walk tables, so printing runs no __index or __pairs;
 * __tostring and __name metamethods are honoured, as print() does. */
#include <stdlib.h>
#include <string.h>
#include "cli.h"

#define MAX_DEPTH 4
#define MAX_ITEMS 40
#define WIDTH 78

/* 1 if s (of length n) can be written as a field name: `t.s`. */
static int is_name(const char *s, size_t n) {
  const char *kw;
  size_t i;
  int k;
  if (n == 0 || !(s[0] == '_' || ((s[0] | 32) >= 'a' && (s[0] | 32) <= 'z'))) return 0;
  for (i = 1; i < n; i++)
    if (!(s[i] == '_' || (s[i] >= '0' && s[i] <= '9') ||
          ((s[i] | 32) >= 'a' && (s[i] | 32) <= 'z')))
      return 0;
  for (k = 0; (kw = ml_dialect_keyword(k)) != NULL; k++)
    if (strlen(kw) == n && memcmp(kw, s, n) == 0) return 0;
  return 1;
}

/* [-0, +1] pushes the string at idx quoted as a Lua literal.  Bytes >= 0x80
 * are kept, so UTF-8 text stays readable. */
static void push_quoted(lua_State *L, int idx) {
  size_t n, i;
  const char *s = lua_tolstring(L, idx, &n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addchar(&b, '"');
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    switch (c) {
    case '"': luaL_addstring(&b, "\\\""); break;
    case '\\': luaL_addstring(&b, "\\\\"); break;
    case '\n': luaL_addstring(&b, "\\n"); break;
    case '\r': luaL_addstring(&b, "\\r"); break;
    case '\t': luaL_addstring(&b, "\\t"); break;
    default:
      if (c < 32 || c == 127) {
        char esc[8];
        /* \ddd with three digits, so that a following digit is not eaten */
        snprintf(esc, sizeof esc, "\\%03u", c);
        luaL_addstring(&b, esc);
      } else {
        luaL_addchar(&b, (char)c);
      }
    }
  }
  luaL_addchar(&b, '"');
  luaL_pushresult(&b);
}

/* 1 if the value at idx has a metatable with __tostring or __name: it
 * says itself how it prints. */
static int prints_itself(lua_State *L, int idx) {
  int r = 0;
  if (lua_getmetatable(L, idx)) {
    r = lua_getfield(L, -1, "__tostring") != LUA_TNIL;
    lua_pop(L, 1);
    if (!r) {
      r = lua_getfield(L, -1, "__name") == LUA_TSTRING;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  return r;
}

static void render(lua_State *L, int idx, int depth, int indent, int seen);

/* A key of a table being printed, for sorting. */
typedef struct Key {
  int cls; /* 0 number, 1 string, 2 anything else */
  lua_Number num;
  const char *str; /* anchored in the keys table */
  int slot;        /* index in the keys table */
} Key;

static int key_cmp(const void *pa, const void *pb) {
  const Key *a = pa, *b = pb;
  if (a->cls != b->cls) return a->cls - b->cls;
  if (a->cls == 0) return a->num < b->num ? -1 : a->num > b->num;
  if (a->cls == 1) return strcmp(a->str, b->str);
  return a->slot - b->slot;
}

/* [-0, +1] pushes the rendering of the table at t (not yet in seen). */
static void render_table(lua_State *L, int t, int depth, int indent, int seen) {
  lua_Integer n = 0, i;
  int nkeys = 0, nitems = 0, nseq, k, total = 2, multiline = 0, keys, items, more = 0;
  Key *kv;
  luaL_checkstack(L, 16, "nesting too deep to print");
  lua_pushvalue(L, t);
  lua_pushboolean(L, 1);
  lua_rawset(L, seen);
  lua_newtable(L); /* keys other than the sequence */
  keys = lua_gettop(L);
  lua_newtable(L); /* rendered entries */
  items = lua_gettop(L);
  while (lua_rawgeti(L, t, n + 1) != LUA_TNIL) {
    lua_pop(L, 1);
    n++;
  }
  lua_pop(L, 1);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 && lua_tointeger(L, -1) <= n) continue;
    lua_pushvalue(L, -1);
    lua_rawseti(L, keys, ++nkeys);
  }
  kv = lua_newuserdatauv(L, sizeof(Key) * (nkeys ? nkeys : 1), 0);
  for (k = 0; k < nkeys; k++) {
    kv[k].slot = k + 1;
    kv[k].str = NULL;
    kv[k].num = 0;
    switch (lua_rawgeti(L, keys, k + 1)) {
    case LUA_TNUMBER:
      kv[k].cls = 0;
      kv[k].num = lua_tonumber(L, -1);
      break;
    case LUA_TSTRING:
      kv[k].cls = 1;
      kv[k].str = lua_tostring(L, -1);
      break;
    default: kv[k].cls = 2;
    }
    lua_pop(L, 1);
  }
  qsort(kv, nkeys, sizeof(Key), key_cmp);

  for (i = 1; i <= n; i++) {
    if (nitems == MAX_ITEMS) {
      more = 1;
      break;
    }
    lua_rawgeti(L, t, i);
    render(L, lua_gettop(L), depth + 1, indent + 2, seen);
    lua_remove(L, -2);
    lua_rawseti(L, items, ++nitems);
  }
  nseq = nitems;
  for (k = 0; k < nkeys && !more; k++) {
    size_t len;
    const char *s;
    if (nitems == MAX_ITEMS) {
      more = 1;
      break;
    }
    lua_rawgeti(L, keys, kv[k].slot);
    s = lua_tolstring(L, -1, &len);
    if (kv[k].cls == 1 && is_name(s, len)) {
      lua_pushfstring(L, "%s = ", s);
    } else {
      render(L, lua_gettop(L), MAX_DEPTH, indent + 2, seen); /* a key: shallow */
      lua_pushfstring(L, "[%s] = ", lua_tostring(L, -1));
      lua_remove(L, -2);
    }
    lua_pushvalue(L, -2);
    lua_rawget(L, t);
    render(L, lua_gettop(L), depth + 1, indent + 2, seen);
    lua_remove(L, -2);
    lua_concat(L, 2);
    lua_remove(L, -2); /* the key */
    lua_rawseti(L, items, ++nitems);
  }
  if (more) {
    lua_pushliteral(L, "...");
    lua_rawseti(L, items, ++nitems);
  }
  for (k = 1; k <= nitems; k++) {
    size_t len;
    lua_rawgeti(L, items, k);
    lua_tolstring(L, -1, &len);
    total += (int)len + 2;
    if (memchr(lua_tostring(L, -1), '\n', len)) multiline = 1;
    lua_pop(L, 1);
  }
  if (indent + total > WIDTH) multiline = 1;
  {
    /* Multi-line: the sequence's entries are packed into lines of up to
     * WIDTH columns; keyed entries, and entries that span lines, get lines
     * of their own. */
    luaL_Buffer b;
    int col = indent + 1, prev_nl = 0;
    luaL_buffinit(L, &b);
    luaL_addchar(&b, '{');
    for (k = 1; k <= nitems; k++) {
      size_t len;
      int nl;
      lua_rawgeti(L, items, k);
      lua_tolstring(L, -1, &len);
      nl = memchr(lua_tostring(L, -1), '\n', len) != NULL;
      if (multiline) {
        if (k == 1 || k > nseq || nl || prev_nl || col + 1 + (int)len + 1 > WIDTH) {
          luaL_addchar(&b, '\n');
          for (i = 0; i < indent + 2; i++) luaL_addchar(&b, ' ');
          col = indent + 2;
        } else {
          luaL_addchar(&b, ' ');
          col++;
        }
      }
      luaL_addvalue(&b);
      col += (int)len;
      prev_nl = nl;
      if (k < nitems) {
        luaL_addstring(&b, multiline ? "," : ", ");
        col++;
      }
    }
    if (multiline && nitems > 0) {
      luaL_addchar(&b, '\n');
      for (i = 0; i < indent; i++) luaL_addchar(&b, ' ');
    }
    luaL_addchar(&b, '}');
    luaL_pushresult(&b);
  }
  lua_replace(L, keys);
  lua_settop(L, keys);
  lua_pushvalue(L, t);
  lua_pushnil(L);
  lua_rawset(L, seen); /* a table seen twice on different paths is no cycle */
}

/* [-0, +1] pushes the rendering of the value at idx. */
static void render(lua_State *L, int idx, int depth, int indent, int seen) {
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: push_quoted(L, idx); return;
  case LUA_TTABLE:
    if (prints_itself(L, idx)) break;
    lua_pushvalue(L, idx);
    if (lua_rawget(L, seen) != LUA_TNIL) {
      lua_pop(L, 1);
      lua_pushfstring(L, "<cycle: %p>", lua_topointer(L, idx));
      return;
    }
    lua_pop(L, 1);
    if (depth >= MAX_DEPTH) {
      lua_pushliteral(L, "{...}");
      return;
    }
    render_table(L, idx, depth, indent, seen);
    return;
  default: break;
  }
  luaL_tolstring(L, idx, NULL);
}

/* Renders the value at idx for the REPL.  [-0, +1] pushes a string.  With
 * raw_string, a string is pushed as it is (as lua.c prints it); inside
 * tables strings are always quoted.  May raise (a __tostring that fails,
 * out of memory): call it in protected mode. */
void ml__pretty(lua_State *L, int idx, int raw_string) {
  idx = lua_absindex(L, idx);
  if (raw_string && lua_type(L, idx) == LUA_TSTRING) {
    lua_pushvalue(L, idx);
    return;
  }
  lua_newtable(L);
  render(L, idx, 0, 0, lua_gettop(L));
  lua_remove(L, -2);
}
