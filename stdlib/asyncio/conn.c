/* conn.c: the connection engine under every transport (ml_Conn): the
 * read and write watchers, the write queue and flow control, delivery to
 * a protocol or a stream reader, and teardown.  No Lua-visible function
 * lives here: the Transport objects are _transport.c, the streams
 * _stream.c, the sets of tasks waiting on a transport waiters.c, the
 * addresses it keeps conn_addrs.c.  See socket/net.h for the ml_Conn
 * object and its rules.
 *
 * Reading: the read watcher is armed while the transport is open, not
 * paused, before EOF, and (stream mode) while the reader's buffer is under
 * its limit or a reader waits.  A readable event reads once into the
 * state's scratch area (or straight into rbuf when it has room) and either
 * hands the bytes to protocol.data_received (one protected call per read,
 * proto_readable; a BufferedProtocol's buffers instead, buffered.c) or
 * appends them to rbuf and wakes the waiting reader, which takes them in
 * its own task step: no Lua runs in the callback.
 *
 * Writing: write() calls send(2) at once when nothing is queued and queues
 * only what the kernel refused; the write watcher is armed only while the
 * queue is not empty.  Crossing the high-water mark pauses the protocol
 * (or makes drain() wait); flushing down to the low-water mark resumes
 * it. */
#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include "socket/net.h"

#define DEFAULT_LIMIT (64 * 1024)
#define DIRECT_READ_MIN 16384 /* read straight into rbuf when it has this much room */
#define WBUF_KEEP (64 * 1024) /* an emptied write queue keeps up to this */

enum { EVT_PAUSE = 1, EVT_RESUME, EVT_ERROR, EVT_LOST };

struct ml_Dgram {
  ml_Dgram *next;
  size_t len;
  socklen_t alen;
  struct sockaddr_storage addr;
  char data[];
};

/* ---------------------------------------------------------------- */
/* The connection's state machine (no Lua here unless said).          */

static void schedule_lost(ml_Conn *c) {
  if (c->lost || c->lost_queued) return;
  c->lost_queued = 1;
  ev_timer_set(&c->later, 0., 0.);
  ev_timer_start(ml__loop(c->S), &c->later);
}

static void dq_free(ml_Conn *c) {
  while (c->dq_head) {
    ml_Dgram *d = c->dq_head;
    c->dq_head = d->next;
    c->wbuf.alloc(c->wbuf.ud, d, sizeof *d + d->len, 0);
  }
  c->dq_tail = NULL;
  c->dq_bytes = 0;
}

static size_t wqueued(const ml_Conn *c) {
  return c->kind == ML_CONN_DGRAM ? c->dq_bytes : c->wbuf.len;
}

/* Wakes loop:sendfile's task waiting for the write queue to shrink. */
static void wake_flushwait(ml_Conn *c) {
  if (c->flushwait) {
    ml_Task *t = c->flushwait;
    c->flushwait = NULL;
    ml__task_wake(t);
  }
}

/* The teardown of every way a transport ends (failure, abort, lost,
 * collected): marks it closing, stops both watchers and drops what is
 * queued for writing. */
static void teardown(ml_Conn *c) {
  struct ev_loop *loop = ml__loop(c->S);
  c->closing = 1;
  if (ev_is_active(&c->rio)) ev_io_stop(loop, &c->rio);
  if (ev_is_active(&c->wio)) ev_io_stop(loop, &c->wio);
  ml__bq_free(&c->wbuf);
  dq_free(c);
  wake_flushwait(c);
}

/* The connection failed with err (0: it was aborted): stop everything,
 * drop the queue and deliver connection_lost(exc) soon. */
static void fatal(ml_Conn *c, int err) {
  if (c->err == 0 && !c->has_exc) c->err = err;
  teardown(c);
  schedule_lost(c);
}

int ml__conn_wants_data(ml_Conn *c) {
  int want = c->fd >= 0 && !c->closing && !c->lost && !c->paused;
  if (c->kind != ML_CONN_DGRAM) want = want && !c->eof;
  if (want && c->kind == ML_CONN_STREAM) {
    /* asyncio's StreamReaderProtocol rule: pause over twice the limit,
     * resume at the limit; a waiting reader always gets data. */
    if (c->reader) c->rpaused = 0;
    else if (c->rbuf.len > 2 * c->limit) c->rpaused = 1;
    else if (c->rbuf.len <= c->limit) c->rpaused = 0;
    want = !c->rpaused;
  }
  return want;
}

