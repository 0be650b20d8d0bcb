/* _net.c: asyncio._net, the loop's low-level socket methods (sock_recv,
 * sock_sendall, sock_connect, sock_accept, ...), add_reader/add_writer, and
 * name resolution (getaddrinfo, getnameinfo) on the resolver pool
 * (socket/resolver.c), so a lookup never blocks the loop.
 *
 * A sock_* method tries its system call at once; only when the kernel says
 * EAGAIN does it park the task on the socket's own ev_io watcher (no
 * allocation) and retry when woken.  The cancel hooks stop the watcher, so
 * a cancelled task leaves nothing armed. */
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/socket.h>
#include "socket/net.h"
#include "socket/resolver.h"

/* ---------------------------------------------------------------- */
/* Parking a task on a socket.                                        */

static void sock_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  ml_Socket *s = w->data;
  ml_Task **slot = w == &s->rio ? &s->rwait : &s->wwait;
  (void)revents;
  ev_io_stop(loop, w);
  if (*slot) {
    ml_Task *t = *slot;
    *slot = NULL;
    ml__task_wake(t);
  }
}

/* The cancel hook of a task parked to read s: stops the watcher.
 * [-0, +0] */
static int rhook(lua_State *L, ml_Task *t, void *ud) {
  ml_Socket *s = ud;
  (void)L;
  if (s->rwait == t) {
    s->rwait = NULL;
    if (ev_is_active(&s->rio)) ev_io_stop(ml__loop(s->S), &s->rio);
  }
  return 0;
}

/* The same for a task parked to write.  [-0, +0] */
static int whook(lua_State *L, ml_Task *t, void *ud) {
  ml_Socket *s = ud;
  (void)L;
  if (s->wwait == t) {
    s->wwait = NULL;
    if (ev_is_active(&s->wio)) ev_io_stop(ml__loop(s->S), &s->wio);
  }
  return 0;
}

/* Suspends the running task until s is readable (or writable); then
 * k(L, LUA_YIELD, ctx) retries the operation (net.h).  [-0, +0] */
int ml__sock_park(lua_State *L, ml_Socket *s, int write, int always, lua_KContext ctx,
                  lua_KFunction k) {
  ml_State *S = ml__state(L);
  ml_Task **slot = write ? &s->wwait : &s->rwait;
  ev_io *w = write ? &s->wio : &s->rio;
  ml__task_check_suspendable(L);
  if (*slot)
    return ml__exc_raise(L, "RuntimeError", "another task is already waiting to %s this socket",
                         write ? "write to" : "read from");
  if (s->S == NULL) {
    s->S = S;
    ev_init(&s->rio, sock_io_cb);
    ev_init(&s->wio, sock_io_cb);
    s->rio.data = s->wio.data = s;
  }
  ev_io_set(w, s->fd, write ? EV_WRITE : EV_READ);
  ev_io_start(ml__loop(S), w);
  *slot = ml__task_current(L);
  if (always) return ml__task_suspend_always(L, write ? whook : rhook, s, ctx, k);
  return ml__task_suspend(L, write ? whook : rhook, s, ctx, k);
}

static int park(lua_State *L, ml_Socket *s, int write, lua_KContext ctx, lua_KFunction k) {
  return ml__sock_park(L, s, write, 0, ctx, k);
}

/* ---- argument checks ----
 * An async method runs in the frame of the await that called it:
 * __awmeth's for `await loop:sock_recv(...)`, none for a Coroutine
 * awaited later, where luaL_argerror would name '__awmeth' or '?'.  So
 * the checks below name the method the script called, and count its
 * arguments as a method call's (the loop is not one: the socket is #1). */

/* Raises "bad argument #n to 'fn' (msg)" for the value at idx. */
int ml__net_argerror(lua_State *L, const char *fn, int idx, const char *msg) {
  return luaL_error(L, "bad argument #%d to '%s' (%s)", idx - 1, fn, msg);
}

