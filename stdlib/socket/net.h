/* net.h: what the networking C modules of stdlib/ share (the files of
 * socket/, asyncio/_net.c, conn.c, waiters.c, conn_addrs.c, _transport.c,
 * _stream.c, _server.c): the socket object, the transport object, and
 * through the headers below address conversion (address.h),
 * socket.buffer (buffer.h) and byte queues (bytequeue.h). */
#ifndef ML_NET_H
#define ML_NET_H

#include <netinet/in.h>
#include <sys/socket.h>
#include "core/module.h"
#include "socket/address.h"
#include "socket/buffer.h"
#include "socket/bytequeue.h"

/* The userdata behind a `socket.socket` object (metatable "socket.socket").
 * Sockets are created non-blocking and close-on-exec.  The two watchers are
 * used by the loop's sock_* methods to park one reading and one writing
 * task; they are started only while such a task waits. */
/* Its one user value is the transport made over it, if any (conn.c). */
typedef struct ml_Socket {
  int fd; /* -1 once closed or detached */
  int family, type, proto;
  int blocking;  /* the script called setblocking(true) */
  int transport; /* a transport owns the fd (no loop:sock_*) */
  ml_State *S;   /* set when a watcher was first used */
  ev_io rio, wio;
  ml_Task *rwait, *wwait; /* tasks parked on rio / wio, or NULL */
} ml_Socket;

#define ML_SOCKET "socket.socket"

/* The socket module (socket.c); other modules call it through
 * luaL_requiref so that its metatables exist before they make sockets. */
int luaopen_socket(lua_State *L);

/* The socket at idx, raising a type error naming the argument if it is
 * not one.  Closed sockets are returned too: check s->fd.  [-0, +0] */
ml_Socket *ml__sock_check(lua_State *L, int idx);
/* As ml__sock_check, but raises "socket is closed" (OSError EBADF) if it
 * is. */
ml_Socket *ml__sock_checkopen(lua_State *L, int idx);
/* [-0, +1] pushes a new socket object owning fd.  Allocation may raise,
 * so callers that make an fd push the object first with fd -1 and store
 * the fd into it afterwards: then it cannot leak. */
ml_Socket *ml__sock_push(lua_State *L, int fd, int family, int type, int proto);
/* Stops the socket's watchers and the loop's add_reader/add_writer
 * callbacks on its fd, wakes the tasks parked on them (they see the
 * socket closed) and closes the fd.  Idempotent.  Returns 0 or -errno
 * from close(2) (the fd is gone either way). */
int ml__sock_close(lua_State *L, ml_Socket *s);
/* Gives the socket s the open fd fd, which it owns from then on: the
 * socket module keeps a table of the fds its sockets own, so that
 * socket.socket(..., fd) refuses to wrap one of them (closing the wrapper
 * would pull the fd from under its owner's watchers).  If listing it runs
 * out of memory, s closes fd at once and the error is raised.  [-0, +0] */
void ml__sock_setfd(lua_State *L, ml_Socket *s, int fd);
/* [-0, +1] gives the socket s (made with fd -1) the connection fd that
 * accept() returned, and pushes its peer address sa.  If that runs out of
 * memory, the connection is closed at once (s is left closed, never to
 * the collector: its peer would wait for it) and the error is raised. */
void ml__sock_adopt(lua_State *L, ml_Socket *s, int fd, const struct sockaddr *sa, socklen_t len);
/* Stops and forgets the loop's add_reader/add_writer callbacks on fd, as
 * asyncio does for a socket it closes (_net.c; nothing if none).  [-0, +0] */
void ml__fdwatch_forget(lua_State *L, int fd);
/* Makes a non-blocking, close-on-exec socket; returns the fd or -errno. */
int ml__sock_open(int family, int type, int proto);

/* Registration (register.c).  Sets the functions of sync into the table
 * at idx, and those of async wrapped as async functions (calling one
 * returns a Coroutine; awaiting it runs the C function inside the task,
 * where it may suspend), named prefix..name in warnings.  [-0, +0] */
void ml__net_setfuncs(lua_State *L, int idx, const char *prefix, const luaL_Reg *sync,
                      const luaL_Reg *async);
/* Parks the running task until the socket s is readable (write 0) or
 * writable (write 1), then runs k(L, LUA_YIELD, ctx) (asyncio/_net.c).
 * Cancelling it stops the watcher; with always, k also runs then, with
 * LUA_ERRRUN and the CancelledError on top (ml__task_suspend_always).
 * Closing s wakes it.  RuntimeError if another task waits the same way. */
