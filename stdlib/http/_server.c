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
 * the phase's start with its limit and re-arms for what is left. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <llhttp.h>
#include "socket/net.h"

#define ML_HTTPCONN "http.Connection"
#define HC_MAGIC 0x48436f6eu
#define BUF_HIGH (64 * 1024)      /* pause reading above this much buffered */
#define MAX_HEADERS 100
#define OUT_KEEP (64 * 1024)      /* the output buffer keeps up to this */

/* User values of a connection. */
enum { UV_REQMT = 1, UV_HDRMT, UV_REQ, UV_TR, UV_ERR, UV_N = UV_ERR };

enum { P_IDLE, P_HEAD, P_BUSY, P_LINGER };

/* After an error answer, how long and how much of the client's input is
 * read and dropped before closing: closing with unread input would reset
 * the connection and the client might never see the answer (nginx's
 * lingering close). */
#define LINGER_TIME 2.0
#define LINGER_BYTES (64 * 1024 * 1024)
enum { W_NONE, W_REQ, W_BODY, W_DRAIN };
/* What the response is doing. */
enum { R_NONE, R_STREAM, R_DONE };

typedef struct Hdr {
  uint32_t noff, nlen, voff, vlen;
} Hdr;

typedef struct HConn {
  unsigned magic;
  llhttp_t p;
  ml_State *S;
  ml_Conn *c;            /* the transport; NULL before connection_made and once lost */
  ml_Task *waiter;       /* the connection's task, when it waits */
  int wait;              /* W_* */
  int err;               /* errno or status that ended reading the body, 0 if none */
  int limit_status;      /* 431 or 413: the limit a callback found exceeded */
  ml_BQ in;              /* bytes not parsed yet (the parser is paused) */
  ml_BQ head;            /* target, header names and values of the request being parsed */
  ml_BQ body;            /* body bytes the handler has not taken */
  ml_BQ out;             /* the response being written */
  Hdr hdr[MAX_HEADERS];
  int nhdr;
  uint32_t url_len;
  size_t head_bytes;     /* bytes of the head so far (header_limit) */
  uint64_t body_bytes;   /* body bytes so far (body_limit) */
  /* limits */
  size_t header_limit;
  uint64_t body_limit;
  double header_timeout, keepalive_timeout;
  /* state */
  int phase;
  double phase_start;
  ev_timer tm;
  unsigned char in_value;      /* the last header callback was a value */
  unsigned char paused;        /* llhttp paused at the end of a message */
  unsigned char upgraded;      /* llhttp stopped at an upgrade */
  unsigned char active;        /* a request was handed over and its response is not done */
  unsigned char complete;      /* the active request's message is complete */
  unsigned char keep_alive;    /* the active request allows another one */
  unsigned char head_req;      /* the active request is HEAD */
  unsigned char expect;        /* 100-continue asked and not sent yet */
  unsigned char resp;          /* R_* */
  unsigned char chunked;       /* the streamed response is chunked */
  unsigned char draining;      /* the server is closing: no more requests */
  unsigned char closed;        /* we closed the transport (or it was lost) */
  unsigned char eof;           /* the peer's EOF was seen */
  unsigned char wpaused;       /* the transport asked us to pause writing */
  unsigned char rpaused;       /* we paused the transport's reading */
  unsigned char http10;
  unsigned char lingering;     /* answered an error: dropping input until EOF */
  uint64_t lingered;           /* bytes dropped so far */
} HConn;

static llhttp_settings_t settings;  /* the parser callbacks: read-only once made */
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;


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
static const char *reason(int status) {
  const char *r = known_reason(status);
  if (r) return r;
  return status < 200 ? "Informational" : status < 300 ? "Success"
       : status < 400 ? "Redirection" : status < 500 ? "Client Error" : "Server Error";
}

/* reason(status) -> the known reason phrase of the integer status, or nil. */
static int l_reason(lua_State *L) {
  const char *r = known_reason((int)ml__checkrange(L, 1, 100, 999));
  if (r) lua_pushstring(L, r);
  else lua_pushnil(L);
  return 1;
}

/* ---------------------------------------------------------------- */
/* Small helpers.                                                     */

