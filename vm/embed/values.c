/* values.c: ml_Values, a list of plain Lua values (nil, booleans,
 * numbers, strings, tables of those) that a thread without a Lua state
 * builds, and the loop's thread pushes: what promises are completed with.
 *
 * The list is a byte string of tagged records: a table is TABLE, its
 * key/value records, END.  The builder checks the shape as it goes
 * (keys not nil or NaN, pairs complete, tables closed), and the first
 * error sticks, so a host may build without checking every call. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "embed.h"

enum { T_NIL = 1, T_FALSE, T_TRUE, T_INT, T_NUM, T_STR, T_TABLE, T_END };

#define MAX_DEPTH 64

struct ml_Values {
  unsigned char *buf;
  size_t len, cap;
  int err;                   /* the first failure, or 0 */
  int depth;                 /* open tables */
  int nitems[MAX_DEPTH + 1]; /* records at each level (keys and values) */
  int key_next;              /* in a table, the next record is a key */
};

ml_Values *ml_values_new(void) { return calloc(1, sizeof(ml_Values)); }

void ml_values_free(ml_Values *v) {
  if (v == NULL) return;
  free(v->buf);
  free(v);
}

static int put(ml_Values *v, const void *p, size_t n) {
  if (v->cap - v->len < n) {
    size_t cap = v->cap ? v->cap : 64;
    unsigned char *nb;
    while (cap - v->len < n) cap *= 2;
    if ((nb = realloc(v->buf, cap)) == NULL) return v->err = -ENOMEM;
    v->buf = nb;
    v->cap = cap;
  }
  memcpy(v->buf + v->len, p, n);
  v->len += n;
  return 0;
}

/* Starts a record of tag; a key may not be nil (is_nilkey). */
static int record(ml_Values *v, unsigned char tag, int bad_key) {
  if (v == NULL) return -EINVAL;
  if (v->err) return v->err;
  if (v->depth > 0 && v->nitems[v->depth] % 2 == 0 && bad_key) return v->err = -EINVAL;
  v->nitems[v->depth]++;
  return put(v, &tag, 1);
}

int ml_values_push_nil(ml_Values *v) { return record(v, T_NIL, 1); }

int ml_values_push_boolean(ml_Values *v, int b) { return record(v, b ? T_TRUE : T_FALSE, 0); }

int ml_values_push_integer(ml_Values *v, long long i) {
  int rc = record(v, T_INT, 0);
  return rc ? rc : put(v, &i, sizeof i);
}

int ml_values_push_number(ml_Values *v, double d) {
  int rc = record(v, T_NUM, isnan(d));
  return rc ? rc : put(v, &d, sizeof d);
}

int ml_values_push_string(ml_Values *v, const char *s, size_t len) {
  int rc;
  if (s == NULL && len > 0) return v ? (v->err = -EINVAL) : -EINVAL;
  if ((rc = record(v, T_STR, 0)) != 0 || (rc = put(v, &len, sizeof len)) != 0) return rc;
  return len ? put(v, s, len) : 0;
}

int ml_values_push_table(ml_Values *v) {
  int rc;
  if (v && !v->err && v->depth >= MAX_DEPTH) return v->err = -EINVAL;
  if ((rc = record(v, T_TABLE, 0)) != 0) return rc;
  v->nitems[++v->depth] = 0;
  return 0;
}

int ml_values_end_table(ml_Values *v) {
  unsigned char tag = T_END;
  if (v == NULL) return -EINVAL;
  if (v->err) return v->err;
  if (v->depth == 0 || v->nitems[v->depth] % 2 != 0) return v->err = -EINVAL;
  v->depth--;
  return put(v, &tag, 1);
}

int ml__values_check(const ml_Values *v) {
  if (v == NULL) return 0;
  if (v->err) return v->err;
  return v->depth ? -EINVAL : 0;
}

int ml__values_count(const ml_Values *v) { return v ? v->nitems[0] : 0; }

/* [-0, +1] pushes the record at *pos and moves past it; raises if out
 * of memory or stack. */
static void push_one(lua_State *L, const ml_Values *v, size_t *pos, int depth) {
  unsigned char tag = v->buf[(*pos)++];
  luaL_checkstack(L, 3, "values nested too deep");
  switch (tag) {
  case T_NIL: lua_pushnil(L); break;
  case T_FALSE: lua_pushboolean(L, 0); break;
  case T_TRUE: lua_pushboolean(L, 1); break;
  case T_INT: {
    long long i;
    memcpy(&i, v->buf + *pos, sizeof i);
    *pos += sizeof i;
    lua_pushinteger(L, (lua_Integer)i);
    break;
  }
  case T_NUM: {
    double d;
    memcpy(&d, v->buf + *pos, sizeof d);
    *pos += sizeof d;
    lua_pushnumber(L, d);
    break;
  }
  case T_STR: {
    size_t n;
    memcpy(&n, v->buf + *pos, sizeof n);
    *pos += sizeof n;
    lua_pushlstring(L, (const char *)v->buf + *pos, n);
    *pos += n;
    break;
  }
  case T_TABLE:
    lua_newtable(L);
    while (v->buf[*pos] != T_END) {
      push_one(L, v, pos, depth + 1);
      push_one(L, v, pos, depth + 1);
      lua_rawset(L, -3);
    }
    (*pos)++;
    break;
  default: luaL_error(L, "corrupt value list");
  }
}

int ml__values_push(lua_State *L, const ml_Values *v) {
  size_t pos = 0;
  int n = 0;
  if (v == NULL) return 0;
  luaL_checkstack(L, v->nitems[0] + 3, "too many values");
  while (pos < v->len) {
    push_one(L, v, &pos, 0);
    n++;
  }
  return n;
}