int ml__sock_park(lua_State *L, ml_Socket *s, int write, int always, lua_KContext ctx,
                  lua_KFunction k);
/* "bad argument #n to 'fn' (msg)" for the value at stack index idx of an
 * async loop method (argument 1 is the loop, so idx 2 is #1); the
 * type-error form says "tname expected, got <type>".  Never return. */
int ml__net_argerror(lua_State *L, const char *fn, int idx, const char *msg);
int ml__net_typeerror(lua_State *L, const char *fn, int idx, const char *tname);
/* The integer at idx, or that error ("number expected, got ..."). */
lua_Integer ml__net_checkinteger(lua_State *L, const char *fn, int idx);
/* loop:sock_sendfile and loop:sendfile (asyncio/sendfile.c), registered
 * as async loop methods by asyncio/_net.c. */
int ml__loop_sock_sendfile(lua_State *L);
int ml__loop_sendfile(lua_State *L);
enum { ML_SENDFILE_ON = 1, ML_SENDFILE_NATIVE };
/* What write() raises (RuntimeError) while loop:sendfile sends natively. */
#define ML_SENDFILE_BUSY "unable to write; sendfile is in progress"
/* [-0, +1] pushes the loop's methods table, require("asyncio.core").Loop. */
void ml__net_push_loop_methods(lua_State *L);

/* ---------------------------------------------------------------- */
/* Transports (the engine asyncio/conn.c, the Lua objects
 * asyncio/_transport.c) and streams (asyncio/_stream.c).
 *
 * One userdata, ml_Conn, is the transport of a connected socket (or of a
 * datagram socket), and also the state of a stream: in stream mode the
 * bytes read are kept in rbuf for the StreamReader instead of being handed
 * to a protocol.  Its watchers and buffers live inside it; while it is
 * open it is anchored in the registry (ref), because libev points at it.
 * Everything that would run Lua code from a libev callback runs in
 * protected mode: through ml__callback, or for data_received (the hot
 * path) through one lua_pcall with the same report on failure;
 * connection_lost is deferred to the `later` timer, so it never runs
 * inside the caller of close(). */

enum { ML_CONN_PROTO = 1, ML_CONN_STREAM, ML_CONN_DGRAM };

/* User values of a transport. */
enum { XUV_SOCK = 1, XUV_PROTO, XUV_EXC, XUV_ONLOST, XUV_LAYER, XUV_ADDR, XUV_N = XUV_ADDR };

/* A transport's own address or its peer's, as large as an IPv6 one: a
 * larger one (a named Unix socket's path) lives in the transport's
 * XUV_ADDR string instead (ml__conn_addr).  Two sockaddr_storage were
 * 256 of a transport's 744 bytes (docs/performance.md, "Idle
 * connections"). */
typedef union ml_SmallAddr {
  struct sockaddr sa;
  struct sockaddr_in in;
  struct sockaddr_in6 in6;
} ml_SmallAddr;

/* The first field of every transport: with the userdata's size, it proves
 * that a userdata is one (ml__conn_test; only C makes userdata) in two
 * API calls, not the registry lookup and string compare of
 * luaL_testudata (or a tag user value: four calls), on every method
 * call. */
#define ML_CONN_MAGIC 0x436f6e6eu

#define ML_TRANSPORT "asyncio.Transport"
#define ML_DGRAM_TRANSPORT "asyncio.DatagramTransport"

/* Tasks waiting for one thing (drain, close); memory from the state's
 * allocator. */
typedef struct ml_Waiters {
  ml_Task **v;
  int n, cap;
} ml_Waiters;

typedef struct ml_Dgram ml_Dgram; /* a queued datagram */

/* A layer between a stream transport's socket and its protocol or
 * StreamReader (TLS, stdlib/ssl/_tls.c): the transport keeps its socket,
 * watchers, buffers and flow control, and hands the layer the bytes it
 * reads and the bytes the user writes.  The layer appends what goes to
 * the socket to c->wbuf and calls ml__conn_flush; it delivers what comes
 * out to rbuf (stream mode, waking the reader) or ml__conn_deliver. */
