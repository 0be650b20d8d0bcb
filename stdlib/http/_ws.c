/* _ws.c: http._ws, WebSocket framing (RFC 6455) on wslay's event API:
 * a Framer is fed the bytes read from the connection and yields the
 * messages in them, and turns the messages queued on it into the bytes to
 * write.  wslay does the framing, masking, fragment reassembly, UTF-8-free
 * control frames (ping answered with pong, close answered with close) and
 * the message size limit (close 1009).  The I/O itself is the caller's
 * (http/websocket.lua), over a server connection or a client stream.
 * Also the handshake's helpers: the Sec-WebSocket-Accept value and random
 * keys, from OpenSSL. */
#include <string.h>
#include <wslay/wslay.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include "core/module.h"
#include "ssl/openssl.h"

#define ML_WSFRAMER "http.WebSocketFramer"
#define WS_MAGIC 0x57536672u

typedef struct Framer {
  unsigned magic;
  wslay_event_context_ptr ctx;
  lua_State *L;   /* during feed/output: where messages go */
  const char *in; /* feed: bytes not handed to wslay yet */
  size_t in_len;
  luaL_Buffer *out; /* output: where wslay's bytes go */
  int head, tail;   /* the message queue (user value 1): [head, tail) */
  int failed;       /* wslay saw a protocol error */
} Framer;

static Framer *check_fr(lua_State *L) {
  Framer *f = lua_touserdata(L, 1);
  if (f == NULL || lua_rawlen(L, 1) != sizeof *f || f->magic != WS_MAGIC || f->ctx == NULL)
    luaL_typeerror(L, 1, ML_WSFRAMER);
  return f;
}

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud) {
  Framer *f = ud;
  size_t n = f->in_len < len ? f->in_len : len;
  (void)flags;
  if (n == 0) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  memcpy(buf, f->in, n);
  f->in += n;
  f->in_len -= n;
  return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                       void *ud) {
  Framer *f = ud;
  (void)flags;
  if (f->out == NULL) {
    wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  luaL_addlstring(f->out, (const char *)data, len);
  return (ssize_t)len;
}

static int genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud) {
  (void)ctx;
  (void)ud;
  return RAND_bytes(buf, (int)len) == 1 ? 0 : -1;
}

/* Queues {opcode, data, code} in the framer's list (user value 1); the
 * framer is at index 1 of f->L. */
static void on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a,
                   void *ud) {
  Framer *f = ud;
  lua_State *L = f->L;
  (void)ctx;
  if (a->opcode != WSLAY_TEXT_FRAME && a->opcode != WSLAY_BINARY_FRAME &&
      a->opcode != WSLAY_CONNECTION_CLOSE && a->opcode != WSLAY_PONG)
    return; /* pings are answered by wslay */
  lua_getiuservalue(L, 1, 1);
  lua_createtable(L, 3, 0);
  lua_pushinteger(L, a->opcode);
  lua_rawseti(L, -2, 1);
  lua_pushlstring(L, (const char *)a->msg, a->msg_length);
  lua_rawseti(L, -2, 2);
  lua_pushinteger(L, a->status_code);
  lua_rawseti(L, -2, 3);
  lua_rawseti(L, -2, f->tail++);
  lua_pop(L, 1);
}

static const struct wslay_event_callbacks callbacks = {recv_cb, send_cb, genmask_cb, NULL,
                                                       NULL,    NULL,    on_msg};

/* _framer(is_server, max_message) -> framer */
static int l_framer(lua_State *L) {
  int server = lua_toboolean(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, 1 << 20);
  Framer *f = lua_newuserdatauv(L, sizeof *f, 1);
  int r;
  memset(f, 0, sizeof *f);
  f->magic = WS_MAGIC;
  f->head = f->tail = 1;
  luaL_setmetatable(L, ML_WSFRAMER);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 1);
  r = server ? wslay_event_context_server_init(&f->ctx, &callbacks, f)
             : wslay_event_context_client_init(&f->ctx, &callbacks, f);
  if (r != 0) return luaL_error(L, "out of memory");
  if (max > 0) wslay_event_config_set_max_recv_msg_length(f->ctx, (uint64_t)max);
  return 1;
}

/* framer:feed(bytes) -> nothing: parses the bytes; messages go to the
 * queue, answers (pong, close) to the output. */
