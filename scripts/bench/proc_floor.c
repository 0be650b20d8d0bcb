/* proc_floor.c: the C floors of the process benchmarks (ml_proc.lua):
 * what the kernel allows with no event loop and no interpreter.
 *
 * usage: proc_floor spawn [N] | pipe64
 *   spawn   N sequential posix_spawn + waitpid of /bin/true, with the
 *           attributes moonloop's spawn uses (signal mask cleared,
 *           SIGPIPE/SIGXFSZ at their defaults, fds above 2 closed)
 *   pipe64  64 MiB from `head -c` through a pipe, read to its end in
 *           1 MiB reads (what `head -c ... | cat > /dev/null` does)
 *
 * Prints RESULT <name> <seconds> <ops>, as the other benchmarks do. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

extern char **environ;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Spawns argv with moonloop's attributes, child stdout onto out (or
 * inherited if out < 0); returns the pid or -1. */
static pid_t spawn(char **argv, int out) {
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  sigset_t none, def;
  pid_t pid;
  int r;
  posix_spawn_file_actions_init(&fa);
  posix_spawnattr_init(&attr);
  if (out >= 0) posix_spawn_file_actions_adddup2(&fa, out, 1);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  sigemptyset(&none);
  sigemptyset(&def);
  sigaddset(&def, SIGPIPE);
  sigaddset(&def, SIGXFSZ);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &def);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  r = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return r == 0 ? pid : -1;
}

int main(int argc, char **argv) {
  double t0;
  int st;
  if (argc >= 2 && strcmp(argv[1], "spawn") == 0) {
    long n = argc > 2 ? strtol(argv[2], NULL, 10) : 500;
    char *av[] = {"/bin/true", NULL};
    if (n < 1 || n > 100000) return 2;
    t0 = now();
    for (long i = 0; i < n; i++) {
      pid_t pid = spawn(av, -1);
      if (pid < 0 || waitpid(pid, &st, 0) < 0) return 1;
    }
    printf("RESULT spawn %.6f %ld\n", now() - t0, n);
    return 0;
  }
  if (argc >= 2 && strcmp(argv[1], "pipe64") == 0) {
    static char buf[1 << 20];
    char *av[] = {"head", "-c", "67108864", "/dev/zero", NULL};
    long long got = 0;
    ssize_t r;
    int fds[2];
    pid_t pid;
    t0 = now();
    if (pipe2(fds, O_CLOEXEC) < 0 || (pid = spawn(av, fds[1])) < 0) return 1;
    close(fds[1]);
    while ((r = read(fds[0], buf, sizeof buf)) > 0) got += r;
    close(fds[0]);
    if (waitpid(pid, &st, 0) < 0 || got != 64LL * 1024 * 1024) return 1;
    printf("RESULT pipe64 %.6f 64\n", now() - t0);
    return 0;
  }
  fprintf(stderr, "usage: proc_floor spawn [N] | pipe64\n");
  return 2;
}
