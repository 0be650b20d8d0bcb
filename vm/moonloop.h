/* moonloop.h: the embedding API of moonloop, the only public header.
 *
 * A host program (C or C++) links libmoonloop.a and drives moonloop
 * states through these functions; docs/embedding.md walks through a
 * complete host.  The conventions:
 *
 * - Every function that can fail returns ML_OK (0) or a negative errno
 *   value (-ENOMEM, -EINVAL, -EBUSY, ...), and leaves a message that
 *   ml_state_error() returns.  No function exits, prints (except the
 *   default error handler), or lets a Lua error escape.
 * - A state belongs to one thread: call its functions from the thread
 *   that runs its loop.  The only exceptions are the three *_threadsafe
 *   functions.  Different states may run on different threads at once;
 *   moonloop keeps no global state of its own.
 * - Functions that push or pop Lua values take a lua_State *: the state's
 *   own (ml_state_lua) or the one a host C function was called with (a
 *   task's thread).  They follow the Lua manual's stack notation.
 * - A script's uncaught errors go to the state's error handler. */
#ifndef MOONLOOP_H
#define MOONLOOP_H

#include <stddef.h>

/* Lua's headers declare C functions but do not say so to C++ (Lua can be
 * built as C++ too): as lua.hpp does, they go inside the extern "C" with
 * moonloop's own declarations, so a C++ host links against the C
 * libraries.  (A host that links a Lua built as C++, Debian's
 * liblua5.4-c++, cannot use libmoonloop, which is built against C Lua.)
 * C++ exceptions must not leave a host C function: moonloop.hpp has a
 * guard that turns them into Lua errors. */
