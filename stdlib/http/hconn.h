/* hconn.h: the HTTP server's connection (HConn), shared by http._server's
 * three files: _server.c (the protocol object of a transport, the
 * connection's task side, the module), _parse.c (llhttp's callbacks: the
 * Request table, feeding the parser) and _respond.c (the response writer:
 * status line, headers, Date, bodies).  Private to stdlib/http. */
#ifndef ML_HTTP_HCONN_H
#define ML_HTTP_HCONN_H

#include <stddef.h>
#include <stdint.h>
#include <llhttp.h>
#include "socket/net.h"

#define ML_HTTPCONN "http.Connection"
#define HC_MAGIC 0x48436f6eu
#define BUF_HIGH (64 * 1024) /* pause reading above this much buffered */
#define MAX_HEADERS 100
#define OUT_KEEP (64 * 1024) /* the output buffer keeps up to this */

/* User values of a connection. */
enum { UV_REQMT = 1, UV_HDRMT, UV_REQ, UV_TR, UV_ERR, UV_KEYS, UV_N = UV_KEYS };

/* The strings a Request is built of, made once per state and kept in
 * UV_KEYS's table (http._server's `_conn` upvalue) at these indexes, so
 * on_headers_complete fetches each with one lua_rawgeti and sets it with
 * lua_rawset: a lua_setfield or lua_pushstring with a C literal looks the
 * string up in Lua's string cache (a strcmp) each time (~110 instructions
 * a field; docs/performance.md, "HTTP server").  The method names are
 * cached from K_METHOD0 + llhttp's method number on first use. */
enum {
  K_METHOD = 1,
  K_TARGET,
  K_PATH,
  K_QUERY_STRING,
  K_VERSION,
  K_HEADERS,
  K_HC,
  K_EMPTY, /* "" */
  K_V10,   /* "1.0" */
  K_V11,   /* "1.1" */
  K_V09,   /* "0.9" */
  K_METHOD0
};

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
  ml_Conn *c;       /* the transport; NULL before connection_made and once lost */
  ml_Task *waiter;  /* the connection's task, when it waits */
  int wait;         /* W_* */
  int err;          /* errno or status that ended reading the body, 0 if none */
  int limit_status; /* 431 or 413: the limit a callback found exceeded */
  ml_BQ in;         /* bytes not parsed yet (the parser is paused) */
  ml_BQ head;       /* target, header names and values of the request being parsed */
  ml_BQ body;       /* body bytes the handler has not taken */
  ml_BQ out;        /* the response being written */
  Hdr hdr[MAX_HEADERS];
  int nhdr;
  uint32_t url_len;
  size_t head_bytes;   /* bytes of the head so far (header_limit) */
  uint64_t body_bytes; /* body bytes so far (body_limit) */
  /* limits */
  size_t header_limit;
  uint64_t body_limit;
  double header_timeout, keepalive_timeout;
  /* state */
  int phase;
  double phase_start;
  ev_timer tm;
  unsigned char in_value;   /* the last header callback was a value */
  unsigned char paused;     /* llhttp paused at the end of a message */
  unsigned char upgraded;   /* llhttp stopped at an upgrade */
  unsigned char active;     /* a request was handed over and its response is not done */
  unsigned char complete;   /* the active request's message is complete */
  unsigned char keep_alive; /* the active request allows another one */
  unsigned char head_req;   /* the active request is HEAD */
  unsigned char expect;     /* 100-continue asked and not sent yet */
  unsigned char resp;       /* R_* */
  unsigned char chunked;    /* the streamed response is chunked */
  unsigned char draining;   /* the server is closing: no more requests */
  unsigned char closed;     /* we closed the transport (or it was lost) */
  unsigned char eof;        /* the peer's EOF was seen */
  unsigned char wpaused;    /* the transport asked us to pause writing */
  unsigned char rpaused;    /* we paused the transport's reading */
  unsigned char http10;
  unsigned char lingering; /* answered an error: dropping input until EOF */
  uint64_t lingered;       /* bytes dropped so far */
} HConn;

/* _server.c */
void ml__http_update_reading(HConn *hc);
void ml__http_set_phase(HConn *hc, int phase);
void ml__http_wake(HConn *hc, int kind);
int ml__http_cancel_hook(lua_State *L, ml_Task *t, void *ud);
void ml__http_close_conn(HConn *hc, int abort);
HConn *ml__http_check_hc(lua_State *L, int idx);

/* _parse.c */
const llhttp_settings_t *ml__http_settings(void);
size_t ml__http_run_parser(lua_State *L, HConn *hc, const char *s, size_t n);
int ml__http_value_is(const char *v, size_t n, const char *want);
void ml__http_finish_request(lua_State *L, HConn *hc);
void ml__http_feed_pending(lua_State *L, HConn *hc);

/* _respond.c */
int ml__http_finish(lua_State *L);
void ml__http_simple_response(lua_State *L, HConn *hc, int status, const char *msg);
int ml__http_respond(lua_State *L);
int ml__http_l_reason(lua_State *L);
int ml__http_check_status(lua_State *L, int idx);
const char *ml__http_reason(int status);
int ml__http_drain(lua_State *L);
int ml__http_write(lua_State *L);
int ml__http_start(lua_State *L);

/* _json.c */
int ml__http_l_json_response(lua_State *L);

#endif
