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

#endif
