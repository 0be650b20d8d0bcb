/* _server.c: asyncio._server, the listener behind every Server: accepts
 * connections on the listening sockets and hands each one to a Lua
 * function (asyncio/transports.lua makes the transport or the stream and
 * its task).  When accept() runs out of file descriptors or memory it
 * stops its watchers and tries again on a timer, instead of spinning on a
 * socket that stays readable. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include "socket/net.h"

#define ACCEPT_RETRY_DELAY 0.5 /* after EMFILE and friends, seconds */

#define ML_LISTENER "asyncio.Listener"

typedef struct LSock {
  ml_Socket *s;
  ev_io io;
  struct Listener *ls;
} LSock;

typedef struct Listener {
  ml_State *S;
  int n, backlog;
  int serving, closed, backing_off;
  int ref; /* anchor while serving */
  ev_timer retry;
  LSock socks[];
} Listener;

/* User values: 1 the list of sockets, 2 on_accept(sock, addr). */

static void listener_arm(Listener *ls, int on) {
  for (int i = 0; i < ls->n; i++) {
    ev_io *w = &ls->socks[i].io;
    if (on && !ev_is_active(w) && ls->socks[i].s->fd >= 0) ev_io_start(ml__loop(ls->S), w);
    else if (!on && ev_is_active(w)) ev_io_stop(ml__loop(ls->S), w);
  }
}

/* [-0, +0] closes the accepted socket at sidx now, or aborts the
 * transport made over it: a connection whose set-up failed (out of
 * memory, say) is dropped at once, as asyncio does, not left to the
 * collector with its peer waiting. */
static void drop_accepted(lua_State *L, int sidx, ml_Socket *c) {
  if (c->transport) {
    ml_Conn *t;
    lua_getiuservalue(L, sidx, 1);
    t = ml__conn_test(L, -1);
    if (t != NULL) ml__conn_close(t, 1);
    lua_pop(L, 1);
  } else if (c->fd >= 0) {
    ml__sock_close(L, c);
  }
}

/* Protected body of accept_cb, called as accept_event(listener lightuserdata,
 * socket index) -> nothing: accepts up to backlog connections and calls
 * on_accept(sock, addr) for each.  An error here (out of memory before a
 * connection was accepted, or while adopting one, which then is closed)
 * goes to accept_cb's report; one in on_accept is reported here, its
 * connection dropped, and accepting goes on.  [-2, +0] */
static int accept_event(lua_State *L) {
  Listener *ls = lua_touserdata(L, 1);
  LSock *l = &ls->socks[lua_tointeger(L, 2)];
  ml_Socket *s = l->s;
  lua_settop(L, 0);
  if (ls->ref == LUA_NOREF) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ls->ref); /* 1: the listener */
  for (int k = 0; k < ls->backlog && ls->serving && s->fd >= 0; k++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    ml_Socket *c;
    int fd;
    lua_getiuservalue(L, 1, 2); /* 2: on_accept */
    c = ml__sock_push(L, -1, s->family, s->type, s->proto);
    fd = accept4(s->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int e = errno;
      lua_settop(L, 1);
      switch (e) {
      case EAGAIN:
#if EWOULDBLOCK != EAGAIN
      case EWOULDBLOCK:
#endif
        return 0;
      case EINTR:
      case ECONNABORTED:
      case EPROTO:
      case ENETDOWN:
      case ENOPROTOOPT:
      case EHOSTDOWN:
      case ENONET:
      case EHOSTUNREACH:
      case EOPNOTSUPP:
      case ENETUNREACH: continue;
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM:
        /* Out of fds or memory: stop accepting for a while instead of
         * spinning on a socket that stays readable, then try again. */
        listener_arm(ls, 0);
        ls->backing_off = 1;
        ev_timer_set(&ls->retry, ACCEPT_RETRY_DELAY, 0.);
        ev_timer_start(ml__loop(ls->S), &ls->retry);
        ml__exc_push_errno(L, e, "accept");
        ml__report(L, "socket.accept() out of system resource; retrying shortly");
        return 0;
      default:
        ml__exc_push_errno(L, e, "accept");
        ml__report(L, "socket.accept() failed");
        return 0;
      }
    }
    ml__sock_adopt(L, c, fd, (struct sockaddr *)&ss, len); /* 4: address */
    /* 1 listener, 2 the socket again, 3 on_accept, 4 socket, 5 address. */
    lua_pushvalue(L, 3);
    lua_insert(L, 2);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
      drop_accepted(L, 2, c);
      ml__report(L, "Exception in accept callback");
    }
    lua_settop(L, 1);
  }
  return 0;
}

