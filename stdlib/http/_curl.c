/* _curl.c: the HTTP client's engine (http._curl): libcurl's multi-socket
 * API driven by moonloop's own loop, as curl's libev examples
 * (docs/examples/evhiperfifo.c, ephiperfifo.c) drive theirs.
 *
 * A Multi is one curl multi handle (a Session's: its connection pool, its
 * HTTP/2 connections multiplexed): curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION -> one ev_io per socket) and when to call it
 * back (CURLMOPT_TIMERFUNCTION -> one ev_timer per Multi), and every
 * libev event goes back to curl_multi_socket_action.  So the client runs
 * on whatever loop the state runs on -- a host's libev loop, or a host
 * stepping moonloop from poll() with ml_state_step -- with no thread but
 * curl's resolver.  A Transfer is one easy handle in a Multi: the script
 * waits on it (headers, data, done), takes its body as it comes, and a
 * slow reader pauses it (CURL_WRITEFUNC_PAUSE) so memory stays flat.
 *
 * Rules:
 *  - curl's callbacks never touch Lua: they fill C buffers and wake tasks
 *    (ml__task_wake).  Lua code (and so a finalizer, which may call curl)
 *    never runs inside a curl call, which curl forbids
 *    (CURLM_RECURSIVE_API_CALL).
 *  - A Transfer in its Multi is anchored by a registry reference (curl
 *    holds its pointer); it is released when the transfer is done,
 *    aborted (a cancelled waiter, close(), its Multi closed) or the state
 *    closes.  Every easy handle, header list, socket record and buffer is
 *    freed on each of those paths.
 *  - While a Multi has no transfer it watches nothing, so it never keeps
 *    the loop (and the process) alive: an idle pool is not work.
 *
 * libcurl is loaded with dlopen on the first require: linking it would
 * cost every start-up of moonloop, HTTP or not, ~12M instructions (the
 * dynamic linker loading libcurl's 30-odd libraries; docs/performance.md,
 * "Start-up"). */
#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "core/module.h"

#define MULTI_MT "http.Multi"
#define XFER_MT "http.Transfer"

/* Buffered body past which a transfer that is not read whole is paused. */
#define BODY_HIGH (256 * 1024)
/* A paused transfer resumes when its reader has left less than this. */
#define BODY_LOW (64 * 1024)

/* ---------------------------------------------------------------- */
/* libcurl, loaded on first use.                                      */

static struct {
  CURLcode (*global_init)(long);
  CURL *(*easy_init)(void);
  void (*easy_cleanup)(CURL *);
  CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
  CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
  CURLcode (*easy_pause)(CURL *, int);
  const char *(*easy_strerror)(CURLcode);
  CURLM *(*multi_init)(void);
  CURLMcode (*multi_cleanup)(CURLM *);
  CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
  CURLMcode (*multi_add_handle)(CURLM *, CURL *);
  CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
  CURLMcode (*multi_socket_action)(CURLM *, curl_socket_t, int, int *);
  CURLMcode (*multi_assign)(CURLM *, curl_socket_t, void *);
  CURLMsg *(*multi_info_read)(CURLM *, int *);
  const char *(*multi_strerror)(CURLMcode);
  struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
  void (*slist_free_all)(struct curl_slist *);
  curl_version_info_data *(*version_info)(CURLversion);
  CURLSH *(*share_init)(void);
  CURLSHcode (*share_setopt)(CURLSH *, CURLSHoption, ...);
  CURLSHcode (*share_cleanup)(CURLSH *);
} C;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[256];

