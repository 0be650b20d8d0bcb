/* socket.c: the `socket` module: BSD sockets (TCP, UDP, Unix; IPv4 and
 * IPv6) as objects, with their options and names, and the module's
 * functions.  Addresses are converted in address.c, socket.buffer is
 * buffer.c's. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include "socket/net.h"

/* ---------------------------------------------------------------- */
/* Socket objects.                                                    */

int ml__sock_open(int family, int type, int proto) {
  int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
  return fd < 0 ? -errno : fd;
}

/* The registry table of the fds this state's sockets own: fd -> true. */
static const char owned_key = 'O';

/* [-0, +0] owned[fd] = v (nil to forget). */
static void set_owned(lua_State *L, int fd, int v) {
  if (fd < 0 || !lua_checkstack(L, 3)) return;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &owned_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    if (!v) return;
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &owned_key);
  }
  if (v) lua_pushboolean(L, 1);
  else lua_pushnil(L);
  lua_rawseti(L, -2, fd);
  lua_pop(L, 1);
}

/* 1 if a socket of this state owns fd.  [-0, +0] */
static int is_owned(lua_State *L, int fd) {
  int r = 0;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &owned_key) == LUA_TTABLE)
    r = lua_rawgeti(L, -1, fd) != LUA_TNIL, lua_pop(L, 1);
  lua_pop(L, 1);
  return r;
}

/* setowned_p(fd) -> nothing, protected: owned[fd] = true. */
static int setowned_p(lua_State *L) {
  set_owned(L, (int)lua_tointeger(L, 1), 1);
  return 0;
}

void ml__sock_setfd(lua_State *L, ml_Socket *s, int fd) {
  s->fd = fd;
  if (!lua_checkstack(L, 2)) return; /* only not listed as owned */
  lua_pushcfunction(L, setowned_p);
  lua_pushinteger(L, fd);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    ml__sock_close(L, s); /* now, not when the collector finds s */
    lua_error(L);
  }
}

/* adopt_p(socket, sockaddr, length) -> address, protected: the
 * allocating half of ml__sock_adopt. */
static int adopt_p(lua_State *L) {
  ml_Socket *s = lua_touserdata(L, 1);
  set_owned(L, s->fd, 1);
  ml__sock_pushaddr(L, lua_touserdata(L, 2), (socklen_t)lua_tointeger(L, 3));
  return 1;
}

void ml__sock_adopt(lua_State *L, ml_Socket *s, int fd, const struct sockaddr *sa, socklen_t len) {
  if (!lua_checkstack(L, 4)) {
    close(fd);
    ml__exc_raise(L, "MemoryError", "accept");
  }
  s->fd = fd;
  lua_pushcfunction(L, adopt_p);
  lua_pushlightuserdata(L, s);
  lua_pushlightuserdata(L, (void *)sa);
  lua_pushinteger(L, (lua_Integer)len);
  if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
    ml__sock_close(L, s); /* now: left to the collector, its peer would wait */
    lua_error(L);
  }
}

ml_Socket *ml__sock_push(lua_State *L, int fd, int family, int type, int proto) {
  ml_Socket *s = lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  s->fd = -1;
  if (fd >= 0) ml__sock_setfd(L, s, fd);
  s->family = family;
  s->type = type;
  s->proto = proto;
  ml__udata_setmt(L, ML_UT_SOCKET);
  return s;
}

ml_Socket *ml__sock_check(lua_State *L, int idx) { return ml__udata_check(L, idx, ML_UT_SOCKET); }

ml_Socket *ml__sock_checkopen(lua_State *L, int idx) {
  ml_Socket *s = ml__udata_check(L, idx, ML_UT_SOCKET);
  if (s->fd < 0) ml__exc_raise_errno(L, EBADF, NULL);
  return s;
}

/* Lets go of the open fd of s without closing it: stops the watchers,
 * wakes the parked tasks (they find fd == -1 and raise EBADF) and returns
 * the fd. */