void ml__conn_update_reading(ml_Conn *c) {
  int want;
  if (c->pipe == ML_PIPE_WRITE) {
    /* Not for data: epoll reports the reader's close as an error on the
     * write end, which libev hands to the read watcher. */
    want = c->fd >= 0 && !c->lost;
    if (want && !ev_is_active(&c->rio)) ev_io_start(ml__loop(c->S), &c->rio);
    else if (!want && ev_is_active(&c->rio)) ev_io_stop(ml__loop(c->S), &c->rio);
    return;
  }
  want = ml__conn_wants_data(c);
  if (c->layer) {
    if (want) c->layer->resume(c);
    if (c->linger && c->fd >= 0 && !c->lost) want = 1;
    want = want && !c->sock_eof;
  }
  if (want && !ev_is_active(&c->rio)) ev_io_start(ml__loop(c->S), &c->rio);
  else if (!want && ev_is_active(&c->rio)) ev_io_stop(ml__loop(c->S), &c->rio);
}

void ml__conn_wake_reader(ml_Conn *c) {
  if (c->reader) {
    ml_Task *t = c->reader;
    c->reader = NULL;
    ml__task_wake(t);
  }
}

void ml__conn_fail_errno(ml_Conn *c, int err) { fatal(c, err); }


static ssize_t conn_send(ml_Conn *c, const char *p, size_t n) {
  ssize_t r;
  do r = c->is_sock ? send(c->fd, p, n, MSG_NOSIGNAL) : write(c->fd, p, n);
  while (r < 0 && errno == EINTR);
  return r;
}

void ml__conn_flush(ml_Conn *c) {
  if (c->fd < 0 || c->lost || c->wbuf.len == 0 || ev_is_active(&c->wio)) return;
  while (c->wbuf.len > 0) {
    ssize_t r = conn_send(c, c->wbuf.data + c->wbuf.off, c->wbuf.len);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      fatal(c, errno);
      return;
    }
    ml__bq_consume(&c->wbuf, (size_t)r);
  }
  if (c->wbuf.len > 0) ev_io_start(ml__loop(c->S), &c->wio);
  else if (c->closing && !c->linger) schedule_lost(c);
}

void ml__conn_unlinger(ml_Conn *c) {
  if (!c->linger) return;
  c->linger = 0;
  ml__conn_update_reading(c);
  if (c->closing && wqueued(c) == 0) schedule_lost(c);
}

ssize_t ml__conn_recv(ml_Conn *c, char *p, size_t n) {
  ssize_t r;
  do r = c->is_sock ? recv(c->fd, p, n, 0) : read(c->fd, p, n);
  while (r < 0 && errno == EINTR);
  return r;
}

static void schedule_lost(ml_Conn *c);

/* A pipe has no half-close: its write_eof closes it. */
static void do_shutdown(ml_Conn *c) {
  c->eof_sent = 1;
  if (c->fd >= 0 && c->is_sock) shutdown(c->fd, SHUT_WR);
  else if (c->pipe == ML_PIPE_WRITE) {
    c->closing = 1;
    schedule_lost(c);
  }
}

/* [-0, +0] calls a protocol event through ml__callback on L. */
static void proto_event_call(lua_State *L, ml_Conn *c, int evt, int err);

/* [-0, +0] pauses the protocol (pause_writing, protected) or the
 * stream's drain() past the high-water mark. */
static void maybe_pause_writing(lua_State *L, ml_Conn *c) {
  if (!c->wpaused && wqueued(c) > c->high) {
    c->wpaused = 1;
    if (c->kind != ML_CONN_STREAM) proto_event_call(L, c, EVT_PAUSE, 0);
  }
}

/* [-0, +0] resumes it at the low-water mark (resume_writing, or wakes
 * the drainers). */
static void maybe_resume_writing(lua_State *L, ml_Conn *c) {
  if (c->wpaused && wqueued(c) <= c->low) {
    c->wpaused = 0;
    if (c->kind == ML_CONN_STREAM) ml__waiters_wake_all(&c->drainers);
    else proto_event_call(L, c, EVT_RESUME, 0);
  }
}

/* [-0, +0] writes or queues n bytes; -ENOMEM if they could not be
 * queued.  May call pause_writing (protected). */