static void load_curl(void) {
  static const struct {
    const char *name;
    size_t off;
  } syms[] = {
#define SYM(f, n) {"curl_" n, offsetof(__typeof__(C), f)}
    SYM(global_init, "global_init"),
    SYM(easy_init, "easy_init"),
    SYM(easy_cleanup, "easy_cleanup"),
    SYM(easy_setopt, "easy_setopt"),
    SYM(easy_getinfo, "easy_getinfo"),
    SYM(easy_pause, "easy_pause"),
    SYM(easy_strerror, "easy_strerror"),
    SYM(multi_init, "multi_init"),
    SYM(multi_cleanup, "multi_cleanup"),
    SYM(multi_setopt, "multi_setopt"),
    SYM(multi_add_handle, "multi_add_handle"),
    SYM(multi_remove_handle, "multi_remove_handle"),
    SYM(multi_socket_action, "multi_socket_action"),
    SYM(multi_assign, "multi_assign"),
    SYM(multi_info_read, "multi_info_read"),
    SYM(multi_strerror, "multi_strerror"),
    SYM(slist_append, "slist_append"),
    SYM(slist_free_all, "slist_free_all"),
    SYM(version_info, "version_info"),
    SYM(share_init, "share_init"),
    SYM(share_setopt, "share_setopt"),
    SYM(share_cleanup, "share_cleanup"),
#undef SYM
  };
  void *h = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
  size_t i;
  if (h == NULL) {
    snprintf(load_error, sizeof load_error, "cannot load libcurl (install libcurl4): %s",
             dlerror());
    return;
  }
  for (i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    void *f = dlsym(h, syms[i].name);
    if (f == NULL) {
      snprintf(load_error, sizeof load_error, "libcurl.so.4 has no %s", syms[i].name);
      return;
    }
    memcpy((char *)&C + syms[i].off, &f, sizeof f);
  }
  if (C.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    snprintf(load_error, sizeof load_error, "curl_global_init failed");
}

/* ---------------------------------------------------------------- */
/* Objects.                                                           */

typedef struct Multi Multi;
typedef struct Xfer Xfer;

/* A socket curl asked us to watch (curl_multi_assign'ed to it). */
typedef struct Sock {
  ev_io io;
  Multi *m;
  int events; /* EV_READ | EV_WRITE that curl wants */
  struct Sock *next, **pprev;
} Sock;

struct Multi {
  CURLM *m; /* NULL once closed */
  ml_State *S;
  CURLSH *share; /* the cookie jar, or NULL */
  struct ev_loop *loop;
  ev_timer timer;
  Sock *socks;
  Xfer *xfers; /* transfers in the multi */
  int nactive;
};

/* A byte buffer from the state's allocator (counted against its cap). */
typedef struct Bytes {
  char *p;
  size_t off, len, cap;
} Bytes;

enum { XS_RUNNING, XS_DONE, XS_ABORTED };
enum { W_HEADERS, W_DATA, W_DONE };

struct Xfer {
  CURL *e;  /* NULL once released */
  Multi *m; /* while in the multi */
  struct curl_slist *hdrs;
  lua_Alloc af;
  void *aud;
  int ref;   /* anchors the userdata while curl holds it */
  int state; /* XS_* */
  int headers_done;
  int follow; /* a 3xx with Location is not the final response */
  int saw_location;
  int collect; /* read whole: never pause */
  int paused;
  int oom;
  unsigned pauses; /* how many times a slow reader paused it */
  size_t max_buffered;
  ml_Task *waiter;
  int wait_kind;
  CURLcode result;
  long os_errno;
  long status;
  long http_version;
  char *url;  /* effective URL (after redirects), allocated */
  Bytes head; /* the final response's header block */
  Bytes body; /* body received, not yet taken */
  char errbuf[CURL_ERROR_SIZE];
  Xfer *next, **pprev;
};

/* ---------------------------------------------------------------- */
/* Buffers.                                                           */

static int bytes_add(Xfer *x, Bytes *b, const char *p, size_t n) {
  if (b->off > 0 && b->off == b->len) b->off = b->len = 0;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    char *np;
    if (b->off > 0) { /* slide the unread part down first */
      memmove(b->p, b->p + b->off, b->len - b->off);
      b->len -= b->off;
      b->off = 0;
    }
    while (cap < b->len + n) cap *= 2;
    if (cap > b->cap) {
      np = x->af(x->aud, b->p, b->p ? b->cap : 0, cap);
      if (np == NULL) return -ENOMEM;
      b->p = np;
      b->cap = cap;
    }
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

static size_t bytes_unread(const Bytes *b) { return b->len - b->off; }

static void bytes_free(Xfer *x, Bytes *b) {
  if (b->p) x->af(x->aud, b->p, b->cap, 0);
  memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------- */
/* Waking and releasing.                                              */

static void wake(Xfer *x) {
  if (x->waiter) {
    ml_Task *t = x->waiter;
    x->waiter = NULL;
    ml__task_wake(t);
  }
}

/* Starts or stops every socket watcher and the timer of m: they run
 * only while m has a transfer, so that an idle pool holds no loop. */
static void multi_watch(Multi *m) {
  Sock *s;
  for (s = m->socks; s; s = s->next) {
    if (m->nactive > 0 && s->events) ev_io_start(m->loop, &s->io);
    else ev_io_stop(m->loop, &s->io);
  }
  if (m->nactive == 0) ev_timer_stop(m->loop, &m->timer);
}

/* Takes x out of its multi and frees what curl used: the easy handle, the
 * header list, the anchor.  The buffers stay (the script may still take
 * the body).  Must not run inside a curl call.  [-0, +0] */
static void xfer_release(lua_State *L, Xfer *x, int state) {
  Multi *m = x->m;
  if (x->e) {
    if (m && m->m) C.multi_remove_handle(m->m, x->e);
    C.easy_cleanup(x->e);
    x->e = NULL;
  }
  if (x->hdrs) {
    C.slist_free_all(x->hdrs);
    x->hdrs = NULL;
  }
  if (m) {
    if ((*x->pprev = x->next) != NULL) x->next->pprev = x->pprev;
    x->m = NULL;
    m->nactive--;
    multi_watch(m);
  }
  if (x->state == XS_RUNNING) x->state = state;
  if (x->ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, x->ref);
    x->ref = LUA_NOREF;
  }
  wake(x);
}

/* ---------------------------------------------------------------- */
/* curl's callbacks: C only.                                          */

static int header_final(Xfer *x) {
  long code = 0;
  C.easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &code);
  if (code < 200) return 0; /* 100 Continue, 103 Early Hints */
  if (x->follow && x->saw_location &&
      (code == 301 || code == 302 || code == 303 || code == 307 || code == 308))
    return 0; /* curl follows it */
  return 1;
}

static void headers_ready(Xfer *x) {
  char *url = NULL;
  x->headers_done = 1;
  C.easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &x->status);
  C.easy_getinfo(x->e, CURLINFO_HTTP_VERSION, &x->http_version);
  C.easy_getinfo(x->e, CURLINFO_EFFECTIVE_URL, &url);
  if (url) {
    size_t n = strlen(url) + 1;
    char *copy = x->af(x->aud, NULL, 0, n);
    if (copy) {
      memcpy(copy, url, n);
      x->url = copy;
    }
  }
  if (x->wait_kind == W_HEADERS) wake(x);
}

