/* socketlib.c: the `socket` module: BSD sockets (TCP, UDP, Unix; IPv4 and
 * IPv6) as objects, addresses as Python-style tuples, options, and the
 * helpers the other networking modules share (net.h). */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "socket/net.h"

/* ---------------------------------------------------------------- */
/* Byte queues.                                                       */

void ml__bq_init(ml_BQ *q, lua_State *L) {
  memset(q, 0, sizeof *q);
  q->alloc = lua_getallocf(L, &q->ud);
}

size_t ml__bq_room(const ml_BQ *q) { return q->cap - q->off - q->len; }

char *ml__bq_reserve(ml_BQ *q, size_t n) {
  if (ml__bq_room(q) >= n) return q->data + q->off + q->len;
  /* Sliding the data to the front is cheaper than growing when at least
   * half the buffer is already consumed. */
  if (q->off > 0 && q->cap - q->len >= n && q->off >= q->cap / 2) {
    memmove(q->data, q->data + q->off, q->len);
    q->off = 0;
    return q->data + q->len;
  }
  size_t need = q->len + n, cap = q->cap ? q->cap : 256;
  while (cap < need) {
    if (cap > ((size_t)-1) / 2) return NULL;
    cap *= 2;
  }
  char *p;
  if (q->off == 0) {
    p = q->alloc(q->ud, q->data, q->data ? q->cap : 0, cap);
    if (p == NULL) return NULL;
  } else {
    p = q->alloc(q->ud, NULL, 0, cap);
    if (p == NULL) return NULL;
    memcpy(p, q->data + q->off, q->len);
    q->alloc(q->ud, q->data, q->cap, 0);
  }
  q->data = p;
  q->cap = cap;
  q->off = 0;
  return q->data + q->len;
}

void ml__bq_commit(ml_BQ *q, size_t n) { q->len += n; }

int ml__bq_add(ml_BQ *q, const char *s, size_t n) {
  char *p = ml__bq_reserve(q, n);
  if (p == NULL) return -ENOMEM;
  memcpy(p, s, n);
  q->len += n;
  return 0;
}

void ml__bq_consume(ml_BQ *q, size_t n) {
  if (n >= q->len) {
    q->off = q->len = 0;
  } else {
    q->off += n;
    q->len -= n;
  }
}

void ml__bq_trim(ml_BQ *q, size_t keep) {
  if (q->len == 0 && q->cap > keep) ml__bq_free(q);
}

void ml__bq_free(ml_BQ *q) {
  if (q->data) q->alloc(q->ud, q->data, q->cap, 0);
  q->data = NULL;
  q->off = q->len = q->cap = 0;
}

/* ---------------------------------------------------------------- */
/* The scratch area.                                                  */

static const char scratch_key = 0;
#define SCRATCH_SIZE (256 * 1024)

/* One area per state, made on first use and never moved, so transports
 * may keep its address. */
char *ml__net_scratch(lua_State *L, size_t want, size_t *size) {
  char *p;
  (void)want;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &scratch_key) == LUA_TUSERDATA) {
    p = lua_touserdata(L, -1);
    lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
    p = lua_newuserdatauv(L, SCRATCH_SIZE, 0);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &scratch_key);
  }
  *size = SCRATCH_SIZE;
  return p;
}

/* ---------------------------------------------------------------- */
/* Errors.                                                            */

/* Raises the OSError subclass for err; never returns. */
static int raise_errno(lua_State *L, int err) {
  ml__exc_push_errno(L, err, NULL);
  return lua_error(L);
}

/* [-0, +1] calls asyncio[cls](a, msg) if the class exists; 0 if not. */
static int push_exc2(lua_State *L, const char *cls, int a, const char *msg) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "asyncio");
  lua_remove(L, -2);
  if (lua_istable(L, -1) && lua_getfield(L, -1, cls) != LUA_TNIL) {
    lua_remove(L, -2);
    lua_pushinteger(L, a);
    lua_pushstring(L, msg);
    lua_call(L, 2, 1);
    return 1;
  }
  lua_pop(L, lua_istable(L, -2) ? 2 : 1);
  return 0;
}