int ml__conn_write(lua_State *L, ml_Conn *c, const char *p, size_t n) {
  if (n == 0 || c->closing || c->lost || c->fd < 0) return 0;
  if (c->layer) {
    if (c->layer->write(L, c, p, n) < 0) return -ENOMEM;
    maybe_pause_writing(L, c);
    return 0;
  }
  if (c->wbuf.len == 0) {
    ssize_t r = conn_send(c, p, n);
    if (r < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        fatal(c, errno);
        return 0;
      }
      r = 0;
    }
    if ((size_t)r == n) return 0;
    p += r;
    n -= (size_t)r;
    if (ml__bq_add(&c->wbuf, p, n) < 0) return -ENOMEM;
    ev_io_start(ml__loop(c->S), &c->wio);
  } else if (ml__bq_add(&c->wbuf, p, n) < 0) {
    return -ENOMEM;
  }
  maybe_pause_writing(L, c);
  return 0;
}

void ml__conn_close(ml_Conn *c, int abort) {
  if (c->lost) return;
  if (abort) {
    fatal(c, 0);
    return;
  }
  if (c->closing) return;
  if (c->layer) c->layer->close(c); /* may fail the connection */
  if (c->closing) return;
  c->closing = 1;
  ml__conn_update_reading(c);
  if (wqueued(c) == 0 && !c->linger) schedule_lost(c);
}

void ml__conn_write_eof(ml_Conn *c) {
  if (c->closing || c->eof_req) return;
  c->eof_req = 1;
  if (c->wbuf.len == 0) do_shutdown(c);
}

/* Stream mode: read into rbuf and wake the reader. */
static void stream_readable(ml_Conn *c) {
  int direct = ml__bq_room(&c->rbuf) >= DIRECT_READ_MIN;
  char *dst = direct ? c->rbuf.data + c->rbuf.off + c->rbuf.len : c->scratch;
  size_t room = direct ? ml__bq_room(&c->rbuf) : c->scratch_size;
  ssize_t r = ml__conn_recv(c, dst, room);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;
    fatal(c, errno);
    return;
  }
  if (r == 0) {
    c->eof = 1;
  } else if (direct) {
    ml__bq_commit(&c->rbuf, (size_t)r);
  } else if (ml__bq_add(&c->rbuf, c->scratch, (size_t)r) < 0) {
    fatal(c, ENOMEM);
    return;
  }
  if (c->eof && c->pipe) ml__conn_close(c, 0); /* the bytes stay in rbuf */
  if (c->reader) {
    ml_Task *t = c->reader;
    c->reader = NULL;
    ml__task_wake(t);
    /* It will take the data or wait again: no pausing in between. */
    if (c->eof && ev_is_active(&c->rio)) ev_io_stop(ml__loop(c->S), &c->rio);
    return;
  }
  ml__conn_update_reading(c);
}

/* A write pipe's watcher fired: its reader went away.  What is still
 * queued cannot be delivered. */
static void wpipe_hup(ml_Conn *c) {
  if (c->wbuf.len > 0) fatal(c, EPIPE);
  else ml__conn_close(c, 0);
  if (ev_is_active(&c->rio)) ev_io_stop(ml__loop(c->S), &c->rio);
}

/* Protocol mode: reads and calls data_received (protected). */
static void proto_readable(ml_Conn *c);
/* Datagram mode: runs in protected mode (ml__callback). */
static int dgram_readable(lua_State *L);

/* With a layer: one read handed to it. */
static void layer_readable(ml_Conn *c) {
  if (c->fd < 0 || c->lost) return;
  if (ev_is_active(&c->rio)) {
    ssize_t r = ml__conn_recv(c, c->scratch, c->scratch_size);
    if (r > 0) {
      c->layer->input(c, c->scratch, (size_t)r);
      return;
    }
    if (r == 0) {
      c->sock_eof = 1;
      ev_io_stop(ml__loop(c->S), &c->rio);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      fatal(c, errno);
      return;
    }
  }
  c->layer->input(c, NULL, 0);
}

/* [-0, +0] on the main state; datagrams go through dgram_readable,
 * protected. */
static void read_cb(struct ev_loop *loop, ev_io *w, int revents) {
  ml_Conn *c = w->data;
  lua_State *L;
  (void)loop;
  (void)revents;
  if (c->pipe == ML_PIPE_WRITE) {
    wpipe_hup(c);
    return;
  }
  if (c->layer) {
    layer_readable(c);
    return;
  }
  if (c->kind == ML_CONN_STREAM) {
    stream_readable(c);
    return;
  }
  if (c->kind == ML_CONN_PROTO) {
    proto_readable(c);
    return;
  }
  L = ml__main_lua(c->S);
  lua_pushcfunction(L, dgram_readable);
  lua_pushlightuserdata(L, c);
  ml__callback(L, 1, "Exception in datagram protocol");
}

