/* _ssl.c: the C core of the ssl module (ssl._ssl): SSLContext on an
 * OpenSSL 3 SSL_CTX, OpenSSL's errors as Python's exception classes, and
 * the module's constants.  The TLS layer that contexts are used by is in
 * _tls.c; the Lua face (create_default_context, the exception classes,
 * the asyncio glue) is stdlib/ssl.lua. */
#include <ctype.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include "ssl/ssl.h"

static int ctx_index = -1; /* SSL_CTX ex_data slot: its ml_SslCtx */

/* ---------------------------------------------------------------- */
/* Errors.                                                            */

/* "certificate verify failed" -> "CERTIFICATE_VERIFY_FAILED", the
 * mnemonic Python prints in brackets. */
static void mnemonic(const char *s, char *out, size_t size) {
  size_t i = 0;
  for (; *s && i + 1 < size; s++)
    out[i++] = isalnum((unsigned char)*s) ? (char)toupper((unsigned char)*s) : '_';
  out[i] = 0;
}

static const char *lib_name(unsigned long e) {
  switch (ERR_GET_LIB(e)) {
  case ERR_LIB_SSL: return "SSL";
  case ERR_LIB_X509: return "X509";
  case ERR_LIB_X509V3: return "X509V3";
  case ERR_LIB_PEM: return "PEM";
  case ERR_LIB_EVP: return "EVP";
  case ERR_LIB_ASN1: return "ASN1";
  case ERR_LIB_SYS: return "SYS";
  default: {
    const char *s = ERR_lib_error_string(e);
    return s ? s : "UNKNOWN";
  }
  }
}

/* [-0, +1] pushes the SSLError (or subclass) for sslerr and OpenSSL's
 * error queue, which it clears; host names a verification failure. */
void ml__ssl_push_error(lua_State *L, SSL *ssl, int sslerr, const char *host) {
  unsigned long e = ERR_peek_last_error();
  const char *cls = "SSLError", *reason_s;
  char reason[128], msg[1024], unk[64];
  long vcode = 0;
  const char *vmsg = NULL;
  char vbuf[320];
  int errnum = sslerr ? sslerr : SSL_ERROR_SSL;
  ERR_clear_error();
  if (sslerr == SSL_ERROR_ZERO_RETURN) {
    ml__exc_push_class(L, "SSLZeroReturnError");
    lua_pushinteger(L, SSL_ERROR_ZERO_RETURN);
    lua_pushliteral(L, "TLS/SSL connection has been closed (EOF)");
    lua_call(L, 2, 1);
    return;
  }
  if (e == 0) {
    ml__exc_push_class(L, sslerr == SSL_ERROR_SYSCALL ? "SSLSyscallError" : "SSLError");
    lua_pushinteger(L, errnum);
    lua_pushstring(L, sslerr == SSL_ERROR_SYSCALL ? "Some I/O error occurred" : "unknown error");
    lua_call(L, 2, 1);
    return;
  }
  reason_s = ERR_reason_error_string(e);
  if (reason_s == NULL) {
    snprintf(unk, sizeof unk, "unknown error (0x%lx)", e);
    reason_s = unk;
  }
  mnemonic(reason_s, reason, sizeof reason);
  if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
    cls = "SSLCertVerificationError";
    vcode = ssl ? SSL_get_verify_result(ssl) : 0;
    if (vcode == X509_V_ERR_HOSTNAME_MISMATCH && host) {
      snprintf(vbuf, sizeof vbuf, "Hostname mismatch, certificate is not valid for '%s'.", host);
      vmsg = vbuf;
    } else if (vcode == X509_V_ERR_IP_ADDRESS_MISMATCH && host) {
      snprintf(vbuf, sizeof vbuf, "IP address mismatch, certificate is not valid for '%s'.", host);
      vmsg = vbuf;
    } else {
      vmsg = X509_verify_cert_error_string(vcode);
    }
    snprintf(msg, sizeof msg, "[%s: %s] %s: %s", lib_name(e), reason, reason_s, vmsg);
  } else if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
             ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    cls = "SSLEOFError";
    errnum = 8; /* Python's SSL_ERROR_EOF */
    snprintf(msg, sizeof msg, "[%s: %s] EOF occurred in violation of protocol", lib_name(e),
             reason);
  } else {
    snprintf(msg, sizeof msg, "[%s: %s] %s", lib_name(e), reason, reason_s);
  }
  ml__exc_push_class(L, cls);
  lua_pushinteger(L, errnum);
  lua_pushstring(L, msg);
  lua_call(L, 2, 1);
  lua_pushstring(L, lib_name(e));
  lua_setfield(L, -2, "library");
  lua_pushstring(L, reason);
  lua_setfield(L, -2, "reason");
  if (vmsg) {
    lua_pushinteger(L, vcode);
    lua_setfield(L, -2, "verify_code");
    lua_pushstring(L, vmsg);
    lua_setfield(L, -2, "verify_message");
  }
}

