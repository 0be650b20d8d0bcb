/* main.c: the moonloop command: run a script as the main task, print the
 * dialect's translation, or start the REPL. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli.h"

static const char usage[] =
  "usage: moonloop [options] [script [args...]]\n"
  "  script      run a Lua file (with async/await) as the main task\n"
  "  -           read the script from standard input\n"
  "  -e CHUNK    run CHUNK as the main task\n"
  "  -i          enter the interactive REPL after running the script\n"
  "  --emit FILE print the plain Lua that the async pass makes of FILE\n"
  "  -v, --version  print the version\n"
  "  -h, --help     print this help\n"
  "With no script and a terminal on stdin, moonloop starts the REPL;\n"
  "with no script and no terminal, it runs standard input as a script.\n"
  "Environment: MOONLOOP_DEBUG=1 turns on asyncio debug mode.\n";

static ml_State *g_S;
static volatile sig_atomic_t g_sigints;
static ev_async g_sigint_async;

/* The first SIGINT cancels the main task (through the loop); a second one
 * exits at once, even if a task is stuck in a loop that never awaits. */
static void on_sigint(int sig) {
  (void)sig;
  if (++g_sigints >= 2) {
    static const char m[] = "\nKeyboardInterrupt\n";
    ssize_t r = write(2, m, sizeof m - 1);
    (void)r;
    _exit(130);
  }
  ev_async_send(g_S->loop, &g_sigint_async);
}

static void sigint_cb(struct ev_loop *loop, ev_async *w, int revents) {
  ml_State *S = g_S;
  ml_Task *t;
  (void)loop; (void)w; (void)revents;
  if (S->main && S->main->fut.state == ML_PENDING) {
    lua_pushliteral(S->L, "KeyboardInterrupt");
    ml__task_cancel(S->L, S->main, lua_gettop(S->L));
    lua_pop(S->L, 1);
    return;
  }
  for (t = S->tasks; t; t = t->next) ml__task_cancel(S->L, t, 0);
}

/* Reads a whole file (or stdin for "-").  Returns malloc'ed data, or NULL
 * with errno set. */
static char *read_file(const char *path, size_t *len) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  char *buf = NULL;
  size_t cap = 0, n = 0, r;
  if (f == NULL) return NULL;
  do {
    if (n + 4096 > cap) {
      char *nb = realloc(buf, cap = cap ? cap * 2 : 65536);
      if (nb == NULL) {
        free(buf);
        if (f != stdin) fclose(f);
        errno = ENOMEM;
        return NULL;
      }
      buf = nb;
    }
    r = fread(buf + n, 1, cap - n, f);
    n += r;
  } while (r > 0);
  if (ferror(f)) {
    int e = errno ? errno : EIO;
    free(buf);
    if (f != stdin) fclose(f);
    errno = e;
    return NULL;
  }
  if (f != stdin) fclose(f);
  *len = n;
  return buf;
}

static int emit(const char *path) {
  size_t len;
  char *src = read_file(path, &len), err[512];
  ml_Buf out = { 0 };
  int rc;
  if (src == NULL) {
    fprintf(stderr, "moonloop: cannot open %s: %s\n", path, strerror(errno));
    return 2;
  }
  rc = ml__asyncpass(src, len, path, &out, err, sizeof err);
  free(src);
  if (rc < 0) {
    fprintf(stderr, "moonloop: %s\n", rc == -ENOMEM ? "not enough memory" : err);
    ml__buf_free(&out);
    return 1;
  }
  fwrite(out.data ? out.data : "", 1, out.len, stdout);
  ml__buf_free(&out);
  return 0;
}

/* Sets the global `arg` as lua.c does: arg[0] the script, arg[1..] its
 * arguments, negative indices the interpreter's own. */