void ml__sock_push_gaierror(lua_State *L, int code, int sys_errno) {
  if (code == EAI_SYSTEM) {
    ml__exc_push_errno(L, sys_errno ? sys_errno : EIO, NULL);
    return;
  }
  if (code == EAI_MEMORY) {
    ml__exc_push_errno(L, ENOMEM, NULL);
    return;
  }
  const char *msg = gai_strerror(code);
  if (!push_exc2(L, "gaierror", code, msg) && !push_exc2(L, "OSError", code, msg))
    ml__exc_push(L, "OSError", "[Errno %d] %s", code, msg);
}

/* ---------------------------------------------------------------- */
/* Addresses.                                                         */

static int is_broadcast_name(const char *h) { return strcmp(h, "<broadcast>") == 0; }

/* Blocking lookup of a host name for family; fills ss.  Raises on failure. */
static void lookup(lua_State *L, const char *host, int family, int port,
                   struct sockaddr_storage *ss, socklen_t *len) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = family;
  int rc = getaddrinfo(host, NULL, &hints, &res);
  if (rc != 0 || res == NULL) {
    int e = errno;
    if (res) freeaddrinfo(res);
    ml__sock_push_gaierror(L, rc ? rc : EAI_NONAME, e);
    lua_error(L);
  }
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  if (family == AF_INET) ((struct sockaddr_in *)ss)->sin_port = htons(port);
  else ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

static lua_Integer field_int(lua_State *L, int idx, int i, lua_Integer dflt,
                             const char *what) {
  lua_Integer v = dflt;
  int t = lua_geti(L, idx, i);
  if (t != LUA_TNIL) {
    int ok;
    v = lua_tointegerx(L, -1, &ok);
    if (!ok) {
      lua_pop(L, 1);
      return luaL_error(L, "bad address: %s must be an integer", what);
    }
  }
  lua_pop(L, 1);
  return v;
}

int ml__sock_toaddr(lua_State *L, int idx, int family, int resolve,
                    struct sockaddr_storage *ss, socklen_t *len) {
  idx = lua_absindex(L, idx);
  memset(ss, 0, sizeof *ss);
  if (family == AF_UNIX) {
    struct sockaddr_un *un = (struct sockaddr_un *)ss;
    size_t n;
    const char *path = lua_tolstring(L, idx, &n);
    if (path == NULL || lua_type(L, idx) != LUA_TSTRING)
      return luaL_argerror(L, idx, "Unix socket address must be a path string");
    if (n >= sizeof un->sun_path)
      return luaL_argerror(L, idx, "Unix socket path too long");
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n +
                       (n > 0 && path[0] == '\0' ? 0 : 1));
    return 0;
  }
  if (family != AF_INET && family != AF_INET6)
    return luaL_argerror(L, idx, "unsupported address family");
  if (!lua_istable(L, idx))
    return luaL_argerror(L, idx, family == AF_INET ? "address must be {host, port}"
                                                   : "address must be {host, port [, flowinfo, scope_id]}");
  lua_geti(L, idx, 1);
  const char *host = lua_tostring(L, -1);
  if (host == NULL || lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    return luaL_argerror(L, idx, "address host must be a string");
  }
  lua_Integer port = field_int(L, idx, 2, -1, "port");
  if (port < 0 || port > 65535) {
    lua_pop(L, 1);
    return luaL_argerror(L, idx, "address port must be an integer in 0..65535");
  }
  int named = 0;
  if (family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)port);
    *len = sizeof *in;
    if (host[0] == '\0') in->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (is_broadcast_name(host)) in->sin_addr.s_addr = htonl(INADDR_BROADCAST);
    else if (strcmp(host, "localhost") == 0) in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &in->sin_addr) != 1) named = 1;
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    lua_Integer flow = field_int(L, idx, 3, 0, "flowinfo");
    lua_Integer scope = field_int(L, idx, 4, 0, "scope_id");
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    in6->sin6_flowinfo = htonl((uint32_t)flow);
    in6->sin6_scope_id = (uint32_t)scope;
    *len = sizeof *in6;
    if (host[0] == '\0') in6->sin6_addr = in6addr_any;
    else if (strcmp(host, "localhost") == 0) in6->sin6_addr = in6addr_loopback;
    else if (strchr(host, '%') != NULL) {
      /* A zone index ("fe80::1%eth0") needs getaddrinfo, which is numeric
       * here and so never blocks. */
      struct addrinfo hints, *res = NULL;
      memset(&hints, 0, sizeof hints);
      hints.ai_family = AF_INET6;
      hints.ai_flags = AI_NUMERICHOST;
      if (getaddrinfo(host, NULL, &hints, &res) == 0 && res) {
        struct sockaddr_in6 *r = (struct sockaddr_in6 *)res->ai_addr;
        in6->sin6_addr = r->sin6_addr;
        if (scope == 0) in6->sin6_scope_id = r->sin6_scope_id;
        freeaddrinfo(res);
      } else {
        if (res) freeaddrinfo(res);
        named = 1;
      }
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1) named = 1;
  }
  if (named) {
    if (!resolve) {
      lua_pop(L, 1);
      return 1;
    }
    lookup(L, host, family, (int)port, ss, len);
  }
  lua_pop(L, 1);
  return 0;
}