/* [-0, +1] raises the SSLError of OpenSSL's queue (or "what failed"):
 * never returns. */
int ml__ssl_raise(lua_State *L, const char *what) {
  if (ERR_peek_last_error() == 0) return ml__exc_raise(L, "SSLError", "%s failed", what);
  ml__ssl_push_error(L, NULL, 0, NULL);
  return lua_error(L);
}

/* ---------------------------------------------------------------- */
/* SSLContext.                                                        */

/* [-0, +0] the open SSLContext at idx, or raises. */
ml_SslCtx *ml__sslctx_check(lua_State *L, int idx) {
  ml_SslCtx *x = ml__udata_check(L, idx, ML_UT_SSLCONTEXT);
  if (x->ctx == NULL) luaL_argerror(L, idx, "SSLContext is closed");
  return x;
}

ml_SslCtx *ml__sslctx_of(SSL_CTX *ctx) { return SSL_CTX_get_ex_data(ctx, ctx_index); }

void ml__sslctx_remember(ml_SslCtx *x, const char *key, SSL_SESSION *sess) {
  ml_SessionSlot *slot = NULL;
  for (int i = 0; i < ML_SESSION_CACHE; i++) {
    if (x->sessions[i].sess && strcmp(x->sessions[i].host, key) == 0) {
      slot = &x->sessions[i];
      break;
    }
  }
  if (slot == NULL) {
    slot = &x->sessions[0];
    for (int i = 0; i < ML_SESSION_CACHE; i++) {
      if (x->sessions[i].sess == NULL) {
        slot = &x->sessions[i];
        break;
      }
      if (x->sessions[i].used < slot->used) slot = &x->sessions[i];
    }
  }
  if (slot->sess) SSL_SESSION_free(slot->sess);
  snprintf(slot->host, sizeof slot->host, "%s", key);
  slot->sess = sess;
  slot->used = ++x->clock;
}

SSL_SESSION *ml__sslctx_session(ml_SslCtx *x, const char *host) {
  for (int i = 0; i < ML_SESSION_CACHE; i++) {
    ml_SessionSlot *s = &x->sessions[i];
    if (s->sess && strcmp(s->host, host) == 0) {
      if (!SSL_SESSION_is_resumable(s->sess)) return NULL;
      s->used = ++x->clock;
      SSL_SESSION_up_ref(s->sess);
      return s->sess;
    }
  }
  return NULL;
}

static void apply_verify(ml_SslCtx *x) {
  int mode = SSL_VERIFY_NONE;
  if (x->verify_mode == ML_CERT_OPTIONAL) mode = SSL_VERIFY_PEER;
  else if (x->verify_mode == ML_CERT_REQUIRED)
    mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  SSL_CTX_set_verify(x->ctx, mode, NULL);
}

/* SSLContext(protocol): PROTOCOL_TLS_CLIENT (verification and hostname
 * checks on), PROTOCOL_TLS_SERVER, or PROTOCOL_TLS (either side, checks
 * off), as Python's.
 * [-0, +1] pushes the new context (its methods are set by ctx_new_l). */