static void set_arg(lua_State *L, char **argv, int argc, int script) {
  int i;
  lua_createtable(L, argc - script, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
}

/* Prints why the main task failed.  Returns the exit status. */
static int report_main(ml_State *S, int mainref) {
  lua_State *L = S->L;
  ml_Future *f;
  lua_rawgeti(L, LUA_REGISTRYINDEX, mainref);
  f = lua_touserdata(L, -1);
  if (f->state == ML_CANCELLED) {
    fprintf(stderr, g_sigints ? "KeyboardInterrupt\n" : "moonloop: the main task was cancelled\n");
    lua_pop(L, 1);
    return g_sigints ? 130 : 1;
  }
  if (f->state != ML_EXCEPTION) {
    lua_pop(L, 1);
    return 0;
  }
  ml__future_retrieved(L, -1, f);
  lua_getiuservalue(L, -1, FUV_RESULT);
  ml__xget(L, -2, X_TB);
  fprintf(stderr, "moonloop: %s\n", ml__tostring(L, -2));
  lua_pop(L, 1);
  if (lua_isstring(L, -1)) fprintf(stderr, "%s\n", lua_tostring(L, -1));
  lua_pop(L, 3);
  return 1;
}

/* Runs the function (and nargs arguments) on the stack as the main task,
 * then the loop until nothing is left.  Returns the exit status. */
/* With interactive, the REPL follows at once: the loop keeps running
 * under it, so the script's tasks and servers stay alive. */
static int run_main_unprotected(ml_State *S, int nargs, int interactive) {
  lua_State *L = S->L;
  int mainref, rc, status;
  S->main = ml__task_spawn(L, nargs, "main");
  mainref = luaL_ref(L, LUA_REGISTRYINDEX);
  rc = ml__sched_run(S, &S->main->fut);
  if (rc == -EDEADLK) {
    fprintf(stderr, "moonloop: the main task can never finish: it awaits something that nothing "
                    "is left to complete (no ready task, timer or I/O watcher)\n");
    return 1;
  }
  status = report_main(S, mainref);
  if (status == 0 && !interactive) {
    ml__sched_run(S, NULL);  /* Node's rule: run until nothing is left */
    if (g_sigints) status = 130;
  }
  return status;
}

typedef struct MainRun { int nargs, interactive, status; } MainRun;

static int run_main_p(lua_State *L) {
  MainRun *m = lua_touserdata(L, 1);
  lua_remove(L, 1);  /* [fn, args...] */
  m->status = run_main_unprotected(ml__state(L), m->nargs, m->interactive);
  return 0;
}

/* run_main in protected mode: an error the scheduler cannot hand to a task
 * or a handler (out of memory in its own bookkeeping, say) ends the run
 * with a message and status 1, not an abort. */
static int run_main(ml_State *S, int nargs, int interactive) {
  lua_State *L = S->L;
  MainRun m;
  int base = lua_gettop(L) - nargs;  /* the function */
  m.nargs = nargs;
  m.interactive = interactive;
  m.status = 1;
  lua_pushcfunction(L, run_main_p);
  lua_insert(L, base);
  lua_pushlightuserdata(L, &m);
  lua_insert(L, base + 1);
  if (lua_pcall(L, nargs + 2, 0, 0) != LUA_OK) {
    fprintf(stderr, "moonloop: %s\n", ml__tostring(L, -1));
    lua_pop(L, 2);
    return 1;
  }
  return m.status;
}

int main(int argc, char **argv) {
  int i, script = 0, interactive = 0, status = 0;
  const char *chunk = NULL;
  ml_State *S;
  lua_State *L;
  struct sigaction sa;

  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || strcmp(a, "-") == 0) { script = i; break; }
    if (strcmp(a, "--") == 0) { if (i + 1 < argc) script = i + 1; break; }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) { fputs(usage, stdout); return 0; }
    if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      printf("moonloop %s (%s, libev %d.%d)\n", MOONLOOP_VERSION, LUA_RELEASE,
             ev_version_major(), ev_version_minor());
      return 0;
    }
    if (strcmp(a, "--emit") == 0) {
      if (i + 1 >= argc) { fprintf(stderr, "moonloop: --emit needs a file name\n"); return 2; }
      return emit(argv[i + 1]);
    }
    if (strcmp(a, "-e") == 0) {
      if (i + 1 >= argc) { fprintf(stderr, "moonloop: -e needs a chunk of code\n"); return 2; }
      chunk = argv[++i];
      continue;
    }
    if (strcmp(a, "-i") == 0) { interactive = 1; continue; }
    fprintf(stderr, "moonloop: unknown option '%s' (try 'moonloop --help')\n", a);
    return 2;
  }

  signal(SIGPIPE, SIG_IGN);
  S = ml_state_new(ev_default_loop(EVFLAG_AUTO));
  if (S == NULL) {
    fprintf(stderr, "moonloop: cannot create a state (out of memory)\n");
    return 1;
  }
  g_S = S;
  L = S->L;
  ev_async_init(&g_sigint_async, sigint_cb);
  ev_async_start(S->loop, &g_sigint_async);
  ev_unref(S->loop);  /* the SIGINT hook does not keep the loop alive */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);

  set_arg(L, argv, argc, script);
  if (chunk) {
    if (ml__load(L, chunk, strlen(chunk), "=(command line)") != LUA_OK) {
      fprintf(stderr, "moonloop: %s\n", lua_tostring(L, -1));
      status = 1;
      goto done;
    }
    status = run_main(S, 0, interactive && !script);
    if (status || !script) goto after;
  }
  if (script || (!chunk && !interactive && !isatty(0))) {
    const char *path = script ? argv[script] : "-";
    size_t len;
    char *src = read_file(path, &len);
    char name[1024];
    int nargs = 0;
    if (src == NULL) {
      fprintf(stderr, "moonloop: cannot open %s: %s\n", path, strerror(errno));
      status = 2;
      goto done;
    }
    snprintf(name, sizeof name, strcmp(path, "-") == 0 ? "=stdin" : "@%s", path);
    if (ml__load(L, src, len, name) != LUA_OK) {
      free(src);
      fprintf(stderr, "moonloop: %s\n", lua_tostring(L, -1));
      status = 1;
      goto done;
    }
    free(src);
    if (script)
      for (i = script + 1; i < argc; i++, nargs++) lua_pushstring(L, argv[i]);
    status = run_main(S, nargs, interactive);
  }
after:
  if (interactive || (!script && !chunk && isatty(0))) {
    S->main = NULL;
    status = ml__repl_main(S);
  }
done:
  ml_state_close(S);
  return status;
}
