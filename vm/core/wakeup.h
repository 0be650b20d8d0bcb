/* wakeup.h: the one way other threads wake a state's loop (wakeup.c):
 * a queue of calls under a mutex, drained on the loop's thread when an
 * eventfd that the loop watches becomes readable.  module.h has what the
 * stdlib may use; this header adds the state's own life cycle. */
#ifndef ML_WAKEUP_H
#define ML_WAKEUP_H

#include "module.h"

/* Makes S's wake-up (S->wakeup), its eventfd and its watcher, which is
 * unreferenced: it alone keeps no loop alive.  Loop thread.  Returns 0 or
 * -errno. */
int ml__wakeup_open(ml_State *S);

/* Shuts S's wake-up: from here on every send returns -ESHUTDOWN; calls
 * still queued run as fn(NULL, ud) (so their ud can be freed), here, on
 * the closing thread; the watcher stops and the fd closes; the state's
 * reference is dropped (the memory lives on while other threads hold
 * references).  Loop thread, from ml__state_close before lua_close. */
void ml__wakeup_close(ml_State *S);

/* ---- Spinning for a reply that comes in microseconds ----
 * On this project's VM a thread asleep on another core takes ~25 us to
 * wake (the hypervisor's interrupt), ten times a short job's own work,
 * so a to_thread round trip was two such wake-ups.  Each side of a pool
 * job may instead spin for a short window: a worker for its next job
 * (threadpool.c), the loop, with nothing ready, for the reply to a job
 * it just submitted.  Bounded: at most ML_SPIN_SECONDS a job on each
 * side, and never on a machine with one core (the spinner would hold the
 * core the other side needs).  docs/performance.md, "to_thread". */
#define ML_SPIN_SECONDS 50e-6

/* The cores online (read once), and whether there is more than one. */
int ml__spin_cores(void);
int ml__spin_allowed(void);

/* A pause in a spin loop (the CPU's hint that it is one). */
static inline void ml__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/* Loop thread: a reply through the wake-up is due soon (a job was just
 * handed to the thread pool), so for the next ML_SPIN_SECONDS the loop
 * may spin for it (ml__wakeup_spin) instead of sleeping in its poll. */
void ml__wakeup_expect(ml_State *S);

/* Loop thread, nothing ready to run: inside the window of
 * ml__wakeup_expect, spins until a call is queued or the window closes.
 * Runs the queued calls and returns 1 if one came; 0 at once outside a
 * window or on one core. */
int ml__wakeup_spin(ml_State *S);

#endif