void ml__sock_pushaddr(lua_State *L, const struct sockaddr *sa, socklen_t len) {
  char buf[INET6_ADDRSTRLEN + 1];
  switch (sa->sa_family) {
  case AF_INET: {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    lua_createtable(L, 2, 0);
    lua_pushstring(L, buf);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, ntohs(in->sin_port));
    lua_rawseti(L, -2, 2);
    return;
  }
  case AF_INET6: {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
    lua_createtable(L, 4, 0);
    lua_pushstring(L, buf);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, ntohs(in6->sin6_port));
    lua_rawseti(L, -2, 2);
    lua_pushinteger(L, ntohl(in6->sin6_flowinfo));
    lua_rawseti(L, -2, 3);
    lua_pushinteger(L, in6->sin6_scope_id);
    lua_rawseti(L, -2, 4);
    return;
  }
  case AF_UNIX: {
    const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
    size_t off = offsetof(struct sockaddr_un, sun_path);
    if (len <= off) {
      lua_pushliteral(L, "");
    } else if (un->sun_path[0] == '\0') {
      lua_pushlstring(L, un->sun_path, len - off);  /* abstract: keep the NUL */
    } else {
      lua_pushlstring(L, un->sun_path, strnlen(un->sun_path, len - off));
    }
    return;
  }
  default:
    lua_pushnil(L);
  }
}

/* [-1, +1] the protected half of ml__sock_pushaddrinfo. */
static int pushaddrinfo(lua_State *L) {
  const struct addrinfo *ai = lua_touserdata(L, 1);
  lua_newtable(L);
  int i = 0;
  for (; ai != NULL; ai = ai->ai_next) {
    lua_createtable(L, 5, 0);
    lua_pushinteger(L, ai->ai_family);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, ai->ai_socktype);
    lua_rawseti(L, -2, 2);
    lua_pushinteger(L, ai->ai_protocol);
    lua_rawseti(L, -2, 3);
    lua_pushstring(L, ai->ai_canonname ? ai->ai_canonname : "");
    lua_rawseti(L, -2, 4);
    ml__sock_pushaddr(L, ai->ai_addr, ai->ai_addrlen);
    lua_rawseti(L, -2, 5);
    lua_rawseti(L, -2, ++i);
  }
  lua_pushinteger(L, i);
  lua_setfield(L, -2, "n");
  return 1;
}

void ml__sock_pushaddrinfo(lua_State *L, struct addrinfo *ai) {
  lua_pushcfunction(L, pushaddrinfo);
  lua_pushlightuserdata(L, ai);
  int rc = lua_pcall(L, 1, 1, 0);
  if (ai) freeaddrinfo(ai);
  if (rc != LUA_OK) lua_error(L);
}

/* ---------------------------------------------------------------- */
/* Socket objects.                                                    */

int ml__sock_open(int family, int type, int proto) {
  int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
  return fd < 0 ? -errno : fd;
}