int ml__net_typeerror(lua_State *L, const char *fn, int idx, const char *tname) {
  return ml__net_argerror(L, fn, idx,
                          lua_pushfstring(L, "%s expected, got %s", tname, luaL_typename(L, idx)));
}

/* [-0, +0] */
lua_Integer ml__net_checkinteger(lua_State *L, const char *fn, int idx) {
  int ok;
  lua_Integer v = lua_tointegerx(L, idx, &ok);
  if (!ok) {
    if (lua_type(L, idx) == LUA_TNUMBER)
      ml__net_argerror(L, fn, idx, "number has no integer representation");
    ml__net_typeerror(L, fn, idx, "number");
  }
  return v;
}

/* [-0, +0] a string, or a number converted in place (luaL_checklstring's
 * rule). */
static const char *arg_string(lua_State *L, const char *fn, int idx, size_t *len) {
  int t = lua_type(L, idx);
  if (t != LUA_TSTRING && t != LUA_TNUMBER) ml__net_typeerror(L, fn, idx, "string");
  return lua_tolstring(L, idx, len);
}

/* The socket argument of a loop:sock_* method: open, non-blocking, not
 * owned by a transport.  [-0, +0] */
static ml_Socket *check_nb(lua_State *L, const char *fn, int idx) {
  ml_Socket *s = ml__udata_test(L, idx, ML_UT_SOCKET);
  if (s == NULL) ml__net_typeerror(L, fn, idx, ML_SOCKET);
  if (s->fd < 0) ml__exc_raise_errno(L, EBADF, NULL);
  if (s->blocking) ml__net_argerror(L, fn, idx, "the socket must be non-blocking");
  if (s->transport) ml__net_argerror(L, fn, idx, "the socket is used by a transport");
  return s;
}

/* addr_check_p(address, family): ml__sock_toaddr's checks, without a
 * lookup. */
static int addr_check_p(lua_State *L) {
  struct sockaddr_storage ss;
  socklen_t len;
  ml__sock_toaddr(L, 1, (int)lua_tointeger(L, 2), 0, &ss, &len);
  return 0;
}

/* Checks the address argument at idx for a socket of family, as the
 * system call will read it: socket/address.c raises argument errors of
 * its own frame, so they are caught here (only when the method is called,
 * not on its continuations) and raised again naming fn.  [-0, +0] */
static void check_addr(lua_State *L, const char *fn, int idx, int family) {
  const char *m, *open, *close;
  lua_pushcfunction(L, addr_check_p);
  lua_pushvalue(L, idx);
  lua_pushinteger(L, family);
  if (lua_pcall(L, 2, 0, 0) == LUA_OK) return;
  m = lua_tostring(L, -1);
  if (m == NULL) lua_error(L); /* an exception object: raised as it is */
  open = strncmp(m, "bad argument #", 14) == 0 ? strstr(m, "' (") : NULL;
  close = strrchr(m, ')');
  if (open && close > open) m = lua_pushlstring(L, open + 3, (size_t)(close - open - 3));
  ml__net_argerror(L, fn, idx, m);
}

/* ---------------------------------------------------------------- */
/* Resolution on the pool (socket/resolver.c; used by sock_connect and
 * sock_sendto too). */

/* [-0, +1] pushes the failure of q as an exception. */
static void req_push_error(lua_State *L, ml_Lookup *q) { ml__sock_push_gaierror(L, q->rc, q->err); }

/* Fills the request's getaddrinfo input from script values, the host at
 * hi and the port at pi; errors name fn's argument eidx (0: hi or pi).
 * [-0, +0] */
