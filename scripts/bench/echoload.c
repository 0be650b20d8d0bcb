/* echoload.c: closed-loop load client for the echo benchmarks.
 *
 * usage: echoload HOST PORT CONNS SIZE SECONDS [WARMUP]
 *
 * Opens CONNS connections to an echo server on the loopback (any other
 * address is refused), then on each one sends a SIZE-byte message, waits
 * until the whole echo is back (and checks it byte for byte), and sends
 * the next.  Messages completed during the first WARMUP seconds (default
 * 0.5) are not counted; then it counts for SECONDS and stops.  Prints
 *   RESULT echo <seconds> <messages>
 *   LATENCY <p50> <p99> <p99.9> <messages>
 * on stdout (latency: microseconds from a message's first byte sent to
 * its last byte echoed, counted messages only, 1 us buckets up to 200 ms)
 * and a readable summary on stderr.  Exits 1 if a connection
 * fails, closes, or echoes the wrong bytes.
 *
 * One thread and one epoll set, so it needs one core: the harness pins it
 * to a core of its own, away from the server. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loadconn.h"

#define MAX_CONNS 1000
#define MAX_SIZE (1 << 20)
#define MAX_SECONDS 120.0

typedef struct Conn {
  int fd;
  int connected;
  uint32_t events;  /* what epoll watches for now */
  size_t sent, got; /* bytes of the current message sent / echoed */
  double t_sent;    /* when the current message's first byte went */
} Conn;

/* Latency histogram: 1 us buckets, the last one for everything slower. */
#define LAT_BUCKETS 200000
static uint32_t lat_hist[LAT_BUCKETS];
static int counting; /* inside the measured window */

static char *msg, *rbuf;
static size_t size;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}


/* Watches c for events, with a system call only when they change. */
static void arm(int ep, Conn *c, uint32_t events) {
  if (events == c->events) return;
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl", errno);
  c->events = events;
}

/* Sends as much of the current message as the kernel takes; watches for
 * EPOLLOUT only while it pushes back. */
static void pump_send(int ep, Conn *c) {
  if (c->sent == 0) c->t_sent = now();
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

/* Reads what has come back; returns the number of messages completed. */
static int pump_recv(int ep, Conn *c) {
  int done = 0;
  for (;;) {
    ssize_t r = recv(c->fd, rbuf, size - c->got, 0);
    if (r == 0) {
      fprintf(stderr, "echoload: server closed a connection\n");
      exit(1);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return done;
      die("recv", errno);
    }
    if ((size_t)r + c->got > c->sent || memcmp(rbuf, msg + c->got, (size_t)r) != 0) {
      fprintf(stderr, "echoload: wrong bytes echoed\n");
      exit(1);
    }
    c->got += (size_t)r;
    if (c->got == size) {
      if (counting) {
        double us = (now() - c->t_sent) * 1e6;
        long b = us < 0 ? 0 : (long)us;
        lat_hist[b < LAT_BUCKETS ? b : LAT_BUCKETS - 1]++;
      }
      done++;
      c->got = c->sent = 0;
      pump_send(ep, c);
      return done; /* the echo cannot be back yet: wait for epoll */
    }
  }
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: %s HOST PORT CONNS SIZE SECONDS [WARMUP]\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[2]), nconn = atoi(argv[3]);
  long sz = atol(argv[4]);
  double seconds = atof(argv[5]), warmup = argc > 6 ? atof(argv[6]) : 0.5;
  struct sockaddr_in sa;
  lc_name = "echoload";
  lc_loopback(&sa, argv[1], port);
  if (port <= 0 || port > 65535 || nconn < 1 || nconn > MAX_CONNS || sz < 1 || sz > MAX_SIZE ||
      !(seconds > 0 && seconds <= MAX_SECONDS) || !(warmup >= 0 && warmup <= MAX_SECONDS)) {
    fprintf(stderr,
            "echoload: out of bounds (conns 1..%d, size 1..%d, "
            "seconds 0..%g)\n",
            MAX_CONNS, MAX_SIZE, MAX_SECONDS);
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
    c->fd = lc_connect(ep, &sa, EPOLLOUT, c);
    c->events = EPOLLOUT; /* writable = connected */
  }

  /* Connections start sending as soon as each is connected; the clock
   * starts at once and the warm-up covers the connection phase. */
  double t0 = now(), start = t0 + warmup, end = start + seconds;
  double connect_deadline = t0 + 5.0;
  long counted = 0;
  int nconnected = 0;
  struct epoll_event evs[256];
  for (;;) {
    double t = now();
    if (t >= end) break;
    counting = t >= start;
    if (nconnected < nconn && t > connect_deadline) {
      fprintf(stderr, "echoload: only %d of %d connections made in 5 s\n", nconnected, nconn);
      return 1;
    }
    int ms = (int)((end - t) * 1000) + 1;
    int n = lc_wait(ep, evs, 256, ms < 100 ? ms : 100);
    int done = 0;
    for (int i = 0; i < n; i++) {
      Conn *c = evs[i].data.ptr;
      if (!c->connected) {
        lc_connected(c->fd);
        c->connected = 1;
        nconnected++;
        pump_send(ep, c);
        continue;
      }
      if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) done += pump_recv(ep, c);
      else if (evs[i].events & EPOLLOUT) pump_send(ep, c);
    }
    if (done > 0 && now() >= start) counted += done;
  }
  printf("RESULT echo %.6f %ld\n", seconds, counted);
  {
    /* Percentiles from the histogram: the bucket holding the rank. */
    const double q[3] = {0.50, 0.99, 0.999};
    long total = 0, acc = 0, p[3] = {0, 0, 0};
    int k = 0;
    for (long b = 0; b < LAT_BUCKETS; b++) total += lat_hist[b];
    for (long b = 0; b < LAT_BUCKETS && k < 3; b++) {
      acc += lat_hist[b];
      while (k < 3 && total > 0 && acc >= (long)(q[k] * (double)total + 0.5)) p[k++] = b;
    }
    printf("LATENCY %ld %ld %ld %ld\n", p[0], p[1], p[2], total);
  }
  fprintf(stderr, "echoload: %d conns, %zu-byte messages: %ld in %.2f s = %.0f msg/s\n", nconn,
          size, counted, seconds, (double)counted / seconds);
  for (int i = 0; i < nconn; i++) close(conns[i].fd);
  free(conns);
  free(msg);
  free(rbuf);
  return 0;
}
