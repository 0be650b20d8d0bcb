/* _curl_xfer.c: the HTTP client's Transfers (http._curl): one curl easy
 * handle in a Multi, made from the script's request spec (method, URL,
 * headers, body, timeouts, TLS settings, redirects), and its methods: wait
 * for headers, data or the end; take the body as it comes (a slow reader
 * pauses the transfer, so memory stays flat); info, result, stats, close.
 * The engine that drives it (curl's callbacks, the Multi) is _curl.c; the
 * rules at the top of that file hold here too. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "http/hcurl.h"

/* ---------------------------------------------------------------- */
/* Transfers.                                                         */

static Xfer *check_xfer(lua_State *L, int idx) { return ml__udata_check(L, idx, ML_UT_HTTPXFER); }

static int xfer_gc(lua_State *L) {
  Xfer *x = ml__udata_test(L, 1, ML_UT_HTTPXFER);
  if (x == NULL) return 0;
  if (x->e || x->m) ml__curl_xfer_release(L, x, XS_ABORTED);
  ml__curl_bytes_free(x, &x->head);
  ml__curl_bytes_free(x, &x->body);
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
    if (ml__curl.easy_setopt((x)->e, (o), (v)) != CURLE_OK)     \
      return luaL_error(L, "http: curl refused option %s", #o); \
  } while (0)

/* m:request(spec): starts a transfer and returns it.  spec (checked by
 * http/client.lua): method, url, headers (a list of "Name: value"),
 * body, timeout_ms, follow, max_redirects, verify, verify_host, cainfo,
 * capath, cablob, sslcert, sslkey, keypasswd, cookie, decompress, http2,
 * proxy, unix_socket.  [-0, +1] */
int ml__curl_request(lua_State *L) {
  Multi *m = ml__curl_check_multi(L, 1);
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
  x->e = ml__curl.easy_init();
  if (x->e == NULL) return luaL_error(L, "curl_easy_init failed");
  method = spec_str(L, 2, "method", NULL);
  url = spec_str(L, 2, "url", NULL);
  if (method == NULL || url == NULL) return luaL_error(L, "http: spec needs method and url");
  SETOPT(x, CURLOPT_PRIVATE, (char *)x);
  SETOPT(x, CURLOPT_URL, url);
  SETOPT(x, CURLOPT_ERRORBUFFER, x->errbuf);
  SETOPT(x, CURLOPT_NOSIGNAL, 1L);
  SETOPT(x, CURLOPT_WRITEFUNCTION, ml__curl_write_cb);
  SETOPT(x, CURLOPT_WRITEDATA, x);
  SETOPT(x, CURLOPT_HEADERFUNCTION, ml__curl_header_cb);
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
  x->hdrs = ml__curl.slist_append(NULL, "Expect:");
  if (x->hdrs == NULL) return luaL_error(L, "not enough memory");
  lua_getfield(L, 2, "headers");
  n = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 0;
  for (i = 1; i <= n; i++) {
    struct curl_slist *l;
    lua_rawgeti(L, -1, i);
    s = lua_tostring(L, -1);
    if (s == NULL) return luaL_error(L, "http: spec.headers[%d] must be a string", i);
    l = ml__curl.slist_append(x->hdrs, s);
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
    CURLMcode rc = ml__curl.multi_add_handle(m->m, x->e);
    if (rc != CURLM_OK)
      return luaL_error(L, "http: curl_multi_add_handle: %s", ml__curl.multi_strerror(rc));
  }
  x->m = m;
  if ((x->next = m->xfers) != NULL) x->next->pprev = &x->next;
  m->xfers = x;
  x->pprev = &m->xfers;
  m->nactive++;
  lua_pushvalue(L, 3);
  x->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  ml__curl_multi_watch(m);
  return 1;
}

/* Lets a paused transfer go on.  Outside curl's callbacks. */
static void xfer_resume(Xfer *x) {
  if (x->paused && x->e) {
    x->paused = 0;
    /* curl may deliver what it held at once, into ml__curl_write_cb. */
    ml__curl.easy_pause(x->e, CURLPAUSE_CONT);
  }
}

static int ready(Xfer *x, int kind) {
  if (x->state != XS_RUNNING) return 1;
  switch (kind) {
  case W_HEADERS: return x->headers_done;
  case W_DATA: return ml__curl_bytes_unread(&x->body) > 0;
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
    ml__curl_xfer_release(L, x, XS_ABORTED);
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
  } else if (kind == W_DATA && ml__curl_bytes_unread(&x->body) < BODY_LOW) {
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
  size_t n = ml__curl_bytes_unread(&x->body);
  if (n == 0) {
    lua_pushnil(L);
  } else {
    lua_pushlstring(L, x->body.p + x->body.off, n);
    x->body.off = x->body.len = 0;
    if (x->body.cap > 4 * BODY_HIGH) ml__curl_bytes_free(x, &x->body); /* a read-whole body */
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
  lua_pushstring(L, x->errbuf[0] ? x->errbuf : ml__curl.easy_strerror(x->result));
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

static const luaL_Reg xfer_methods[] = {
  {"take", l_xfer_take},   {"info", l_xfer_info},   {"result", l_xfer_result},
  {"close", l_xfer_close}, {"stats", l_xfer_stats}, {NULL, NULL},
};

void ml__curl_xfer_open(lua_State *L) {
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
}
