/* bytequeue.h: byte queues and the scratch area (bytequeue.c), memory for
 * I/O from the state's allocator, so the state's byte cap covers it. */
#ifndef ML_BYTEQUEUE_H
#define ML_BYTEQUEUE_H

#include <stddef.h>
#include <lua.h>

/* A byte queue: the data is data[off .. off + len), in cap bytes that
 * alloc(ud, ...) gave. */
typedef struct ml_BQ {
  char *data;
  size_t off, len, cap;
  lua_Alloc alloc;
  void *ud;
} ml_BQ;

/* Binds q (all zero) to L's allocator.  [-0, +0] */
void ml__bq_init(ml_BQ *q, lua_State *L);
/* Makes room for at least n more bytes after the data (moving it to the
 * front or growing); returns the free tail or NULL on ENOMEM.  Writing
 * there and calling ml__bq_commit(q, k) appends k bytes. */
char *ml__bq_reserve(ml_BQ *q, size_t n);
/* Free bytes after the data now. */
size_t ml__bq_room(const ml_BQ *q);
void ml__bq_commit(ml_BQ *q, size_t n);
/* Appends n bytes; returns 0 or -ENOMEM. */
int ml__bq_add(ml_BQ *q, const char *s, size_t n);
/* Drops n bytes from the front. */
void ml__bq_consume(ml_BQ *q, size_t n);
/* Releases the memory when the queue is empty and holds more than keep
 * bytes, so idle connections stay small. */
void ml__bq_trim(ml_BQ *q, size_t keep);
void ml__bq_free(ml_BQ *q);

/* The state-wide scratch area (256 KiB, made on first use, never moved or
 * freed before the state), for reads whose size is not known in advance.
 * *size receives its size (which may be less than want).  Raises on
 * ENOMEM.  [-0, +0] */
char *ml__net_scratch(lua_State *L, size_t want, size_t *size);

#endif
