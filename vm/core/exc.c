/* exc.c: making and testing exception objects from C. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "exc.h"
#include "coro.h"

#define EXC_KEY "moonloop.exceptions"

/* [-0, +1] pushes the exceptions module (asyncio.exceptions), loading it
 * on first use. */
static void push_module(lua_State *L) {
  if (lua_getfield(L, LUA_REGISTRYINDEX, EXC_KEY) == LUA_TTABLE) return;
  lua_pop(L, 1);
  ml__require(L, "asyncio.exceptions");
  if (lua_type(L, -1) != LUA_TTABLE) luaL_error(L, "asyncio.exceptions did not load");
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, EXC_KEY);
}

/* [-0, +1] pushes the exception class cls; raises if there is none. */
void ml__exc_push_class(lua_State *L, const char *cls) {
  ML_STACK_MARK(L);
  push_module(L);
  lua_getfield(L, -1, cls);
  lua_remove(L, -2);
  if (lua_isnil(L, -1)) luaL_error(L, "no exception class '%s'", cls);
  ML_STACK_CHECK(L, 1);
}

/* [-0, +1] pushes cls(message formatted from fmt), or cls() if fmt is NULL. */
static void push_vexc(lua_State *L, const char *cls, const char *fmt, va_list ap) {
  ml__exc_push_class(L, cls);
  if (fmt) {
    lua_pushvfstring(L, fmt, ap);
    lua_call(L, 1, 1);
  } else {
    lua_call(L, 0, 1);
  }
}

/* [-0, +1] pushes cls(message). */
void ml__exc_push(lua_State *L, const char *cls, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_vexc(L, cls, fmt, ap);
  va_end(ap);
}

/* [-0, +1] raises cls(message): never returns. */
int ml__exc_raise(lua_State *L, const char *cls, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_vexc(L, cls, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

/* [-1, +1] pops the message on top (nil: none) and pushes cls(message). */
void ml__exc_push_with(lua_State *L, const char *cls) {
  int nil = lua_isnil(L, -1);
  ml__exc_push_class(L, cls);
  lua_insert(L, -2);
  if (nil) {
    lua_pop(L, 1);
    lua_call(L, 0, 1);
  } else {
    lua_call(L, 1, 1);
  }
}

/* [-0, +1] pushes OSError (the subclass for err)(err, "what: strerror"). */
void ml__exc_push_errno(lua_State *L, int err, const char *what) {
  char msg[256];
  if (err < 0) err = -err;
  if (what) snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  else snprintf(msg, sizeof msg, "%s", strerror(err));
  ml__exc_push_class(L, "OSError"); /* picks the subclass from errno */
  lua_pushinteger(L, err);
  lua_pushstring(L, msg);
  lua_call(L, 2, 1);
}

/* [-0, +1] raises that OSError: never returns. */
int ml__exc_raise_errno(lua_State *L, int err, const char *what) {
  ml__exc_push_errno(L, err, what);
  return lua_error(L);
}

/* [-0, +0] whether the value at idx is an instance of exception class cls. */
int ml__exc_is(lua_State *L, int idx, const char *cls) {
  int r;
  if (lua_type(L, idx) != LUA_TTABLE) return 0;
  idx = lua_absindex(L, idx);
  push_module(L);
  lua_getfield(L, -1, "isinstance");
  lua_pushvalue(L, idx);
  lua_getfield(L, -3, cls);
  lua_call(L, 2, 1);
  r = lua_toboolean(L, -1);
  lua_pop(L, 2);
  return r;
}

/* Python's errno -> OSError subclass table, with this platform's numbers. */
static const struct {
  int err;
  const char *cls;
} errno_classes[] = {
  {EAGAIN, "BlockingIOError"},
  {EALREADY, "BlockingIOError"},
  {EINPROGRESS, "BlockingIOError"},
  {EWOULDBLOCK, "BlockingIOError"},
  {EPIPE, "BrokenPipeError"},
  {ESHUTDOWN, "BrokenPipeError"},
  {ECHILD, "ChildProcessError"},
  {ECONNABORTED, "ConnectionAbortedError"},
  {ECONNREFUSED, "ConnectionRefusedError"},
  {ECONNRESET, "ConnectionResetError"},
  {EEXIST, "FileExistsError"},
  {ENOENT, "FileNotFoundError"},
  {EISDIR, "IsADirectoryError"},
  {ENOTDIR, "NotADirectoryError"},
  {EINTR, "InterruptedError"},
  {EACCES, "PermissionError"},
  {EPERM, "PermissionError"},
  {ESRCH, "ProcessLookupError"},
  {ETIMEDOUT, "TimeoutError"},
};

/* Fills asyncio.exceptions._by_errno.  [-0, +0] */
void ml__exc_init(lua_State *L) {
  size_t i;
  push_module(L);
  lua_getfield(L, -1, "_by_errno");
  for (i = 0; i < sizeof errno_classes / sizeof errno_classes[0]; i++) {
    lua_getfield(L, -2, errno_classes[i].cls);
    lua_rawseti(L, -2, errno_classes[i].err);
  }
  lua_pop(L, 2);
}

/* [-0, +1] pushes the traceback of L, without the frames of the await
 * machinery nor, given entry, the line of that C entry point. */
void ml__traceback(lua_State *L, lua_CFunction entry) {
  lua_Debug ar;
  int level = 1;
  ML_STACK_MARK(L);
  luaL_traceback(L, L, NULL, 1);
  ml__coro_clean_traceback(L); /* no __awcall frames: the user wrote await */
  if (entry == NULL) return;
  while (lua_getstack(L, level + 1, &ar)) level++;
  if (lua_getstack(L, level, &ar) && lua_getinfo(L, "f", &ar)) {
    if (lua_tocfunction(L, -1) == entry) {
      size_t len;
      const char *tb = lua_tolstring(L, -2, &len), *nl = tb + len;
      while (nl > tb && *nl != '\n') nl--;
      lua_pushlstring(L, tb, nl > tb ? (size_t)(nl - tb) : len);
      lua_replace(L, -3);
    }
    lua_pop(L, 1);
  }
  ML_STACK_CHECK(L, 1);
}

/* tostring_p(v) -> tostring(v) */
static int tostring_p(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* [-0, +1] pushes tostring of the value at idx (a fixed text if its
 * __tostring fails) and returns it. */
const char *ml__tostring(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, tostring_p);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(a %s value whose __tostring failed)", luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}
