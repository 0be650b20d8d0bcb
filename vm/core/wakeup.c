/* wakeup.c: the one cross-thread wake-up path of a state.  Other threads
 * (host workers, the thread pool, the resolver) queue calls here; the
 * loop's thread runs them.
 *
 * Why an eventfd and not ev_async: ev_async_send only writes libev's
 * wake-up pipe while the loop is blocked inside ev_run; otherwise it
 * leaves a flag for the next ev_run.  A host that drives moonloop with
 * ml_state_step waits in its own poll() on the loop's fd, outside ev_run,
 * and would never wake.  The eventfd sits in the loop's backend (epoll)
 * set and is written whenever the queue goes from empty to not empty, so
 * both kinds of waiting wake.
 *
 * Lifetime: the record is malloc'd and reference counted.  The state
 * holds one reference until it closes; a thread that will post after the
 * state might be gone takes its own (ml__wakeup_acquire) and then gets
 * -ESHUTDOWN instead of touching freed memory. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include "state.h"
#include "loop.h"
#include "wakeup.h"

struct ml_Wakeup {
  pthread_mutex_t mu;
  int refs;                 /* mu */
  int closed;               /* mu: sends are refused */
  ml_WakeNode *head, *tail; /* mu */
  int fd;
  /* Loop thread only. */
  ml_State *S;
  ev_io io;
  int holds;         /* ml__loop_hold count */
  double spin_until; /* ml__wakeup_expect's window (ml__now) */
};

static void wakeup_free(ml_Wakeup *w) {
  pthread_mutex_destroy(&w->mu);
  free(w);
}

void ml__wakeup_release(ml_Wakeup *w) {
  int last;
  if (w == NULL) return;
  pthread_mutex_lock(&w->mu);
  last = --w->refs == 0;
  pthread_mutex_unlock(&w->mu);
  if (last) wakeup_free(w);
}

void ml__wakeup_retain(ml_Wakeup *w) {
  if (w == NULL) return;
  pthread_mutex_lock(&w->mu);
  w->refs++;
  pthread_mutex_unlock(&w->mu);
}

ml_Wakeup *ml__wakeup_acquire(ml_State *S) {
  ml_Wakeup *w = S->wakeup;
  if (w == NULL) return NULL;
  pthread_mutex_lock(&w->mu);
  w->refs++;
  pthread_mutex_unlock(&w->mu);
  return w;
}

int ml__wakeup_send(ml_Wakeup *w, ml_WakeNode *n) {
  int was_empty;
  uint64_t one = 1;
  ssize_t r;
  if (w == NULL || n == NULL || n->fn == NULL) return -EINVAL;
  n->next = NULL;
  pthread_mutex_lock(&w->mu);
  if (w->closed) {
    pthread_mutex_unlock(&w->mu);
    return -ESHUTDOWN;
  }
  was_empty = w->head == NULL;
  if (w->tail) w->tail->next = n;
  else __atomic_store_n(&w->head, n, __ATOMIC_RELEASE); /* ml__wakeup_spin peeks */
  w->tail = n;
  /* Written under the lock: close() cannot shut the fd in between. */
  if (was_empty) {
    do r = write(w->fd, &one, sizeof one);
    while (r < 0 && errno == EINTR);
  }
  pthread_mutex_unlock(&w->mu);
  return 0;
}

int ml__wakeup_closed(ml_Wakeup *w) {
  int closed;
  if (w == NULL) return 1;
  pthread_mutex_lock(&w->mu);
  closed = w->closed;
  pthread_mutex_unlock(&w->mu);
  return closed;
}

/* A node of ml__wakeup_post: malloc'd, freed after its call. */
typedef struct Posted {
  ml_WakeNode node;
  ml_WakeFn fn;
  void *ud;
} Posted;

static void posted_run(ml_State *S, void *ud) {
  Posted *p = ud;
  ml_WakeFn fn = p->fn;
  void *fud = p->ud;
  free(p);
  fn(S, fud);
}

int ml__wakeup_post(ml_State *S, ml_WakeFn fn, void *ud) {
  Posted *p;
  int rc;
  if (S == NULL || S->wakeup == NULL || fn == NULL) return -EINVAL;
  if ((p = malloc(sizeof *p)) == NULL) return -ENOMEM;
  p->fn = fn;
  p->ud = ud;
  p->node.fn = posted_run;
  p->node.ud = p;
  if ((rc = ml__wakeup_send(S->wakeup, &p->node)) < 0) free(p);
  return rc;
}