typedef struct ml_Conn ml_Conn;
typedef struct ml_Layer {
  /* n bytes were read from the socket (n == 0: the socket's EOF, also
   * set in c->sock_eof); also called with p == NULL after a readable
   * event that read nothing. */
  void (*input)(ml_Conn *c, const char *p, size_t n);
  /* The user writes n bytes.  Returns 0 or -ENOMEM. */
  int (*write)(lua_State *L, ml_Conn *c, const char *p, size_t n);
  /* close() (not abort): the layer may queue its goodbye (close_notify)
   * before the transport flushes and closes. */
  void (*close)(ml_Conn *c);
  /* Reading is wanted again: bytes the layer holds (decrypted, or read
   * before a pause) are delivered soon, from the loop, never from inside
   * the caller (take, resume_reading). */
  void (*resume)(ml_Conn *c);
  /* get_extra_info(name): [-0, +1] pushes the value and returns 1, or
   * returns 0 (pushing nothing) for names it does not know. */
  int (*extra)(lua_State *L, int cidx, ml_Conn *c, const char *name);
  /* The connection is being lost (connection_lost comes next): the
   * layer completes what waits on it (its handshake). */
  void (*lost)(ml_Conn *c);
  /* The transport is collected or the state closes: free everything. */
  void (*free)(ml_Conn *c);
} ml_Layer;

struct ml_Conn {
  unsigned magic; /* ML_CONN_MAGIC */
  ml_State *S;
  ml_Socket *sock; /* NULL for a StreamReader of its own */
  int fd;          /* -1 once closed, or if none */
  int kind;        /* ML_CONN_* */
  int ref;         /* registry anchor while open */
  int dr_ref;      /* the registry slot of the key "data_received" (conn.c) */
  int err;         /* errno that ended the connection, 0 if none */
  ev_io rio, wio;
  ev_timer later; /* delivers connection_lost */
  ml_BQ rbuf;     /* stream mode: bytes the reader has not taken */
  ml_BQ wbuf;     /* bytes the kernel has not taken yet */
  char *scratch;  /* the state's scratch area */
  size_t scratch_size;
  size_t high, low;      /* write buffer limits */
  size_t limit;          /* stream mode: the reader's limit */
  unsigned char closing; /* close() or abort() was called, or it failed */
  unsigned char lost;    /* connection_lost was delivered */
  unsigned char lost_queued;
  unsigned char eof;     /* the peer's end of stream was seen (or fed) */
  unsigned char eof_req; /* write_eof(): shut down writing once flushed */
  unsigned char eof_sent;
  unsigned char paused;  /* pause_reading() */
  unsigned char rpaused; /* stream mode: rbuf over its limit */
  unsigned char wpaused; /* over the high-water mark: drain waits */
  unsigned char is_sock;
  unsigned char pipe;     /* ML_PIPE_READ/WRITE: owns a non-socket fd */
  unsigned char has_exc;  /* XUV_EXC holds the exception */
  unsigned char buffered; /* the protocol is a BufferedProtocol */
  ml_Task *reader;        /* the task waiting for data, or NULL */
  ml_Waiters drainers, closers;
  ml_Dgram *dq_head, *dq_tail; /* datagrams the kernel refused */
  size_t dq_bytes;
  ml_SmallAddr local, peer; /* unless big_addrs: ml__conn_addr */
  socklen_t llen, plen;     /* 0: none */
  unsigned char big_addrs;  /* both are in XUV_ADDR, local first */
  int connected;            /* datagram: has a default peer */
  const ml_Layer *layer;    /* TLS over the socket, or NULL */
  void *layer_ud;
  unsigned char sock_eof; /* with a layer: the socket's EOF was read */
  unsigned char linger;   /* closing, but the layer still reads (the
                           * peer's close_notify): connection_lost waits
                           * for ml__conn_unlinger */
  /* A protocol written in C (http._server) may take its bytes raw: then
   * ml__conn_deliver calls data_fn in protected mode with the arguments
   * (transport light userdata, n, bytes light userdata) instead of making
   * a string for protocol:data_received.  data_ud is the protocol's.
   * set_protocol clears both. */
  lua_CFunction data_fn;
  void *data_ud;
  /* loop:sendfile (asyncio/sendfile.c): the task waiting until at most
   * flush_at bytes are queued (woken by the write path and by teardown),
   * and sendfile: ML_SENDFILE_ON while one is in progress, _NATIVE while
   * the file goes out by sendfile(2) (then write() refuses). */
  ml_Task *flushwait;
  size_t flush_at;
  unsigned char sendfile;
};

