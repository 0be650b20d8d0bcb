/* _transport.c: asyncio._transport, the Lua face of transports
 * (asyncio's callback-style fast path): the stream transport over
 * connected TCP and Unix sockets, the datagram transport, pipe transports,
 * and their methods.  The engine under them (reading, the write queue,
 * protocol dispatch) is conn.c; the listener that accepts connections for
 * servers is _server.c.  See socket/net.h for the ml_Conn object and its
 * rules. */
#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include "socket/net.h"

/* Checks that fd at idx is an open pipe, socket or character device (what
 * epoll can watch; asyncio's rule) and makes it non-blocking.
 * [-0, +0] returns the fd; raises OSError(EBADF) or ValueError. */
static int check_pipe_fd(lua_State *L, int idx) {
  struct stat st;
  lua_Integer fd = luaL_checkinteger(L, idx);
  if (fd < 0 || fd > 0x7fffffff || fstat((int)fd, &st) < 0) {
    ml__exc_push_errno(L, EBADF, NULL);
    return lua_error(L);
  }
  if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode))
    return ml__exc_raise(L, "ValueError",
                         "Pipe transport is only for pipes, sockets and character devices");
  return (int)fd;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)) return -errno;
  return 0;
}

/* _pipe(fd, protocol, mode): a protocol transport over the pipe fd, which
 * it owns from then on; mode "r" reads (data_received, eof_received),
 * "w" writes.  connection_made(transport) is called (errors go to the
 * exception handler).  _pipe(fd, protocol, mode) -> transport */
static int l_pipe(lua_State *L) {
  int fd = check_pipe_fd(L, 1);
  const char *mode = luaL_checkstring(L, 3);
  int pipe = strcmp(mode, "r") == 0 ? ML_PIPE_READ : strcmp(mode, "w") == 0 ? ML_PIPE_WRITE : 0;
  ml_Conn *c;
  int err;
  luaL_argcheck(L, pipe != 0, 3, "'r' or 'w' expected");
  luaL_checkany(L, 2);
  lua_settop(L, 3);
  c = ml__conn_new(L, 0, ML_CONN_PROTO);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 4, XUV_PROTO);
  ml__conn_note_protocol(L, c, 2);
  ml__conn_anchor(L, 4, c);
  if ((err = set_nonblock(fd)) < 0) {
    ml__conn_close(c, 1);
    ml__exc_push_errno(L, -err, NULL);
    return lua_error(L);
  }
  c->fd = fd; /* owned from here on; watching starts after connection_made */
  c->pipe = (unsigned char)pipe;
  lua_getiuservalue(L, 4, XUV_PROTO);
  if (lua_getfield(L, -1, "connection_made") != LUA_TNIL) {
    lua_insert(L, -2);
    lua_pushvalue(L, 4);
    ml__callback(L, 2, "Exception in connection_made");
  } else {
    lua_pop(L, 2);
  }
  if (!c->closing) ml__conn_set_pipe(c, fd, pipe);
  lua_settop(L, 4);
  return 1;
}

/* [-0, +0] the transport at idx, or a type error. */
/* _transport(sock, protocol, onlost) / _datagram(...): makes the
 * transport, calls protocol:connection_made(transport) (errors go to the
 * exception handler) and starts reading.
 * [-?, +?]: sets the stack to [sock, protocol, onlost, transport] and
 * returns 1, the transport. */
static int make_proto_transport(lua_State *L, int kind) {
  ml_Conn *c;
  luaL_checkany(L, 2);
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  c = ml__conn_new(L, 1, kind);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 4, XUV_PROTO);
  if (kind == ML_CONN_PROTO) ml__conn_note_protocol(L, c, 2);
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, 4, XUV_ONLOST);
  lua_getiuservalue(L, 4, XUV_PROTO);
  if (lua_getfield(L, -1, "connection_made") != LUA_TNIL) {
    lua_insert(L, -2);
    lua_pushvalue(L, 4);
    ml__callback(L, 2, "Exception in connection_made");
  } else {
    lua_pop(L, 2);
  }
  ml__conn_update_reading(c);
  lua_settop(L, 4);
  return 1;
}

/* _transport(sock, protocol, onlost) -> transport */
static int l_transport(lua_State *L) { return make_proto_transport(L, ML_CONN_PROTO); }
/* _datagram(sock, protocol, onlost) -> datagram transport */
static int l_datagram(lua_State *L) { return make_proto_transport(L, ML_CONN_DGRAM); }