static size_t header_cb(char *buf, size_t size, size_t n, void *ud) {
  Xfer *x = ud;
  size_t len = size * n;
  if (x->headers_done) return len; /* trailers */
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
    x->head.off = x->head.len = 0;
    x->saw_location = 0;
  } else if (len >= 9 && strncasecmp(buf, "location:", 9) == 0) {
    x->saw_location = 1;
  }
  if (bytes_add(x, &x->head, buf, len) < 0) {
    x->oom = 1;
    return 0;
  }
  if ((len == 2 && buf[0] == '\r') || (len == 1 && buf[0] == '\n')) {
    if (header_final(x)) headers_ready(x);
  }
  return len;
}

static size_t write_cb(char *buf, size_t size, size_t n, void *ud) {
  Xfer *x = ud;
  size_t len = size * n;
  if (!x->headers_done) headers_ready(x);
  if (!x->collect && bytes_unread(&x->body) >= BODY_HIGH) {
    x->paused = 1;
    x->pauses++;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (bytes_add(x, &x->body, buf, len) < 0) {
    x->oom = 1;
    return 0;
  }
  if (bytes_unread(&x->body) > x->max_buffered) x->max_buffered = bytes_unread(&x->body);
  if (x->wait_kind == W_DATA) wake(x);
  return len;
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents);

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp) {
  Multi *m = ud;
  Sock *s = sockp;
  (void)e;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      ev_io_stop(m->loop, &s->io);
      if ((*s->pprev = s->next) != NULL) s->next->pprev = s->pprev;
      free(s);
    }
    return 0;
  }
  if (s == NULL) {
    s = calloc(1, sizeof *s);
    if (s == NULL) return -1; /* curl fails the transfer */
    s->m = m;
    ev_io_init(&s->io, io_cb, fd, EV_READ);
    s->io.data = s;
    if ((s->next = m->socks) != NULL) s->next->pprev = &s->next;
    m->socks = s;
    s->pprev = &m->socks;
    C.multi_assign(m->m, fd, s);
  }
  s->events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
  ev_io_stop(m->loop, &s->io);
  ev_io_set(&s->io, fd, s->events);
  if (m->nactive > 0 && s->events) ev_io_start(m->loop, &s->io);
  return 0;
}

static int timer_cb(CURLM *cm, long timeout_ms, void *ud) {
  Multi *m = ud;
  (void)cm;
  ev_timer_stop(m->loop, &m->timer);
  if (timeout_ms >= 0) {
    /* 0 means at once: on the next loop iteration, not from in here
     * (curl refuses to be re-entered from its own callback). */
    ev_timer_set(&m->timer, timeout_ms / 1000.0, 0.);
    ev_timer_start(m->loop, &m->timer);
  }
  return 0;
}

