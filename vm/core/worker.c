/* worker.c: what a script sees of the worker process it runs in:
 * asyncio.worker_id(), worker_count(), worker_ready(), and the listening
 * sockets the supervisor bound before it started the worker (servers on
 * their addresses serve on duplicates of them: transports.lua). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include "worker.h"

int ml__worker_set(ml_State *S, int id, int count, int ready_fd, const int *listen_fds,
                   int nlisten) {
  ml_WorkerState *w = malloc(sizeof *w + (size_t)nlisten * sizeof(int));
  if (w == NULL) return -ENOMEM;
  w->id = id;
  w->count = count;
  w->ready_fd = ready_fd;
  w->nlisten = nlisten;
  for (int i = 0; i < nlisten; i++) w->listen_fds[i] = listen_fds[i];
  ml__worker_free(S);
  S->worker = w;
  return 0;
}

void ml__worker_free(ml_State *S) {
  ml_WorkerState *w = S->worker;
  if (w == NULL) return;
  if (w->ready_fd >= 0) close(w->ready_fd);
  free(w);
  S->worker = NULL;
}

/* worker_id() -> 0..count-1, or nil outside a worker process */
static int w_id(lua_State *L) {
  ml_WorkerState *w = ml__state(L)->worker;
  if (w) lua_pushinteger(L, w->id);
  else lua_pushnil(L);
  return 1;
}

/* worker_count() -> the number of workers; 1 outside a worker process
 * (the process is the whole service) */
static int w_count(lua_State *L) {
  ml_WorkerState *w = ml__state(L)->worker;
  lua_pushinteger(L, w ? w->count : 1);
  return 1;
}

/* worker_ready() -> true if it told the supervisor now, false if there
 * was nothing to tell (not a worker, or told already).  The first server
 * that starts listening calls it too. */
static int w_ready(lua_State *L) {
  static const char msg[] = "READY\n";
  ml_WorkerState *w = ml__state(L)->worker;
  ssize_t r;
  if (w == NULL || w->ready_fd < 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  do r = write(w->ready_fd, msg, sizeof msg - 1);
  while (r < 0 && errno == EINTR);
  /* A supervisor that is gone (EPIPE) is not the script's error: the
   * worker goes on, and its parent-death signal ends it. */
  close(w->ready_fd);
  w->ready_fd = -1;
  lua_pushboolean(L, r == (ssize_t)(sizeof msg - 1));
  return 1;
}

/* _listen_dup(i) -> a duplicate (close-on-exec) of the i-th listening
 * socket the process inherited, for the caller to own; nil past the last
 * (and outside a worker). */
static int w_listen_dup(lua_State *L) {
  ml_WorkerState *w = ml__state(L)->worker;
  lua_Integer i = luaL_checkinteger(L, 1);
  if (w == NULL || i < 1 || i > w->nlisten) {
    lua_pushnil(L);
    return 1;
  }
  int fd = fcntl(w->listen_fds[i - 1], F_DUPFD_CLOEXEC, 3);
  if (fd < 0) return ml__exc_raise_errno(L, errno, "dup");
  lua_pushinteger(L, fd);
  return 1;
}

static const luaL_Reg worker_funcs[] = {
  {"worker_id", w_id},
  {"worker_count", w_count},
  {"worker_ready", w_ready},
  {"_listen_dup", w_listen_dup},
  {NULL, NULL},
};

void ml__worker_open(lua_State *L) { luaL_setfuncs(L, worker_funcs, 0); }

/* The graceful-shutdown hooks (module.h): registry[&shutdown_key] is a
 * list of the C functions registered, called in order. */
static const char shutdown_key = 0;

void ml__at_shutdown(lua_State *L, lua_CFunction fn) {
  ML_STACK_MARK(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &shutdown_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &shutdown_key);
  }
  lua_pushcfunction(L, fn);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  lua_pop(L, 1);
  ML_STACK_CHECK(L, 0);
}

void ml__shutdown_run(lua_State *L, int main) {
  ML_STACK_MARK(L);
  main = lua_absindex(L, main);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &shutdown_key) == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, -1, i);
      lua_pushvalue(L, main);
      lua_call(L, 1, 0);
    }
  }
  lua_pop(L, 1);
  ML_STACK_CHECK(L, 0);
}