static int release(lua_State *L, ml_Socket *s) {
  int fd = s->fd;
  ml__fdwatch_forget(L, fd);
  set_owned(L, fd, 0);
  if (s->S != NULL) {
    if (ev_is_active(&s->rio)) ev_io_stop(ml__loop(s->S), &s->rio);
    if (ev_is_active(&s->wio)) ev_io_stop(ml__loop(s->S), &s->wio);
  }
  if (s->rwait) {
    ml__task_wake(s->rwait);
    s->rwait = NULL;
  }
  if (s->wwait) {
    ml__task_wake(s->wwait);
    s->wwait = NULL;
  }
  s->fd = -1;
  return fd;
}

int ml__sock_close(lua_State *L, ml_Socket *s) {
  if (s->fd < 0) return 0;
  return close(release(L, s)) < 0 && errno != EINTR ? -errno : 0;
}

static int sock_new(lua_State *L) {
  int family = ml__optint(L, 1, AF_INET);
  int type = ml__optint(L, 2, SOCK_STREAM);
  int proto = ml__optint(L, 3, 0);
  if (!lua_isnoneornil(L, 4)) {
    int fd = ml__checkint(L, 4);
    luaL_argcheck(L, fd >= 0, 4, "invalid file descriptor");
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return ml__exc_raise_errno(L, errno, NULL);
    /* Only a socket (Python raises ENOTSOCK too): the loop's own epoll
     * fd, eventfds and pipes are not, and closing one under the loop
     * aborted the process.  And none that a socket of ours owns already:
     * closing the wrapper would close it under its owner's watchers. */
    int v;
    socklen_t vl = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &vl) < 0)
      return ml__exc_raise_errno(L, errno == ENOTSOCK ? ENOTSOCK : errno,
                                 lua_pushfstring(L, "socket.socket(fileno=%d)", fd));
    if (is_owned(L, fd))
      return ml__exc_raise_errno(
        L, EBUSY,
        lua_pushfstring(L,
                        "socket.socket(fileno=%d): the fd belongs to another socket object of this "
                        "state; use that object (or its dup())",
                        fd));
    type = v;
    /* Take the real family from the kernel when it knows it. */
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && sl > 0) family = ss.ss_family;
    ml__sock_push(L, fd, family, type, proto);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return 1;
  }
  lua_settop(L, 0);
  ml_Socket *s = ml__sock_push(L, -1, family, type, proto);
  int fd = ml__sock_open(family, type, proto);
  if (fd < 0) return ml__exc_raise_errno(L, -fd, NULL);
  ml__sock_setfd(L, s, fd);
  return 1;
}

static int sock_socketpair(lua_State *L) {
  int family = ml__optint(L, 1, AF_UNIX);
  int type = ml__optint(L, 2, SOCK_STREAM);
  int proto = ml__optint(L, 3, 0);
  lua_settop(L, 0);
  ml_Socket *a = ml__sock_push(L, -1, family, type, proto);
  ml_Socket *b = ml__sock_push(L, -1, family, type, proto);
  int fds[2];
  if (socketpair(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto, fds) < 0)
    return ml__exc_raise_errno(L, errno, NULL);
  ml__sock_setfd(L, a, fds[0]);
  ml__sock_setfd(L, b, fds[1]);
  return 2;
}

static int sock_close(lua_State *L) {
  ml_Socket *s = ml__sock_check(L, 1);
  if (s->transport) {
    /* The transport closes it; closing the fd under it would let the
     * number be reused while its watchers still point at it. */
    return luaL_error(L, "socket is owned by a transport: close the transport");
  }
  int rc = ml__sock_close(L, s);
  if (rc < 0 && rc != -ECONNRESET) return ml__exc_raise_errno(L, -rc, NULL);
  return 0;
}

static int sock_gc(lua_State *L) {
  ml_Socket *s = ml__udata_test(L, 1, ML_UT_SOCKET);
  if (s) ml__sock_close(L, s);
  return 0;
}

/* local s <close> = ...: closes it as s:close() does, so not one that a
 * transport owns (that would close the fd under the transport, and the
 * next connection could get its number). */
