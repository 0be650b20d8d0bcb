/* idleload.c: opens idle connections for the idle-connections benchmark.
 *
 * usage: idleload HOST PORT CONNS SECONDS
 *
 * Opens CONNS connections to a server on the loopback (any other address
 * is refused), sends nothing, and holds them until the server closes them
 * all (the benchmark's servers measure their memory once every connection
 * waits in readline, print it and exit) or SECONDS pass.  Exits 1 if a
 * connection fails or the time runs out.  Raise `ulimit -n` first. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 50000

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s HOST PORT CONNS SECONDS\n", argv[0]);
    return 2;
  }
  int port = atoi(argv[2]), n = atoi(argv[3]);
  double seconds = atof(argv[4]);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1 || (ntohl(sa.sin_addr.s_addr) >> 24) != 127) {
    fprintf(stderr, "idleload: %s is not an IPv4 loopback address\n", argv[1]);
    return 2;
  }
  if (port <= 0 || port > 65535 || n < 1 || n > MAX_CONNS || !(seconds > 0 && seconds <= 300)) {
    fprintf(stderr, "idleload: out of bounds (conns 1..%d, seconds 0..300)\n", MAX_CONNS);
    return 2;
  }
  int *fds = calloc((size_t)n, sizeof *fds);
  int ep = epoll_create1(EPOLL_CLOEXEC), open_ = 0, connected = 0;
  double end = now() + seconds;
  if (fds == NULL || ep < 0) return 1;
  /* Blocking connects, one at a time: the backlog never overflows. */
  for (int i = 0; i < n; i++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      fprintf(stderr, "idleload: socket: %s (ulimit -n?)\n", strerror(errno));
      return 1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
      fprintf(stderr, "idleload: connect %d: %s\n", i, strerror(errno));
      return 1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    fds[i] = fd;
    open_++;
    connected++;
    if (now() > end) {
      fprintf(stderr, "idleload: only %d connected in time\n", connected);
      return 1;
    }
  }
  /* Hold them until the server closes them. */
  struct epoll_event evs[256];
  char buf[256];
  while (open_ > 0) {
    int ms = (int)((end - now()) * 1000);
    if (ms <= 0) {
      fprintf(stderr, "idleload: %d still open at the deadline\n", open_);
      return 1;
    }
    int k = epoll_wait(ep, evs, 256, ms < 1000 ? ms : 1000);
    for (int i = 0; i < k; i++) {
      ssize_t r = recv(evs[i].data.fd, buf, sizeof buf, MSG_DONTWAIT);
      if (r <= 0 && !(r < 0 && errno == EAGAIN)) {
        epoll_ctl(ep, EPOLL_CTL_DEL, evs[i].data.fd, NULL);
        close(evs[i].data.fd);
        open_--;
      }
    }
  }
  fprintf(stderr, "idleload: %d connections held until the server closed them\n", connected);
  return 0;
}
