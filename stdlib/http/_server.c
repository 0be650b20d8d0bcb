/* _server.c: http._server, one HTTP/1.x server connection: the protocol
 * object of a transport (asyncio's callback path, so TLS comes from the
 * transport's layer), parsing requests with llhttp, building each Request
 * table, writing responses, and the connection's limits and timers.  The
 * handler runs in one task per connection (http/server.lua), which awaits
 * the connection object for each request in turn.
 *
 * Requests are answered in order: the parser pauses at the end of each
 * message and resumes only when its response is complete, keeping the
 * bytes of pipelined requests in `in` meanwhile.  A request goes to the
 * handler when its headers are complete; its body follows into `body`,
 * which the handler takes piece by piece (req:chunks()); reading pauses
 * while `body` or `in` holds more than BUF_HIGH, so a slow handler holds
 * memory flat.
 *
 * Timers: one ev_timer per connection, re-armed lazily.  The connection
 * is idle (between requests: keepalive_timeout closes it), reading a head
 * (header_timeout from the first byte answers 408), or busy (no limit).
 * Phases change without touching the timer; when it fires it compares
 * the phase's start with its limit and re-arms for what is left.
 *
 * The parser's side (llhttp's callbacks, feeding it) is in _parse.c, the
 * response writer in _respond.c; hconn.h is what the three share. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include "http/hconn.h"

/* ---------------------------------------------------------------- */
/* Small helpers.                                                     */

HConn *ml__http_check_hc(lua_State *L, int idx) {
  HConn *hc = lua_touserdata(L, idx);
  if (hc == NULL || lua_rawlen(L, idx) != sizeof *hc || hc->magic != HC_MAGIC)
    luaL_typeerror(L, idx, ML_HTTPCONN);
  return hc;
}

void ml__http_wake(HConn *hc, int kind) {
  if (hc->waiter && (kind == W_NONE || hc->wait == kind)) {
    ml_Task *t = hc->waiter;
    hc->waiter = NULL;
    hc->wait = W_NONE;
    ml__task_wake(t);
  }
}

void ml__http_set_phase(HConn *hc, int phase) {
  hc->phase = phase;
  hc->phase_start = ev_now(ml__loop(hc->S));
}

/* Reading is wanted unless a buffer is over BUF_HIGH. */
void ml__http_update_reading(HConn *hc) {
  ml_Conn *c = hc->c;
  int want;
  if (c == NULL) return;
  want = hc->in.len <= BUF_HIGH && hc->body.len <= BUF_HIGH;
  if (want && hc->rpaused) {
    hc->rpaused = 0;
    c->paused = 0;
    ml__conn_update_reading(c);
    ml__sched_poll_soon(hc->S);
  } else if (!want && !hc->rpaused) {
    hc->rpaused = 1;
    c->paused = 1;
    ml__conn_update_reading(c);
  }
}

/* Closes the transport once what is queued is written. */
void ml__http_close_conn(HConn *hc, int abort) {
  if (hc->c && !hc->closed) {
    hc->closed = 1;
    ml__conn_close(hc->c, abort);
  }
}

/* ---------------------------------------------------------------- */
/* Protocol methods (called by the transport).                        */

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static int hc_data_raw(lua_State *L);

/* conn:connection_made(transport) */
static int hc_connection_made(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  hc->c = ml__conn_check(L, 2);
  hc->c->data_fn = hc_data_raw;
  hc->c->data_ud = hc;
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 1, UV_TR);
  ml__http_set_phase(hc, P_IDLE);
  ev_timer_set(
    &hc->tm,
    hc->keepalive_timeout < hc->header_timeout ? hc->keepalive_timeout : hc->header_timeout, 0.);
  ev_timer_start(ml__loop(hc->S), &hc->tm);
  return 0;
}

/* The bytes s[0..n) arrived; the connection is on top of L's stack. */
static void input(lua_State *L, HConn *hc, const char *s, size_t n) {
  if (hc->lingering) {
    hc->lingered += n;
    if (hc->lingered > LINGER_BYTES) ml__http_close_conn(hc, 1);
    return;
  }
  if (hc->closed || hc->err) return;
  if (hc->upgraded) {
    /* bytes after an upgrade wait for the WebSocket layer */
    if (ml__bq_add(&hc->in, s, n) < 0) ml__http_close_conn(hc, 1);
    ml__http_wake(hc, W_BODY);
    ml__http_update_reading(hc);
    return;
  }
  if (hc->in.len == 0 && !hc->paused) {
    size_t k = ml__http_run_parser(L, hc, s, n);
    s += k;
    n -= k;
  }
  if (n && !hc->closed && hc->err == 0 && ml__bq_add(&hc->in, s, n) < 0) ml__http_close_conn(hc, 1);
  ml__http_feed_pending(L, hc);
}

