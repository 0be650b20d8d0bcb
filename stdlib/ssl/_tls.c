/* _tls.c: TLS as a layer of a stream transport (net.h's ml_Layer), on
 * OpenSSL with memory BIOs: what the socket gives is written into a
 * memory BIO the SSL object reads; what the SSL object writes goes
 * through a small BIO straight into the transport's write queue.  The
 * transport keeps its socket, watchers, write buffer, flow control and
 * StreamReader buffer, so TLS streams and protocols behave as plain ones
 * (drain, pause_reading, write limits), records are decrypted straight
 * into the stream's buffer (or the state's scratch area for protocols),
 * and nothing is allocated per record once the buffers have grown.
 *
 * States: handshaking (the script awaits the handshake future, which
 * _wrap returns; plaintext written meanwhile waits in `pend`), held (a
 * protocol transport whose user protocol is not attached yet: nothing is
 * delivered until _release), open, closing (close() queued our
 * close_notify; the transport flushes and closes).  The peer's
 * close_notify is EOF for the reader; a socket EOF without it is EOF too
 * (the context sets OP_IGNORE_UNEXPECTED_EOF, as asyncio reports it) or,
 * with that option cleared, SSLEOFError.
 *
 * SSLObject, what get_extra_info("ssl_object") returns and the servername
 * callback is given, is in sslobject.c; the SSLContext in _ssl.c. */
#include <errno.h>
#include <string.h>
#include <pthread.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include "ssl/ssl.h"

#define RECORD_ROOM (16 * 1024 + 512) /* one TLS record's plaintext, and some */

static const ml_Layer tls_layer;

ml_Tls *ml__tls_of(ml_Conn *c) { return c && c->layer == &tls_layer ? c->layer_ud : NULL; }

/* ---------------------------------------------------------------- */
/* The output BIO: appends to the transport's write queue.            */

static BIO_METHOD *out_method;
static pthread_once_t out_once = PTHREAD_ONCE_INIT;

static int out_write_ex(BIO *b, const char *p, size_t n, size_t *written) {
  ml_Conn *c = BIO_get_data(b);
  BIO_clear_retry_flags(b);
  /* After the connection is lost (or the transport collected) output
   * has nowhere to go: it is dropped, not an error OpenSSL would report
   * as a failure of the connection that is already gone. */
  if (c != NULL && !c->lost && c->fd >= 0 && ml__bq_add(&c->wbuf, p, n) < 0) return 0;
  *written = n;
  return 1;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr) {
  (void)b;
  (void)num;
  (void)ptr;
  return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int out_create(BIO *b) {
  BIO_set_init(b, 1);
  return 1;
}

static void make_out_method(void) {
  out_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "moonloop transport");
  if (out_method == NULL) return;
  BIO_meth_set_write_ex(out_method, out_write_ex);
  BIO_meth_set_ctrl(out_method, out_ctrl);
  BIO_meth_set_create(out_method, out_create);
}

/* ---------------------------------------------------------------- */
/* Completing the handshake and failing (protected Lua).              */