static HConn *check_hc(lua_State *L, int idx) {
  HConn *hc = lua_touserdata(L, idx);
  if (hc == NULL || lua_rawlen(L, idx) != sizeof *hc || hc->magic != HC_MAGIC)
    luaL_typeerror(L, idx, ML_HTTPCONN);
  return hc;
}

static void wake(HConn *hc, int kind) {
  if (hc->waiter && (kind == W_NONE || hc->wait == kind)) {
    ml_Task *t = hc->waiter;
    hc->waiter = NULL;
    hc->wait = W_NONE;
    ml__task_wake(t);
  }
}

static void set_phase(HConn *hc, int phase) {
  hc->phase = phase;
  hc->phase_start = ev_now(ml__loop(hc->S));
}

/* Reading is wanted unless a buffer is over BUF_HIGH. */
static void update_reading(HConn *hc) {
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
static void close_conn(HConn *hc, int abort) {
  if (hc->c && !hc->closed) {
    hc->closed = 1;
    ml__conn_close(hc->c, abort);
  }
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

static int out_add(HConn *hc, const char *s, size_t n) {
  return ml__bq_add(&hc->out, s, n);
}

static int out_str(HConn *hc, const char *s) {
  return out_add(hc, s, strlen(s));
}

/* Sends hc->out and empties it. */
static void out_flush(lua_State *L, HConn *hc) {
  if (hc->out.len && hc->c && !hc->c->closing) {
    if (ml__conn_write(L, hc->c, hc->out.data + hc->out.off, hc->out.len) < 0) close_conn(hc, 1);
  }
  ml__bq_consume(&hc->out, hc->out.len);
  ml__bq_trim(&hc->out, OUT_KEEP);
}

/* A whole response of the server's own (errors it answers for itself),
 * then closes the connection. */
static void simple_response(lua_State *L, HConn *hc, int status, const char *msg) {
  hc->limit_status = 0;
  char line[128];
  size_t mlen = strlen(msg);
  if (hc->c == NULL || hc->closed) return;
  ml__bq_consume(&hc->out, hc->out.len);
  update_date(hc->S);
  snprintf(line, sizeof line, "HTTP/1.1 %d %s\r\n", status, reason(status));
  out_str(hc, line);
  out_add(hc, date_buf, date_len);
  snprintf(line, sizeof line, "Content-Type: text/plain; charset=utf-8\r\n"
           "Content-Length: %zu\r\nConnection: close\r\n\r\n", mlen);
  out_str(hc, line);
  out_add(hc, msg, mlen);
  out_flush(L, hc);
  hc->resp = R_DONE;
  if (hc->c->layer == NULL && !hc->eof && !hc->c->closing) {
    /* half-close, then drop what the client still sends until its EOF */
    hc->lingering = 1;
    set_phase(hc, P_LINGER);
    ml__conn_write_eof(hc->c);
    if (hc->rpaused) {
      hc->rpaused = 0;
      hc->c->paused = 0;
      ml__conn_update_reading(hc->c);
    }
  } else {
    close_conn(hc, 0);
  }
}

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
  if (hc->phase == P_IDLE) set_phase(hc, P_HEAD);
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

static int value_is(const char *v, size_t n, const char *want) {
  size_t k = strlen(want);
  if (n != k) return 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)v[i];
    if ((ch >= 'A' && ch <= 'Z' ? ch + 32 : ch) != (unsigned char)want[i]) return 0;
  }
  return 1;
}

/* Builds the Request table and hands it to the connection's task.
 * Fields: method, target (as sent), path (decoded), query_string,
 * version, headers, _hc. */