/* [-0, +0] on the main state: sends the queued datagrams;
 * error_received (protected) for each that fails. */
static void dgram_flush(ml_Conn *c) {
  lua_State *L = ml__main_lua(c->S);
  while (c->dq_head) {
    ml_Dgram *d = c->dq_head;
    ssize_t r;
    do
      r = sendto(c->fd, d->data, d->len, MSG_NOSIGNAL, d->alen ? (struct sockaddr *)&d->addr : NULL,
                 d->alen);
    while (r < 0 && errno == EINTR);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    c->dq_head = d->next;
    if (c->dq_head == NULL) c->dq_tail = NULL;
    c->dq_bytes -= d->len;
    c->wbuf.alloc(c->wbuf.ud, d, sizeof *d + d->len, 0);
    if (r < 0) {
      proto_event_call(L, c, EVT_ERROR, errno);
      if (c->lost || c->fd < 0) return;
    }
  }
}

/* [-0, +0] on the main state. */
static void write_cb(struct ev_loop *loop, ev_io *w, int revents) {
  ml_Conn *c = w->data;
  (void)revents;
  if (c->kind == ML_CONN_DGRAM) {
    dgram_flush(c);
    if (c->lost || c->fd < 0) return;
    if (c->dq_head == NULL) {
      ev_io_stop(loop, w);
      if (c->closing) schedule_lost(c);
    }
    maybe_resume_writing(ml__main_lua(c->S), c);
    return;
  }
  while (c->wbuf.len > 0) {
    ssize_t r = conn_send(c, c->wbuf.data + c->wbuf.off, c->wbuf.len);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      fatal(c, errno);
      return;
    }
    ml__bq_consume(&c->wbuf, (size_t)r);
  }
  if (c->wbuf.len == 0) {
    ev_io_stop(loop, w);
    ml__bq_trim(&c->wbuf, WBUF_KEEP);
    if (c->eof_req && !c->eof_sent) do_shutdown(c);
    if (c->closing && !c->linger) schedule_lost(c);
  }
  if (c->flushwait && c->wbuf.len <= c->flush_at) wake_flushwait(c);
  maybe_resume_writing(ml__main_lua(c->S), c);
}

/* Delivers connection_lost: wakes the stream's waiters, calls the
 * protocol and the owner's on-lost function, closes the socket and drops
 * the anchor.
 * [-0, +0] on the main state. */
static void later_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  ml_Conn *c = w->data;
  lua_State *L = ml__main_lua(c->S);
  (void)revents;
  c->lost_queued = 0;
  if (c->lost) return;
  c->lost = 1;
  teardown(c);
  if (c->layer) c->layer->lost(c);
  if (c->kind == ML_CONN_STREAM) {
    if (c->err == 0 && !c->has_exc) c->eof = 1;
    ml__conn_wake_all(c);
  }
  proto_event_call(L, c, EVT_LOST, 0);
  if (c->sock) ml__sock_close(L, c->sock);
  else if (c->pipe && c->fd >= 0) close(c->fd);
  c->fd = -1;
  if (c->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, c->ref);
    c->ref = LUA_NOREF;
  }
}

/* ---------------------------------------------------------------- */
/* Protocol calls (protected mode).                                   */

/* [-nargs, +nres] calls protocol:method(args) if the protocol has that
 * method; otherwise pops the arguments and pushes nres nils.  The
 * transport is at cidx.  Errors propagate. */
static void proto_call(lua_State *L, int cidx, const char *method, int nargs, int nres) {
  int base = lua_gettop(L) - nargs;
  lua_getiuservalue(L, cidx, XUV_PROTO);
  if (lua_isnil(L, -1) || lua_getfield(L, -1, method) == LUA_TNIL) {
    lua_settop(L, base);
    for (int i = 0; i < nres; i++) lua_pushnil(L);
    return;
  }
  lua_insert(L, base + 1); /* method */
  lua_insert(L, base + 2); /* protocol as self */
  lua_call(L, nargs + 1, nres);
}