/* [-0, +1] pushes the layer table of c (nil if c is not anchored). */
static int push_layer(lua_State *L, ml_Conn *c) {
  if (c->ref == LUA_NOREF) {
    lua_pushnil(L);
    return 0;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  lua_getiuservalue(L, -1, XUV_LAYER);
  lua_remove(L, -2);
  return lua_istable(L, -1);
}

enum { N_OK, N_SSL, N_RESET, N_LOST };

/* Protected: stack 1 c (light), 2 what (N_*), 3 SSL_get_error code.
 * Resolves the handshake future (N_OK), or makes the exception, fails the
 * future with it and ends the connection with it (N_SSL, N_RESET), or
 * fails the future with the error that ended the connection (N_LOST).
 * notify(c, what, err) -> nothing */
static int notify(lua_State *L) {
  ml_Conn *c = lua_touserdata(L, 1);
  int what = (int)lua_tointeger(L, 2), err = (int)lua_tointeger(L, 3);
  ml_Tls *t = ml__tls_of(c);
  int fut;
  lua_settop(L, 3);
  if (t == NULL) return 0;
  push_layer(L, c); /* 4 */
  if (lua_istable(L, 4)) lua_rawgeti(L, 4, LUV_FUTURE);
  else lua_pushnil(L); /* 5 */
  fut = ml__future_test(L, 5) && ml__future_state(ml__future_test(L, 5)) == ML_PENDING;
  switch (what) {
  case N_OK:
    if (fut) {
      lua_pushboolean(L, 1);
      ml__future_set_result(L, 5, 1);
    }
    return 0;
  case N_SSL: ml__ssl_push_error(L, t->ssl, err, t->host[0] ? t->host : NULL); break;
  case N_RESET:
    ml__exc_push(L, "ConnectionResetError", "Connection lost during the TLS handshake");
    break;
  case N_LOST:
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
    ml__conn_push_exc(L, -1, c);
    lua_remove(L, -2);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      ml__exc_push(L, "ConnectionResetError", "Connection lost during the TLS handshake");
    }
    if (fut) ml__future_set_exception(L, 5);
    return 0;
  }
  t->failed = 1; /* 6 the exception */
  if (fut) {
    lua_pushvalue(L, 6);
    ml__future_set_exception(L, 5);
  }
  ml__conn_fail(L, c);
  return 0;
}

/* [-0, +0] on the main state: runs notify protected. */
static void notify_call(ml_Conn *c, int what, int err) {
  lua_State *L = ml__main_lua(c->S);
  if (!lua_checkstack(L, 10)) {
    ml__conn_fail_errno(c, ENOMEM);
    return;
  }
  lua_pushcfunction(L, notify);
  lua_pushlightuserdata(L, c);
  lua_pushinteger(L, what);
  lua_pushinteger(L, err);
  if (ml__callback(L, 3, "Exception in TLS layer") != LUA_OK) ml__conn_fail_errno(c, ENOMEM);
}

/* ---------------------------------------------------------------- */
/* The pump: handshake, then decrypting while the reader wants data.  */

/* The peer's close_notify (or an EOF the context ignores): answer with
 * ours, give the reader its EOF and close, as asyncio's SSL transport
 * does (an eof_received returning true cannot keep a TLS connection
 * half-open). */
static void peer_closed(ml_Conn *c, ml_Tls *t) {
  if (!t->shut_sent && !c->sock_eof) {
    t->shut_sent = 1;
    ml__ssl_err_reset();
    SSL_shutdown(t->ssl);
    ml__ssl_err_reset();
    ml__conn_flush(c);
  }
  if (c->lost || c->fd < 0) return;
  if (c->kind == ML_CONN_STREAM) {
    c->eof = 1;
    ml__conn_wake_reader(c);
  } else {
    ml__conn_deliver_eof(c);
  }
  ml__conn_close(c, 0);
}

static int gone(ml_Conn *c) { return c->lost || c->fd < 0 || ml__tls_of(c) == NULL; }

/* 1 if the handshake is over (or the connection failed: check gone). */
static int handshake(ml_Conn *c, ml_Tls *t) {
  int r, e;
  ml__ssl_err_reset();
  r = SSL_do_handshake(t->ssl);
  ml__conn_flush(c);
  if (gone(c)) return 0;
  if (r != 1) {
    e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      if (!c->sock_eof) return 0;
      e = SSL_ERROR_SYSCALL;
    }
    if (c->sock_eof && (e == SSL_ERROR_SYSCALL || ERR_GET_REASON(ERR_peek_last_error()) ==
                                                    SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
      ml__ssl_err_reset();
      notify_call(c, N_RESET, 0);
    } else {
      notify_call(c, N_SSL, e);
    }
    return 0;
  }
  t->hs_done = 1;
  if (t->pend.len > 0) {
    size_t n;
    ml__ssl_err_reset();
    if (SSL_write_ex(t->ssl, t->pend.data + t->pend.off, t->pend.len, &n) != 1) {
      notify_call(c, N_SSL, SSL_get_error(t->ssl, 0));
      return 0;
    }
    ml__bq_free(&t->pend);
    ml__conn_flush(c);
    if (gone(c)) return 0;
  }
  notify_call(c, N_OK, 0);
  return !gone(c);
}

