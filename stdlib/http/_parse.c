/* _parse.c: http._server's request parser: llhttp's callbacks, which
 * build each Request table as the head arrives and queue the body, and the
 * feeding of the parser (pauses at the end of each message, errors
 * answered).  The connection is hconn.h's HConn; _server.c says how the
 * pieces fit. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include "http/hconn.h"

static llhttp_settings_t settings; /* the parser callbacks: read-only once made */
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;


/* ---------------------------------------------------------------- */
/* llhttp callbacks.  p->data is the HConn; the lua_State in use is in
 * `cur_L` (callbacks run inside feed(), one at a time). */

static __thread lua_State *cur_L;

static int head_add(HConn *hc, const char *at, size_t n, int lower) {
  char *d;
  hc->head_bytes += n;
  if (hc->head_bytes > hc->header_limit) {
    hc->limit_status = 431;
    return HPE_USER;
  }
  d = ml__bq_reserve(&hc->head, n);
  if (d == NULL) return HPE_USER;
  if (lower) {
    for (size_t i = 0; i < n; i++) {
      unsigned char ch = (unsigned char)at[i];
      d[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
  } else {
    memcpy(d, at, n);
  }
  ml__bq_commit(&hc->head, n);
  return 0;
}

static int on_message_begin(llhttp_t *p) {
  HConn *hc = p->data;
  hc->head.off = hc->head.len = 0;
  hc->nhdr = 0;
  hc->url_len = 0;
  hc->head_bytes = 0;
  hc->body_bytes = 0;
  hc->in_value = 0;
  if (hc->phase == P_IDLE) ml__http_set_phase(hc, P_HEAD);
  return 0;
}

static int on_method(llhttp_t *p, const char *at, size_t n) {
  HConn *hc = p->data;
  hc->head_bytes += n;
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
  HConn *hc = p->data;
  int r = head_add(hc, at, n, 0);
  hc->url_len += (uint32_t)n;
  return r;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
  HConn *hc = p->data;
  Hdr *h;
  if (hc->nhdr == 0 || hc->in_value) {
    if (hc->nhdr == MAX_HEADERS) {
      hc->limit_status = 431;
      return HPE_USER;
    }
    h = &hc->hdr[hc->nhdr++];
    h->noff = (uint32_t)hc->head.len;
    h->nlen = h->vlen = 0;
    h->voff = 0;
    hc->in_value = 0;
  }
  h = &hc->hdr[hc->nhdr - 1];
  h->nlen += (uint32_t)n;
  return head_add(hc, at, n, 1);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
  HConn *hc = p->data;
  Hdr *h = &hc->hdr[hc->nhdr - 1];
  if (!hc->in_value) {
    hc->in_value = 1;
    h->voff = (uint32_t)hc->head.len;
  }
  h->vlen += (uint32_t)n;
  return head_add(hc, at, n, 0);
}

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

/* [-0, +1] pushes the path s[0..n) percent-decoded. */
static void push_decoded(lua_State *L, const char *s, size_t n) {
  luaL_Buffer b;
  if (memchr(s, '%', n) == NULL) {
    lua_pushlstring(L, s, n);
    return;
  }
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < n; i++) {
    int a, c;
    if (s[i] == '%' && i + 2 < n && (a = hexval((unsigned char)s[i + 1])) >= 0 &&
        (c = hexval((unsigned char)s[i + 2])) >= 0) {
      luaL_addchar(&b, (char)(a * 16 + c));
      i += 2;
    } else {
      luaL_addchar(&b, s[i]);
    }
  }
  luaL_pushresult(&b);
}

int ml__http_value_is(const char *v, size_t n, const char *want) {
  size_t k = strlen(want);
  if (n != k) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)v[i];
    if ((ch >= 'A' && ch <= 'Z' ? ch + 32 : ch) != (unsigned char)want[i]) return 0;
  }
  return 1;
}

/* [-0, +1] pushes the name of llhttp's method m, from the keys table at
 * kidx (cached there on first use). */
static void push_method(lua_State *L, int kidx, int m) {
  if (lua_rawgeti(L, kidx, K_METHOD0 + m) == LUA_TSTRING) return;
  lua_pop(L, 1);
  lua_pushstring(L, llhttp_method_name((llhttp_method_t)m));
  lua_pushvalue(L, -1);
  lua_rawseti(L, kidx, K_METHOD0 + m);
}

/* Builds the Request table and hands it to the connection's task.
 * Fields: method, target (as sent), path (decoded), query_string,
 * version, headers, _hc.
 * Invariant: the fields are set with lua_rawset and keys from UV_KEYS
 * (hconn.h): the table has no metatable until it is complete, so a raw
 * set is what lua_setfield would do, and the keys are the interned
 * strings a literal would find.  The Request has 7 fields and room for
 * 8 (its lazy `query` or `_body`); its headers table is sized for the
 * head's header count. */
