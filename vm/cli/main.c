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
  "  --workers N|auto  run the script in N worker processes (auto: one per\n"
  "              core) under a supervisor: restarts, SIGHUP rolling reload,\n"
  "              SIGTERM graceful stop (docs/deployment.md)\n"
  "  --listen ADDR     with --workers: PORT, HOST:PORT, [IPV6]:PORT or a Unix\n"
  "              socket path the supervisor listens on for every worker\n"
  "              (repeatable)\n"
  "  --grace DUR       with --workers: how long a stopping worker may take\n"
  "              before it is killed (default 10s; 500ms, 2m...)\n"
  "  --ready-timeout DUR  with --workers: how long a starting worker may take\n"
  "              to listen (default 30s)\n"
  "  -v, --version  print the version\n"
  "  -h, --help     print this help\n"
  "With no script and a terminal on stdin, moonloop starts the REPL;\n"
  "with no script and no terminal, it runs standard input as a script.\n"
  "Environment: MOONLOOP_DEBUG=1 turns on asyncio debug mode.\n";

static ml_State *g_S;
static struct ev_loop *g_loop;
static ml_Future *g_main; /* the main task while it runs, or NULL */
static volatile sig_atomic_t g_sigints;
static ev_async g_sigint_async;
/* A worker of `moonloop --workers`: SIGTERM (and SIGINT) stop it
 * gracefully, unless the script catches them itself. */
static int g_worker;
static volatile sig_atomic_t g_stopping;
static ev_async g_stop_async;
static ev_io g_lifeline;
static double g_grace;

static void on_stop_signal(int sig) {
  (void)sig;
  if (g_stopping) return; /* the supervisor escalates, with SIGKILL */
  g_stopping = 1;
  ev_async_send(g_loop, &g_stop_async);
}

/* The loop's side: ml_state_shutdown closes the servers and cancels the
 * main task once their connections are gone. */
static void stop_cb(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  if (ml_state_shutdown(g_S, g_main) != ML_OK)
    fprintf(stderr, "moonloop: worker shutdown: %s\n", ml_state_error(g_S));
}

/* The supervisor is gone (its end of the lifeline closed): its SIGTERM
 * (the parent-death signal) is under way; whatever the script does with
 * it, the worker ends within the grace period. */
static void lifeline_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)revents;
  ev_io_stop(loop, w);
  alarm((unsigned)g_grace + 1);
}

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
  ev_async_send(g_loop, &g_sigint_async);
}

/* The loop's side: the main task is cancelled with KeyboardInterrupt; once
 * it is over (the loop runs what it left, Node's rule), every task is. */
static void sigint_cb(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  if (g_main && ml_future_state(g_main) == ML_FUTURE_PENDING) {
    ml_future_cancel(ml_state_lua(g_S), g_main, "KeyboardInterrupt");
    return;
  }
  ml_task_cancel_all(g_S, NULL);
}

/* Reads a whole file (or stdin for "-").  Returns malloc'ed data, or NULL
 * with errno set. */
static char *read_file(const char *path, size_t *len) {
  return ml_file_read(strcmp(path, "-") == 0 ? NULL : path, len);
}

static int emit(const char *path) {
  size_t len, outlen;
  char *src = read_file(path, &len), *out, err[512];
  int rc;
  if (src == NULL) {
    fprintf(stderr, "moonloop: cannot open %s: %s\n", path, strerror(errno));
    return 2;
  }
  rc = ml_dialect_translate(src, len, path, &out, &outlen, err, sizeof err);
  free(src);
  if (rc < 0) {
    fprintf(stderr, "moonloop: %s\n", err);
    return 1;
  }
  fwrite(out, 1, outlen, stdout);
  free(out);
  return 0;
}

/* Sets the global `arg` as lua.c does: arg[0] the script, arg[1..] its
 * arguments, negative indices the interpreter's own. */
static int set_arg_p(lua_State *L) {
  char **argv = lua_touserdata(L, 1);
  int argc = (int)lua_tointeger(L, 2), script = (int)lua_tointeger(L, 3), i;
  lua_createtable(L, argc - script, script + 1);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script);
  }
  lua_setglobal(L, "arg");
  return 0;
}

/* The same, protected: out of memory here is an error, not Lua's panic
 * (found by MOONLOOP_ALLOCFAIL, docs/reliability.md).  Returns a Lua
 * status, the message popped. */