/* Decrypts into the stream buffer or the scratch area and delivers, as
 * long as the reader wants data and records are complete.  Returns the
 * SSL_get_error code that stopped it (SSL_ERROR_WANT_READ: input used
 * up), or -1 if the reader wants no more now or the connection ended. */
static int decrypt(ml_Conn *c, ml_Tls *t) {
  size_t n;
  if (c->kind == ML_CONN_STREAM) {
    int e = -1;
    while (!c->closing && !c->eof && ml__conn_wants_data(c)) {
      char *dst = ml__bq_reserve(&c->rbuf, 4 * RECORD_ROOM); /* fewer moves to the front */
      if (dst == NULL) {
        ml__conn_fail_errno(c, ENOMEM);
        return -1;
      }
      ml__ssl_err_reset();
      if (SSL_read_ex(t->ssl, dst, ml__bq_room(&c->rbuf), &n) == 1) {
        ml__bq_commit(&c->rbuf, n);
        /* Woken at once: from here the buffer's limit decides, not the
         * waiting reader (which would take everything the socket gave). */
        ml__conn_wake_reader(c);
        continue;
      }
      e = SSL_get_error(t->ssl, 0);
      break;
    }
    return e;
  }
  while (!c->closing && !c->eof && ml__conn_wants_data(c)) {
    size_t total = 0;
    int e = -1;
    /* Several records per data_received, up to the scratch area. */
    while (total + RECORD_ROOM <= c->scratch_size) {
      ml__ssl_err_reset();
      if (SSL_read_ex(t->ssl, c->scratch + total, c->scratch_size - total, &n) == 1) {
        total += n;
        continue;
      }
      e = SSL_get_error(t->ssl, 0);
      break;
    }
    if (total > 0) {
      unsigned long saved = e > 0 ? ERR_peek_last_error() : 0;
      ml__conn_deliver(c, c->scratch, total);
      if (gone(c)) return -1;
      if (saved) ERR_raise(ERR_GET_LIB(saved), ERR_GET_REASON(saved));
    }
    if (e >= 0) return e;
  }
  return -1;
}

static void end_linger(ml_Conn *c, ml_Tls *t) {
  if (ev_is_active(&t->shut)) ev_timer_stop(ml__loop(c->S), &t->shut);
  ml__conn_unlinger(c);
}

/* After our close_notify: what comes is dropped until the peer's
 * close_notify, its EOF or an error ends the wait. */
static void linger_read(ml_Conn *c, ml_Tls *t) {
  size_t n;
  for (;;) {
    ml__ssl_err_reset();
    if (SSL_read_ex(t->ssl, c->scratch, c->scratch_size, &n) == 1) continue;
    int e = SSL_get_error(t->ssl, 0);
    ml__ssl_err_reset();
    if (e == SSL_ERROR_WANT_READ && !c->sock_eof) return;
    break;
  }
  end_linger(c, t);
}

static void shut_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  ml_Tls *t = w->data;
  (void)loop;
  (void)revents;
  if (ml__tls_of(t->c) == NULL) return;
  ml__conn_close(t->c, 1); /* the peer never answered: as asyncio, abort */
}