static int on_headers_complete(llhttp_t *p) {
  HConn *hc = p->data;
  lua_State *L = cur_L;
  const char *h = hc->head.data + hc->head.off;
  const char *url = h, *q;
  size_t ulen = hc->url_len, plen;
  int hcidx, kidx, ridx, hidx;
  if (hc->p.content_length > hc->body_limit && (p->flags & F_CONTENT_LENGTH)) {
    hc->limit_status = 413;
    return HPE_USER;
  }
  hc->keep_alive = (unsigned char)llhttp_should_keep_alive(p);
  hc->http10 = p->http_major == 1 && p->http_minor == 0;
  hc->head_req = p->method == HTTP_HEAD;
  hc->expect = 0;
  hc->complete = 0;
  hc->active = 1;
  hc->resp = R_NONE;
  hc->chunked = 0;
  hc->err = 0;
  ml__http_set_phase(hc, P_BUSY);
  hcidx = lua_gettop(L); /* the connection is on top during feed() */
  lua_getiuservalue(L, hcidx, UV_KEYS);
  kidx = hcidx + 1;
  lua_createtable(L, 0, 8);
  ridx = hcidx + 2;
  lua_rawgeti(L, kidx, K_METHOD);
  push_method(L, kidx, p->method);
  lua_rawset(L, ridx);
  q = memchr(url, '?', ulen);
  plen = q ? (size_t)(q - url) : ulen;
  lua_rawgeti(L, kidx, K_TARGET);
  lua_pushlstring(L, url, ulen);
  if (q == NULL && memchr(url, '%', ulen) == NULL) {
    /* the path is the target itself: the same string */
    lua_rawgeti(L, kidx, K_PATH);
    lua_pushvalue(L, -2);
    lua_rawset(L, ridx);
    lua_rawset(L, ridx);
  } else {
    lua_rawset(L, ridx);
    lua_rawgeti(L, kidx, K_PATH);
    push_decoded(L, url, plen);
    lua_rawset(L, ridx);
  }
  lua_rawgeti(L, kidx, K_QUERY_STRING);
  if (q) {
    lua_pushlstring(L, q + 1, ulen - plen - 1);
  } else {
    lua_rawgeti(L, kidx, K_EMPTY);
  }
  lua_rawset(L, ridx);
  lua_rawgeti(L, kidx, K_VERSION);
  lua_rawgeti(L, kidx, hc->http10 ? K_V10 : p->http_major == 1 ? K_V11 : K_V09);
  lua_rawset(L, ridx);
  /* headers */
  lua_rawgeti(L, kidx, K_HEADERS);
  lua_createtable(L, 0, hc->nhdr);
  hidx = ridx + 2;
  for (int i = 0; i < hc->nhdr; i++) {
    Hdr *e = &hc->hdr[i];
    lua_pushlstring(L, h + e->noff, e->nlen);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, hidx) == LUA_TSTRING) {
      /* repeated: joined with ", " as Node and aiohttp's get() do */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, h + e->voff, e->vlen);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, h + e->voff, e->vlen);
    }
    lua_rawset(L, hidx);
    if (e->nlen == 6 && memcmp(h + e->noff, "expect", 6) == 0 &&
        ml__http_value_is(h + e->voff, e->vlen, "100-continue") && !hc->http10)
      hc->expect = 1;
  }
  lua_getiuservalue(L, hcidx, UV_HDRMT);
  lua_setmetatable(L, hidx);
  lua_rawset(L, ridx);
  lua_rawgeti(L, kidx, K_HC);
  lua_pushvalue(L, hcidx);
  lua_rawset(L, ridx);
  lua_getiuservalue(L, hcidx, UV_REQMT);
  lua_setmetatable(L, ridx);
  lua_setiuservalue(L, hcidx, UV_REQ);
  lua_settop(L, hcidx);
  ml__http_wake(hc, W_REQ);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  HConn *hc = p->data;
  hc->body_bytes += n;
  if (hc->body_bytes > hc->body_limit) {
    hc->limit_status = 413;
    return HPE_USER;
  }
  if (!hc->active) return 0; /* the response is done: discarded */
  if (ml__bq_add(&hc->body, at, n) < 0) return HPE_USER;
  ml__http_wake(hc, W_BODY);
  return 0;
}

