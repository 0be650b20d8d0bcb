/* openssl.c: loads OpenSSL on first use (openssl.h says why): dlopen()
 * of libssl.so.3 and libcrypto.so.3, then every function of the two
 * lists looked up into ml__ossl.  The libraries stay loaded until the
 * process ends (OpenSSL cannot be unloaded safely).  libcurl, which the
 * HTTP client loads the same way, links the same two libraries, so a
 * process that uses both has one OpenSSL. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "ssl/openssl.h"

ml_Openssl ml__ossl;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[320];

/* Looks up the n functions named in names into fns; 0, or -1 with
 * load_error set naming the first one lib lacks. */
static int lookup(void *h, const char *lib, const char *const *names, void **fns, size_t n) {
  for (size_t i = 0; i < n; i++) {
    fns[i] = dlsym(h, names[i]);
    if (fns[i] == NULL) {
      snprintf(load_error, sizeof load_error, "cannot load OpenSSL: %s has no %s", lib, names[i]);
      return -1;
    }
  }
  return 0;
}

static void load(void) {
#define ML_OSSL_NAME(f) #f,
  static const char *const ssl_names[] = {ML_OSSL_SSL(ML_OSSL_NAME)};
  static const char *const crypto_names[] = {ML_OSSL_CRYPTO(ML_OSSL_NAME)};
#undef ML_OSSL_NAME
  void *fns[sizeof ssl_names / sizeof *ssl_names + sizeof crypto_names / sizeof *crypto_names];
  const size_t nssl = sizeof ssl_names / sizeof *ssl_names;
  const size_t ncrypto = sizeof crypto_names / sizeof *crypto_names;
  void *crypto = dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
  void *ssl = crypto ? dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL) : NULL;
  if (ssl == NULL) {
    snprintf(load_error, sizeof load_error, "cannot load OpenSSL (install libssl3): %s", dlerror());
    return;
  }
  if (lookup(ssl, "libssl.so.3", ssl_names, fns, nssl) < 0 ||
      lookup(crypto, "libcrypto.so.3", crypto_names, fns + nssl, ncrypto) < 0)
    return;
  /* The struct is the two lists' pointers in order, nothing else. */
  _Static_assert(sizeof ml__ossl == sizeof fns, "ml_Openssl is the two lists");
  memcpy(&ml__ossl, fns, sizeof fns);
}

const char *ml__openssl_load(void) {
  pthread_once(&load_once, load);
  return load_error[0] ? load_error : NULL;
}