static void pump(ml_Conn *c) {
  ml_Tls *t = ml__tls_of(c);
  int e;
  if (t == NULL || t->busy || t->failed || gone(c)) return;
  t->busy = 1;
  if (c->sock_eof && !t->eof_marked) {
    t->eof_marked = 1;
    BIO_set_mem_eof_return(t->rbio, 0); /* reads past the data now see EOF */
  }
  if (!t->hs_done && !handshake(c, t)) goto out;
  if (c->linger) {
    linger_read(c, t);
    goto out;
  }
  if (t->held || c->closing) goto out;
  e = decrypt(c, t);
  if (gone(c)) goto out;
  switch (e) {
  case -1:
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE: break;
  case SSL_ERROR_ZERO_RETURN:
    ml__ssl_err_reset();
    peer_closed(c, t);
    break;
  default: notify_call(c, N_SSL, e); goto out;
  }
  if (!gone(c)) {
    ml__conn_flush(c); /* reading may answer (TLS 1.3 key updates) */
    if (!gone(c)) ml__conn_update_reading(c);
  }
out:
  if ((t = ml__tls_of(c)) != NULL) t->busy = 0;
}

/* ---------------------------------------------------------------- */
/* The layer's functions (net.h).                                     */

static void tls_input(ml_Conn *c, const char *p, size_t n) {
  ml_Tls *t = ml__tls_of(c);
  if (t == NULL) return;
  if (n > 0 && BIO_write(t->rbio, p, (int)n) != (int)n) {
    ml__conn_fail_errno(c, ENOMEM);
    return;
  }
  pump(c);
}

/* The layer's write: [-0, +0], L unused; < 0 if the bytes could not be
 * queued. */
static int tls_write(lua_State *L, ml_Conn *c, const char *p, size_t n) {
  ml_Tls *t = ml__tls_of(c);
  size_t w;
  (void)L;
  if (t == NULL || t->failed || t->shut_sent) return 0;
  if (!t->hs_done) return ml__bq_add(&t->pend, p, n);
  ml__ssl_err_reset();
  if (SSL_write_ex(t->ssl, p, n, &w) != 1) {
    /* Only a broken connection gets here (the output BIO takes all). */
    if (ERR_peek_last_error() == 0) return -ENOMEM;
    notify_call(c, N_SSL, SSL_get_error(t->ssl, 0));
    return 0;
  }
  ml__conn_flush(c);
  return 0;
}

/* Queues close_notify and, unless the peer's came already, lingers:
 * the transport keeps reading until the peer answers (or its socket
 * ends, or the shutdown timeout passes), then closes. */
static void tls_close(ml_Conn *c) {
  ml_Tls *t = ml__tls_of(c);
  int r;
  if (t == NULL || !t->hs_done || t->shut_sent || t->failed) return;
  t->shut_sent = 1;
  ml__ssl_err_reset();
  r = SSL_shutdown(t->ssl); /* queues close_notify */
  ml__ssl_err_reset();
  ml__conn_flush(c);
  if (r == 0 && !gone(c) && !c->sock_eof && t->shutdown_timeout > 0) {
    c->linger = 1;
    ev_timer_set(&t->shut, t->shutdown_timeout, 0.);
    ev_timer_start(ml__loop(c->S), &t->shut);
  }
}

static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  ml_Tls *t = w->data;
  (void)loop;
  (void)revents;
  pump(t->c);
}

/* A zero timer rather than ev_feed_event: a fed event waits for the
 * next poll, which may block. */
static void tls_resume(ml_Conn *c) {
  ml_Tls *t = ml__tls_of(c);
  if (t == NULL || t->held || t->failed || ev_is_active(&t->kick)) return;
  if (SSL_pending(t->ssl) > 0 || BIO_ctrl_pending(t->rbio) > 0 || (c->sock_eof && !t->eof_marked)) {
    ev_timer_set(&t->kick, 0., 0.);
    ev_timer_start(ml__loop(c->S), &t->kick);
  }
}

static void tls_lost(ml_Conn *c) {
  ml_Tls *t = ml__tls_of(c);
  if (t != NULL && ev_is_active(&t->kick)) ev_timer_stop(ml__loop(c->S), &t->kick);
  if (t != NULL && ev_is_active(&t->shut)) ev_timer_stop(ml__loop(c->S), &t->shut);
  c->linger = 0;
  if (t != NULL && !t->hs_done && !t->failed) {
    t->failed = 1;
    notify_call(c, N_LOST, 0);
  }
}