static void gai_args(lua_State *L, ml_Lookup *q, int hi, int pi, const char *fn, int eidx) {
  size_t n;
  hi = lua_absindex(L, hi);
  pi = lua_absindex(L, pi);
  if (!lua_isnoneornil(L, hi)) {
    const char *h = arg_string(L, fn, hi, &n);
    if (n >= sizeof q->host) ml__net_argerror(L, fn, eidx ? eidx : hi, "host name too long");
    memcpy(q->host, h, n + 1);
    q->has_host = n > 0;
  }
  if (lua_type(L, pi) == LUA_TNUMBER) {
    lua_Integer p = ml__net_checkinteger(L, fn, pi);
    snprintf(q->serv, sizeof q->serv, "%lld", (long long)p);
    q->has_serv = 1;
  } else if (!lua_isnoneornil(L, pi)) {
    const char *p = arg_string(L, fn, pi, &n);
    if (n >= sizeof q->serv) ml__net_argerror(L, fn, eidx ? eidx : pi, "service name too long");
    memcpy(q->serv, p, n + 1);
    q->has_serv = 1;
  }
}

/* [-0, +0] the integer field k of the options table at t, or dflt. */
static int opt_int(lua_State *L, int t, const char *k, int dflt) {
  int v = dflt;
  if (lua_istable(L, t)) {
    if (lua_getfield(L, t, k) != LUA_TNIL) {
      int ok;
      lua_Integer x = lua_tointegerx(L, -1, &ok);
      if (!ok || x < INT_MIN || x > INT_MAX)
        ml__exc_raise(L, "TypeError", "getaddrinfo() option '%s' must be an integer (32 bits)", k);
      v = (int)x;
    }
    lua_pop(L, 1);
  }
  return v;
}

/* Tries getaddrinfo without any lookup (numeric host and port); returns 1
 * with the result list pushed, or 0 if a lookup is needed.  [-0, +1|0] */
static int gai_numeric(lua_State *L, ml_Lookup *q) {
  struct addrinfo hints = q->hints, *res = NULL;
  int rc;
  if (q->has_serv) {
    char *end;
    strtol(q->serv, &end, 10);
    if (*end != '\0') return 0; /* a service name: /etc/services */
    hints.ai_flags |= AI_NUMERICSERV;
  }
  if (q->has_host) hints.ai_flags |= AI_NUMERICHOST;
  rc = getaddrinfo(q->has_host ? q->host : NULL, q->has_serv ? q->serv : NULL, &hints, &res);
  if (rc == EAI_NONAME && q->has_host) return 0;
  if (rc != 0) {
    ml__sock_push_gaierror(L, rc, errno);
    lua_error(L);
  }
  ml__sock_pushaddrinfo(L, res);
  return 1;
}

static int getaddrinfo_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Lookup *q = ml__lookup_check(L, -1);
  (void)status;
  (void)ctx;
  if (q->rc != 0) {
    req_push_error(L, q);
    return lua_error(L);
  }
  struct addrinfo *ai = q->ai;
  q->ai = NULL;
  ml__sock_pushaddrinfo(L, ai);
  return 1;
}

/* loop:getaddrinfo(host, port, {family=, type=, proto=, flags=}) */
static int loop_getaddrinfo(lua_State *L) {
  lua_settop(L, 4);
  if (!lua_isnil(L, 4) && !lua_istable(L, 4))
    ml__net_typeerror(L, "getaddrinfo", 4, "table or nil");
  ml_Lookup *q = ml__lookup_new(L, ML_LOOKUP_GAI);
  gai_args(L, q, 2, 3, "getaddrinfo", 0);
  q->hints.ai_family = opt_int(L, 4, "family", AF_UNSPEC);
  q->hints.ai_socktype = opt_int(L, 4, "type", 0);
  q->hints.ai_protocol = opt_int(L, 4, "proto", 0);
  q->hints.ai_flags = opt_int(L, 4, "flags", 0);
  if (gai_numeric(L, q)) return 1;
  return ml__lookup_submit(L, q, 0, getaddrinfo_k);
}

static int getnameinfo_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Lookup *q = ml__lookup_check(L, -1);
  (void)status;
  (void)ctx;
  if (q->rc != 0) {
    req_push_error(L, q);
    return lua_error(L);
  }
  lua_pushstring(L, q->host);
  lua_pushstring(L, q->serv);
  return 2;
}

