/* worker.h: a state that runs in a worker process of a supervisor
 * (`moonloop --workers N`, or a host's own): its id, the listening
 * sockets it inherited and the readiness message (worker.c). */
#ifndef ML_WORKER_H
#define ML_WORKER_H

#include "state.h"

typedef struct ml_WorkerState {
  int id, count; /* worker id of count */
  int ready_fd;  /* where READY goes, -1 once told (S owns it) */
  int nlisten;
  int listen_fds[]; /* the host's: S dup()s them, never closes them */
} ml_WorkerState;

/* Makes S a worker (replacing what it was): copies the fields; S owns
 * ready_fd from here on.  Returns 0 or -ENOMEM. */
int ml__worker_set(ml_State *S, int id, int count, int ready_fd, const int *listen_fds,
                   int nlisten);
/* Closes the ready fd and frees S's worker data (state close). */
void ml__worker_free(ml_State *S);
/* [-0, +0] adds worker_id, worker_count, worker_ready and _listen_dup to
 * the asyncio.core table at the top of L's stack. */
void ml__worker_open(lua_State *L);
/* [-0, +0] calls the hooks ml__at_shutdown registered (module.h), in
 * order, each as hook(value at index main): the main Task or nil.  An
 * error propagates (the caller runs it protected). */
void ml__shutdown_run(lua_State *L, int main);

#endif