static void tls_free(ml_Conn *c) {
  ml_Tls *t = c->layer_ud;
  if (t == NULL) return;
  if (ev_is_active(&t->kick)) ev_timer_stop(ml__loop(c->S), &t->kick);
  if (ev_is_active(&t->shut)) ev_timer_stop(ml__loop(c->S), &t->shut);
  if (t->ssl) {
    BIO *w = SSL_get_wbio(t->ssl);
    if (w) BIO_set_data(w, NULL);
    SSL_free(t->ssl); /* and its BIOs */
  }
  ml__bq_free(&t->pend);
  c->wbuf.alloc(c->wbuf.ud, t, sizeof *t, 0);
  c->layer_ud = NULL;
}

/* The layer's get_extra_info: [-0, +1|0] pushes the value of name and
 * returns 1, or returns 0 with nothing pushed (not a TLS field). */
static int tls_extra(lua_State *L, int cidx, ml_Conn *c, const char *name) {
  ml_Tls *t = ml__tls_of(c);
  if (t == NULL) return 0;
  if (strcmp(name, "ssl_object") == 0) return ml__tls_push_sslobject(L, cidx);
  if (strcmp(name, "peercert") == 0) return ml__tls_push_peercert(L, t, 0);
  if (strcmp(name, "cipher") == 0) return ml__tls_push_cipher(L, t);
  if (strcmp(name, "compression") == 0) {
    lua_pushnil(L);
    return 1;
  }
  if (strcmp(name, "sslcontext") == 0) {
    lua_getiuservalue(L, cidx, XUV_LAYER);
    if (lua_istable(L, -1)) lua_rawgeti(L, -1, LUV_CTX);
    else lua_pushnil(L);
    lua_remove(L, -2);
    return 1;
  }
  return 0;
}

static const ml_Layer tls_layer = {
  tls_input, tls_write, tls_close, tls_resume, tls_extra, tls_lost, tls_free,
};

/* ---------------------------------------------------------------- */
/* Callbacks set on contexts.                                         */

int ml__tls_new_session_cb(SSL *ssl, SSL_SESSION *sess) {
  ml_Conn *c = SSL_get_app_data(ssl);
  ml_Tls *t = ml__tls_of(c);
  ml_SslCtx *x = ml__sslctx_of(SSL_get_SSL_CTX(ssl));
  if (t == NULL || x == NULL || t->key[0] == 0) return 0;
  ml__sslctx_remember(x, t->key, sess);
  return 1;
}

/* Protected: stack 1 c (light), 2 the alert slot (light).  Calls
 * sni_callback(ssl_object, server_name, context).
 * sni_call(c, alert) -> nothing */
static int sni_call(lua_State *L) {
  ml_Conn *c = lua_touserdata(L, 1);
  int *alert = lua_touserdata(L, 2);
  ml_Tls *t = ml__tls_of(c);
  ml_SslCtx *x;
  const char *name;
  lua_settop(L, 0);
  if (t == NULL || c->ref == LUA_NOREF) return 0;
  x = ml__sslctx_of(SSL_get_SSL_CTX(t->ssl));
  if (x == NULL || x->sni_ref == LUA_NOREF) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, x->sni_ref); /* 1 fn */
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);     /* 2 transport */
  ml__tls_push_sslobject(L, 2);                  /* 3 */
  name = SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
  if (name) lua_pushstring(L, name);
  else lua_pushnil(L); /* 4 */
  push_layer(L, c);
  if (lua_istable(L, -1)) lua_rawgeti(L, -1, LUV_CTX);
  else lua_pushnil(L);
  lua_remove(L, -2); /* 5 */
  lua_remove(L, 2);
  lua_call(L, 3, 1);
  if (lua_isinteger(L, -1)) *alert = (int)lua_tointeger(L, -1) + 1;
  return 0;
}