static int ctx_new(lua_State *L) {
  int protocol = (int)luaL_optinteger(L, 1, ML_PROTOCOL_TLS);
  const SSL_METHOD *m;
  ml_SslCtx *x;
  if (protocol == ML_PROTOCOL_TLS_CLIENT) m = TLS_client_method();
  else if (protocol == ML_PROTOCOL_TLS_SERVER) m = TLS_server_method();
  else if (protocol == ML_PROTOCOL_TLS) m = TLS_method();
  else
    return ml__exc_raise(L, "ValueError", "invalid or unsupported protocol version %d", protocol);
  x = lua_newuserdatauv(L, sizeof *x, 1);
  memset(x, 0, sizeof *x);
  x->sni_ref = LUA_NOREF;
  ml__udata_setmt(L, ML_UT_SSLCONTEXT);
  x->ctx = SSL_CTX_new(m);
  if (x->ctx == NULL) return ml__ssl_raise(L, "SSL_CTX_new");
  SSL_CTX_set_ex_data(x->ctx, ctx_index, x);
  x->protocol = protocol;
  x->check_hostname = protocol == ML_PROTOCOL_TLS_CLIENT;
  x->verify_mode = protocol == ML_PROTOCOL_TLS_CLIENT ? ML_CERT_REQUIRED : ML_CERT_NONE;
  apply_verify(x);
  /* Python's defaults; renegotiation off (it is an attack surface and
   * TLS 1.3 has none); a socket EOF without close_notify is an EOF, as
   * asyncio reports it (clear OP_IGNORE_UNEXPECTED_EOF for SSLEOFError). */
  SSL_CTX_set_options(x->ctx, SSL_OP_ALL | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_clear_options(x->ctx, SSL_OP_LEGACY_SERVER_CONNECT);
  SSL_CTX_set_min_proto_version(x->ctx, TLS1_2_VERSION);
  /* Server: stateless tickets and the session id cache (OpenSSL's
   * defaults); client: the per-host cache above. */
  if (protocol != ML_PROTOCOL_TLS_SERVER) {
    SSL_CTX_set_session_cache_mode(x->ctx,
                                   SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(x->ctx, ml__tls_new_session_cb);
  } else {
    static const unsigned char sid[] = "moonloop";
    SSL_CTX_set_session_id_context(x->ctx, sid, sizeof sid - 1);
  }
  return 1;
}

/* __gc(ctx) / __close(ctx) -> nothing */
static int ctx_gc(lua_State *L) {
  ml_SslCtx *x = ml__udata_check(L, 1, ML_UT_SSLCONTEXT);
  if (x->ctx) {
    SSL_CTX_set_ex_data(x->ctx, ctx_index, NULL);
    SSL_CTX_free(x->ctx); /* connections may still hold it */
    x->ctx = NULL;
  }
  for (int i = 0; i < ML_SESSION_CACHE; i++) {
    if (x->sessions[i].sess) SSL_SESSION_free(x->sessions[i].sess);
    x->sessions[i].sess = NULL;
  }
  if (x->sni_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, x->sni_ref);
  x->sni_ref = LUA_NOREF;
  free(x->alpn);
  x->alpn = NULL;
  return 0;
}

/* Password callback of load_cert_chain: the password string. */
static int password_cb(char *buf, int size, int rwflag, void *ud) {
  const char *pw = ud;
  int n = (int)strlen(pw);
  (void)rwflag;
  if (n > size) return -1;
  memcpy(buf, pw, (size_t)n);
  return n;
}

/* ctx:load_cert_chain(certfile, [keyfile], [password]) -> nothing */
static int ctx_load_cert_chain(lua_State *L) {
  ml_SslCtx *x = ml__sslctx_check(L, 1);
  const char *cert = luaL_checkstring(L, 2);
  const char *key = luaL_optstring(L, 3, cert);
  const char *pw = luaL_optstring(L, 4, NULL);
  int ok;
  ERR_clear_error();
  if (pw) {
    SSL_CTX_set_default_passwd_cb(x->ctx, password_cb);
    SSL_CTX_set_default_passwd_cb_userdata(x->ctx, (void *)pw);
  }
  ok = SSL_CTX_use_certificate_chain_file(x->ctx, cert) == 1;
  if (ok) ok = SSL_CTX_use_PrivateKey_file(x->ctx, key, SSL_FILETYPE_PEM) == 1;
  if (pw) {
    SSL_CTX_set_default_passwd_cb(x->ctx, NULL);
    SSL_CTX_set_default_passwd_cb_userdata(x->ctx, NULL);
  }
  if (ok) ok = SSL_CTX_check_private_key(x->ctx) == 1;
  if (!ok) {
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_SYS) {
      ERR_clear_error();
      return ml__exc_raise_errno(L, ERR_GET_REASON(e), NULL);
    }
    return ml__ssl_raise(L, "load_cert_chain");
  }
  return 0;
}

/* load_verify_locations([cafile], [capath], [cadata]): cadata is PEM
 * text (one or more certificates).
 * -> nothing */
static int ctx_load_verify_locations(lua_State *L) {
  ml_SslCtx *x = ml__sslctx_check(L, 1);
  const char *cafile = luaL_optstring(L, 2, NULL);
  const char *capath = luaL_optstring(L, 3, NULL);
  size_t dlen = 0;
  const char *cadata = luaL_optlstring(L, 4, NULL, &dlen);
  ERR_clear_error();
  if (!cafile && !capath && !cadata)
    return ml__exc_raise(L, "TypeError", "cafile, capath and cadata cannot be all omitted");
  if ((cafile || capath) && SSL_CTX_load_verify_locations(x->ctx, cafile, capath) != 1) {
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_SYS || e == 0) {
      ERR_clear_error();
      return ml__exc_raise_errno(L, e ? ERR_GET_REASON(e) : 2, NULL);
    }
    return ml__ssl_raise(L, "load_verify_locations");
  }
  if (cadata) {
    X509_STORE *store = SSL_CTX_get_cert_store(x->ctx);
    BIO *b = BIO_new_mem_buf(cadata, (int)dlen);
    int n = 0;
    X509 *cert;
    if (b == NULL) return ml__exc_raise(L, "MemoryError", "cadata");
    while ((cert = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
      X509_STORE_add_cert(store, cert);
      X509_free(cert);
      n++;
    }
    BIO_free(b);
    ERR_clear_error();
    if (n == 0) return ml__exc_raise(L, "SSLError", "no certificate found in cadata");
  }
  return 0;
}

/* ctx:set_default_verify_paths() -> nothing */
static int ctx_set_default_verify_paths(lua_State *L) {
  ml_SslCtx *x = ml__sslctx_check(L, 1);
  ERR_clear_error();
  if (SSL_CTX_set_default_verify_paths(x->ctx) != 1)
    return ml__ssl_raise(L, "set_default_verify_paths");
  return 0;
}

/* ctx:set_ciphers(spec) -> nothing */
static int ctx_set_ciphers(lua_State *L) {
  ml_SslCtx *x = ml__sslctx_check(L, 1);
  const char *s = luaL_checkstring(L, 2);
  ERR_clear_error();
  if (SSL_CTX_set_cipher_list(x->ctx, s) != 1) {
    ERR_clear_error();
    return ml__exc_raise(L, "SSLError", "('No cipher can be selected.',)");
  }
  return 0;
}

/* Server side of ALPN: the first of our protocols the client offers. */
static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned inlen, void *arg) {
  ml_SslCtx *x = ml__sslctx_of(SSL_get_SSL_CTX(ssl));
  (void)arg;
  if (x == NULL || x->alpn == NULL) return SSL_TLSEXT_ERR_NOACK;
  if (SSL_select_next_proto((unsigned char **)out, outlen, x->alpn, x->alpn_len, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  return SSL_TLSEXT_ERR_OK;
}

/* ctx:set_alpn_protocols({"h2", "http/1.1"}) -> nothing */
static int ctx_set_alpn_protocols(lua_State *L) {
  ml_SslCtx *x = ml__sslctx_check(L, 1);
  lua_Integer n;
  size_t total = 0;
  unsigned char *wire;
  luaL_checktype(L, 2, LUA_TTABLE);
  n = luaL_len(L, 2);
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_geti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 2, "list of strings expected");
    lua_tolstring(L, -1, &len);
    if (len == 0 || len > 255)
      return ml__exc_raise(L, "ValueError", "ALPN protocols must be 1 to 255 in length");
    total += len + 1;
    lua_pop(L, 1);
  }
  wire = malloc(total ? total : 1);
  if (wire == NULL) return ml__exc_raise(L, "MemoryError", "ALPN list");
  total = 0;
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    lua_geti(L, 2, i);
    const char *p = lua_tolstring(L, -1, &len);
    wire[total++] = (unsigned char)len;
    memcpy(wire + total, p, len);
    total += len;
    lua_pop(L, 1);
  }
  free(x->alpn);
  x->alpn = wire;
  x->alpn_len = (unsigned)total;
  if (x->protocol != ML_PROTOCOL_TLS_SERVER &&
      SSL_CTX_set_alpn_protos(x->ctx, wire, (unsigned)total) != 0)
    return ml__exc_raise(L, "MemoryError", "ALPN list");
  if (x->protocol != ML_PROTOCOL_TLS_CLIENT)
    SSL_CTX_set_alpn_select_cb(x->ctx, alpn_select_cb, NULL);
  return 0;
}