/* _unlink_socket(path, [dev, ino]): removes path if it is a Unix socket
 * (a stale one left by an earlier server) and, given dev and ino (from
 * _socket_ident), the very one: a server removes its own socket file,
 * never one another process bound at the path after it (Python 3.13).
 * Returns true if it removed something.
 * _unlink_socket(path, [dev, ino]) -> boolean */
static int l_unlink_socket(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  int removed = 0;
  if (path[0] != '\0' && stat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
    if (lua_isnoneornil(L, 2) || ((lua_Integer)st.st_dev == luaL_checkinteger(L, 2) &&
                                  (lua_Integer)st.st_ino == luaL_checkinteger(L, 3)))
      removed = unlink(path) == 0;
  }
  lua_pushboolean(L, removed);
  return 1;
}

/* _socket_ident(path) -> dev, ino of the Unix socket file at path, or
 * nil if there is none. */
static int l_socket_ident(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (path[0] == '\0' || stat(path, &st) != 0 || !S_ISSOCK(st.st_mode)) return 0;
  lua_pushinteger(L, (lua_Integer)st.st_dev);
  lua_pushinteger(L, (lua_Integer)st.st_ino);
  return 2;
}

/* ---------------------------------------------------------------- */
/* Transport methods.                                                 */

/* [-0, +0] the stream or protocol transport at 1, or a type error. */
static inline ml_Conn *check_stream_t(lua_State *L) {
  ml_Conn *c = ml__conn_test(L, 1);
  if (c == NULL || c->kind == ML_CONN_DGRAM) luaL_typeerror(L, 1, ML_TRANSPORT);
  return c;
}

/* t:write(data | buffer [, i [, j]]) -> nothing */
static int t_write(lua_State *L) {
  ml_Conn *c = check_stream_t(L);
  size_t n;
  const char *p;
  /* A string, the common case, is tested first: it is not a buffer. */
  if (lua_type(L, 2) == LUA_TSTRING) {
    p = lua_tolstring(L, 2, &n);
  } else if ((p = ml__buffer_test(L, 2, &n)) != NULL) {
    /* A socket.buffer (a BufferedProtocol's), bytes i..j as buf:sub(i, j)
     * counts them: written without making a string. */
    lua_Integer len = (lua_Integer)n, i = luaL_optinteger(L, 3, 1), j = luaL_optinteger(L, 4, -1);
    if (i < 0) i = i + len + 1 > 0 ? i + len + 1 : 1;
    else if (i == 0) i = 1;
    if (j < 0) j = j + len + 1;
    else if (j > len) j = len;
    if (i > j) return 0;
    p += i - 1;
    n = (size_t)(j - i + 1);
  } else {
    p = luaL_checklstring(L, 2, &n);
  }
  if (c->eof_req) return ml__exc_raise(L, "RuntimeError", "Cannot call write() after write_eof()");
  if (c->sendfile == ML_SENDFILE_NATIVE) return ml__exc_raise(L, "RuntimeError", ML_SENDFILE_BUSY);
  if (ml__conn_write(L, c, p, n) < 0) return ml__exc_raise(L, "MemoryError", "write buffer");
  return 0;
}

/* [-0, +0] writes each string of the list at 2; returns 0 (the
 * results of t:writelines(list) and w:writelines(list): nothing). */
int ml__conn_writelines(lua_State *L, ml_Conn *c) {
  luaL_checktype(L, 2, LUA_TTABLE);
  if (c->eof_req) return ml__exc_raise(L, "RuntimeError", "Cannot call write() after write_eof()");
  if (c->sendfile == ML_SENDFILE_NATIVE) return ml__exc_raise(L, "RuntimeError", ML_SENDFILE_BUSY);
  lua_Integer n = luaL_len(L, 2);
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_geti(L, 2, i);
    const char *p = lua_tolstring(L, -1, &len);
    if (p == NULL || lua_type(L, -1) != LUA_TSTRING)
      return luaL_argerror(L, 2, "list of strings expected");
    if (ml__conn_write(L, c, p, len) < 0) return ml__exc_raise(L, "MemoryError", "write buffer");
    lua_pop(L, 1);
  }
  return 0;
}

/* t:writelines(list) -> nothing */
static int t_writelines(lua_State *L) { return ml__conn_writelines(L, check_stream_t(L)); }

/* t:write_eof() -> nothing */
static int t_write_eof(lua_State *L) {
  ml_Conn *c = check_stream_t(L);
  if (c->layer) return ml__exc_raise(L, "NotImplementedError", "SSL doesn't support half-closes");
  ml__conn_write_eof(c);
  return 0;
}

/* t:can_write_eof() -> boolean */
static int t_can_write_eof(lua_State *L) {
  ml_Conn *c = check_stream_t(L);
  lua_pushboolean(L, (c->is_sock || c->pipe == ML_PIPE_WRITE || c->fd < 0) && c->layer == NULL);
  return 1;
}