/* The connection engine (asyncio/conn.c). */
int luaopen_asyncio__transport(lua_State *L);

/* Keeps the addresses of fd in the transport c (on top of the stack):
 * inline when both fit, else both in XUV_ADDR (conn_addrs.c).  May raise
 * (out of memory), so ml__conn_new calls it before anything anchors c. */
void ml__conn_keep_addrs(lua_State *L, ml_Conn *c, int fd);
/* The local (peer 0) or the peer's (peer 1) address of the transport c
 * at cidx, as getsockname/getpeername gave it when the transport took its
 * socket, and its length in *len; NULL (and 0) if there is none.  [-0, +0]
 * The address lives as long as the transport. */
const struct sockaddr *ml__conn_addr(lua_State *L, int cidx, const ml_Conn *c, int peer,
                                     socklen_t *len);

/* The transport at idx (of either kind), or a type error naming it. */
ml_Conn *ml__conn_check(lua_State *L, int idx);
/* The transport at idx (of either kind), or NULL.  [-0, +0]  Inline:
 * every transport and stream method starts with it. */
static inline ml_Conn *ml__conn_test(lua_State *L, int idx) {
  ml_Conn *c = lua_touserdata(L, idx);
  if (c == NULL || lua_rawlen(L, idx) != sizeof *c || c->magic != ML_CONN_MAGIC) return NULL;
  return c;
}
/* [-0, +1] pushes a new transport of kind over the open socket at sidx (it
 * takes the socket: the socket's own close refuses from then on), or over
 * nothing if sidx is 0.  Reading starts with ml__conn_start. */
ml_Conn *ml__conn_new(lua_State *L, int sidx, int kind);
/* Pipes (connect_read_pipe, a child's stdio): a transport made with
 * ml__conn_new(L, 0, kind) over one end of a pipe (or a character
 * device), which it owns.  A read pipe closes itself at end of file
 * (connection_lost follows eof_received, as asyncio's); a write pipe never
 * reads, closes on write_eof, and is lost when its reader goes away. */
enum { ML_PIPE_READ = 1, ML_PIPE_WRITE };
/* Anchors c (at cidx) in the registry, as an open transport is: do it
 * before making the fd, as it may raise.  [-0, +0] */
void ml__conn_anchor(lua_State *L, int cidx, ml_Conn *c);
/* Gives the anchored c its fd (non-blocking), of kind ML_PIPE_*, and
 * starts watching it.  Never raises. */
void ml__conn_set_pipe(ml_Conn *c, int fd, int pipe);
/* [-0, +1] pushes a StreamReader (pipe ML_PIPE_READ) or StreamWriter
 * table over the stream-mode transport at cidx (asyncio._stream). */
void ml__stream_push(lua_State *L, int cidx, int pipe);

/* Starts or stops the read watcher as the state of c asks. */
void ml__conn_update_reading(ml_Conn *c);
/* Writes n bytes: straight to the kernel when nothing is queued, queueing
 * what it refuses.  Failures end the connection (connection_lost(exc));
 * they are not raised here.  Crossing the high-water mark pauses writing
 * (protocol.pause_writing() through L).  Returns 0 or -ENOMEM. */
int ml__conn_write(lua_State *L, ml_Conn *c, const char *p, size_t n);
/* writelines(list) of the transport or StreamWriter c: argument 2 is a list
 * of strings, each written with ml__conn_write.  A lua_CFunction body:
 * returns 0 values; raises on a bad list or after write_eof. */
int ml__conn_writelines(lua_State *L, ml_Conn *c);
/* close(): stops reading, flushes, then delivers connection_lost.  With
 * abort, drops what is queued and closes at once.  Idempotent. */
void ml__conn_close(ml_Conn *c, int abort);
/* write_eof(): shuts down the writing half once the queue is flushed. */
void ml__conn_write_eof(ml_Conn *c);
/* [-0, +1] pushes the exception that ended c (made on first use from
 * c->err), or nil. */
void ml__conn_push_exc(lua_State *L, int cidx, ml_Conn *c);
/* [-0, +1] get_extra_info(name, default) of the transport at cidx. */
int ml__conn_extra(lua_State *L, int cidx, ml_Conn *c, int nameidx);

/* Sends what c->wbuf holds now if the kernel takes it, and arms the
 * write watcher for the rest (a layer's output path). */
