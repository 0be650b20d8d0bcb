/* _signal.c: Unix signals delivered to a state's loop (asyncio._signal),
 * behind loop:add_signal_handler.
 *
 * Signal dispositions belong to the process, handlers to states, and a
 * process may hold several states on several threads.  So: one C handler
 * for every caught signal, and a fixed table of slots, one per state that
 * catches signals, each with an eventfd its loop watches.  The C handler
 * only marks the signal pending in each interested slot and writes that
 * slot's eventfd (async-signal-safe); the loop's watcher then calls the
 * Lua handlers, as loop callbacks, never inside the C handler.  An eventfd
 * in the loop's epoll set wakes a host that waits in its own poll() on
 * the loop's fd as well as ev_run (libev's ev_signal writes its pipe only
 * while the loop blocks inside ev_run, and allows a signal in one loop
 * only).
 *
 * A slot and its eventfd are never freed, only reused by the next state:
 * a handler running on another thread while a state closes may still
 * touch the slot, so it must stay valid memory and its fd must never be a
 * reused number.  The previous disposition of a signal is saved when the
 * first state catches it and restored when the last one lets it go (so
 * the CLI's SIGINT meaning comes back after remove_signal_handler).
 * SIGCHLD is passed on to the previous handler too: libev's default loop
 * reaps children from it. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include "core/module.h"

#define ML_SIGSET "asyncio.SignalSet"
#define MAX_SLOTS 64

typedef struct Slot {
  volatile sig_atomic_t used;
  volatile sig_atomic_t want[NSIG];
  volatile sig_atomic_t pending[NSIG];
  int efd; /* made on first use, never closed */
  int made;
} Slot;

static Slot slots[MAX_SLOTS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int nwant[NSIG];              /* states catching each signal */
static struct sigaction saved[NSIG]; /* the disposition before us */

static void on_signal(int sig, siginfo_t *info, void *ctx) {
  int saved_errno = errno;
  uint64_t one = 1;
  for (int i = 0; i < MAX_SLOTS; i++) {
    Slot *s = &slots[i];
    if (s->used && s->want[sig]) {
      ssize_t r;
      s->pending[sig] = 1;
      r = write(s->efd, &one, sizeof one);
      (void)r; /* EAGAIN: the counter is already non-zero, a wake-up is due */
    }
  }
  if (sig == SIGCHLD) {
    struct sigaction *o = &saved[sig];
    if (o->sa_flags & SA_SIGINFO) {
      if (o->sa_sigaction) o->sa_sigaction(sig, info, ctx);
    } else if (o->sa_handler != SIG_DFL && o->sa_handler != SIG_IGN && o->sa_handler) {
      o->sa_handler(sig);
    }
  }
  errno = saved_errno;
}

/* Takes (under mu) sig for one more state: installs the C handler when it
 * is the first.  Returns 0 or -errno. */
static int catch_sig(int sig) {
  if (nwant[sig]++ == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&sa.sa_mask);
    if (sigaction(sig, &sa, &saved[sig]) < 0) {
      nwant[sig]--;
      return -errno;
    }
  }
  return 0;
}

static void release_sig(int sig) {
  if (nwant[sig] > 0 && --nwant[sig] == 0) sigaction(sig, &saved[sig], NULL);
}

/* ---------------------------------------------------------------- */
/* The state's side: one SignalSet per state, made on first use.       */

typedef struct SigSet {
  ml_State *S;
  int slot; /* index in slots, -1 once closed */
  int ref;  /* registry anchor while some signal is caught */
  int ncaught;
  ev_io w;
} SigSet;

/* User values: 1 the table sig -> {fn, args..., n = k}. */

/* Protected: calls the handlers of every pending signal.
 * dispatch_p(set lightuserdata) -> nothing; each handler runs as its
 * own loop callback (ml__callback), so one failing does not stop the rest. */
