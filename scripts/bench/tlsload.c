/* tlsload.c: the load client of the TLS benchmarks: one TLS client for
 * every server (moonloop, uvloop, Node, openssl s_server), so that the
 * servers are what differs.  Blocking OpenSSL in threads (one connection
 * per thread), no certificate verification (the certificates are made at
 * bench time), no session tickets and no session cache: every connection
 * is a full handshake.
 *
 * usage: tlsload hs   HOST PORT SECONDS THREADS    handshakes/s
 *        tlsload echo HOST PORT CONNS SIZE SECONDS   messages/s
 *        tlsload bulk HOST PORT BYTES                read BYTES to EOF
 *
 * Prints RESULT <name> <seconds> <ops> (bulk: ops in MiB).  Refuses any
 * address outside 127.0.0.0/8 and bounds its arguments; exits 1 if a
 * connection fails or echoes wrong bytes. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_CTX *ctx;
static struct sockaddr_in addr;
static atomic_long count;
static atomic_int stop;
static int size;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what) {
  fprintf(stderr, "tlsload: %s\n", what);
  ERR_print_errors_fp(stderr);
  exit(1);
}

/* A connected, handshaken TLS client, or exits. */
static SSL *connect_tls(int *fdp) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  SSL *s;
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect failed");
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if ((s = SSL_new(ctx)) == NULL) die("SSL_new");
  SSL_set_fd(s, fd);
  if (SSL_connect(s) != 1) die("handshake failed");
  *fdp = fd;
  return s;
}

static void *hs_thread(void *arg) {
  (void)arg;
  while (!atomic_load(&stop)) {
    int fd;
    SSL *s = connect_tls(&fd);
    SSL_shutdown(s);
    SSL_free(s);
    close(fd);
    atomic_fetch_add(&count, 1);
  }
  return NULL;
}

static void *echo_thread(void *arg) {
  int fd;
  SSL *s = connect_tls(&fd);
  char *out = malloc((size_t)size), *in = malloc((size_t)size);
  (void)arg;
  if (!out || !in) die("out of memory");
  memset(out, 'm', (size_t)size);
  while (!atomic_load(&stop)) {
    int got = 0;
    if (SSL_write(s, out, size) != size) die("write failed");
    while (got < size) {
      int r = SSL_read(s, in + got, size - got);
      if (r <= 0) die("the server closed");
      got += r;
    }
    if (memcmp(in, out, (size_t)size) != 0) die("wrong bytes echoed");
    atomic_fetch_add(&count, 1);
  }
  return NULL;
}

/* Runs n threads of fn; counts what they do for secs after a warm-up. */
static void timed(const char *name, void *(*fn)(void *), int n, double secs) {
  pthread_t th;
  long c0, c1;
  double t0, t1;
  for (int i = 0; i < n; i++)
    if (pthread_create(&th, NULL, fn, NULL) != 0) die("pthread_create");
  usleep(500000);
  c0 = atomic_load(&count);
  t0 = now();
  usleep((useconds_t)(secs * 1e6));
  c1 = atomic_load(&count);
  t1 = now();
  atomic_store(&stop, 1);
  printf("RESULT %s %.6f %ld\n", name, t1 - t0, c1 - c0);
  fflush(stdout);
  _exit(0); /* the threads may be blocked in a read */
}

int main(int argc, char **argv) {
  if (argc < 5) goto usage;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1 ||
      (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
    fprintf(stderr, "tlsload: only 127.0.0.0/8 addresses\n");
    return 2;
  }
  if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL) die("SSL_CTX_new");
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (strcmp(argv[1], "hs") == 0 && argc == 6) {
    double secs = atof(argv[4]);
    int n = atoi(argv[5]);
    if (secs <= 0 || secs > 120 || n < 1 || n > 64) goto usage;
    timed("tls_handshake", hs_thread, n, secs);
  } else if (strcmp(argv[1], "echo") == 0 && argc == 7) {
    int n = atoi(argv[4]);
    double secs = atof(argv[6]);
    size = atoi(argv[5]);
    if (n < 1 || n > 1000 || size < 1 || size > (1 << 20) || secs <= 0 || secs > 120) goto usage;
    timed("tls_echo", echo_thread, n, secs);
  } else if (strcmp(argv[1], "bulk") == 0 && argc == 5) {
    long long want = atoll(argv[4]), got = 0;
    static char buf[1 << 18];
    double t0;
    int fd, r;
    SSL *s;
    if (want < 1 || want > (1LL << 34)) goto usage;
    s = connect_tls(&fd);
    t0 = now();
    while ((r = SSL_read(s, buf, sizeof buf)) > 0) got += r;
    if (got != want) {
      fprintf(stderr, "tlsload: read %lld bytes, wanted %lld\n", got, want);
      return 1;
    }
    printf("RESULT tls_bulk %.6f %.3f\n", now() - t0, (double)want / 1048576.0);
    return 0;
  }
usage:
  fprintf(stderr,
          "usage: tlsload hs HOST PORT SECONDS THREADS | echo HOST PORT CONNS SIZE SECONDS | "
          "bulk HOST PORT BYTES\n");
  return 2;
}
