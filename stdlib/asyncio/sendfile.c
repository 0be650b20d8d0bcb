/* sendfile.c: loop:sock_sendfile(sock, file, offset, count, opts) and
 * loop:sendfile(transport, file, offset, count, opts), asyncio's
 * semantics (docs/net.md "Sending files"); registered as async loop
 * methods by _net.c.
 *
 * The file is a Lua io file handle on a seekable file.  Its bytes go out
 * by sendfile(2) when the file is a regular file and the socket a plain
 * stream socket ("native"), else by pread(2) into a buffer of the call
 * and send(2) or the transport's write ("fallback", as for TLS).  Reads
 * are at explicit offsets: the file's own position is not used (offset
 * defaults to 0, as in Python) but set to offset + bytes sent at the end,
 * after stdio's buffer is flushed first.
 *
 * One call allocates its state (Op) and, for the fallback, one buffer;
 * nothing per chunk.  The task parks on the socket's write watcher (or,
 * for a transport's queue, on c->flushwait) with ml__task_suspend_always,
 * so the continuation runs on cancellation too and puts the transport
 * back (reading resumed, writes allowed) before the error goes on.  A
 * step sends at most STEP_MAX bytes, then waits for writability: a fast
 * peer cannot keep the loop in one task. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include "socket/net.h"

#define CHUNK (64 * 1024)          /* fallback reads */
#define STEP_MAX (4 * 1024 * 1024) /* bytes sent per task step */
#define NATIVE_MAX 0x7ffff000      /* Linux's most per sendfile(2) */

/* Stack slots after args(): the loop, the socket or transport, the file,
 * offset, count, fallback, the Op, the fallback buffer (or nil). */
enum { A_SOCK = 2, A_FILE, A_OFFSET, A_COUNT, A_FALLBACK, A_OP, A_BUF, A_TOP = A_BUF };

enum { PH_NATIVE = 1, PH_FALLBACK, PH_FLUSH };

typedef struct Op {
  const char *fn; /* "sock_sendfile" or "sendfile", for errors */
  ml_Socket *s;   /* the socket written to */
  ml_Conn *c;     /* loop:sendfile's transport, or NULL */
  luaL_Stream *file;
  int fd;                        /* the file's */
  int phase;                     /* PH_* */
  int next;                      /* after PH_FLUSH: the phase to go on with */
  int fallback;                  /* may fall back from native */
  off_t start, pos;              /* the offset argument; the next byte to send */
  off_t end;                     /* offset + count, or -1: to the end of file */
  unsigned char restore_reading; /* resume the transport's reading at the end */
  unsigned char done;
} Op;

/* ---------------------------------------------------------------- */
/* Arguments.                                                         */

/* Moves an options table ({offset =, count =, fallback =}, the first
 * table after the file) into slots A_OFFSET..A_FALLBACK; a boolean at
 * A_FALLBACK is fallback too.  [-0, +0] (stack becomes A_FALLBACK) */