/* t:close() -> nothing */
static int t_close(lua_State *L) {
  ml__conn_close(ml__conn_check(L, 1), 0);
  return 0;
}

/* t:abort() -> nothing */
static int t_abort(lua_State *L) {
  ml__conn_close(ml__conn_check(L, 1), 1);
  return 0;
}

/* t:is_closing() -> boolean */
static int t_is_closing(lua_State *L) {
  lua_pushboolean(L, ml__conn_check(L, 1)->closing);
  return 1;
}

/* [-0, +1] pushes the extra info named at nameidx of the transport at
 * cidx (the layer's first), else the default at nameidx + 1; returns 1. */
int ml__conn_extra(lua_State *L, int cidx, ml_Conn *c, int nameidx) {
  const char *name = luaL_checkstring(L, nameidx);
  if (c->layer && c->layer->extra(L, cidx, c, name)) return 1;
  if ((strcmp(name, "peername") == 0 && c->plen > 0) ||
      (strcmp(name, "sockname") == 0 && c->llen > 0)) {
    socklen_t len;
    const struct sockaddr *a = ml__conn_addr(L, cidx, c, name[0] == 'p', &len);
    ml__sock_pushaddr(L, a, len);
  } else if (strcmp(name, "socket") == 0 && c->sock) {
    lua_getiuservalue(L, cidx, XUV_SOCK);
  } else if (strcmp(name, "transport") == 0) {
    lua_pushvalue(L, cidx);
  } else {
    lua_pushvalue(L, nameidx + 1);
  }
  return 1;
}

/* t:get_extra_info(name, default) -> value */
static int t_get_extra_info(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  lua_settop(L, 3);
  return ml__conn_extra(L, 1, c, 2);
}

/* t:pause_reading() -> nothing */
static int t_pause_reading(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  if (c->closing || c->paused) return 0;
  c->paused = 1;
  ml__conn_update_reading(c);
  return 0;
}

/* t:resume_reading() -> nothing */
static int t_resume_reading(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  if (c->closing || !c->paused) return 0;
  c->paused = 0;
  ml__conn_update_reading(c);
  ml__sched_poll_soon(c->S);
  return 0;
}

/* t:is_reading() -> boolean */
static int t_is_reading(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  lua_pushboolean(L, !c->closing && !c->paused);
  return 1;
}

/* set_write_buffer_limits(high, low) or ({high=, low=}): asyncio's
 * defaults (64 KiB, high/4) when omitted.  -> nothing */
static int t_set_write_buffer_limits(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  lua_Integer high, low;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "high");
    lua_getfield(L, 2, "low");
    lua_replace(L, 3);
    lua_replace(L, 2);
  }
  /* Range-checked first: 4 * low must not overflow (it did, under UBSan,
   * for set_write_buffer_limits(nil, math.mininteger)). */
  if (lua_isnoneornil(L, 2)) {
    high = lua_isnoneornil(L, 3) ? ML_CONN_HIGH_DEFAULT
                                 : 4 * ml__checkrange(L, 3, 0, LUA_MAXINTEGER / 4);
  } else {
    high = ml__checkrange(L, 2, 0, LUA_MAXINTEGER);
  }
  low = lua_isnoneornil(L, 3) ? high / 4 : ml__checkrange(L, 3, 0, LUA_MAXINTEGER);
  if (!(high >= low && low >= 0))
    return ml__exc_raise(L, "ValueError", "high (%I) must be >= low (%I) must be >= 0",
                         (LUAI_UACINT)high, (LUAI_UACINT)low);
  ml__conn_set_limits(L, c, (size_t)high, (size_t)low);
  return 0;
}

/* t:get_write_buffer_limits() -> low, high */
static int t_get_write_buffer_limits(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  lua_pushinteger(L, (lua_Integer)c->low);
  lua_pushinteger(L, (lua_Integer)c->high);
  return 2;
}

/* t:get_write_buffer_size() -> integer */
static int t_get_write_buffer_size(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)ml__conn_queued(ml__conn_check(L, 1)));
  return 1;
}

/* t:get_protocol() -> protocol */
static int t_get_protocol(lua_State *L) {
  ml__conn_check(L, 1);
  lua_getiuservalue(L, 1, XUV_PROTO);
  return 1;
}

/* t:set_protocol(protocol) -> nothing */
static int t_set_protocol(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  c->data_fn = NULL; /* the new protocol takes strings unless it says otherwise */
  c->data_ud = NULL;
  if (c->kind == ML_CONN_PROTO) ml__conn_note_protocol(L, c, 2);
  lua_setiuservalue(L, 1, XUV_PROTO);
  return 0;
}

