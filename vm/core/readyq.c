/* readyq.c: the ready queue, a growable ring buffer of things to run. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "alloc.h"
#include "readyq.h"

int ml__readyq_push(ml_ReadyQ *q, ml_Entry e) {
  if (q->len == q->cap) {
    size_t ncap = q->cap ? q->cap * 2 : 256, i;
    ml_Entry *r = malloc(ncap * sizeof *r);
    if (r == NULL) return -ENOMEM;
    /* The copy below writes the first half of the new array: fault it in
     * at once, where the copy would fault it a page at a time (a burst of
     * create_task fills a large queue; docs/performance.md, "Tasks
     * (gather)").  The half the pushes fill next is left alone, so the
     * queue's RSS is what it was. */
    ml__alloc_populate(r, q->len * sizeof *r);
    /* Unroll the ring so it starts at 0 in the new array. */
    for (i = 0; i < q->len; i++) r[i] = q->ring[(q->head + i) & (q->cap - 1)];
    free(q->ring);
    q->ring = r;
    q->cap = ncap;
    q->head = 0;
  }
  q->ring[(q->head + q->len) & (q->cap - 1)] = e;
  q->len++;
  return 0;
}

int ml__readyq_pop(ml_ReadyQ *q, ml_Entry *out) {
  if (q->len == 0) return -EAGAIN;
  *out = q->ring[q->head];
  q->head = (q->head + 1) & (q->cap - 1);
  q->len--;
  return 0;
}

void ml__readyq_free(ml_ReadyQ *q) {
  free(q->ring);
  memset(q, 0, sizeof *q);
}