static int sock_tbc(lua_State *L) {
  ml_Socket *s = ml__udata_test(L, 1, ML_UT_SOCKET);
  if (s == NULL || s->transport) return 0;
  ml__sock_close(L, s);
  return 0;
}

static int sock_detach(lua_State *L) {
  ml_Socket *s = ml__sock_check(L, 1);
  luaL_argcheck(L, !s->transport, 1, "socket is owned by a transport");
  lua_pushinteger(L, s->fd >= 0 ? release(L, s) : -1);
  return 1;
}

static int sock_fileno(lua_State *L) {
  lua_pushinteger(L, ml__sock_check(L, 1)->fd);
  return 1;
}

static int sock_bind(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len;
  ml__sock_toaddr(L, 2, s->family, 1, &ss, &len);
  if (bind(s->fd, (struct sockaddr *)&ss, len) < 0) return ml__exc_raise_errno(L, errno, NULL);
  return 0;
}

static int sock_listen(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  int backlog = ml__optint(L, 2, SOMAXCONN < 128 ? SOMAXCONN : 128);
  if (backlog < 0) backlog = 0;
  if (listen(s->fd, backlog) < 0) return ml__exc_raise_errno(L, errno, NULL);
  return 0;
}

/* [-0, +ex] connect or connect_ex of the socket at 1 to the address at 2; connect_ex pushes the errno (0 on success). */
static int do_connect(lua_State *L, int ex) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len;
  ml__sock_toaddr(L, 2, s->family, 1, &ss, &len);
  int rc;
  do rc = connect(s->fd, (struct sockaddr *)&ss, len);
  while (rc < 0 && errno == EINTR);
  int err = rc < 0 ? errno : 0;
  if (ex) {
    lua_pushinteger(L, err);
    return 1;
  }
  if (err) return ml__exc_raise_errno(L, err, NULL);
  return 0;
}
static int sock_connect(lua_State *L) { return do_connect(L, 0); }
static int sock_connect_ex(lua_State *L) { return do_connect(L, 1); }

static int sock_accept(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ml_Socket *c = ml__sock_push(L, -1, s->family, s->type, s->proto);
  int fd;
  do fd = accept4(s->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return ml__exc_raise_errno(L, errno, NULL);
  ml__sock_adopt(L, c, fd, (struct sockaddr *)&ss, len);
  return 2;
}

static int sock_recv(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  int flags = ml__optint(L, 3, 0);
  luaL_argcheck(L, n >= 0, 2, "negative buffersize in recv");
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, n ? (size_t)n : 1);
  ssize_t r;
  do r = recv(s->fd, p, (size_t)n, flags);
  while (r < 0 && errno == EINTR);
  if (r < 0) return ml__exc_raise_errno(L, errno, NULL);
  luaL_pushresultsize(&b, (size_t)r);
  return 1;
}

static int sock_recvfrom(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  int flags = ml__optint(L, 3, 0);
  luaL_argcheck(L, n >= 0, 2, "negative buffersize in recvfrom");
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, n ? (size_t)n : 1);
  ssize_t r;
  do r = recvfrom(s->fd, p, (size_t)n, flags, (struct sockaddr *)&ss, &len);
  while (r < 0 && errno == EINTR);
  if (r < 0) return ml__exc_raise_errno(L, errno, NULL);
  luaL_pushresultsize(&b, (size_t)r);
  if (len == 0) lua_pushnil(L);
  else ml__sock_pushaddr(L, (struct sockaddr *)&ss, len);
  return 2;
}

/* ---------------------------------------------------------------- */
/* Receiving into a socket.buffer.                                    */

/* Receives into the buffer at 1-based offset; returns the byte count.
 * [-0, +0] */
static ssize_t recv_into(lua_State *L, ml_Socket *s, int bi, int ni, int fi,
                         struct sockaddr_storage *ss, socklen_t *len) {
  size_t size;
  char *data = ml__buffer_check(L, bi, &size);
  lua_Integer n = luaL_optinteger(L, ni, 0);
  int flags = ml__optint(L, fi, 0);
  luaL_argcheck(L, n >= 0 && (size_t)n <= size, ni, "nbytes out of range");
  if (n == 0) n = (lua_Integer)size;
  ssize_t r;
  do r = recvfrom(s->fd, data, (size_t)n, flags, (struct sockaddr *)ss, len);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : r;
}

