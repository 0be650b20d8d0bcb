/* _stream.c: asyncio._stream, StreamReader and StreamWriter, the hot path of the
 * streams API, in C over a stream-mode transport (net.h).
 *
 * A reader method looks at the transport's read buffer first (readline
 * and readuntil search it with memchr/memmem, remembering how far they
 * looked); only when it lacks data does the task park as the transport's
 * one reader, with no allocation, until the read watcher has appended
 * more.  The cancel hook unparks it, so wait_for(reader:readline(), t)
 * leaves the stream usable.  Reader and writer are small tables that hold
 * the transport at [1], in the array part (the writer also as
 * `transport`): a private light-userdata key would cost a hash lookup on
 * every method call (docs/performance.md, "Echo"). */
#include <errno.h>
#include <string.h>
#include "socket/net.h"

#define ML_READER "asyncio.StreamReader"
#define ML_WRITER "asyncio.StreamWriter"
#define DEFAULT_LIMIT (64 * 1024)

/* The transport of the reader or writer table at 1, or a type error.
 * [-0, +1] leaves the transport on the stack.  This runs on every call
 * of every method: one array read and ml__conn_test, no registry. */
static ml_Conn *stream_conn(lua_State *L, const char *what) {
  ml_Conn *c;
  if (lua_type(L, 1) != LUA_TTABLE) luaL_typeerror(L, 1, what);
  lua_rawgeti(L, 1, 1);
  c = ml__conn_test(L, -1);
  if (c == NULL || c->kind != ML_CONN_STREAM) luaL_typeerror(L, 1, what);
  return c;
}

/* Argument errors of the async methods name the method fn: they run in
 * the frame of __awmeth (or of a Coroutine awaited later), where
 * luaL_argerror would name '__awmeth' or '?'.  Arguments count as a
 * method call's: self is index 1.  Never return. */
static int async_argerror(lua_State *L, const char *fn, int idx, const char *msg) {
  if (idx == 1) return luaL_error(L, "calling '%s' on bad self (%s)", fn, msg);
  return ml__net_argerror(L, fn, idx, msg);
}

static int async_typeerror(lua_State *L, const char *fn, int idx, const char *tname) {
  return async_argerror(L, fn, idx,
                        lua_pushfstring(L, "%s expected, got %s", tname, luaL_typename(L, idx)));
}

/* Fixes the stack to nargs values and the transport after them, at
 * nargs + 1, where the continuations find it; a bad self is an error
 * naming the async method fn (NULL: a plain method, luaL_typeerror).
 * [-?, +?]: the stack ends exactly nargs + 1 values high. */
static ml_Conn *setup(lua_State *L, int nargs, const char *what, const char *fn) {
  ml_Conn *c;
  if (fn == NULL) {
    c = stream_conn(L, what);
  } else {
    if (lua_type(L, 1) != LUA_TTABLE) async_typeerror(L, fn, 1, what);
    lua_rawgeti(L, 1, 1);
    c = ml__conn_test(L, -1);
    if (c == NULL || c->kind != ML_CONN_STREAM) async_typeerror(L, fn, 1, what);
  }
  if (lua_gettop(L) != nargs + 1) {
    lua_pop(L, 1);
    lua_settop(L, nargs);
    lua_rawgeti(L, 1, 1);
  }
  return c;
}

/* [-0, +1] pushes IncompleteReadError(the first n bytes, taken; expected,
 * nil if < 0) and raises it: never returns. */
static int raise_incomplete(lua_State *L, ml_Conn *c, size_t n, lua_Integer expected) {
  ml__exc_push_class(L, "IncompleteReadError");
  lua_pushlstring(L, n ? c->rbuf.data + c->rbuf.off : "",
                  n); /* data is NULL before the first byte */
  ml__bq_consume(&c->rbuf, n);
  ml__conn_update_reading(c);
  if (expected < 0) lua_pushnil(L);
  else lua_pushinteger(L, expected);
  lua_call(L, 2, 1);
  return lua_error(L);
}

/* [-0, +1] pushes LimitOverrunError(msg, consumed) and raises it: never
 * returns. */
static int raise_overrun(lua_State *L, const char *msg, size_t consumed) {
  ml__exc_push_class(L, "LimitOverrunError");
  lua_pushstring(L, msg);
  lua_pushinteger(L, (lua_Integer)consumed);
  lua_call(L, 2, 1);
  return lua_error(L);
}