/* set_servername_callback(fn | nil): fn(ssl_object, server_name,
 * context) runs during a server-side handshake; it may switch
 * ssl_object.context, and return nil (go on) or an alert number.
 * -> nothing */
static int ctx_set_servername_callback(lua_State *L) {
  ml_SslCtx *x = ml__sslctx_check(L, 1);
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  if (x->protocol == ML_PROTOCOL_TLS_CLIENT)
    return ml__exc_raise(L, "ValueError", "sni_callback cannot be set on TLS_CLIENT context");
  if (x->sni_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, x->sni_ref);
  x->sni_ref = LUA_NOREF;
  if (lua_isnil(L, 2)) {
    SSL_CTX_set_tlsext_servername_callback(x->ctx, NULL);
    return 0;
  }
  lua_pushvalue(L, 2);
  x->sni_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  SSL_CTX_set_tlsext_servername_callback(x->ctx, ml__tls_sni_cb);
  return 0;
}

/* ctx:session_stats() -> {accept=, hits=, connect=, misses=} */
static int ctx_session_stats(lua_State *L) {
  ml_SslCtx *x = ml__sslctx_check(L, 1);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, SSL_CTX_sess_accept(x->ctx));
  lua_setfield(L, -2, "accept");
  lua_pushinteger(L, SSL_CTX_sess_hits(x->ctx));
  lua_setfield(L, -2, "hits");
  lua_pushinteger(L, SSL_CTX_sess_connect(x->ctx));
  lua_setfield(L, -2, "connect");
  lua_pushinteger(L, SSL_CTX_sess_misses(x->ctx));
  lua_setfield(L, -2, "misses");
  return 1;
}

