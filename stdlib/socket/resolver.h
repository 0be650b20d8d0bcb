/* resolver.h: name lookups (getaddrinfo, getnameinfo) on the core's
 * thread pool, so that a lookup never blocks the loop (resolver.c).
 *
 * A lookup is a request, as in libuv: the caller makes one with
 * ml__lookup_new (a userdata handle owns it), fills its inputs, and either
 * runs it on its own thread (ml__lookup_run: numeric lookups that cannot
 * block) or hands it to the pool with ml__lookup_submit, which suspends
 * the running task until a worker has filled the outputs. */
#ifndef ML_RESOLVER_H
#define ML_RESOLVER_H

#include <netdb.h>
#include <sys/socket.h>
#include "core/module.h"

enum { ML_LOOKUP_GAI, ML_LOOKUP_GNI };

typedef struct ml_Lookup ml_Lookup;

struct ml_Lookup {
  /* The request: set by the caller before it is run or submitted. */
  int kind;                   /* ML_LOOKUP_GAI or ML_LOOKUP_GNI */
  int has_host, has_serv;     /* GAI: host / serv are given */
  char host[NI_MAXHOST];      /* GAI input; GNI output */
  char serv[NI_MAXSERV];      /* GAI input; GNI output */
  struct addrinfo hints;      /* GAI */
  struct sockaddr_storage sa; /* GNI: the address */
  socklen_t salen;
  int flags; /* GNI */
  /* The result, once run: rc 0 or an EAI_* code, err the errno of
   * EAI_SYSTEM; ai the GAI list, freed with the request unless the caller
   * takes it (sets ai to NULL). */
  int rc, err;
  struct addrinfo *ai;
  /* resolver.c's. */
  int refs;      /* atomic: the handle + the pool */
  ml_Task *task; /* loop thread: the waiting task, or NULL */
};

/* [-0, +1] pushes a handle (a userdata whose __gc frees the request once
 * the pool is done with it too) owning a new zeroed request of kind, and
 * returns the request.  Raises on ENOMEM. */
ml_Lookup *ml__lookup_new(lua_State *L, int kind);
/* The request of the handle at idx (a type error if it is not one).
 * [-0, +0] */
ml_Lookup *ml__lookup_check(lua_State *L, int idx);
/* Runs the lookup on the calling thread (it may block: only for lookups
 * that are numeric), filling its result. */
void ml__lookup_run(ml_Lookup *q);
/* Runs the request of the handle on top of the stack on the pool, and
 * suspends the running task until it is done; then k(L, LUA_YIELD, ctx)
 * runs, the handle still on top and the result in the request.  A task
 * cancelled meanwhile leaves the result to the handle's __gc.  Raises
 * RuntimeError outside a task.  Use as the tail of a lua_CFunction. */
int ml__lookup_submit(lua_State *L, ml_Lookup *q, lua_KContext ctx, lua_KFunction k);

#endif
