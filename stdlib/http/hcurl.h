/* hcurl.h: what the two files of the HTTP client's engine (http._curl)
 * share: libcurl's functions (loaded by _curl.c), the Multi, Transfer and
 * socket records, and the few calls one file makes into the other.
 * _curl.c: loading libcurl, the buffers, curl's callbacks (sockets,
 * timers, headers, body) and the Multi object; _curl_xfer.c: a Transfer,
 * from its request spec to the methods a script waits and reads with. */
#ifndef ML_HCURL_H
#define ML_HCURL_H

#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "core/module.h"

#define MULTI_MT "http.Multi"
#define XFER_MT "http.Transfer"

/* Buffered body past which a transfer that is not read whole is paused. */
#define BODY_HIGH (256 * 1024)
/* A paused transfer resumes when its reader has left less than this. */
#define BODY_LOW (64 * 1024)

/* libcurl, loaded on first use (_curl.c's load_curl). */
typedef struct ml_CurlApi {
  CURLcode (*global_init)(long);
  CURL *(*easy_init)(void);
  void (*easy_cleanup)(CURL *);
  CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
  CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
  CURLcode (*easy_pause)(CURL *, int);
  const char *(*easy_strerror)(CURLcode);
  CURLM *(*multi_init)(void);
  CURLMcode (*multi_cleanup)(CURLM *);
  CURLMcode (*multi_setopt)(CURLM *, CURLMoption, ...);
  CURLMcode (*multi_add_handle)(CURLM *, CURL *);
  CURLMcode (*multi_remove_handle)(CURLM *, CURL *);
  CURLMcode (*multi_socket_action)(CURLM *, curl_socket_t, int, int *);
  CURLMcode (*multi_assign)(CURLM *, curl_socket_t, void *);
  CURLMsg *(*multi_info_read)(CURLM *, int *);
  const char *(*multi_strerror)(CURLMcode);
  struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
  void (*slist_free_all)(struct curl_slist *);
  curl_version_info_data *(*version_info)(CURLversion);
  CURLSH *(*share_init)(void);
  CURLSHcode (*share_setopt)(CURLSH *, CURLSHoption, ...);
  CURLSHcode (*share_cleanup)(CURLSH *);
} ml_CurlApi;
extern ml_CurlApi ml__curl;

/* ---------------------------------------------------------------- */
/* Objects.                                                           */

typedef struct Multi Multi;
typedef struct Xfer Xfer;

/* A socket curl asked us to watch (curl_multi_assign'ed to it). */
typedef struct Sock {
  ev_io io;
  Multi *m;
  int events; /* EV_READ | EV_WRITE that curl wants */
  struct Sock *next, **pprev;
} Sock;

struct Multi {
  CURLM *m; /* NULL once closed */
  ml_State *S;
  CURLSH *share; /* the cookie jar, or NULL */
  struct ev_loop *loop;
  ev_timer timer;
  Sock *socks;
  Xfer *xfers; /* transfers in the multi */
  int nactive;
};

/* A byte buffer from the state's allocator (counted against its cap). */
typedef struct Bytes {
  char *p;
  size_t off, len, cap;
} Bytes;

enum { XS_RUNNING, XS_DONE, XS_ABORTED };
enum { W_HEADERS, W_DATA, W_DONE };

struct Xfer {
  CURL *e;  /* NULL once released */
  Multi *m; /* while in the multi */
  struct curl_slist *hdrs;
  lua_Alloc af;
  void *aud;
  int ref;   /* anchors the userdata while curl holds it */
  int state; /* XS_* */
  int headers_done;
  int follow; /* a 3xx with Location is not the final response */
  int saw_location;
  int collect; /* read whole: never pause */
  int paused;
  int oom;
  unsigned pauses; /* how many times a slow reader paused it */
  size_t max_buffered;
  ml_Task *waiter;
  int wait_kind;
  CURLcode result;
  long os_errno;
  long status;
  long http_version;
  char *url;  /* effective URL (after redirects), allocated */
  Bytes head; /* the final response's header block */
  Bytes body; /* body received, not yet taken */
  char errbuf[CURL_ERROR_SIZE];
  Xfer *next, **pprev;
};

/* _curl.c: what the Transfer side calls (each described where it is
 * defined). */
size_t ml__curl_bytes_unread(const Bytes *b);
void ml__curl_bytes_free(Xfer *x, Bytes *b);
void ml__curl_multi_watch(Multi *m);
void ml__curl_xfer_release(lua_State *L, Xfer *x, int state);
size_t ml__curl_header_cb(char *buf, size_t size, size_t n, void *ud);
size_t ml__curl_write_cb(char *buf, size_t size, size_t n, void *ud);
Multi *ml__curl_check_multi(lua_State *L, int idx);

/* _curl_xfer.c: Multi:request(spec) -> Transfer, and the Transfer
 * metatable (registered by luaopen_http__curl).  [-0, +0] */
int ml__curl_request(lua_State *L);
void ml__curl_xfer_open(lua_State *L);

#endif
