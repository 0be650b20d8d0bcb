/* _process.c: child processes for asyncio.subprocess (asyncio._process):
 * spawning with posix_spawn, and learning of a child's exit on the state's
 * own loop, whatever loop that is.
 *
 * Spawning: glibc's posix_spawn (>= 2.24) runs the child with
 * clone(CLONE_VM | CLONE_VFORK) and reports a failed exec (ENOENT,
 * EACCES...) as its own return value, so the awaiting call raises
 * FileNotFoundError or PermissionError and no child is left.  Every fd
 * moonloop makes is close-on-exec; the child gets its stdio, pass_fds
 * (dup2 onto themselves, which clears close-on-exec) and nothing above
 * (closefrom), SIGPIPE and SIGXFSZ back at their defaults and an empty
 * signal mask, as Python's subprocess does.
 *
 * Exit: a pidfd (pidfd_open, Linux >= 5.3) becomes readable when the
 * child exits; an ev_io on it works on a host's libev loop and on a host
 * that polls the loop's fd, unlike ev_child (libev's default loop only,
 * and a SIGCHLD handler that reaps every child of the process).  Where the
 * kernel has no pidfd (or MOONLOOP_NO_PIDFD=1 is set), an ev_timer polls
 * waitpid(pid, WNOHANG), every millisecond at first and backing off to
 * every 50 ms: it reaps only our own child and needs no signal handler.
 * libev's default loop is the exception: it reaps every child of the
 * process itself (waitpid(-1) on SIGCHLD), so there the status is taken
 * from an ev_child watcher instead.  A child reaped by someone else (a
 * default loop elsewhere in the process, SIGCHLD set to SIG_IGN) is
 * reported with returncode 255, as Python's child watchers do.
 * The exit is reported to Lua by one protected call of on_exit(returncode)
 * from the loop, as connection_lost is for transports.
 *
 * Closing: a handle whose child still runs when it is collected (the
 * state is closing: a running child keeps its handle anchored) leaves the
 * child running, as asyncio does, and gives it to a detached thread that
 * waits for it, so it does not stay a zombie. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include "socket/net.h"

int luaopen_asyncio__stream(lua_State *L);

#define ML_PROC "asyncio.ProcessHandle"
#define POLL_FIRST 0.001
#define POLL_MAX 0.05

extern char **environ;

enum { P_NEW = 0, P_RUNNING, P_EXITED };
/* User values: 1 on_exit(returncode). */
enum { PUV_ONEXIT = 1, PUV_N = PUV_ONEXIT };

typedef struct Proc {
  ml_State *S;
  pid_t pid;
  int pidfd;      /* -1 when there is none (fallback, or done) */
  int state;      /* P_* */
  int returncode; /* once P_EXITED: exit status, or -signal */
  int ref;        /* anchor while running */
  double poll;    /* fallback: the current interval */
  ev_io pw;
  ev_timer pt;
  ev_child cw;
} Proc;

/* [-0, +0] the process handle at 1, or raises. */
static Proc *check_proc(lua_State *L) { return ml__udata_check(L, 1, ML_UT_PROCESS); }

/* ---------------------------------------------------------------- */
/* Exit.                                                              */

static void stop_watching(Proc *p) {
  struct ev_loop *loop = ml__loop(p->S);
  if (ev_is_active(&p->pw)) ev_io_stop(loop, &p->pw);
  if (ev_is_active(&p->pt)) ev_timer_stop(loop, &p->pt);
  if (ev_is_active(&p->cw)) ev_child_stop(loop, &p->cw);
  if (p->pidfd >= 0) {
    close(p->pidfd);
    p->pidfd = -1;
  }
}

/* Protected: calls on_exit(returncode) of the handle (light userdata at 1)
 * and drops its anchor.
 * exited_p(handle lightuserdata) -> nothing */
static int exited_p(lua_State *L) {
  Proc *p = lua_touserdata(L, 1);
  int ref = p->ref;
  lua_settop(L, 0);
  if (ref == LUA_NOREF) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  p->ref = LUA_NOREF;
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  if (lua_getiuservalue(L, 1, PUV_ONEXIT) != LUA_TFUNCTION) return 0;
  lua_pushinteger(L, p->returncode);
  lua_call(L, 1, 0);
  return 0;
}