#ifdef __cplusplus
extern "C" {
#endif
#include <lua.h>
#include <lauxlib.h>

#define MOONLOOP_VERSION "0.1.0"

/* Success.  Failures are negative errno values. */
#define ML_OK 0

struct ev_loop;
typedef struct ml_State ml_State;
/* A handle on a Future or Task of a state (see "Futures" below). */
typedef struct ml_Future ml_Future;

/* Receives every error nobody caught (an uncaught task exception, an error
 * in a callback): msg is the message with its traceback.  The default
 * handler prints msg to stderr.  It may run from within any ml_* call
 * that runs the loop, and from ml_state_close. */
typedef void (*ml_ErrorHandler)(ml_State *S, const char *msg, void *ud);

/* ---- States ------------------------------------------------------- */

/* Makes a state on loop, or on a private loop if loop is NULL.  The state
 * owns its Lua VM (with its own allocator), the `asyncio` module and the
 * standard library.  Returns NULL if memory ran out. */
ml_State *ml_state_new(struct ev_loop *loop);

/* Cancels every pending task, releases every watcher, fd, task and byte
 * the state holds, and destroys the loop if the state made it.  Every
 * ml_Future handle of S becomes invalid; no other thread may be inside a
 * *_threadsafe call on S, or make one afterwards.  S may be NULL. */
void ml_state_close(ml_State *S);

/* The Lua state of S, for the Lua C API. */
lua_State *ml_state_lua(ml_State *S);

/* The moonloop state that L (a state's Lua state, or any of its threads,
 * such as the one a host C function is called with) belongs to. */
ml_State *ml_state_from_lua(lua_State *L);

/* The libev loop S runs on (the host's, or its private one). */
struct ev_loop *ml_state_loop(ml_State *S);

/* The message of the last failure of an ml_* call on S: never NULL, ""
 * if none.  Valid until the next ml_* call on S. */
const char *ml_state_error(ml_State *S);

/* Sets the handler of uncaught errors (NULL: the default, which prints
 * to stderr).  ud is passed to it. */
void ml_state_set_error_handler(ml_State *S, ml_ErrorHandler h, void *ud);

/* When the error handler hears of a task that failed with nobody to see
 * it - no task awaits it, it has no done callback, nobody retrieved its
 * exception: at once when it finishes (on != 0), or when it is collected
 * (0), as asyncio's "Task exception was never retrieved", which may be
 * much later (at ml_state_close if a variable keeps the task).  The
 * default: at once for a state whose host set an error handler
 * (ml_state_set_error_handler with a handler), at collection otherwise.
 * Reported at once, an exception is not reported again at collection,
 * and a later await still raises it; a task that fails before its
 * creator could await it (create_task(f()) whose f fails at its first
 * step, before the creator's next await) is reported too, so a host
 * whose scripts keep failed tasks to await them later turns it off. */
void ml_state_set_report_at_finish(ml_State *S, int on);

/* The handler of uncaught errors set now (NULL: the default) and, if ud
 * is not NULL, its ud in *ud: for a host that replaces the handler for a
 * while and puts it back. */
ml_ErrorHandler ml_state_error_handler(ml_State *S, void **ud);

/* A pointer the host keeps with S (NULL until set). */
void ml_state_set_userdata(ml_State *S, void *ud);
void *ml_state_userdata(ml_State *S);

/* ---- Loading and running ------------------------------------------- */

/* Compiles src[0..len) (Lua 5.4 with async/await; never binary) as a
 * chunk named chunkname ("=name" or "@file.lua", as lua_load).  On
 * success [-0, +1] pushes the chunk's function and returns ML_OK; on
 * failure pushes nothing and returns -EINVAL (syntax error) or -ENOMEM,
 * with the message in ml_state_error. */
int ml_load_string(lua_State *L, const char *src, size_t len, const char *chunkname);

/* The same for the file at path (chunk name "@path"; NULL: standard
 * input, "=stdin"); also returns the -errno of opening or reading it. */
int ml_load_file(lua_State *L, const char *path);

/* [-(nargs+1), +0] pops a function (or a Coroutine) and its nargs
 * arguments and makes a Task that will call it on the next loop
 * iteration, with `await` available (as a script's main chunk runs).
 * name may be NULL.  If task is not NULL, *task receives a handle on the
 * Task, valid until ml_future_release; the host then owns its outcome.
 * If task is NULL, a failure of the Task goes to the error handler as
 * soon as it happens.  An async function is called for its Coroutine,
 * whose body the task runs.  Returns ML_OK; -EINVAL if the value is not
 * callable (not a function, Coroutine or value with __call; the message
 * says what it was); or -ENOMEM (nothing spawned; the values are popped
 * all the same, in every failure). */
int ml_task_spawn(lua_State *L, int nargs, const char *name, ml_Future **task);

/* Asks every pending Task of S to cancel, as task:cancel(msg) does (msg
 * may be NULL): CancelledError is raised where each one waits, on the
 * next iteration, and a task finishes (cancelled, unless it catches the
 * error) once it has unwound; run the loop to let them.  Host futures
 * are left alone.  Returns ML_OK, or -ENOMEM. */
int ml_task_cancel_all(ml_State *S, const char *msg);

/* Runs the loop until nothing is left to do: no ready task, no timer or
 * I/O watcher, no pending host future (see ml_future_new).  Returns
 * ML_OK, or -EBUSY if called from within the loop (a host C function). */
int ml_state_run(ml_State *S);

/* Runs the loop until f is done.  Returns ML_OK; -EDEADLK if nothing is
 * left that could complete f; -EBUSY as ml_state_run. */
int ml_state_run_until(ml_State *S, ml_Future *f);

/* One iteration of the loop that never blocks, for a host whose own loop
 * (GLib, Qt, SDL, a game's frame loop) drives moonloop: runs the tasks
 * and callbacks that are ready, then polls I/O without waiting.
 * Afterwards, if fd is not NULL, *fd is a descriptor that becomes
 * readable when I/O, a signal or a *_threadsafe call needs a step (-1 if
 * the loop's backend has none; then rely on the timeout); if timeout is
 * not NULL, *timeout is the longest the host may wait before the next
 * step, in seconds, already rounded up to the millisecond: 0 when work is
 * ready, the delay of the next timer, or -1 for no limit.
 * Returns 1 if the state has work left (step again: when fd is readable
 * or timeout passed), 0 if it is idle (nothing can happen until the host
 * gives it new work), -EBUSY if called from within the loop, or -ENOMEM. */
int ml_state_step(ml_State *S, int *fd, double *timeout);

/* Makes the ml_state_run or ml_state_run_until running S's loop return
 * ML_OK soon: once the loop iteration under way has finished (the rest
 * of the tasks and callbacks that were ready, or the libev callbacks of
 * this poll).  Call it from within the loop: a host C function, a libev
 * callback on the loop (a host watcher on a shared loop), a
 * ml_state_call_threadsafe function.  Nothing is cancelled: tasks,
 * timers and watchers stay, and the next run carries on with them
 * (ml_state_run_until's future may still be pending: look with
 * ml_future_state).  The stop ends only the run it was made in; during
 * ml_state_step it ends nothing more than the step.  Returns ML_OK, or
 * -EINVAL if the loop is not running (there is nothing to stop, and no
 * later run is affected). */
int ml_state_stop(ml_State *S);

/* Stops Lua code that never awaits (`while true do end`, or a pattern
 * match that would backtrack for ever in a budgeted or sandboxed state):
 * the task step running now is terminated with asyncio.KeyboardInterrupt,
 * which the script cannot catch (as the CPU budget's error: a pcall,
 * xpcall, coroutine or __close that catches it is stopped again at its
 * next instruction), and the task fails with it; the loop and the other
 * tasks carry on.  Safe from any thread and async-signal-safe (it records
 * no message), budget or not: it puts the budget's hook on the thread
 * running the step (the task's, or a coroutine it resumed), directly from
 * the loop's own thread (a signal handler, as lua.c's Ctrl+C, or a host
 * function the script called), and from another thread (a watchdog)
 * with the state's allocator holding back frees meanwhile (vm/core/
 * budget.c); the step stops at its next instruction, or in a pattern
 * match within 1,000 matcher steps, or when the host function it is in
 * returns.  An interrupt is for the step under way: one that ended
 * meanwhile has nothing stopped, and no later step is.  Returns ML_OK,
 * or -ESRCH if no task step is running (the loop is waiting, or in a
 * callback: cancel instead, with ml_future_cancel). */
int ml_state_interrupt(ml_State *S);

/* ---- Host functions and modules ------------------------------------ */

/* Sets the global name to the C function f.  Returns ML_OK or -ENOMEM. */
int ml_state_register(ml_State *S, const char *name, lua_CFunction f);

/* Makes `require(name)` call open (a luaopen_* function: it returns the
 * module) the first time.  Host modules survive ml_state_sandbox.
 * Returns ML_OK or -ENOMEM. */
int ml_module_register(ml_State *S, const char *name, lua_CFunction open);

/* Makes `require(name)` return a table of the functions in funcs (ending
 * with {NULL, NULL}; copied at once).  Returns ML_OK or -ENOMEM. */
int ml_module_register_funcs(ml_State *S, const char *name, const luaL_Reg *funcs);

/* ---- Futures --------------------------------------------------------
 * An ml_Future is a handle on an asyncio Future or Task.  A script
 * awaits it like any Future.  A host future (ml_future_new) is pending
 * until the host completes it, and while pending it keeps the loop
 * alive, as an I/O operation in flight does.  Its handle stays valid
 * until the host completes it with exactly one of ml_future_resolve,
 * ml_future_reject, ml_future_release or their *_threadsafe forms (also
 * if a script cancelled the Future meanwhile: the completion then
 * returns -EINVAL and only releases the handle). */

enum {
  ML_FUTURE_PENDING = 0,
  ML_FUTURE_RESULT, /* done with result values */
  ML_FUTURE_ERROR,  /* done with an exception */
  ML_FUTURE_CANCELLED
};

/* [-0, +1] pushes a new pending Future of L's state and returns its
 * handle; a host C function returns it for scripts to await.  Returns
 * NULL (pushing nothing) if memory ran out. */
ml_Future *ml_future_new(lua_State *L);

/* [-n, +0] completes the host future f with the n values on top of L as
 * its result, waking the tasks that await it (on the next iteration),
 * and releases the handle.  Returns ML_OK, -EINVAL if f was already done
 * (cancelled by a script) or is not a host future, or -ENOMEM. */
int ml_future_resolve(lua_State *L, ml_Future *f, int n);

/* Completes the host future f with an exception, and releases the handle:
 * an instance of the asyncio exception class cls ("RuntimeError",
 * "TimeoutError", "ValueError", ...) with message msg; or, if cls is
 * NULL, the string msg itself (as error(msg) raises).  Returns as
 * ml_future_resolve. */
int ml_future_reject(lua_State *L, ml_Future *f, const char *cls, const char *msg);

/* Drops the host's handle on f without completing it: a host future is
 * cancelled if still pending; a Task keeps running.  Returns ML_OK. */
int ml_future_release(lua_State *L, ml_Future *f);

/* The state of f: ML_FUTURE_PENDING, _RESULT, _ERROR or _CANCELLED. */
int ml_future_state(const ml_Future *f);

/* [-0, +1] pushes the Future or Task itself. */
void ml_future_push(lua_State *L, ml_Future *f);

/* If f is done with a result: [-0, +n] pushes its n values, returns n.
 * Otherwise pushes nothing and returns -EAGAIN (pending) or -EINVAL. */
int ml_future_push_result(lua_State *L, ml_Future *f);

/* If f failed or was cancelled: [-0, +1] pushes its exception (marking it
 * retrieved, so it is not reported) and returns ML_OK.  Otherwise pushes
 * nothing and returns -EINVAL. */
int ml_future_push_error(lua_State *L, ml_Future *f);

/* If f failed or was cancelled: [-0, +1] pushes the traceback of where
 * its exception was raised, with the chain of awaits (a string), or nil
 * if it has none (a Future failed by set_exception, a cancellation), and
 * returns ML_OK.  Otherwise pushes nothing and returns -EINVAL.  It does
 * not mark the exception retrieved: ml_future_push_error does. */
int ml_future_push_traceback(lua_State *L, ml_Future *f);

/* Asks f to cancel, as f:cancel(msg) does (msg may be NULL): a Task gets
 * CancelledError(msg) raised where it waits, on the next iteration, and
 * finishes once it has unwound (it may also catch it and carry on); a
 * Future is cancelled at once, and its waiters run on the next
 * iteration.  The handle stays valid (release it as before).  Returns
 * ML_OK if the cancellation was asked, -EALREADY if f was already done
 * (nothing changes), -EINVAL if f is not a handle of L's state, or
 * -ENOMEM. */
int ml_future_cancel(lua_State *L, ml_Future *f, const char *msg);

/* Thread-safe completion, from any thread (a host's worker): queues the
 * completion and wakes the loop, which applies it on its own thread in
 * its next iteration, as ml_future_resolve / ml_future_reject would.
 * resolve gives the Future one string value, a copy of s[0..len) (or
 * nil if s is NULL).  Return ML_OK, or -ENOMEM (nothing queued: the
 * handle stays valid, so the caller may try again), or -EINVAL if f is
 * not a host future. */
int ml_future_resolve_threadsafe(ml_Future *f, const char *s, size_t len);
int ml_future_reject_threadsafe(ml_Future *f, const char *cls, const char *msg);

/* Runs fn(S, ud) on the loop's thread in its next iteration, where it may
 * use the whole API (resolve a future with any values, spawn a task).
 * Callable from any thread once the state has been used on its own
 * thread (any ml_* call on it but ml_state_new and ml_state_lua).  fn
 * runs exactly once: if the state is closed before it could run, it is
 * called as fn(NULL, ud) from ml_state_close, so that ud can be freed.
 * Returns ML_OK, -EINVAL if the state was never used, or -ENOMEM. */
typedef void (*ml_ThreadsafeFn)(ml_State *S, void *ud);
int ml_state_call_threadsafe(ml_State *S, ml_ThreadsafeFn fn, void *ud);

/* ---- Signals ---------------------------------------------------------- */

/* Lets scripts of S catch Unix signals with loop:add_signal_handler (on
 * != 0), or not (0, the default for a host's states: the process's
 * signals are the host's).  The moonloop command turns it on.  A handler
 * already installed stays until it is removed or the state is closed.
 * Returns ML_OK. */
int ml_state_enable_signals(ml_State *S, int on);

/* ---- Worker processes (docs/deployment.md) -------------------------
 * One process per core, each running the same script and sharing the
 * listening sockets: what `moonloop --workers N` does, and what a host
 * that forks its own workers can tell its states. */

typedef struct ml_Worker {
  int id;                /* this process is worker id, 0 <= id < count */
  int count;             /* of count: asyncio.worker_id(), worker_count() */
  int ready_fd;          /* -1, or an fd (a pipe's write end) that S writes
                          * "READY\n" to, then closes, when the first
                          * server of its scripts listens or a script
                          * calls asyncio.worker_ready() */
  const int *listen_fds; /* listening sockets the process inherited: a
                          * server a script starts on the address one of
                          * them is bound to serves on a dup() of it
                          * instead of binding a socket of its own */
  int nlisten;
} ml_Worker;

/* Makes S's scripts see themselves as worker w->id of w->count, with
 * w's inherited listeners (the fds stay the caller's; S never closes
 * them).  S owns w->ready_fd when this returns ML_OK.  Servers that no
 * inherited socket matches bind with SO_REUSEPORT by default in a
 * worker.  Returns ML_OK, or -EINVAL (an id out of range, an fd that is
 * not a listening socket) or -ENOMEM, with the message in
 * ml_state_error. */
int ml_state_set_worker(ml_State *S, const ml_Worker *w);

/* The graceful stop of a worker (the moonloop command runs it on SIGTERM
 * when the script has no SIGTERM handler of its own): closes every
 * listening server of S (connections already accepted carry on; an
 * http.serve server closes its idle ones), and once their connections
 * are all gone cancels main (a task handle, or NULL) and, once main has
 * ended, cancels every task still pending, as asyncio.run() does.  With
 * NULL only the servers are closed.  Returns at once, the rest runs on
 * S's loop; the process exits as usual when nothing is left.  Returns
 * ML_OK, or an error code with the message in ml_state_error. */
int ml_state_shutdown(ml_State *S, ml_Future *main);

/* ---- Values and promises: completions from other threads -----------
 * A worker thread has no Lua state, so it builds its result as an
 * ml_Values list (nil, booleans, integers, numbers, strings, and tables of
 * those, nested up to 64 deep) and hands it to a promise. */

typedef struct ml_Values ml_Values;

/* A new empty list (NULL if memory ran out); any thread. */
ml_Values *ml_values_new(void);
/* Frees v (NULL is fine); completions take ownership instead. */
void ml_values_free(ml_Values *v);
/* Append one value.  Inside a table, records alternate key, value; a key
 * may not be nil or NaN.  ml_values_push_table opens a table, which
 * ml_values_end_table closes.  Each returns ML_OK, -ENOMEM or -EINVAL
 * (wrong shape); the first failure sticks to v, so the completion that
 * takes it fails with the same code and a host may check only there. */
int ml_values_push_nil(ml_Values *v);
int ml_values_push_boolean(ml_Values *v, int b);
int ml_values_push_integer(ml_Values *v, long long i);
int ml_values_push_number(ml_Values *v, double d);
int ml_values_push_string(ml_Values *v, const char *s, size_t len);
int ml_values_push_table(ml_Values *v);
int ml_values_end_table(ml_Values *v);

/* A promise: the writing end of a Future, for other threads.  Unlike an
 * ml_Future handle it is reference counted and outlives its state: after
 * ml_state_close every completion returns -ESHUTDOWN, and the memory
 * stays until the last ml_promise_release. */
typedef struct ml_Promise ml_Promise;

/* Called on the loop's thread when the Future is finished by anything but
 * the host's completion - a script cancelled it (a wait_for timeout, a
 * cancelled task awaiting it), set it, or the state is closing (then from
 * within ml_state_close) - so the host can abort the work.  It runs at
 * most once, never after a completion was queued.  It may release p. */
typedef void (*ml_CancelFn)(ml_Promise *p, void *ud);

/* [-0, +1] pushes a new pending Future of L's state and sets *p to a
 * promise for it, holding one reference (the caller's).  While pending,
 * the Future keeps the loop alive.  on_cancel may be NULL.  Loop thread.
 * Returns ML_OK, -EINVAL (p is NULL) or -ENOMEM (nothing pushed). */
int ml_promise_new(lua_State *L, ml_CancelFn on_cancel, void *ud, ml_Promise **p);
/* Any thread: another reference to p (returns p). */
ml_Promise *ml_promise_retain(ml_Promise *p);
/* Any thread: drops a reference; the last one frees p.  Dropping every
 * reference of a pending promise does not complete its Future. */
void ml_promise_release(ml_Promise *p);
/* Any thread: completes the Future with the values of v (NULL: none),
 * taking ownership of v in every case; the loop applies it in its next
 * iteration.  Returns ML_OK; -EINVAL if p was already completed or v is
 * not a complete list; -ECANCELED if the script gave up on the Future
 * first; -ESHUTDOWN if the state is closed (or closing); -ENOMEM.  The
 * caller's reference stays: release it when done. */
int ml_promise_resolve(ml_Promise *p, ml_Values *v);
/* Any thread: fails the Future with cls(msg) (an asyncio exception class
 * name, as ml_future_reject) or, if cls is NULL, the string msg.  Returns
 * as ml_promise_resolve. */
int ml_promise_reject(ml_Promise *p, const char *cls, const char *msg);

/* ---- Work on the thread pool (as Node-API's async work) -------------
 * One pool per process, shared by every state and by asyncio.to_thread;
 * MOONLOOP_THREADPOOL_SIZE threads at most (default min(32, cores + 4)). */

/* Runs on a pool thread: no Lua, no ml_* call but the thread-safe ones. */
typedef void (*ml_WorkFn)(void *ud);
/* Runs on the loop's thread after work: pushes the Future's result values
 * and returns how many (or raises a Lua error: the Future fails with it).
 * If a script cancelled the Future meanwhile, it runs all the same (to
 * free ud) and its results are dropped.  If the state closed before it
 * could run, it is called as done(NULL, ud), possibly on a pool thread:
 * free ud and return 0. */
typedef int (*ml_WorkDoneFn)(lua_State *L, void *ud);

/* [-0, +1] pushes a Future that work(ud) then done(L, ud) complete; a
 * host C function returns it for scripts to await.  Loop thread.
 * Returns ML_OK, -EINVAL, -ENOMEM or -EAGAIN (no thread could be
 * started); on failure nothing is pushed and neither function runs. */
int ml_work_submit(lua_State *L, ml_WorkFn work, ml_WorkDoneFn done, void *ud);

/* ---- Limits and the sandbox ---------------------------------------- */

/* Caps the bytes the state's Lua heap may hold (0: no cap).  An
 * allocation past the cap fails inside the script that made it, which
 * sees a MemoryError ("not enough memory"); the host and other states
 * are not affected.  Returns ML_OK, or -ENOMEM if bytes is below what the
 * state already uses. */
int ml_state_set_memory_limit(ml_State *S, size_t bytes);

/* The bytes the Lua heap holds now, and the most it has held. */
size_t ml_state_memory_used(ml_State *S);
size_t ml_state_memory_peak(ml_State *S);

/* Limits every step of a task (from one await to the next) to about
 * instructions Lua VM instructions (0: no limit, the default), counted
 * from the moment the step has run for one slice (1-2 ms: the budget's
 * watchdog thread then puts the count hook on it; a step's first slice
 * is free, and a step shorter than that never has the hook).  A task
 * that runs past it is terminated: it fails with a RuntimeError ("task
 * ran past its CPU budget ...") that the script cannot catch - a pcall,
 * xpcall, error handler, coroutine or __close that catches it is stopped
 * again at its next instruction, until the task's frames have unwound.
 * The loop and the other tasks carry on (or see ml_state_set_budget_scope).
 * In a sandboxed state, finalizers (__gc) run under the same budget; while
 * the state closes, under a fixed limit, so a finalizer that never stops
 * cannot keep it from closing.  Pattern matching is bounded too: from the
 * first call with a budget (and in every sandboxed state) string.find,
 * match, gmatch and gsub - also as string methods - are replaced by a
 * matcher that counts its steps (one step: one attempt of the pattern at
 * a position, or one character a repetition scans) as instructions, so a
 * backtracking pattern is stopped like a loop (set the budget before
 * loading scripts: a function a script saved earlier is not replaced).
 * Other long C calls are bounded by the memory cap (string.rep,
 * table.concat) or are linear (a plain find).  Cost: none for a step shorter
 * than a slice; once the hook is on, Lua 5.4 runs its hook check before
 * every instruction (the count only says how often the hook itself
 * runs), so a long step's counted part runs 2-3x slower (a time budget,
 * ml_state_set_time_budget, costs nothing); the matcher costs about 4%
 * more than Lua's (docs/embedding.md has the figures).  Without a
 * watchdog thread (none could start) the count starts at each step's
 * first instruction. */
void ml_state_set_cpu_budget(ml_State *S, unsigned long instructions);

/* Limits every step of a task to about microseconds of wall-clock time
 * (0: no limit, the default), with no cost to the VM: the budget's
 * watchdog thread measures the steps and terminates one that runs past
 * it, as the CPU budget does (a RuntimeError "task ran past its time
 * budget ..." that the script cannot catch; ml_state_set_budget_scope
 * applies).  The step is stopped between microseconds and microseconds
 * + 2 ms (the watchdog looks every millisecond), later if the system
 * runs the watchdog late; time the loop's thread spends in a host
 * function counts (the step is stopped when the function returns).  It
 * may be set together with an instruction budget: whichever runs out
 * first.  Returns ML_OK, or -EAGAIN if no watchdog thread could start. */
int ml_state_set_time_budget(ml_State *S, unsigned long microseconds);

/* What running past the CPU budget ends: the task (ML_BUDGET_TASK, the
 * default), or the whole state (ML_BUDGET_STATE): then the run returns
 * and every later ml_state_run / _run_until / _step returns -ETIMEDOUT;
 * the host closes the state.  Returns ML_OK or -EINVAL. */
enum { ML_BUDGET_TASK = 0, ML_BUDGET_STATE = 1 };
int ml_state_set_budget_scope(ml_State *S, int scope);

/* The modules ml_state_sandbox keeps when allow is NULL. */
#define ML_SANDBOX_DEFAULT                                                                  \
  "string", "table", "math", "utf8", "coroutine", "asyncio", "json", "os.time", "os.clock", \
    "os.date", "os.difftime"

/* Restricts what scripts of S can reach, for untrusted code: default
 * deny.  Scripts get new globals holding only what allow names (NULL:
 * ML_SANDBOX_DEFAULT), while the stdlib keeps running in the state's own.
 * allow is a NULL-terminated list of:
 *  - a library or module name ("string", "os", "io", "debug", "package",
 *    "asyncio", "socket", "asyncio.streams", ...): kept whole (the
 *    standard libraries as copies, so a script cannot change what the
 *    stdlib calls); naming a module grants what it needs ("socket" turns
 *    networking on);
 *  - "lib.field" to keep one function of a library ("os.clock");
 *  - a switch: "net" (sockets, streams, transports, name lookups),
 *    "process" (subprocesses, os.execute), "signal" (signal handlers),
 *    "thread" (work on threads), "file" (io, loadfile, dofile, os.remove,
 *    os.rename, os.tmpname).
 * A stdlib module is reachable only if everything it needs is allowed (the
 * build derives what each needs from the module list); the others are
 * never loaded, so a sandboxed state is also cheaper.  Internal modules
 * (asyncio.core, asyncio._*) are reachable by no path: not by require,
 * not in package (which scripts see only if "package" is allowed, and then
 * only what they loaded), not through getmetatable("") (false).  Always:
 * load takes text chunks only, string.dump is gone, collectgarbage takes
 * only "collect", "count", "step" and "isrunning", __gc and xpcall message
 * handlers run under the CPU budget (ml_state_set_cpu_budget), so does
 * pattern matching (string.find, match, gmatch, gsub count their steps),
 * and require never reads files.  The base functions, `await` and every
 * module the host registers, before or after, stay (a global set with
 * ml_state_register before the sandbox does not: register globals
 * after it).  Call it once, before loading
 * untrusted code; it cannot be undone.  Returns ML_OK, -EINVAL (already
 * sandboxed) or -ENOMEM. */
int ml_state_sandbox(ml_State *S, const char *const *allow);

/* ---- The dialect ------------------------------------------------------ */

/* Translates src[0..len), Lua 5.4 with async/await, into the plain Lua
 * that moonloop loads (what `moonloop --emit` prints): every token stays
 * on its line.  chunkname names the source in error messages ("file.lua";
 * a leading '@' or '=' is dropped; NULL: "?").  Needs no state.  On
 * success *out is a NUL-terminated malloc'd string the caller frees with
 * free(), *outlen (if outlen is not NULL) its length, and ML_OK is
 * returned.  On failure *out is NULL and the message, Lua-style
 * ("file.lua:3: 'function' expected after 'async' near 'x'"), is written
 * to err[0..errsz) (if err is not NULL); returns -EINVAL (a syntax error,
 * or src or out NULL) or -ENOMEM. */
int ml_dialect_translate(const char *src, size_t len, const char *chunkname, char **out,
                         size_t *outlen, char *err, size_t errsz);

/* Reads the whole file at path (NULL: standard input) for
 * ml_dialect_translate or ml_load_string, as ml_load_file reads it.
 * Returns its bytes, NUL-terminated, in malloc'd memory the caller frees
 * with free(), and *len (if len is not NULL) their count; or NULL with
 * errno set.  Needs no state. */
char *ml_file_read(const char *path, size_t *len);

/* The i-th (from 0) reserved word of Lua 5.4, in alphabetical order, or
 * NULL past the last: for a host's completion or printing of names.
 * "async" and "await" are contextual keywords, not reserved (a field or
 * variable may be named so): they are not among them.  Needs no state. */
const char *ml_dialect_keyword(int i);

#ifdef __cplusplus
}
#endif
#endif
