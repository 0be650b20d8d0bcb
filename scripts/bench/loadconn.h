/* loadconn.h: what the bounded load clients (echocount.c, echoload.c,
 * httpcount.c) share: the loopback address check, a connection being
 * made under epoll, its end, and epoll_wait retried on EINTR.  Each
 * client sets lc_name (its name in messages) first.  Header-only: each
 * client is one file, built by the bench scripts with cc alone. */
#ifndef LOADCONN_H
#define LOADCONN_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

static const char *lc_name = "loadclient";

static void die(const char *what, int err) {
  fprintf(stderr, "%s: %s: %s\n", lc_name, what, strerror(err));
  exit(1);
}

/* sa := host:port, host an IPv4 loopback address ("localhost" is
 * 127.0.0.1: all load stays on this machine); exits 2 saying why if not. */
static void lc_loopback(struct sockaddr_in *sa, const char *host, int port) {
  const char *ip = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, ip, &sa->sin_addr) != 1 || (ntohl(sa->sin_addr.s_addr) >> 24) != 127) {
    fprintf(stderr, "%s: %s is not an IPv4 loopback address\n", lc_name, host);
    exit(2);
  }
}

/* A non-blocking TCP_NODELAY connection to sa, being made, watched by ep
 * for events with ptr (EPOLLOUT tells it is made: lc_connected); returns
 * its fd.  Dies on failure. */
static int lc_connect(int ep, const struct sockaddr_in *sa, uint32_t events, void *ptr) {
  int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket", errno);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0 && errno != EINPROGRESS)
    die("connect", errno);
  struct epoll_event ev = {.events = events, .data.ptr = ptr};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl", errno);
  return fd;
}

/* The connection being made at fd is writable: dies if connecting failed. */
static void lc_connected(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) die("connect", err);
}

/* epoll_wait, retried on EINTR; dies on another failure. */
static int lc_wait(int ep, struct epoll_event *evs, int max, int ms) {
  for (;;) {
    int n = epoll_wait(ep, evs, max, ms);
    if (n >= 0) return n;
    if (errno != EINTR) die("epoll_wait", errno);
  }
}

#endif