static int on_message_complete(llhttp_t *p) {
  HConn *hc = p->data;
  if (p->upgrade && hc->active) {
    /* llhttp stops with HPE_PAUSED_UPGRADE: what follows is not HTTP */
    hc->complete = 1;
    return 0;
  }
  if (!hc->active) {
    /* Its response went out before the body was all read. */
    ml__http_set_phase(hc, P_IDLE);
    return hc->keep_alive && !hc->draining ? 0 : HPE_PAUSED;
  }
  hc->complete = 1;
  ml__http_wake(hc, W_BODY);
  return HPE_PAUSED;
}

/* ---------------------------------------------------------------- */
/* Feeding the parser.                                                */

/* The status for a parse error: the reason a callback gave, or 400. */
static int error_status(HConn *hc, llhttp_errno_t e) {
  if (hc->limit_status) return hc->limit_status;
  if (e == HPE_USER) return 500;
  return 400;
}

/* A parse error: answered at once if the handler has not begun a
 * response (its reader, if any, raises); the connection closes. */
static void parse_failed(lua_State *L, HConn *hc, llhttp_errno_t e) {
  int status = error_status(hc, e);
  hc->err = status;
  if (hc->active) {
    ml__http_wake(hc, W_BODY);
    /* the handler answers (or its error becomes the response); then close */
    hc->keep_alive = 0;
    return;
  }
  if (status == 431) ml__http_simple_response(L, hc, 431, "Request Header Fields Too Large\n");
  else if (status == 413) ml__http_simple_response(L, hc, 413, "Payload Too Large\n");
  else if (status == 500) ml__http_simple_response(L, hc, 500, "Internal Server Error\n");
  else {
    char msg[160];
    snprintf(msg, sizeof msg, "Bad Request: %s\n", llhttp_get_error_reason(&hc->p));
    ml__http_simple_response(L, hc, 400, msg);
  }
}

/* Runs the parser over n bytes at s; returns how many it took (it stops
 * at a pause or an error).  The connection is at the top of L's stack. */
size_t ml__http_run_parser(lua_State *L, HConn *hc, const char *s, size_t n) {
  llhttp_errno_t e;
  lua_State *saved = cur_L;
  cur_L = L;
  e = llhttp_execute(&hc->p, s, n);
  cur_L = saved;
  if (e == HPE_OK) return n;
  if (e == HPE_PAUSED) {
    hc->paused = 1;
    return (size_t)(llhttp_get_error_pos(&hc->p) - s);
  }
  if (e == HPE_PAUSED_UPGRADE) {
    hc->upgraded = 1;
    hc->complete = 1;
    ml__http_wake(hc, W_BODY);
    return (size_t)(llhttp_get_error_pos(&hc->p) - s);
  }
  parse_failed(L, hc, e);
  return n;
}

/* Parses what `in` holds while the parser may run.  Connection on top. */
void ml__http_feed_pending(lua_State *L, HConn *hc) {
  while (hc->in.len && !hc->paused && !hc->upgraded && !hc->closed && hc->err == 0) {
    size_t k = ml__http_run_parser(L, hc, hc->in.data + hc->in.off, hc->in.len);
    ml__bq_consume(&hc->in, k);
  }
  ml__bq_trim(&hc->in, BUF_HIGH);
  ml__http_update_reading(hc);
}

/* The response to the active request is complete: the next request may
 * be parsed, or the connection closes. */
void ml__http_finish_request(lua_State *L, HConn *hc) {
  hc->active = 0;
  hc->resp = R_DONE;
  ml__bq_consume(&hc->body, hc->body.len);
  ml__bq_trim(&hc->body, 0);
  if (hc->upgraded) return; /* the WebSocket layer owns it now, or it closes */
  if (!hc->keep_alive || hc->draining || hc->err || hc->expect) {
    ml__http_close_conn(hc, 0);
    return;
  }
  if (hc->complete) {
    hc->complete = 0;
    ml__http_set_phase(hc, P_IDLE);
    if (hc->paused) {
      hc->paused = 0;
      llhttp_resume(&hc->p);
    }
    ml__http_feed_pending(L, hc);
  }
  /* else: the rest of the body is read and discarded, and the parser
   * pauses at its end (on_message_complete) */
}

static void init_settings(void) {
  llhttp_settings_init(&settings);
  settings.on_message_begin = on_message_begin;
  settings.on_method = on_method;
  settings.on_url = on_url;
  settings.on_header_field = on_header_field;
  settings.on_header_value = on_header_value;
  settings.on_headers_complete = on_headers_complete;
  settings.on_body = on_body;
  settings.on_message_complete = on_message_complete;
}

/* The callbacks, made once per process (states of several threads share
 * them). */
const llhttp_settings_t *ml__http_settings(void) {
  pthread_once(&settings_once, init_settings);
  return &settings;
}