/* [-0, +0] on the main state: runs accept_event protected. */
static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
  LSock *l = w->data;
  lua_State *L = ml__main_lua(l->ls->S);
  (void)loop;
  (void)revents;
  if (!lua_checkstack(L, 8)) return;
  lua_pushcfunction(L, accept_event);
  lua_pushlightuserdata(L, l->ls);
  lua_pushinteger(L, l - l->ls->socks);
  ml__callback(L, 2, "Exception in accept");
}

static void retry_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  Listener *ls = w->data;
  (void)loop;
  (void)revents;
  ls->backing_off = 0;
  if (ls->serving && !ls->closed) listener_arm(ls, 1);
}

/* _listener(sockets, on_accept, backlog) -> listener */
static int l_listener(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int backlog = ml__optint(L, 3, 100);
  int n = (int)luaL_len(L, 1);
  Listener *ls = lua_newuserdatauv(L, sizeof *ls + (size_t)n * sizeof(LSock), 2);
  memset(ls, 0, sizeof *ls);
  ls->S = ml__state(L);
  ls->ref = LUA_NOREF;
  ls->backlog = backlog < 1 ? 1 : backlog > 1024 ? 1024 : backlog;
  ev_init(&ls->retry, retry_cb);
  ls->retry.data = ls;
  ml__udata_setmt(L, ML_UT_LISTENER);
  for (int i = 0; i < n; i++) {
    lua_geti(L, 1, i + 1);
    ml_Socket *s = ml__sock_checkopen(L, -1);
    lua_pop(L, 1);
    ls->socks[i].s = s;
    ls->socks[i].ls = ls;
    ev_io_init(&ls->socks[i].io, accept_cb, s->fd, EV_READ);
    ls->socks[i].io.data = &ls->socks[i];
    ls->n = i + 1;
  }
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, 2);
  return 1;
}

/* [-0, +0] the listener at index 1, or raises. */
static Listener *check_listener(lua_State *L) { return ml__udata_check(L, 1, ML_UT_LISTENER); }

/* l:start() -> nothing; anchors the listener while serving. */
static int listener_start(lua_State *L) {
  Listener *ls = check_listener(L);
  if (ls->closed || ls->serving) return 0;
  ls->serving = 1;
  lua_pushvalue(L, 1);
  ls->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (!ls->backing_off) listener_arm(ls, 1);
  return 0;
}

/* [-0, +0] stops the watchers and drops the serving anchor. */
static void listener_stop(lua_State *L, Listener *ls) {
  ls->serving = 0;
  listener_arm(ls, 0);
  if (ev_is_active(&ls->retry)) ev_timer_stop(ml__loop(ls->S), &ls->retry);
  ls->backing_off = 0;
  if (ls->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, ls->ref);
    ls->ref = LUA_NOREF;
  }
}

/* l:stop() -> nothing */
static int listener_lstop(lua_State *L) {
  listener_stop(L, check_listener(L));
  return 0;
}

/* l:close() -> nothing: stops accepting and closes the listening sockets. */
static int listener_close(lua_State *L) {
  Listener *ls = check_listener(L);
  listener_stop(L, ls);
  if (ls->closed) return 0;
  ls->closed = 1;
  for (int i = 0; i < ls->n; i++) ml__sock_close(L, ls->socks[i].s);
  return 0;
}

/* l:is_serving() -> boolean */
static int listener_is_serving(lua_State *L) {
  Listener *ls = check_listener(L);
  lua_pushboolean(L, ls->serving && !ls->closed);
  return 1;
}

/* __gc(l) -> nothing: stops the watchers. */
static int listener_gc(lua_State *L) {
  Listener *ls = ml__udata_test(L, 1, ML_UT_LISTENER);
  if (ls == NULL) return 0; /* a script calling __gc on something else */
  for (int i = 0; i < ls->n; i++)
    if (ev_is_active(&ls->socks[i].io)) ev_io_stop(ml__loop(ls->S), &ls->socks[i].io);
  if (ev_is_active(&ls->retry)) ev_timer_stop(ml__loop(ls->S), &ls->retry);
  return 0;
}

static const luaL_Reg listener_methods[] = {
  {"start", listener_start},
  {"stop", listener_lstop},
  {"close", listener_close},
  {"is_serving", listener_is_serving},
  {NULL, NULL},
};

static const luaL_Reg module_funcs[] = {
  {"_listener", l_listener},
  {NULL, NULL},
};

/* [-0, +1] pushes the module table. */
int luaopen_asyncio__server(lua_State *L) {
  luaL_requiref(L, "socket", luaopen_socket, 0);
  lua_pop(L, 1);
  if (ml__udata_newmt(L, ML_UT_LISTENER, ML_LISTENER)) {
    lua_newtable(L);
    luaL_setfuncs(L, listener_methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, listener_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, module_funcs, 0);
  return 1;
}
