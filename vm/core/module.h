/* module.h: the narrow API that stdlib C modules use to reach the core,
 * as lauxlib.h is Lua's: functions and opaque types, no struct layouts.
 * A stdlib C module includes this header and no other of vm/.
 *
 * Stack effects follow the Lua manual: [-o, +p] pops o values, pushes p. */
#ifndef ML_MODULE_H
#define ML_MODULE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <ev.h>
#include <lua.h>
#include <lauxlib.h>
#include "moonloop.h"

typedef struct ml_Task ml_Task;

/* ---- Checks ------------------------------------------------------- */

/* Compiled in only with ML_CHECKS (`make SAN=1` sets it), so they cost
 * nothing in a release build.  ml_assert(cond) aborts with the file and
 * line when cond is false.  ML_STACK_MARK(L) remembers the top of L's
 * stack (a declaration: once per block, before the check);
 * ML_STACK_CHECK(L, d) asserts that the top has moved by d since, the
 * p - o of the function's [-o, +p]. */
#if ML_CHECKS
#include <stdio.h>
#include <stdlib.h>
#define ml_assert(cond) \
  ((cond)               \
     ? (void)0          \
     : (fprintf(stderr, "%s:%d: ml_assert(%s) failed\n", __FILE__, __LINE__, #cond), abort()))
#define ML_STACK_MARK(L) const int ml_stack_mark_ = lua_gettop(L)
#define ML_STACK_CHECK(L, d) ml_assert(lua_gettop(L) == ml_stack_mark_ + (d))
#else
#define ml_assert(cond) ((void)0)
#define ML_STACK_MARK(L) ((void)0)
#define ML_STACK_CHECK(L, d) ((void)0)
#endif

/* ---- The state ------------------------------------------------------ */

/* The state a Lua thread belongs to, kept in lua_getextraspace; the low
 * bit of that word says the thread is parked in an await (task.c).  A
 * macro, as it is on every hot path. */
#define ml__state(L) ((ml_State *)(*(uintptr_t *)lua_getextraspace(L) & ~(uintptr_t)1))

/* The libev loop of S. */
struct ev_loop *ml__loop(ml_State *S);
/* The main Lua state of S: what a libev callback runs Lua code on. */
lua_State *ml__main_lua(ml_State *S);

/* Nonzero if scripts of S may catch signals (loop:add_signal_handler):
 * the host turned it on with ml_state_enable_signals; the CLI does. */
int ml__signals_enabled(ml_State *S);

/* ---- Userdata types (state.c) --------------------------------------- */

/* The one way to tell a userdata's type.  Every type of userdata that the
 * core and the stdlib make has a tag below; its metatable's address is
 * cached in the state when the metatable is made (ml__udata_newmt), so a
 * test is one metatable fetch and a pointer comparison: no name lookup in
 * the registry (luaL_testudata's), no size or magic number punning on the
 * block.  A new type adds its tag here (like Lua's LUA_T* tags);
 * docs/internals.md lists them.  The tags are per process, the cached
 * metatables per state.  A test costs four API calls; two hot paths keep
 * a size and magic number test of two, which measured faster: the Queue
 * core (asyncio/_queue.c, +6% instructions on the queue benchmark with
 * ml__udata_test) and transports (socket/net.h, ml__conn_test, several
 * metatables per type). */
enum {
  /* the core's */
  ML_UT_FUTURE,
  ML_UT_TASK,
  ML_UT_CORO,
  ML_UT_HANDLE,
  ML_UT_SENTINEL,
  /* the stdlib's */
  ML_UT_QUEUE,
  ML_UT_SOCKET,
  ML_UT_BUFFER,
  ML_UT_LISTENER,
  ML_UT_LOOKUP,
  ML_UT_FDWATCH,
  ML_UT_PROCESS,
  ML_UT_SIGSET,
  ML_UT_SSLCONTEXT,
  ML_UT_SSLOBJECT,
  ML_UT_HTTPMULTI,
  ML_UT_HTTPXFER,
  ML_UT_N
};

/* [-0, +1] pushes the metatable of type, made with luaL_newmetatable(L,
 * tname) (so its __name names the type in error messages), and caches
 * it.  Returns 1 if it made it now, 0 if the registry had it already
 * (the module was opened before): as luaL_newmetatable, fill it if 1. */
int ml__udata_newmt(lua_State *L, int type, const char *tname);
/* [-0, +0] makes the metatable tname of a class without a type tag
 * once (luaL_newmetatable, so its __name names the type in errors): a
 * table of methods as __index, gc as __gc, tostr as __tostring (either
 * may be NULL).  Returns 1 if it made it now, 0 if it existed. */
int ml__class_new(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction gc,
                  lua_CFunction tostr);
/* [-0, +0] sets type's metatable on the value at the top: no name
 * lookup (luaL_setmetatable's). */
void ml__udata_setmt(lua_State *L, int type);
/* [-0, +0] the block of the userdata at idx if it is of type, else NULL
 * (also for a value that is not a userdata, or a type not made yet). */
void *ml__udata_test(lua_State *L, int idx, int type);
/* [-0, +0] the same, raising a type error otherwise ("bad argument #1 to
 * 'send' (socket.socket expected, got table)", as luaL_checkudata). */
void *ml__udata_check(lua_State *L, int idx, int type);

/* [-0, +1] pushes require(name) as the stdlib sees it: also in a
 * sandboxed state, whose scripts' require refuses internal modules.
 * Raises as require does.  Use it instead of the global require. */
void ml__require(lua_State *L, const char *name);

/* ---- Compiled-in Lua modules (state.c) ----------------------------- */

/* A Lua module compiled into the library as bytecode at build time
 * (stdlib/tools/bytecode.c writes the lists). */
typedef struct ml_Embedded {
  const char *name; /* module name: "asyncio", "asyncio.locks" */
  const char *src;  /* Lua bytecode (the dialect, compiled at build time) */
  size_t len;
} ml_Embedded;

/* Puts every module of list (ending with name == NULL) in
 * package.preload.  [-0, +0] */
void ml__preload_embedded(lua_State *L, const ml_Embedded *list);

/* ---- Exceptions (exc.c) --------------------------------------------- */

/* [-0, +1] pushes the exception class named cls ("IncompleteReadError")
 * of asyncio.exceptions, to be called with its arguments; raises if there
 * is no such class. */
void ml__exc_push_class(lua_State *L, const char *cls);
/* [-0, +1] pushes cls(message): cls is a class name ("TimeoutError"). */
void ml__exc_push(lua_State *L, const char *cls, const char *fmt, ...);
/* [-0, +0] raises cls(message); never returns. */
int ml__exc_raise(lua_State *L, const char *cls, const char *fmt, ...);
/* [-0, +1] pushes the OSError subclass for errno err (111 ->
 * ConnectionRefusedError), with errno, strerror and, if what is not
 * NULL, a prefix naming the operation ("connect"). */
void ml__exc_push_errno(lua_State *L, int err, const char *what);
/* [-0, +0] raises that exception; never returns. */
int ml__exc_raise_errno(lua_State *L, int err, const char *what);
/* [-0, +0] 1 if the value at idx is an instance of class cls (or of a
 * subclass of it). */
int ml__exc_is(lua_State *L, int idx, const char *cls);
/* Raises TypeError ("gather() got an unexpected option 'x'") unless every
 * key of the options table at idx is one of allowed (NULL-terminated). */
void ml__check_options(lua_State *L, int idx, const char *fname, const char *const allowed[]);
/* [-0, +1] pushes tostring(value at idx) and returns it, never raising:
 * a failing or yielding __tostring gives a description instead. */
const char *ml__tostring(lua_State *L, int idx);

/* [-0, +1] pushes the traceback of L from level 1 (in a message handler:
 * where the error was raised), without its outermost frame when that is
 * entry: the runtime's own C function that called the user's code (NULL:
 * keep every frame), and without the frames of __awcall and __awmeth. */
void ml__traceback(lua_State *L, lua_CFunction entry);

/* Reports an error that nobody will catch (uncaught in a callback, task
 * exception never retrieved): through the host's handler, or to stderr.
 * [-1, +0] pops the error value; context says where ("in callback"). */
void ml__report(lua_State *L, const char *context);
/* The same with a traceback: [-2, +0] pops the error and its traceback
 * (a string, or nil). */
void ml__report_tb(lua_State *L, const char *context);

/* ---- Integer arguments (args.c) ------------------------------------ */

/* [-0, +0] the integer argument arg, which must lie in [lo, hi]; else a
 * bad-argument error naming the range.  Every integer a script passes to C
 * is range-checked before a cast or arithmetic (DESIGN.md "Reliability").
 * ml__optrange returns def for none or nil. */
lua_Integer ml__checkrange(lua_State *L, int arg, lua_Integer lo, lua_Integer hi);
lua_Integer ml__optrange(lua_State *L, int arg, lua_Integer def, lua_Integer lo, lua_Integer hi);
#define ml__checkint(L, arg) ((int)ml__checkrange((L), (arg), INT_MIN, INT_MAX))
#define ml__optint(L, arg, def) ((int)ml__optrange((L), (arg), (def), INT_MIN, INT_MAX))

/* ---- Calling back ---------------------------------------------------- */

/* Calls the function below nargs arguments in protected mode, as the loop
 * does for callbacks (not in a task).  An error goes to the loop's
 * exception handler with context.  [-(nargs+1), +0]; returns a LUA_*
 * status. */
int ml__callback(lua_State *L, int nargs, const char *context);
/* The message handler ml__callback uses, for C that calls back in its own
 * protected call (a hot path): it leaves the error unchanged and records
 * the traceback where it was raised.  [-0, +0] */
int ml__callback_msgh(lua_State *L);
/* [-0, +1] pushes the traceback ml__callback_msgh last recorded: read it
 * right after the failed call, before other Lua code runs. */
void ml__callback_traceback(lua_State *L);

/* Asks the scheduler to poll I/O at the end of the current iteration even
 * if the poll rule would wait longer: for a watcher restarted while the
 * ready queue stays busy (a protocol that resumes reading on one
 * iteration and pauses on the next must still be polled while reading). */
void ml__sched_poll_soon(ml_State *S);

/* ---- Tasks and suspension (task.c) ------------------------------------ */

/* Called when a suspended task is cancelled: stop whatever would have
 * woken it (a watcher) and return 0; or return 1 if the cancellation was
 * passed on to what the task awaits, which will wake it. */
typedef int (*ml_CancelHook)(lua_State *L, ml_Task *t, void *ud);

/* The running task, or NULL outside any task. */
ml_Task *ml__task_current(lua_State *L);

/* Raises the RuntimeError that suspending here would raise: outside any
 * task ("await outside of a running task"), or in a task where a C call
 * that cannot yield is on the stack; returns 0 if the running code may
 * suspend.  Call it before setting up what only a suspension would undo
 * (a started watcher, a linked waiter).  [-0, +0] */
int ml__task_check_suspendable(lua_State *L);

/* Suspends the running task.  Use as the tail of a lua_CFunction:
 *     return ml__task_suspend(L, hook, ud, ctx, k);
 * The task sleeps until ml__task_wake(); then k(L, LUA_YIELD, ctx) runs
 * with the C function's stack as it was, and its results are the C
 * function's.  If the task is cancelled while suspended, hook(L, t, ud)
 * is called at once (from within task.cancel()) and CancelledError is
 * raised at this point instead of calling k.  So k may never run: what k
 * would release must be owned by a collectable object (a userdata with
 * __gc), not by the C stack.  The same holds if the task is woken and then
 * cancelled before it runs.  Works from nested plain coroutines running
 * inside a task.  Raises as ml__task_check_suspendable does. */
int ml__task_suspend(lua_State *L, ml_CancelHook hook, void *ud, lua_KContext ctx, lua_KFunction k);
/* The same, except that k runs in every case: with LUA_YIELD when the
 * task is woken, or with LUA_ERRRUN and the CancelledError on top if it
 * was cancelled (before or after it was woken), so that k can undo what
 * the wait set up; k must then raise that error (return lua_error(L)).
 * It raises, before suspending, in the cases ml__task_suspend does: call
 * ml__task_check_suspendable first if k must always run.
 * Its hook runs also when the task is cancelled after it was woken and
 * before it ran (the queue passes on an item handed to it then). */
int ml__task_suspend_always(lua_State *L, ml_CancelHook hook, void *ud, lua_KContext ctx,
                            lua_KFunction k);
/* Puts a suspended task on the ready queue (no-op unless suspended).
 * Safe from libev callbacks. */
void ml__task_wake(ml_Task *t);
/* The context its suspended C function gave ml__task_suspend. */
lua_KContext ml__task_kctx(const ml_Task *t);
/* Disarms t's cancel hook if it is (hook, ud): the object the hook would
 * touch is going away while t stays suspended. */
void ml__task_disarm(ml_Task *t, ml_CancelHook hook, void *ud);
/* [-0, +1] pushes the userdata of the pending task t. */
void ml__task_push(lua_State *L, ml_Task *t);

/* ---- Futures (future.c) ---------------------------------------------- */

enum { ML_PENDING = 0, ML_RESULT, ML_EXCEPTION, ML_CANCELLED };

/* [-0, +1] pushes a new pending Future bound to the running loop. */
ml_Future *ml__future_new(lua_State *L);
/* [-0, +0] the Future or Task at idx, or NULL. */
ml_Future *ml__future_test(lua_State *L, int idx);
/* ML_PENDING, ML_RESULT, ML_EXCEPTION or ML_CANCELLED. */
int ml__future_state(const ml_Future *f);
/* Completes the Future at stack index fidx.  set_result pops n values
 * (its results); set_exception pops one (the exception); cancel pops
 * nothing (msg may be NULL).  Done callbacks and waiters are scheduled
 * with the ready queue, never run here.  Return 0, or -EINVAL if the
 * future was already done (cancel: 1 if it was cancelled by this call,
 * 0 if already done). */
int ml__future_set_result(lua_State *L, int fidx, int n);
int ml__future_set_exception(lua_State *L, int fidx);
int ml__future_cancel(lua_State *L, int fidx, const char *msg);
/* The same with the message at stack index msgidx (any value; 0: none). */
int ml__future_cancel_msg(lua_State *L, int fidx, int msgidx);
/* Pushes the result values of a done future and returns how many, or
 * raises its exception / CancelledError. */
int ml__future_unwrap(lua_State *L, int fidx);

/* ---- C done callbacks (future.c) -------------------------------------- */

/* A done callback written in C, for what plugs into futures from C
 * (gather; later wait, shield, TLS, HTTP): a record whose first field is
 * this struct, so that future.c calls it without naming its owner.
 *
 *   typedef struct Gather { ml_DoneCb cb; int left; ... } Gather;
 *   static void child_done(lua_State *L, ml_DoneCb *self, int fidx) {
 *     Gather *g = (Gather *)self; ...
 *   }
 *   g = lua_newuserdatauv(L, sizeof *g, 1); g->cb.fn = child_done;
 *   ml__future_add_done_cb(L, fidx, -1);
 *
 * When it fires: once, when the future is done, in the order the
 * callbacks were added, like a Lua done callback: from the ready queue
 * (never inside ml__future_add_done_cb, even for a future already done).
 * One exception: when a task finishes and the record is its only
 * callback, fn runs at once as the task completes (no script runs in
 * between; it saves a queue entry: docs/performance.md, "Tasks (gather)").
 *
 * How fn is called: fn(L, self, fidx) with the record's value (the
 * userdata, or light userdata, that was added) on the top of the stack
 * and the done future at fidx; fn must leave the stack as it found it,
 * and must not raise or yield: it runs outside any protected call, so
 * whatever may fail goes under lua_pcall (report errors with ml__report).
 * fn may complete other futures (their callbacks are scheduled, not run).
 *
 * Who owns it, how it is anchored: a full userdata is anchored by the
 * future's callback list from ml__future_add_done_cb until it has fired,
 * so a record that keeps what it needs in its user values lives exactly
 * as long as some future may still call it.  A light userdata anchors
 * nothing: its owner keeps the memory alive (a struct of an object that
 * outlives the future) until fn ran.  The record is never freed by the
 * future; a full userdata goes with the collector. */
typedef struct ml_DoneCb ml_DoneCb;
struct ml_DoneCb {
  void (*fn)(lua_State *L, ml_DoneCb *self, int fidx);
};

/* Adds the record at recidx (a full or light userdata whose memory starts
 * with an ml_DoneCb) to the done callbacks of the Future or Task at fidx.
 * [-0, +0]; raises if out of memory. */
void ml__future_add_done_cb(lua_State *L, int fidx, int recidx);

/* ---- Async C functions (coro.c) -------------------------------------- */

/* asyncio.iscoroutinefunction(f) -> boolean, as a lua_CFunction: true for
 * what `async function` makes.  Needs no loop: any Lua state may call it. */
int ml__coro_iscoroutinefunction(lua_State *L);
/* [-0, +1] pushes the state's loop object (nil in a Lua state that is not
 * a loop's, such as a worker's). */
void ml__push_loop(lua_State *L);

/* [-0, +1] pushes an async function made of the C function f: calling it
 * returns a Coroutine (one small allocation), and awaiting that runs f
 * inline in the awaiting task, where f may ml__task_suspend().  Use it for
 * every C function scripts `await`.  For a hot path with no allocation,
 * return a reusable userdata whose metatable has __await instead: await
 * calls __await(obj) in the task, and it may suspend too. */
void ml__push_async(lua_State *L, const char *name, lua_CFunction f);
/* [-0, +0] the metatable at the top (anchored for the state's life, as a
 * luaL_newmetatable one is): `await obj` of a userdata with it runs f
 * inline in the awaiting frame, obj at 1 and alone, with no
 * luaL_getmetafield("__await") nor call (~350 instructions an await; the
 * HTTP server's `await conn`).  Keep __await in the metatable as well: it
 * is the path when the small table is full. */
void ml__await_register(lua_State *L, lua_CFunction f);

/* ---- Waking the loop from other threads (wakeup.c) -------------------
 * The one cross-thread path: every thread that must reach a state's loop
 * (host workers, the thread pool, the resolver) queues a call here, and
 * the loop's thread runs it in its next iteration.  It wakes a loop
 * blocked in ev_run and a host polling the fd of ml_state_step alike. */

/* A queued call: fn(S, ud) on the loop's thread, or fn(NULL, ud) from
 * ml_state_close if the state closed with the call still queued (free ud
 * then, touch no Lua). */
typedef void (*ml_WakeFn)(ml_State *S, void *ud);

/* A caller-owned queue record, for senders that must not fail for lack of
 * memory (embed it in the request).  Fill fn and ud; next is the queue's.
 * The record must stay valid until fn runs. */
typedef struct ml_WakeNode {
  struct ml_WakeNode *next;
  ml_WakeFn fn;
  void *ud;
} ml_WakeNode;

/* A counted reference on a state's wake-up: it stays valid after the
 * state closes, until released. */
typedef struct ml_Wakeup ml_Wakeup;

/* Loop thread: takes a reference on S's wake-up (NULL if it has none). */
ml_Wakeup *ml__wakeup_acquire(ml_State *S);
/* Any thread: drops a reference. */
void ml__wakeup_release(ml_Wakeup *w);
/* Any thread that holds a reference on w (or S's loop thread): takes one
 * more (NULL: nothing). */
void ml__wakeup_retain(ml_Wakeup *w);
/* Any thread: queues n (n->fn(S, n->ud) runs on the loop's thread) and
 * wakes the loop.  Returns 0, -ESHUTDOWN if the state has closed (n was
 * not queued: the caller still owns it), or -EINVAL. */
int ml__wakeup_send(ml_Wakeup *w, ml_WakeNode *n);
/* Any thread: 1 if the state of w has closed (sends will fail), else 0. */
int ml__wakeup_closed(ml_Wakeup *w);
/* Any thread while S is open (the caller knows it cannot close meanwhile):
 * queues fn(S, ud), allocating the record.  Returns 0, -ENOMEM, -EINVAL or
 * -ESHUTDOWN (then fn will not run). */
int ml__wakeup_post(ml_State *S, ml_WakeFn fn, void *ud);
/* Loop thread: something in flight will post back, so keep the loop
 * running (as an active watcher would) until the matching unhold. */
void ml__loop_hold(ml_State *S);
void ml__loop_unhold(ml_State *S);

/* ---- Graceful shutdown (worker.c) -----------------------------------
 * ml_state_shutdown (a worker's SIGTERM, or a host's call) runs the
 * hooks that stdlib modules registered, in the order they registered:
 * the core knows no module that has something to close. */

/* [-0, +0] registers fn, called at each graceful shutdown as fn(main)
 * in a protected call (main: the main Task, or nil when the host gave
 * none); its results are dropped and its error is the call's error.
 * Registered once per state (ml__stdlib_open does it). */
void ml__at_shutdown(lua_State *L, lua_CFunction fn);

/* ---- The worker thread pool (threadpool.c) ---------------------------
 * One pool per process, shared by every state: resolution, ml_work_submit,
 * asyncio.to_thread.  Threads start on demand up to
 * MOONLOOP_THREADPOOL_SIZE (default min(32, cores + 4)), block all signals, and never touch
 * a Lua state they were not given. */

/* Runs on a pool thread. */
typedef void (*ml_PoolWorkFn)(void *ud);

/* Loop thread: runs work(ud) on a pool thread, then done(S, ud) on S's
 * loop thread (through the wake-up).  Exactly once each, in that order;
 * if S closes first, done runs as done(NULL, ud) instead - on the worker
 * or inside ml_state_close - so that ud can be freed.  The loop is held
 * alive until done runs.  Requests run in submission order, at most
 * ml__pool_size() at once; one that blocks forever holds a thread forever.
 * Returns 0, -ENOMEM, -EINVAL, or -EAGAIN if no thread could be started
 * (nothing was queued: the caller may run work itself). */
int ml__pool_submit(ml_State *S, ml_PoolWorkFn work, ml_WakeFn done, void *ud);
/* The most threads the pool runs at once. */
int ml__pool_size(void);

#endif