/* Takes the whole queue. */
static ml_WakeNode *take(ml_Wakeup *w) {
  ml_WakeNode *n;
  pthread_mutex_lock(&w->mu);
  n = w->head;
  w->head = w->tail = NULL;
  pthread_mutex_unlock(&w->mu);
  return n;
}

/* Reads the eventfd's count, then runs what is queued. */
static void run_queue(ml_Wakeup *w) {
  ml_WakeNode *n, *next;
  uint64_t count;
  ssize_t r;
  /* Read the count before taking the queue: a send that comes after the
   * queue was taken finds it empty and writes again. */
  do r = read(w->fd, &count, sizeof count);
  while (r < 0 && errno == EINTR);
  /* A call may close nothing, but it may send again (a completion that
   * queues another): those wait for the next wake, which the send wrote. */
  for (n = take(w); n; n = next) {
    next = n->next;
    n->fn(w->S, n->ud);
  }
}

static void wake_cb(struct ev_loop *loop, ev_io *io, int revents) {
  (void)loop;
  (void)revents;
  run_queue(io->data);
}

int ml__spin_cores(void) {
  static int cores; /* 0: not read yet; a race only reads it twice */
  if (cores == 0) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cores = n > 1 ? (int)n : 1;
  }
  return cores;
}

int ml__spin_allowed(void) { return ml__spin_cores() > 1; }

void ml__wakeup_expect(ml_State *S) {
  if (S->wakeup && ml__spin_allowed()) S->wakeup->spin_until = ml__now() + ML_SPIN_SECONDS;
}

int ml__wakeup_spin(ml_State *S) {
  ml_Wakeup *w = S->wakeup;
  unsigned i;
  if (w == NULL || w->spin_until == 0) return 0;
  for (i = 0;; i++) {
    if (__atomic_load_n(&w->head, __ATOMIC_ACQUIRE) != NULL) break;
    /* The clock every 32 pauses: a pause is ~40 cycles on Zen, more on
     * newer Intel parts; the window closes within a microsecond or so. */
    if ((i & 31) == 31 && ml__now() >= w->spin_until) {
      w->spin_until = 0;
      return 0;
    }
    ml__cpu_relax();
  }
  /* The eventfd may still read as set (the sender writes it after the
   * queue): run_queue reads it now or the next poll finds a spare wake
   * and an empty queue. */
  run_queue(w);
  return 1;
}

void ml__loop_hold(ml_State *S) {
  ml_Wakeup *w = S->wakeup;
  if (w && w->holds++ == 0) ev_ref(S->loop);
}

void ml__loop_unhold(ml_State *S) {
  ml_Wakeup *w = S->wakeup;
  if (w && w->holds > 0 && --w->holds == 0) ev_unref(S->loop);
}

int ml__wakeup_open(ml_State *S) {
  ml_Wakeup *w = calloc(1, sizeof *w);
  if (w == NULL) return -ENOMEM;
  if (pthread_mutex_init(&w->mu, NULL) != 0) {
    free(w);
    return -ENOMEM;
  }
  w->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (w->fd < 0) {
    int e = errno;
    wakeup_free(w);
    return -e;
  }
  w->refs = 1;
  w->S = S;
  ev_io_init(&w->io, wake_cb, w->fd, EV_READ);
  w->io.data = w;
  ev_io_start(S->loop, &w->io);
  ev_unref(S->loop); /* the queue alone does not keep the loop alive */
  S->wakeup = w;
  return 0;
}

void ml__wakeup_close(ml_State *S) {
  ml_Wakeup *w = S->wakeup;
  ml_WakeNode *n, *next;
  if (w == NULL) return;
  pthread_mutex_lock(&w->mu);
  w->closed = 1;
  n = w->head;
  w->head = w->tail = NULL;
  pthread_mutex_unlock(&w->mu);
  for (; n; n = next) {
    next = n->next;
    n->fn(NULL, n->ud);
  }
  /* libev wants an unreferenced watcher referenced again before it is
   * stopped; with holds, that reference is already back. */
  if (w->holds == 0) ev_ref(S->loop);
  w->holds = 0;
  ev_io_stop(S->loop, &w->io);
  close(w->fd);
  w->fd = -1;
  w->S = NULL;
  S->wakeup = NULL;
  ml__wakeup_release(w);
}