ml_Socket *ml__sock_push(lua_State *L, int fd, int family, int type, int proto) {
  ml_Socket *s = lua_newuserdatauv(L, sizeof *s, 1);
  memset(s, 0, sizeof *s);
  s->fd = fd;
  s->family = family;
  s->type = type;
  s->proto = proto;
  luaL_setmetatable(L, ML_SOCKET);
  return s;
}

ml_Socket *ml__sock_check(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, ML_SOCKET);
}

ml_Socket *ml__sock_checkopen(lua_State *L, int idx) {
  ml_Socket *s = luaL_checkudata(L, idx, ML_SOCKET);
  if (s->fd < 0) raise_errno(L, EBADF);
  return s;
}

int ml__sock_close(ml_Socket *s) {
  if (s->fd < 0) return 0;
  if (s->S != NULL) {
    if (ev_is_active(&s->rio)) ev_io_stop(ml__loop(s->S), &s->rio);
    if (ev_is_active(&s->wio)) ev_io_stop(ml__loop(s->S), &s->wio);
  }
  /* Parked tasks wake up, find fd == -1 and raise EBADF. */
  if (s->rwait) { ml__task_wake(s->rwait); s->rwait = NULL; }
  if (s->wwait) { ml__task_wake(s->wwait); s->wwait = NULL; }
  int fd = s->fd;
  s->fd = -1;
  return close(fd) < 0 && errno != EINTR ? -errno : 0;
}

static int sock_new(lua_State *L) {
  int family = (int)luaL_optinteger(L, 1, AF_INET);
  int type = (int)luaL_optinteger(L, 2, SOCK_STREAM);
  int proto = (int)luaL_optinteger(L, 3, 0);
  if (!lua_isnoneornil(L, 4)) {
    int fd = (int)luaL_checkinteger(L, 4);
    luaL_argcheck(L, fd >= 0, 4, "invalid file descriptor");
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return raise_errno(L, errno);
    /* Take the real family and type from the kernel when it knows them. */
    int v; socklen_t vl = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &vl) == 0) type = v;
    struct sockaddr_storage ss; socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && sl > 0) family = ss.ss_family;
    ml__sock_push(L, fd, family, type, proto);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return 1;
  }
  lua_settop(L, 0);
  ml_Socket *s = ml__sock_push(L, -1, family, type, proto);
  int fd = ml__sock_open(family, type, proto);
  if (fd < 0) return raise_errno(L, -fd);
  s->fd = fd;
  return 1;
}

static int sock_socketpair(lua_State *L) {
  int family = (int)luaL_optinteger(L, 1, AF_UNIX);
  int type = (int)luaL_optinteger(L, 2, SOCK_STREAM);
  int proto = (int)luaL_optinteger(L, 3, 0);
  lua_settop(L, 0);
  ml_Socket *a = ml__sock_push(L, -1, family, type, proto);
  ml_Socket *b = ml__sock_push(L, -1, family, type, proto);
  int fds[2];
  if (socketpair(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, proto, fds) < 0)
    return raise_errno(L, errno);
  a->fd = fds[0];
  b->fd = fds[1];
  return 2;
}

static int sock_close(lua_State *L) {
  ml_Socket *s = ml__sock_check(L, 1);
  if (s->transport) {
    /* The transport closes it; closing the fd under it would let the
     * number be reused while its watchers still point at it. */
    return luaL_error(L, "socket is owned by a transport: close the transport");
  }
  int rc = ml__sock_close(s);
  if (rc < 0 && rc != -ECONNRESET) return raise_errno(L, -rc);
  return 0;
}

static int sock_gc(lua_State *L) {
  ml_Socket *s = luaL_testudata(L, 1, ML_SOCKET);
  if (s) ml__sock_close(s);
  return 0;
}

/* local s <close> = ...: closes it as s:close() does, so not one that a
 * transport owns (that would close the fd under the transport, and the
 * next connection could get its number). */
static int sock_tbc(lua_State *L) {
  ml_Socket *s = luaL_testudata(L, 1, ML_SOCKET);
  if (s == NULL || s->transport) return 0;
  ml__sock_close(s);
  return 0;
}

