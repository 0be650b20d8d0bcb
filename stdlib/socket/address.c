/* address.c: socket addresses between their script form (Python-style
 * {host, port} tables and Unix paths) and struct sockaddr, getaddrinfo
 * results as lists, and the gaierror exceptions of failed lookups. */
#include <errno.h>
#include <netdb.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include "socket/address.h"

/* ---------------------------------------------------------------- */
/* Errors.                                                            */

void ml__sock_push_gaierror(lua_State *L, int code, int sys_errno) {
  if (code == EAI_SYSTEM) {
    ml__exc_push_errno(L, sys_errno ? sys_errno : EIO, NULL);
    return;
  }
  if (code == EAI_MEMORY) {
    ml__exc_push_errno(L, ENOMEM, NULL);
    return;
  }
  ml__exc_push_class(L, "gaierror");
  lua_pushinteger(L, code);
  lua_pushstring(L, gai_strerror(code));
  lua_call(L, 2, 1);
}

/* ---------------------------------------------------------------- */
/* Addresses.                                                         */

static int is_broadcast_name(const char *h) { return strcmp(h, "<broadcast>") == 0; }

/* Blocking lookup of a host name for family; fills ss.  Raises on failure.
 * [-0, +0] */
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

/* [-0, +0] the integer at t[i] of the table at idx, or dflt; raises naming what. */
static lua_Integer field_int(lua_State *L, int idx, int i, lua_Integer dflt, const char *what) {
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

int ml__sock_toaddr(lua_State *L, int idx, int family, int resolve, struct sockaddr_storage *ss,
                    socklen_t *len) {
  idx = lua_absindex(L, idx);
  memset(ss, 0, sizeof *ss);
  if (family == AF_UNIX) {
    struct sockaddr_un *un = (struct sockaddr_un *)ss;
    size_t n;
    const char *path = lua_tolstring(L, idx, &n);
    if (path == NULL || lua_type(L, idx) != LUA_TSTRING)
      return luaL_argerror(L, idx, "Unix socket address must be a path string");
    if (n >= sizeof un->sun_path) return luaL_argerror(L, idx, "Unix socket path too long");
    un->sun_family = AF_UNIX;
    memcpy(un->sun_path, path, n);
    *len =
      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (n > 0 && path[0] == '\0' ? 0 : 1));
    return 0;
  }
  if (family != AF_INET && family != AF_INET6)
    return luaL_argerror(L, idx, "unsupported address family");
  if (!lua_istable(L, idx))
    return luaL_argerror(L, idx,
                         family == AF_INET ? "address must be {host, port}"
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
      lua_pushlstring(L, un->sun_path, len - off); /* abstract: keep the NUL */
    } else {
      lua_pushlstring(L, un->sun_path, strnlen(un->sun_path, len - off));
    }
    return;
  }
  default: lua_pushnil(L);
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
  ML_STACK_MARK(L);
  lua_pushcfunction(L, pushaddrinfo);
  lua_pushlightuserdata(L, ai);
  int rc = lua_pcall(L, 1, 1, 0);
  if (ai) freeaddrinfo(ai);
  if (rc != LUA_OK) lua_error(L);
  ML_STACK_CHECK(L, 1);
}