/* Reaps the child if it has exited; returns 1 then. */
static int reap(Proc *p) {
  int st;
  pid_t r;
  do r = waitpid(p->pid, &st, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return 0;
  if (r < 0) st = 255 << 8; /* ECHILD: someone else reaped it (SIGCHLD ignored?) */
  p->state = P_EXITED;
  p->returncode = WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
  return 1;
}

static void report(Proc *p);

/* Reaps the child if it has exited and reports it: returns 1 then. */
static int try_reap(Proc *p) {
  if (!reap(p)) return 0;
  report(p);
  return 1;
}

/* libev's default loop reaped it (see start_watching). */
static void child_cb(struct ev_loop *loop, ev_child *w, int revents) {
  Proc *p = w->data;
  int st = w->rstatus;
  (void)loop;
  (void)revents;
  p->state = P_EXITED;
  p->returncode = WIFSIGNALED(st) ? -WTERMSIG(st) : WEXITSTATUS(st);
  report(p);
}

/* [-0, +0] on the main state: runs exited_p protected. */
static void report(Proc *p) {
  lua_State *L;
  stop_watching(p);
  L = ml__main_lua(p->S);
  if (!lua_checkstack(L, 4)) return;
  lua_pushcfunction(L, exited_p);
  lua_pushlightuserdata(L, p);
  ml__callback(L, 1, "Exception in child exit callback");
}

static void pidfd_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)revents;
  try_reap(w->data);
}

static void poll_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  Proc *p = w->data;
  (void)revents;
  if (try_reap(p)) return;
  if (p->poll < POLL_MAX) {
    p->poll *= 2;
    if (p->poll > POLL_MAX) p->poll = POLL_MAX;
  }
  w->repeat = p->poll;
  ev_timer_again(loop, w);
}

static int open_pidfd(pid_t pid) {
#ifdef SYS_pidfd_open
  const char *no = getenv("MOONLOOP_NO_PIDFD");
  if (no && *no && strcmp(no, "0") != 0) return -ENOSYS;
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  return fd < 0 ? -errno : fd;
#else
  (void)pid;
  return -ENOSYS;
#endif
}

static void start_watching(Proc *p) {
  struct ev_loop *loop = ml__loop(p->S);
  int fd;
  if (ev_is_default_loop(loop)) {
    /* libev's default loop reaps every child itself (waitpid(-1) on
     * SIGCHLD), so there the status can only come from its ev_child. */
    ev_child_set(&p->cw, p->pid, 0);
    ev_child_start(loop, &p->cw);
    return;
  }
  fd = open_pidfd(p->pid);
  if (fd >= 0) {
    p->pidfd = fd;
    ev_io_set(&p->pw, fd, EV_READ);
    ev_io_start(ml__loop(p->S), &p->pw);
  } else {
    p->poll = POLL_FIRST;
    ev_timer_set(&p->pt, POLL_FIRST, 0.);
    ev_timer_start(ml__loop(p->S), &p->pt);
  }
}

static void *reaper(void *arg) {
  pid_t pid = (pid_t)(intptr_t)arg;
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
  return NULL;
}

/* __gc(handle) -> nothing; a child still running is waited for by a
 * detached thread (if one can be started). */
static int proc_gc(lua_State *L) {
  Proc *p = ml__udata_test(L, 1, ML_UT_PROCESS);
  if (p == NULL || p->S == NULL) return 0;
  stop_watching(p);
  if (p->state == P_RUNNING && !reap(p)) {
    pthread_t th;
    pthread_attr_t a;
    sigset_t all, old;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    sigfillset(&all); /* the waiter must never take the process's signals */
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pthread_create(&th, &a, reaper, (void *)(intptr_t)p->pid) != 0) {
      /* No thread: the child becomes a zombie when it exits, until the
       * process ends.  Nothing better is safe here. */
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
  }
  p->state = P_EXITED;
  p->S = NULL;
  return 0;
}

/* ---------------------------------------------------------------- */
/* Spawning.                                                          */

/* How the script wants one of the child's stdio fds. */
enum { IO_INHERIT = 0, IO_PIPE, IO_DEVNULL, IO_STDOUT, IO_FD };