static int sock_recv_into(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ssize_t r = recv_into(L, s, 2, 3, 4, &ss, &len);
  if (r < 0) return ml__exc_raise_errno(L, (int)-r, NULL);
  lua_pushinteger(L, r);
  return 1;
}

static int sock_recvfrom_into(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ssize_t r = recv_into(L, s, 2, 3, 4, &ss, &len);
  if (r < 0) return ml__exc_raise_errno(L, (int)-r, NULL);
  lua_pushinteger(L, r);
  if (len == 0) lua_pushnil(L);
  else ml__sock_pushaddr(L, (struct sockaddr *)&ss, len);
  return 2;
}

/* ---------------------------------------------------------------- */
/* Sending.  MSG_NOSIGNAL everywhere: a closed peer is an EPIPE error,
 * never a signal. */

static int sock_send(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  int flags = ml__optint(L, 3, 0) | MSG_NOSIGNAL;
  ssize_t r;
  do r = send(s->fd, p, n, flags);
  while (r < 0 && errno == EINTR);
  if (r < 0) return ml__exc_raise_errno(L, errno, NULL);
  lua_pushinteger(L, r);
  return 1;
}

static int sock_sendall(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  size_t n, off = 0;
  const char *p = luaL_checklstring(L, 2, &n);
  int flags = ml__optint(L, 3, 0) | MSG_NOSIGNAL;
  while (off < n) {
    ssize_t r = send(s->fd, p + off, n - off, flags);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ml__exc_raise_errno(L, errno, NULL);
    }
    off += (size_t)r;
  }
  return 0;
}

static int sock_sendto(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  int flags = 0, ai = 3;
  if (lua_gettop(L) >= 4) { /* sendto(data, flags, address) as Python */
    flags = ml__checkint(L, 3);
    ai = 4;
  }
  struct sockaddr_storage ss;
  socklen_t len;
  ml__sock_toaddr(L, ai, s->family, 1, &ss, &len);
  ssize_t r;
  do r = sendto(s->fd, p, n, flags | MSG_NOSIGNAL, (struct sockaddr *)&ss, len);
  while (r < 0 && errno == EINTR);
  if (r < 0) return ml__exc_raise_errno(L, errno, NULL);
  lua_pushinteger(L, r);
  return 1;
}

static int sock_shutdown(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  int how = ml__checkint(L, 2);
  if (shutdown(s->fd, how) < 0) return ml__exc_raise_errno(L, errno, NULL);
  return 0;
}

/* ---------------------------------------------------------------- */
/* Options and names.                                                 */

static int sock_setsockopt(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  int level = ml__checkint(L, 2);
  int opt = ml__checkint(L, 3);
  int rc;
  if (lua_type(L, 4) == LUA_TSTRING) {
    size_t n;
    const char *v = lua_tolstring(L, 4, &n);
    rc = setsockopt(s->fd, level, opt, v, (socklen_t)n);
  } else {
    int v;
    if (lua_isboolean(L, 4)) v = lua_toboolean(L, 4);
    else v = ml__checkint(L, 4);
    rc = setsockopt(s->fd, level, opt, &v, sizeof v);
  }
  if (rc < 0) return ml__exc_raise_errno(L, errno, NULL);
  return 0;
}

static int sock_getsockopt(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  int level = ml__checkint(L, 2);
  int opt = ml__checkint(L, 3);
  if (lua_isnoneornil(L, 4)) {
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(s->fd, level, opt, &v, &len) < 0) return ml__exc_raise_errno(L, errno, NULL);
    lua_pushinteger(L, v);
    return 1;
  }
  lua_Integer n = luaL_checkinteger(L, 4);
  luaL_argcheck(L, n > 0 && n <= 1024, 4, "buflen out of range");
  char buf[1024];
  socklen_t len = (socklen_t)n;
  if (getsockopt(s->fd, level, opt, buf, &len) < 0) return ml__exc_raise_errno(L, errno, NULL);
  lua_pushlstring(L, buf, len);
  return 1;
}