/* conn:data_received(bytes): the protocol method, for a transport that
 * hands strings (the raw path below is the usual one). */
static int hc_data_received(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  lua_settop(L, 2);
  lua_pushvalue(L, 1);
  input(L, hc, s, n);
  return 0;
}

/* The transport's raw data path (net.h, data_fn): raw(transport light,
 * n, bytes light) -> nothing.  No string is made for the bytes. */
static int hc_data_raw(lua_State *L) {
  ml_Conn *c = lua_touserdata(L, 1);
  size_t n = (size_t)lua_tointeger(L, 2);
  const char *s = lua_touserdata(L, 3);
  HConn *hc = c->data_ud;
  lua_settop(L, 3);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  lua_getiuservalue(L, 4, XUV_PROTO);
  if (lua_touserdata(L, 5) != hc) return 0;
  input(L, hc, s, n);
  return 0;
}

/* conn:eof_received() -> keep open: a request being answered is answered
 * (the peer half-closed after sending it); otherwise the transport
 * closes. */
static int hc_eof_received(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  hc->eof = 1;
  if (hc->lingering) return 0; /* closes */
  if (hc->active && !hc->complete && !hc->upgraded) {
    /* ended mid-body */
    llhttp_errno_t e = llhttp_finish(&hc->p);
    if (e != HPE_OK && hc->err == 0) hc->err = 400;
    if (e == HPE_OK && !hc->complete) hc->err = 400;
    hc->keep_alive = 0;
    ml__http_wake(hc, W_BODY);
  }
  hc->keep_alive = 0;
  ml__http_wake(hc, W_NONE);
  lua_pushboolean(L, hc->active);
  return 1;
}

/* conn:connection_lost(exc) */
static int hc_connection_lost(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  if (ev_is_active(&hc->tm)) ev_timer_stop(ml__loop(hc->S), &hc->tm);
  hc->c = NULL;
  hc->closed = 1;
  if (hc->err == 0) hc->err = -ECONNRESET;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, UV_TR);
  ml__bq_free(&hc->in);
  ml__bq_free(&hc->head);
  ml__bq_free(&hc->out);
  ml__http_wake(hc, W_NONE);
  return 0;
}

static int hc_pause_writing(lua_State *L) {
  ml__http_check_hc(L, 1)->wpaused = 1;
  return 0;
}

static int hc_resume_writing(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  hc->wpaused = 0;
  ml__http_wake(hc, W_DRAIN);
  return 0;
}

/* Protected timer body: timeout(hc light) */
static int on_timeout(lua_State *L) {
  HConn *hc = lua_touserdata(L, 1);
  double now = ev_now(ml__loop(hc->S)), left;
  if (hc->c == NULL || hc->closed) return 0;
  if (hc->phase == P_IDLE && now - hc->phase_start >= hc->keepalive_timeout) {
    ml__http_close_conn(hc, 0);
    return 0;
  }
  if (hc->phase == P_LINGER && now - hc->phase_start >= LINGER_TIME) {
    ml__http_close_conn(hc, 1);
    return 0;
  }
  if (hc->phase == P_HEAD && now - hc->phase_start >= hc->header_timeout) {
    ml__http_simple_response(L, hc, 408, "Request Timeout\n");
    return 0;
  }
  left = hc->phase == P_IDLE
           ? fmin(hc->keepalive_timeout - (now - hc->phase_start), hc->header_timeout)
         : hc->phase == P_HEAD   ? hc->header_timeout - (now - hc->phase_start)
         : hc->phase == P_LINGER ? LINGER_TIME - (now - hc->phase_start)
                                 : hc->keepalive_timeout;
  if (left < 0.001) left = 0.001;
  ev_timer_set(&hc->tm, left, 0.);
  ev_timer_start(ml__loop(hc->S), &hc->tm);
  return 0;
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  HConn *hc = w->data;
  lua_State *L = ml__main_lua(hc->S);
  (void)loop;
  (void)revents;
  if (!lua_checkstack(L, 8)) return;
  lua_pushcfunction(L, on_timeout);
  lua_pushlightuserdata(L, hc);
  ml__callback(L, 1, "Exception in HTTP timer");
}

