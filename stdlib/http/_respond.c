/* _respond.c: http._server's response writer: the Date header made once
 * a second, the reason phrases, status lines and headers, Content-Length
 * or chunked bodies, the error answers the server gives by itself
 * (simple_response), and the connection's respond/start/write/drain/finish
 * methods.  The connection is hconn.h's HConn; _server.c says how the
 * pieces fit. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "http/hconn.h"

/* ---------------------------------------------------------------- */
/* The date header, formatted once a second.                          */

static __thread char date_buf[64];
static __thread size_t date_len;
static __thread time_t date_sec = -1;

static void update_date(ml_State *S) {
  time_t now = (time_t)ev_now(ml__loop(S));
  struct tm tm;
  if (now == date_sec) return;
  date_sec = now;
  gmtime_r(&now, &tm);
  date_len = strftime(date_buf, sizeof date_buf, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
}

/* The reason phrase of a status code the server (and the client, for
 * responses that carry none, as HTTP/2's) knows by name, or NULL. */
static const char *known_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 413: return "Payload Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Entity";
  case 426: return "Upgrade Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return NULL;
  }
}

/* The reason phrase of any status: a known one, else its class's. */
const char *ml__http_reason(int status) {
  const char *r = known_reason(status);
  if (r) return r;
  return status < 200   ? "Informational"
         : status < 300 ? "Success"
         : status < 400 ? "Redirection"
         : status < 500 ? "Client Error"
                        : "Server Error";
}

/* reason(status) -> the known reason phrase of the integer status, or nil. */
int ml__http_l_reason(lua_State *L) {
  const char *r = known_reason((int)ml__checkrange(L, 1, 100, 999));
  if (r) lua_pushstring(L, r);
  else lua_pushnil(L);
  return 1;
}

/* Writes n in decimal at d; returns the length (no snprintf: it cost
 * ~1,800 instructions a response). */
static size_t fmt_u(char *d, uint64_t n) {
  char tmp[24];
  size_t k = 0, i;
  do {
    tmp[k++] = (char)('0' + n % 10);
    n /= 10;
  } while (n);
  for (i = 0; i < k; i++) d[i] = tmp[k - 1 - i];
  return k;
}

/* Appends to the output: inline when it fits (ml__http_respond reserves
 * the whole head first, so for a response it always does), with
 * ml__bq_add's growth otherwise (~40 instructions a piece less, eight
 * pieces a response). */
static inline int out_add(HConn *hc, const char *s, size_t n) {
  ml_BQ *q = &hc->out;
  if (q->cap - q->off - q->len >= n) {
    memcpy(q->data + q->off + q->len, s, n);
    q->len += n;
    return 0;
  }
  return ml__bq_add(q, s, n);
}

static int out_str(HConn *hc, const char *s) { return out_add(hc, s, strlen(s)); }

/* Sends hc->out and empties it. */
static void out_flush(lua_State *L, HConn *hc) {
  if (hc->out.len && hc->c && !hc->c->closing) {
    if (ml__conn_write(L, hc->c, hc->out.data + hc->out.off, hc->out.len) < 0)
      ml__http_close_conn(hc, 1);
  }
  ml__bq_consume(&hc->out, hc->out.len);
  ml__bq_trim(&hc->out, OUT_KEEP);
}

/* A whole response of the server's own (errors it answers for itself),
 * then closes the connection. */
void ml__http_simple_response(lua_State *L, HConn *hc, int status, const char *msg) {
  hc->limit_status = 0;
  char line[128];
  size_t mlen = strlen(msg);
  if (hc->c == NULL || hc->closed) return;
  ml__bq_consume(&hc->out, hc->out.len);
  update_date(hc->S);
  snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, ml__http_reason(status));
  out_str(hc, line);
  out_add(hc, date_buf, date_len);
  snprintf(line, sizeof line,
           "Content-Type: text/plain; charset=utf-8\r\n"
           "Content-Length: %zu\r\nConnection: close\r\n\r\n",
           mlen);
  out_str(hc, line);
  out_add(hc, msg, mlen);
  out_flush(L, hc);
  hc->resp = R_DONE;
  if (hc->c->layer == NULL && !hc->eof && !hc->c->closing) {
    /* half-close, then drop what the client still sends until its EOF */
    hc->lingering = 1;
    ml__http_set_phase(hc, P_LINGER);
    ml__conn_write_eof(hc->c);
    if (hc->rpaused) {
      hc->rpaused = 0;
      hc->c->paused = 0;
      ml__conn_update_reading(hc->c);
    }
  } else {
    ml__http_close_conn(hc, 0);
  }
}

/* Appends "Name: value\r\n" for each header of the table at idx (values
 * may be lists: one line each).  Sets *has_len / *has_type / *has_te /
 * *has_conn when the table names them.  Raises on a CR or LF (header
 * injection) or a value that is not a string or number. */
