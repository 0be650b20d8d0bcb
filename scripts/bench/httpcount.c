/* httpcount.c: a bounded HTTP/1.1 keep-alive client, for instruction counts
 * (scripts/bench/callgrind_http.sh).
 * usage: httpcount HOST PORT CONNS REQUESTS [PATH]
 * CONNS connections to a loopback server, each sending REQUESTS GETs of
 * PATH one after the other (each after the whole previous response,
 * delimited by its Content-Length), as wrk -c CONNS does; exits 1 on a
 * non-200 answer, a close or 60 s of nothing. */
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

#include "loadconn.h"

#define MAX_CONNS 1000
#define RBUF 65536

typedef struct Conn {
  int fd, connected;
  long left;
  size_t sent, got;
  char buf[RBUF];
} Conn;

static char req[512];
static size_t reqlen;


static void do_send(Conn *c) {
  while (c->sent < reqlen) {
    ssize_t w = send(c->fd, req + c->sent, reqlen - c->sent, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      die("send", errno);
    }
    c->sent += (size_t)w;
  }
}

/* length of a complete response at the start of c->buf, or 0 */
static size_t complete(Conn *c) {
  char *end = memmem(c->buf, c->got, "\r\n\r\n", 4);
  if (!end) return 0;
  if (memcmp(c->buf, "HTTP/1.1 200", 12) != 0) {
    fprintf(stderr, "httpcount: not a 200: %.40s\n", c->buf);
    exit(1);
  }
  char *cl = memmem(c->buf, (size_t)(end - c->buf), "Content-Length: ", 16);
  size_t blen = cl ? strtoul(cl + 16, NULL, 10) : 0;
  size_t total = (size_t)(end - c->buf) + 4 + blen;
  return c->got >= total ? total : 0;
}

/* 1 when the connection is done */
static int do_recv(Conn *c) {
  for (;;) {
    ssize_t r = recv(c->fd, c->buf + c->got, RBUF - c->got, 0);
    if (r == 0) {
      fprintf(stderr, "httpcount: server closed a connection\n");
      exit(1);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return 0;
      die("recv", errno);
    }
    c->got += (size_t)r;
    size_t t;
    while ((t = complete(c)) != 0) {
      memmove(c->buf, c->buf + t, c->got - t);
      c->got -= t;
      if (--c->left == 0) return 1;
      c->sent = 0;
      do_send(c);
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: httpcount HOST PORT CONNS REQUESTS [PATH]\n");
    return 2;
  }
  int port = atoi(argv[2]), nconn = atoi(argv[3]);
  long count = atol(argv[4]);
  const char *path = argc > 5 ? argv[5] : "/";
  struct sockaddr_in sa;
  lc_name = "httpcount";
  lc_loopback(&sa, argv[1], port);
  if (port <= 0 || port > 65535 || nconn < 1 || nconn > MAX_CONNS || count < 1) return 2;
  reqlen = (size_t)snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n", path,
                            argv[1], port);
  signal(SIGPIPE, SIG_IGN);
  Conn *conns = calloc((size_t)nconn, sizeof *conns);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  for (int i = 0; i < nconn; i++) {
    Conn *c = &conns[i];
    c->left = count;
    c->fd = lc_connect(ep, &sa, EPOLLOUT | EPOLLIN, c);
  }
  int finished = 0;
  struct epoll_event evs[256];
  while (finished < nconn) {
    int n = lc_wait(ep, evs, 256, 60000);
    if (n == 0) {
      fprintf(stderr, "httpcount: nothing moved for 60 s\n");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      Conn *c = evs[i].data.ptr;
      if (!c->connected) {
        lc_connected(c->fd);
        c->connected = 1;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        do_send(c);
        continue;
      }
      if (c->left > 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
        int d = do_recv(c);
        finished += d;
        if (d) {
          struct epoll_event ev = {.events = 0, .data.ptr = c};
          epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
      }
    }
  }
  printf("RESULT httpcount %d %ld\n", nconn, (long)nconn * count);
  for (int i = 0; i < nconn; i++) close(conns[i].fd);
  return 0;
}