/* Raises the exception that ended the stream (transport at cidx), if any.
 * [-0, +0] when it returns. */
static void check_exc(lua_State *L, int cidx, ml_Conn *c) {
  if (c->has_exc || c->err) {
    ml__conn_push_exc(L, cidx, c);
    lua_error(L);
  }
}

/* [-0, +1] pushes n bytes from the front of the buffer and drops them. */
static void take(lua_State *L, ml_Conn *c, size_t n) {
  lua_pushlstring(L, c->rbuf.data + c->rbuf.off, n);
  ml__bq_consume(&c->rbuf, n);
  ml__bq_trim(&c->rbuf, 2 * c->limit + 65536);
  ml__conn_update_reading(c);
}

/* Cancel hook of a parked reader: unparks it.  [-0, +0] */
static int reader_hook(lua_State *L, ml_Task *t, void *ud) {
  ml_Conn *c = ud;
  (void)L;
  if (c->reader == t) {
    c->reader = NULL;
    ml__conn_update_reading(c);
  }
  return 0;
}

/* Parks the running task until more data, EOF or an error arrives.
 * [-0, +0]: k then runs on the stack as it is. */
static int wait_data(lua_State *L, ml_Conn *c, lua_KContext ctx, lua_KFunction k,
                     const char *what) {
  ml__task_check_suspendable(L);
  if (c->reader)
    return ml__exc_raise(L, "RuntimeError",
                         "%s() called while another coroutine is already waiting for incoming data",
                         what);
  c->reader = ml__task_current(L);
  ml__conn_update_reading(c);
  return ml__task_suspend(L, reader_hook, c, ctx, k);
}

/* ---------------------------------------------------------------- */
/* Reading.                                                           */

/* read(n): up to n bytes (n < 0: everything up to EOF); "" at EOF.
 * Stack: 1 reader, 2 n, 3 transport.  [-0, +1] pushes the bytes, or
 * parks (wait_data). */
static int read_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Conn *c = lua_touserdata(L, 3);
  lua_Integer n = lua_tointeger(L, 2);
  (void)status;
  (void)ctx;
  check_exc(L, 3, c);
  if (n == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  if (n < 0) {
    if (!c->eof) return wait_data(L, c, 0, read_k, "read");
    take(L, c, c->rbuf.len);
    return 1;
  }
  if (c->rbuf.len == 0) {
    if (!c->eof) return wait_data(L, c, 0, read_k, "read");
    lua_pushliteral(L, "");
    return 1;
  }
  take(L, c, c->rbuf.len < (size_t)n ? c->rbuf.len : (size_t)n);
  return 1;
}

/* readexactly(n): exactly n bytes, or IncompleteReadError(partial, n).
 * Stack: 1 reader, 2 n, 3 transport.  [-0, +1] pushes the bytes, or
 * parks. */
static int readexactly_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Conn *c = lua_touserdata(L, 3);
  lua_Integer n = lua_tointeger(L, 2);
  (void)status;
  (void)ctx;
  check_exc(L, 3, c);
  if (c->rbuf.len >= (size_t)n) {
    take(L, c, (size_t)n);
    return 1;
  }
  if (c->eof) return raise_incomplete(L, c, c->rbuf.len, n);
  return wait_data(L, c, 0, readexactly_k, "readexactly");
}

enum { U_FOUND, U_WAIT };

/* Looks for the separator(s) at 2 (a string or a list of strings) from
 * *offset on.  Returns U_FOUND with the chunk pushed and taken, or U_WAIT
 * after updating *offset; raises LimitOverrunError (data kept) and, at
 * EOF, IncompleteReadError (data taken).  [-0, +1|0] */
