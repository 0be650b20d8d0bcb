/* sslobject.c: ssl.SSLObject, a view of a TLS transport: what
 * get_extra_info("ssl_object") returns and the servername callback is
 * given (version, cipher, getpeercert, selected_alpn_protocol, pending,
 * server_side, server_hostname, session_reused, a settable context), and
 * the certificate and cipher values that get_extra_info("peercert") and
 * ("cipher") return too.  The TLS layer itself is _tls.c. */
#include <string.h>
#include <arpa/inet.h>
#include <openssl/x509v3.h>
#include "ssl/ssl.h"

/* ---------------------------------------------------------------- */
/* SSLObject: a view of a TLS transport (user value 1).               */

typedef struct ml_SslObj {
  ml_Conn *c;
} ml_SslObj;

/* [-0, +1] pushes a new SSLObject over the transport at cidx; returns 1. */
int ml__tls_push_sslobject(lua_State *L, int cidx) {
  ml_SslObj *o;
  cidx = lua_absindex(L, cidx);
  o = lua_newuserdatauv(L, sizeof *o, 1);
  o->c = ml__conn_test(L, cidx);
  lua_pushvalue(L, cidx);
  lua_setiuservalue(L, -2, 1);
  ml__udata_setmt(L, ML_UT_SSLOBJECT);
  return 1;
}

/* [-0, +0] the live TLS state of the SSLObject at 1, or raises. */
static ml_Tls *obj_tls(lua_State *L) {
  ml_SslObj *o = ml__udata_check(L, 1, ML_UT_SSLOBJECT);
  ml_Tls *t = ml__tls_of(o->c);
  if (t == NULL || t->ssl == NULL) luaL_error(L, "the SSL object's connection is gone");
  return t;
}

/* Python's getpeercert(): subject and issuer as lists of RDNs, each a
 * list of {name, value}; subjectAltName as a list of {"DNS", name}.
 * Empty when the certificate was not verified; with binary, the DER.
 * [-0, +1] pushes name as a list of RDNs. */
static void push_name(lua_State *L, X509_NAME *name) {
  int n = X509_NAME_entry_count(name);
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
    ASN1_OBJECT *obj = X509_NAME_ENTRY_get_object(e);
    unsigned char *utf8 = NULL;
    int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(e));
    int nid = OBJ_obj2nid(obj);
    char buf[80];
    lua_createtable(L, 1, 0);
    lua_createtable(L, 2, 0);
    if (nid != NID_undef) lua_pushstring(L, OBJ_nid2ln(nid));
    else {
      OBJ_obj2txt(buf, sizeof buf, obj, 1);
      lua_pushstring(L, buf);
    }
    lua_rawseti(L, -2, 1);
    if (len >= 0) lua_pushlstring(L, (char *)utf8, (size_t)len);
    else lua_pushliteral(L, "");
    OPENSSL_free(utf8);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, 1);
    lua_rawseti(L, -2, i + 1);
  }
}

/* [-0, +1] pushes tm as text (nil if out of memory). */
static void push_time(lua_State *L, const ASN1_TIME *tm) {
  BIO *b = BIO_new(BIO_s_mem());
  char *p;
  long n;
  if (b == NULL) {
    lua_pushnil(L);
    return;
  }
  ASN1_TIME_print(b, tm);
  n = BIO_get_mem_data(b, &p);
  lua_pushlstring(L, p, (size_t)n);
  BIO_free(b);
}

/* [-0, +1] pushes the peer certificate (a table, or the DER string with
 * binary; nil if none); returns 1. */