/* getsockname or getpeername (which) of the socket at 1, as an address.
 * [-0, +1] */
static int push_name(lua_State *L, int (*which)(int, struct sockaddr *, socklen_t *)) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (which(s->fd, (struct sockaddr *)&ss, &len) < 0) return ml__exc_raise_errno(L, errno, NULL);
  if (len == 0) { ss.ss_family = (sa_family_t)s->family; }
  ml__sock_pushaddr(L, (struct sockaddr *)&ss, len);
  return 1;
}

static int sock_getsockname(lua_State *L) { return push_name(L, getsockname); }
static int sock_getpeername(lua_State *L) { return push_name(L, getpeername); }

static int sock_setblocking(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  luaL_checkany(L, 2);
  int on = lua_toboolean(L, 2);
  int fl = fcntl(s->fd, F_GETFL);
  if (fl < 0) return ml__exc_raise_errno(L, errno, NULL);
  fl = on ? (fl & ~O_NONBLOCK) : (fl | O_NONBLOCK);
  if (fcntl(s->fd, F_SETFL, fl) < 0) return ml__exc_raise_errno(L, errno, NULL);
  s->blocking = on;
  return 0;
}

static int sock_getblocking(lua_State *L) {
  lua_pushboolean(L, ml__sock_check(L, 1)->blocking);
  return 1;
}

/* settimeout(nil) = blocking, settimeout(0) = non-blocking: other timeouts
 * belong to asyncio (wait_for) in this runtime. */
static int sock_settimeout(lua_State *L) {
  if (lua_isnil(L, 2)) {
    lua_settop(L, 1);
    lua_pushboolean(L, 1);
    return sock_setblocking(L);
  }
  luaL_argcheck(L, luaL_checknumber(L, 2) == 0, 2,
                "only nil (blocking) or 0 (non-blocking); use asyncio.wait_for for timeouts");
  lua_settop(L, 1);
  lua_pushboolean(L, 0);
  return sock_setblocking(L);
}

static int sock_gettimeout(lua_State *L) {
  if (ml__sock_check(L, 1)->blocking) lua_pushnil(L);
  else lua_pushnumber(L, 0.0);
  return 1;
}

static const char *family_name(int f) {
  switch (f) {
  case AF_INET: return "AF_INET";
  case AF_INET6: return "AF_INET6";
  case AF_UNIX: return "AF_UNIX";
  default: return "?";
  }
}

static const char *type_name(int t) {
  switch (t) {
  case SOCK_STREAM: return "SOCK_STREAM";
  case SOCK_DGRAM: return "SOCK_DGRAM";
  case SOCK_RAW: return "SOCK_RAW";
  case SOCK_SEQPACKET: return "SOCK_SEQPACKET";
  default: return "?";
  }
}

static int sock_tostring(lua_State *L) {
  ml_Socket *s = ml__sock_check(L, 1);
  if (s->fd < 0) {
    lua_pushfstring(L, "<socket [closed] family=%s type=%s>", family_name(s->family),
                    type_name(s->type));
  } else {
    lua_pushfstring(L, "<socket fd=%d family=%s type=%s proto=%d>", s->fd, family_name(s->family),
                    type_name(s->type), s->proto);
  }
  return 1;
}

/* __index: methods first, then the attributes family, type, proto. */
static int sock_index(lua_State *L) {
  ml_Socket *s = ml__sock_check(L, 1);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  const char *k = lua_tostring(L, 2);
  if (k == NULL) return 1;
  if (strcmp(k, "family") == 0) lua_pushinteger(L, s->family);
  else if (strcmp(k, "type") == 0) lua_pushinteger(L, s->type);
  else if (strcmp(k, "proto") == 0) lua_pushinteger(L, s->proto);
  else lua_pushnil(L);
  return 1;
}