/* ---------------------------------------------------------------- */
/* The connection's task side.                                        */

int ml__http_cancel_hook(lua_State *L, ml_Task *t, void *ud) {
  HConn *hc = ud;
  (void)L;
  if (hc->waiter == t) {
    hc->waiter = NULL;
    hc->wait = W_NONE;
  }
  return 0;
}

/* [-0, +1] the next request, or nil when there will be none. */
static int push_next(lua_State *L, int idx, HConn *hc) {
  if (lua_getiuservalue(L, idx, UV_REQ) != LUA_TNIL) {
    lua_pushnil(L);
    lua_setiuservalue(L, idx, UV_REQ);
    return 1;
  }
  if (hc->closed || hc->draining || (hc->eof && !hc->in.len) || hc->upgraded || hc->err) return 1;
  lua_pop(L, 1);
  return 0;
}

static int next_k(lua_State *L, int status, lua_KContext ctx) {
  HConn *hc = lua_touserdata(L, 1); /* hc_await checked it; the stack is as it left it */
  (void)status;
  (void)ctx;
  if (push_next(L, 1, hc)) return 1;
  lua_pushnil(L);
  return 1;
}

/* await conn -> the next request, or nil when the connection is done. */
static int hc_await(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  lua_settop(L, 1);
  if (push_next(L, 1, hc)) return 1;
  hc->waiter = ml__task_current(L);
  hc->wait = W_REQ;
  return ml__task_suspend(L, ml__http_cancel_hook, hc, 0, next_k);
}

static void send_continue(lua_State *L, HConn *hc) {
  if (hc->expect && hc->resp == R_NONE && hc->c && !hc->closed) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    hc->expect = 0;
    ml__conn_write(L, hc->c, cont, sizeof cont - 1);
  }
}

/* [-0, +1] pushes the error the body reader raises for hc->err. */
static int raise_body_error(lua_State *L, HConn *hc) {
  if (hc->err > 0) {
    /* http.HTTPError(status, msg): the handler that lets it pass answers
     * that status (a bad chunked body is the client's 400, not a 500) */
    llhttp_errno_t e = llhttp_get_errno(&hc->p);
    const char *why = llhttp_get_error_reason(&hc->p);
    ml__require(L, "http.server");
    lua_getfield(L, -1, "_body_error");
    lua_pushinteger(L, hc->err);
    if (hc->err == 413) lua_pushliteral(L, "Payload Too Large");
    else if (e != HPE_OK && e != HPE_PAUSED && why && *why)
      lua_pushfstring(L, "Bad Request: %s", why);
    else lua_pushliteral(L, "Bad Request: the body ended early");
    lua_call(L, 2, 1);
    return lua_error(L);
  }
  return ml__exc_raise_errno(L, ECONNRESET,
                             "the client went away before its request body was read");
}

static int body_k(lua_State *L, int status, lua_KContext ctx);

/* conn:_body() -> the next piece of the active request's body, or nil at
 * its end (async). */
static int hc_body(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  lua_settop(L, 1);
  if (!hc->active)
    luaL_error(L, "the request's body can only be read before its response is complete");
  send_continue(L, hc);
  if (hc->body.len) {
    lua_pushlstring(L, hc->body.data + hc->body.off, hc->body.len);
    ml__bq_consume(&hc->body, hc->body.len);
    ml__http_update_reading(hc);
    return 1;
  }
  if (hc->complete) {
    lua_pushnil(L);
    return 1;
  }
  if (hc->err) return raise_body_error(L, hc);
  hc->waiter = ml__task_current(L);
  hc->wait = W_BODY;
  return ml__task_suspend(L, ml__http_cancel_hook, hc, 0, body_k);
}

static int body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lua_settop(L, 1);
  return hc_body(L);
}

/* conn:_finish_or_fail() -> nothing: the handler returned nothing: ends
 * its streamed response, or raises if it never answered. */
static int hc_finish_or_fail(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  if (hc->active && hc->resp == R_NONE)
    return luaL_error(L, "the handler returned no response (return a string or an http.Response, "
                         "or call req:respond())");
  return ml__http_finish(L);
}