typedef struct Spawn {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  int fa_ok, attr_ok;
  int child[3];  /* child ends to close in the parent after spawning */
  int parent[3]; /* parent ends of pipes, owned until given away */
  int devnull;
} Spawn;

static void spawn_free(Spawn *sp, int keep_parent) {
  for (int i = 0; i < 3; i++) {
    if (sp->child[i] >= 0) close(sp->child[i]);
    if (!keep_parent && sp->parent[i] >= 0) close(sp->parent[i]);
  }
  if (sp->devnull >= 0) close(sp->devnull);
  if (sp->fa_ok) posix_spawn_file_actions_destroy(&sp->fa);
  if (sp->attr_ok) posix_spawnattr_destroy(&sp->attr);
}

/* An fd above the standard three, so that dup2 onto 0, 1, 2 in the child
 * cannot overwrite an fd a later action still needs. */
static int high_fd(int fd) {
  int h;
  if (fd > 2) return fd;
  h = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  close(fd);
  return h;
}

/* Reads opts[name]: nil, "pipe", "devnull", "stdout" or an fd.
 * [-0, +0] returns an IO_* mode (the fd in *fd for IO_FD); raises on a
 * bad option. */
static int io_mode(lua_State *L, int opts, const char *name, int *fd) {
  int mode = IO_INHERIT, t = lua_getfield(L, opts, name);
  if (t == LUA_TSTRING) {
    const char *s = lua_tostring(L, -1);
    if (strcmp(s, "pipe") == 0) mode = IO_PIPE;
    else if (strcmp(s, "devnull") == 0) mode = IO_DEVNULL;
    else if (strcmp(s, "stdout") == 0 && strcmp(name, "stderr") == 0) mode = IO_STDOUT;
    else luaL_error(L, "bad %s option '%s'", name, s);
  } else if (t == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, -1);
    if (n < 0 || n > 0x7fffffff || fcntl((int)n, F_GETFD) < 0)
      luaL_error(L, "bad %s option (%d is not an open file descriptor)", name, (int)n);
    *fd = (int)n;
    mode = IO_FD;
  } else if (t != LUA_TNIL) {
    luaL_error(L, "bad %s option (%s)", name, luaL_typename(L, -1));
  }
  lua_pop(L, 1);
  return mode;
}

/* [-0, +1] pushes an array of C strings made of the list at idx
 * (strings, or numbers), NULL-terminated, in a userdata. */
static char **push_strv(lua_State *L, int idx, const char *what, int min) {
  lua_Integer n = luaL_len(L, idx);
  char **v;
  if (n < min) luaL_error(L, "%s must not be empty", what);
  if (n > 1 << 20) luaL_error(L, "%s is too long", what);
  v = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *v, 1);
  lua_createtable(L, (int)n, 0); /* keeps the strings alive */
  for (lua_Integer i = 1; i <= n; i++) {
    lua_geti(L, idx, i);
    if (!lua_isstring(L, -1)) luaL_error(L, "%s[%d] must be a string", what, (int)i);
    v[i - 1] = (char *)lua_tostring(L, -1);
    if (strlen(v[i - 1]) != lua_rawlen(L, -1))
      luaL_error(L, "%s[%d] contains a zero byte", what, (int)i);
    lua_rawseti(L, -2, i);
  }
  v[n] = NULL;
  lua_setiuservalue(L, -2, 1);
  return v;
}

/* [-0, +2] pushes a stream-mode pipe transport, anchored, with no fd
 * yet, then its reader or writer table.  Returns the transport; the table is on top,
 * the transport below it. */
static ml_Conn *pre_stream(lua_State *L, int pipe, size_t limit) {
  ml_Conn *c = ml__conn_new(L, 0, ML_CONN_STREAM);
  c->limit = limit;
  ml__conn_anchor(L, -1, c);
  ml__stream_push(L, -1, pipe);
  return c;
}

/* spawn(argv, opts, on_exit) -> handle, stdin, stdout, stderr
 *
 * argv: the program and its arguments (argv[1] is looked up in PATH
 * unless it holds a '/').  opts: stdin, stdout, stderr (nil: inherit,
 * "pipe", "devnull", "stdout" for stderr, or an fd), cwd, env (a list
 * of "NAME=value" strings, or nil to inherit), pass_fds (list), start_new_session,
 * limit (of the pipe readers), streams (true: the pipes as StreamReader
 * and StreamWriter tables; otherwise as fds for protocol transports).
 * on_exit(returncode) is called from the loop when the child has exited.
 * Raises the OSError of a failed spawn or exec (FileNotFoundError ...). */