/* [-0, +1] pushes the exception that ended c (transport at cidx), made
 * from c->err the first time and kept in XUV_EXC, or nil. */
void ml__conn_push_exc(lua_State *L, int cidx, ml_Conn *c) {
  cidx = lua_absindex(L, cidx);
  if (c->has_exc) {
    lua_getiuservalue(L, cidx, XUV_EXC);
  } else if (c->err) {
    /* A buffer that could not grow is a memory failure, and is named
     * as one, like every other (docs/reliability.md). */
    if (c->err == ENOMEM)
      ml__exc_push(L, "MemoryError", "not enough memory (a connection buffer could not grow)");
    else ml__exc_push_errno(L, c->err, NULL);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, cidx, XUV_EXC);
    c->has_exc = 1;
  } else {
    lua_pushnil(L);
  }
}

/* Protected body of proto_event_call: proto_event(c lightuserdata,
 * evt, err) -> nothing; calls the protocol's method for evt (and the
 * owner's on-lost function for EVT_LOST). */
static int proto_event(lua_State *L) {
  ml_Conn *c = lua_touserdata(L, 1);
  int evt = (int)lua_tointeger(L, 2), err = (int)lua_tointeger(L, 3);
  lua_settop(L, 0);
  if (!ml__conn_push(L, c)) return 0;
  switch (evt) {
  case EVT_PAUSE: proto_call(L, 1, "pause_writing", 0, 0); break;
  case EVT_RESUME: proto_call(L, 1, "resume_writing", 0, 0); break;
  case EVT_ERROR:
    ml__exc_push_errno(L, err, NULL);
    proto_call(L, 1, "error_received", 1, 0);
    break;
  case EVT_LOST: {
    int st = LUA_OK;
    if (c->kind != ML_CONN_STREAM) {
      lua_getiuservalue(L, 1, XUV_PROTO);
      if (!lua_isnil(L, -1) && lua_getfield(L, -1, "connection_lost") != LUA_TNIL) {
        lua_insert(L, -2);
        ml__conn_push_exc(L, 1, c);
        st = lua_pcall(L, 2, 0, 0);
      } else {
        lua_settop(L, 1);
      }
    }
    /* The owner (a server) learns of it even if the protocol failed. */
    if (lua_getiuservalue(L, 1, XUV_ONLOST) == LUA_TFUNCTION) {
      lua_pushvalue(L, 1);
      lua_call(L, 1, 0);
    } else {
      lua_pop(L, 1);
    }
    if (st != LUA_OK) return lua_error(L);
    break;
  }
  }
  return 0;
}

/* [-0, +0]; see the declaration above. */
static void proto_event_call(lua_State *L, ml_Conn *c, int evt, int err) {
  if (c->kind == ML_CONN_STREAM && evt != EVT_LOST) return;
  if (!lua_checkstack(L, 8)) return;
  lua_pushcfunction(L, proto_event);
  lua_pushlightuserdata(L, c);
  lua_pushinteger(L, evt);
  lua_pushinteger(L, err);
  ml__callback(L, 3,
               evt == EVT_LOST ? "Exception in connection_lost" : "Exception in protocol callback");
}

/* dgram_readable(c lightuserdata) -> nothing: one recvfrom, then
 * datagram_received(data, addr) or error_received(exc). */
static int dgram_readable(lua_State *L) {
  ml_Conn *c = lua_touserdata(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  ssize_t r;
  lua_settop(L, 0);
  if (c->fd < 0 || c->lost || !ml__conn_push(L, c)) return 0;
  do r = recvfrom(c->fd, c->scratch, c->scratch_size, 0, (struct sockaddr *)&ss, &len);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    /* ICMP errors (ECONNREFUSED ...) are the protocol's to see. */
    ml__exc_push_errno(L, errno, NULL);
    proto_call(L, 1, "error_received", 1, 0);
    return 0;
  }
  lua_pushlstring(L, c->scratch, (size_t)r);
  if (len == 0) lua_pushnil(L);
  else ml__sock_pushaddr(L, (struct sockaddr *)&ss, len);
  proto_call(L, 1, "datagram_received", 2, 0);
  return 0;
}

/* protocol:eof_received(), through ml__callback: a true result keeps the
 * transport half-open; otherwise it is closed.
 * proto_eof(c lightuserdata) -> nothing */