/* conn:_close() -> nothing: closes once the responses are written.  A
 * connection lingering after an error answer stays until the client's EOF
 * (or LINGER_TIME): closing it with input unread would reset it, and the
 * client might lose the answer (make fuzz-http found this after a handler
 * whose body read failed). */
static int hc_close(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  if (hc->lingering) return 0;
  ml__http_close_conn(hc, 0);
  return 0;
}

/* conn:_fail(status) -> nothing: the handler failed.  Answers status if
 * no response was begun; otherwise aborts the connection (a response
 * half-sent cannot be taken back). */
static int hc_fail(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  int status = ml__http_check_status(L, 2);
  const char *msg = luaL_optstring(L, 3, ml__http_reason(status));
  lua_settop(L, 1);
  if (!hc->active) return 0;
  if (hc->resp == R_NONE) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s\n", msg);
    ml__http_simple_response(L, hc, status, buf);
  } else {
    ml__http_close_conn(hc, 1);
  }
  hc->active = 0;
  return 0;
}

/* conn:_shutdown() -> nothing: the server is closing: an idle connection
 * closes now, a busy one after its response. */
static int hc_shutdown(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  hc->draining = 1;
  if (!hc->active && hc->phase != P_HEAD) ml__http_close_conn(hc, 0);
  ml__http_wake(hc, W_REQ);
  return 0;
}

/* conn:_abort() -> nothing */
static int hc_abort(lua_State *L) {
  ml__http_close_conn(ml__http_check_hc(L, 1), 1);
  return 0;
}

/* conn:_info() -> a table of the connection's state, for tests. */
static int hc_transport(lua_State *L) {
  ml__http_check_hc(L, 1);
  lua_getiuservalue(L, 1, UV_TR);
  return 1;
}

/* conn:_upgrade_take() -> the bytes read after the upgrade request (and
 * forgets them): the WebSocket layer's first input. */
static int hc_take_raw(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  lua_pushlstring(L, hc->in.data ? hc->in.data + hc->in.off : "", hc->in.len);
  ml__bq_consume(&hc->in, hc->in.len);
  return 1;
}

static int raw_k(lua_State *L, int status, lua_KContext ctx);

/* conn:_raw() (async) -> the bytes read after an upgrade, "" at the
 * end of the connection. */
static int hc_raw(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  lua_settop(L, 1);
  if (hc->in.len) {
    lua_pushlstring(L, hc->in.data + hc->in.off, hc->in.len);
    ml__bq_consume(&hc->in, hc->in.len);
    ml__http_update_reading(hc);
    return 1;
  }
  if (hc->eof || hc->closed || hc->c == NULL) {
    lua_pushliteral(L, "");
    return 1;
  }
  hc->waiter = ml__task_current(L);
  hc->wait = W_BODY;
  return ml__task_suspend(L, ml__http_cancel_hook, hc, 0, raw_k);
}

static int raw_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lua_settop(L, 1);
  return hc_raw(L);
}

/* conn:_upgraded() -> true if the parser stopped at an upgrade request. */
static int hc_is_upgrade(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  lua_pushboolean(L, hc->upgraded);
  return 1;
}

/* conn:_raw_head(101 response) -> nothing: writes bytes as they are (the
 * 101 Switching Protocols answer), marking the response begun. */
static int hc_write_raw(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  if (hc->c == NULL || hc->closed) return ml__exc_raise_errno(L, ECONNRESET, "write");
  hc->resp = R_STREAM;
  hc->chunked = 0;
  hc->keep_alive = 0;
  ml__conn_write(L, hc->c, s, n);
  lua_pushboolean(L, hc->wpaused);
  return 1;
}

static int hc_gc(lua_State *L) {
  HConn *hc = lua_touserdata(L, 1);
  if (hc == NULL || lua_rawlen(L, 1) != sizeof *hc || hc->magic != HC_MAGIC) return 0;
  if (ev_is_active(&hc->tm)) ev_timer_stop(ml__loop(hc->S), &hc->tm);
  ml__bq_free(&hc->in);
  ml__bq_free(&hc->head);
  ml__bq_free(&hc->body);
  ml__bq_free(&hc->out);
  hc->magic = 0;
  return 0;
}