static int on_headers_complete(llhttp_t *p) {
  HConn *hc = p->data;
  lua_State *L = cur_L;
  const char *h = hc->head.data + hc->head.off;
  const char *url = h, *q;
  size_t ulen = hc->url_len, plen;
  int hcidx;
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
  set_phase(hc, P_BUSY);
  lua_pushvalue(L, -1);  /* the connection is on top during feed() */
  hcidx = lua_gettop(L);
  lua_createtable(L, 0, 8);
  lua_pushstring(L, llhttp_method_name((llhttp_method_t)p->method));
  lua_setfield(L, -2, "method");
  lua_pushlstring(L, url, ulen);
  lua_setfield(L, -2, "target");
  q = memchr(url, '?', ulen);
  plen = q ? (size_t)(q - url) : ulen;
  if (q == NULL && memchr(url, '%', ulen) == NULL) {
    lua_getfield(L, -1, "target");
  } else {
    push_decoded(L, url, plen);
  }
  lua_setfield(L, -2, "path");
  if (q) {
    lua_pushlstring(L, q + 1, ulen - plen - 1);
  } else {
    lua_pushliteral(L, "");
  }
  lua_setfield(L, -2, "query_string");
  lua_pushstring(L, hc->http10 ? "1.0" : p->http_major == 1 ? "1.1" : "0.9");
  lua_setfield(L, -2, "version");
  /* headers */
  lua_createtable(L, 0, hc->nhdr);
  for (int i = 0; i < hc->nhdr; i++) {
    Hdr *e = &hc->hdr[i];
    lua_pushlstring(L, h + e->noff, e->nlen);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) == LUA_TSTRING) {
      /* repeated: joined with ", " as Node and aiohttp's get() do */
      lua_pushliteral(L, ", ");
      lua_pushlstring(L, h + e->voff, e->vlen);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
      lua_pushlstring(L, h + e->voff, e->vlen);
    }
    lua_rawset(L, -3);
    if (e->nlen == 6 && memcmp(h + e->noff, "expect", 6) == 0 &&
        value_is(h + e->voff, e->vlen, "100-continue") && !hc->http10)
      hc->expect = 1;
  }
  lua_getiuservalue(L, hcidx, UV_HDRMT);
  lua_setmetatable(L, -2);
  lua_setfield(L, -2, "headers");
  lua_pushvalue(L, hcidx);
  lua_setfield(L, -2, "_hc");
  lua_getiuservalue(L, hcidx, UV_REQMT);
  lua_setmetatable(L, -2);
  lua_setiuservalue(L, hcidx, UV_REQ);
  lua_pop(L, 1);
  wake(hc, W_REQ);
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n) {
  HConn *hc = p->data;
  hc->body_bytes += n;
  if (hc->body_bytes > hc->body_limit) {
    hc->limit_status = 413;
    return HPE_USER;
  }
  if (!hc->active) return 0;  /* the response is done: discarded */
  if (ml__bq_add(&hc->body, at, n) < 0) return HPE_USER;
  wake(hc, W_BODY);
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
    set_phase(hc, P_IDLE);
    return hc->keep_alive && !hc->draining ? 0 : HPE_PAUSED;
  }
  hc->complete = 1;
  wake(hc, W_BODY);
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
    wake(hc, W_BODY);
    /* the handler answers (or its error becomes the response); then close */
    hc->keep_alive = 0;
    return;
  }
  if (status == 431) simple_response(L, hc, 431, "Request Header Fields Too Large\n");
  else if (status == 413) simple_response(L, hc, 413, "Payload Too Large\n");
  else if (status == 500) simple_response(L, hc, 500, "Internal Server Error\n");
  else {
    char msg[160];
    snprintf(msg, sizeof msg, "Bad Request: %s\n", llhttp_get_error_reason(&hc->p));
    simple_response(L, hc, 400, msg);
  }
}

/* Runs the parser over n bytes at s; returns how many it took (it stops
 * at a pause or an error).  The connection is at the top of L's stack. */
static size_t run_parser(lua_State *L, HConn *hc, const char *s, size_t n) {
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
    wake(hc, W_BODY);
    return (size_t)(llhttp_get_error_pos(&hc->p) - s);
  }
  parse_failed(L, hc, e);
  return n;
}

/* Parses what `in` holds while the parser may run.  Connection on top. */
static void feed_pending(lua_State *L, HConn *hc) {
  while (hc->in.len && !hc->paused && !hc->upgraded && !hc->closed && hc->err == 0) {
    size_t k = run_parser(L, hc, hc->in.data + hc->in.off, hc->in.len);
    ml__bq_consume(&hc->in, k);
  }
  ml__bq_trim(&hc->in, BUF_HIGH);
  update_reading(hc);
}