static void add_headers(lua_State *L, HConn *hc, int idx, int *has_len, int *has_type,
                        int *has_te) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t nl, vl;
    const char *name, *v;
    if (lua_type(L, -2) != LUA_TSTRING) luaL_error(L, "header names must be strings");
    name = lua_tolstring(L, -2, &nl);
    if (nl == 0 || strpbrk(name, "\r\n:") || strlen(name) != nl)
      luaL_error(L, "invalid header name '%s'", name);
    if (nl == 14 && ml__http_value_is(name, nl, "content-length")) *has_len = 1;
    else if (nl == 12 && ml__http_value_is(name, nl, "content-type")) *has_type = 1;
    else if (nl == 17 && ml__http_value_is(name, nl, "transfer-encoding")) *has_te = 1;
    int list = lua_type(L, -1) == LUA_TTABLE;
    lua_Integer n = list ? luaL_len(L, -1) : 1;
    for (lua_Integer i = 1; i <= n; i++) {
      if (list) lua_geti(L, -1, i);
      else lua_pushvalue(L, -1);
      if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
        luaL_error(L, "header '%s' must be a string, a number or a list of them", name);
      v = lua_tolstring(L, -1, &vl);
      if (memchr(v, '\r', vl) || memchr(v, '\n', vl))
        luaL_error(L, "header '%s' contains a line break", name);
      out_add(hc, name, nl);
      out_add(hc, ": ", 2);
      out_add(hc, v, vl);
      out_add(hc, "\r\n", 2);
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

/* The status line (the longest reason is 31 bytes), Date (29 + 8),
 * "Content-Type: " + "\r\n", Content-Length (at most 16 + 20 + 2) and
 * "Connection: keep-alive\r\n\r\n" fit in this many bytes. */
#define HEAD_ROOM 192

static int status_has_body(int status) { return !(status < 200 || status == 204 || status == 304); }

/* The status line and the server's headers. */
static void begin_head(HConn *hc, int status) {
  char line[64];
  size_t n;
  if (status == 200) {
    out_add(hc, "HTTP/1.1 200 OK\r\n", 17);
  } else {
    memcpy(line, "HTTP/1.1 ", 9);
    n = 9 + fmt_u(line + 9, (uint64_t)status);
    line[n++] = ' ';
    out_add(hc, line, n);
    out_str(hc, ml__http_reason(status));
    out_add(hc, "\r\n", 2);
  }
  update_date(hc->S);
  out_add(hc, date_buf, date_len);
}

static void add_length(HConn *hc, uint64_t len) {
  char line[48];
  size_t n = 16;
  memcpy(line, "Content-Length: ", 16);
  n += fmt_u(line + n, len);
  line[n++] = '\r';
  line[n++] = '\n';
  out_add(hc, line, n);
}

static void end_head(HConn *hc) {
  if (!hc->keep_alive || hc->draining || hc->err || (hc->expect && !hc->complete)) {
    hc->keep_alive = 0;
    out_str(hc, "Connection: close\r\n\r\n");
  } else if (hc->http10) {
    out_str(hc, "Connection: keep-alive\r\n\r\n");
  } else {
    out_add(hc, "\r\n", 2);
  }
}

int ml__http_check_status(lua_State *L, int idx) { return (int)ml__checkrange(L, idx, 100, 999); }

/* conn:_respond(response) -> nothing: writes the whole response (a string,
 * or a table with status, body, headers, content_type) and completes the
 * request.  The hot path of every handler that returns its answer. */
int ml__http_respond(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  int status = 200, has_len = 0, has_type = 0, has_te = 0;
  const char *body = NULL, *ctype = "text/plain; charset=utf-8";
  size_t blen = 0;
  lua_settop(L, 2);
  if (!hc->active || hc->resp != R_NONE) luaL_error(L, "the request has already been answered");
  if (lua_type(L, 2) == LUA_TSTRING) {
    body = lua_tolstring(L, 2, &blen);
    lua_pushnil(L); /* 3: no headers */
  } else if (lua_type(L, 2) == LUA_TTABLE) {
    lua_getfield(L, 2, "status"); /* 3 */
    if (!lua_isnil(L, 3)) status = ml__http_check_status(L, 3);
    lua_getfield(L, 2, "body"); /* 4 */
    if (!lua_isnil(L, 4)) {
      if (lua_type(L, 4) != LUA_TSTRING && lua_type(L, 4) != LUA_TNUMBER)
        luaL_error(L, "the response body must be a string, got %s", luaL_typename(L, 4));
      body = lua_tolstring(L, 4, &blen);
    }
    lua_getfield(L, 2, "content_type"); /* 5 */
    if (lua_type(L, 5) == LUA_TSTRING) ctype = lua_tostring(L, 5);
    lua_getfield(L, 2, "headers"); /* 6 */
    if (!lua_isnil(L, 6)) luaL_checktype(L, 6, LUA_TTABLE);
    lua_replace(L, 3);
    lua_settop(L, 4);
  } else {
    return luaL_error(L, "a handler must return a string or an http.Response, got %s",
                      luaL_typename(L, 2));
  }
  ml__bq_consume(&hc->out, hc->out.len);
  /* room for the head without headers and a small body, so the pieces
   * below are out_add's inline copies (a failure here leaves them to
   * ml__bq_add, as before) */
  (void)ml__bq_reserve(&hc->out, HEAD_ROOM + strlen(ctype) + (blen <= 16384 ? blen : 0));
  begin_head(hc, status);
  if (!lua_isnil(L, 3)) add_headers(L, hc, 3, &has_len, &has_type, &has_te);
  if (status_has_body(status)) {
    if (!has_type && body) {
      out_add(hc, "Content-Type: ", 14);
      out_str(hc, ctype);
      out_add(hc, "\r\n", 2);
    }
    if (!has_len) add_length(hc, blen);
  }
  end_head(hc);
  hc->resp = R_DONE;
  if (body && blen && !hc->head_req && status_has_body(status)) {
    if (blen <= 16384) {
      out_add(hc, body, blen);
      out_flush(L, hc);
    } else {
      out_flush(L, hc);
      if (hc->c && !hc->c->closing && ml__conn_write(L, hc->c, body, blen) < 0)
        ml__http_close_conn(hc, 1);
    }
  } else {
    out_flush(L, hc);
  }
  lua_pushvalue(L, 1);
  ml__http_finish_request(L, hc);
  return 0;
}

/* conn:_start(status, headers) -> nothing: writes the head of a streamed
 * response: chunked unless headers give a Content-Length (HTTP/1.0:
 * delimited by closing the connection). */
int ml__http_start(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  int status = ml__http_check_status(L, 2), has_len = 0, has_type = 0, has_te = 0;
  if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if (!hc->active || hc->resp != R_NONE) luaL_error(L, "the request has already been answered");
  ml__bq_consume(&hc->out, hc->out.len);
  begin_head(hc, status);
  if (!lua_isnil(L, 3)) add_headers(L, hc, 3, &has_len, &has_type, &has_te);
  if (has_te) luaL_error(L, "Transfer-Encoding is chosen by the server: leave it out");
  hc->chunked = 0;
  if (status_has_body(status) && !has_len) {
    if (hc->http10) hc->keep_alive = 0;
    else if (!hc->head_req) {
      hc->chunked = 1;
      out_str(hc, "Transfer-Encoding: chunked\r\n");
    }
  }
  end_head(hc);
  hc->resp = R_STREAM;
  out_flush(L, hc);
  return 0;
}

/* conn:_write(chunk) -> true if the caller should await conn:_drain(). */
int ml__http_write(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  char line[32];
  if (hc->resp != R_STREAM) luaL_error(L, "the response is not being streamed (or is finished)");
  if (hc->c == NULL || hc->closed) return ml__exc_raise_errno(L, ECONNRESET, "write");
  if (n == 0 || hc->head_req) {
    lua_pushboolean(L, hc->wpaused);
    return 1;
  }
  if (hc->chunked) {
    int k = snprintf(line, sizeof line, "%zx\r\n", n);
    out_add(hc, line, (size_t)k);
    if (n <= 4096) {
      out_add(hc, s, n);
      out_add(hc, "\r\n", 2);
      out_flush(L, hc);
    } else {
      out_flush(L, hc);
      ml__conn_write(L, hc->c, s, n);
      out_add(hc, "\r\n", 2);
      out_flush(L, hc);
    }
  } else {
    ml__conn_write(L, hc->c, s, n);
  }
  lua_pushboolean(L, hc->wpaused);
  return 1;
}

static int drain_k(lua_State *L, int status, lua_KContext ctx) {
  HConn *hc = ml__http_check_hc(L, 1);
  (void)status;
  (void)ctx;
  if (hc->c == NULL || hc->closed) return ml__exc_raise_errno(L, ECONNRESET, "drain");
  return 0;
}

/* conn:_drain() (async): waits until the transport resumes writing. */
int ml__http_drain(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  lua_settop(L, 1);
  if (hc->c == NULL || hc->closed) return ml__exc_raise_errno(L, ECONNRESET, "drain");
  if (!hc->wpaused) return 0;
  hc->waiter = ml__task_current(L);
  hc->wait = W_DRAIN;
  return ml__task_suspend(L, ml__http_cancel_hook, hc, 0, drain_k);
}

/* conn:_finish() -> nothing: ends a streamed response. */
int ml__http_finish(lua_State *L) {
  HConn *hc = ml__http_check_hc(L, 1);
  lua_settop(L, 1);
  if (hc->resp != R_STREAM) return 0;
  if (hc->chunked && hc->c && !hc->closed) {
    out_str(hc, "0\r\n\r\n");
    out_flush(L, hc);
  }
  ml__http_finish_request(L, hc);
  return 0;
}