/* Picks the family of a script address for getnameinfo.  [-0, +0] */
static int addr_family(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) return AF_UNIX;
  if (lua_istable(L, idx)) {
    if (lua_rawlen(L, idx) >= 3) return AF_INET6;
    lua_geti(L, idx, 1);
    const char *h = lua_tostring(L, -1);
    int v6 = h && strchr(h, ':');
    lua_pop(L, 1);
    return v6 ? AF_INET6 : AF_INET;
  }
  return ml__net_argerror(L, "getnameinfo", idx, "address expected");
}

/* loop:getnameinfo(sockaddr, flags) -> host, port */
static int loop_getnameinfo(lua_State *L) {
  lua_settop(L, 3);
  int family = addr_family(L, 2);
  check_addr(L, "getnameinfo", 2, family);
  lua_Integer flags = lua_isnil(L, 3) ? 0 : ml__net_checkinteger(L, "getnameinfo", 3);
  if (flags < INT_MIN || flags > INT_MAX)
    ml__net_argerror(L, "getnameinfo", 3, "flags out of range");
  ml_Lookup *q = ml__lookup_new(L, ML_LOOKUP_GNI);
  if (ml__sock_toaddr(L, 2, family, 0, &q->sa, &q->salen) != 0)
    return ml__net_argerror(L, "getnameinfo", 2, "getnameinfo needs a numeric address");
  q->flags = (int)flags;
  if ((q->flags & (NI_NUMERICHOST | NI_NUMERICSERV)) == (NI_NUMERICHOST | NI_NUMERICSERV)) {
    ml__lookup_run(q);
    return getnameinfo_k(L, LUA_OK, 0);
  }
  return ml__lookup_submit(L, q, 0, getnameinfo_k);
}

/* ---- resolving the host of an address argument, then carrying on ---- */

typedef struct Cont {
  int aidx;        /* stack index of the address argument */
  lua_KFunction k; /* what to run once it is numeric */
  const char *fn;  /* the method, for errors */
} Cont;

/* After the lookup: replaces the address argument with the first result
 * of the socket's family and runs the continuation. */
static int resolved_k(lua_State *L, int status, lua_KContext ctx) {
  const Cont *c = (const Cont *)ctx;
  ml_Lookup *q = ml__lookup_check(L, -1);
  ml_Socket *s = ml__sock_checkopen(L, 2);
  struct addrinfo *ai;
  (void)status;
  if (q->rc != 0) {
    req_push_error(L, q);
    return lua_error(L);
  }
  for (ai = q->ai; ai; ai = ai->ai_next)
    if (ai->ai_family == s->family) break;
  if (ai == NULL) {
    ml__sock_push_gaierror(L, EAI_ADDRFAMILY, 0);
    return lua_error(L);
  }
  lua_pop(L, 1); /* the handle: the request is freed when it is collected */
  ml__sock_pushaddr(L, ai->ai_addr, ai->ai_addrlen);
  lua_replace(L, c->aidx);
  return c->k(L, LUA_OK, 0);
}

/* Looks up the host of the address at c->aidx for socket s on the pool.
 * [-0, +1] */
static int resolve_then(lua_State *L, ml_Socket *s, const Cont *c) {
  ml_Lookup *q = ml__lookup_new(L, ML_LOOKUP_GAI);
  lua_geti(L, c->aidx, 1);
  lua_geti(L, c->aidx, 2);
  gai_args(L, q, -2, -1, c->fn, c->aidx);
  lua_pop(L, 2);
  q->hints.ai_family = s->family;
  q->hints.ai_socktype = s->type;
  return ml__lookup_submit(L, q, (lua_KContext)c, resolved_k);
}

/* ---------------------------------------------------------------- */
/* loop:sock_* methods.  Argument 1 is the loop, 2 the socket.        */