static int version_get(int v) { return v == 0 ? -2 : v; }

/* Fields: check_hostname, verify_mode, minimum_version, maximum_version,
 * options, protocol, sni_callback; then the methods.
 * __index(ctx, key) -> value */
static int ctx_index_mm(lua_State *L) {
  ml_SslCtx *x = ml__udata_check(L, 1, ML_UT_SSLCONTEXT);
  const char *k = lua_tostring(L, 2);
  if (k && x->ctx) {
    if (strcmp(k, "check_hostname") == 0) {
      lua_pushboolean(L, x->check_hostname);
      return 1;
    }
    if (strcmp(k, "verify_mode") == 0) {
      lua_pushinteger(L, x->verify_mode);
      return 1;
    }
    if (strcmp(k, "protocol") == 0) {
      lua_pushinteger(L, x->protocol);
      return 1;
    }
    if (strcmp(k, "options") == 0) {
      lua_pushinteger(L, (lua_Integer)SSL_CTX_get_options(x->ctx));
      return 1;
    }
    if (strcmp(k, "minimum_version") == 0) {
      lua_pushinteger(L, version_get((int)SSL_CTX_get_min_proto_version(x->ctx)));
      return 1;
    }
    if (strcmp(k, "maximum_version") == 0) {
      int v = (int)SSL_CTX_get_max_proto_version(x->ctx);
      lua_pushinteger(L, v == 0 ? -1 : v);
      return 1;
    }
    if (strcmp(k, "sni_callback") == 0) {
      if (x->sni_ref == LUA_NOREF) lua_pushnil(L);
      else lua_rawgeti(L, LUA_REGISTRYINDEX, x->sni_ref);
      return 1;
    }
  }
  lua_getiuservalue(L, 1, 1); /* the methods table */
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

/* [-0, +0] the TLS version at idx (0 for MINIMUM/MAXIMUM_SUPPORTED);
 * raises ValueError. */
static int check_version(lua_State *L, int idx) {
  lua_Integer v = luaL_checkinteger(L, idx);
  if (v == -2 || v == -1) return 0;
  if (v != TLS1_VERSION && v != TLS1_1_VERSION && v != TLS1_2_VERSION && v != TLS1_3_VERSION)
    return ml__exc_raise(L, "ValueError", "Unsupported TLS/SSL version %d", (int)v);
  return (int)v;
}

/* __newindex(ctx, key, value) -> nothing */
static int ctx_newindex_mm(lua_State *L) {
  ml_SslCtx *x = ml__sslctx_check(L, 1);
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "check_hostname") == 0) {
    x->check_hostname = lua_toboolean(L, 3);
    if (x->check_hostname && x->verify_mode == ML_CERT_NONE) {
      x->verify_mode = ML_CERT_REQUIRED;
      apply_verify(x);
    }
  } else if (strcmp(k, "verify_mode") == 0) {
    lua_Integer m = luaL_checkinteger(L, 3);
    if (m < ML_CERT_NONE || m > ML_CERT_REQUIRED)
      return ml__exc_raise(L, "ValueError", "invalid value for verify_mode");
    if (m == ML_CERT_NONE && x->check_hostname)
      return ml__exc_raise(L, "ValueError",
                           "Cannot set verify_mode to CERT_NONE when check_hostname is enabled.");
    x->verify_mode = (int)m;
    apply_verify(x);
  } else if (strcmp(k, "minimum_version") == 0) {
    SSL_CTX_set_min_proto_version(x->ctx, check_version(L, 3));
  } else if (strcmp(k, "maximum_version") == 0) {
    SSL_CTX_set_max_proto_version(x->ctx, check_version(L, 3));
  } else if (strcmp(k, "options") == 0) {
    uint64_t want = (uint64_t)luaL_checkinteger(L, 3);
    uint64_t have = SSL_CTX_get_options(x->ctx);
    SSL_CTX_clear_options(x->ctx, have & ~want);
    SSL_CTX_set_options(x->ctx, want & ~have);
  } else if (strcmp(k, "sni_callback") == 0) {
    lua_pushcfunction(L, ctx_set_servername_callback);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 3);
    lua_call(L, 2, 0);
  } else {
    return luaL_error(L, "'SSLContext' object has no attribute '%s'", k);
  }
  return 0;
}

