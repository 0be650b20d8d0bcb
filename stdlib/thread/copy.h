/* copy.h: copying values between the Lua states of different threads
 * (copy.c), for asyncio._thread's jobs and the cross-thread calls.
 *
 * What crosses, by value: nil, booleans, numbers, strings, tables of those
 * (shared and cyclic tables keep their shape; metatables are not copied),
 * Lua functions (bytecode with debug information, and their upvalues the
 * same way), async functions (their name and function: in a worker
 * calling one makes a RemoteCoroutine for run_coroutine_threadsafe),
 * light userdata, the loop (above); a table of package.loaded crosses as its
 * name and is required again on the other side, a C function found in
 * such a table is looked up again there, and the globals table is the
 * other state's globals.  Anything else raises TypeError naming it. */
#ifndef ML_THREAD_COPY_H
#define ML_THREAD_COPY_H

#include <stddef.h>
#include "core/module.h"

/* The error of a copy that does not decode (a bug, or memory overwritten). */
#define CORRUPT_COPY "corrupt copy"

/* An encoded copy: malloc'd bytes (free p), or oom set.  home is set by
 * the caller before encoding: the wake-up of the one loop that may cross
 * in this copy (the loop the copy goes to or comes from; NULL: none).  A
 * loop crosses as a reference to its wake-up: in a worker's state it is a
 * RemoteLoop (remote.c), back in its own state the loop itself.  Whoever
 * carries the copy must keep a reference on home until it is decoded. */
typedef struct ml_Copy {
  char *p;
  size_t n, cap;
  int oom;
  ml_Wakeup *home;
} ml_Copy;

/* A lua_CFunction, to be called protected:
 * encode_p(copy, what, values...) -> nothing
 * encodes the values into the ml_Copy (a light userdata).  what names them
 * in errors: "argument" (then the first is "the function" and the others
 * "argument #n"), "result", "error".  Raises TypeError for a value that
 * cannot cross, ValueError for one nested too deeply, MemoryError. */
int ml__copy_encode_p(lua_State *L);

/* Encodes values first..last into b as ml__copy_encode_p does, without a
 * protected call, when nothing can raise: nil, booleans, numbers, strings,
 * light userdata, and (if fn, at first) a Lua function copied before whose
 * upvalues are such values or _ENV.  Returns 1 if it did, 0 with b emptied
 * if the protected encoder is needed.  [-0, +0] */
int ml__copy_fast(lua_State *L, ml_Copy *b, int first, int last, int fn);

/* A lua_CFunction, to be called protected:
 * decode_p(bytes, size) -> the values
 * pushes the values encoded at bytes (a light userdata).  Raises on a
 * corrupt copy, a module that cannot be required, or memory. */
int ml__copy_decode_p(lua_State *L);

#endif
