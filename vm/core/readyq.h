/* readyq.h: the ready queue (readyq.c), a ring buffer of entries; no lua_State. */
#ifndef ML_READYQ_H
#define ML_READYQ_H

#include <stddef.h>

typedef struct ml_Entry {
  int kind; /* ML_RUN_* below */
  void *p;  /* the task, or the object to run */
  int ref;  /* registry reference anchoring p, or LUA_NOREF */
} ml_Entry;

enum { ML_RUN_TASK = 1, ML_RUN_HANDLE, ML_RUN_FUTURE_CALLBACKS };
/* ML_RUN_HANDLE entries are handle.c's own: ref is a slot of its anchor
 * table, not the registry, and p == NULL stands for every timer due. */

typedef struct ml_ReadyQ {
  ml_Entry *ring;
  size_t head, len, cap; /* cap is a power of two */
} ml_ReadyQ;

int ml__readyq_push(ml_ReadyQ *q, ml_Entry e);   /* 0 or -ENOMEM */
int ml__readyq_pop(ml_ReadyQ *q, ml_Entry *out); /* 0, or -EAGAIN if empty */
void ml__readyq_free(ml_ReadyQ *q);

#endif