static int sock_detach(lua_State *L) {
  ml_Socket *s = ml__sock_check(L, 1);
  luaL_argcheck(L, !s->transport, 1, "socket is owned by a transport");
  int fd = s->fd;
  if (fd >= 0) {
    if (s->S != NULL) {
      if (ev_is_active(&s->rio)) ev_io_stop(ml__loop(s->S), &s->rio);
      if (ev_is_active(&s->wio)) ev_io_stop(ml__loop(s->S), &s->wio);
    }
    if (s->rwait) { ml__task_wake(s->rwait); s->rwait = NULL; }
    if (s->wwait) { ml__task_wake(s->wwait); s->wwait = NULL; }
    s->fd = -1;
  }
  lua_pushinteger(L, fd);
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
  if (bind(s->fd, (struct sockaddr *)&ss, len) < 0) return raise_errno(L, errno);
  return 0;
}

static int sock_listen(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  int backlog = (int)luaL_optinteger(L, 2, SOMAXCONN < 128 ? SOMAXCONN : 128);
  if (backlog < 0) backlog = 0;
  if (listen(s->fd, backlog) < 0) return raise_errno(L, errno);
  return 0;
}

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
  if (err) return raise_errno(L, err);
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
  if (fd < 0) return raise_errno(L, errno);
  c->fd = fd;
  ml__sock_pushaddr(L, (struct sockaddr *)&ss, len);
  return 2;
}

static int sock_recv(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  int flags = (int)luaL_optinteger(L, 3, 0);
  luaL_argcheck(L, n >= 0, 2, "negative buffersize in recv");
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, n ? (size_t)n : 1);
  ssize_t r;
  do r = recv(s->fd, p, (size_t)n, flags);
  while (r < 0 && errno == EINTR);
  if (r < 0) return raise_errno(L, errno);
  luaL_pushresultsize(&b, (size_t)r);
  return 1;
}

static int sock_recvfrom(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  int flags = (int)luaL_optinteger(L, 3, 0);
  luaL_argcheck(L, n >= 0, 2, "negative buffersize in recvfrom");
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  luaL_Buffer b;
  char *p = luaL_buffinitsize(L, &b, n ? (size_t)n : 1);
  ssize_t r;
  do r = recvfrom(s->fd, p, (size_t)n, flags, (struct sockaddr *)&ss, &len);
  while (r < 0 && errno == EINTR);
  if (r < 0) return raise_errno(L, errno);
  luaL_pushresultsize(&b, (size_t)r);
  if (len == 0) lua_pushnil(L);
  else ml__sock_pushaddr(L, (struct sockaddr *)&ss, len);
  return 2;
}

/* ---------------------------------------------------------------- */
/* socket.buffer: a fixed-size mutable byte array for recv_into.      */

#define ML_BUFFER "socket.buffer"
typedef struct { size_t size; char data[]; } Buffer;

static Buffer *checkbuffer(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, ML_BUFFER);
}

char *ml__buffer_check(lua_State *L, int idx, size_t *size) {
  Buffer *b = checkbuffer(L, idx);
  *size = b->size;
  return b->data;
}

static int buffer_new(lua_State *L) {
  size_t n = 0;
  const char *init = NULL;
  if (lua_type(L, 1) == LUA_TSTRING) init = lua_tolstring(L, 1, &n);
  else {
    lua_Integer k = luaL_checkinteger(L, 1);
    luaL_argcheck(L, k >= 0, 1, "negative size");
    n = (size_t)k;
  }
  Buffer *b = lua_newuserdatauv(L, sizeof *b + n, 0);
  b->size = n;
  if (init) memcpy(b->data, init, n);
  else memset(b->data, 0, n);
  luaL_setmetatable(L, ML_BUFFER);
  return 1;
}

static int buffer_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)checkbuffer(L, 1)->size);
  return 1;
}