/* The four receive methods in one: stack 1 loop, 2 socket, 3 a
 * socket.buffer to fill or nil for a new string, 4 the byte count (0 with
 * a buffer: all of it).  ctx: 1 if the sender's address is wanted too.
 * Returns the data (or the count filled), then the address if wanted. */
static const char *recv_name(int into, int want_addr) {
  return into ? (want_addr ? "sock_recvfrom_into" : "sock_recv_into")
              : (want_addr ? "sock_recvfrom" : "sock_recv");
}

static int recv_k(lua_State *L, int status, lua_KContext ctx) {
  int into = lua_type(L, 3) == LUA_TUSERDATA, want_addr = (int)ctx;
  ml_Socket *s = check_nb(L, recv_name(into, want_addr), 2);
  size_t n = (size_t)lua_tointeger(L, 4), cap;
  (void)status;
  for (;;) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    luaL_Buffer b;
    char *buf;
    ssize_t r;
    if (into) {
      buf = ml__buffer_check(L, 3, &cap);
      if (n == 0 || n > cap) n = cap;
    } else {
      buf = ml__net_scratch(L, n, &cap);
      if (n > cap) buf = luaL_buffinitsize(L, &b, n);
    }
    r = recvfrom(s->fd, buf, n, 0, want_addr ? (struct sockaddr *)&ss : NULL,
                 want_addr ? &len : NULL);
    if (r >= 0) {
      if (into) lua_pushinteger(L, r);
      else if (n > cap) luaL_pushresultsize(&b, (size_t)r);
      else lua_pushlstring(L, buf, (size_t)r);
      if (!want_addr) return 1;
      if (len == 0) lua_pushnil(L);
      else ml__sock_pushaddr(L, (struct sockaddr *)&ss, len);
      return 2;
    }
    lua_settop(L, 4);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return park(L, s, 0, ctx, recv_k);
    return ml__exc_raise_errno(L, errno, NULL);
  }
}

/* Checks (sock, nbytes) and runs recv_k.  [loop, sock, n] */
static int recv_new(lua_State *L, lua_KContext want_addr) {
  const char *fn = recv_name(0, (int)want_addr);
  check_nb(L, fn, 2);
  lua_Integer n = ml__net_checkinteger(L, fn, 3);
  if (n < 0) ml__net_argerror(L, fn, 3, "negative buffer size");
  lua_settop(L, 3);
  lua_pushnil(L);
  lua_insert(L, 3); /* 3: nil (not a buffer), 4: n */
  return recv_k(L, LUA_OK, want_addr);
}

/* Checks (sock, buf [, nbytes]) and runs recv_k.
 * [-0, +0] (then as recv_k) */
static int recv_into(lua_State *L, lua_KContext want_addr) {
  const char *fn = recv_name(1, (int)want_addr);
  size_t size;
  check_nb(L, fn, 2);
  if (ml__buffer_test(L, 3, &size) == NULL) ml__net_typeerror(L, fn, 3, ML_BUFFER);
  lua_Integer n = lua_isnoneornil(L, 4) ? 0 : ml__net_checkinteger(L, fn, 4);
  if (n < 0 || (size_t)n > size) ml__net_argerror(L, fn, 4, "nbytes out of range");
  lua_settop(L, 3);
  lua_pushinteger(L, n);
  return recv_k(L, LUA_OK, want_addr);
}

/* loop:sock_recv(sock, nbytes) -> data ("" at end of stream) */
static int loop_sock_recv(lua_State *L) { return recv_new(L, 0); }
/* loop:sock_recv_into(sock, buf [, nbytes]) -> count */
static int loop_sock_recv_into(lua_State *L) { return recv_into(L, 0); }
/* loop:sock_recvfrom(sock, bufsize) -> data, addr */
static int loop_sock_recvfrom(lua_State *L) { return recv_new(L, 1); }
/* loop:sock_recvfrom_into(sock, buf [, nbytes]) -> count, addr */
static int loop_sock_recvfrom_into(lua_State *L) { return recv_into(L, 1); }