/* ---------------------------------------------------------------- */
/* libev's callbacks: into curl, then finish what it finished.        */

/* Delivers the transfers curl has finished.  Outside any curl call. */
static void multi_done(Multi *m) {
  CURLMsg *msg;
  int left;
  lua_State *L = NULL;
  while (m->m && (msg = C.multi_info_read(m->m, &left)) != NULL) {
    Xfer *x = NULL;
    if (msg->msg != CURLMSG_DONE) continue;
    C.easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    if (x == NULL || x->e != msg->easy_handle) continue;
    x->result = msg->data.result;
    C.easy_getinfo(x->e, CURLINFO_OS_ERRNO, &x->os_errno);
    if (x->result == CURLE_OK && !x->headers_done) headers_ready(x);
    if (L == NULL) L = ml__main_lua(m->S);
    xfer_release(L, x, XS_DONE);
  }
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  Sock *s = w->data;
  Multi *m = s->m;
  int running, action = (revents & EV_READ ? CURL_CSELECT_IN : 0) |
                        (revents & EV_WRITE ? CURL_CSELECT_OUT : 0) |
                        (revents & EV_ERROR ? CURL_CSELECT_ERR : 0);
  (void)loop;
  C.multi_socket_action(m->m, w->fd, action, &running);
  multi_done(m);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  Multi *m = w->data;
  int running;
  (void)loop;
  (void)revents;
  C.multi_socket_action(m->m, CURL_SOCKET_TIMEOUT, 0, &running);
  multi_done(m);
}

/* ---------------------------------------------------------------- */
/* Multi: a Session's pool.                                           */

static Multi *check_multi(lua_State *L, int idx) {
  Multi *m = ml__udata_check(L, idx, ML_UT_HTTPMULTI);
  if (m->m == NULL) ml__exc_raise(L, "RuntimeError", "the session is closed");
  return m;
}

/* Aborts every transfer of m and closes it; idempotent.  [-0, +0] */
static void multi_close(lua_State *L, Multi *m) {
  Sock *s;
  if (m->m == NULL) return;
  while (m->xfers) {
    Xfer *x = m->xfers;
    x->result = CURLE_ABORTED_BY_CALLBACK;
    snprintf(x->errbuf, sizeof x->errbuf, "the session was closed");
    xfer_release(L, x, XS_ABORTED);
  }
  /* curl may still call socket_cb (REMOVE) and timer_cb as it closes
   * its connections: the records stay valid until it returns. */
  C.multi_cleanup(m->m);
  m->m = NULL;
  if (m->share) {
    C.share_cleanup(m->share);
    m->share = NULL;
  }
  while ((s = m->socks) != NULL) {
    ev_io_stop(m->loop, &s->io);
    m->socks = s->next;
    free(s);
  }
  ev_timer_stop(m->loop, &m->timer);
}

static int multi_gc(lua_State *L) {
  Multi *m = ml__udata_test(L, 1, ML_UT_HTTPMULTI);
  if (m) multi_close(L, m);
  return 0;
}

/* Multi({limit=, limit_per_host=, cookies=}): integers (0: no limit) and a
 * boolean, checked by http/client.lua.  [-0, +1] */
static int l_multi_new(lua_State *L) {
  Multi *m;
  lua_Integer limit, per_host;
  int cookies;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "limit");
  limit = ml__optrange(L, -1, 100, 0, 1000000);
  lua_getfield(L, 1, "limit_per_host");
  per_host = ml__optrange(L, -1, 0, 0, 1000000);
  lua_getfield(L, 1, "cookies");
  cookies = lua_toboolean(L, -1);
  lua_settop(L, 1);
  m = lua_newuserdatauv(L, sizeof *m, 0);
  memset(m, 0, sizeof *m);
  ml__udata_setmt(L, ML_UT_HTTPMULTI);
  m->S = ml__state(L);
  m->loop = ml__loop(m->S);
  ev_timer_init(&m->timer, timeout_cb, 0., 0.);
  m->timer.data = m;
  m->m = C.multi_init();
  if (m->m == NULL) return luaL_error(L, "curl_multi_init failed");
  C.multi_setopt(m->m, CURLMOPT_SOCKETFUNCTION, socket_cb);
  C.multi_setopt(m->m, CURLMOPT_SOCKETDATA, m);
  C.multi_setopt(m->m, CURLMOPT_TIMERFUNCTION, timer_cb);
  C.multi_setopt(m->m, CURLMOPT_TIMERDATA, m);
  C.multi_setopt(m->m, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  C.multi_setopt(m->m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)limit);
  C.multi_setopt(m->m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)per_host);
  C.multi_setopt(m->m, CURLMOPT_MAXCONNECTS, (long)(limit > 0 ? limit : 100));
  if (cookies) {
    m->share = C.share_init();
    if (m->share == NULL) return luaL_error(L, "curl_share_init failed");
    C.share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_COOKIE);
  }
  return 1;
}

