/* echo_epoll.c: the floor for the echo benchmarks: a minimal single-threaded
 * epoll TCP echo server in C.
 *
 * usage: echo_epoll PORT [HOST]      (HOST defaults to 127.0.0.1)
 *
 * Level-triggered epoll; each readable socket is read once per wake-up and
 * what was read is written straight back.  If the kernel takes only part
 * of it, the rest is kept and the socket waits for EPOLLOUT with reading
 * paused, so a client that does not read cannot make the server buffer
 * without bound.  Runs until killed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ 65536

typedef struct Conn {
  int fd;
  char *pending; /* bytes the kernel did not take yet, or NULL */
  size_t off, len;
} Conn;

static char buf[BUFSZ];

static void conn_close(int ep, Conn *c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->pending);
  free(c);
}

static int set_events(int ep, Conn *c, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Sends data[0..n); keeps what the kernel refused.  0, or -1 to close. */
static int send_or_keep(int ep, Conn *c, const char *data, size_t n) {
  while (n > 0) {
    ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
      break;
    }
    data += w;
    n -= (size_t)w;
  }
  if (n == 0) return 0;
  char *keep = malloc(n);
  if (keep == NULL) return -1;
  memcpy(keep, data, n);
  c->pending = keep;
  c->off = 0;
  c->len = n;
  return set_events(ep, c, EPOLLOUT);
}

static void on_readable(int ep, Conn *c) {
  ssize_t r = recv(c->fd, buf, sizeof buf, 0);
  if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
    conn_close(ep, c);
    return;
  }
  if (r > 0 && send_or_keep(ep, c, buf, (size_t)r) < 0) conn_close(ep, c);
}

static void on_writable(int ep, Conn *c) {
  while (c->off < c->len) {
    ssize_t w = send(c->fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      conn_close(ep, c);
      return;
    }
    c->off += (size_t)w;
  }
  free(c->pending);
  c->pending = NULL;
  if (set_events(ep, c, EPOLLIN) < 0) conn_close(ep, c);
}

static void on_accept(int ep, int lfd) {
  for (;;) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return; /* EAGAIN, or EMFILE and friends: try on the next wake-up */
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Conn *c = calloc(1, sizeof *c);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (c == NULL || (c->fd = fd, epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)) {
      free(c);
      close(fd);
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s PORT [HOST]\n", argv[0]);
    return 2;
  }
  const char *host = argc > 2 ? argv[2] : "127.0.0.1";
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
    fprintf(stderr, "echo_epoll: bad IPv4 address %s\n", host);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1024) < 0) {
    perror("echo_epoll: bind/listen");
    return 1;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
  struct epoll_event evs[256];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("echo_epoll: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      Conn *c = evs[i].data.ptr;
      if (c == NULL) on_accept(ep, lfd);
      else if (c->pending != NULL) on_writable(ep, c);
      else on_readable(ep, c);
    }
  }
}