static int l_spawn(lua_State *L) {
  Spawn sp;
  int mode[3], fdarg[3] = {-1, -1, -1}, streams, r, argvi, envi = 0, i;
  const char *names[3] = {"stdin", "stdout", "stderr"};
  const char *cwd = NULL;
  char **argv, **envp = environ;
  lua_Integer limit = 64 * 1024;
  ml_Conn *conn[3] = {NULL, NULL, NULL};
  int connidx[3] = {0, 0, 0};
  int maxpass = 2;
  pid_t pid;
  Proc *p;

  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  argv = push_strv(L, 1, "the program and its arguments", 1);
  argvi = lua_gettop(L);
  (void)argvi;
  for (i = 0; i < 3; i++) mode[i] = io_mode(L, 2, names[i], &fdarg[i]);
  if (lua_getfield(L, 2, "cwd") != LUA_TNIL) cwd = luaL_checkstring(L, -1);
  lua_pop(L, 1); /* opts keeps it alive */
  if (lua_getfield(L, 2, "env") == LUA_TTABLE) {
    envp = push_strv(L, lua_gettop(L), "env", 0);
    envi = lua_gettop(L);
  } else {
    lua_pop(L, 1);
  }
  (void)envi;
  streams = lua_getfield(L, 2, "streams") != LUA_TNIL && lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (lua_getfield(L, 2, "limit") != LUA_TNIL) {
    limit = luaL_checkinteger(L, -1);
    if (limit <= 0) return ml__exc_raise(L, "ValueError", "Limit cannot be <= 0");
  }
  lua_pop(L, 1);

  /* Every allocation before any fd exists, so that nothing raised later
   * can leak one: the handle, the exit callback, the pipe transports. */
  p = lua_newuserdatauv(L, sizeof *p, PUV_N);
  memset(p, 0, sizeof *p);
  p->pidfd = -1;
  p->ref = LUA_NOREF;
  ev_init(&p->pw, pidfd_cb);
  ev_init(&p->pt, poll_cb);
  ev_init(&p->cw, child_cb);
  p->pw.data = p->pt.data = p->cw.data = p;
  ml__udata_setmt(L, ML_UT_PROCESS);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, -2, PUV_ONEXIT);
  int hidx = lua_gettop(L);
  for (i = 0; i < 3; i++) {
    if (mode[i] == IO_PIPE && streams) {
      conn[i] = pre_stream(L, i == 0 ? ML_PIPE_WRITE : ML_PIPE_READ, (size_t)limit);
      connidx[i] = lua_gettop(L) - 1;
    }
  }
  lua_checkstack(L, 8);
  lua_pushvalue(L, hidx);
  p->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* dropped again if spawning fails */

  memset(&sp, 0, sizeof sp);
  for (i = 0; i < 3; i++) sp.child[i] = sp.parent[i] = -1;
  sp.devnull = -1;
  r = posix_spawn_file_actions_init(&sp.fa);
  if (r == 0) sp.fa_ok = 1;
  if (r == 0 && (r = posix_spawnattr_init(&sp.attr)) == 0) sp.attr_ok = 1;
  for (i = 0; r == 0 && i < 3; i++) {
    int fds[2], target = -1;
    switch (mode[i]) {
    case IO_PIPE:
      if (pipe2(fds, O_CLOEXEC) < 0) {
        r = errno;
        break;
      }
      if (i == 0) {
        sp.child[i] = fds[0];
        sp.parent[i] = fds[1];
      } else {
        sp.child[i] = fds[1];
        sp.parent[i] = fds[0];
      }
      sp.child[i] = high_fd(sp.child[i]);
      sp.parent[i] = high_fd(sp.parent[i]);
      if (sp.child[i] < 0 || sp.parent[i] < 0) {
        r = errno ? errno : EMFILE;
        break;
      }
      if (fcntl(sp.parent[i], F_SETFL, O_NONBLOCK) < 0) {
        r = errno;
        break;
      }
      target = sp.child[i];
      break;
    case IO_DEVNULL:
      if (sp.devnull < 0 && (sp.devnull = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0)
        sp.devnull = high_fd(sp.devnull);
      if (sp.devnull < 0) {
        r = errno;
        break;
      }
      target = sp.devnull;
      break;
    case IO_STDOUT: target = 1; break;
    case IO_FD: target = fdarg[i]; break;
    }
    if (r == 0 && target >= 0) r = posix_spawn_file_actions_adddup2(&sp.fa, target, i);
  }
  /* pass_fds: dup2 onto itself clears close-on-exec in the child. */
  if (r == 0 && lua_getfield(L, 2, "pass_fds") == LUA_TTABLE) {
    lua_Integer n = luaL_len(L, -1);
    for (lua_Integer k = 1; r == 0 && k <= n; k++) {
      lua_Integer fd;
      lua_geti(L, -1, k);
      fd = lua_tointeger(L, -1);
      lua_pop(L, 1);
      if (fd < 3 || fd > 0x7fffffff || fcntl((int)fd, F_GETFD) < 0) {
        r = EBADF;
        break;
      }
      r = posix_spawn_file_actions_adddup2(&sp.fa, (int)fd, (int)fd);
      if (fd > maxpass) maxpass = (int)fd;
    }
  }
  lua_pop(L, 1);
  if (r == 0) r = posix_spawn_file_actions_addclosefrom_np(&sp.fa, maxpass + 1);
  if (r == 0 && cwd) r = posix_spawn_file_actions_addchdir_np(&sp.fa, cwd);
  if (r == 0) {
    sigset_t none, def;
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    sigemptyset(&none);
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    sigaddset(&def, SIGXFSZ);
    posix_spawnattr_setsigmask(&sp.attr, &none);
    posix_spawnattr_setsigdefault(&sp.attr, &def);
    lua_getfield(L, 2, "start_new_session");
    if (lua_toboolean(L, -1)) flags |= POSIX_SPAWN_SETSID;
    lua_pop(L, 1);
    r = posix_spawnattr_setflags(&sp.attr, flags);
  }
  if (r == 0) {
    if (strchr(argv[0], '/')) r = posix_spawn(&pid, argv[0], &sp.fa, &sp.attr, argv, envp);
    else r = posix_spawnp(&pid, argv[0], &sp.fa, &sp.attr, argv, envp);
  }
  if (r != 0) {
    if (p->ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, p->ref);
    p->ref = LUA_NOREF;
    spawn_free(&sp, 0);
    for (i = 0; i < 3; i++)
      if (conn[i]) ml__conn_close(conn[i], 1);
    ml__exc_push_errno(L, r, NULL);
    /* Python names the program in the message. */
    if (lua_istable(L, -1)) {
      lua_pushstring(L, argv[0]);
      lua_setfield(L, -2, "filename");
    }
    return lua_error(L);
  }
  p->S = ml__state(L);
  p->pid = pid;
  p->state = P_RUNNING;
  start_watching(p);
  spawn_free(&sp, 1);
  lua_pushvalue(L, hidx);
  for (i = 0; i < 3; i++) {
    if (conn[i]) {
      ml__conn_set_pipe(conn[i], sp.parent[i], i == 0 ? ML_PIPE_WRITE : ML_PIPE_READ);
      lua_pushvalue(L, connidx[i] + 1);
    } else if (sp.parent[i] >= 0) {
      lua_pushinteger(L, sp.parent[i]);
    } else {
      lua_pushnil(L);
    }
  }
  return 4;
}