/* The response to the active request is complete: the next request may
 * be parsed, or the connection closes. */
static void finish_request(lua_State *L, HConn *hc) {
  hc->active = 0;
  hc->resp = R_DONE;
  ml__bq_consume(&hc->body, hc->body.len);
  ml__bq_trim(&hc->body, 0);
  if (hc->upgraded) return;  /* the WebSocket layer owns it now, or it closes */
  if (!hc->keep_alive || hc->draining || hc->err || hc->expect) {
    close_conn(hc, 0);
    return;
  }
  if (hc->complete) {
    hc->complete = 0;
    set_phase(hc, P_IDLE);
    if (hc->paused) {
      hc->paused = 0;
      llhttp_resume(&hc->p);
    }
    feed_pending(L, hc);
  }
  /* else: the rest of the body is read and discarded, and the parser
   * pauses at its end (on_message_complete) */
}

/* ---------------------------------------------------------------- */
/* Protocol methods (called by the transport).                        */

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static int hc_data_raw(lua_State *L);

/* conn:connection_made(transport) */
static int hc_connection_made(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  hc->c = ml__conn_check(L, 2);
  hc->c->data_fn = hc_data_raw;
  hc->c->data_ud = hc;
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 1, UV_TR);
  set_phase(hc, P_IDLE);
  ev_timer_set(&hc->tm, hc->keepalive_timeout < hc->header_timeout ? hc->keepalive_timeout
                                                                    : hc->header_timeout, 0.);
  ev_timer_start(ml__loop(hc->S), &hc->tm);
  return 0;
}

/* The bytes s[0..n) arrived; the connection is on top of L's stack. */
static void input(lua_State *L, HConn *hc, const char *s, size_t n) {
  if (hc->lingering) {
    hc->lingered += n;
    if (hc->lingered > LINGER_BYTES) close_conn(hc, 1);
    return;
  }
  if (hc->closed || hc->err) return;
  if (hc->upgraded) {
    /* bytes after an upgrade wait for the WebSocket layer */
    if (ml__bq_add(&hc->in, s, n) < 0) close_conn(hc, 1);
    wake(hc, W_BODY);
    update_reading(hc);
    return;
  }
  if (hc->in.len == 0 && !hc->paused) {
    size_t k = run_parser(L, hc, s, n);
    s += k;
    n -= k;
  }
  if (n && !hc->closed && hc->err == 0 && ml__bq_add(&hc->in, s, n) < 0) close_conn(hc, 1);
  feed_pending(L, hc);
}

/* conn:data_received(bytes): the protocol method, for a transport that
 * hands strings (the raw path below is the usual one). */
static int hc_data_received(lua_State *L) {
  HConn *hc = check_hc(L, 1);
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
  HConn *hc = check_hc(L, 1);
  hc->eof = 1;
  if (hc->lingering) return 0;  /* closes */
  if (hc->active && !hc->complete && !hc->upgraded) {
    /* ended mid-body */
    llhttp_errno_t e = llhttp_finish(&hc->p);
    if (e != HPE_OK && hc->err == 0) hc->err = 400;
    if (e == HPE_OK && !hc->complete) hc->err = 400;
    hc->keep_alive = 0;
    wake(hc, W_BODY);
  }
  hc->keep_alive = 0;
  wake(hc, W_NONE);
  lua_pushboolean(L, hc->active);
  return 1;
}

/* conn:connection_lost(exc) */
static int hc_connection_lost(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  if (ev_is_active(&hc->tm)) ev_timer_stop(ml__loop(hc->S), &hc->tm);
  hc->c = NULL;
  hc->closed = 1;
  if (hc->err == 0) hc->err = -ECONNRESET;
  lua_pushnil(L);
  lua_setiuservalue(L, 1, UV_TR);
  ml__bq_free(&hc->in);
  ml__bq_free(&hc->head);
  ml__bq_free(&hc->out);
  wake(hc, W_NONE);
  return 0;
}

static int hc_pause_writing(lua_State *L) {
  check_hc(L, 1)->wpaused = 1;
  return 0;
}