/* __tostring(ctx) -> string */
static int ctx_tostring(lua_State *L) {
  ml_SslCtx *x = ml__udata_check(L, 1, ML_UT_SSLCONTEXT);
  lua_pushfstring(L, "<ssl.SSLContext %s>",
                  x->protocol == ML_PROTOCOL_TLS_CLIENT   ? "client"
                  : x->protocol == ML_PROTOCOL_TLS_SERVER ? "server"
                                                          : "tls");
  return 1;
}

static const luaL_Reg ctx_methods[] = {
  {"load_cert_chain", ctx_load_cert_chain},
  {"load_verify_locations", ctx_load_verify_locations},
  {"set_default_verify_paths", ctx_set_default_verify_paths},
  {"set_ciphers", ctx_set_ciphers},
  {"set_alpn_protocols", ctx_set_alpn_protocols},
  {"set_servername_callback", ctx_set_servername_callback},
  {"session_stats", ctx_session_stats},
  {NULL, NULL},
};

/* SSLContext objects get their methods table as user value 1, so that
 * __index finds methods without a second metatable.
 * SSLContext(protocol) -> ctx */
static int ctx_new_l(lua_State *L) {
  ctx_new(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, (void *)ctx_methods);
  lua_setiuservalue(L, -2, 1);
  return 1;
}