/* ---------------------------------------------------------------- */
/* Module functions.                                                  */

/* getaddrinfo(host, port, family, type, proto, flags): blocking, as
 * Python's socket.getaddrinfo; scripts use loop:getaddrinfo instead. */
static int socket_getaddrinfo(lua_State *L) {
  const char *host = luaL_optstring(L, 1, NULL);
  char portbuf[32];
  const char *port = NULL;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    snprintf(portbuf, sizeof portbuf, "%lld", (long long)luaL_checkinteger(L, 2));
    port = portbuf;
  } else {
    port = luaL_optstring(L, 2, NULL);
  }
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = ml__optint(L, 3, AF_UNSPEC);
  hints.ai_socktype = ml__optint(L, 4, 0);
  hints.ai_protocol = ml__optint(L, 5, 0);
  hints.ai_flags = ml__optint(L, 6, 0);
  if (host && host[0] == '\0') host = NULL;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) {
    ml__sock_push_gaierror(L, rc, errno);
    return lua_error(L);
  }
  ml__sock_pushaddrinfo(L, res);
  return 1;
}

static int socket_getnameinfo(lua_State *L) {
  luaL_checkany(L, 1);
  int flags = ml__optint(L, 2, 0);
  struct sockaddr_storage ss;
  socklen_t len;
  int family = AF_INET;
  if (lua_istable(L, 1)) {
    lua_geti(L, 1, 1);
    const char *h = lua_tostring(L, -1);
    if (h && strchr(h, ':')) family = AF_INET6;
    lua_pop(L, 1);
    if (lua_rawlen(L, 1) >= 3) family = AF_INET6;
  }
  if (ml__sock_toaddr(L, 1, family, 0, &ss, &len) != 0)
    return luaL_argerror(L, 1, "getnameinfo needs a numeric address");
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  int rc = getnameinfo((struct sockaddr *)&ss, len, host, sizeof host, serv, sizeof serv, flags);
  if (rc != 0) {
    ml__sock_push_gaierror(L, rc, errno);
    return lua_error(L);
  }
  lua_pushstring(L, host);
  lua_pushstring(L, serv);
  return 2;
}

static int socket_gethostname(lua_State *L) {
  char buf[256];
  if (gethostname(buf, sizeof buf) < 0) return ml__exc_raise_errno(L, errno, NULL);
  buf[sizeof buf - 1] = '\0';
  lua_pushstring(L, buf);
  return 1;
}

static int socket_inet_pton(lua_State *L) {
  int family = ml__checkint(L, 1);
  const char *s = luaL_checkstring(L, 2);
  unsigned char buf[sizeof(struct in6_addr)];
  luaL_argcheck(L, family == AF_INET || family == AF_INET6, 1, "AF_INET or AF_INET6");
  if (inet_pton(family, s, buf) != 1) return luaL_argerror(L, 2, "illegal IP address string");
  lua_pushlstring(L, (char *)buf, family == AF_INET ? 4 : 16);
  return 1;
}

static int socket_inet_ntop(lua_State *L) {
  int family = ml__checkint(L, 1);
  size_t n;
  const char *b = luaL_checklstring(L, 2, &n);
  char out[INET6_ADDRSTRLEN];
  luaL_argcheck(L, (family == AF_INET && n == 4) || (family == AF_INET6 && n == 16), 2,
                "packed address of the wrong length");
  inet_ntop(family, b, out, sizeof out);
  lua_pushstring(L, out);
  return 1;
}

static const luaL_Reg sock_methods[] = {
  {"accept", sock_accept},
  {"bind", sock_bind},
  {"close", sock_close},
  {"connect", sock_connect},
  {"connect_ex", sock_connect_ex},
  {"detach", sock_detach},
  {"fileno", sock_fileno},
  {"getblocking", sock_getblocking},
  {"getpeername", sock_getpeername},
  {"getsockname", sock_getsockname},
  {"getsockopt", sock_getsockopt},
  {"gettimeout", sock_gettimeout},
  {"listen", sock_listen},
  {"recv", sock_recv},
  {"recv_into", sock_recv_into},
  {"recvfrom", sock_recvfrom},
  {"recvfrom_into", sock_recvfrom_into},
  {"send", sock_send},
  {"sendall", sock_sendall},
  {"sendto", sock_sendto},
  {"setblocking", sock_setblocking},
  {"setsockopt", sock_setsockopt},
  {"settimeout", sock_settimeout},
  {"shutdown", sock_shutdown},
  {NULL, NULL},
};