static int hc_resume_writing(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  hc->wpaused = 0;
  wake(hc, W_DRAIN);
  return 0;
}

/* Protected timer body: timeout(hc light) */
static int on_timeout(lua_State *L) {
  HConn *hc = lua_touserdata(L, 1);
  double now = ev_now(ml__loop(hc->S)), left;
  if (hc->c == NULL || hc->closed) return 0;
  if (hc->phase == P_IDLE && now - hc->phase_start >= hc->keepalive_timeout) {
    close_conn(hc, 0);
    return 0;
  }
  if (hc->phase == P_LINGER && now - hc->phase_start >= LINGER_TIME) {
    close_conn(hc, 1);
    return 0;
  }
  if (hc->phase == P_HEAD && now - hc->phase_start >= hc->header_timeout) {
    simple_response(L, hc, 408, "Request Timeout\n");
    return 0;
  }
  left = hc->phase == P_IDLE ? fmin(hc->keepalive_timeout - (now - hc->phase_start), hc->header_timeout)
         : hc->phase == P_HEAD ? hc->header_timeout - (now - hc->phase_start)
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
  (void)loop; (void)revents;
  if (!lua_checkstack(L, 8)) return;
  lua_pushcfunction(L, on_timeout);
  lua_pushlightuserdata(L, hc);
  ml__callback(L, 1, "Exception in HTTP timer");
}

/* ---------------------------------------------------------------- */
/* The connection's task side.                                        */

static int cancel_hook(lua_State *L, ml_Task *t, void *ud) {
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
  HConn *hc = check_hc(L, 1);
  (void)status; (void)ctx;
  if (push_next(L, 1, hc)) return 1;
  lua_pushnil(L);
  return 1;
}

/* await conn -> the next request, or nil when the connection is done. */
static int hc_await(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  lua_settop(L, 1);
  if (push_next(L, 1, hc)) return 1;
  hc->waiter = ml__task_current(L);
  hc->wait = W_REQ;
  return ml__task_suspend(L, cancel_hook, hc, 0, next_k);
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
    else if (e != HPE_OK && e != HPE_PAUSED && why && *why) lua_pushfstring(L, "Bad Request: %s", why);
    else lua_pushliteral(L, "Bad Request: the body ended early");
    lua_call(L, 2, 1);
    return lua_error(L);
  }
  return ml__exc_raise_errno(L, ECONNRESET, "the client went away before its request body was read");
}

static int body_k(lua_State *L, int status, lua_KContext ctx);

/* conn:_body() -> the next piece of the active request's body, or nil at
 * its end (async). */
static int hc_body(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  lua_settop(L, 1);
  if (!hc->active) luaL_error(L, "the request's body can only be read before its response is complete");
  send_continue(L, hc);
  if (hc->body.len) {
    lua_pushlstring(L, hc->body.data + hc->body.off, hc->body.len);
    ml__bq_consume(&hc->body, hc->body.len);
    update_reading(hc);
    return 1;
  }
  if (hc->complete) {
    lua_pushnil(L);
    return 1;
  }
  if (hc->err) return raise_body_error(L, hc);
  hc->waiter = ml__task_current(L);
  hc->wait = W_BODY;
  return ml__task_suspend(L, cancel_hook, hc, 0, body_k);
}

static int body_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status; (void)ctx;
  lua_settop(L, 1);
  return hc_body(L);
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
    if (nl == 14 && value_is(name, nl, "content-length")) *has_len = 1;
    else if (nl == 12 && value_is(name, nl, "content-type")) *has_type = 1;
    else if (nl == 17 && value_is(name, nl, "transfer-encoding")) *has_te = 1;
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

static int status_has_body(int status) {
  return !(status < 200 || status == 204 || status == 304);
}

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
    out_str(hc, reason(status));
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

static int check_status(lua_State *L, int idx) {
  return (int)ml__checkrange(L, idx, 100, 999);
}

/* conn:_respond(response) -> nothing: writes the whole response (a string,
 * or a table with status, body, headers, content_type) and completes the
 * request.  The hot path of every handler that returns its answer. */