/* [-0, +0] on the main state: runs sni_call protected. */
int ml__tls_sni_cb(SSL *ssl, int *al, void *arg) {
  ml_Conn *c = SSL_get_app_data(ssl);
  lua_State *L;
  int alert = 0;
  (void)arg;
  if (ml__tls_of(c) == NULL) return SSL_TLSEXT_ERR_OK;
  L = ml__main_lua(c->S);
  if (!lua_checkstack(L, 10)) return SSL_TLSEXT_ERR_ALERT_FATAL;
  lua_pushcfunction(L, sni_call);
  lua_pushlightuserdata(L, c);
  lua_pushlightuserdata(L, &alert);
  if (ml__callback(L, 2, "Exception in the servername callback") != LUA_OK) {
    *al = SSL_AD_HANDSHAKE_FAILURE;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  if (alert) {
    *al = alert - 1;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  return SSL_TLSEXT_ERR_OK;
}

/* ---------------------------------------------------------------- */
/* The module's functions (ssl._ssl).                                 */

static int is_ip(const char *host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* _wrap(transport, context, server_side, server_hostname, hold,
 * shutdown_timeout) -> handshake future.  Puts TLS over the open stream transport (a
 * StreamWriter's or a protocol's); the bytes its stream buffer holds
 * unread (STARTTLS pipelining) are the first TLS input.  With hold, the
 * protocol gets nothing until _release. */
int ml__tls_wrap(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  ml_SslCtx *x = ml__sslctx_check(L, 2);
  int server = lua_toboolean(L, 3);
  const char *host = luaL_optstring(L, 4, NULL);
  int hold = lua_toboolean(L, 5);
  ml_Tls *t;
  BIO *wbio;
  luaL_optnumber(L, 6, 30.0);
  lua_settop(L, 6);
  if (c->kind == ML_CONN_DGRAM) return luaL_argerror(L, 1, "a stream transport expected");
  if (c->layer) return ml__exc_raise(L, "RuntimeError", "the transport already uses TLS");
  if (c->closing || c->lost || c->fd < 0)
    return ml__exc_raise(L, "RuntimeError", "the transport is closing");
  if (c->eof_req) return ml__exc_raise(L, "RuntimeError", "TLS over a half-closed transport");
  if (host && strlen(host) >= sizeof t->host)
    return luaL_argerror(L, 4, "server_hostname too long");
  pthread_once(&out_once, make_out_method);
  if (out_method == NULL) return ml__exc_raise(L, "MemoryError", "BIO method");

  lua_createtable(L, 2, 0); /* 7 the layer table */
  lua_pushvalue(L, 2);
  lua_rawseti(L, 7, LUV_CTX);
  ml__future_new(L); /* 8 */
  lua_pushvalue(L, 8);
  lua_rawseti(L, 7, LUV_FUTURE);

  t = c->wbuf.alloc(c->wbuf.ud, NULL, 0, sizeof *t);
  if (t == NULL) return ml__exc_raise(L, "MemoryError", "TLS state");
  memset(t, 0, sizeof *t);
  t->c = c;
  ev_init(&t->kick, kick_cb);
  t->kick.data = t;
  ev_init(&t->shut, shut_cb);
  t->shut.data = t;
  t->shutdown_timeout = luaL_optnumber(L, 6, 30.0);
  t->server = (unsigned char)server;
  t->held = (unsigned char)hold;
  ml__bq_init(&t->pend, L);
  ml__ssl_err_reset();
  t->ssl = SSL_new(x->ctx);
  t->rbio = BIO_new(BIO_s_mem());
  wbio = BIO_new(out_method);
  if (t->ssl == NULL || t->rbio == NULL || wbio == NULL) {
    if (t->ssl) SSL_free(t->ssl);
    if (t->rbio) BIO_free(t->rbio);
    if (wbio) BIO_free(wbio);
    c->wbuf.alloc(c->wbuf.ud, t, sizeof *t, 0);
    return ml__ssl_raise(L, "SSL_new");
  }
  BIO_set_data(wbio, c);
  SSL_set_bio(t->ssl, t->rbio, wbio);
  SSL_set_app_data(t->ssl, c);
  /* From here t belongs to the transport (freed by its __gc). */
  c->layer = &tls_layer;
  c->layer_ud = t;
  lua_pushvalue(L, 7);
  lua_setiuservalue(L, 1, XUV_LAYER);
  if (host) snprintf(t->host, sizeof t->host, "%s", host);
  if (server) {
    SSL_set_accept_state(t->ssl);
  } else {
    SSL_set_connect_state(t->ssl);
    if (host && !is_ip(host)) SSL_set_tlsext_host_name(t->ssl, host);
    if (host && x->check_hostname) {
      X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
      X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      if (is_ip(host)) X509_VERIFY_PARAM_set1_ip_asc(vp, host);
      else X509_VERIFY_PARAM_set1_host(vp, host, 0);
    }
    /* The cache key: the name and the peer's port (a session of one
     * server is no use to another on the same host), else the address. */
    if (c->plen > 0) {
      socklen_t plen;
      const struct sockaddr *peer = ml__conn_addr(L, 1, c, 1, &plen);
      ml__sock_pushaddr(L, peer, plen);
      if (lua_istable(L, -1)) {
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        snprintf(t->key, sizeof t->key, "%s:%s",
                 host                  ? host
                 : lua_tostring(L, -2) ? lua_tostring(L, -2)
                                       : "",
                 lua_tostring(L, -1) ? lua_tostring(L, -1) : "");
        lua_pop(L, 2);
      } else if (lua_isstring(L, -1)) {
        snprintf(t->key, sizeof t->key, "%s@%s", host ? host : "", lua_tostring(L, -1));
      }
      lua_pop(L, 1);
    } else if (host) {
      snprintf(t->key, sizeof t->key, "%s", host);
    }
    if (t->key[0]) {
      SSL_SESSION *s = ml__sslctx_session(x, t->key);
      if (s) {
        SSL_set_session(t->ssl, s);
        SSL_SESSION_free(s);
      }
    }
  }
  /* Unread plaintext-era bytes are the peer's first TLS bytes. */
  if (c->kind == ML_CONN_STREAM && c->rbuf.len > 0) {
    BIO_write(t->rbio, c->rbuf.data + c->rbuf.off, (int)c->rbuf.len);
    ml__bq_consume(&c->rbuf, c->rbuf.len);
  }
  if (!server || BIO_ctrl_pending(t->rbio) > 0) pump(c);
  if (!gone(c)) ml__conn_update_reading(c);
  lua_settop(L, 8);
  return 1;
}

/* _release(transport) -> nothing: a held protocol transport starts
 * delivering. */
int ml__tls_release(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  ml_Tls *t = ml__tls_of(c);
  if (t == NULL) return luaL_argerror(L, 1, "not a TLS transport");
  if (t->held) {
    t->held = 0;
    if (!gone(c)) ml__conn_update_reading(c);
  }
  return 0;
}

/* _abort(transport, exc): ends the connection with exc (a handshake
 * timeout); the handshake future fails with it if it is pending.
 * -> nothing */
int ml__tls_abort(lua_State *L) {
  ml_Conn *c = ml__conn_check(L, 1);
  ml_Tls *t = ml__tls_of(c);
  luaL_checkany(L, 2);
  lua_settop(L, 2);
  if (t == NULL || gone(c)) return 0;
  t->failed = 1;
  lua_getiuservalue(L, 1, XUV_LAYER);
  if (lua_istable(L, 3)) {
    lua_rawgeti(L, 3, LUV_FUTURE);
    if (ml__future_test(L, 4) && ml__future_state(ml__future_test(L, 4)) == ML_PENDING) {
      lua_pushvalue(L, 2);
      ml__future_set_exception(L, 4);
    }
  }
  lua_pushvalue(L, 2);
  ml__conn_fail(L, c);
  return 0;
}