/* ---------------------------------------------------------------- */
/* The handle.                                                         */

/* h:pid() -> integer */
static int proc_pid(lua_State *L) {
  lua_pushinteger(L, check_proc(L)->pid);
  return 1;
}

/* returncode(): nil while the child runs.
 * h:returncode() -> integer | nil */
static int proc_returncode(lua_State *L) {
  Proc *p = check_proc(L);
  if (p->state != P_EXITED || p->S == NULL) lua_pushnil(L);
  else lua_pushinteger(L, p->returncode);
  return 1;
}

/* signal(sig): sends sig to the child, unless it has been reaped (its pid
 * may then be another process's).  h:signal(sig) -> boolean: true if
 * it was sent. */
static int proc_signal(lua_State *L) {
  Proc *p = check_proc(L);
  lua_Integer sig = luaL_checkinteger(L, 2);
  luaL_argcheck(L, sig >= 0 && sig < NSIG, 2, "not a signal number");
  if (p->state != P_RUNNING) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (kill(p->pid, (int)sig) < 0) {
    if (errno == ESRCH) {
      lua_pushboolean(L, 0);
      return 1;
    }
    ml__exc_push_errno(L, errno, NULL);
    return lua_error(L);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* __tostring(h) -> string */
static int proc_tostring(lua_State *L) {
  Proc *p = check_proc(L);
  if (p->state == P_EXITED)
    lua_pushfstring(L, "<ProcessHandle pid=%d returncode=%d>", (int)p->pid, p->returncode);
  else lua_pushfstring(L, "<ProcessHandle pid=%d running>", (int)p->pid);
  return 1;
}

/* close_fd(fd) -> nothing: closes a pipe end spawn returned that nothing
 * took. */
static int l_close_fd(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  if (fd > 2 && fd <= 0x7fffffff) close((int)fd);
  return 0;
}

/* dup_file(file) -> fd: a close-on-exec copy of a Lua file's fd. */
static int l_dup_file(lua_State *L) {
  luaL_Stream *f = luaL_checkudata(L, 1, LUA_FILEHANDLE);
  int fd;
  if (f->closef == NULL) return luaL_argerror(L, 1, "file is closed");
  fd = fcntl(fileno(f->f), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) {
    ml__exc_push_errno(L, errno, NULL);
    return lua_error(L);
  }
  lua_pushinteger(L, fd);
  return 1;
}

static const luaL_Reg proc_methods[] = {
  {"pid", proc_pid},
  {"returncode", proc_returncode},
  {"signal", proc_signal},
  {NULL, NULL},
};

static const luaL_Reg funcs[] = {
  {"spawn", l_spawn},
  {"close_fd", l_close_fd},
  {"dup_file", l_dup_file},
  {NULL, NULL},
};

/* [-0, +1] pushes the module table (spawn, close_fd, dup_file, signals). */
int luaopen_asyncio__process(lua_State *L) {
  static const struct {
    const char *name;
    int sig;
  } sigs[] = {
    {"SIGHUP", SIGHUP},       {"SIGINT", SIGINT},   {"SIGQUIT", SIGQUIT},   {"SIGILL", SIGILL},
    {"SIGTRAP", SIGTRAP},     {"SIGABRT", SIGABRT}, {"SIGBUS", SIGBUS},     {"SIGFPE", SIGFPE},
    {"SIGKILL", SIGKILL},     {"SIGUSR1", SIGUSR1}, {"SIGSEGV", SIGSEGV},   {"SIGUSR2", SIGUSR2},
    {"SIGPIPE", SIGPIPE},     {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM},   {"SIGCHLD", SIGCHLD},
    {"SIGCONT", SIGCONT},     {"SIGSTOP", SIGSTOP}, {"SIGTSTP", SIGTSTP},   {"SIGTTIN", SIGTTIN},
    {"SIGTTOU", SIGTTOU},     {"SIGURG", SIGURG},   {"SIGXCPU", SIGXCPU},   {"SIGXFSZ", SIGXFSZ},
    {"SIGVTALRM", SIGVTALRM}, {"SIGPROF", SIGPROF}, {"SIGWINCH", SIGWINCH}, {"SIGIO", SIGIO},
    {"SIGPWR", SIGPWR},       {"SIGSYS", SIGSYS},
  };
  luaL_requiref(L, "asyncio._stream", luaopen_asyncio__stream, 0);
  lua_pop(L, 1);
  if (ml__udata_newmt(L, ML_UT_PROCESS, ML_PROC)) {
    luaL_newlib(L, proc_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, proc_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, proc_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_createtable(L, 0, (int)(sizeof sigs / sizeof sigs[0]));
  for (size_t k = 0; k < sizeof sigs / sizeof sigs[0]; k++) {
    lua_pushinteger(L, sigs[k].sig);
    lua_setfield(L, -2, sigs[k].name);
  }
  lua_setfield(L, -2, "signals");
  return 1;
}
