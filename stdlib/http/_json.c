/* _json.c: http.json(value, [status], [headers]), the JSON response of
 * a handler, in C: the value is encoded straight into a scratch buffer
 * kept by the function (no Lua string but the body itself, nothing
 * allocated in steady state) and the http.Response table is made with
 * its four fields at once.  The Lua version (json.encode through its
 * pcall wrapper, then http.Response's checks, then a fourth field that
 * rehashed the table) cost ~9,500 instructions for a 3-field object;
 * this one ~2,000 (docs/performance.md, "HTTP server").
 *
 * The output is json.encode's, byte for byte (lua-cjson's rules:
 * char2escape's escapes, "/" as "\/", integers in full, an empty table
 * as {}, a table with positive integer keys only as an array with holes
 * as null, json.null as null, tables read raw, in lua_next's order).
 * Whatever this encoder does not cover -- floats, float keys, sparse
 * arrays, nesting over FAST_DEPTH, any value JSON has no form for -- is
 * handed whole to json.encode, which encodes it or raises its error
 * naming the problem; test_http_server.lua compares the two on random
 * values. */
#include <string.h>
#include "http/hconn.h"

#define FAST_DEPTH 64      /* deeper values go to json.encode */
#define SCRATCH_KEEP 65536 /* the scratch buffer keeps up to this */

/* Upvalues of the http.json closure. */
enum {
  JUV_MT = 1, /* http.Response's metatable */
  JUV_ENCODE, /* json.encode: the general path */
  JUV_BUF,    /* the scratch buffer (a userdata holding an ml_BQ) */
  JUV_KSTATUS,
  JUV_KBODY,
  JUV_KTYPE,
  JUV_KHEADERS,
  JUV_CTYPE, /* "application/json" */
  JUV_N = JUV_CTYPE,
};

typedef struct Scratch {
  ml_BQ b;
} Scratch;

/* Writes len bytes; 0 on success, -1 out of memory. */
static int put(ml_BQ *b, const char *s, size_t len) { return ml__bq_add(b, s, len) < 0 ? -1 : 0; }

static const char hexd[] = "0123456789abcdef";

/* A string as lua-cjson writes it (char2escape). */
static int put_string(ml_BQ *b, const char *s, size_t len) {
  char *d, *p;
  if (len > ((size_t)-1 - 2) / 6) return -1;
  d = ml__bq_reserve(b, len * 6 + 2);
  if (d == NULL) return -1;
  p = d;
  *p++ = '"';
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 32 && ch != '"' && ch != '\\' && ch != '/' && ch != 127) {
      *p++ = (char)ch;
      continue;
    }
    *p++ = '\\';
    switch (ch) {
    case '"': *p++ = '"'; break;
    case '\\': *p++ = '\\'; break;
    case '/': *p++ = '/'; break;
    case '\b': *p++ = 'b'; break;
    case '\t': *p++ = 't'; break;
    case '\n': *p++ = 'n'; break;
    case '\f': *p++ = 'f'; break;
    case '\r': *p++ = 'r'; break;
    default:
      *p++ = 'u';
      *p++ = '0';
      *p++ = '0';
      *p++ = hexd[ch >> 4];
      *p++ = hexd[ch & 15];
    }
  }
  *p++ = '"';
  ml__bq_commit(b, (size_t)(p - d));
  return 0;
}

/* An integer in full (as _numbers.c makes lua-cjson write it). */
static int put_int(ml_BQ *b, lua_Integer v) {
  char tmp[24];
  size_t k = sizeof tmp;
  /* the magnitude as unsigned: math.mininteger has no positive twin */
  unsigned long long m = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
  do {
    tmp[--k] = (char)('0' + m % 10);
    m /= 10;
  } while (m);
  if (v < 0) tmp[--k] = '-';
  return put(b, tmp + k, sizeof tmp - k);
}

/* Result of enc(): written, or not this encoder's to write. */
enum { ENC_OK = 0, ENC_NOMEM = -1, ENC_OTHER = 1 };

static int enc(lua_State *L, ml_BQ *b, int idx, int depth);

/* The table at idx (absolute): an array or an object, as lua-cjson
 * decides (lua_array_length: every key a positive integer). */
