/* threadpool.c: a small pool of worker threads shared by every state of
 * the process, for work that would block the loop: name resolution,
 * ml_work_submit's host work, asyncio.to_thread.
 *
 * A request runs work(ud) on a worker, then done(S, ud) on its state's
 * loop thread through the state's wake-up (wakeup.c) - the one
 * cross-thread path.  While a request is in flight its state's loop is
 * held alive.  Threads start lazily, up to MOONLOOP_THREADPOOL_SIZE
 * (default min(32, cores + 4), Python's ThreadPoolExecutor's: the pool is
 * also asyncio.to_thread's default executor), are detached, block every
 * signal, and live as long as the process. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <pthread.h>
#include <unistd.h>
#include "state.h"
#include "loop.h"
#include "wakeup.h"
#include "threadpool.h"

#define POOL_LIMIT 128
#define POOL_STACK (1024 * 1024)

typedef struct Req {
  ml_WakeNode node; /* first: the wake-up's record */
  struct Req *next; /* the pool's queue */
  ml_PoolWorkFn work;
  ml_WakeFn done;
  void *ud;
  ml_Wakeup *wake; /* a counted reference: valid after the state closes */
} Req;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  Req *head, *tail;
  int nthreads, idle, max;
  int spinning; /* workers spinning for a job (wakeup.h): no signal needed */
  int busy;     /* jobs queued or running */
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL, 0, 0, 0, 0, 0};

/* On the loop thread (or with S == NULL from ml_state_close): the
 * request is back. */
static void req_back(ml_State *S, void *ud) {
  Req *q = ud;
  ml_WakeFn done = q->done;
  void *dud = q->ud;
  if (S) ml__loop_unhold(S);
  ml__wakeup_release(q->wake);
  free(q);
  done(S, dud);
}

/* Hands the finished q to its state; if that state has closed, the
 * caller's done learns it here, on the worker, with S == NULL. */
static void req_finish(Req *q) {
  q->node.fn = req_back;
  q->node.ud = q;
  if (ml__wakeup_send(q->wake, &q->node) < 0) req_back(NULL, q);
}

/* After a job, a worker spins up to ML_SPIN_SECONDS for the next one
 * before it sleeps (wakeup.h: a sleeping worker takes ~25 us to wake
 * here).  pool.mu held on entry and on return; spinning is counted under
 * it, so a submit either sees the spinner (and needs no signal: the
 * spinner finds the job) or comes after it gave up (and signals). */
static void spin_for_job(void) {
  double until;
  unsigned i;
  /* At most one spinner fewer than the cores: the loop needs one. */
  if (pool.head != NULL || pool.spinning + 1 >= ml__spin_cores()) return;
  pool.spinning++;
  pthread_mutex_unlock(&pool.mu);
  until = ml__now() + ML_SPIN_SECONDS;
  for (i = 0; __atomic_load_n(&pool.head, __ATOMIC_ACQUIRE) == NULL; i++) {
    if ((i & 31) == 31 && ml__now() >= until) break;
    ml__cpu_relax();
  }
  pthread_mutex_lock(&pool.mu);
  pool.spinning--;
}

static void *worker(void *arg) {
  (void)arg;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    Req *q;
    while (pool.head == NULL) {
      pool.idle++;
      pthread_cond_wait(&pool.cv, &pool.mu);
      pool.idle--;
    }
    q = pool.head;
    pool.head = q->next;
    if (pool.head == NULL) pool.tail = NULL;
    pthread_mutex_unlock(&pool.mu);
    q->work(q->ud);
    req_finish(q);
    pthread_mutex_lock(&pool.mu);
    pool.busy--;
    spin_for_job();
  }
  return NULL;
}

static int pool_max(void) {
  const char *e;
  if (pool.max) return pool.max;
  {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    pool.max = cores + 4 > 32 ? 32 : (int)cores + 4;
  }
  if ((e = getenv("MOONLOOP_THREADPOOL_SIZE")) != NULL) {
    long n = strtol(e, NULL, 10);
    if (n >= 1) pool.max = n > POOL_LIMIT ? POOL_LIMIT : (int)n;
  }
  return pool.max;
}

/* Starts a worker if none is idle and the pool may grow; pool.mu held.
 * Returns the number of threads. */
static int grow_locked(void) {
  pthread_t th;
  pthread_attr_t attr;
  sigset_t all, old;
  if (pool.idle + pool.spinning > 0 || pool.nthreads >= pool_max()) return pool.nthreads;
  /* Workers must never take the process's signals (SIGINT, SIGCHLD). */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, POOL_STACK);
  if (pthread_create(&th, &attr, worker, NULL) == 0) pool.nthreads++;
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return pool.nthreads;
}

int ml__pool_submit(ml_State *S, ml_PoolWorkFn work, ml_WakeFn done, void *ud) {
  Req *q;
  int spin;
  if (S == NULL || work == NULL || done == NULL || S->wakeup == NULL) return -EINVAL;
  if ((q = calloc(1, sizeof *q)) == NULL) return -ENOMEM;
  q->work = work;
  q->done = done;
  q->ud = ud;
  q->wake = ml__wakeup_acquire(S);
  ml__loop_hold(S);
  pthread_mutex_lock(&pool.mu);
  if (grow_locked() == 0) {
    pthread_mutex_unlock(&pool.mu);
    ml__loop_unhold(S);
    ml__wakeup_release(q->wake);
    free(q);
    return -EAGAIN;
  }
  if (pool.tail) pool.tail->next = q;
  else __atomic_store_n(&pool.head, q, __ATOMIC_RELEASE); /* spinners peek */
  pool.tail = q;
  /* A spinner takes the job at the head; one behind others wants a thread
   * of its own. */
  if (pool.spinning == 0 || pool.head != q) pthread_cond_signal(&pool.cv);
  /* Its reply may come within the spin window, if a core is free for the
   * loop to spin on: not in a burst, whose jobs want every core. */
  spin = ++pool.busy < ml__spin_cores();
  pthread_mutex_unlock(&pool.mu);
  if (spin) ml__wakeup_expect(S);
  return 0;
}

int ml__pool_size(void) {
  int n;
  pthread_mutex_lock(&pool.mu);
  n = pool_max();
  pthread_mutex_unlock(&pool.mu);
  return n;
}