static int sendall_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Socket *s = check_nb(L, "sock_sendall", 2);
  size_t len, off = (size_t)ctx;
  const char *p = lua_tolstring(L, 3, &len);
  (void)status;
  while (off < len) {
    ssize_t r = send(s->fd, p + off, len - off, MSG_NOSIGNAL);
    if (r >= 0) {
      off += (size_t)r;
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return park(L, s, 1, (lua_KContext)off, sendall_k);
    return ml__exc_raise_errno(L, errno, NULL);
  }
  return 0;
}

/* loop:sock_sendall(sock, data) */
static int loop_sock_sendall(lua_State *L) {
  check_nb(L, "sock_sendall", 2);
  arg_string(L, "sock_sendall", 3, NULL);
  lua_settop(L, 3);
  return sendall_k(L, LUA_OK, 0);
}

static int sendto_k(lua_State *L, int status, lua_KContext ctx);
static const Cont sendto_cont = {4, sendto_k, "sock_sendto"};

static int sendto_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Socket *s = check_nb(L, "sock_sendto", 2);
  size_t len;
  const char *p = lua_tolstring(L, 3, &len);
  struct sockaddr_storage ss;
  socklen_t alen;
  (void)status;
  (void)ctx;
  if (ml__sock_toaddr(L, 4, s->family, 0, &ss, &alen) == 1) return resolve_then(L, s, &sendto_cont);
  for (;;) {
    ssize_t r = sendto(s->fd, p, len, MSG_NOSIGNAL, (struct sockaddr *)&ss, alen);
    if (r >= 0) {
      lua_pushinteger(L, r);
      return 1;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return park(L, s, 1, 0, sendto_k);
    return ml__exc_raise_errno(L, errno, NULL);
  }
}

/* loop:sock_sendto(sock, data, address) -> count */
static int loop_sock_sendto(lua_State *L) {
  ml_Socket *s = check_nb(L, "sock_sendto", 2);
  arg_string(L, "sock_sendto", 3, NULL);
  lua_settop(L, 4);
  check_addr(L, "sock_sendto", 4, s->family);
  return sendto_k(L, LUA_OK, 0);
}

static int connect_done_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Socket *s = check_nb(L, "sock_connect", 2);
  int err = 0;
  socklen_t len = sizeof err;
  (void)status;
  (void)ctx;
  if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err == EINPROGRESS || err == EALREADY) return park(L, s, 1, 0, connect_done_k);
  if (err) return ml__exc_raise_errno(L, err, NULL);
  return 0;
}

static int connect_k(lua_State *L, int status, lua_KContext ctx);
static const Cont connect_cont = {3, connect_k, "sock_connect"};

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Socket *s = check_nb(L, "sock_connect", 2);
  struct sockaddr_storage ss;
  socklen_t len;
  (void)status;
  (void)ctx;
  if (ml__sock_toaddr(L, 3, s->family, 0, &ss, &len) == 1) return resolve_then(L, s, &connect_cont);
  if (connect(s->fd, (struct sockaddr *)&ss, len) == 0) return 0;
  /* EINTR: the connection goes on asynchronously, as for EINPROGRESS. */
  if (errno == EINPROGRESS || errno == EINTR || errno == EAGAIN)
    return park(L, s, 1, 0, connect_done_k);
  return ml__exc_raise_errno(L, errno, NULL);
}

/* loop:sock_connect(sock, address): host names are looked up on the pool. */
static int loop_sock_connect(lua_State *L) {
  ml_Socket *s = check_nb(L, "sock_connect", 2);
  lua_settop(L, 3);
  check_addr(L, "sock_connect", 3, s->family);
  return connect_k(L, LUA_OK, 0);
}