static int hc_respond(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  int status = 200, has_len = 0, has_type = 0, has_te = 0;
  const char *body = NULL, *ctype = "text/plain; charset=utf-8";
  size_t blen = 0;
  lua_settop(L, 2);
  if (!hc->active || hc->resp != R_NONE) luaL_error(L, "the request has already been answered");
  if (lua_type(L, 2) == LUA_TSTRING) {
    body = lua_tolstring(L, 2, &blen);
    lua_pushnil(L);  /* 3: no headers */
  } else if (lua_type(L, 2) == LUA_TTABLE) {
    lua_getfield(L, 2, "status");   /* 3 */
    if (!lua_isnil(L, 3)) status = check_status(L, 3);
    lua_getfield(L, 2, "body");     /* 4 */
    if (!lua_isnil(L, 4)) {
      if (lua_type(L, 4) != LUA_TSTRING && lua_type(L, 4) != LUA_TNUMBER)
        luaL_error(L, "the response body must be a string, got %s", luaL_typename(L, 4));
      body = lua_tolstring(L, 4, &blen);
    }
    lua_getfield(L, 2, "content_type");  /* 5 */
    if (lua_type(L, 5) == LUA_TSTRING) ctype = lua_tostring(L, 5);
    lua_getfield(L, 2, "headers");  /* 6 */
    if (!lua_isnil(L, 6)) luaL_checktype(L, 6, LUA_TTABLE);
    lua_replace(L, 3);
    lua_settop(L, 4);
  } else {
    return luaL_error(L, "a handler must return a string or an http.Response, got %s",
                      luaL_typename(L, 2));
  }
  ml__bq_consume(&hc->out, hc->out.len);
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
      if (hc->c && !hc->c->closing && ml__conn_write(L, hc->c, body, blen) < 0) close_conn(hc, 1);
    }
  } else {
    out_flush(L, hc);
  }
  lua_pushvalue(L, 1);
  finish_request(L, hc);
  return 0;
}

/* conn:_start(status, headers) -> nothing: writes the head of a streamed
 * response: chunked unless headers give a Content-Length (HTTP/1.0:
 * delimited by closing the connection). */
static int hc_start(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  int status = check_status(L, 2), has_len = 0, has_type = 0, has_te = 0;
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
static int hc_write(lua_State *L) {
  HConn *hc = check_hc(L, 1);
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
  HConn *hc = check_hc(L, 1);
  (void)status; (void)ctx;
  if (hc->c == NULL || hc->closed) return ml__exc_raise_errno(L, ECONNRESET, "drain");
  return 0;
}

/* conn:_drain() (async): waits until the transport resumes writing. */
static int hc_drain(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  lua_settop(L, 1);
  if (hc->c == NULL || hc->closed) return ml__exc_raise_errno(L, ECONNRESET, "drain");
  if (!hc->wpaused) return 0;
  hc->waiter = ml__task_current(L);
  hc->wait = W_DRAIN;
  return ml__task_suspend(L, cancel_hook, hc, 0, drain_k);
}

/* conn:_finish() -> nothing: ends a streamed response. */
static int hc_finish(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  lua_settop(L, 1);
  if (hc->resp != R_STREAM) return 0;
  if (hc->chunked && hc->c && !hc->closed) {
    out_str(hc, "0\r\n\r\n");
    out_flush(L, hc);
  }
  finish_request(L, hc);
  return 0;
}

/* conn:_finish_or_fail() -> nothing: the handler returned nothing: ends
 * its streamed response, or raises if it never answered. */
static int hc_finish_or_fail(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  if (hc->active && hc->resp == R_NONE)
    return luaL_error(L, "the handler returned no response (return a string or an http.Response, "
                         "or call req:respond())");
  return hc_finish(L);
}

/* conn:_close() -> nothing: closes once the responses are written.  A
 * connection lingering after an error answer stays until the client's EOF
 * (or LINGER_TIME): closing it with input unread would reset it, and the
 * client might lose the answer (make fuzz-http found this after a handler
 * whose body read failed). */
static int hc_close(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  if (hc->lingering) return 0;
  close_conn(hc, 0);
  return 0;
}

/* conn:_fail(status) -> nothing: the handler failed.  Answers status if
 * no response was begun; otherwise aborts the connection (a response
 * half-sent cannot be taken back). */
static int hc_fail(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  int status = check_status(L, 2);
  const char *msg = luaL_optstring(L, 3, reason(status));
  lua_settop(L, 1);
  if (!hc->active) return 0;
  if (hc->resp == R_NONE) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s\n", msg);
    simple_response(L, hc, status, buf);
  } else {
    close_conn(hc, 1);
  }
  hc->active = 0;
  return 0;
}