int ml__tls_push_peercert(lua_State *L, ml_Tls *t, int binary) {
  X509 *cert = SSL_get1_peer_certificate(t->ssl);
  if (cert == NULL) {
    lua_pushnil(L);
    return 1;
  }
  if (binary) {
    unsigned char *der = NULL;
    int n = i2d_X509(cert, &der);
    if (n >= 0) lua_pushlstring(L, (char *)der, (size_t)n);
    else lua_pushnil(L);
    OPENSSL_free(der);
    X509_free(cert);
    return 1;
  }
  lua_newtable(L);
  if (SSL_get_verify_result(t->ssl) == X509_V_OK &&
      (SSL_get_verify_mode(t->ssl) & SSL_VERIFY_PEER)) {
    GENERAL_NAMES *sans;
    char *hex;
    push_name(L, X509_get_subject_name(cert));
    lua_setfield(L, -2, "subject");
    push_name(L, X509_get_issuer_name(cert));
    lua_setfield(L, -2, "issuer");
    lua_pushinteger(L, X509_get_version(cert) + 1);
    lua_setfield(L, -2, "version");
    {
      BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
      hex = bn ? BN_bn2hex(bn) : NULL;
      BN_free(bn);
    }
    if (hex) {
      lua_pushstring(L, hex);
      lua_setfield(L, -2, "serialNumber");
      OPENSSL_free(hex);
    }
    push_time(L, X509_get0_notBefore(cert));
    lua_setfield(L, -2, "notBefore");
    push_time(L, X509_get0_notAfter(cert));
    lua_setfield(L, -2, "notAfter");
    sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (sans) {
      int n = sk_GENERAL_NAME_num(sans), k = 0;
      lua_createtable(L, n, 0);
      for (int i = 0; i < n; i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type == GEN_DNS) {
          lua_createtable(L, 2, 0);
          lua_pushliteral(L, "DNS");
          lua_rawseti(L, -2, 1);
          lua_pushlstring(L, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                          (size_t)ASN1_STRING_length(g->d.dNSName));
          lua_rawseti(L, -2, 2);
          lua_rawseti(L, -2, ++k);
        } else if (g->type == GEN_IPADD) {
          char buf[64] = "";
          int len = ASN1_STRING_length(g->d.iPAddress);
          const unsigned char *a = ASN1_STRING_get0_data(g->d.iPAddress);
          if (len == 4) inet_ntop(AF_INET, a, buf, sizeof buf);
          else if (len == 16) inet_ntop(AF_INET6, a, buf, sizeof buf);
          lua_createtable(L, 2, 0);
          lua_pushliteral(L, "IP Address");
          lua_rawseti(L, -2, 1);
          lua_pushstring(L, buf);
          lua_rawseti(L, -2, 2);
          lua_rawseti(L, -2, ++k);
        }
      }
      GENERAL_NAMES_free(sans);
      lua_setfield(L, -2, "subjectAltName");
    }
  }
  X509_free(cert);
  return 1;
}

/* [-0, +1] pushes {name, version, bits}, or nil; returns 1. */
int ml__tls_push_cipher(lua_State *L, ml_Tls *t) {
  const SSL_CIPHER *ci = SSL_get_current_cipher(t->ssl);
  if (ci == NULL) {
    lua_pushnil(L);
    return 1;
  }
  lua_createtable(L, 3, 0);
  lua_pushstring(L, SSL_CIPHER_get_name(ci));
  lua_rawseti(L, -2, 1);
  lua_pushstring(L, SSL_CIPHER_get_version(ci));
  lua_rawseti(L, -2, 2);
  lua_pushinteger(L, SSL_CIPHER_get_bits(ci, NULL));
  lua_rawseti(L, -2, 3);
  return 1;
}

/* o:version() -> string | nil (before the handshake) */
static int obj_version(lua_State *L) {
  ml_Tls *t = obj_tls(L);
  if (!t->hs_done) lua_pushnil(L);
  else lua_pushstring(L, SSL_get_version(t->ssl));
  return 1;
}

/* o:cipher() -> {name, version, bits} | nil */
static int obj_cipher(lua_State *L) { return ml__tls_push_cipher(L, obj_tls(L)); }