static int accept_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Socket *s = check_nb(L, "sock_accept", 2);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  (void)status;
  (void)ctx;
  lua_settop(L, 2);
  ml_Socket *c = ml__sock_push(L, -1, s->family, s->type, s->proto);
  for (;;) {
    int fd = accept4(s->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      ml__sock_adopt(L, c, fd, (struct sockaddr *)&ss, len);
      return 2;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    lua_settop(L, 2);
    if (errno == EAGAIN || errno == EWOULDBLOCK) return park(L, s, 0, 0, accept_k);
    return ml__exc_raise_errno(L, errno, NULL);
  }
}

/* loop:sock_accept(sock) -> conn, address */
static int loop_sock_accept(lua_State *L) {
  check_nb(L, "sock_accept", 2);
  return accept_k(L, LUA_OK, 0);
}

/* ---------------------------------------------------------------- */
/* add_reader / add_writer: callbacks on raw fds.                      */

#define FDWATCH_MT "asyncio.FdWatcher"
static const char readers_key = 0, writers_key = 0;

typedef struct FdWatch {
  ml_State *S;
  ev_io io;
  int ref; /* registry reference to the userdata itself, while active */
  int nargs;
} FdWatch;

static void fdwatch_cb(struct ev_loop *loop, ev_io *w, int revents) {
  FdWatch *fw = w->data;
  lua_State *L = ml__main_lua(fw->S);
  int i, base;
  (void)loop;
  (void)revents;
  if (!lua_checkstack(L, fw->nargs + 8)) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, fw->ref);
  base = lua_gettop(L);
  for (i = 1; i <= fw->nargs + 1; i++) lua_getiuservalue(L, base, i);
  lua_remove(L, base);
  /* The callback may remove the watcher; fw is not used after the call. */
  ml__callback(L, fw->nargs,
               (w->events & EV_READ) ? "Exception in reader callback"
                                     : "Exception in writer callback");
}

/* [-0, +0] */
static void fdwatch_stop(lua_State *L, FdWatch *fw) {
  if (ev_is_active(&fw->io)) ev_io_stop(ml__loop(fw->S), &fw->io);
  if (fw->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, fw->ref);
    fw->ref = LUA_NOREF;
  }
}

static int fdwatch_gc(lua_State *L) {
  FdWatch *fw = ml__udata_test(L, 1, ML_UT_FDWATCH);
  if (fw && ev_is_active(&fw->io)) ev_io_stop(ml__loop(fw->S), &fw->io);
  return 0;
}

/* The fd of an integer or of an object with fileno().  [-0, +0] */
static int check_fd(lua_State *L, int idx) {
  int fd;
  if (lua_isinteger(L, idx)) {
    fd = (int)lua_tointeger(L, idx);
  } else {
    int t = lua_type(L, idx);
    if ((t != LUA_TTABLE && t != LUA_TUSERDATA) || lua_getfield(L, idx, "fileno") == LUA_TNIL)
      return luaL_typeerror(L, idx, "fd or object with fileno()");
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    if (!lua_isinteger(L, -1)) return luaL_argerror(L, idx, "fileno() did not return an integer");
    fd = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  if (fd < 0) return luaL_argerror(L, idx, "invalid file descriptor");
  return fd;
}

/* [-0, +1] pushes the registry table of watchers for one direction. */
static void push_table(lua_State *L, const char *key) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
  }
}

/* [-0, +0] removes the watcher of fd in the direction key; 1 if there was one. */
static int remove_watch(lua_State *L, int fd, const char *key) {
  FdWatch *fw;
  push_table(L, key);
  if (lua_rawgeti(L, -1, fd) != LUA_TUSERDATA) {
    lua_pop(L, 2);
    return 0;
  }
  fw = lua_touserdata(L, -1);
  fdwatch_stop(L, fw);
  lua_pop(L, 1);
  lua_pushnil(L);
  lua_rawseti(L, -2, fd);
  lua_pop(L, 1);
  return 1;
}

/* Stops the watcher of fd in the table at key, if that table exists (it
 * is never made here: this runs when any socket closes).  [-0, +0] */