/* __tostring(t) -> string */
static int t_tostring(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  const char *st = c->lost ? "closed" : c->closing ? "closing" : "open";
  lua_pushfstring(L, "<%s fd=%d %s>", c->kind == ML_CONN_DGRAM ? "DatagramTransport" : "Transport",
                  c->fd, st);
  return 1;
}

/* __gc(t) -> nothing: stops the watchers, frees the buffers. */
static int conn_gc(lua_State *L) {
  ml_Conn *c = ml__conn_test(L, 1);
  if (c != NULL) ml__conn_free(c); /* else a script calling __gc on something else */
  return 0;
}

/* ---- datagram transport ---- */

/* [-0, +0] the datagram transport at 1, or a type error. */
static ml_Conn *check_dgram(lua_State *L) {
  ml_Conn *c = ml__conn_test(L, 1);
  if (c == NULL || c->kind != ML_CONN_DGRAM) luaL_typeerror(L, 1, ML_DGRAM_TRANSPORT);
  return c;
}

/* t:sendto(data [, addr]) -> nothing */
static int d_sendto(lua_State *L) {
  ml_Conn *c = check_dgram(L);
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  struct sockaddr_storage ss;
  socklen_t alen = 0;
  if (!lua_isnoneornil(L, 3)) {
    int family = c->sock ? c->sock->family : AF_INET;
    if (ml__sock_toaddr(L, 3, family, 0, &ss, &alen) != 0)
      return luaL_argerror(L, 3, "address must be numeric (resolve names with loop:getaddrinfo)");
    if (c->connected) {
      socklen_t plen;
      const struct sockaddr *peer = ml__conn_addr(L, 1, c, 1, &plen);
      if (alen != plen || memcmp(&ss, peer, alen) != 0)
        return ml__exc_raise(L, "ValueError", "Invalid address: must be nil or the remote address");
      alen = 0; /* connected: send() to the default peer */
    }
  } else if (!c->connected) {
    return ml__exc_raise(L, "ValueError",
                         "an address is needed: the transport has no remote address");
  }
  if (ml__conn_sendto(L, c, p, n, alen ? &ss : NULL, alen) < 0)
    return ml__exc_raise(L, "MemoryError", "datagram queue");
  return 0;
}

/* ---------------------------------------------------------------- */

static const luaL_Reg transport_methods[] = {
  {"write", t_write},
  {"writelines", t_writelines},
  {"write_eof", t_write_eof},
  {"can_write_eof", t_can_write_eof},
  {"close", t_close},
  {"abort", t_abort},
  {"is_closing", t_is_closing},
  {"get_extra_info", t_get_extra_info},
  {"pause_reading", t_pause_reading},
  {"resume_reading", t_resume_reading},
  {"is_reading", t_is_reading},
  {"set_write_buffer_limits", t_set_write_buffer_limits},
  {"get_write_buffer_limits", t_get_write_buffer_limits},
  {"get_write_buffer_size", t_get_write_buffer_size},
  {"get_protocol", t_get_protocol},
  {"set_protocol", t_set_protocol},
  {NULL, NULL},
};

static const luaL_Reg dgram_methods[] = {
  {"sendto", d_sendto},
  {"close", t_close},
  {"abort", t_abort},
  {"is_closing", t_is_closing},
  {"get_extra_info", t_get_extra_info},
  {"pause_reading", t_pause_reading},
  {"resume_reading", t_resume_reading},
  {"is_reading", t_is_reading},
  {"set_write_buffer_limits", t_set_write_buffer_limits},
  {"get_write_buffer_limits", t_get_write_buffer_limits},
  {"get_write_buffer_size", t_get_write_buffer_size},
  {"get_protocol", t_get_protocol},
  {"set_protocol", t_set_protocol},
  {NULL, NULL},
};


static const luaL_Reg module_funcs[] = {
  {"_transport", l_transport},       {"_datagram", l_datagram}, {"_unlink_socket", l_unlink_socket},
  {"_socket_ident", l_socket_ident}, {"_pipe", l_pipe},         {NULL, NULL},
};

/* [-0, +1] pushes the module table. */
int luaopen_asyncio__transport(lua_State *L) {
  luaL_requiref(L, "socket", luaopen_socket, 0);
  lua_pop(L, 1);
  ml__class_new(L, ML_TRANSPORT, transport_methods, conn_gc, t_tostring);
  ml__class_new(L, ML_DGRAM_TRANSPORT, dgram_methods, conn_gc, t_tostring);
  luaL_newlib(L, module_funcs);
  return 1;
}