void ml__conn_flush(ml_Conn *c);
/* Protocol mode: calls protocol:data_received(bytes) with the n bytes at
 * p (protected; a failure closes the transport, as asyncio does). */
void ml__conn_deliver(ml_Conn *c, const char *p, size_t n);
/* [-0, +0] the protocol of c is (now) the value at pidx: a protocol
 * with get_buffer is a BufferedProtocol, whose reads go into the buffers
 * it returns (get_buffer, buffer_updated) instead of data_received.
 * Call it wherever XUV_PROTO is set. */
void ml__conn_note_protocol(lua_State *L, ml_Conn *c, int pidx);
/* Protected (asyncio/buffered.c): a BufferedProtocol's read.  Stack: 1
 * the transport (light), 2 n, 3 p (absent if n < 0).  n < 0: one recv(2)
 * from the socket into the buffer get_buffer(-1) returned; n >= 0: the n
 * bytes at p are copied into as many buffers as it takes.  Returns what
 * recv returned (0 at EOF, -errno on failure), n, or -EAGAIN if there is
 * nothing more to do.  ml__conn_buffered(c, n, p) -> integer */
int ml__conn_buffered(lua_State *L);
/* One read(2) or recv(2) of at most n bytes into p, retried on EINTR. */
ssize_t ml__conn_recv(ml_Conn *c, char *p, size_t n);
/* [-0, +1|0] pushes the transport userdata of c (anchored while open)
 * and returns 1; returns 0 with nothing pushed once it is no longer
 * anchored. */
static inline int ml__conn_push(lua_State *L, ml_Conn *c) {
  if (c->ref == LUA_NOREF) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  return 1;
}
/* Protocol mode: calls protocol:eof_received() (protected); the
 * transport is closed unless it returns true. */
void ml__conn_deliver_eof(ml_Conn *c);
/* [-1, +0] ends the connection with the exception on top of L's stack
 * (connection_lost(exc), readers and wait_closed raise it). */
void ml__conn_fail(lua_State *L, ml_Conn *c);
/* Ends the connection with errno err, as a failed send or recv does. */
void ml__conn_fail_errno(ml_Conn *c, int err);
/* The layer is done with a close it lingered on: the transport closes
 * once its write queue is flushed. */
void ml__conn_unlinger(ml_Conn *c);
/* 1 if the reader side wants data now (open, not paused, stream buffer
 * under its limit or a reader waiting). */
int ml__conn_wants_data(ml_Conn *c);
/* Wakes the stream's waiting reader, if any. */
void ml__conn_wake_reader(ml_Conn *c);

/* Waiter sets.  add returns 0 or -ENOMEM; wake_all wakes and empties. */
int ml__waiters_add(ml_Conn *c, ml_Waiters *w, ml_Task *t);
void ml__waiters_remove(ml_Waiters *w, ml_Task *t);
void ml__waiters_wake_all(ml_Waiters *w);
void ml__waiters_free(ml_Conn *c, ml_Waiters *w);

/* Wakes every task waiting on c (reader, drainers, closers). */
void ml__conn_wake_all(ml_Conn *c);

/* asyncio's default high-water mark of a write queue (low is high/4). */
#define ML_CONN_HIGH_DEFAULT (64 * 1024)
/* Bytes queued for writing (stream bytes, or datagram payloads). */
size_t ml__conn_queued(const ml_Conn *c);
/* [-0, +0] sets the write buffer limits (high >= low, checked by the
 * caller), then pauses or resumes the writer as the queue now stands
 * (pause_writing/resume_writing run protected). */
void ml__conn_set_limits(lua_State *L, ml_Conn *c, size_t high, size_t low);
/* [-0, +0] sends the datagram p[0..n) to ss (NULL: the connected peer),
 * or queues it if the kernel refuses it now; a hard error goes to the
 * protocol's error_received.  Nothing is sent once the transport closes.
 * Returns 0, or -ENOMEM if it could not be queued. */
int ml__conn_sendto(lua_State *L, ml_Conn *c, const char *p, size_t n,
                    const struct sockaddr_storage *ss, socklen_t alen);
/* The transport's finaliser: marks it lost (every later operation is a
 * no-op), stops its watchers, closes a pipe it owns and frees its
 * buffers, layer and waiter sets.  Idempotent. */
void ml__conn_free(ml_Conn *c);

#endif