/* o:getpeercert(binary) -> table | string | nil */
static int obj_getpeercert(lua_State *L) {
  ml_Tls *t = obj_tls(L);
  return ml__tls_push_peercert(L, t, lua_toboolean(L, 2));
}

/* o:selected_alpn_protocol() -> string | nil */
static int obj_selected_alpn_protocol(lua_State *L) {
  ml_Tls *t = obj_tls(L);
  const unsigned char *p;
  unsigned n;
  SSL_get0_alpn_selected(t->ssl, &p, &n);
  if (n == 0) lua_pushnil(L);
  else lua_pushlstring(L, (const char *)p, n);
  return 1;
}

/* o:compression() -> nil */
static int obj_compression(lua_State *L) {
  obj_tls(L);
  lua_pushnil(L);
  return 1;
}

/* o:pending() -> integer */
static int obj_pending(lua_State *L) {
  lua_pushinteger(L, SSL_pending(obj_tls(L)->ssl));
  return 1;
}

/* __index(o, key) -> value (fields, then the methods) */
static int obj_index(lua_State *L) {
  const char *k = luaL_checkstring(L, 2);
  ml_Tls *t = obj_tls(L);
  if (strcmp(k, "server_side") == 0) lua_pushboolean(L, t->server);
  else if (strcmp(k, "server_hostname") == 0) {
    if (t->host[0]) lua_pushstring(L, t->host);
    else lua_pushnil(L);
  } else if (strcmp(k, "session_reused") == 0) lua_pushboolean(L, SSL_session_reused(t->ssl));
  else if (strcmp(k, "context") == 0) {
    ml_SslObj *o = lua_touserdata(L, 1);
    lua_getiuservalue(L, 1, 1);
    lua_getiuservalue(L, -1, XUV_LAYER);
    lua_rawgeti(L, -1, LUV_CTX);
    (void)o;
  } else {
    luaL_getmetatable(L, ML_SSLOBJECT);
    lua_getfield(L, -1, "__methods");
    lua_getfield(L, -1, k);
  }
  return 1;
}

/* ssl_object.context = ctx: the servername callback switches the
 * connection to another context (its certificate).
 * __newindex(o, key, value) -> nothing */
static int obj_newindex(lua_State *L) {
  ml_Tls *t = obj_tls(L);
  const char *k = luaL_checkstring(L, 2);
  ml_SslCtx *x;
  if (strcmp(k, "context") != 0) return luaL_error(L, "'SSLObject' attribute '%s' is read-only", k);
  x = ml__sslctx_check(L, 3);
  SSL_set_SSL_CTX(t->ssl, x->ctx);
  SSL_set_verify(t->ssl, SSL_CTX_get_verify_mode(x->ctx), NULL);
  lua_getiuservalue(L, 1, 1);
  lua_getiuservalue(L, -1, XUV_LAYER);
  lua_pushvalue(L, 3);
  lua_rawseti(L, -2, LUV_CTX);
  return 0;
}

/* __tostring(o) -> string */
static int obj_tostring(lua_State *L) {
  ml_SslObj *o = ml__udata_check(L, 1, ML_UT_SSLOBJECT);
  lua_pushfstring(L, "<ssl.SSLObject %s>", ml__tls_of(o->c) ? "open" : "closed");
  return 1;
}

static const luaL_Reg obj_methods[] = {
  {"version", obj_version},
  {"cipher", obj_cipher},
  {"getpeercert", obj_getpeercert},
  {"selected_alpn_protocol", obj_selected_alpn_protocol},
  {"compression", obj_compression},
  {"pending", obj_pending},
  {NULL, NULL},
};

/* [-0, +0] registers the SSLObject metatable. */
void ml__tls_open(lua_State *L) {
  if (ml__udata_newmt(L, ML_UT_SSLOBJECT, ML_SSLOBJECT)) {
    lua_newtable(L);
    luaL_setfuncs(L, obj_methods, 0);
    lua_setfield(L, -2, "__methods");
    lua_pushcfunction(L, obj_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, obj_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, obj_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}