static int until_core(lua_State *L, ml_Conn *c, size_t *offset) {
  const char *buf = c->rbuf.data + c->rbuf.off;
  size_t buflen = c->rbuf.len, mstart = 0, mend = 0, minlen, maxlen;
  int found = 0;
  if (lua_type(L, 2) == LUA_TSTRING) {
    size_t sl;
    const char *sep = lua_tolstring(L, 2, &sl);
    minlen = maxlen = sl;
    if (buflen >= *offset + sl) {
      const char *p = sl == 1 ? memchr(buf + *offset, sep[0], buflen - *offset)
                              : memmem(buf + *offset, buflen - *offset, sep, sl);
      if (p) {
        found = 1;
        mstart = (size_t)(p - buf);
        mend = mstart + sl;
      }
    }
  } else {
    lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    minlen = (size_t)-1;
    maxlen = 0;
    for (lua_Integer i = 1; i <= n; i++) {
      size_t sl;
      lua_rawgeti(L, 2, i);
      const char *sep = lua_tolstring(L, -1, &sl);
      lua_pop(L, 1); /* the table keeps the string */
      if (sl < minlen) minlen = sl;
      if (sl > maxlen) maxlen = sl;
      if (buflen < *offset + sl) continue;
      const char *p = memmem(buf + *offset, buflen - *offset, sep, sl);
      if (p) {
        size_t e = (size_t)(p - buf) + sl;
        /* The match that ends first; of two that end together, the
         * shorter separator's, as CPython sorts them by length: that
         * start is what the limit is checked against. */
        if (!found || e < mend || (e == mend && (size_t)(p - buf) > mstart)) {
          found = 1;
          mend = e;
          mstart = (size_t)(p - buf);
        }
      }
    }
  }
  if (found) {
    if (mstart > c->limit)
      return raise_overrun(L, "Separator is found, but chunk is longer than limit", mstart);
    take(L, c, mend);
    return U_FOUND;
  }
  if (buflen >= *offset + minlen) {
    *offset = buflen + 1 > maxlen ? buflen + 1 - maxlen : 0;
    if (*offset > c->limit)
      return raise_overrun(L, "Separator is not found, and chunk exceed the limit", *offset);
  }
  if (c->eof) return raise_incomplete(L, c, buflen, -1);
  return U_WAIT;
}

/* readuntil(sep): stack 1 reader, 2 separator(s), 3 transport.  [-0, +1]
 * pushes the chunk, separator included, or parks. */
static int readuntil_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Conn *c = lua_touserdata(L, 3);
  size_t offset = (size_t)ctx;
  (void)status;
  check_exc(L, 3, c);
  if (until_core(L, c, &offset) == U_FOUND) return 1;
  return wait_data(L, c, (lua_KContext)offset, readuntil_k, "readuntil");
}

/* readline(): stack 1 reader, 2 "\n", 3 transport, 4 true when called as
 * the lines() iterator (nil instead of "" at EOF).  [-0, +1] pushes the
 * line, or parks. */
static int readline_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Conn *c = lua_touserdata(L, 3);
  size_t offset = (size_t)ctx;
  const char *buf;
  int iter = lua_toboolean(L, 4);
  (void)status;
  check_exc(L, 3, c);
  buf = c->rbuf.data + c->rbuf.off;
  {
    const char *p = c->rbuf.len > offset ? memchr(buf + offset, '\n', c->rbuf.len - offset) : NULL;
    if (p) {
      size_t mstart = (size_t)(p - buf);
      if (mstart <= c->limit) {
        take(L, c, mstart + 1);
        return 1;
      }
      /* The line is too long: drop it and its newline, as asyncio does. */
      ml__bq_consume(&c->rbuf, mstart + 1);
      ml__conn_update_reading(c);
      return ml__exc_raise(L, "ValueError", "Separator is found, but chunk is longer than limit");
    }
  }
  offset = c->rbuf.len;
  if (offset > c->limit) {
    ml__bq_consume(&c->rbuf, c->rbuf.len);
    ml__conn_update_reading(c);
    return ml__exc_raise(L, "ValueError", "Separator is not found, and chunk exceed the limit");
  }
  if (c->eof) {
    if (c->rbuf.len == 0 && iter) {
      lua_pushnil(L);
      return 1;
    }
    take(L, c, c->rbuf.len); /* the partial last line */
    return 1;
  }
  return wait_data(L, c, (lua_KContext)offset, readline_k, "readline");
}

/* The entry points: async functions (calling one makes a Coroutine;
 * `await reader:readline()` runs it inline with none, see coro.c), whose
 * bodies are the continuations above. */

/* await r:read(n = -1) -> bytes ("" at EOF) */
static int reader_read(lua_State *L) {
  setup(L, 2, "StreamReader", "read");
  lua_Integer n = lua_isnil(L, 2) ? -1 : ml__net_checkinteger(L, "read", 2);
  if (!lua_isinteger(L, 2)) {
    lua_pushinteger(L, n);
    lua_replace(L, 2);
  }
  return read_k(L, LUA_OK, 0);
}

