/* worker.c: the embedding API's worker-process calls: telling a state it
 * runs as one worker of several (the moonloop command's --workers
 * supervisor does, and a host that forks its own workers may), and the
 * graceful stop a worker makes on SIGTERM.  docs/deployment.md. */
#include <errno.h>
#include <sys/socket.h>
#include "embed.h"
#include "core/worker.h"

int ml_state_set_worker(ml_State *S, const ml_Worker *w) {
  if (w == NULL) return ml__embed_fail(S, -EINVAL, "ml_state_set_worker: no ml_Worker");
  if (w->count < 1 || w->id < 0 || w->id >= w->count)
    return ml__embed_fail(S, -EINVAL,
                          "ml_state_set_worker: worker id %d of %d is out of range "
                          "(0 <= id < count)",
                          w->id, w->count);
  if (w->nlisten < 0 || (w->nlisten > 0 && w->listen_fds == NULL))
    return ml__embed_fail(S, -EINVAL, "ml_state_set_worker: %d listening fds and no array",
                          w->nlisten);
  for (int i = 0; i < w->nlisten; i++) {
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(w->listen_fds[i], SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0 || !v)
      return ml__embed_fail(S, -EINVAL, "ml_state_set_worker: fd %d is not a listening socket",
                            w->listen_fds[i]);
  }
  int rc = ml__worker_set(S, w->id, w->count, w->ready_fd, w->listen_fds, w->nlisten);
  if (rc < 0) return ml__embed_fail(S, rc, "not enough memory");
  return ML_OK;
}

/* [main lightuserdata] -> runs the graceful-shutdown hooks the stdlib
 * registered (ml__at_shutdown) with the main task or nil; no results. */
static int shutdown_p(lua_State *L) {
  ml_Future *main = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (main == NULL || ml__anchor_push(L, main) != LUA_TUSERDATA) {
    lua_settop(L, 0);
    lua_pushnil(L);
  }
  ml__shutdown_run(L, 1);
  return 0;
}

int ml_state_shutdown(ml_State *S, ml_Future *main) {
  return ml__embed_pcall(S->L, shutdown_p, main);
}
