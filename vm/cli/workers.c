/* workers.c: `moonloop --workers N script.lua`, a supervisor that runs N
 * worker processes of the script on every core, and the worker's side of
 * the protocol between them.  docs/deployment.md is the user's guide.
 *
 * The supervisor is plain libc: no Lua state, no libev (a forked loop is
 * trouble, and it needs neither).  It binds the --listen addresses itself
 * and every worker, of every generation, inherits those listening sockets:
 * one accept queue that is never closed while the service runs, so a
 * rolling restart (SIGHUP) refuses no connection.  A worker is started by
 * fork + exec of this binary (a fresh image, which rereads the script),
 * with its id, the inherited fds and two pipes named in the environment:
 *
 *   MOONLOOP_WORKER_ID, MOONLOOP_WORKER_COUNT   0 <= id < count
 *   MOONLOOP_WORKER_PID    the worker's pid: a child of the worker, which
 *                          inherits the environment, is not a worker
 *   MOONLOOP_LISTEN_FDS    k: the listening sockets are fds 3 .. 3+k-1
 *   MOONLOOP_READY_FD      the worker writes "READY\n" there when its
 *                          first server listens (asyncio.worker_ready)
 *   MOONLOOP_LIFELINE_FD   a pipe whose write end only the supervisor
 *                          holds: end of file means it is gone
 *   MOONLOOP_GRACE         the grace period, in seconds
 *
 * The worker reads and removes them at start-up (ml__worker_env).  Its
 * parent-death signal is SIGTERM, so a worker whose supervisor was killed
 * stops gracefully; and when the lifeline reads end of file it arms
 * alarm(grace + 1), so it ends even if the script ignores SIGTERM.
 *
 * Everything the supervisor waits for is a file descriptor: the signals
 * (a signalfd: SIGCHLD, SIGTERM, SIGINT, SIGHUP), each worker's ready
 * pipe and, when stdout is a terminal, its output pipes (lines prefixed
 * "[worker N] ").  One poll() loop, with the nearest deadline (a restart
 * after back-off, a readiness timeout, a grace period) as its timeout. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include "cli.h"

#define MAX_LISTEN 64
#define OUTBUF 4096
#define BACKOFF_FIRST 0.1 /* seconds before the first restart of a slot */
#define BACKOFF_MAX 10.0
#define STABLE_AFTER 10.0 /* a worker that lived this long resets its slot's back-off */

typedef struct Out {
  int fd; /* read end of the worker's stdout or stderr pipe, or -1 */
  int to; /* 1 or 2: where its lines go */
  size_t len;
  char buf[OUTBUF];
} Out;

typedef struct Proc {
  struct Proc *next;
  pid_t pid;
  int slot;
  int ready_fd; /* read end of the ready pipe, or -1 */
  int ready;    /* it said READY */
  int boot;     /* one of the first start: failing is fatal */
  int term_sent, kill_sent;
  double started, ready_by, kill_at;
  Out out[2];
} Proc;

static struct {
  const ml_Supervise *o;
  int nlisten, listen[MAX_LISTEN];
  int lifeline[2]; /* [0] given to workers, [1] held here only */
  int sigfd;
  sigset_t oldmask;
  int prefix; /* stdout is a terminal: prefix worker lines */
  pid_t self;
  char exe[4096]; /* this binary, read once: the workers' comm is "moonloop", not "exe" */
  Proc *procs;
  Proc **cur;         /* per slot: the worker serving, or NULL */
  double *restart_at; /* per slot: 0, or when to start it again */
  int *fails;         /* per slot: quick deaths in a row */
  int reload_slot;    /* -1, or the slot being replaced */
  Proc *reload_new;   /* the replacement starting for it */
  int reload_again;   /* a SIGHUP came during a reload */
  int stopping, fatal, unclean;
} G;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void say(const char *fmt, ...) {
  char line[1024];
  va_list ap;
  int n = snprintf(line, sizeof line, "moonloop: ");
  va_start(ap, fmt);
  n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  ssize_t r = write(2, line, (size_t)n);
  (void)r;
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return; /* a closed terminal: the lines are lost, the service goes on */
    p += r;
    n -= (size_t)r;
  }
}

