/* embed.h: what the files of the embedding API (embed.c, hostfuture.c,
 * sandbox.c) share; nothing outside them includes it. */
#ifndef ML_EMBED_H
#define ML_EMBED_H

#include <pthread.h>
#include "core/task.h"
#include "core/coro.h"
#include "core/sched.h"
#include "core/exc.h"
#include "core/wakeup.h"
#include "dialect/loader.h"

/* The embedding API's per-state data.  It is malloc'd (other threads
 * touch the queue), reached through S->embed, and freed by the __gc of
 * a userdata in the registry, so lua_close - which ml_state_close calls
 * while the loop still exists - releases it. */
typedef struct ml_Embed {
  ml_State *S;
  void *userdata;              /* ml_state_set_userdata */
  char err[512];               /* ml_state_error */
  int npending;                /* pending host futures: each holds the loop */
  struct ml_Promise *promises; /* pending promises, a list (hostfuture.c) */
  size_t cap;                  /* the memory limit, 0 for none */
  int report_at_finish_set;    /* the host chose (ml_state_set_report_at_finish) */
  /* Foreign-loop stepping (embed.c). */
  int backend_fd; /* -2 until looked up, -1 if none */
} ml_Embed;

/* A host future: a Future whose userdata also points at the ml_Embed, so
 * that other threads can queue its completion without touching Lua. */
typedef struct ml_HostFuture {
  ml_Future fut;
  ml_Embed *E;
} ml_HostFuture;


/* Records a failure: formats the message into E->err (or S's) and
 * returns rc. */
int ml__embed_fail(ml_State *S, int rc, const char *fmt, ...);

/* Runs f(L) in protected mode with the light userdata ud as its only
 * argument, as every entry point that may raise does.  Returns ML_OK, or
 * -ENOMEM / -EINVAL with the message recorded. */
int ml__embed_pcall(lua_State *L, lua_CFunction f, void *ud);

/* The registry table of module names the host registered (name -> true),
 * which the sandbox keeps. */
#define ML_HOSTMODS_KEY "moonloop.hostmodules"

/* Handles: the registry table anchors[light userdata p] = the Future or
 * Task p points at, which keeps it alive while the host holds p. */
/* [-0, +0] anchors the Future or Task at idx; raises on a memory error. */
void ml__anchor_set(lua_State *L, int idx, void *p);
/* [-0, +1] pushes what p anchors, or nil; returns the type pushed. */
int ml__anchor_push(lua_State *L, void *p);
/* [-0, +0] drops the anchor of p. */
void ml__anchor_clear(lua_State *L, void *p);

/* Lets go of the pending promises of a closing state: their cancel
 * callbacks run, completions from then on return -ESHUTDOWN (hostfuture.c,
 * from the __gc of E's box during lua_close). */
void ml__hostfuture_close(ml_Embed *E);

/* Puts every stdlib module in package.preload (stdlib/init.c, the module
 * list; declared here, as vm/ includes no stdlib header).  [-0, +0] */
void ml__stdlib_open(lua_State *L);
/* [-0, +2] pushes {stdlib module name = the capabilities it needs, a
 * bit mask, closed over its requires} and {switch name = its bit}
 * (stdlib/init.c, once per process), for the sandbox. */
void ml__stdlib_needs(lua_State *L);

/* ml_Values (values.c): 0 if v (may be NULL) is a complete list, or its
 * error; the number of its top-level values; [-0, +n] pushes them in
 * order and returns n, raising if memory runs out (protected mode). */
int ml__values_check(const ml_Values *v);
int ml__values_count(const ml_Values *v);
int ml__values_push(lua_State *L, const ml_Values *v);

/* Counts n steps of the string matcher in a wrapped finalizer against its
 * limit, raising past it (sandbox.c).  [-0, +0] */
void ml__finalizer_charge(lua_State *L, unsigned long n);

/* Replaces string.find, match, gmatch and gsub in the state's string
 * library (also the strings' __index) with the ones of strmatch.c, which
 * count their steps against the CPU budget; once is enough (a second
 * call does nothing).  Raises on a memory error.  [-0, +0] */
void ml__strmatch_install(lua_State *L);

/* The embedding API's per-state data, made on first use on the loop's
 * thread; NULL if memory ran out.  ml_state_new makes it. */
ml_Embed *ml__embed(ml_State *S);

#endif