/* conn:_shutdown() -> nothing: the server is closing: an idle connection
 * closes now, a busy one after its response. */
static int hc_shutdown(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  hc->draining = 1;
  if (!hc->active && hc->phase != P_HEAD) close_conn(hc, 0);
  wake(hc, W_REQ);
  return 0;
}

/* conn:_abort() -> nothing */
static int hc_abort(lua_State *L) {
  close_conn(check_hc(L, 1), 1);
  return 0;
}

/* conn:_info() -> a table of the connection's state, for tests. */
static int hc_transport(lua_State *L) {
  check_hc(L, 1);
  lua_getiuservalue(L, 1, UV_TR);
  return 1;
}

/* conn:_upgrade_take() -> the bytes read after the upgrade request (and
 * forgets them): the WebSocket layer's first input. */
static int hc_take_raw(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  lua_pushlstring(L, hc->in.data ? hc->in.data + hc->in.off : "", hc->in.len);
  ml__bq_consume(&hc->in, hc->in.len);
  return 1;
}

static int raw_k(lua_State *L, int status, lua_KContext ctx);

/* conn:_raw() (async) -> the bytes read after an upgrade, "" at the
 * end of the connection. */
static int hc_raw(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  lua_settop(L, 1);
  if (hc->in.len) {
    lua_pushlstring(L, hc->in.data + hc->in.off, hc->in.len);
    ml__bq_consume(&hc->in, hc->in.len);
    update_reading(hc);
    return 1;
  }
  if (hc->eof || hc->closed || hc->c == NULL) {
    lua_pushliteral(L, "");
    return 1;
  }
  hc->waiter = ml__task_current(L);
  hc->wait = W_BODY;
  return ml__task_suspend(L, cancel_hook, hc, 0, raw_k);
}

static int raw_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status; (void)ctx;
  lua_settop(L, 1);
  return hc_raw(L);
}

/* conn:_upgraded() -> true if the parser stopped at an upgrade request. */
static int hc_is_upgrade(lua_State *L) {
  HConn *hc = check_hc(L, 1);
  lua_pushboolean(L, hc->upgraded);
  return 1;
}

/* conn:_raw_head(101 response) -> nothing: writes bytes as they are (the
 * 101 Switching Protocols answer), marking the response begun. */
static int hc_write_raw(lua_State *L) {
  HConn *hc = check_hc(L, 1);
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
  {"_respond", hc_respond},
  {"_start", hc_start},
  {"_write", hc_write},
  {"_finish", hc_finish},
  {"_finish_or_fail", hc_finish_or_fail},
  {"_close", hc_close},
  {"_fail", hc_fail},
  {"_shutdown", hc_shutdown},
  {"_abort", hc_abort},
  {"_transport", hc_transport},
  {"_take_raw", hc_take_raw},
  {"_upgraded", hc_is_upgrade},
  {"_write_raw", hc_write_raw},
  {NULL, NULL}
};

static const luaL_Reg hc_async[] = {
  {"_body", hc_body},
  {"_drain", hc_drain},
  {"_raw", hc_raw},
  {NULL, NULL}
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
  llhttp_init(&hc->p, HTTP_REQUEST, &settings);
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
  return 1;
}

static const luaL_Reg module_funcs[] = {
  {"_conn", l_conn},
  {"reason", l_reason},
  {NULL, NULL}
};

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

/* [-0, +1] pushes the module table. */
int luaopen_http__server(lua_State *L) {
  pthread_once(&settings_once, init_settings);  /* states of several threads share it */
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
  }
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, module_funcs, 0);
  return 1;
}
