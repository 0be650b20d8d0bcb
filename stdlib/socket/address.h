/* address.h: socket addresses between their script form and struct
 * sockaddr, and the exceptions of failed lookups (address.c). */
#ifndef ML_ADDRESS_H
#define ML_ADDRESS_H

#include <sys/socket.h>
#include "core/module.h"

struct addrinfo;

/* Converts the script address at idx for a socket of family into ss:
 * {host, port} (AF_INET), {host, port [, flowinfo [, scope_id]]}
 * (AF_INET6), a path string (AF_UNIX; a leading "\0" means the abstract
 * namespace).  Host "" is the any-address, "<broadcast>" the broadcast
 * address.  If host is a name rather than a numeric address: with
 * resolve set, it is looked up with a blocking getaddrinfo (only the
 * synchronous socket methods do that); otherwise returns 1 and leaves ss
 * alone, so the caller can resolve it asynchronously.  Raises argument
 * errors naming arg for malformed addresses, an OSError subclass when a
 * lookup fails.  Returns 0 on success.  [-0, +0] */
int ml__sock_toaddr(lua_State *L, int idx, int family, int resolve, struct sockaddr_storage *ss,
                    socklen_t *len);
/* [-0, +1] pushes the script form of sa (see ml__sock_toaddr); nil for a
 * family it does not know. */
void ml__sock_pushaddr(lua_State *L, const struct sockaddr *sa, socklen_t len);
/* [-0, +1] pushes the OSError for a getaddrinfo/getnameinfo failure code
 * (EAI_*): gaierror(code, message); for EAI_SYSTEM the OSError of errno
 * sys_errno, for EAI_MEMORY that of ENOMEM. */
void ml__sock_push_gaierror(lua_State *L, int code, int sys_errno);
/* [-0, +1] pushes the list {{family, type, proto, canonname, sockaddr},
 * ..., n = k} for a getaddrinfo result, and frees ai (also when it raises
 * a memory error). */
void ml__sock_pushaddrinfo(lua_State *L, struct addrinfo *ai);

#endif