/* ---- durations and addresses ---- */

double ml__parse_duration(const char *s) {
  char *end;
  double v;
  errno = 0;
  v = strtod(s, &end);
  if (end == s || errno || !(v >= 0) || isinf(v)) return -1;
  if (*end == 0 || strcmp(end, "s") == 0) return v;
  if (strcmp(end, "ms") == 0) return v / 1000;
  if (strcmp(end, "m") == 0) return v * 60;
  if (strcmp(end, "h") == 0) return v * 3600;
  return -1;
}

int ml__cpu_count(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

/* Binds and listens on spec: "PORT", "HOST:PORT", "[V6]:PORT" (every
 * address HOST resolves to; every interface without a host) or a Unix
 * socket path (anything with a '/').  Returns 0, or -1 with the reason
 * printed. */
static int listen_on(const char *spec) {
  char host[256] = "", port[32];
  const char *colon;
  if (strchr(spec, '/')) {
    struct sockaddr_un sun;
    int fd;
    if (strlen(spec) >= sizeof sun.sun_path) {
      say("--listen %s: the path is too long", spec);
      return -1;
    }
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    strcpy(sun.sun_path, spec);
    unlink(spec); /* a stale socket of an earlier run; a worker never unlinks it */
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(fd, SOMAXCONN) < 0) {
      say("--listen %s: %s", spec, strerror(errno));
      if (fd >= 0) close(fd);
      return -1;
    }
    if (G.nlisten == MAX_LISTEN) {
      say("--listen: more than %d sockets", MAX_LISTEN);
      close(fd);
      return -1;
    }
    G.listen[G.nlisten++] = fd;
    return 0;
  }
  if (spec[0] == '[') {
    const char *rb = strchr(spec, ']');
    if (!rb || rb[1] != ':' || (size_t)(rb - spec - 1) >= sizeof host) goto bad;
    memcpy(host, spec + 1, (size_t)(rb - spec - 1));
    host[rb - spec - 1] = 0;
    colon = rb + 1;
  } else if ((colon = strrchr(spec, ':')) != NULL) {
    if ((size_t)(colon - spec) >= sizeof host) goto bad;
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
  } else {
    colon = spec - 1;
  }
  if (strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof port) goto bad;
  strcpy(port, colon + 1);
  for (const char *p = port; *p; p++)
    if (*p < '0' || *p > '9') goto bad;
  {
    struct addrinfo hints, *res, *ai;
    int rc, n = 0;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    if ((rc = getaddrinfo(*host ? host : NULL, port, &hints, &res)) != 0) {
      say("--listen %s: %s", spec, gai_strerror(rc));
      return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
      int one = 1, fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) continue; /* an address family the kernel lacks, as start_server skips it */
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
      if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
        char h[NI_MAXHOST] = "?";
        int e = errno;
        getnameinfo(ai->ai_addr, ai->ai_addrlen, h, sizeof h, NULL, 0, NI_NUMERICHOST);
        say("--listen %s: cannot listen on %s port %s: %s", spec, h, port, strerror(e));
        close(fd);
        freeaddrinfo(res);
        return -1;
      }
      if (G.nlisten == MAX_LISTEN) {
        say("--listen: more than %d sockets", MAX_LISTEN);
        close(fd);
        break;
      }
      G.listen[G.nlisten++] = fd;
      n++;
    }
    freeaddrinfo(res);
    if (n == 0) {
      say("--listen %s: no address to listen on", spec);
      return -1;
    }
    return 0;
  }
bad:
  say("--listen %s: expected PORT, HOST:PORT, [IPV6]:PORT or a socket path", spec);
  return -1;
}

/* Takes over the sockets systemd passed (socket activation: LISTEN_PID is
 * us, LISTEN_FDS of them from fd 3), as if given with --listen. */
