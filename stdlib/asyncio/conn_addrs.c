/* conn_addrs.c: the two addresses a transport keeps from the start (its
 * own and its peer's, for get_extra_info and a connected datagram
 * endpoint's sendto): inline in ml_Conn when they fit an ml_SmallAddr,
 * else both in the XUV_ADDR string (net.h). */
#include <string.h>
#include <sys/socket.h>
#include "socket/net.h"

void ml__conn_keep_addrs(lua_State *L, ml_Conn *c, int fd) {
  struct sockaddr_storage ss[2];
  socklen_t len[2] = {sizeof ss[0], sizeof ss[1]};
  if (getsockname(fd, (struct sockaddr *)&ss[0], &len[0]) < 0) len[0] = 0;
  if (getpeername(fd, (struct sockaddr *)&ss[1], &len[1]) < 0) len[1] = 0;
  else c->connected = 1;
  len[0] = len[0] > sizeof ss[0] ? sizeof ss[0] : len[0]; /* truncated: what fits */
  len[1] = len[1] > sizeof ss[1] ? sizeof ss[1] : len[1];
  if (len[0] > sizeof c->local || len[1] > sizeof c->peer) {
    memmove((char *)&ss[0] + len[0], &ss[1], len[1]); /* local, then the peer's */
    lua_pushlstring(L, (const char *)&ss[0], len[0] + len[1]);
    lua_setiuservalue(L, -2, XUV_ADDR);
    c->big_addrs = 1;
  } else {
    memcpy(&c->local, &ss[0], len[0]);
    memcpy(&c->peer, &ss[1], len[1]);
  }
  c->llen = len[0];
  c->plen = len[1];
}

const struct sockaddr *ml__conn_addr(lua_State *L, int cidx, const ml_Conn *c, int peer,
                                     socklen_t *len) {
  const char *p;
  *len = peer ? c->plen : c->llen;
  if (*len == 0) return NULL;
  if (!c->big_addrs) return peer ? &c->peer.sa : &c->local.sa;
  lua_getiuservalue(L, cidx, XUV_ADDR);
  p = lua_tostring(L, -1); /* the transport keeps the string */
  lua_pop(L, 1);
  return (const struct sockaddr *)(p + (peer ? c->llen : 0));
}