static int l_multi_close(lua_State *L) {
  Multi *m = ml__udata_check(L, 1, ML_UT_HTTPMULTI);
  multi_close(L, m);
  return 0;
}

/* m:active(): the number of transfers in m.  [-0, +1] */
static int l_multi_active(lua_State *L) {
  Multi *m = ml__udata_check(L, 1, ML_UT_HTTPMULTI);
  lua_pushinteger(L, m->nactive);
  return 1;
}

/* ---------------------------------------------------------------- */
/* Transfers.                                                         */

static Xfer *check_xfer(lua_State *L, int idx) { return ml__udata_check(L, idx, ML_UT_HTTPXFER); }

static int xfer_gc(lua_State *L) {
  Xfer *x = ml__udata_test(L, 1, ML_UT_HTTPXFER);
  if (x == NULL) return 0;
  if (x->e || x->m) xfer_release(L, x, XS_ABORTED);
  bytes_free(x, &x->head);
  bytes_free(x, &x->body);
  if (x->url) {
    x->af(x->aud, x->url, strlen(x->url) + 1, 0);
    x->url = NULL;
  }
  return 0;
}

/* The string field k of the spec at idx, or NULL.  [-0, +0] */
static const char *spec_str(lua_State *L, int idx, const char *k, size_t *len) {
  const char *s = NULL;
  lua_getfield(L, idx, k);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING) luaL_error(L, "http: spec.%s must be a string", k);
    s = lua_tolstring(L, -1, len);
  }
  lua_pop(L, 1); /* the spec table keeps the string alive */
  return s;
}

static lua_Integer spec_int(lua_State *L, int idx, const char *k, lua_Integer def) {
  lua_Integer v;
  lua_getfield(L, idx, k);
  v = lua_isnil(L, -1) ? def : (lua_isinteger(L, -1) ? lua_tointeger(L, -1) : def);
  lua_pop(L, 1);
  return v;
}

