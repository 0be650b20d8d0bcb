/* buffer.c: socket.buffer, a fixed-size mutable byte array that
 * recv_into and the loop's sock_recv_into fill without making a string. */
#include <string.h>
#include "socket/buffer.h"

typedef struct {
  size_t size;
  char data[];
} Buffer;

/* [-0, +0] */
static Buffer *checkbuffer(lua_State *L, int idx) { return ml__udata_check(L, idx, ML_UT_BUFFER); }

char *ml__buffer_check(lua_State *L, int idx, size_t *size) {
  Buffer *b = checkbuffer(L, idx);
  *size = b->size;
  return b->data;
}

char *ml__buffer_test(lua_State *L, int idx, size_t *size) {
  Buffer *b = ml__udata_test(L, idx, ML_UT_BUFFER);
  if (b == NULL) return NULL;
  *size = b->size;
  return b->data;
}

int ml__buffer_new(lua_State *L) {
  size_t n = 0;
  const char *init = NULL;
  if (lua_type(L, 1) == LUA_TSTRING) init = lua_tolstring(L, 1, &n);
  else {
    lua_Integer k = luaL_checkinteger(L, 1);
    luaL_argcheck(L, k >= 0, 1, "negative size");
    n = (size_t)k;
  }
  Buffer *b = lua_newuserdatauv(L, sizeof *b + n, 0);
  b->size = n;
  if (init) memcpy(b->data, init, n);
  else memset(b->data, 0, n);
  ml__udata_setmt(L, ML_UT_BUFFER);
  return 1;
}

static int buffer_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checkbuffer(L, 1)->size);
  return 1;
}

/* Normalises a string.sub-style range [i, j] for size; returns the length.
 * [-0, +0] */
static size_t subrange(lua_State *L, int ii, int ij, size_t size, size_t *start) {
  lua_Integer i = luaL_optinteger(L, ii, 1), j = luaL_optinteger(L, ij, -1);
  lua_Integer n = (lua_Integer)size;
  if (i < 0) i = i + n + 1 > 0 ? i + n + 1 : 1;
  else if (i == 0) i = 1;
  if (j < 0) j = j + n + 1;
  else if (j > n) j = n;
  if (i > j) {
    *start = 0;
    return 0;
  }
  *start = (size_t)(i - 1);
  return (size_t)(j - i + 1);
}

static int buffer_tostring(lua_State *L) {
  Buffer *b = checkbuffer(L, 1);
  size_t start, n = subrange(L, 2, 3, b->size, &start);
  lua_pushlstring(L, b->data + start, n);
  return 1;
}

/* buf:set(offset, s): copies s into the buffer at 1-based offset. */
static int buffer_set(lua_State *L) {
  Buffer *b = checkbuffer(L, 1);
  lua_Integer off = luaL_checkinteger(L, 2);
  size_t n;
  const char *s = luaL_checklstring(L, 3, &n);
  luaL_argcheck(L, off >= 1 && (size_t)off - 1 + n <= b->size, 2, "out of range");
  memcpy(b->data + off - 1, s, n);
  return 0;
}

static int buffer_tostr_meta(lua_State *L) {
  Buffer *b = checkbuffer(L, 1);
  lua_pushfstring(L, "socket.buffer(%d)", (int)b->size);
  return 1;
}

static const luaL_Reg buffer_methods[] = {
  {"len", buffer_len}, {"tostring", buffer_tostring}, {"sub", buffer_tostring}, {"set", buffer_set},
  {NULL, NULL},
};

void ml__buffer_open(lua_State *L) {
  if (ml__udata_newmt(L, ML_UT_BUFFER, ML_BUFFER)) {
    luaL_newlib(L, buffer_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, buffer_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, buffer_tostr_meta);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}