static const luaL_Reg hc_methods[] = {
  {"connection_made", hc_connection_made},
  {"data_received", hc_data_received},
  {"eof_received", hc_eof_received},
  {"connection_lost", hc_connection_lost},
  {"pause_writing", hc_pause_writing},
  {"resume_writing", hc_resume_writing},
  {"_respond", ml__http_respond},
  {"_start", ml__http_start},
  {"_write", ml__http_write},
  {"_finish", ml__http_finish},
  {"_finish_or_fail", hc_finish_or_fail},
  {"_close", hc_close},
  {"_fail", hc_fail},
  {"_shutdown", hc_shutdown},
  {"_abort", hc_abort},
  {"_transport", hc_transport},
  {"_take_raw", hc_take_raw},
  {"_upgraded", hc_is_upgrade},
  {"_write_raw", hc_write_raw},
  {NULL, NULL},
};

static const luaL_Reg hc_async[] = {
  {"_body", hc_body},
  {"_drain", ml__http_drain},
  {"_raw", hc_raw},
  {NULL, NULL},
};

/* _conn(request_mt, headers_mt, limits) -> a new connection protocol.
 * limits: header_limit (bytes), body_limit (bytes), header_timeout and
 * keepalive_timeout (seconds). */
static int l_conn(lua_State *L) {
  HConn *hc;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_checktype(L, 3, LUA_TTABLE);
  hc = lua_newuserdatauv(L, sizeof *hc, UV_N);
  memset(hc, 0, sizeof *hc);
  hc->magic = HC_MAGIC;
  hc->S = ml__state(L);
  ml__bq_init(&hc->in, L);
  ml__bq_init(&hc->head, L);
  ml__bq_init(&hc->body, L);
  ml__bq_init(&hc->out, L);
  llhttp_init(&hc->p, HTTP_REQUEST, ml__http_settings());
  hc->p.data = hc;
  ev_init(&hc->tm, timer_cb);
  hc->tm.data = hc;
  lua_getfield(L, 3, "header_limit");
  hc->header_limit = (size_t)luaL_optinteger(L, -1, 8192);
  lua_getfield(L, 3, "body_limit");
  hc->body_limit = (uint64_t)luaL_optinteger(L, -1, 1 << 20);
  lua_getfield(L, 3, "header_timeout");
  hc->header_timeout = luaL_optnumber(L, -1, 10.);
  lua_getfield(L, 3, "keepalive_timeout");
  hc->keepalive_timeout = luaL_optnumber(L, -1, 5.);
  lua_pop(L, 4);
  luaL_setmetatable(L, ML_HTTPCONN);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, UV_REQMT);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, UV_HDRMT);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setiuservalue(L, -2, UV_KEYS);
  return 1;
}

/* [-0, +1] pushes the keys table of hconn.h's K_* (the Request's field
 * names and constant values; the method names are added as met). */
static void push_keys(lua_State *L) {
  static const char *const k[] = {
    "method", "target", "path", "query_string", "version", "headers",
    "_hc",    "",       "1.0",  "1.1",          "0.9",
  };
  lua_createtable(L, K_METHOD0 + 8, 0);
  for (int i = 0; i < (int)(sizeof k / sizeof *k); i++) {
    lua_pushstring(L, k[i]);
    lua_rawseti(L, -2, K_METHOD + i);
  }
}

static const luaL_Reg module_funcs[] = {
  {"reason", ml__http_l_reason},
  {"_json_response", ml__http_l_json_response},
  {NULL, NULL},
};

/* [-0, +1] pushes the module table. */
int luaopen_http__server(lua_State *L) {
  (void)ml__http_settings(); /* made once per process: states of several threads share it */
  luaL_requiref(L, "asyncio._transport", luaopen_asyncio__transport, 0);
  lua_pop(L, 1);
  if (luaL_newmetatable(L, ML_HTTPCONN)) {
    lua_newtable(L);
    luaL_setfuncs(L, hc_methods, 0);
    ml__net_setfuncs(L, -1, "http.Connection.", NULL, hc_async);
    lua_pushcfunction(L, hc_await);
    lua_setfield(L, -3, "__await");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, hc_gc);
    lua_setfield(L, -2, "__gc");
    ml__await_register(L, hc_await); /* `await conn` without __await's lookup */
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, module_funcs, 0);
  push_keys(L);
  lua_pushcclosure(L, l_conn, 1);
  lua_setfield(L, -2, "_conn");
  return 1;
}