/* await r:readexactly(n) -> bytes */
static int reader_readexactly(lua_State *L) {
  setup(L, 2, "StreamReader", "readexactly");
  lua_Integer n = ml__net_checkinteger(L, "readexactly", 2);
  if (n < 0) return ml__exc_raise(L, "ValueError", "readexactly size can not be less than zero");
  return readexactly_k(L, LUA_OK, 0);
}

/* await r:readuntil(sep = "\n" | {sep, ...}) -> bytes, separator included */
static int reader_readuntil(lua_State *L) {
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 1);
    lua_pushliteral(L, "\n");
  }
  if (lua_type(L, 2) == LUA_TSTRING) {
    if (lua_rawlen(L, 2) == 0)
      return ml__exc_raise(L, "ValueError", "Separator should be at least one-byte string");
  } else if (lua_type(L, 2) == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    if (n == 0)
      return ml__exc_raise(L, "ValueError", "Separator should contain at least one element");
    for (lua_Integer i = 1; i <= n; i++) {
      if (lua_rawgeti(L, 2, i) != LUA_TSTRING)
        return async_argerror(L, "readuntil", 2, "list of strings expected");
      if (lua_rawlen(L, -1) == 0)
        return ml__exc_raise(L, "ValueError", "Separator should be at least one-byte string");
      lua_pop(L, 1);
    }
  } else {
    return async_typeerror(L, "readuntil", 2, "string or list of strings");
  }
  setup(L, 2, "StreamReader", "readuntil");
  return readuntil_k(L, LUA_OK, 0);
}

/* await r:readline() -> line ("" at EOF) */
static int reader_readline(lua_State *L) {
  setup(L, 1, "StreamReader", "readline");
  lua_pushliteral(L, "\n");
  lua_insert(L, 2);
  lua_pushnil(L);
  return readline_k(L, LUA_OK, 0);
}

/* The iterator lines() returns: each call reads one line; nil at EOF.
 * iter() -> line | nil */
static int lines_iter(lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushliteral(L, "\n");
  stream_conn(L, "StreamReader");
  lua_pushboolean(L, 1);
  return readline_k(L, LUA_OK, 0);
}

/* r:lines() -> iterator (for line in r:lines() do ... end, in a task) */
static int reader_lines(lua_State *L) {
  stream_conn(L, "StreamReader");
  lua_settop(L, 1);
  lua_pushcclosure(L, lines_iter, 1);
  return 1;
}

/* r:at_eof() -> boolean: EOF seen and the buffer empty */
static int reader_at_eof(lua_State *L) {
  ml_Conn *c = stream_conn(L, "StreamReader");
  lua_pushboolean(L, c->eof && c->rbuf.len == 0);
  return 1;
}

/* r:exception() -> the exception that ended the stream, or nil */
static int reader_exception(lua_State *L) {
  ml_Conn *c = setup(L, 1, "StreamReader", NULL);
  ml__conn_push_exc(L, 2, c);
  return 1;
}

/* r:set_exception(exc) -> nothing; wakes a parked reader. */
static int reader_set_exception(lua_State *L) {
  ml_Conn *c = setup(L, 2, "StreamReader", NULL);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 3, XUV_EXC);
  c->has_exc = !lua_isnil(L, 2);
  if (c->reader) {
    ml_Task *t = c->reader;
    c->reader = NULL;
    ml__task_wake(t);
  }
  return 0;
}

/* r:feed_data(data) -> nothing: for readers without a socket (and tests). */
static int reader_feed_data(lua_State *L) {
  ml_Conn *c = stream_conn(L, "StreamReader");
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  if (c->eof) return ml__exc_raise(L, "RuntimeError", "feed_data after feed_eof");
  if (n == 0) return 0;
  if (ml__bq_add(&c->rbuf, p, n) < 0) return ml__exc_raise(L, "MemoryError", "read buffer");
  if (c->reader) {
    ml_Task *t = c->reader;
    c->reader = NULL;
    ml__task_wake(t);
  }
  ml__conn_update_reading(c);
  return 0;
}

/* r:feed_eof() -> nothing */
static int reader_feed_eof(lua_State *L) {
  ml_Conn *c = stream_conn(L, "StreamReader");
  c->eof = 1;
  if (c->reader) {
    ml_Task *t = c->reader;
    c->reader = NULL;
    ml__task_wake(t);
  }
  ml__conn_update_reading(c);
  return 0;
}

