/* waiters.c: the sets of tasks waiting on a transport (ml_Waiters: its
 * drain() and wait_closed() callers), kept in the transport's allocator,
 * and waking everyone who waits on one (net.h). */
#include <errno.h>
#include "socket/net.h"

int ml__waiters_add(ml_Conn *c, ml_Waiters *w, ml_Task *t) {
  if (w->n == w->cap) {
    int cap = w->cap ? w->cap * 2 : 4;
    ml_Task **v = c->wbuf.alloc(c->wbuf.ud, w->v, w->cap * sizeof *v, cap * sizeof *v);
    if (v == NULL) return -ENOMEM;
    w->v = v;
    w->cap = cap;
  }
  w->v[w->n++] = t;
  return 0;
}

void ml__waiters_remove(ml_Waiters *w, ml_Task *t) {
  for (int i = 0; i < w->n; i++) {
    if (w->v[i] == t) {
      w->v[i] = w->v[--w->n];
      return;
    }
  }
}

void ml__waiters_wake_all(ml_Waiters *w) {
  int n = w->n;
  w->n = 0;
  for (int i = 0; i < n; i++) ml__task_wake(w->v[i]);
}

void ml__waiters_free(ml_Conn *c, ml_Waiters *w) {
  if (w->v) c->wbuf.alloc(c->wbuf.ud, w->v, w->cap * sizeof *w->v, 0);
  w->v = NULL;
  w->n = w->cap = 0;
}

void ml__conn_wake_all(ml_Conn *c) {
  if (c->reader) {
    ml_Task *t = c->reader;
    c->reader = NULL;
    ml__task_wake(t);
  }
  ml__waiters_wake_all(&c->drainers);
  ml__waiters_wake_all(&c->closers);
}