static int fr_feed(lua_State *L) {
  Framer *f = check_fr(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  lua_settop(L, 2);
  f->L = L;
  f->in = s;
  f->in_len = n;
  if (wslay_event_recv(f->ctx) != 0) f->failed = 1;
  f->in = NULL;
  f->in_len = 0;
  return 0;
}

/* framer:pop() -> opcode, data, close code | nil */
static int fr_pop(lua_State *L) {
  Framer *f = check_fr(L);
  if (f->head == f->tail) return 0;
  lua_getiuservalue(L, 1, 1);
  lua_rawgeti(L, -1, f->head);
  lua_pushnil(L);
  lua_rawseti(L, -3, f->head++);
  if (f->head == f->tail) f->head = f->tail = 1;
  lua_rawgeti(L, -1, 1);
  lua_rawgeti(L, -2, 2);
  lua_rawgeti(L, -3, 3);
  return 3;
}

/* framer:queue(opcode, data) -> true, or false if no more may be sent
 * (a close was queued). */
static int fr_queue(lua_State *L) {
  Framer *f = check_fr(L);
  int op = (int)luaL_checkinteger(L, 2);
  size_t n;
  const char *s = luaL_optlstring(L, 3, "", &n);
  struct wslay_event_msg m;
  int r;
  if ((op == WSLAY_PING || op == WSLAY_PONG) && n > 125)
    luaL_argerror(L, 3, "a ping or pong payload is at most 125 bytes");
  m.opcode = (uint8_t)op;
  m.msg = (const uint8_t *)s;
  m.msg_length = n;
  r = wslay_event_queue_msg(f->ctx, &m);
  if (r == WSLAY_ERR_NOMEM) return luaL_error(L, "out of memory");
  if (r == WSLAY_ERR_INVALID_ARGUMENT) return luaL_error(L, "invalid WebSocket message");
  lua_pushboolean(L, r == 0);
  return 1;
}

/* framer:close(code, reason) -> true if queued */
static int fr_close(lua_State *L) {
  Framer *f = check_fr(L);
  int code = (int)ml__optrange(L, 2, 1000, 0, 4999);
  size_t n;
  const char *reason = luaL_optlstring(L, 3, "", &n);
  if (n > 123) luaL_argerror(L, 3, "a close reason is at most 123 bytes");
  lua_pushboolean(L,
                  wslay_event_queue_close(f->ctx, (uint16_t)code, (const uint8_t *)reason, n) == 0);
  return 1;
}

/* framer:output() -> the bytes to write now ("" if none) */
static int fr_output(lua_State *L) {
  Framer *f = check_fr(L);
  luaL_Buffer b;
  lua_settop(L, 1);
  luaL_buffinit(L, &b);
  f->out = &b;
  f->L = L;
  if (wslay_event_send(f->ctx) != 0) f->failed = 1;
  f->out = NULL;
  luaL_pushresult(&b);
  return 1;
}

/* framer:state() -> close_received, close_sent, code sent, done reading
 * (a close was received or wslay refused the input: a protocol error or
 * a message over the limit, answered with close 1002 or 1009). */
static int fr_state(lua_State *L) {
  Framer *f = check_fr(L);
  lua_pushboolean(L, wslay_event_get_close_received(f->ctx));
  lua_pushboolean(L, wslay_event_get_close_sent(f->ctx));
  lua_pushinteger(L, wslay_event_get_status_code_sent(f->ctx));
  lua_pushboolean(L, f->failed || !wslay_event_want_read(f->ctx));
  return 4;
}

/* framer:pending() -> how many messages pop() has */
static int fr_pending(lua_State *L) {
  Framer *f = check_fr(L);
  lua_pushinteger(L, f->tail - f->head);
  return 1;
}

static int fr_gc(lua_State *L) {
  Framer *f = lua_touserdata(L, 1);
  if (f && lua_rawlen(L, 1) == sizeof *f && f->magic == WS_MAGIC && f->ctx) {
    wslay_event_context_free(f->ctx);
    f->ctx = NULL;
  }
  return 0;
}

/* _accept_key(key) -> base64(SHA-1(key .. GUID)) */
static int l_accept_key(lua_State *L) {
  static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
  size_t n;
  luaL_checkstring(L, 1);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned char out[64];
  unsigned int mdlen = 0;
  const char *all;
  lua_pushvalue(L, 1);
  lua_pushstring(L, guid);
  lua_concat(L, 2);
  all = lua_tolstring(L, -1, &n);
  if (!EVP_Digest(all, n, md, &mdlen, EVP_sha1(), NULL)) return luaL_error(L, "SHA-1 failed");
  n = (size_t)EVP_EncodeBlock(out, md, (int)mdlen);
  lua_pushlstring(L, (const char *)out, n);
  return 1;
}

/* _random_key() -> base64 of 16 random bytes (Sec-WebSocket-Key) */
static int l_random_key(lua_State *L) {
  unsigned char raw[16], out[32];
  int n;
  if (RAND_bytes(raw, sizeof raw) != 1) return luaL_error(L, "no random bytes");
  n = EVP_EncodeBlock(out, raw, sizeof raw);
  lua_pushlstring(L, (const char *)out, (size_t)n);
  return 1;
}

static const luaL_Reg fr_methods[] = {
  {"feed", fr_feed},     {"pop", fr_pop},     {"queue", fr_queue},     {"close", fr_close},
  {"output", fr_output}, {"state", fr_state}, {"pending", fr_pending}, {NULL, NULL},
};

static const luaL_Reg module_funcs[] = {
  {"_framer", l_framer},
  {"_accept_key", l_accept_key},
  {"_random_key", l_random_key},
  {NULL, NULL},
};

/* [-0, +1] pushes the module table. */
int luaopen_http__ws(lua_State *L) {
  const char *why = ml__openssl_load(); /* SHA-1 and random keys */
  if (why != NULL) return luaL_error(L, "http: %s", why);
  ml__class_new(L, ML_WSFRAMER, fr_methods, fr_gc, NULL);
  lua_newtable(L);
  luaL_setfuncs(L, module_funcs, 0);
  lua_pushinteger(L, WSLAY_TEXT_FRAME);
  lua_setfield(L, -2, "TEXT");
  lua_pushinteger(L, WSLAY_BINARY_FRAME);
  lua_setfield(L, -2, "BINARY");
  lua_pushinteger(L, WSLAY_PING);
  lua_setfield(L, -2, "PING");
  lua_pushinteger(L, WSLAY_PONG);
  lua_setfield(L, -2, "PONG");
  lua_pushinteger(L, WSLAY_CONNECTION_CLOSE);
  lua_setfield(L, -2, "CLOSE");
  return 1;
}
