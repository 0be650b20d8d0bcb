/* bytequeue.c: byte memory for I/O that the state's allocator gives (so
 * the state's byte cap covers it): the byte queues of transports and
 * streams, and the state-wide scratch area reads land in. */
#include <errno.h>
#include <string.h>
#include "core/module.h"
#include "socket/bytequeue.h"

void ml__bq_init(ml_BQ *q, lua_State *L) {
  memset(q, 0, sizeof *q);
  q->alloc = lua_getallocf(L, &q->ud);
}

size_t ml__bq_room(const ml_BQ *q) { return q->cap - q->off - q->len; }

char *ml__bq_reserve(ml_BQ *q, size_t n) {
  if (ml__bq_room(q) >= n) return q->data + q->off + q->len;
  /* Sliding the data to the front is cheaper than growing when at least
   * half the buffer is already consumed. */
  if (q->off > 0 && q->cap - q->len >= n && q->off >= q->cap / 2) {
    memmove(q->data, q->data + q->off, q->len);
    q->off = 0;
    return q->data + q->len;
  }
  size_t need = q->len + n, cap = q->cap ? q->cap : 256;
  while (cap < need) {
    if (cap > ((size_t)-1) / 2) return NULL;
    cap *= 2;
  }
  char *p;
  if (q->off == 0) {
    p = q->alloc(q->ud, q->data, q->data ? q->cap : 0, cap);
    if (p == NULL) return NULL;
  } else {
    p = q->alloc(q->ud, NULL, 0, cap);
    if (p == NULL) return NULL;
    memcpy(p, q->data + q->off, q->len);
    q->alloc(q->ud, q->data, q->cap, 0);
  }
  q->data = p;
  q->cap = cap;
  q->off = 0;
  return q->data + q->len;
}

void ml__bq_commit(ml_BQ *q, size_t n) {
  ml_assert(n <= ml__bq_room(q));
  q->len += n;
}

int ml__bq_add(ml_BQ *q, const char *s, size_t n) {
  char *p = ml__bq_reserve(q, n);
  if (p == NULL) return -ENOMEM;
  memcpy(p, s, n);
  q->len += n;
  return 0;
}

void ml__bq_consume(ml_BQ *q, size_t n) {
  if (n >= q->len) {
    q->off = q->len = 0;
  } else {
    q->off += n;
    q->len -= n;
  }
}

void ml__bq_trim(ml_BQ *q, size_t keep) {
  if (q->len == 0 && q->cap > keep) ml__bq_free(q);
}

void ml__bq_free(ml_BQ *q) {
  if (q->data) q->alloc(q->ud, q->data, q->cap, 0);
  q->data = NULL;
  q->off = q->len = q->cap = 0;
}

/* ---------------------------------------------------------------- */
/* The scratch area.                                                  */

static const char scratch_key = 0;
#define SCRATCH_SIZE (256 * 1024)

/* One area per state, made on first use and never moved, so transports
 * may keep its address. */
char *ml__net_scratch(lua_State *L, size_t want, size_t *size) {
  char *p;
  (void)want;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &scratch_key) == LUA_TUSERDATA) {
    p = lua_touserdata(L, -1);
    lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
    p = lua_newuserdatauv(L, SCRATCH_SIZE, 0);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &scratch_key);
  }
  *size = SCRATCH_SIZE;
  return p;
}