/* Normalises a string.sub-style range [i, j] for size; returns the length. */
static size_t subrange(lua_State *L, int ii, int ij, size_t size, size_t *start) {
  lua_Integer i = luaL_optinteger(L, ii, 1), j = luaL_optinteger(L, ij, -1);
  lua_Integer n = (lua_Integer)size;
  if (i < 0) i = i + n + 1 > 0 ? i + n + 1 : 1;
  else if (i == 0) i = 1;
  if (j < 0) j = j + n + 1;
  else if (j > n) j = n;
  if (i > j) { *start = 0; return 0; }
  *start = (size_t)(i - 1);
  return (size_t)(j - i + 1);
}

static int buffer_tostring(lua_State *L) {
  Buffer *b = checkbuffer(L, 1);
  size_t start, n = subrange(L, 2, 3, b->size, &start);
  lua_pushlstring(L, b->data + start, n);
  return 1;
}

/* buf:set(offset, s): copies s into the buffer at 1-based offset. */
static int buffer_set(lua_State *L) {
  Buffer *b = checkbuffer(L, 1);
  lua_Integer off = luaL_checkinteger(L, 2);
  size_t n;
  const char *s = luaL_checklstring(L, 3, &n);
  luaL_argcheck(L, off >= 1 && (size_t)off - 1 + n <= b->size, 2, "out of range");
  memcpy(b->data + off - 1, s, n);
  return 0;
}

static int buffer_tostr_meta(lua_State *L) {
  Buffer *b = checkbuffer(L, 1);
  lua_pushfstring(L, "socket.buffer(%d)", (int)b->size);
  return 1;
}

/* Receives into the buffer at 1-based offset; returns the byte count. */
static ssize_t recv_into(lua_State *L, ml_Socket *s, int bi, int ni, int fi,
                         struct sockaddr_storage *ss, socklen_t *len) {
  Buffer *b = checkbuffer(L, bi);
  lua_Integer n = luaL_optinteger(L, ni, 0);
  int flags = (int)luaL_optinteger(L, fi, 0);
  luaL_argcheck(L, n >= 0 && (size_t)n <= b->size, ni, "nbytes out of range");
  if (n == 0) n = (lua_Integer)b->size;
  ssize_t r;
  do r = recvfrom(s->fd, b->data, (size_t)n, flags, (struct sockaddr *)ss, len);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : r;
}

static int sock_recv_into(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ssize_t r = recv_into(L, s, 2, 3, 4, &ss, &len);
  if (r < 0) return raise_errno(L, (int)-r);
  lua_pushinteger(L, r);
  return 1;
}

static int sock_recvfrom_into(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ssize_t r = recv_into(L, s, 2, 3, 4, &ss, &len);
  if (r < 0) return raise_errno(L, (int)-r);
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
  int flags = (int)luaL_optinteger(L, 3, 0) | MSG_NOSIGNAL;
  ssize_t r;
  do r = send(s->fd, p, n, flags);
  while (r < 0 && errno == EINTR);
  if (r < 0) return raise_errno(L, errno);
  lua_pushinteger(L, r);
  return 1;
}