static void forget(lua_State *L, int fd, const char *key) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TTABLE) {
    lua_pop(L, 1);
    remove_watch(L, fd, key);
  } else {
    lua_pop(L, 1);
  }
}

void ml__fdwatch_forget(lua_State *L, int fd) {
  if (fd < 0 || !lua_checkstack(L, 4)) return;
  forget(L, fd, &readers_key);
  forget(L, fd, &writers_key);
}

/* [-0, +0] */
static int add_watch(lua_State *L, int events, const char *key) {
  ml_State *S = ml__state(L);
  int fd = check_fd(L, 2), i, nargs = lua_gettop(L) - 3;
  FdWatch *fw;
  luaL_checktype(L, 3, LUA_TFUNCTION);
  /* Only an open fd: libev would size its fd table for any number (and
   * spun on fd 2,000,000,000), and epoll refuses a closed one later. */
  if (fcntl(fd, F_GETFD) < 0) { return ml__exc_raise_errno(L, errno, "add_reader/add_writer"); }
  remove_watch(L, fd, key);
  fw = lua_newuserdatauv(L, sizeof *fw, nargs + 1);
  memset(fw, 0, sizeof *fw);
  fw->S = S;
  fw->ref = LUA_NOREF;
  fw->nargs = nargs;
  if (ml__udata_newmt(L, ML_UT_FDWATCH, FDWATCH_MT)) {
    lua_pushcfunction(L, fdwatch_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  for (i = 0; i <= nargs; i++) {
    lua_pushvalue(L, 3 + i);
    lua_setiuservalue(L, -2, i + 1);
  }
  push_table(L, key);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, fd);
  lua_pop(L, 1);
  ev_io_init(&fw->io, fdwatch_cb, fd, events);
  fw->io.data = fw;
  fw->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ev_io_start(ml__loop(S), &fw->io);
  return 0;
}

/* loop:add_reader(fd, callback, ...) */
static int loop_add_reader(lua_State *L) { return add_watch(L, EV_READ, &readers_key); }
/* loop:add_writer(fd, callback, ...) */
static int loop_add_writer(lua_State *L) { return add_watch(L, EV_WRITE, &writers_key); }

/* loop:remove_reader(fd) -> true if a reader was registered */
static int loop_remove_reader(lua_State *L) {
  lua_pushboolean(L, remove_watch(L, check_fd(L, 2), &readers_key));
  return 1;
}

static int loop_remove_writer(lua_State *L) {
  lua_pushboolean(L, remove_watch(L, check_fd(L, 2), &writers_key));
  return 1;
}

/* ---------------------------------------------------------------- */

static const luaL_Reg loop_sync[] = {
  {"add_reader", loop_add_reader},
  {"add_writer", loop_add_writer},
  {"remove_reader", loop_remove_reader},
  {"remove_writer", loop_remove_writer},
  {NULL, NULL},
};

static const luaL_Reg loop_async[] = {
  {"sock_recv", loop_sock_recv},
  {"sock_recv_into", loop_sock_recv_into},
  {"sock_recvfrom", loop_sock_recvfrom},
  {"sock_recvfrom_into", loop_sock_recvfrom_into},
  {"sock_sendall", loop_sock_sendall},
  {"sock_sendto", loop_sock_sendto},
  {"sock_connect", loop_sock_connect},
  {"sock_accept", loop_sock_accept},
  {"sock_sendfile", ml__loop_sock_sendfile},
  {"sendfile", ml__loop_sendfile},
  {"getaddrinfo", loop_getaddrinfo},
  {"getnameinfo", loop_getnameinfo},
  {NULL, NULL},
};

int luaopen_asyncio__net(lua_State *L) {
  luaL_requiref(L, "socket", luaopen_socket, 0);
  lua_pop(L, 1);
  ml__net_push_loop_methods(L);
  ml__net_setfuncs(L, -1, "loop.", loop_sync, loop_async);
  lua_pop(L, 1);
  lua_newtable(L); /* nothing else is merged into asyncio */
  return 1;
}