/* __tostring(r) -> string */
static int reader_tostring(lua_State *L) {
  ml_Conn *c = stream_conn(L, "StreamReader");
  lua_pushfstring(L, "<StreamReader %d bytes%s%s>", (int)c->rbuf.len, c->eof ? " eof" : "",
                  c->reader ? " waiting" : "");
  return 1;
}

/* ---------------------------------------------------------------- */
/* Writing.                                                           */

/* w:write(data) -> nothing */
static int writer_write(lua_State *L) {
  ml_Conn *c = stream_conn(L, "StreamWriter");
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  if (c->eof_req) return ml__exc_raise(L, "RuntimeError", "Cannot call write() after write_eof()");
  if (c->sendfile == ML_SENDFILE_NATIVE) return ml__exc_raise(L, "RuntimeError", ML_SENDFILE_BUSY);
  if (ml__conn_write(L, c, p, n) < 0) return ml__exc_raise(L, "MemoryError", "write buffer");
  return 0;
}

/* w:writelines(list) -> nothing */
static int writer_writelines(lua_State *L) {
  return ml__conn_writelines(L, stream_conn(L, "StreamWriter"));
}

/* Cancel hook of drain() and wait_closed(): ud is the waiter list the
 * task is in.  [-0, +0] */
static int waiters_hook(lua_State *L, ml_Task *t, void *ud) {
  (void)L;
  ml__waiters_remove(ud, t);
  return 0;
}

/* drain(): stack 1 writer, 2 transport.  [-0, +0] returns nothing, or
 * parks until the write buffer drains. */
static int drain_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Conn *c = lua_touserdata(L, 2);
  (void)status;
  (void)ctx;
  check_exc(L, 2, c);
  /* Closing (close() was called, or the peer is gone) counts as lost, as
   * asyncio's drain() raises once is_closing(). */
  if (c->lost || c->closing) return ml__exc_raise(L, "ConnectionResetError", "Connection lost");
  if (!c->wpaused) return 0;
  ml__task_check_suspendable(L);
  if (ml__waiters_add(c, &c->drainers, ml__task_current(L)) < 0)
    return ml__exc_raise(L, "MemoryError", "drain waiters");
  return ml__task_suspend(L, waiters_hook, &c->drainers, 0, drain_k);
}

/* await w:drain() -> nothing */
static int writer_drain(lua_State *L) {
  setup(L, 1, "StreamWriter", "drain");
  return drain_k(L, LUA_OK, 0);
}

/* wait_closed(): until connection_lost; raises the error that ended the
 * connection, as asyncio does.  Stack: 1 writer, 2 transport.  [-0, +0]
 * returns nothing, or parks. */
static int wait_closed_k(lua_State *L, int status, lua_KContext ctx) {
  ml_Conn *c = lua_touserdata(L, 2);
  (void)status;
  (void)ctx;
  if (c->lost || c->fd < 0) {
    if (c->err || c->has_exc) check_exc(L, 2, c);
    return 0;
  }
  ml__task_check_suspendable(L);
  if (ml__waiters_add(c, &c->closers, ml__task_current(L)) < 0)
    return ml__exc_raise(L, "MemoryError", "close waiters");
  return ml__task_suspend(L, waiters_hook, &c->closers, 0, wait_closed_k);
}

/* await w:wait_closed() -> nothing */
static int writer_wait_closed(lua_State *L) {
  setup(L, 1, "StreamWriter", "wait_closed");
  return wait_closed_k(L, LUA_OK, 0);
}

/* w:close() -> nothing */
static int writer_close(lua_State *L) {
  ml__conn_close(stream_conn(L, "StreamWriter"), 0);
  return 0;
}

/* w:is_closing() -> boolean */
static int writer_is_closing(lua_State *L) {
  lua_pushboolean(L, stream_conn(L, "StreamWriter")->closing);
  return 1;
}

/* w:write_eof() -> nothing */
static int writer_write_eof(lua_State *L) {
  ml_Conn *c = stream_conn(L, "StreamWriter");
  if (c->layer) return ml__exc_raise(L, "NotImplementedError", "SSL doesn't support half-closes");
  ml__conn_write_eof(c);
  return 0;
}