static int enc_table(lua_State *L, ml_BQ *b, int idx, int depth) {
  lua_Integer max = 0, items = 0;
  int r, first = 1;
  if (depth >= FAST_DEPTH || !lua_checkstack(L, 4)) return ENC_OTHER;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
      lua_Integer k = lua_tointeger(L, -1);
      if (k > max) max = k;
      items++;
      continue;
    }
    lua_pop(L, 1);
    max = -1; /* an object */
    break;
  }
  if (max > 0) {
    /* encode_sparse_array(false, 2, 10): json.encode raises */
    if (max > items * 2 && max > 10) return ENC_OTHER;
    if (put(b, "[", 1) < 0) return ENC_NOMEM;
    for (lua_Integer i = 1; i <= max; i++) {
      if (i > 1 && put(b, ",", 1) < 0) return ENC_NOMEM;
      lua_rawgeti(L, idx, i);
      r = enc(L, b, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
      if (r != ENC_OK) return r;
    }
    return put(b, "]", 1);
  }
  if (put(b, "{", 1) < 0) return ENC_NOMEM;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (!first && put(b, ",", 1) < 0) return ENC_NOMEM;
    first = 0;
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t kl;
      const char *k = lua_tolstring(L, -2, &kl);
      r = put_string(b, k, kl);
    } else if (lua_isinteger(L, -2)) {
      r = put(b, "\"", 1);
      if (r == 0) r = put_int(b, lua_tointeger(L, -2));
      if (r == 0) r = put(b, "\"", 1);
    } else {
      r = ENC_OTHER; /* a float key, or one json.encode refuses */
    }
    if (r == ENC_OK) r = put(b, ":", 1);
    if (r == ENC_OK) r = enc(L, b, lua_gettop(L), depth + 1);
    if (r != ENC_OK) {
      lua_pop(L, 2);
      return r;
    }
    lua_pop(L, 1);
  }
  return put(b, "}", 1);
}

/* The value at idx (absolute). */
static int enc(lua_State *L, ml_BQ *b, int idx, int depth) {
  switch (lua_type(L, idx)) {
  case LUA_TNIL: return put(b, "null", 4);
  case LUA_TBOOLEAN: return lua_toboolean(L, idx) ? put(b, "true", 4) : put(b, "false", 5);
  case LUA_TNUMBER:
    if (lua_isinteger(L, idx)) return put_int(b, lua_tointeger(L, idx));
    return ENC_OTHER; /* floats: json.encode's shortest round-trip form */
  case LUA_TSTRING: {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return put_string(b, s, n);
  }
  case LUA_TTABLE: return enc_table(L, b, idx, depth);
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) return put(b, "null", 4); /* json.null */
    return ENC_OTHER;
  default: return ENC_OTHER;
  }
}

static int scratch_gc(lua_State *L) {
  Scratch *s = lua_touserdata(L, 1);
  ml__bq_free(&s->b);
  return 0;
}

/* http.json(value, [status], [headers]) -> an http.Response whose body is
 * value's JSON text and whose content_type is application/json. */
static int l_json(lua_State *L) {
  Scratch *s = lua_touserdata(L, lua_upvalueindex(JUV_BUF));
  int r;
  lua_settop(L, 3);
  if (!lua_isnil(L, 2) && !lua_isinteger(L, 2))
    return ml__exc_raise(L, "TypeError", "http.json() status must be an integer, got %s",
                         luaL_typename(L, 2));
  if (!lua_isnil(L, 3) && !lua_istable(L, 3))
    return ml__exc_raise(L, "TypeError", "http.json() headers must be a table, got %s",
                         luaL_typename(L, 3));
  ml__bq_consume(&s->b, s->b.len);
  r = enc(L, &s->b, 1, 0);
  lua_settop(L, 3);
  if (r == ENC_OK) {
    lua_pushlstring(L, s->b.data + s->b.off, s->b.len); /* 4 */
    ml__bq_consume(&s->b, s->b.len);
    ml__bq_trim(&s->b, SCRATCH_KEEP);
  } else {
    ml__bq_consume(&s->b, s->b.len);
    ml__bq_trim(&s->b, SCRATCH_KEEP);
    if (r == ENC_NOMEM) return ml__exc_raise(L, "MemoryError", "not enough memory");
    lua_pushvalue(L, lua_upvalueindex(JUV_ENCODE));
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1); /* 4: json.encode's text, or its error */
  }
  lua_createtable(L, 0, 4); /* 5 */
  lua_pushvalue(L, lua_upvalueindex(JUV_KSTATUS));
  if (lua_isnil(L, 2)) lua_pushinteger(L, 200);
  else lua_pushvalue(L, 2);
  lua_rawset(L, 5);
  lua_pushvalue(L, lua_upvalueindex(JUV_KBODY));
  lua_pushvalue(L, 4);
  lua_rawset(L, 5);
  lua_pushvalue(L, lua_upvalueindex(JUV_KTYPE));
  lua_pushvalue(L, lua_upvalueindex(JUV_CTYPE));
  lua_rawset(L, 5);
  if (!lua_isnil(L, 3)) {
    lua_pushvalue(L, lua_upvalueindex(JUV_KHEADERS));
    lua_pushvalue(L, 3);
    lua_rawset(L, 5);
  }
  lua_pushvalue(L, lua_upvalueindex(JUV_MT));
  lua_setmetatable(L, 5);
  return 1;
}

/* _json_response(Response metatable, json.encode) -> http.json */
int ml__http_l_json_response(lua_State *L) {
  Scratch *s;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  s = lua_newuserdatauv(L, sizeof *s, 0);
  memset(s, 0, sizeof *s);
  ml__bq_init(&s->b, L);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, scratch_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushliteral(L, "status");
  lua_pushliteral(L, "body");
  lua_pushliteral(L, "content_type");
  lua_pushliteral(L, "headers");
  lua_pushliteral(L, "application/json");
  lua_pushcclosure(L, l_json, JUV_N);
  return 1;
}