static int sock_sendall(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  size_t n, off = 0;
  const char *p = luaL_checklstring(L, 2, &n);
  int flags = (int)luaL_optinteger(L, 3, 0) | MSG_NOSIGNAL;
  while (off < n) {
    ssize_t r = send(s->fd, p + off, n - off, flags);
    if (r < 0) {
      if (errno == EINTR) continue;
      return raise_errno(L, errno);
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
  if (lua_gettop(L) >= 4) {  /* sendto(data, flags, address) as Python */
    flags = (int)luaL_checkinteger(L, 3);
    ai = 4;
  }
  struct sockaddr_storage ss;
  socklen_t len;
  ml__sock_toaddr(L, ai, s->family, 1, &ss, &len);
  ssize_t r;
  do r = sendto(s->fd, p, n, flags | MSG_NOSIGNAL, (struct sockaddr *)&ss, len);
  while (r < 0 && errno == EINTR);
  if (r < 0) return raise_errno(L, errno);
  lua_pushinteger(L, r);
  return 1;
}

static int sock_shutdown(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  int how = (int)luaL_checkinteger(L, 2);
  if (shutdown(s->fd, how) < 0) return raise_errno(L, errno);
  return 0;
}

/* ---------------------------------------------------------------- */
/* Options and names.                                                 */

static int sock_setsockopt(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  int level = (int)luaL_checkinteger(L, 2);
  int opt = (int)luaL_checkinteger(L, 3);
  int rc;
  if (lua_type(L, 4) == LUA_TSTRING) {
    size_t n;
    const char *v = lua_tolstring(L, 4, &n);
    rc = setsockopt(s->fd, level, opt, v, (socklen_t)n);
  } else {
    int v;
    if (lua_isboolean(L, 4)) v = lua_toboolean(L, 4);
    else v = (int)luaL_checkinteger(L, 4);
    rc = setsockopt(s->fd, level, opt, &v, sizeof v);
  }
  if (rc < 0) return raise_errno(L, errno);
  return 0;
}

static int sock_getsockopt(lua_State *L) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  int level = (int)luaL_checkinteger(L, 2);
  int opt = (int)luaL_checkinteger(L, 3);
  if (lua_isnoneornil(L, 4)) {
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(s->fd, level, opt, &v, &len) < 0) return raise_errno(L, errno);
    lua_pushinteger(L, v);
    return 1;
  }
  lua_Integer n = luaL_checkinteger(L, 4);
  luaL_argcheck(L, n > 0 && n <= 1024, 4, "buflen out of range");
  char buf[1024];
  socklen_t len = (socklen_t)n;
  if (getsockopt(s->fd, level, opt, buf, &len) < 0) return raise_errno(L, errno);
  lua_pushlstring(L, buf, len);
  return 1;
}

