/* echocount.c: a bounded echo client, for instruction counts.
 *
 * usage: echocount HOST PORT CONNS SIZE MESSAGES
 *
 * Opens CONNS connections to an echo server on the loopback (any other
 * address is refused); on each one, MESSAGES times, sends a SIZE-byte
 * message and waits until the whole echo is back (checked byte for byte).
 * Then closes them all and prints
 *   RESULT echocount <conns> <messages in all>
 * Exits 1 if a connection fails, closes, or echoes the wrong bytes, or if
 * nothing moves for 60 s.  The work the server does is a fixed function of
 * the arguments, so two runs that differ only in MESSAGES differ by the
 * server's cost of CONNS * (difference) messages: scripts/bench/
 * callgrind_echo.sh uses it so.  (echoload counts for a time instead.) */
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
#define MAX_SIZE (1 << 20)
#define MAX_MESSAGES 10000000L

typedef struct Conn {
  int fd;
  int connected;
  long left;        /* messages still to send, the current one included */
  size_t sent, got; /* bytes of the current message sent / echoed */
  unsigned events;
} Conn;

static char *msg, *rbuf;
static size_t size;


static void arm(int ep, Conn *c, unsigned events) {
  if (events == c->events) return;
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl", errno);
  c->events = events;
}

static void pump_send(int ep, Conn *c) {
  while (c->sent < size) {
    ssize_t w = send(c->fd, msg + c->sent, size - c->sent, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      die("send", errno);
    }
    c->sent += (size_t)w;
  }
  arm(ep, c, EPOLLIN | (c->sent < size ? EPOLLOUT : 0));
}

/* Returns 1 when the connection has done all its messages. */
static int pump_recv(int ep, Conn *c) {
  for (;;) {
    ssize_t r = recv(c->fd, rbuf, size - c->got, 0);
    if (r == 0) {
      fprintf(stderr, "echocount: server closed a connection\n");
      exit(1);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      die("recv", errno);
    }
    if ((size_t)r + c->got > c->sent || memcmp(rbuf, msg + c->got, (size_t)r) != 0) {
      fprintf(stderr, "echocount: wrong bytes echoed\n");
      exit(1);
    }
    c->got += (size_t)r;
    if (c->got == size) {
      c->got = c->sent = 0;
      if (--c->left == 0) {
        arm(ep, c, 0);
        return 1;
      }
      pump_send(ep, c);
      return 0;
    }
  }
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s HOST PORT CONNS SIZE MESSAGES\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[2]), nconn = atoi(argv[3]);
  long sz = atol(argv[4]), count = atol(argv[5]);
  struct sockaddr_in sa;
  lc_name = "echocount";
  lc_loopback(&sa, argv[1], port);
  if (port <= 0 || port > 65535 || nconn < 1 || nconn > MAX_CONNS || sz < 1 || sz > MAX_SIZE ||
      count < 1 || count > MAX_MESSAGES) {
    fprintf(stderr, "echocount: out of bounds (conns 1..%d, size 1..%d, messages 1..%ld)\n",
            MAX_CONNS, MAX_SIZE, MAX_MESSAGES);
    return 2;
  }
  size = (size_t)sz;
  signal(SIGPIPE, SIG_IGN);
  msg = malloc(size);
  rbuf = malloc(size);
  Conn *conns = calloc((size_t)nconn, sizeof *conns);
  if (msg == NULL || rbuf == NULL || conns == NULL) die("malloc", ENOMEM);
  for (size_t i = 0; i < size; i++) msg[i] = (char)('a' + i % 26);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1", errno);
  for (int i = 0; i < nconn; i++) {
    Conn *c = &conns[i];
    c->left = count;
    c->fd = lc_connect(ep, &sa, EPOLLOUT, c);
    c->events = EPOLLOUT; /* writable = connected */
  }

  int finished = 0;
  struct epoll_event evs[256];
  while (finished < nconn) {
    int n = lc_wait(ep, evs, 256, 60000);
    if (n == 0) {
      fprintf(stderr, "echocount: nothing moved for 60 s (%d of %d connections done)\n", finished,
              nconn);
      return 1;
    }
    for (int i = 0; i < n; i++) {
      Conn *c = evs[i].data.ptr;
      if (!c->connected) {
        lc_connected(c->fd);
        c->connected = 1;
        pump_send(ep, c);
        continue;
      }
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) finished += pump_recv(ep, c);
      else if (evs[i].events & EPOLLOUT) pump_send(ep, c);
    }
  }
  printf("RESULT echocount %d %ld\n", nconn, (long)nconn * count);
  for (int i = 0; i < nconn; i++) close(conns[i].fd);
  free(conns);
  free(msg);
  free(rbuf);
  return 0;
}