static int dispatch_p(lua_State *L) {
  SigSet *ss = lua_touserdata(L, 1);
  Slot *s;
  uint64_t v;
  ssize_t r;
  lua_settop(L, 0);
  if (ss->slot < 0 || ss->ref == LUA_NOREF) return 0;
  s = &slots[ss->slot];
  r = read(s->efd, &v, sizeof v);
  (void)r;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ss->ref);
  lua_getiuservalue(L, 1, 1);
  for (int sig = 1; sig < NSIG; sig++) {
    if (!s->pending[sig]) continue;
    s->pending[sig] = 0;
    if (lua_rawgeti(L, 2, sig) == LUA_TTABLE) {
      /* The Lua side's dispatcher: handlers[sig] = {call, entry}. */
      lua_rawgeti(L, -1, 1);
      lua_rawgeti(L, -2, 2);
      ml__callback(L, 1, "Exception in signal handler");
    }
    lua_pop(L, 1);
  }
  return 0;
}

/* [-0, +0] on the main state: runs dispatch_p protected. */
static void sig_cb(struct ev_loop *loop, ev_io *w, int revents) {
  SigSet *ss = w->data;
  lua_State *L = ml__main_lua(ss->S);
  (void)loop;
  (void)revents;
  if (!lua_checkstack(L, 8)) return;
  lua_pushcfunction(L, dispatch_p);
  lua_pushlightuserdata(L, ss);
  ml__callback(L, 1, "Exception in signal dispatch");
}

static void set_close(SigSet *ss) {
  if (ss->slot < 0) return;
  pthread_mutex_lock(&mu);
  for (int sig = 1; sig < NSIG; sig++) {
    if (slots[ss->slot].want[sig]) {
      slots[ss->slot].want[sig] = 0;
      release_sig(sig);
    }
  }
  slots[ss->slot].used = 0;
  pthread_mutex_unlock(&mu);
  if (ev_is_active(&ss->w)) {
    ev_ref(ml__loop(ss->S)); /* it was unreferenced when started */
    ev_io_stop(ml__loop(ss->S), &ss->w);
  }
  ss->slot = -1;
}

/* __gc(set) -> nothing: gives the slot and its signals back. */
static int set_gc(lua_State *L) {
  SigSet *ss = ml__udata_test(L, 1, ML_UT_SIGSET);
  if (ss) set_close(ss);
  return 0;
}

/* [-0, +0] the open SignalSet at 1, or raises. */
static SigSet *check_set(lua_State *L) {
  SigSet *ss = ml__udata_check(L, 1, ML_UT_SIGSET);
  if (ss->slot < 0) luaL_error(L, "the signal set is closed");
  return ss;
}

/* [-0, +0] the signal number at idx; raises ValueError or RuntimeError. */
static int check_sig(lua_State *L, int idx) {
  lua_Integer sig = luaL_checkinteger(L, idx);
  if (sig < 1 || sig >= NSIG)
    ml__exc_raise(L, "ValueError", "sig %d out of range(1, %d)", (int)sig, NSIG);
  if (sig == SIGKILL || sig == SIGSTOP)
    ml__exc_raise(L, "RuntimeError", "sig %d cannot be caught", (int)sig);
  return (int)sig;
}