static const struct {
  const char *name;
  lua_Integer v;
} constants[] = {
  {"PROTOCOL_TLS", ML_PROTOCOL_TLS},
  {"PROTOCOL_SSLv23", ML_PROTOCOL_TLS},
  {"PROTOCOL_TLS_CLIENT", ML_PROTOCOL_TLS_CLIENT},
  {"PROTOCOL_TLS_SERVER", ML_PROTOCOL_TLS_SERVER},
  {"CERT_NONE", ML_CERT_NONE},
  {"CERT_OPTIONAL", ML_CERT_OPTIONAL},
  {"CERT_REQUIRED", ML_CERT_REQUIRED},
  {"OP_ALL", (lua_Integer)SSL_OP_ALL},
  {"OP_NO_COMPRESSION", (lua_Integer)SSL_OP_NO_COMPRESSION},
  {"OP_NO_TICKET", (lua_Integer)SSL_OP_NO_TICKET},
  {"OP_NO_RENEGOTIATION", (lua_Integer)SSL_OP_NO_RENEGOTIATION},
  {"OP_CIPHER_SERVER_PREFERENCE", (lua_Integer)SSL_OP_CIPHER_SERVER_PREFERENCE},
  {"OP_NO_TLSv1", (lua_Integer)SSL_OP_NO_TLSv1},
  {"OP_NO_TLSv1_1", (lua_Integer)SSL_OP_NO_TLSv1_1},
  {"OP_NO_TLSv1_2", (lua_Integer)SSL_OP_NO_TLSv1_2},
  {"OP_NO_TLSv1_3", (lua_Integer)SSL_OP_NO_TLSv1_3},
  {"OP_IGNORE_UNEXPECTED_EOF", (lua_Integer)SSL_OP_IGNORE_UNEXPECTED_EOF},
  {"OP_ENABLE_MIDDLEBOX_COMPAT", (lua_Integer)SSL_OP_ENABLE_MIDDLEBOX_COMPAT},
  {"SSL_ERROR_SSL", SSL_ERROR_SSL},
  {"SSL_ERROR_WANT_READ", SSL_ERROR_WANT_READ},
  {"SSL_ERROR_WANT_WRITE", SSL_ERROR_WANT_WRITE},
  {"SSL_ERROR_SYSCALL", SSL_ERROR_SYSCALL},
  {"SSL_ERROR_ZERO_RETURN", SSL_ERROR_ZERO_RETURN},
  {"SSL_ERROR_EOF", 8},
  {"ALERT_DESCRIPTION_HANDSHAKE_FAILURE", SSL_AD_HANDSHAKE_FAILURE},
  {"ALERT_DESCRIPTION_INTERNAL_ERROR", SSL_AD_INTERNAL_ERROR},
  {"ALERT_DESCRIPTION_UNRECOGNIZED_NAME", SSL_AD_UNRECOGNIZED_NAME},
  {"ALERT_DESCRIPTION_ACCESS_DENIED", SSL_AD_ACCESS_DENIED},
  {"OPENSSL_VERSION_NUMBER", (lua_Integer)OPENSSL_VERSION_NUMBER},
  {NULL, 0},
};

static const struct {
  const char *name;
  int v;
} versions[] = {
  {"MINIMUM_SUPPORTED", -2},
  {"MAXIMUM_SUPPORTED", -1},
  {"TLSv1", TLS1_VERSION},
  {"TLSv1_1", TLS1_1_VERSION},
  {"TLSv1_2", TLS1_2_VERSION},
  {"TLSv1_3", TLS1_3_VERSION},
  {NULL, 0},
};

/* [-0, +1] pushes the module table. */
int luaopen_ssl__ssl(lua_State *L) {
  const char *why = ml__openssl_load();
  if (why != NULL) return luaL_error(L, "ssl: %s", why);
  luaL_requiref(L, "asyncio._transport", luaopen_asyncio__transport, 0);
  lua_pop(L, 1);
  if (ctx_index < 0) ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
  lua_newtable(L);
  luaL_setfuncs(L, ctx_methods, 0);
  lua_rawsetp(L, LUA_REGISTRYINDEX, (void *)ctx_methods);
  if (ml__udata_newmt(L, ML_UT_SSLCONTEXT, ML_SSLCONTEXT)) {
    lua_pushcfunction(L, ctx_index_mm);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, ctx_newindex_mm);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, ctx_gc);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, ctx_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  ml__tls_open(L);

  lua_newtable(L);
  lua_pushcfunction(L, ctx_new_l);
  lua_setfield(L, -2, "SSLContext");
  lua_rawgetp(L, LUA_REGISTRYINDEX, (void *)ctx_methods);
  lua_setfield(L, -2, "_methods"); /* ssl.lua adds the Lua-written ones */
  lua_pushcfunction(L, ml__tls_wrap);
  lua_setfield(L, -2, "_wrap");
  lua_pushcfunction(L, ml__tls_release);
  lua_setfield(L, -2, "_release");
  lua_pushcfunction(L, ml__tls_abort);
  lua_setfield(L, -2, "_abort");
  for (int i = 0; constants[i].name; i++) {
    lua_pushinteger(L, constants[i].v);
    lua_setfield(L, -2, constants[i].name);
  }
  lua_newtable(L);
  for (int i = 0; versions[i].name; i++) {
    lua_pushinteger(L, versions[i].v);
    lua_setfield(L, -2, versions[i].name);
  }
  lua_setfield(L, -2, "TLSVersion");
  lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
  lua_setfield(L, -2, "OPENSSL_VERSION");
  return 1;
}