/* getsockname or getpeername (which) of the socket at 1, as an address. */
static int push_name(lua_State *L, int (*which)(int, struct sockaddr *, socklen_t *)) {
  ml_Socket *s = ml__sock_checkopen(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (which(s->fd, (struct sockaddr *)&ss, &len) < 0) return raise_errno(L, errno);
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
  if (fl < 0) return raise_errno(L, errno);
  fl = on ? (fl & ~O_NONBLOCK) : (fl | O_NONBLOCK);
  if (fcntl(s->fd, F_SETFL, fl) < 0) return raise_errno(L, errno);
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
    lua_pushfstring(L, "<socket fd=%d family=%s type=%s proto=%d>", s->fd,
                    family_name(s->family), type_name(s->type), s->proto);
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
  hints.ai_family = (int)luaL_optinteger(L, 3, AF_UNSPEC);
  hints.ai_socktype = (int)luaL_optinteger(L, 4, 0);
  hints.ai_protocol = (int)luaL_optinteger(L, 5, 0);
  hints.ai_flags = (int)luaL_optinteger(L, 6, 0);
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
  int flags = (int)luaL_optinteger(L, 2, 0);
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
  if (gethostname(buf, sizeof buf) < 0) return raise_errno(L, errno);
  buf[sizeof buf - 1] = '\0';
  lua_pushstring(L, buf);
  return 1;
}

static int socket_inet_pton(lua_State *L) {
  int family = (int)luaL_checkinteger(L, 1);
  const char *s = luaL_checkstring(L, 2);
  unsigned char buf[sizeof(struct in6_addr)];
  luaL_argcheck(L, family == AF_INET || family == AF_INET6, 1, "AF_INET or AF_INET6");
  if (inet_pton(family, s, buf) != 1)
    return luaL_argerror(L, 2, "illegal IP address string");
  lua_pushlstring(L, (char *)buf, family == AF_INET ? 4 : 16);
  return 1;
}

static int socket_inet_ntop(lua_State *L) {
  int family = (int)luaL_checkinteger(L, 1);
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
  {NULL, NULL}
};

static const luaL_Reg buffer_methods[] = {
  {"len", buffer_len},
  {"tostring", buffer_tostring},
  {"sub", buffer_tostring},
  {"set", buffer_set},
  {NULL, NULL}
};

static const luaL_Reg socket_funcs[] = {
  {"socket", sock_new},
  {"socketpair", sock_socketpair},
  {"buffer", buffer_new},
  {"getaddrinfo", socket_getaddrinfo},
  {"getnameinfo", socket_getnameinfo},
  {"gethostname", socket_gethostname},
  {"inet_pton", socket_inet_pton},
  {"inet_ntop", socket_inet_ntop},
  {NULL, NULL}
};

#define C(name) {#name, name}
static const struct { const char *name; int value; } constants[] = {
  C(AF_INET), C(AF_INET6), C(AF_UNIX), C(AF_UNSPEC),
  C(SOCK_STREAM), C(SOCK_DGRAM), C(SOCK_RAW), C(SOCK_SEQPACKET),
  C(SOL_SOCKET), C(SO_REUSEADDR), C(SO_REUSEPORT), C(SO_KEEPALIVE),
  C(SO_RCVBUF), C(SO_SNDBUF), C(SO_RCVLOWAT), C(SO_SNDLOWAT), C(SO_ERROR),
  C(SO_TYPE), C(SO_BROADCAST), C(SO_LINGER), C(SO_OOBINLINE),
  C(SO_ACCEPTCONN), C(SO_DOMAIN), C(SO_PROTOCOL),
  C(IPPROTO_IP), C(IPPROTO_IPV6), C(IPPROTO_TCP), C(IPPROTO_UDP),
  C(IP_TTL), C(IP_TOS), C(IP_MULTICAST_TTL), C(IP_MULTICAST_LOOP),
  C(IPV6_V6ONLY), C(IPV6_UNICAST_HOPS),
  C(TCP_NODELAY), C(TCP_KEEPIDLE), C(TCP_KEEPINTVL), C(TCP_KEEPCNT),
  C(TCP_QUICKACK), C(TCP_USER_TIMEOUT),
  C(SHUT_RD), C(SHUT_WR), C(SHUT_RDWR),
  C(MSG_PEEK), C(MSG_DONTWAIT), C(MSG_WAITALL), C(MSG_OOB), C(MSG_TRUNC),
  C(MSG_NOSIGNAL),
  C(SOMAXCONN),
  C(AI_PASSIVE), C(AI_CANONNAME), C(AI_NUMERICHOST), C(AI_NUMERICSERV),
  C(AI_ADDRCONFIG), C(AI_V4MAPPED), C(AI_ALL),
  C(NI_NUMERICHOST), C(NI_NUMERICSERV), C(NI_NAMEREQD), C(NI_DGRAM), C(NI_NOFQDN),
  C(EAI_NONAME), C(EAI_AGAIN), C(EAI_FAIL), C(EAI_FAMILY), C(EAI_SERVICE),
  C(INADDR_ANY), C(INADDR_LOOPBACK),
  {NULL, 0}
};
#undef C

int luaopen_socket(lua_State *L) {
  if (luaL_newmetatable(L, ML_SOCKET)) {
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
  if (luaL_newmetatable(L, ML_BUFFER)) {
    luaL_newlib(L, buffer_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, buffer_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, buffer_tostr_meta);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, socket_funcs);
  for (int i = 0; constants[i].name; i++) {
    lua_pushinteger(L, constants[i].value);
    lua_setfield(L, -2, constants[i].name);
  }
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "has_ipv6");
  return 1;
}

/* ---------------------------------------------------------------- */
/* Registration helpers shared by the networking modules.             */

void ml__net_setfuncs(lua_State *L, int idx, const char *prefix,
                      const luaL_Reg *sync, const luaL_Reg *async) {
  idx = lua_absindex(L, idx);
  for (; sync && sync->name; sync++) {
    lua_pushcfunction(L, sync->func);
    lua_setfield(L, idx, sync->name);
  }
  for (; async && async->name; async++) {
    lua_pushfstring(L, "%s%s", prefix, async->name);
    ml__push_async(L, lua_tostring(L, -1), async->func);
    lua_setfield(L, idx, async->name);
    lua_pop(L, 1);
  }
}

void ml__net_push_loop_methods(lua_State *L) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "asyncio.core");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "Loop");
  lua_remove(L, -2);
  if (!lua_istable(L, -1)) luaL_error(L, "asyncio.core has no Loop methods table");
}