static int proto_eof(lua_State *L) {
  ml_Conn *c = lua_touserdata(L, 1);
  lua_settop(L, 0);
  if (!ml__conn_push(L, c)) return 0;
  proto_call(L, 1, "eof_received", 0, 1);
  if (!lua_toboolean(L, -1) || c->pipe) ml__conn_close(c, 0);
  return 0;
}

/* protocol:data_received(bytes), the n bytes at p, the transport c at 1.
 * The string first (on top, at 3 or 4): __index code run by the lookup
 * below may reuse the scratch area. */
static inline int data_received(lua_State *L, ml_Conn *c, const char *p, size_t n) {
  int data;
  lua_pushlstring(L, p, n);
  data = lua_gettop(L);
  if (!ml__conn_push(L, c)) return 0;
  lua_getiuservalue(L, -1, XUV_PROTO); /* data + 2 */
  /* The method is looked up at every read, as asyncio does (a protocol
   * may replace it), but with the key made once: lua_getfield would
   * find the string again from its C pointer (a hash and a strcmp),
   * a tenth of what a message costs here. */
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->dr_ref);
  if (lua_gettable(L, -2) == LUA_TNIL) return 0;
  lua_pushvalue(L, data + 2); /* the protocol: two copies are cheaper than a rotation */
  lua_pushvalue(L, data);
  lua_call(L, 2, 0);
  return 0;
}

/* Protected: data_received of the n bytes at p (a layer's).  Stack: 1 the
 * transport (light), 2 n, 3 p.  proto_data(c, n, p) -> nothing */
static int proto_data(lua_State *L) {
  return data_received(L, lua_touserdata(L, 1), lua_touserdata(L, 3), (size_t)lua_tointeger(L, 2));
}

/* Protected: the same for the n bytes just read into c's scratch area,
 * the hot path: one argument fewer to push and fetch.  Stack: 1 the
 * transport (light), 2 n.  proto_scratch(c, n) -> nothing */
static int proto_scratch(lua_State *L) {
  ml_Conn *c = lua_touserdata(L, 1);
  return data_received(L, c, c->scratch, (size_t)lua_tointeger(L, 2));
}

/* The hot path of the protocols API: one recv(2) into the scratch area
 * and one protected call that makes the string and calls data_received.
 * The loop's ml__callback would do the same with a second protected call
 * around the first; here its message handler and report are inlined, and
 * a failure (asyncio: fatal to the connection) is seen directly.
 * ml__conn_deliver_eof: [-0, +0] on the main state; marks EOF and calls
 * eof_received (protected). */
void ml__conn_deliver_eof(ml_Conn *c) {
  lua_State *L = ml__main_lua(c->S);
  c->eof = 1;
  ml__conn_update_reading(c);
  if (c->ref == LUA_NOREF || !lua_checkstack(L, 4)) return;
  lua_pushcfunction(L, proto_eof);
  lua_pushlightuserdata(L, c);
  ml__callback(L, 1, "Exception in protocol callback");
}

/* [-0, +0] on the main state: fn(c, n, p) (proto_data, ml__conn_buffered or
 * a C protocol's data_fn), or fn(c, n) if p is NULL, in one protected
 * call; a failure is kept as c's exception, fails the connection and is
 * reported.  With result, returns fn's integer result, else 0 (the hot
 * path, data_received, takes none); -EAGAIN if it failed (nothing more
 * to do). */
static inline lua_Integer proto_pcall(ml_Conn *c, lua_CFunction fn, lua_Integer n, const char *p,
                                      int result) {
  lua_State *L = ml__main_lua(c->S);
  int base, st;
  lua_Integer r;
  if (!lua_checkstack(L, 8)) {
    fatal(c, ENOMEM); /* the bytes cannot be delivered */
    return -EAGAIN;
  }
  base = lua_gettop(L);
  lua_pushcfunction(L, ml__callback_msgh);
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, c);
  lua_pushinteger(L, n);
  if (p != NULL) lua_pushlightuserdata(L, (void *)p);
  st = lua_pcall(L, p != NULL ? 3 : 2, result, base + 1);
  if (st != LUA_OK) {
    /* [msgh, error]: asyncio closes the connection, connection_lost(exc). */
    if (ml__conn_push(L, c)) {
      lua_pushvalue(L, -2);
      lua_setiuservalue(L, -2, XUV_EXC);
      lua_pop(L, 1);
      c->has_exc = 1;
    }
    fatal(c, 0);
    /* The message handler runs for runtime errors only. */
    if (st == LUA_ERRRUN) ml__callback_traceback(L);
    else lua_pushnil(L);
    ml__report_tb(L, "Exception in protocol callback");
    r = -EAGAIN;
  } else {
    r = result ? lua_tointeger(L, -1) : 0;
  }
  lua_settop(L, base);
  return r;
}

