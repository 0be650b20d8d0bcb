/* ssl.h: what the parts of the ssl module share: the SSLContext object
 * and OpenSSL errors as exceptions (_ssl.c), the TLS layer over
 * transports (_tls.c), SSLObject (sslobject.c). */
#ifndef ML_SSL_H
#define ML_SSL_H

#include "ssl/openssl.h"
#include "socket/net.h"

#define ML_SSLCONTEXT "ssl.SSLContext"
#define ML_SSLOBJECT "ssl.SSLObject"

/* Python's protocol numbers and verify modes. */
enum { ML_PROTOCOL_TLS = 2, ML_PROTOCOL_TLS_CLIENT = 16, ML_PROTOCOL_TLS_SERVER = 17 };
enum { ML_CERT_NONE = 0, ML_CERT_OPTIONAL = 1, ML_CERT_REQUIRED = 2 };

#define ML_SESSION_CACHE 16

/* Empties this thread's OpenSSL error queue before a call whose
 * SSL_get_error must see its own errors only.  ERR_clear_error walks all
 * 16 slots of the queue, ~800 instructions (5% of the TLS echo benchmark
 * at two calls a message); the queue is almost always empty already, and
 * looking costs a fraction of that. */
static inline void ml__ssl_err_reset(void) {
  if (ERR_peek_error() != 0) ERR_clear_error();
}

/* A client context remembers the last session per server (name and
 * port), so that
 * a second connection to the same server resumes (TLS 1.2 session ids
 * or TLS 1.3 tickets). */
typedef struct ml_SessionSlot {
  char host[256];
  SSL_SESSION *sess;
  unsigned long used;
} ml_SessionSlot;

/* The userdata behind an SSLContext (metatable ML_SSLCONTEXT).  The
 * SSL_CTX is reference-counted by OpenSSL: connections keep it alive after
 * the Lua object is gone; callbacks check the back pointer first. */
typedef struct ml_SslCtx {
  SSL_CTX *ctx;
  int protocol; /* ML_PROTOCOL_* */
  int check_hostname;
  int verify_mode;     /* ML_CERT_* */
  int sni_ref;         /* registry ref of the servername callback */
  unsigned char *alpn; /* wire form (length-prefixed names) */
  unsigned alpn_len;
  unsigned long clock; /* session cache LRU */
  ml_SessionSlot sessions[ML_SESSION_CACHE];
} ml_SslCtx;

/* The context at idx, or a type error naming it. */
ml_SslCtx *ml__sslctx_check(lua_State *L, int idx);
/* The ml_SslCtx an SSL_CTX belongs to (NULL once its object is gone). */
ml_SslCtx *ml__sslctx_of(SSL_CTX *ctx);
/* The session remembered for host, or NULL (a new reference). */
SSL_SESSION *ml__sslctx_session(ml_SslCtx *x, const char *host);
/* Remembers sess (taking the reference) for host, in place of the
 * host's previous one or of the least recently used. */
void ml__sslctx_remember(ml_SslCtx *x, const char *host, SSL_SESSION *sess);

/* [-0, +1] pushes the exception for the OpenSSL error queue (and
 * SSL_get_error code sslerr, 0 if none) of ssl (may be NULL), as Python
 * words it: SSLCertVerificationError with verify_code/verify_message,
 * SSLEOFError, SSLZeroReturnError, SSLError with library/reason.
 * Clears the queue.  host is the name checked, for mismatch messages. */
void ml__ssl_push_error(lua_State *L, SSL *ssl, int sslerr, const char *host);
/* [-0, +0] raises that exception (cleared queue), for misuse of a
 * context (a bad certificate file). */
int ml__ssl_raise(lua_State *L, const char *what);

/* The TLS layer's per-connection state (_tls.c); the layer table
 * (XUV_LAYER) holds the context at LUV_CTX and the handshake future at
 * LUV_FUTURE. */
enum { LUV_CTX = 1, LUV_FUTURE = 2 }; /* the layer table (XUV_LAYER) */

typedef struct ml_Tls {
  SSL *ssl;
  BIO *rbio; /* ciphertext the socket gave, not yet used */
  ml_Conn *c;
  ml_BQ pend; /* plaintext written before the handshake ended */
  unsigned char server, hs_done, held, shut_sent, eof_marked, busy, failed;
  ev_timer kick; /* delivers held bytes when reading resumes */
  ev_timer shut; /* bounds the wait for the peer's close_notify */
  double shutdown_timeout;
  char host[256]; /* server_hostname, or "" */
  char key[300];  /* the session cache key: host, else the address */
} ml_Tls;

/* The TLS state of transport c, or NULL (not TLS, or gone). */
ml_Tls *ml__tls_of(ml_Conn *c);

/* The TLS layer (_tls.c): functions of the ssl._ssl module. */
int ml__tls_wrap(lua_State *L);
int ml__tls_release(lua_State *L);
int ml__tls_abort(lua_State *L);
/* OpenSSL callbacks set on contexts: the client's new session (into the
 * context's cache) and the server's servername (the script's
 * sni_callback). */
int ml__tls_new_session_cb(SSL *ssl, SSL_SESSION *sess);
int ml__tls_sni_cb(SSL *ssl, int *alert, void *arg);
/* SSLObject and the values it shares with get_extra_info
 * (sslobject.c).  [-0, +1] each; returns 1.  push_sslobject: a new
 * SSLObject over the transport at cidx; push_peercert: Python's
 * getpeercert() of t's peer (binary: the DER); push_cipher: Python's
 * cipher() triple. */
int ml__tls_push_sslobject(lua_State *L, int cidx);
int ml__tls_push_peercert(lua_State *L, ml_Tls *t, int binary);
int ml__tls_push_cipher(lua_State *L, ml_Tls *t);
/* Registers the SSLObject metatable.  [-0, +0] */
void ml__tls_open(lua_State *L);

#endif