static const luaL_Reg socket_funcs[] = {
  {"socket", sock_new},
  {"socketpair", sock_socketpair},
  {"buffer", ml__buffer_new},
  {"getaddrinfo", socket_getaddrinfo},
  {"getnameinfo", socket_getnameinfo},
  {"gethostname", socket_gethostname},
  {"inet_pton", socket_inet_pton},
  {"inet_ntop", socket_inet_ntop},
  {NULL, NULL},
};

#define C(name) \
  { #name, name }
static const struct {
  const char *name;
  int value;
} constants[] = {
  C(AF_INET),          C(AF_INET6),
  C(AF_UNIX),          C(AF_UNSPEC),
  C(SOCK_STREAM),      C(SOCK_DGRAM),
  C(SOCK_RAW),         C(SOCK_SEQPACKET),
  C(SOL_SOCKET),       C(SO_REUSEADDR),
  C(SO_REUSEPORT),     C(SO_KEEPALIVE),
  C(SO_RCVBUF),        C(SO_SNDBUF),
  C(SO_RCVLOWAT),      C(SO_SNDLOWAT),
  C(SO_ERROR),         C(SO_TYPE),
  C(SO_BROADCAST),     C(SO_LINGER),
  C(SO_OOBINLINE),     C(SO_ACCEPTCONN),
  C(SO_DOMAIN),        C(SO_PROTOCOL),
  C(IPPROTO_IP),       C(IPPROTO_IPV6),
  C(IPPROTO_TCP),      C(IPPROTO_UDP),
  C(IP_TTL),           C(IP_TOS),
  C(IP_MULTICAST_TTL), C(IP_MULTICAST_LOOP),
  C(IPV6_V6ONLY),      C(IPV6_UNICAST_HOPS),
  C(TCP_NODELAY),      C(TCP_KEEPIDLE),
  C(TCP_KEEPINTVL),    C(TCP_KEEPCNT),
  C(TCP_QUICKACK),     C(TCP_USER_TIMEOUT),
  C(SHUT_RD),          C(SHUT_WR),
  C(SHUT_RDWR),        C(MSG_PEEK),
  C(MSG_DONTWAIT),     C(MSG_WAITALL),
  C(MSG_OOB),          C(MSG_TRUNC),
  C(MSG_NOSIGNAL),     C(SOMAXCONN),
  C(AI_PASSIVE),       C(AI_CANONNAME),
  C(AI_NUMERICHOST),   C(AI_NUMERICSERV),
  C(AI_ADDRCONFIG),    C(AI_V4MAPPED),
  C(AI_ALL),           C(NI_NUMERICHOST),
  C(NI_NUMERICSERV),   C(NI_NAMEREQD),
  C(NI_DGRAM),         C(NI_NOFQDN),
  C(EAI_NONAME),       C(EAI_AGAIN),
  C(EAI_FAIL),         C(EAI_FAMILY),
  C(EAI_SERVICE),      C(INADDR_ANY),
  C(INADDR_LOOPBACK),  {NULL, 0},
};
#undef C

int luaopen_socket(lua_State *L) {
  if (ml__udata_newmt(L, ML_UT_SOCKET, ML_SOCKET)) {
    luaL_newlib(L, sock_methods);
    lua_pushcclosure(L, sock_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, sock_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, sock_tbc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, sock_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  ml__buffer_open(L);
  luaL_newlib(L, socket_funcs);
  for (int i = 0; constants[i].name; i++) {
    lua_pushinteger(L, constants[i].value);
    lua_setfield(L, -2, constants[i].name);
  }
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "has_ipv6");
  return 1;
}