static void take_systemd_sockets(void) {
  const char *pid = getenv("LISTEN_PID"), *nfds = getenv("LISTEN_FDS");
  if (!pid || !nfds || atol(pid) != (long)getpid()) return;
  int n = atoi(nfds);
  for (int i = 0; i < n && G.nlisten < MAX_LISTEN; i++) {
    int v = 0;
    socklen_t len = sizeof v;
    if (getsockopt(3 + i, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0 || !v) {
      say("LISTEN_FDS: fd %d is not a listening socket; ignored", 3 + i);
      continue;
    }
    /* Moved out of 3.. so that the workers' fds can go there. */
    int fd = fcntl(3 + i, F_DUPFD_CLOEXEC, 3 + MAX_LISTEN + 3);
    if (fd < 0) continue;
    close(3 + i);
    G.listen[G.nlisten++] = fd;
  }
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
}

/* ---- workers ---- */

static const char *signame(int sig, char *buf, size_t len) {
  const char *a = sigabbrev_np(sig);
  if (a) snprintf(buf, len, "SIG%s", a);
  else snprintf(buf, len, "signal %d", sig);
  return buf;
}

/* "exited with status 1", "was killed by SIGKILL": why a worker ended. */
static const char *describe(int status, char *buf, size_t len) {
  char s[32];
  if (WIFEXITED(status)) snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
  else if (WIFSIGNALED(status))
    snprintf(buf, len, "was killed by %s%s", signame(WTERMSIG(status), s, sizeof s),
             WCOREDUMP(status) ? " (core dumped)" : "");
  else snprintf(buf, len, "ended (status %#x)", status);
  return buf;
}

static int nprocs(void) {
  int n = 0;
  for (Proc *p = G.procs; p; p = p->next) n++;
  return n;
}

static void setenv_int(const char *name, long v) {
  char b[32];
  snprintf(b, sizeof b, "%ld", v);
  setenv(name, b, 1);
}

/* In the child, between fork and exec: only what is safe there (the
 * supervisor has one thread, so libc's environment and malloc are). */
static void child(int slot, int ready_wr, int out_wr, int err_wr) {
  int k = G.nlisten, tmp[MAX_LISTEN + 4], src[MAX_LISTEN + 4], dst[MAX_LISTEN + 4], n = 0;
  char grace[32];
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != G.self) _exit(1); /* the supervisor died before prctl */
  for (int i = 0; i < k; i++) {
    src[n] = G.listen[i];
    dst[n++] = 3 + i;
  }
  src[n] = ready_wr;
  dst[n++] = 3 + k;
  src[n] = G.lifeline[0];
  dst[n++] = 4 + k;
  if (out_wr >= 0) {
    src[n] = out_wr;
    dst[n++] = 1;
  }
  if (err_wr >= 0) {
    src[n] = err_wr;
    dst[n++] = 2;
  }
  /* Every source first moves above every target, so no dup2 below
   * closes a source that is still to be moved. */
  for (int i = 0; i < n; i++)
    if ((tmp[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 5 + k)) < 0) _exit(127);
  for (int i = 0; i < n; i++)
    if (dup2(tmp[i], dst[i]) < 0) _exit(127); /* dup2 clears close-on-exec */
  setenv_int("MOONLOOP_WORKER_ID", slot);
  setenv_int("MOONLOOP_WORKER_COUNT", G.o->workers);
  setenv_int("MOONLOOP_WORKER_PID", (long)getpid());
  setenv_int("MOONLOOP_LISTEN_FDS", k);
  setenv_int("MOONLOOP_READY_FD", 3 + k);
  setenv_int("MOONLOOP_LIFELINE_FD", 4 + k);
  snprintf(grace, sizeof grace, "%g", G.o->grace);
  setenv("MOONLOOP_GRACE", grace, 1);
  signal(SIGPIPE, SIG_DFL);
  sigprocmask(SIG_SETMASK, &G.oldmask, NULL);
  execv(G.exe, G.o->argv);
  {
    char m[256];
    int len = snprintf(m, sizeof m, "moonloop: worker %d: cannot run %s: %s\n", slot, G.exe,
                       strerror(errno));
    ssize_t r = write(2, m, (size_t)len);
    (void)r;
  }
  _exit(127);
}