/* w:can_write_eof() -> boolean */
static int writer_can_write_eof(lua_State *L) {
  ml_Conn *c = stream_conn(L, "StreamWriter");
  lua_pushboolean(L, (c->is_sock || c->pipe == ML_PIPE_WRITE) && c->layer == NULL);
  return 1;
}

/* w:get_extra_info(name, default) -> value */
static int writer_get_extra_info(lua_State *L) {
  ml_Conn *c = setup(L, 3, "StreamWriter", NULL);
  return ml__conn_extra(L, 4, c, 2);
}

/* __tostring(w) -> string */
static int writer_tostring(lua_State *L) {
  ml_Conn *c = stream_conn(L, "StreamWriter");
  lua_pushfstring(L, "<StreamWriter fd=%d%s>", c->fd, c->closing ? " closing" : "");
  return 1;
}

/* A writer nobody holds any more closes its transport (asyncio's
 * StreamWriter.__del__), so a handler that forgets close() frees the fd.
 * __gc(w) -> nothing */
static int writer_gc(lua_State *L) {
  ml_Conn *c;
  if (!lua_istable(L, 1)) return 0; /* a script calling __gc on something else */
  lua_rawgeti(L, 1, 1);
  c = ml__conn_test(L, -1);
  if (c && !c->closing) ml__conn_close(c, 0);
  return 0;
}

/* ---------------------------------------------------------------- */
/* Making streams.                                                    */

/* The methods a stream's table holds itself, copied from its class: the
 * ones an echo or line protocol calls per message.  Found through the
 * metatable's __index they cost a failed lookup in the table, one in the
 * metatable and one in the class (docs/performance.md, "Echo").  Other methods, and
 * methods a script adds to the class, are still found there; a script
 * that replaces one of these in the class affects streams made after. */
static const char *const hot_reader[] = {"read", "readline", "readexactly", "readuntil", NULL};
static const char *const hot_writer[] = {"write", "drain", NULL};

/* [-0, +1] pushes a new stream table over the transport at cidx, of
 * class mt (its metatable's name), holding the hot methods, with room for
 * `extra` more fields.  Lua sizes a hash part in powers of two, so the
 * hot methods and the extras add up to 4: a reader's four methods, a
 * writer's two, its transport and start_server's _server_side flag.  An
 * idle connection holds one of each, and 8 slots where 4 do were 192
 * bytes a connection (docs/performance.md, "Idle connections"). */
static void push_stream(lua_State *L, int cidx, const char *mt, const char *const *hot, int extra) {
  int n = 0;
  while (hot[n]) n++;
  lua_createtable(L, 1, n + extra);
  lua_pushvalue(L, cidx);
  lua_rawseti(L, -2, 1);
  luaL_getmetatable(L, mt);
  lua_getfield(L, -1, "__index");
  for (; *hot; hot++) {
    lua_getfield(L, -1, *hot);
    lua_setfield(L, -4, *hot);
  }
  lua_pop(L, 1);
  lua_setmetatable(L, -2);
}

/* [-0, +2] pushes reader and writer tables over the transport at cidx. */
static void push_pair(lua_State *L, int cidx) {
  cidx = lua_absindex(L, cidx);
  push_stream(L, cidx, ML_READER, hot_reader, 0);
  push_stream(L, cidx, ML_WRITER, hot_writer, 2);
  lua_pushvalue(L, cidx);
  lua_setfield(L, -2, "transport");
}

/* [-0, +1] pushes a reader (pipe == ML_PIPE_READ) or a writer table over
 * the transport at cidx. */
void ml__stream_push(lua_State *L, int cidx, int pipe) {
  cidx = lua_absindex(L, cidx);
  if (pipe == ML_PIPE_READ) {
    push_stream(L, cidx, ML_READER, hot_reader, 0);
  } else {
    push_stream(L, cidx, ML_WRITER, hot_writer, 2);
    lua_pushvalue(L, cidx);
    lua_setfield(L, -2, "transport");
  }
}

/* [-0, +0] the limit at idx (an integer, or a table's limit field), or
 * DEFAULT_LIMIT; raises ValueError if <= 0. */