static int set_arg(lua_State *L, char **argv, int argc, int script) {
  int rc;
  lua_pushcfunction(L, set_arg_p);
  lua_pushlightuserdata(L, argv);
  lua_pushinteger(L, argc);
  lua_pushinteger(L, script);
  rc = lua_pcall(L, 3, 0, 0);
  if (rc != LUA_OK) lua_pop(L, 1);
  return rc;
}

/* Pushes the script's arguments argv[from..argc) as strings.  [-0, +n] */
static int push_args_p(lua_State *L) {
  char **argv = lua_touserdata(L, 1);
  int argc = (int)lua_tointeger(L, 2), from = (int)lua_tointeger(L, 3), i;
  lua_settop(L, 0);
  luaL_checkstack(L, argc - from, "too many arguments");
  for (i = from; i < argc; i++) lua_pushstring(L, argv[i]);
  return argc - from;
}

/* tostring(v) of the value at idx, in protected mode (a __tostring may
 * fail).  [-0, +1] pushes it and returns it. */
static int tostring_p(lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

static const char *safe_tostring(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, tostring_p);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(a %s value whose __tostring failed)", luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}

/* Prints why the main task f failed.  Returns the exit status. */
static int report_main(ml_State *S, ml_Future *f) {
  lua_State *L = ml_state_lua(S);
  int top = lua_gettop(L);
  switch (ml_future_state(f)) {
  case ML_FUTURE_CANCELLED:
    if (g_stopping) return 0; /* a worker's graceful stop */
    fprintf(stderr, g_sigints ? "KeyboardInterrupt\n" : "moonloop: the main task was cancelled\n");
    return g_sigints ? 130 : 1;
  case ML_FUTURE_ERROR: break;
  default: return 0;
  }
  /* [error, traceback]: the error first, marking it retrieved. */
  if (ml_future_push_error(L, f) != ML_OK || ml_future_push_traceback(L, f) != ML_OK) {
    lua_settop(L, top);
    fprintf(stderr, "moonloop: the main task failed, and its error cannot be read: %s\n",
            *ml_state_error(S) ? ml_state_error(S) : "not enough memory");
    return 1;
  }
  fprintf(stderr, "moonloop: %s\n", safe_tostring(L, top + 1));
  if (lua_isstring(L, top + 2)) fprintf(stderr, "%s\n", lua_tostring(L, top + 2));
  lua_settop(L, top);
  return 1;
}

/* Cancels every task and runs the loop until they have all unwound, as
 * asyncio's Runner.close does (servers and watchers do not keep it
 * running). */
static void unwind_all(ml_State *S) {
  static const char src[] =
    "local all, left = asyncio.all_tasks(), {}\n"
    "for i = 1, all.n do if all[i] ~= asyncio.current_task() then all[i]:cancel(); left[#left + 1] = all[i] end end\n"
    "if #left > 0 then await asyncio.gather(table.unpack(left), { return_exceptions = true }) end\n";
  lua_State *L = ml_state_lua(S);
  ml_Future *t;
  if (ml_load_string(L, src, sizeof src - 1, "=(unwind)") != ML_OK ||
      ml_task_spawn(L, 0, "unwind", &t) != ML_OK) {
    fprintf(stderr, "moonloop: %s\n", ml_state_error(S));
    return;
  }
  if (ml_state_run_until(S, t) < 0) fprintf(stderr, "moonloop: %s\n", ml_state_error(S));
  ml_future_release(L, t);
}

/* Runs the function (and nargs arguments) on the stack as the main task,
 * then the loop until nothing is left.  Returns the exit status.  With
 * interactive, the REPL follows at once: the loop keeps running under it,
 * so the script's tasks and servers stay alive.  The runs are protected
 * (the embedding API's): an error the scheduler cannot hand to a task or
 * a handler (memory, in its own bookkeeping) ends the run with a message
 * and status 1, not an abort. */
static int run_main(ml_State *S, int nargs, int interactive) {
  lua_State *L = ml_state_lua(S);
  int rc, status;
  if (ml_task_spawn(L, nargs, "main", &g_main) != ML_OK) {
    fprintf(stderr, "moonloop: %s\n", ml_state_error(S));
    return 1;
  }
  rc = ml_state_run_until(S, g_main);
  if (rc == -EDEADLK) {
    fprintf(stderr, "moonloop: the main task can never finish: it awaits something that nothing "
                    "is left to complete (no ready task, timer or I/O watcher)\n");
    status = 1;
  } else if (rc < 0) {
    fprintf(stderr, "moonloop: %s\n", ml_state_error(S));
    status = 1;
  } else if (ml_future_state(g_main) == ML_FUTURE_PENDING) {
    /* loop:stop() outside run_forever/run_until_complete stopped the run
     * of the main task: as asyncio.run's run_until_complete raises, then
     * cancels what is left and lets it unwind. */
    fprintf(stderr, "moonloop: RuntimeError: Event loop stopped before Future completed. "
                    "(loop:stop() was called while the main task ran, outside "
                    "loop:run_forever() or loop:run_until_complete())\n");
    status = 1;
    unwind_all(S);
    rc = -ECANCELED; /* no Node's rule after it */
  } else {
    status = report_main(S, g_main);
  }
  /* From here on SIGINT cancels every task: the main one is over. */
  ml_future_release(L, g_main);
  g_main = NULL;
  if (rc == ML_OK && status == 0 && !interactive) {
    /* Node's rule: run until nothing is left. */
    if ((rc = ml_state_run(S)) < 0) {
      fprintf(stderr, "moonloop: %s\n", ml_state_error(S));
      status = 1;
    } else if (g_sigints) {
      status = 130;
    }
  }
  return status;
}

/* The value of option argv[*i] ("--opt VALUE" or "--opt=VALUE"), or NULL
 * if argv[*i] is not opt; exits with a message if the value is missing. */
static const char *opt_value(int argc, char **argv, int *i, const char *opt) {
  size_t n = strlen(opt);
  const char *a = argv[*i];
  if (strncmp(a, opt, n) != 0) return NULL;
  if (a[n] == '=') return a + n + 1;
  if (a[n] != 0) return NULL;
  if (*i + 1 >= argc) {
    fprintf(stderr, "moonloop: %s needs a value (try 'moonloop --help')\n", opt);
    exit(2);
  }
  return argv[++*i];
}

static double duration_opt(const char *opt, const char *v) {
  double d = ml__parse_duration(v);
  if (d < 0) {
    fprintf(stderr, "moonloop: %s %s: expected a duration such as 10s, 500ms, 2m or 1.5\n", opt, v);
    exit(2);
  }
  return d;
}

/* Runs the supervisor for the options in o and the script at
 * argv[script]: each worker runs "moonloop -- script args...". */
static int supervise(ml_Supervise *o, int argc, char **argv, int script) {
  const char **listen = calloc((size_t)o->nlisten + 1, sizeof *listen);
  char **wargv = calloc((size_t)(argc - script) + 3, sizeof *wargv);
  int i, n = 0, status;
  const char *v;
  if (listen == NULL || wargv == NULL) {
    fprintf(stderr, "moonloop: out of memory\n");
    free(listen);
    free(wargv);
    return 1;
  }
  /* The --listen values, in order (the options with a value skip theirs). */
  for (i = 1; i < script; i++) {
    if ((v = opt_value(argc, argv, &i, "--listen")) != NULL) listen[n++] = v;
    else if (opt_value(argc, argv, &i, "--workers") || opt_value(argc, argv, &i, "--grace") ||
             opt_value(argc, argv, &i, "--ready-timeout"))
      continue;
  }
  o->nlisten = n;
  wargv[0] = argv[0];
  wargv[1] = "--";
  for (i = script, n = 2; i < argc; i++) wargv[n++] = argv[i];
  wargv[n] = NULL;
  o->listen = listen;
  o->argv = wargv;
  status = ml__supervise(o);
  free(listen);
  free(wargv);
  return status;
}

int main(int argc, char **argv) {
  int i, script = 0, interactive = 0, status = 0;
  const char *chunk = NULL, *v;
  ml_State *S;
  lua_State *L;
  struct sigaction sa;
  ml_Supervise sup = {0, 10, 30, NULL, 0, NULL};
  int supervised = 0;
  ml_Worker worker;
  int worker_fds[64], lifeline = -1;

  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if ((v = opt_value(argc, argv, &i, "--workers")) != NULL) {
      char *end;
      long n = strcmp(v, "auto") == 0 ? ml__cpu_count() : strtol(v, &end, 10);
      if (strcmp(v, "auto") != 0 && (*end || end == v || n < 1 || n > 1024)) {
        fprintf(stderr, "moonloop: --workers %s: expected a number from 1 to 1024, or auto\n", v);
        return 2;
      }
      sup.workers = (int)n;
      supervised = 1;
      continue;
    }
    if ((v = opt_value(argc, argv, &i, "--grace")) != NULL) {
      sup.grace = duration_opt("--grace", v);
      supervised = 1;
      continue;
    }
    if ((v = opt_value(argc, argv, &i, "--ready-timeout")) != NULL) {
      sup.ready_timeout = duration_opt("--ready-timeout", v);
      supervised = 1;
      continue;
    }
    if ((v = opt_value(argc, argv, &i, "--listen")) != NULL) {
      sup.nlisten++; /* collected below */
      supervised = 1;
      continue;
    }
    if (a[0] != '-' || strcmp(a, "-") == 0) {
      script = i;
      break;
    }
    if (strcmp(a, "--") == 0) {
      if (i + 1 < argc) script = i + 1;
      break;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(usage, stdout);
      return 0;
    }
    if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      printf("moonloop %s (%s, libev %d.%d)\n", MOONLOOP_VERSION, LUA_RELEASE, ev_version_major(),
             ev_version_minor());
      return 0;
    }
    if (strcmp(a, "--emit") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "moonloop: --emit needs a file name\n");
        return 2;
      }
      return emit(argv[i + 1]);
    }
    if (strcmp(a, "-e") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, "moonloop: -e needs a chunk of code\n");
        return 2;
      }
      chunk = argv[++i];
      continue;
    }
    if (strcmp(a, "-i") == 0) {
      interactive = 1;
      continue;
    }
    fprintf(stderr, "moonloop: unknown option '%s' (try 'moonloop --help')\n", a);
    return 2;
  }
  if (supervised) {
    if (sup.workers == 0) {
      fprintf(stderr, "moonloop: --listen, --grace and --ready-timeout go with --workers N\n");
      return 2;
    }
    if (!script || interactive || chunk || strcmp(argv[script], "-") == 0) {
      fprintf(stderr, "moonloop: --workers needs a script file (not -e, -i or standard input)\n");
      return 2;
    }
    return supervise(&sup, argc, argv, script);
  }
  g_worker = ml__worker_env(&worker, worker_fds, 64, &g_grace, &lifeline);

  signal(SIGPIPE, SIG_IGN);
  S = ml_state_new(ev_default_loop(EVFLAG_AUTO));
  if (S == NULL) {
    fprintf(stderr, "moonloop: cannot create a state (out of memory)\n");
    return 1;
  }
  g_S = S;
  g_loop = ml_state_loop(S);
  L = ml_state_lua(S);
  ml_state_enable_signals(S, 1); /* scripts may catch signals (docs/processes.md) */
  ev_async_init(&g_sigint_async, sigint_cb);
  ev_async_start(g_loop, &g_sigint_async);
  ev_unref(g_loop); /* the SIGINT hook does not keep the loop alive */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  if (g_worker) {
    if (ml_state_set_worker(S, &worker) != ML_OK) {
      fprintf(stderr, "moonloop: %s\n", ml_state_error(S));
      status = 1;
      goto done;
    }
    ev_async_init(&g_stop_async, stop_cb);
    ev_async_start(g_loop, &g_stop_async);
    ev_unref(g_loop);
    ev_io_init(&g_lifeline, lifeline_cb, lifeline, EV_READ);
    ev_io_start(g_loop, &g_lifeline);
    ev_unref(g_loop);
    sa.sa_handler = on_stop_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL); /* Ctrl+C reaches the whole group: the supervisor decides */
  }

  if (set_arg(L, argv, argc, script) != LUA_OK) {
    fprintf(stderr, "moonloop: not enough memory\n");
    status = 1;
    goto done;
  }
  if (chunk) {
    if (ml_load_string(L, chunk, strlen(chunk), "=(command line)") != ML_OK) {
      fprintf(stderr, "moonloop: %s\n", ml_state_error(S));
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
    if (ml_load_string(L, src, len, name) != ML_OK) {
      free(src);
      fprintf(stderr, "moonloop: %s\n", ml_state_error(S));
      status = 1;
      goto done;
    }
    free(src);
    if (script && script + 1 < argc) {
      lua_pushcfunction(L, push_args_p);
      lua_pushlightuserdata(L, argv);
      lua_pushinteger(L, argc);
      lua_pushinteger(L, script + 1);
      if (lua_pcall(L, 3, LUA_MULTRET, 0) != LUA_OK) {
        fprintf(stderr, "moonloop: not enough memory\n");
        status = 1;
        goto done;
      }
      nargs = argc - script - 1;
    }
    status = run_main(S, nargs, interactive);
  }
after:
  if (interactive || (!script && !chunk && isatty(0))) { status = ml__repl_main(S); }
done:
  ml_state_close(S);
  return status;
}