/* Starts a worker for slot.  Returns it (in G.procs), or NULL. */
static Proc *spawn(int slot, int boot) {
  int rp[2], op[2] = {-1, -1}, ep[2] = {-1, -1};
  Proc *p = calloc(1, sizeof *p);
  if (p == NULL) {
    say("worker %d: out of memory", slot);
    return NULL;
  }
  if (pipe2(rp, O_CLOEXEC) < 0) goto fail;
  if (G.prefix && (pipe2(op, O_CLOEXEC) < 0 || pipe2(ep, O_CLOEXEC) < 0)) {
    close(rp[0]);
    close(rp[1]);
    if (op[0] >= 0) {
      close(op[0]);
      close(op[1]);
    }
    goto fail;
  }
  fflush(NULL);
  p->pid = fork();
  if (p->pid < 0) {
    close(rp[0]);
    close(rp[1]);
    if (op[0] >= 0) {
      close(op[0]);
      close(op[1]);
      close(ep[0]);
      close(ep[1]);
    }
    goto fail;
  }
  if (p->pid == 0) child(slot, rp[1], op[1], ep[1]);
  close(rp[1]);
  if (op[1] >= 0) {
    close(op[1]);
    close(ep[1]);
  }
  p->slot = slot;
  p->boot = boot;
  p->ready_fd = rp[0];
  p->started = now();
  p->ready_by = G.o->ready_timeout > 0 ? p->started + G.o->ready_timeout : 0;
  p->out[0].fd = op[0];
  p->out[0].to = 1;
  p->out[1].fd = ep[0];
  p->out[1].to = 2;
  for (int i = 0; i < 2; i++)
    if (p->out[i].fd >= 0) fcntl(p->out[i].fd, F_SETFL, O_NONBLOCK);
  p->next = G.procs;
  G.procs = p;
  return p;
fail:
  say("worker %d: cannot start: %s", slot, strerror(errno));
  free(p);
  return NULL;
}

/* Writes the complete lines of o (all of it with flush), prefixed. */
static void emit(Proc *p, Out *o, int flush) {
  char pre[32];
  int plen = snprintf(pre, sizeof pre, "[worker %d] ", p->slot);
  size_t start = 0;
  for (size_t i = 0; i < o->len; i++) {
    if (o->buf[i] != '\n') continue;
    write_all(o->to, pre, (size_t)plen);
    write_all(o->to, o->buf + start, i + 1 - start);
    start = i + 1;
  }
  if (start < o->len && (flush || (start == 0 && o->len == OUTBUF))) {
    write_all(o->to, pre, (size_t)plen);
    write_all(o->to, o->buf + start, o->len - start);
    write_all(o->to, "\n", 1);
    start = o->len;
  }
  memmove(o->buf, o->buf + start, o->len - start);
  o->len -= start;
}

/* Reads what o's pipe has; at end of file flushes and closes it. */
static void pump(Proc *p, Out *o) {
  for (;;) {
    ssize_t r = read(o->fd, o->buf + o->len, OUTBUF - o->len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      if (errno == EAGAIN) emit(p, o, 0);
      else goto eof;
      return;
    }
    if (r == 0) goto eof;
    o->len += (size_t)r;
    emit(p, o, 0);
  }
eof:
  emit(p, o, 1);
  close(o->fd);
  o->fd = -1;
}

static void stop_proc(Proc *p, double t) {
  if (p->term_sent) return;
  p->term_sent = 1;
  p->kill_at = t + G.o->grace;
  kill(p->pid, SIGTERM);
}

static void stop_all(const char *why) {
  double t = now();
  int n = nprocs();
  if (!G.stopping)
    say("%s: stopping %d worker%s (grace %g s)", why, n, n == 1 ? "" : "s", G.o->grace);
  G.stopping = 1;
  G.reload_slot = -1;
  G.reload_new = NULL;
  for (Proc *p = G.procs; p; p = p->next) stop_proc(p, t);
}

static void reload_next(void);

static void reload_start(void) {
  say("SIGHUP: replacing %d worker%s one at a time", G.o->workers, G.o->workers == 1 ? "" : "s");
  G.reload_slot = 0;
  reload_next();
}

