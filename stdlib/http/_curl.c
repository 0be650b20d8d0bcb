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
 * "Start-up").
 *
 * A Transfer's side (its request spec, wait, take, info) is _curl_xfer.c;
 * hcurl.h is what the two files share. */
#include <dlfcn.h>
#include <pthread.h>
#include "http/hcurl.h"

/* ---------------------------------------------------------------- */
/* libcurl, loaded on first use.                                      */

ml_CurlApi ml__curl;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[256];

static void load_curl(void) {
  static const struct {
    const char *name;
    size_t off;
  } syms[] = {
#define SYM(f, n) {"curl_" n, offsetof(ml_CurlApi, f)}
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
    memcpy((char *)&ml__curl + syms[i].off, &f, sizeof f);
  }
  if (ml__curl.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    snprintf(load_error, sizeof load_error, "curl_global_init failed");
}

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

size_t ml__curl_bytes_unread(const Bytes *b) { return b->len - b->off; }

void ml__curl_bytes_free(Xfer *x, Bytes *b) {
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
void ml__curl_multi_watch(Multi *m) {
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
void ml__curl_xfer_release(lua_State *L, Xfer *x, int state) {
  Multi *m = x->m;
  if (x->e) {
    if (m && m->m) ml__curl.multi_remove_handle(m->m, x->e);
    ml__curl.easy_cleanup(x->e);
    x->e = NULL;
  }
  if (x->hdrs) {
    ml__curl.slist_free_all(x->hdrs);
    x->hdrs = NULL;
  }
  if (m) {
    if ((*x->pprev = x->next) != NULL) x->next->pprev = x->pprev;
    x->m = NULL;
    m->nactive--;
    ml__curl_multi_watch(m);
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
  ml__curl.easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &code);
  if (code < 200) return 0; /* 100 Continue, 103 Early Hints */
  if (x->follow && x->saw_location &&
      (code == 301 || code == 302 || code == 303 || code == 307 || code == 308))
    return 0; /* curl follows it */
  return 1;
}

static void headers_ready(Xfer *x) {
  char *url = NULL;
  x->headers_done = 1;
  ml__curl.easy_getinfo(x->e, CURLINFO_RESPONSE_CODE, &x->status);
  ml__curl.easy_getinfo(x->e, CURLINFO_HTTP_VERSION, &x->http_version);
  ml__curl.easy_getinfo(x->e, CURLINFO_EFFECTIVE_URL, &url);
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

size_t ml__curl_header_cb(char *buf, size_t size, size_t n, void *ud) {
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

size_t ml__curl_write_cb(char *buf, size_t size, size_t n, void *ud) {
  Xfer *x = ud;
  size_t len = size * n;
  if (!x->headers_done) headers_ready(x);
  if (!x->collect && ml__curl_bytes_unread(&x->body) >= BODY_HIGH) {
    x->paused = 1;
    x->pauses++;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (bytes_add(x, &x->body, buf, len) < 0) {
    x->oom = 1;
    return 0;
  }
  if (ml__curl_bytes_unread(&x->body) > x->max_buffered)
    x->max_buffered = ml__curl_bytes_unread(&x->body);
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
    ml__curl.multi_assign(m->m, fd, s);
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
  while (m->m && (msg = ml__curl.multi_info_read(m->m, &left)) != NULL) {
    Xfer *x = NULL;
    if (msg->msg != CURLMSG_DONE) continue;
    ml__curl.easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    if (x == NULL || x->e != msg->easy_handle) continue;
    x->result = msg->data.result;
    ml__curl.easy_getinfo(x->e, CURLINFO_OS_ERRNO, &x->os_errno);
    if (x->result == CURLE_OK && !x->headers_done) headers_ready(x);
    if (L == NULL) L = ml__main_lua(m->S);
    ml__curl_xfer_release(L, x, XS_DONE);
  }
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
  Sock *s = w->data;
  Multi *m = s->m;
  int running, action = (revents & EV_READ ? CURL_CSELECT_IN : 0) |
                        (revents & EV_WRITE ? CURL_CSELECT_OUT : 0) |
                        (revents & EV_ERROR ? CURL_CSELECT_ERR : 0);
  (void)loop;
  ml__curl.multi_socket_action(m->m, w->fd, action, &running);
  multi_done(m);
}

static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  Multi *m = w->data;
  int running;
  (void)loop;
  (void)revents;
  ml__curl.multi_socket_action(m->m, CURL_SOCKET_TIMEOUT, 0, &running);
  multi_done(m);
}

/* ---------------------------------------------------------------- */
/* Multi: a Session's pool.                                           */

Multi *ml__curl_check_multi(lua_State *L, int idx) {
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
    ml__curl_xfer_release(L, x, XS_ABORTED);
  }
  /* curl may still call socket_cb (REMOVE) and timer_cb as it closes
   * its connections: the records stay valid until it returns. */
  ml__curl.multi_cleanup(m->m);
  m->m = NULL;
  if (m->share) {
    ml__curl.share_cleanup(m->share);
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
  m->m = ml__curl.multi_init();
  if (m->m == NULL) return luaL_error(L, "curl_multi_init failed");
  ml__curl.multi_setopt(m->m, CURLMOPT_SOCKETFUNCTION, socket_cb);
  ml__curl.multi_setopt(m->m, CURLMOPT_SOCKETDATA, m);
  ml__curl.multi_setopt(m->m, CURLMOPT_TIMERFUNCTION, timer_cb);
  ml__curl.multi_setopt(m->m, CURLMOPT_TIMERDATA, m);
  ml__curl.multi_setopt(m->m, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  ml__curl.multi_setopt(m->m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)limit);
  ml__curl.multi_setopt(m->m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)per_host);
  ml__curl.multi_setopt(m->m, CURLMOPT_MAXCONNECTS, (long)(limit > 0 ? limit : 100));
  if (cookies) {
    m->share = ml__curl.share_init();
    if (m->share == NULL) return luaL_error(L, "curl_share_init failed");
    ml__curl.share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_COOKIE);
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

/* version(): libcurl's version and what it can do.  [-0, +1] */
static int l_version(lua_State *L) {
  curl_version_info_data *v = ml__curl.version_info(CURLVERSION_NOW);
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
  {"request", ml__curl_request},
  {"close", l_multi_close},
  {"active", l_multi_active},
  {NULL, NULL},
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
  ml__curl_xfer_open(L);
  lua_newtable(L);
  lua_pushcfunction(L, l_multi_new);
  lua_setfield(L, -2, "Multi");
  lua_pushcfunction(L, l_version);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, BODY_HIGH);
  lua_setfield(L, -2, "BODY_HIGH");
  return 1;
}