/* [-0, +0] on the main state: ml__conn_deliver, inline in the read path
 * (proto_readable). */
static inline void deliver(ml_Conn *c, const char *p, size_t r) {
  if (c->fd < 0 || c->lost || c->ref == LUA_NOREF) return;
  proto_pcall(c,
              c->data_fn    ? c->data_fn
              : c->buffered ? ml__conn_buffered
                            : proto_data,
              (lua_Integer)r, p, 0);
}

/* [-0, +0] on the main state (ml__conn_deliver, ml__conn_deliver_eof). */
static void proto_readable(ml_Conn *c) {
  ssize_t r;
  if (c->fd < 0 || c->lost || c->ref == LUA_NOREF) return;
  if (c->buffered) {
    /* The recv runs inside the protected call, into the protocol's own
     * buffer. */
    lua_Integer b = proto_pcall(c, ml__conn_buffered, -1, NULL, 1);
    if (b == 0) ml__conn_deliver_eof(c);
    else if (b < 0 && b != -EAGAIN && b != -EWOULDBLOCK) fatal(c, (int)-b);
    return;
  }
  r = ml__conn_recv(c, c->scratch, c->scratch_size);
  if (r == 0) {
    ml__conn_deliver_eof(c);
    return;
  }
  if (r < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) fatal(c, errno);
    return;
  }
  if (c->data_fn == NULL && !c->buffered) proto_pcall(c, proto_scratch, (lua_Integer)r, NULL, 0);
  else deliver(c, c->scratch, (size_t)r);
}

/* [-1, +0] pops the exception on top, keeps it as the one that ended c
 * (if c is still anchored) and fails the connection. */
void ml__conn_fail(lua_State *L, ml_Conn *c) {
  if (ml__conn_push(L, c)) {
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, XUV_EXC);
    lua_pop(L, 1);
    c->has_exc = 1;
  }
  lua_pop(L, 1);
  fatal(c, 0);
}

/* [-0, +0] on the main state: data_received(bytes) in one protected
 * call (a BufferedProtocol's buffers filled instead); a failure is kept
 * as c's exception and fails the connection. */
void ml__conn_deliver(ml_Conn *c, const char *p, size_t r) { deliver(c, p, r); }

/* ---------------------------------------------------------------- */
/* Making transports.                                                  */

/* The registry slot of the string "data_received", one per state: a
 * transport keeps it (dr_ref) for its hot path, data_received. */
static const char dr_key = 0;
static int dr_ref(lua_State *L) {
  int ref;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &dr_key) == LUA_TNUMBER) {
    ref = (int)lua_tointeger(L, -1);
  } else {
    lua_pushliteral(L, "data_received");
    ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushinteger(L, ref);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &dr_key);
  }
  lua_pop(L, 1);
  return ref;
}

/* [-0, +1] pushes a new transport of kind, over the socket at sidx (0:
 * none yet; a socket one is anchored at once); raises if that socket
 * cannot take a transport. */