static int spec_bool(lua_State *L, int idx, const char *k, int def) {
  int v;
  lua_getfield(L, idx, k);
  v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

#define SETOPT(x, o, v)                                         \
  do {                                                          \
    if (C.easy_setopt((x)->e, (o), (v)) != CURLE_OK)            \
      return luaL_error(L, "http: curl refused option %s", #o); \
  } while (0)

/* m:request(spec): starts a transfer and returns it.  spec (checked by
 * http/client.lua): method, url, headers (a list of "Name: value"),
 * body, timeout_ms, follow, max_redirects, verify, verify_host, cainfo,
 * capath, cablob, sslcert, sslkey, keypasswd, cookie, decompress, http2,
 * proxy, unix_socket.  [-0, +1] */
static int l_multi_request(lua_State *L) {
  Multi *m = check_multi(L, 1);
  Xfer *x;
  const char *method, *url, *s, *body;
  size_t blen = 0;
  int i, n;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  x = lua_newuserdatauv(L, sizeof *x, 2); /* 3: uv 1 the multi, 2 the body */
  memset(x, 0, sizeof *x);
  x->ref = LUA_NOREF;
  x->af = lua_getallocf(L, &x->aud);
  ml__udata_setmt(L, ML_UT_HTTPXFER);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, 3, 1);
  x->e = C.easy_init();
  if (x->e == NULL) return luaL_error(L, "curl_easy_init failed");
  method = spec_str(L, 2, "method", NULL);
  url = spec_str(L, 2, "url", NULL);
  if (method == NULL || url == NULL) return luaL_error(L, "http: spec needs method and url");
  SETOPT(x, CURLOPT_PRIVATE, (char *)x);
  SETOPT(x, CURLOPT_URL, url);
  SETOPT(x, CURLOPT_ERRORBUFFER, x->errbuf);
  SETOPT(x, CURLOPT_NOSIGNAL, 1L);
  SETOPT(x, CURLOPT_WRITEFUNCTION, write_cb);
  SETOPT(x, CURLOPT_WRITEDATA, x);
  SETOPT(x, CURLOPT_HEADERFUNCTION, header_cb);
  SETOPT(x, CURLOPT_HEADERDATA, x);
  SETOPT(x, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  SETOPT(x, CURLOPT_USERAGENT, "moonloop/" MOONLOOP_VERSION);
  SETOPT(x, CURLOPT_PIPEWAIT, 1L);
  SETOPT(x, CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(x, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  if (spec_bool(L, 2, "decompress", 1)) SETOPT(x, CURLOPT_ACCEPT_ENCODING, "");
  if (!spec_bool(L, 2, "http2", 1)) SETOPT(x, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
  x->follow = spec_bool(L, 2, "follow", 1);
  SETOPT(x, CURLOPT_FOLLOWLOCATION, (long)x->follow);
  SETOPT(x, CURLOPT_MAXREDIRS, (long)spec_int(L, 2, "max_redirects", 10));
  SETOPT(x, CURLOPT_TIMEOUT_MS, (long)spec_int(L, 2, "timeout_ms", 0));
  SETOPT(x, CURLOPT_SSL_VERIFYPEER, (long)spec_bool(L, 2, "verify", 1));
  SETOPT(x, CURLOPT_SSL_VERIFYHOST, spec_bool(L, 2, "verify_host", 1) ? 2L : 0L);
  if (spec_bool(L, 2, "no_default_ca", 0)) {
    SETOPT(x, CURLOPT_CAINFO, (char *)NULL);
    SETOPT(x, CURLOPT_CAPATH, (char *)NULL);
  }
  if ((s = spec_str(L, 2, "cainfo", NULL)) != NULL) SETOPT(x, CURLOPT_CAINFO, s);
  if ((s = spec_str(L, 2, "capath", NULL)) != NULL) SETOPT(x, CURLOPT_CAPATH, s);
  {
    size_t len;
    if ((s = spec_str(L, 2, "cablob", &len)) != NULL) {
      struct curl_blob blob = {(void *)s, len, CURL_BLOB_COPY};
      SETOPT(x, CURLOPT_CAINFO_BLOB, &blob);
    }
  }
  if ((s = spec_str(L, 2, "sslcert", NULL)) != NULL) SETOPT(x, CURLOPT_SSLCERT, s);
  if ((s = spec_str(L, 2, "sslkey", NULL)) != NULL) SETOPT(x, CURLOPT_SSLKEY, s);
  if ((s = spec_str(L, 2, "keypasswd", NULL)) != NULL) SETOPT(x, CURLOPT_KEYPASSWD, s);
  if ((s = spec_str(L, 2, "cookie", NULL)) != NULL) SETOPT(x, CURLOPT_COOKIE, s);
  if ((s = spec_str(L, 2, "proxy", NULL)) != NULL) SETOPT(x, CURLOPT_PROXY, s);
  if ((s = spec_str(L, 2, "unix_socket", NULL)) != NULL) SETOPT(x, CURLOPT_UNIX_SOCKET_PATH, s);
  if (m->share) {
    SETOPT(x, CURLOPT_SHARE, m->share);
    SETOPT(x, CURLOPT_COOKIEFILE, "");
  }
  /* Request headers; no "Expect: 100-continue" unless asked for (a
   * server that ignores it costs a second). */
  x->hdrs = C.slist_append(NULL, "Expect:");
  if (x->hdrs == NULL) return luaL_error(L, "not enough memory");
  lua_getfield(L, 2, "headers");
  n = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 0;
  for (i = 1; i <= n; i++) {
    struct curl_slist *l;
    lua_rawgeti(L, -1, i);
    s = lua_tostring(L, -1);
    if (s == NULL) return luaL_error(L, "http: spec.headers[%d] must be a string", i);
    l = C.slist_append(x->hdrs, s);
    if (l == NULL) return luaL_error(L, "not enough memory");
    x->hdrs = l;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  SETOPT(x, CURLOPT_HTTPHEADER, x->hdrs);
  /* The method and body.  POST goes as POST (not a custom request) so
   * that curl's redirect rules apply: GET after 301/302/303, kept after
   * 307/308. */
  lua_getfield(L, 2, "body");
  body = lua_tolstring(L, -1, &blen);
  if (body) lua_setiuservalue(L, 3, 2); /* curl reads it in place */
  else lua_pop(L, 1);
  if (strcmp(method, "GET") == 0 && body == NULL) {
    SETOPT(x, CURLOPT_HTTPGET, 1L);
  } else if (strcmp(method, "HEAD") == 0) {
    SETOPT(x, CURLOPT_NOBODY, 1L);
  } else {
    if (strcmp(method, "POST") != 0) SETOPT(x, CURLOPT_CUSTOMREQUEST, method);
    else SETOPT(x, CURLOPT_POST, 1L);
    if (body || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
        strcmp(method, "PATCH") == 0) {
      SETOPT(x, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
      SETOPT(x, CURLOPT_POSTFIELDS, body ? body : "");
    }
  }
  /* Into the multi: anchored from here while curl holds x. */
  {
    CURLMcode rc = C.multi_add_handle(m->m, x->e);
    if (rc != CURLM_OK)
      return luaL_error(L, "http: curl_multi_add_handle: %s", C.multi_strerror(rc));
  }
  x->m = m;
  if ((x->next = m->xfers) != NULL) x->next->pprev = &x->next;
  m->xfers = x;
  x->pprev = &m->xfers;
  m->nactive++;
  lua_pushvalue(L, 3);
  x->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  multi_watch(m);
  return 1;
}

/* Lets a paused transfer go on.  Outside curl's callbacks. */
static void xfer_resume(Xfer *x) {
  if (x->paused && x->e) {
    x->paused = 0;
    /* curl may deliver what it held at once, into write_cb. */
    C.easy_pause(x->e, CURLPAUSE_CONT);
  }
}

static int ready(Xfer *x, int kind) {
  if (x->state != XS_RUNNING) return 1;
  switch (kind) {
  case W_HEADERS: return x->headers_done;
  case W_DATA: return bytes_unread(&x->body) > 0;
  default: return 0;
  }
}

/* The cancel hook of a task waiting on x: the transfer is aborted at
 * once, its connection closed by curl.  [-0, +0] */
static int wait_hook(lua_State *L, ml_Task *t, void *ud) {
  Xfer *x = ud;
  (void)t;
  x->waiter = NULL;
  if (x->state == XS_RUNNING) {
    x->result = CURLE_ABORTED_BY_CALLBACK;
    snprintf(x->errbuf, sizeof x->errbuf, "cancelled");
    xfer_release(L, x, XS_ABORTED);
  }
  return 0;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  Xfer *x = lua_touserdata(L, 1);
  if (status != LUA_YIELD) { /* cancelled: the CancelledError is on top */
    wait_hook(L, NULL, x);
    return lua_error(L);
  }
  if (!ready(x, (int)ctx)) {
    x->waiter = ml__task_current(L);
    x->wait_kind = (int)ctx;
    return ml__task_suspend_always(L, wait_hook, x, ctx, wait_k);
  }
  return 0;
}

/* await x:wait("headers" | "data" | "done"): until the final response's
 * headers are in, some body is buffered, or the transfer is over (which
 * also turns x to reading whole: it no longer pauses).  Cancelling the
 * waiting task aborts the transfer.  [-0, +0] */
static int l_xfer_wait(lua_State *L) {
  static const char *const kinds[] = {"headers", "data", "done", NULL};
  Xfer *x = check_xfer(L, 1);
  int kind = luaL_checkoption(L, 2, NULL, kinds);
  lua_settop(L, 1);
  if (kind == W_DONE && !x->collect) {
    x->collect = 1;
    xfer_resume(x);
  } else if (kind == W_DATA && bytes_unread(&x->body) < BODY_LOW) {
    xfer_resume(x);
  }
  if (ready(x, kind)) return 0;
  if (x->waiter)
    return ml__exc_raise(L, "RuntimeError", "another task is already reading this response");
  ml__task_check_suspendable(L);
  x->waiter = ml__task_current(L);
  x->wait_kind = kind;
  return ml__task_suspend_always(L, wait_hook, x, kind, wait_k);
}

/* x:take(): the body received and not yet taken, or nil if none; lets a
 * paused transfer go on.  [-0, +1] */
static int l_xfer_take(lua_State *L) {
  Xfer *x = check_xfer(L, 1);
  size_t n = bytes_unread(&x->body);
  if (n == 0) {
    lua_pushnil(L);
  } else {
    lua_pushlstring(L, x->body.p + x->body.off, n);
    x->body.off = x->body.len = 0;
    if (x->body.cap > 4 * BODY_HIGH) bytes_free(x, &x->body); /* a read-whole body */
  }
  if (x->state == XS_RUNNING && !x->collect) xfer_resume(x);
  return 1;
}

/* x:info(): status, HTTP version ("1.1", "2"...), effective URL and the
 * raw header block of the final response.  [-0, +4] */
static int l_xfer_info(lua_State *L) {
  Xfer *x = check_xfer(L, 1);
  const char *v;
  lua_pushinteger(L, x->status);
  switch (x->http_version) {
  case CURL_HTTP_VERSION_1_0: v = "1.0"; break;
  case CURL_HTTP_VERSION_1_1: v = "1.1"; break;
  case CURL_HTTP_VERSION_2_0: v = "2"; break;
  case CURL_HTTP_VERSION_3: v = "3"; break;
  default: v = NULL;
  }
  if (v) lua_pushstring(L, v);
  else lua_pushnil(L);
  if (x->url) lua_pushstring(L, x->url);
  else lua_pushnil(L);
  lua_pushlstring(L, x->head.p ? x->head.p : "", x->head.len);
  return 4;
}

/* x:result(): "running", or "done"/"aborted" with curl's code (0: it
 * worked), the OS errno and curl's message.  [-0, +4] */
static int l_xfer_result(lua_State *L) {
  Xfer *x = check_xfer(L, 1);
  if (x->state == XS_RUNNING) {
    lua_pushliteral(L, "running");
    return 1;
  }
  lua_pushstring(L, x->state == XS_DONE ? "done" : "aborted");
  lua_pushinteger(L, x->oom ? -ENOMEM : (lua_Integer)x->result);
  lua_pushinteger(L, x->os_errno);
  lua_pushstring(L, x->errbuf[0] ? x->errbuf : C.easy_strerror(x->result));
  return 4;
}

/* x:close(): aborts the transfer if it runs, frees its buffers.  [-0, +0] */
static int l_xfer_close(lua_State *L) {
  Xfer *x = check_xfer(L, 1);
  if (x->state == XS_RUNNING) {
    x->result = CURLE_ABORTED_BY_CALLBACK;
    snprintf(x->errbuf, sizeof x->errbuf, "the response was closed");
  }
  return xfer_gc(L);
}

/* x:stats(): how often a slow reader paused it, and the most body it
 * buffered (for tests: memory stays flat).  [-0, +2] */
static int l_xfer_stats(lua_State *L) {
  Xfer *x = check_xfer(L, 1);
  lua_pushinteger(L, x->pauses);
  lua_pushinteger(L, (lua_Integer)x->max_buffered);
  return 2;
}

/* version(): libcurl's version and what it can do.  [-0, +1] */
static int l_version(lua_State *L) {
  curl_version_info_data *v = C.version_info(CURLVERSION_NOW);
  lua_createtable(L, 0, 6);
  lua_pushstring(L, v->version);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, v->ssl_version ? v->ssl_version : "");
  lua_setfield(L, -2, "ssl");
  lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0);
  lua_setfield(L, -2, "http2");
  lua_pushboolean(L, (v->features & CURL_VERSION_BROTLI) != 0);
  lua_setfield(L, -2, "brotli");
  lua_pushboolean(L, (v->features & CURL_VERSION_LIBZ) != 0);
  lua_setfield(L, -2, "gzip");
  lua_pushboolean(L, (v->features & CURL_VERSION_ASYNCHDNS) != 0);
  lua_setfield(L, -2, "async_dns");
  return 1;
}

static const luaL_Reg multi_methods[] = {
  {"request", l_multi_request},
  {"close", l_multi_close},
  {"active", l_multi_active},
  {NULL, NULL},
};

static const luaL_Reg xfer_methods[] = {
  {"take", l_xfer_take},   {"info", l_xfer_info},   {"result", l_xfer_result},
  {"close", l_xfer_close}, {"stats", l_xfer_stats}, {NULL, NULL},
};

int luaopen_http__curl(lua_State *L) {
  pthread_once(&load_once, load_curl);
  if (load_error[0]) return luaL_error(L, "http: %s", load_error);
  if (ml__udata_newmt(L, ML_UT_HTTPMULTI, MULTI_MT)) {
    luaL_newlib(L, multi_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, multi_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, multi_gc);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  if (ml__udata_newmt(L, ML_UT_HTTPXFER, XFER_MT)) {
    luaL_newlib(L, xfer_methods);
    ml__push_async(L, "Transfer:wait", l_xfer_wait);
    lua_setfield(L, -2, "wait");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, xfer_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_xfer_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, l_multi_new);
  lua_setfield(L, -2, "Multi");
  lua_pushcfunction(L, l_version);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, BODY_HIGH);
  lua_setfield(L, -2, "BODY_HIGH");
  return 1;
}