static void norm_args(lua_State *L, const char *fn) {
  static const char *const allowed[] = {"offset", "count", "fallback", NULL};
  int top = lua_gettop(L), t = 0;
  for (int i = A_OFFSET; i <= top && i <= A_FALLBACK; i++)
    if (lua_istable(L, i)) {
      t = i;
      break;
    }
  if (t == 0) {
    lua_settop(L, A_FALLBACK);
    return;
  }
  if (top > t) ml__exc_raise(L, "TypeError", "%s() takes its options table last", fn);
  ml__check_options(L, t, fn, allowed);
  lua_settop(L, A_FALLBACK + 1);
  lua_copy(L, t, A_FALLBACK + 1);
  lua_pushnil(L);
  lua_copy(L, -1, t);
  lua_pop(L, 1);
  for (int slot = A_OFFSET; slot <= A_FALLBACK; slot++) {
    const char *k = allowed[slot - A_OFFSET];
    if (lua_getfield(L, A_FALLBACK + 1, k) != LUA_TNIL) {
      if (!lua_isnil(L, slot))
        ml__exc_raise(L, "TypeError", "%s() got multiple values for argument '%s'", fn, k);
      lua_replace(L, slot);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_settop(L, A_FALLBACK);
}

/* Python's _check_sendfile_params for offset and count.  [-0, +0] */
static void check_range(lua_State *L, Op *op) {
  int ok;
  lua_Integer off = 0, count = 0;
  if (!lua_isnil(L, A_OFFSET)) {
    off = lua_tointegerx(L, A_OFFSET, &ok);
    if (!ok)
      ml__exc_raise(L, "TypeError", "offset must be a non-negative integer (got %s)",
                    ml__tostring(L, A_OFFSET));
    if (off < 0)
      ml__exc_raise(L, "ValueError", "offset must be a non-negative integer (got %I)", off);
  }
  if (!lua_isnil(L, A_COUNT)) {
    count = lua_tointegerx(L, A_COUNT, &ok);
    if (!ok)
      ml__exc_raise(L, "TypeError", "count must be a positive integer (got %s)",
                    ml__tostring(L, A_COUNT));
    if (count <= 0)
      ml__exc_raise(L, "ValueError", "count must be a positive integer (got %I)", count);
    if (count > INT64_MAX - off) ml__exc_raise(L, "ValueError", "offset + count out of range");
  }
  op->start = op->pos = (off_t)off;
  op->end = count ? (off_t)(off + count) : -1;
  if (lua_isnil(L, A_FALLBACK)) op->fallback = 1;
  else if (lua_isboolean(L, A_FALLBACK)) op->fallback = lua_toboolean(L, A_FALLBACK);
  else
    ml__exc_raise(L, "TypeError", "%s() fallback must be a boolean, got %s", op->fn,
                  luaL_typename(L, A_FALLBACK));
}

/* The file argument: an open io file handle on a seekable file.
 * Flushes what stdio buffered for writing, so the fd holds it.  [-0, +0] */
static void check_file(lua_State *L, Op *op) {
  luaL_Stream *f = luaL_testudata(L, A_FILE, LUA_FILEHANDLE);
  if (f == NULL) ml__net_typeerror(L, op->fn, A_FILE, "io file handle");
  if (f->closef == NULL) ml__exc_raise(L, "ValueError", "I/O operation on closed file");
  op->file = f;
  op->fd = fileno(f->f);
  if (lseek(op->fd, 0, SEEK_CUR) < 0)
    ml__net_argerror(L, op->fn, A_FILE, "the file is not seekable (sendfile reads it at offsets)");
  fflush(f->f);
}

/* [-0, +1] pushes the Op of a call (its slot A_OP), and nil at A_BUF. */
static Op *new_op(lua_State *L, const char *fn) {
  Op *op = lua_newuserdatauv(L, sizeof *op, 0);
  memset(op, 0, sizeof *op);
  op->fn = fn;
  lua_pushnil(L);
  return op;
}

/* ---------------------------------------------------------------- */
/* The end of a call: every way out goes through here.                */

/* Puts the transport back and sets the file's position to offset + bytes
 * sent (if any were).  Idempotent.  [-0, +0] */
static void finish(Op *op) {
  if (op->done) return;
  op->done = 1;
  if (op->c) {
    ml_Conn *c = op->c;
    c->sendfile = 0;
    c->flushwait = NULL;
    if (op->restore_reading && c->paused && !c->closing) {
      c->paused = 0;
      ml__conn_update_reading(c);
      ml__sched_poll_soon(c->S);
    }
  }
  if (op->pos > op->start && op->file->closef != NULL) fseek(op->file->f, op->pos, SEEK_SET);
}

static int done(lua_State *L, Op *op) {
  finish(op);
  lua_pushinteger(L, (lua_Integer)(op->pos - op->start));
  return 1;
}

static int fail_errno(lua_State *L, Op *op, int err) {
  finish(op);
  return ml__exc_raise_errno(L, err, NULL);
}

static int fail(lua_State *L, Op *op, const char *cls, const char *msg) {
  finish(op);
  return ml__exc_raise(L, cls, "%s", msg);
}

/* ---------------------------------------------------------------- */
/* The steps.                                                         */

static int step_k(lua_State *L, int status, lua_KContext ctx);

/* Bytes still to send, at most max (max when there is no count). */
static size_t want(const Op *op, size_t max) {
  if (op->end < 0) return max;
  off_t left = op->end - op->pos;
  return left < (off_t)max ? (size_t)left : max;
}

/* What stops a step before it sends: the file or the socket closed, the
 * transport closing.  Raises; returns 0 if the step may go on. */
static int check_open(lua_State *L, Op *op) {
  if (op->file->closef == NULL) return fail(L, op, "ValueError", "I/O operation on closed file");
  if (op->c && (op->c->closing || op->c->lost || op->c->fd < 0))
    return fail(L, op, "ConnectionError", "Connection closed by peer");
  if (op->s->fd < 0) return fail_errno(L, op, EBADF);
  return 0;
}

static int park_write(lua_State *L, Op *op) { return ml__sock_park(L, op->s, 1, 1, 0, step_k); }

/* The cancel hook of a task waiting on the transport's queue. */
static int flush_hook(lua_State *L, ml_Task *t, void *ud) {
  Op *op = ud;
  (void)L;
  if (op->c->flushwait == t) op->c->flushwait = NULL;
  return 0;
}

/* Waits until the transport's queue holds at most at bytes, then goes on
 * with phase next. */
static int wait_queue(lua_State *L, Op *op, size_t at, int next) {
  op->next = next;
  if (ml__conn_queued(op->c) <= at) {
    op->phase = next;
    return step_k(L, LUA_OK, 0);
  }
  op->phase = PH_FLUSH;
  op->c->flush_at = at;
  op->c->flushwait = ml__task_current(L);
  return ml__task_suspend_always(L, flush_hook, op, 0, step_k);
}

/* Native sendfile is not possible: fall back, or raise. */
static int not_available(lua_State *L, Op *op, const char *why) {
  if (!op->fallback) return fail(L, op, "SendfileNotAvailableError", why);
  if (op->c) op->c->sendfile = ML_SENDFILE_ON; /* write() is allowed again, as in asyncio */
  op->phase = PH_FALLBACK;
  return step_k(L, LUA_OK, 0);
}

static int native_step(lua_State *L, Op *op) {
  size_t sent = 0;
  while (sent < STEP_MAX) {
    size_t n = want(op, NATIVE_MAX);
    off_t o = op->pos;
    if (n == 0) return done(L, op);
    ssize_t r = sendfile(op->s->fd, op->fd, &o, n);
    if (r > 0) {
      op->pos += r;
      sent += (size_t)r;
      continue;
    }
    if (r == 0) return done(L, op); /* end of file */
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return park_write(L, op);
    if (op->pos == op->start && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP ||
                                 errno == EOVERFLOW || errno == ESPIPE))
      return not_available(L, op, "os.sendfile call failed");
    return fail_errno(L, op, errno);
  }
  return park_write(L, op);
}

/* [-0, +0] the fallback's buffer (made on first use at A_BUF). */
static char *buffer(lua_State *L) {
  if (lua_isnil(L, A_BUF)) {
    lua_newuserdatauv(L, CHUNK, 0);
    lua_replace(L, A_BUF);
  }
  return lua_touserdata(L, A_BUF);
}

/* Reads up to n bytes at the file's op->pos into buf; 0 at end of file. */
static ssize_t read_at(lua_State *L, Op *op, char *buf, size_t n) {
  ssize_t r;
  do r = pread(op->fd, buf, n, op->pos);
  while (r < 0 && errno == EINTR);
  if (r < 0) fail_errno(L, op, errno);
  return r;
}

/* sock_sendfile's fallback: what the kernel does not take now is read
 * again at its offset on the next step, so nothing is kept. */
static int sock_fallback_step(lua_State *L, Op *op) {
  char *buf = buffer(L);
  size_t sent = 0;
  while (sent < STEP_MAX) {
    size_t n = want(op, CHUNK);
    if (n == 0) return done(L, op);
    ssize_t r = read_at(L, op, buf, n);
    if (r == 0) return done(L, op);
    ssize_t w;
    do w = send(op->s->fd, buf, (size_t)r, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return park_write(L, op);
      return fail_errno(L, op, errno);
    }
    op->pos += w;
    sent += (size_t)w;
  }
  return park_write(L, op);
}

/* loop:sendfile's fallback: chunks through the transport's write (its
 * TLS layer, its queue and flow control), waiting while writing is paused
 * (over the high-water mark) until the queue is back at the low mark. */
static int transport_fallback_step(lua_State *L, Op *op) {
  ml_Conn *c = op->c;
  char *buf = buffer(L);
  size_t sent = 0;
  while (sent < STEP_MAX) {
    if (c->wpaused) return wait_queue(L, op, c->low, PH_FALLBACK);
    size_t n = want(op, CHUNK);
    if (n == 0) return done(L, op);
    ssize_t r = read_at(L, op, buf, n);
    if (r == 0) return done(L, op);
    if (ml__conn_write(L, c, buf, (size_t)r) < 0) return fail(L, op, "MemoryError", "write buffer");
    op->pos += r;
    sent += (size_t)r;
    if (check_open(L, op)) return 0;
  }
  return park_write(L, op);
}

static int step_k(lua_State *L, int status, lua_KContext ctx) {
  Op *op = lua_touserdata(L, A_OP);
  (void)ctx;
  if (status != LUA_OK && status != LUA_YIELD) { /* cancelled: the error is on top */
    finish(op);
    return lua_error(L);
  }
  lua_settop(L, A_TOP);
  if (check_open(L, op)) return 0;
  switch (op->phase) {
  case PH_FLUSH:
    if (ml__conn_queued(op->c) > op->c->flush_at)
      return wait_queue(L, op, op->c->flush_at, op->next);
    op->phase = op->next;
    return step_k(L, LUA_OK, 0);
  case PH_NATIVE: return native_step(L, op);
  default: return op->c ? transport_fallback_step(L, op) : sock_fallback_step(L, op);
  }
}

/* Native is possible for a regular file (Python's "not a regular file"). */
static int regular(const Op *op) {
  struct stat st;
  return fstat(op->fd, &st) == 0 && S_ISREG(st.st_mode);
}

/* ---------------------------------------------------------------- */
/* The methods.                                                       */

/* await loop:sock_sendfile(sock, file [, offset [, count]] [, opts]) ->
 * bytes sent.  opts: {offset =, count =, fallback = true}. */
int ml__loop_sock_sendfile(lua_State *L) {
  const char *fn = "sock_sendfile";
  ml_Socket *s = ml__udata_test(L, A_SOCK, ML_UT_SOCKET);
  if (s == NULL) ml__net_typeerror(L, fn, A_SOCK, ML_SOCKET);
  if (s->fd < 0) ml__exc_raise_errno(L, EBADF, NULL);
  if (s->blocking) ml__net_argerror(L, fn, A_SOCK, "the socket must be non-blocking");
  if (s->transport) ml__net_argerror(L, fn, A_SOCK, "the socket is used by a transport");
  if (s->type != SOCK_STREAM)
    ml__exc_raise(L, "ValueError", "only SOCK_STREAM type sockets are supported");
  norm_args(L, fn);
  ml__task_check_suspendable(L);
  Op *op = new_op(L, fn);
  op->s = s;
  check_range(L, op);
  check_file(L, op);
  if (regular(op)) op->phase = PH_NATIVE;
  else return not_available(L, op, "not a regular file");
  return step_k(L, LUA_OK, 0);
}

/* await loop:sendfile(transport, file [, offset [, count]] [, opts]) ->
 * bytes sent.  A plain socket transport sends natively once its queue is
 * empty, with reading paused and write() refused meanwhile; a TLS one
 * writes the file through its layer (fallback). */
int ml__loop_sendfile(lua_State *L) {
  const char *fn = "sendfile";
  ml_Conn *c = ml__conn_test(L, A_SOCK);
  if (c == NULL) ml__net_typeerror(L, fn, A_SOCK, "transport");
  if (c->closing || c->lost || c->fd < 0) ml__exc_raise(L, "RuntimeError", "Transport is closing");
  if (c->kind == ML_CONN_DGRAM || !c->is_sock || c->sock == NULL || c->sock->type != SOCK_STREAM)
    ml__exc_raise(L, "RuntimeError", "sendfile is not supported for transport %s",
                  ml__tostring(L, A_SOCK));
  if (c->sendfile)
    ml__exc_raise(L, "RuntimeError", "another sendfile is in progress on this transport");
  if (c->eof_req) ml__exc_raise(L, "RuntimeError", "Cannot call write() after write_eof()");
  norm_args(L, fn);
  ml__task_check_suspendable(L);
  Op *op = new_op(L, fn);
  op->s = c->sock;
  check_range(L, op);
  check_file(L, op);
  if (c->layer && !op->fallback)
    ml__exc_raise(L, "RuntimeError",
                  "fallback is disabled and native sendfile is not supported for transport %s",
                  ml__tostring(L, A_SOCK));
  op->c = c;
  c->sendfile = ML_SENDFILE_ON;
  if (!c->paused) { /* as asyncio: no data_received while the file goes out */
    c->paused = 1;
    op->restore_reading = 1;
    ml__conn_update_reading(c);
  }
  if (c->layer) {
    op->phase = PH_FALLBACK;
    return step_k(L, LUA_OK, 0);
  }
  if (!regular(op)) return not_available(L, op, "not a regular file");
  c->sendfile = ML_SENDFILE_NATIVE;
  return wait_queue(L, op, 0, PH_NATIVE);
}
