/* buffered.c: a BufferedProtocol's reads (asyncio's BufferedProtocol):
 * the bytes go into the socket.buffer its get_buffer returns, with one
 * recv(2) straight into it for a plain socket or copied from a layer's
 * (decrypted) bytes, and buffer_updated(n) follows; no string is made.
 * The connection engine (conn.c) calls ml__conn_buffered instead of
 * data_received when ml__conn_note_protocol found get_buffer on the
 * protocol. */
#include <errno.h>
#include <string.h>
#include "socket/net.h"

/* [-0, +2] protocol:get_buffer(sizehint) on the protocol at pidx, as a
 * BufferedProtocol's: pushes the buffer and its offset, and returns where
 * the bytes go and how many fit (*room > 0).  get_buffer returns a
 * socket.buffer and, optionally, the 1-based position the bytes go at. */
static char *get_buffer(lua_State *L, int pidx, lua_Integer sizehint, size_t *room) {
  size_t size;
  lua_Integer pos = 1;
  char *buf;
  lua_getfield(L, pidx, "get_buffer");
  lua_pushvalue(L, pidx);
  lua_pushinteger(L, sizehint);
  lua_call(L, 2, 2);
  if ((buf = ml__buffer_test(L, -2, &size)) == NULL)
    ml__exc_raise(L, "TypeError", "get_buffer() must return a socket.buffer, got %s",
                  luaL_typename(L, -2));
  if (!lua_isnil(L, -1)) {
    int ok;
    pos = lua_tointegerx(L, -1, &ok);
    if (!ok || pos < 1 || (size_t)pos > size + 1)
      ml__exc_raise(L, "ValueError", "get_buffer() position out of range 1..%d", (int)size + 1);
  }
  *room = size - (size_t)(pos - 1);
  if (*room == 0) ml__exc_raise(L, "RuntimeError", "get_buffer() returned an empty buffer");
  return buf + pos - 1;
}

/* [-0, +0] protocol:buffer_updated(nbytes) on the protocol at pidx. */
static void buffer_updated(lua_State *L, int pidx, size_t n) {
  lua_getfield(L, pidx, "buffer_updated");
  lua_pushvalue(L, pidx);
  lua_pushinteger(L, (lua_Integer)n);
  lua_call(L, 2, 0);
}

/* Protected: a BufferedProtocol's read.  Stack: 1 the transport (light),
 * 2 n, 3 p.  n < 0: one recv(2) from the socket straight into the buffer
 * get_buffer(-1) returned, no string made; then buffer_updated(nbytes).
 * n >= 0: the n bytes at p (a layer's, decrypted) are copied into as
 * many buffers as it takes.  Pushes what recv returned (0 at EOF, -errno
 * on failure) or n.  ml__conn_buffered(c, n, p) -> integer */
int ml__conn_buffered(lua_State *L) {
  ml_Conn *c = lua_touserdata(L, 1);
  lua_Integer n = lua_tointeger(L, 2);
  const char *p = lua_touserdata(L, 3);
  size_t room;
  char *buf;
  lua_settop(L, 3);
  if (!ml__conn_push(L, c)) {
    lua_pushinteger(L, -EAGAIN);
    return 1;
  }
  lua_getiuservalue(L, 4, XUV_PROTO); /* 5 */
  if (n < 0) {
    ssize_t r;
    buf = get_buffer(L, 5, -1, &room);
    if (c->fd < 0 || c->lost) { /* get_buffer closed it */
      lua_pushinteger(L, -EAGAIN);
      return 1;
    }
    r = ml__conn_recv(c, buf, room);
    if (r <= 0) {
      lua_pushinteger(L, r < 0 ? -errno : 0);
      return 1;
    }
    buffer_updated(L, 5, (size_t)r);
    lua_pushinteger(L, r);
    return 1;
  }
  while (n > 0 && !c->lost) {
    size_t k;
    buf = get_buffer(L, 5, n, &room);
    k = room < (size_t)n ? room : (size_t)n;
    memcpy(buf, p, k);
    lua_pop(L, 2);
    buffer_updated(L, 5, k);
    p += k;
    n -= (lua_Integer)k;
  }
  lua_pushinteger(L, lua_tointeger(L, 2));
  return 1;
}

/* [-0, +0] c's protocol is the value at pidx: notes whether it is a
 * BufferedProtocol (it has get_buffer), as asyncio decides when the
 * protocol is set. */
void ml__conn_note_protocol(lua_State *L, ml_Conn *c, int pidx) {
  c->buffered = 0;
  if (lua_istable(L, pidx) || lua_isuserdata(L, pidx)) {
    c->buffered = lua_getfield(L, pidx, "get_buffer") != LUA_TNIL;
    lua_pop(L, 1);
  }
}