/* Starts the replacement of the next slot, or ends the reload. */
static void reload_next(void) {
  if (G.reload_slot >= G.o->workers) {
    say("reload done: %d worker%s replaced", G.o->workers, G.o->workers == 1 ? "" : "s");
    G.reload_slot = -1;
    if (G.reload_again) {
      G.reload_again = 0;
      reload_start();
    }
    return;
  }
  G.reload_new = spawn(G.reload_slot, 0);
  if (G.reload_new == NULL) {
    say("reload stopped: the old workers keep serving");
    G.reload_slot = -1;
  }
}

static void reload_abort(const char *fmt, ...) {
  char m[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  say("%s; reload stopped, the old workers keep serving", m);
  G.reload_slot = -1;
  G.reload_new = NULL;
  G.reload_again = 0;
}

/* The ready pipe of p is readable. */
static void on_ready(Proc *p) {
  char b[64];
  ssize_t r;
  do r = read(p->ready_fd, b, sizeof b);
  while (r < 0 && errno == EINTR);
  if (r < 0 && errno == EAGAIN) return;
  close(p->ready_fd);
  p->ready_fd = -1;
  if (r <= 0 || memcmp(b, "READY", r < 5 ? (size_t)r : 5) != 0)
    return; /* closed unready: its exit tells */
  p->ready = 1;
  if (p == G.reload_new) {
    Proc *old = G.cur[p->slot];
    G.cur[p->slot] = p;
    G.restart_at[p->slot] = 0;
    G.reload_new = NULL;
    if (old) {
      say("worker %d: pid %d ready, stopping pid %d", p->slot, (int)p->pid, (int)old->pid);
      stop_proc(old, now());
    } else {
      say("worker %d (pid %d) ready", p->slot, (int)p->pid);
    }
    G.reload_slot++;
    reload_next();
    return;
  }
  if (!p->term_sent) say("worker %d (pid %d) ready", p->slot, (int)p->pid);
}

/* p has ended with status: takes it out and decides what follows. */
static void on_exit_(Proc *p, int status) {
  char why[96];
  double t = now();
  int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  for (int i = 0; i < 2; i++)
    if (p->out[i].fd >= 0) pump(p, &p->out[i]);
  if (p->ready_fd >= 0) close(p->ready_fd);
  for (Proc **pp = &G.procs; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  describe(status, why, sizeof why);
  if (G.cur[p->slot] == p) G.cur[p->slot] = NULL;
  if (G.stopping) {
    if (!clean) {
      G.unclean = 1;
      if (!G.fatal) say("worker %d (pid %d) %s", p->slot, (int)p->pid, why);
    }
  } else if (p == G.reload_new) {
    reload_abort("worker %d: the new process (pid %d) %s before it was ready", p->slot, (int)p->pid,
                 why);
  } else if (p->term_sent) {
    say("worker %d: the old process (pid %d) %s", p->slot, (int)p->pid, why);
  } else if (p->boot && !p->ready) {
    say("worker %d (pid %d) %s before it was ready: the service cannot start", p->slot, (int)p->pid,
        why);
    G.fatal = 1;
    stop_all("start-up failed");
  } else if (G.cur[p->slot] == NULL && G.restart_at[p->slot] == 0) {
    int s = p->slot;
    if (t - p->started >= STABLE_AFTER) G.fails[s] = 0;
    double d = BACKOFF_FIRST * pow(2, G.fails[s]);
    if (d > BACKOFF_MAX) d = BACKOFF_MAX;
    G.fails[s]++;
    say("worker %d (pid %d) %s; restarting in %g s", s, (int)p->pid, why, d);
    G.restart_at[s] = t + d;
  }
  free(p);
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    Proc *p;
    for (p = G.procs; p && p->pid != pid; p = p->next) {}
    if (p) on_exit_(p, status); /* else an orphan the kernel gave us (as PID 1): reaped */
  }
}

static void on_signal(void) {
  struct signalfd_siginfo si;
  while (read(G.sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
    int sig = (int)si.ssi_signo;
    char s[32];
    switch (sig) {
    case SIGCHLD: reap(); break;
    case SIGTERM:
    case SIGINT:
      if (G.stopping && !G.fatal) {
        say("%s again: killing the workers now", signame(sig, s, sizeof s));
        for (Proc *p = G.procs; p; p = p->next)
          if (!p->kill_sent) {
            p->kill_sent = 1;
            kill(p->pid, SIGKILL);
          }
        G.unclean = 1;
      } else {
        stop_all(signame(sig, s, sizeof s));
      }
      break;
    case SIGHUP:
      if (G.stopping) break;
      if (G.reload_slot >= 0) {
        say("SIGHUP during a reload: another reload follows it");
        G.reload_again = 1;
      } else {
        reload_start();
      }
      break;
    }
  }
}

/* The deadlines: readiness, grace periods, restarts.  Returns the poll
 * timeout in milliseconds until the next one (-1: none). */
static int deadlines(void) {
  double t = now(), next = INFINITY;
  for (Proc *p = G.procs; p; p = p->next) {
    if (!p->ready && p->ready_by > 0 && !p->term_sent && !p->kill_sent) {
      if (t >= p->ready_by) {
        say("worker %d (pid %d) is not ready after %g s (a worker is ready when its first server "
            "listens, or when it calls asyncio.worker_ready())",
            p->slot, (int)p->pid, G.o->ready_timeout);
        p->kill_sent = 1;
        kill(p->pid, SIGKILL);
        if (p == G.reload_new) {
          reload_abort("worker %d: the new process was not ready", p->slot);
          p->term_sent = 1; /* its end is expected now */
        } else if (p->boot) {
          G.fatal = 1;
          stop_all("start-up failed");
        }
      } else if (p->ready_by < next) {
        next = p->ready_by;
      }
    }
    if (p->term_sent && !p->kill_sent) {
      if (t >= p->kill_at) {
        say("worker %d (pid %d) did not stop within %g s: killing it", p->slot, (int)p->pid,
            G.o->grace);
        p->kill_sent = 1;
        kill(p->pid, SIGKILL);
        G.unclean = 1;
      } else if (p->kill_at < next) {
        next = p->kill_at;
      }
    }
  }
  if (!G.stopping)
    for (int s = 0; s < G.o->workers; s++) {
      if (G.restart_at[s] == 0 || G.cur[s]) continue;
      if (t >= G.restart_at[s]) {
        G.restart_at[s] = 0;
        if (G.reload_new && G.reload_new->slot == s) continue; /* its replacement is starting */
        G.cur[s] = spawn(s, 0);
        if (G.cur[s] == NULL) G.restart_at[s] = t + BACKOFF_MAX;
      } else if (G.restart_at[s] < next) {
        next = G.restart_at[s];
      }
    }
  if (isinf(next)) return -1;
  double ms = ceil((next - t) * 1000);
  return ms < 1 ? 1 : ms > 60000 ? 60000 : (int)ms;
}

int ml__supervise(const ml_Supervise *o) {
  sigset_t mask;
  memset(&G, 0, sizeof G);
  G.o = o;
  G.self = getpid();
  G.reload_slot = -1;
  G.prefix = isatty(1);
  {
    ssize_t n = readlink("/proc/self/exe", G.exe, sizeof G.exe - 1);
    if (n <= 0 || n >= (ssize_t)sizeof G.exe - 1) strcpy(G.exe, "/proc/self/exe");
    else G.exe[n] = 0;
  }
  take_systemd_sockets();
  for (int i = 0; i < o->nlisten; i++)
    if (listen_on(o->listen[i]) < 0) return 1;
  G.cur = calloc((size_t)o->workers, sizeof *G.cur);
  G.restart_at = calloc((size_t)o->workers, sizeof *G.restart_at);
  G.fails = calloc((size_t)o->workers, sizeof *G.fails);
  if (!G.cur || !G.restart_at || !G.fails || pipe2(G.lifeline, O_CLOEXEC) < 0) {
    say("cannot start the supervisor: %s", strerror(errno ? errno : ENOMEM));
    return 1;
  }
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, &G.oldmask);
  if ((G.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
    say("signalfd: %s", strerror(errno));
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  for (int s = 0; s < o->workers; s++) {
    G.cur[s] = spawn(s, 1);
    if (G.cur[s] == NULL) {
      G.fatal = 1;
      stop_all("start-up failed");
      break;
    }
  }
  for (;;) {
    int timeout = deadlines();
    if (G.stopping && G.procs == NULL) break;
    int n = 1, cap = 1 + 3 * nprocs();
    struct pollfd *fds = calloc((size_t)cap, sizeof *fds);
    Proc **who = calloc((size_t)cap, sizeof *who);
    int *what = calloc((size_t)cap, sizeof *what);
    if (!fds || !who || !what) {
      free(fds);
      free(who);
      free(what);
      struct timespec ts = {0, 10000000};
      nanosleep(&ts, NULL); /* out of memory: try again shortly */
      continue;
    }
    fds[0].fd = G.sigfd;
    fds[0].events = POLLIN;
    for (Proc *p = G.procs; p; p = p->next) {
      if (p->ready_fd >= 0) {
        fds[n].fd = p->ready_fd;
        fds[n].events = POLLIN;
        who[n] = p;
        what[n++] = -1;
      }
      for (int i = 0; i < 2; i++)
        if (p->out[i].fd >= 0) {
          fds[n].fd = p->out[i].fd;
          fds[n].events = POLLIN;
          who[n] = p;
          what[n++] = i;
        }
    }
    int r = poll(fds, (nfds_t)n, timeout);
    if (r > 0) {
      /* Pipes first: a worker's last lines and its READY come before
       * its exit (SIGCHLD) is handled, which frees it. */
      for (int i = 1; i < n; i++) {
        if (!fds[i].revents) continue;
        Proc *p;
        for (p = G.procs; p && p != who[i]; p = p->next) {}
        if (!p) continue;
        if (what[i] < 0) {
          if (p->ready_fd == fds[i].fd) on_ready(p);
        } else if (p->out[what[i]].fd == fds[i].fd) pump(p, &p->out[what[i]]);
      }
      if (fds[0].revents) on_signal();
    }
    free(fds);
    free(who);
    free(what);
  }
  if (G.fatal) return 1;
  if (!G.unclean) say("all workers stopped");
  return G.unclean ? 1 : 0;
}

/* ---- the worker's side ---- */

static int env_int(const char *name, int *v) {
  const char *s = getenv(name);
  char *end;
  long x;
  if (s == NULL || !*s) return 0;
  errno = 0;
  x = strtol(s, &end, 10);
  if (*end || errno || x < -1 || x > 1 << 30) return 0;
  *v = (int)x;
  return 1;
}

int ml__worker_env(ml_Worker *w, int *fds, int cap, double *grace, int *lifeline) {
  static const char *const names[] = {
    "MOONLOOP_WORKER_ID", "MOONLOOP_WORKER_COUNT", "MOONLOOP_WORKER_PID", "MOONLOOP_LISTEN_FDS",
    "MOONLOOP_READY_FD",  "MOONLOOP_LIFELINE_FD",  "MOONLOOP_GRACE",      NULL};
  int id, count, pid, k, ready, life, ok;
  const char *g = getenv("MOONLOOP_GRACE");
  ok = env_int(names[0], &id) && env_int(names[1], &count) && env_int(names[2], &pid) &&
       env_int(names[3], &k) && env_int(names[4], &ready) && env_int(names[5], &life) &&
       pid == (int)getpid() && k >= 0 && k <= cap && count >= 1 && id >= 0 && id < count;
  *grace = g ? ml__parse_duration(g) : -1;
  if (*grace < 0) *grace = 10;
  /* Gone from the environment either way: the script's own children
   * (create_subprocess_exec("moonloop", ...)) are not workers. */
  for (int i = 0; names[i]; i++) unsetenv(names[i]);
  if (!ok) return 0;
  for (int i = 0; i < k; i++) {
    fds[i] = 3 + i;
    fcntl(fds[i], F_SETFD, FD_CLOEXEC);
  }
  fcntl(ready, F_SETFD, FD_CLOEXEC);
  fcntl(life, F_SETFD, FD_CLOEXEC);
  w->id = id;
  w->count = count;
  w->ready_fd = ready;
  w->listen_fds = fds;
  w->nlisten = k;
  *lifeline = life;
  return 1;
}