/* new() -> the state's SignalSet (a slot taken, its eventfd watched). */
static int l_new(lua_State *L) {
  ml_State *S = ml__state(L);
  SigSet *ss;
  int i, fd, err = 0;
  if (!ml__signals_enabled(S))
    return ml__exc_raise(
      L, "RuntimeError",
      "signal handling is off in this state (a host turns it on with ml_state_enable_signals)");
  ss = lua_newuserdatauv(L, sizeof *ss, 1);
  memset(ss, 0, sizeof *ss);
  ss->slot = -1;
  ss->ref = LUA_NOREF;
  ml__udata_setmt(L, ML_UT_SIGSET);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  pthread_mutex_lock(&mu);
  for (i = 0; i < MAX_SLOTS && slots[i].used; i++) {}
  if (i < MAX_SLOTS && !slots[i].made) {
    fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) err = errno;
    else {
      slots[i].efd = fd;
      slots[i].made = 1;
    }
  }
  if (i < MAX_SLOTS && err == 0) slots[i].used = 1;
  pthread_mutex_unlock(&mu);
  if (i == MAX_SLOTS)
    return ml__exc_raise(L, "RuntimeError", "too many states catch signals (%d)", MAX_SLOTS);
  if (err) {
    ml__exc_push_errno(L, err, "eventfd");
    return lua_error(L);
  }
  ss->S = S;
  ss->slot = i;
  ev_io_init(&ss->w, sig_cb, slots[i].efd, EV_READ);
  ss->w.data = ss;
  ev_io_start(ml__loop(S), &ss->w);
  ev_unref(ml__loop(S)); /* a signal handler alone does not keep the loop alive */
  return 1;
}

/* set:catch(sig, entry): entry = {call, arg} is called as call(arg) from
 * the loop when sig arrives; replaces an earlier one.
 * -> nothing */
static int set_catch(lua_State *L) {
  SigSet *ss = check_set(L);
  int sig = check_sig(L, 2), err = 0;
  Slot *s = &slots[ss->slot];
  luaL_checktype(L, 3, LUA_TTABLE);
  if (ss->ref == LUA_NOREF) {
    lua_pushvalue(L, 1);
    ss->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, sig);
  if (!s->want[sig]) {
    pthread_mutex_lock(&mu);
    err = catch_sig(sig);
    if (err == 0) s->want[sig] = 1;
    pthread_mutex_unlock(&mu);
    if (err < 0) {
      lua_pushnil(L);
      lua_rawseti(L, -2, sig);
      ml__exc_push_errno(L, -err, "sigaction");
      return lua_error(L);
    }
    ss->ncaught++;
  }
  return 0;
}

/* set:release(sig) -> true if sig had a handler. */
static int set_release(lua_State *L) {
  SigSet *ss = check_set(L);
  int sig = check_sig(L, 2);
  Slot *s = &slots[ss->slot];
  lua_getiuservalue(L, 1, 1);
  lua_pushnil(L);
  lua_rawseti(L, -2, sig);
  if (!s->want[sig]) {
    lua_pushboolean(L, 0);
    return 1;
  }
  pthread_mutex_lock(&mu);
  s->want[sig] = 0;
  s->pending[sig] = 0;
  release_sig(sig);
  pthread_mutex_unlock(&mu);
  if (--ss->ncaught == 0 && ss->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, ss->ref);
    ss->ref = LUA_NOREF;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* raise(sig) -> nothing: sends sig to this process (tests, and
 * os.kill(getpid())). */
static int l_raise(lua_State *L) {
  lua_Integer sig = luaL_checkinteger(L, 1);
  luaL_argcheck(L, sig >= 0 && sig < NSIG, 1, "not a signal number");
  if (kill(getpid(), (int)sig) < 0) {
    ml__exc_push_errno(L, errno, NULL);
    return lua_error(L);
  }
  return 0;
}

/* getpid() -> this process's id. */
static int l_getpid(lua_State *L) {
  lua_pushinteger(L, getpid());
  return 1;
}

static const luaL_Reg set_methods[] = {
  {"catch", set_catch},
  {"release", set_release},
  {NULL, NULL},
};

static const luaL_Reg funcs[] = {
  {"new", l_new},
  {"raise", l_raise},
  {"getpid", l_getpid},
  {NULL, NULL},
};

/* [-0, +1] pushes the module table (new, raise, getpid, NSIG). */
int luaopen_asyncio__signal(lua_State *L) {
  if (ml__udata_newmt(L, ML_UT_SIGSET, ML_SIGSET)) {
    luaL_newlib(L, set_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, set_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_pushinteger(L, NSIG);
  lua_setfield(L, -2, "NSIG");
  return 1;
}