ml_Conn *ml__conn_new(lua_State *L, int sidx, int kind) {
  ml_Socket *s = NULL;
  ml_Conn *c;
  if (sidx) {
    sidx = lua_absindex(L, sidx);
    s = ml__sock_checkopen(L, sidx);
    luaL_argcheck(L, !s->transport, sidx, "the socket already has a transport");
    luaL_argcheck(L, !s->rwait && !s->wwait, sidx, "a task is waiting on the socket");
    luaL_argcheck(L, !s->blocking, sidx, "the socket must be non-blocking");
  }
  c = lua_newuserdatauv(L, sizeof *c, XUV_N);
  memset(c, 0, sizeof *c);
  c->magic = ML_CONN_MAGIC;
  c->S = ml__state(L);
  c->fd = -1;
  c->kind = kind;
  c->ref = LUA_NOREF;
  c->dr_ref = dr_ref(L);
  c->high = ML_CONN_HIGH_DEFAULT;
  c->low = ML_CONN_HIGH_DEFAULT / 4;
  c->limit = DEFAULT_LIMIT;
  ml__bq_init(&c->rbuf, L);
  ml__bq_init(&c->wbuf, L);
  ev_init(&c->rio, read_cb);
  ev_init(&c->wio, write_cb);
  ev_init(&c->later, later_cb);
  c->rio.data = c->wio.data = c->later.data = c;
  luaL_setmetatable(L, kind == ML_CONN_DGRAM ? ML_DGRAM_TRANSPORT : ML_TRANSPORT);
  c->scratch = ml__net_scratch(L, 0, &c->scratch_size);
  if (s == NULL) return c;
  lua_pushvalue(L, sidx);
  lua_setiuservalue(L, -2, XUV_SOCK);
  ml__conn_keep_addrs(L, c, s->fd);
  lua_pushvalue(L, -1);
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  s->transport = 1;
  lua_pushvalue(L, -1); /* the socket's user value: its transport (_server.c) */
  lua_setiuservalue(L, sidx, 1);
  c->sock = s;
  c->fd = s->fd;
  c->is_sock = 1;
  ev_io_set(&c->rio, c->fd, EV_READ);
  ev_io_set(&c->wio, c->fd, EV_WRITE);
  if (s->type == SOCK_STREAM && (s->family == AF_INET || s->family == AF_INET6)) {
    int one = 1; /* as asyncio: small writes go out at once */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return c;
}

/* [-0, +0] anchors the transport at cidx in the registry, if it is not. */
void ml__conn_anchor(lua_State *L, int cidx, ml_Conn *c) {
  if (c->ref != LUA_NOREF) return;
  lua_pushvalue(L, cidx);
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

void ml__conn_set_pipe(ml_Conn *c, int fd, int pipe) {
  c->fd = fd;
  c->pipe = (unsigned char)pipe;
  c->is_sock = 0;
  ev_io_set(&c->rio, fd, EV_READ);
  ev_io_set(&c->wio, fd, EV_WRITE);
  ml__conn_update_reading(c);
}

/* [-0, +0] the transport at idx, or a type error. */
ml_Conn *ml__conn_check(lua_State *L, int idx) {
  ml_Conn *c = ml__conn_test(L, idx);
  if (c == NULL) luaL_typeerror(L, idx, "transport");
  return c;
}

size_t ml__conn_queued(const ml_Conn *c) { return wqueued(c); }

void ml__conn_set_limits(lua_State *L, ml_Conn *c, size_t high, size_t low) {
  c->high = high;
  c->low = low;
  maybe_pause_writing(L, c);
  maybe_resume_writing(L, c);
}

void ml__conn_free(ml_Conn *c) {
  struct ev_loop *loop;
  loop = ml__loop(c->S);
  /* Finalizers of other objects (a StreamWriter's) may still see c while
   * the state closes: make every later operation a no-op. */
  c->lost = 1;
  teardown(c);
  if (c->pipe && c->fd >= 0) close(c->fd);
  c->fd = -1;
  if (ev_is_active(&c->later)) ev_timer_stop(loop, &c->later);
  if (c->layer) c->layer->free(c);
  c->layer = NULL;
  ml__bq_free(&c->rbuf);
  ml__waiters_free(c, &c->drainers);
  ml__waiters_free(c, &c->closers);
}

int ml__conn_sendto(lua_State *L, ml_Conn *c, const char *p, size_t n,
                    const struct sockaddr_storage *ss, socklen_t alen) {
  if (c->closing || c->lost || c->fd < 0) return 0;
  if (c->dq_head == NULL) {
    ssize_t r;
    do r = sendto(c->fd, p, n, MSG_NOSIGNAL, (const struct sockaddr *)ss, alen);
    while (r < 0 && errno == EINTR);
    if (r >= 0) return 0;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      proto_event_call(L, c, EVT_ERROR, errno);
      return 0;
    }
  }
  ml_Dgram *d = c->wbuf.alloc(c->wbuf.ud, NULL, 0, sizeof *d + n);
  if (d == NULL) return -ENOMEM;
  d->next = NULL;
  d->len = n;
  d->alen = alen;
  if (alen) memcpy(&d->addr, ss, alen);
  memcpy(d->data, p, n);
  if (c->dq_tail) c->dq_tail->next = d;
  else c->dq_head = d;
  c->dq_tail = d;
  c->dq_bytes += n;
  if (!ev_is_active(&c->wio)) ev_io_start(ml__loop(c->S), &c->wio);
  maybe_pause_writing(L, c);
  return 0;
}