static size_t opt_limit(lua_State *L, int idx) {
  lua_Integer limit = DEFAULT_LIMIT;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    limit = luaL_checkinteger(L, idx);
  } else if (lua_istable(L, idx)) {
    if (lua_getfield(L, idx, "limit") != LUA_TNIL) limit = luaL_checkinteger(L, -1);
    lua_pop(L, 1);
  }
  if (limit <= 0) ml__exc_raise(L, "ValueError", "Limit cannot be <= 0");
  return (size_t)limit;
}

/* push_pair_p(transport) -> reader, writer: push_pair, to run protected. */
static int push_pair_p(lua_State *L) {
  push_pair(L, 1);
  return 2;
}

/* _stream(sock, limit, onlost) -> reader, writer: a stream transport over
 * the connected socket; onlost(transport) runs when it is lost.  If the
 * pair cannot be made (out of memory), the transport, which owns the
 * socket from ml__conn_new on, is aborted before the error goes on: the
 * caller can neither reach it nor close the socket under it. */
static int l_stream(lua_State *L) {
  size_t limit = opt_limit(L, 2);
  ml_Conn *c;
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  c = ml__conn_new(L, 1, ML_CONN_STREAM);
  c->limit = limit;
  lua_pushvalue(L, 3);
  lua_setiuservalue(L, 4, XUV_ONLOST);
  ml__conn_update_reading(c);
  lua_pushcfunction(L, push_pair_p); /* a light C function: no allocation */
  lua_pushvalue(L, 4);
  if (lua_pcall(L, 1, 2, 0) != LUA_OK) {
    ml__conn_close(c, 1);
    return lua_error(L);
  }
  return 2;
}

/* StreamReader([limit | {limit=}]) -> reader: fed by feed_data/feed_eof. */
static int reader_new(lua_State *L) {
  size_t limit = opt_limit(L, 2); /* 1 is the class (__call) */
  ml_Conn *c = ml__conn_new(L, 0, ML_CONN_STREAM);
  c->limit = limit;
  push_stream(L, lua_gettop(L), ML_READER, hot_reader, 0);
  return 1;
}

static const luaL_Reg reader_async[] = {
  {"read", reader_read},
  {"readline", reader_readline},
  {"readexactly", reader_readexactly},
  {"readuntil", reader_readuntil},
  {NULL, NULL},
};

static const luaL_Reg reader_sync[] = {
  {"lines", reader_lines},
  {"at_eof", reader_at_eof},
  {"exception", reader_exception},
  {"set_exception", reader_set_exception},
  {"feed_data", reader_feed_data},
  {"feed_eof", reader_feed_eof},
  {NULL, NULL},
};


static const luaL_Reg writer_sync[] = {
  {"write", writer_write},
  {"writelines", writer_writelines},
  {"close", writer_close},
  {"is_closing", writer_is_closing},
  {"write_eof", writer_write_eof},
  {"can_write_eof", writer_can_write_eof},
  {"get_extra_info", writer_get_extra_info},
  {NULL, NULL},
};

static const luaL_Reg writer_async[] = {
  {"drain", writer_drain},
  {"wait_closed", writer_wait_closed},
  {NULL, NULL},
};

/* [-0, +1] pushes the module table (StreamReader, StreamWriter, _stream). */
int luaopen_asyncio__stream(lua_State *L) {
  luaL_requiref(L, "asyncio._transport", luaopen_asyncio__transport, 0);
  lua_pop(L, 1);
  lua_newtable(L); /* the module */

  luaL_newmetatable(L, ML_READER);
  lua_newtable(L); /* methods = the class */
  ml__net_setfuncs(L, -1, "StreamReader.", reader_sync, reader_async);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_pushcfunction(L, reader_tostring);
  lua_setfield(L, -3, "__tostring");
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, reader_new);
  lua_setfield(L, -2, "__call");
  lua_setmetatable(L, -2);
  lua_setfield(L, -3, "StreamReader");
  lua_pop(L, 1);

  luaL_newmetatable(L, ML_WRITER);
  lua_newtable(L);
  ml__net_setfuncs(L, -1, "StreamWriter.", writer_sync, writer_async);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  lua_pushcfunction(L, writer_tostring);
  lua_setfield(L, -3, "__tostring");
  lua_pushcfunction(L, writer_gc);
  lua_setfield(L, -3, "__gc");
  lua_setfield(L, -3, "StreamWriter");
  lua_pop(L, 1);

  lua_pushcfunction(L, l_stream);
  lua_setfield(L, -2, "_stream");
  return 1;
}
