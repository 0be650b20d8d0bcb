/* repl.c: the interactive REPL.  The prompt runs on the event loop itself:
 * stdin is an ev_io watcher feeding libedit's rl_callback_* interface, so
 * timers, servers and tasks keep running while the user types, and each
 * complete input runs as a task (top-level await works).
 *
 * The cycle, driven by ml__repl_main:
 *   1. the prompt is shown (raw mode) and the loop runs until the watcher
 *      has a complete line, or the user leaves;
 *   2. the editor is put away (cooked mode without echo, so Ctrl+C raises
 *      SIGINT and type-ahead waits in the tty), and the line is compiled, as lua.c
 *      does: first as "return <line>", then as a statement, and while the
 *      error ends in "<eof>" more lines are read on a ">>" prompt;
 *   3. the chunk runs as a task, the loop runs until that task is done,
 *      and its results, error or cancellation are printed.
 * Output written while the prompt is on screen (print, io.write,
 * io.stdout/io.stderr:write, error reports) first erases the prompt and
 * the partial line; they are drawn again just before the loop blocks.
 * With stdin not a terminal (moonloop -i script.lua < file) the same
 * cycle reads plain lines and shows no prompt. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>
#include "cli.h"
#include "edit.h"

#define PROMPT1 "> "
#define PROMPT2 ">> "
#define HISTORY_MAX 1000
#define CHUNKNAME "=stdin"

typedef struct Repl {
  ml_State *S;
  struct ev_loop *loop;
  int tty;         /* stdin is a terminal: libedit edits the line */
  int editing;     /* the rl_callback handler is installed */
  int fresh;       /* no key read since: the line is empty */
  int hidden;      /* the prompt was erased for output */
  int at_bol;      /* the last output ended with a newline */
  int eof;         /* stdin ended (Ctrl+D) */
  int quit;        /* os.exit() was called */
  int status;      /* its exit status */
  int interrupted; /* Ctrl+C cancelled the running input */
  ev_io in;
  ev_prepare redraw;
  ev_async sigint;
  ev_signal winch;
  volatile sig_atomic_t sigpending; /* SIGINTs nobody handled yet */
  struct sigaction old_sigint;
  ml_Future *input; /* the task of the running input, or NULL */
  char **lines;     /* lines read and not handled yet (a FIFO) */
  size_t nlines, headline, caplines;
  char *chunk; /* an incomplete input so far, or NULL */
  char *rbuf;  /* non-tty: bytes read, not yet a whole line */
  size_t rlen, rcap;
  char *histfile;
  ml_ErrorHandler old_on_error;
  void *old_on_error_ud;
  struct termios tio; /* the terminal's modes when the REPL started */
  int tio_saved;
} Repl;

/* One REPL per process: the signal handler and libedit's callbacks, which
 * take no user pointer, reach it here. */
static Repl R;

/* ---------------------------------------------------------------- */
/* Output that does not garble the line being edited.                */

/* Terminal columns, for how many rows the prompt and line take. */
static int term_cols(void) {
  struct winsize ws;
  if (ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

/* Called before anything is written to stdout or stderr: if the prompt is
 * on screen, moves to its first row and clears to the end of the screen.
 * The ev_prepare watcher draws it again before the loop next blocks, so
 * several writes in one iteration erase and redraw once. */
static void out_begin(void) {
  if (R.editing && !R.hidden) {
    const char *p = R.chunk ? PROMPT2 : PROMPT1;
    /* libedit updates rl_point only as it reads keys: until the first
     * key of a new prompt it still holds the last line's cursor (a long
     * line made this erase rows of output above the prompt). */
    int point = R.fresh || rl_point < 0 ? 0 : rl_point;
    int row = ((int)strlen(p) + point) / term_cols();
    if (row > 0) fprintf(stdout, "\033[%dA", row);
    fputs("\r\033[J", stdout);
    R.hidden = 1;
    R.at_bol = 1;
  }
  fflush(stdout);
}

/* Records whether the output (n bytes at s) left the cursor at column 0. */
static void out_note(const char *s, size_t n) {
  if (n > 0) R.at_bol = s[n - 1] == '\n';
}

/* Draws the prompt and the partial line again after out_begin. */
static void redraw(void) {
  if (!R.hidden) return;
  R.hidden = 0;
  if (!R.editing) return;
  if (!R.at_bol) fputc('\n', stdout);
  R.at_bol = 1;
  fflush(stdout);
  rl_forced_update_display();
  fflush(stdout);
}

static void redraw_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  fflush(stdout);
  redraw();
}

/* print(...) while the REPL runs: the original print (upvalue 1). */
static int repl_print(lua_State *L) {
  int n = lua_gettop(L);
  out_begin();
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, 0);
  R.at_bol = 1;
  return 0;
}

/* [-0, +0] notes how the last string-like argument of a write ended. */
static void note_last_arg(lua_State *L, int first) {
  int i;
  for (i = lua_gettop(L); i >= first; i--) {
    if (lua_type(L, i) == LUA_TSTRING || lua_type(L, i) == LUA_TNUMBER) {
      size_t n;
      const char *s;
      lua_pushvalue(L, i);
      s = lua_tolstring(L, -1, &n);
      if (n > 0) {
        out_note(s, n);
        lua_pop(L, 1);
        return;
      }
      lua_pop(L, 1);
    }
  }
}

/* Calls the original function (upvalue 1) with the arguments, returning
 * its results. */
static int call_original(lua_State *L) {
  int n = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, n, LUA_MULTRET);
  return lua_gettop(L);
}

/* io.write(...) while the REPL runs. */
static int repl_io_write(lua_State *L) {
  out_begin();
  note_last_arg(L, 1);
  return call_original(L);
}

/* file:write(...) while the REPL runs: only stdout and stderr matter. */
static int repl_file_write(lua_State *L) {
  luaL_Stream *p = luaL_testudata(L, 1, LUA_FILEHANDLE);
  if (p && (p->f == stdout || p->f == stderr)) {
    out_begin();
    note_last_arg(L, 2);
  }
  return call_original(L);
}

/* Errors nobody caught (a background task's exception never retrieved). */
static void repl_on_error(ml_State *S, const char *msg, void *ud) {
  (void)S;
  (void)ud;
  out_begin();
  fprintf(stderr, "moonloop: %s\n", msg);
  R.at_bol = 1;
}

/* [-0, +0] replaces the function t[name] (t at idx) by f closed over the
 * original. */
static void wrap_field(lua_State *L, int idx, const char *name, lua_CFunction f) {
  idx = lua_absindex(L, idx);
  if (lua_getfield(L, idx, name) != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return;
  }
  lua_pushcclosure(L, f, 1);
  lua_setfield(L, idx, name);
}

/* ---------------------------------------------------------------- */
/* os.exit(): leave the REPL through ml_state_close.                  */

/* What os.exit needs from Lua: asyncio.current_task, and a function that
 * awaits a Future nobody completes (C cannot await through the public
 * API, but it can call Lua that does, with a continuation). */
static const char exit_src[] = "local asyncio = require 'asyncio'\n"
                               "local Future = asyncio.Future\n"
                               "return asyncio.current_task, function() await Future() end\n";

static int exit_k(lua_State *L, int status, lua_KContext ctx) {
  (void)L;
  (void)status;
  (void)ctx;
  return 0;
}

/* os.exit([code]) while the REPL runs (upvalues: the original os.exit,
 * current_task and the awaiting function of exit_src): the REPL returns
 * code, and ml_state_close then cancels every task left, so to-be-closed
 * variables and except blocks run.  The calling task awaits until that
 * cancel.  Outside a task (a plain callback), or where it cannot await,
 * there is nothing to unwind to: the original os.exit runs. */
static int repl_os_exit(lua_State *L) {
  int status, in_task = 0;
  if (lua_isboolean(L, 1)) status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  if (lua_isyieldable(L)) {
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_call(L, 0, 1);
    in_task = !lua_isnil(L, -1);
    lua_pop(L, 1);
  }
  if (!in_task) return call_original(L);
  R.quit = 1;
  R.status = status;
  ml_state_stop(R.S); /* back to ml__repl_main */
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_callk(L, 0, 0, 0, exit_k);
  return exit_k(L, LUA_OK, 0);
}

/* ---------------------------------------------------------------- */
/* Ctrl+C.                                                            */

/* The first SIGINT is handled by the loop (sigint_cb).  A second one that
 * arrives before the loop saw the first means Lua code is running without
 * ever awaiting (while true do end): as lua.c does, the running task is
 * stopped with KeyboardInterrupt at its next instruction
 * (ml_state_interrupt is safe to call in a signal handler). */
static void on_sigint(int sig) {
  (void)sig;
  if (R.sigpending) ml_state_interrupt(R.S);
  R.sigpending = 1;
  ev_async_send(R.loop, &R.sigint);
}

static void editor_start(void);
static void editor_stop(void);

/* Cancels the running input, as KeyboardInterrupt does in asyncio's REPL. */
static void interrupt_input(lua_State *L) {
  R.interrupted = 1;
  ml_future_cancel(L, R.input, "KeyboardInterrupt");
}

/* The loop's side of SIGINT.  Its watcher has a higher priority than
 * stdin's, so keys typed after Ctrl+C are read after the line is reset. */
static void sigint_cb(struct ev_loop *loop, ev_async *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  if (!R.sigpending) return; /* run_input took it */
  R.sigpending = 0;
  if (R.input && ml_future_state(R.input) == ML_FUTURE_PENDING) {
    interrupt_input(ml_state_lua(R.S));
    return;
  }
  /* At the prompt: drop the line (and an unfinished multi-line input). */
  free(R.chunk);
  R.chunk = NULL;
  if (R.editing) {
    fputs("^C\n", stdout);
    R.hidden = 0;
    R.at_bol = 1;
    editor_stop();
    editor_start();
  }
}

/* ---------------------------------------------------------------- */
/* Reading lines.                                                     */

static int push_line(char *line) {
  if (R.headline + R.nlines == R.caplines) {
    if (R.headline > 0) {
      memmove(R.lines, R.lines + R.headline, R.nlines * sizeof *R.lines);
      R.headline = 0;
    } else {
      size_t cap = R.caplines ? R.caplines * 2 : 8;
      char **nl = realloc(R.lines, cap * sizeof *nl);
      if (nl == NULL) {
        free(line);
        return -ENOMEM;
      }
      R.lines = nl;
      R.caplines = cap;
    }
  }
  R.lines[R.headline + R.nlines++] = line;
  return 0;
}

static char *pop_line(void) {
  char *l;
  if (R.nlines == 0) return NULL;
  l = R.lines[R.headline++];
  if (--R.nlines == 0) R.headline = 0;
  return l;
}

/* libedit's line handler: line is malloc'ed, or NULL at end of input. */
static void line_cb(char *line) {
  if (line == NULL) R.eof = 1;
  else push_line(line);
}

/* Between prompts (while an input runs) the terminal is in its normal
 * cooked mode, so that Ctrl+C raises SIGINT, but without echo: what the
 * user types ahead is shown once, by the editor, when the next prompt
 * reads it.  The switch is made right as libedit lets go of the terminal
 * and right before it takes it again, so that no key lands in between. */
static void tty_quiet(void) {
  struct termios t;
  if (!R.tio_saved) return;
  t = R.tio;
  t.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
  tcsetattr(0, TCSADRAIN, &t);
}

static void tty_normal(void) {
  if (R.tio_saved) tcsetattr(0, TCSADRAIN, &R.tio);
}

/* Installs the line editor: raw mode, and the prompt on screen. */
static void editor_start(void) {
  if (R.tty) {
    if (!R.at_bol) fputc('\n', stdout);
    fflush(stdout);
    tty_normal(); /* libedit takes its cooked modes from the terminal */
    rl_callback_handler_install(R.chunk ? PROMPT2 : PROMPT1, line_cb);
    R.fresh = 1;
    fflush(stdout);
    R.editing = 1;
    R.hidden = 0;
    R.at_bol = 1;
  }
  ev_io_start(R.loop, &R.in);
}

/* Puts the editor away: cooked mode, stdin not watched. */
static void editor_stop(void) {
  if (R.editing) {
    rl_callback_handler_remove();
    tty_quiet();
    R.editing = 0;
    R.hidden = 0;
  }
  ev_io_stop(R.loop, &R.in);
}

static void tty_cb(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  /* A SIGINT whose handler ran after this iteration's poll: its keys came
   * after Ctrl+C, so the line is reset before they are read. */
  if (R.sigpending) sigint_cb(loop, &R.sigint, 0);
  if (!R.editing) return;
  redraw(); /* libedit draws keys on the display it believes is there */
  rl_callback_read_char();
  R.fresh = 0;
  if (R.nlines > 0 || R.eof) {
    /* libedit has already shown a fresh prompt for the next line; the
     * REPL shows it when that line is wanted, so erase it. */
    if (R.nlines > 0) {
      fputs("\r\033[K", stdout);
      fflush(stdout);
    }
    editor_stop();
    ml_state_stop(R.S); /* back to ml__repl_main */
  }
}

/* stdin not a terminal: reads bytes and cuts them into lines. */
static void pipe_cb(struct ev_loop *loop, ev_io *w, int revents) {
  ssize_t r;
  size_t i, start = 0;
  (void)loop;
  (void)w;
  (void)revents;
  if (R.rcap - R.rlen < 4096) {
    size_t cap = R.rcap ? R.rcap * 2 : 8192;
    char *nb = realloc(R.rbuf, cap);
    if (nb == NULL) {
      R.eof = 1;
      goto out;
    }
    R.rbuf = nb;
    R.rcap = cap;
  }
  r = read(0, R.rbuf + R.rlen, R.rcap - R.rlen);
  if (r < 0) {
    if (errno == EINTR || errno == EAGAIN) return;
    R.eof = 1;
  } else if (r == 0) {
    R.eof = 1;
    if (R.rlen > 0) {
      R.rbuf[R.rlen] = '\n';
      r = 1;
    }
  }
  if (r > 0) {
    size_t end = R.rlen + (size_t)r;
    for (i = R.rlen; i < end; i++) {
      if (R.rbuf[i] == '\n') {
        char *l = strndup(R.rbuf + start, i - start);
        if (l == NULL || push_line(l) < 0) R.eof = 1;
        start = i + 1;
      }
    }
    R.rlen = end - start;
    if (start > 0 && R.rlen > 0) memmove(R.rbuf, R.rbuf + start, R.rlen);
  }
out:
  if (R.nlines > 0 || R.eof) {
    editor_stop();
    ml_state_stop(R.S);
  }
}

/* ---------------------------------------------------------------- */
/* Running inputs.                                                    */

/* [-0, +0] writes a message line to stderr. */
static void say(const char *msg) {
  out_begin();
  if (!R.at_bol) fputc('\n', stdout);
  fflush(stdout);
  fprintf(stderr, "%s\n", msg);
  R.at_bol = 1;
}

/* Prints its arguments tab-separated (the input's results).  Protected. */
static int print_results(lua_State *L) {
  int i, n = lua_gettop(L);
  luaL_Buffer b;
  for (i = 1; i <= n; i++) {
    ml__pretty(L, i, 1);
    lua_replace(L, i);
  }
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, i);
    luaL_addvalue(&b);
    luaL_addchar(&b, i < n ? '\t' : '\n');
  }
  luaL_pushresult(&b);
  out_begin();
  fwrite(lua_tostring(L, -1), 1, lua_rawlen(L, -1), stdout);
  fflush(stdout);
  R.at_bol = 1;
  return 0;
}

/* Formats an input's error: the value (args: error, traceback or nil)
 * rendered like a result, then the traceback.  Protected.  [-0, +1] */
static int format_error(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING || luaL_getmetafield(L, 1, "__tostring") != LUA_TNIL)
    luaL_tolstring(L, 1, NULL);
  else ml__pretty(L, 1, 1);
  if (lua_isstring(L, 2)) {
    /* The task's own base frame is left out already (the core's
     * ml__traceback). */
    lua_pushliteral(L, "\n");
    lua_pushvalue(L, 2);
    lua_concat(L, 3);
  }
  return 1;
}

/* Prints how the input task f ended.  [-0, +0] */
static void report(lua_State *L, ml_Future *f) {
  int top = lua_gettop(L), n;
  switch (ml_future_state(f)) {
  case ML_FUTURE_RESULT:
    lua_pushcfunction(L, print_results);
    n = ml_future_push_result(L, f);
    if (n < 0) say("moonloop: the result cannot be read: not enough memory");
    else if (n > 0 && lua_pcall(L, n, 0, 0) != LUA_OK)
      say(lua_pushfstring(L, "error printing the result: %s",
                          lua_tostring(L, -1) ? lua_tostring(L, -1) : "?"));
    break;
  case ML_FUTURE_CANCELLED: say(R.interrupted ? "KeyboardInterrupt" : "CancelledError"); break;
  case ML_FUTURE_ERROR:
    /* format_error(error, traceback); reading the error retrieves it. */
    lua_pushcfunction(L, format_error);
    if (ml_future_push_error(L, f) != ML_OK || ml_future_push_traceback(L, f) != ML_OK ||
        lua_pcall(L, 2, 1, 0) != LUA_OK || !lua_isstring(L, -1)) {
      lua_settop(L, top);
      lua_pushliteral(L, "(error object cannot be printed)");
    }
    say(lua_tostring(L, -1));
    break;
  }
  lua_settop(L, top);
}

/* Runs the function on top of the stack as a task, and the loop until it
 * is done (or the user leaves).  [-1, +0] */
static void run_input(ml_State *S) {
  lua_State *L = ml_state_lua(S);
  ml_Future *t;
  int deadlocks = 0, rc;
  if (ml_task_spawn(L, 0, "repl", &t) != ML_OK) {
    say(ml_state_error(S));
    return;
  }
  R.input = t;
  R.interrupted = 0;
  if (R.sigpending) {
    /* Ctrl+C between Enter and now: the input never starts. */
    R.sigpending = 0;
    interrupt_input(L);
  }
  while (ml_future_state(t) == ML_FUTURE_PENDING && !R.quit) {
    rc = ml_state_run_until(S, t);
    if (rc == -EDEADLK) {
      /* Nothing can ever complete what it awaits: cancel rather than hang. */
      if (deadlocks++ == 0) {
        say("moonloop: this input awaits something that nothing is left to complete; "
            "cancelling it");
        ml_future_cancel(L, t, NULL);
      } else {
        say("moonloop: the input ignored its cancellation; it is left as a background task");
        break;
      }
    } else if (rc < 0) {
      say(lua_pushfstring(L, "moonloop: %s; the input is left as a background task",
                          ml_state_error(S)));
      lua_pop(L, 1);
      break;
    }
  }
  R.input = NULL;
  if (!R.quit && ml_future_state(t) != ML_FUTURE_PENDING) report(L, t);
  ml_future_release(L, t);
}

/* Appends line to the history, and saves the history file. */
static void remember(const char *text) {
  if (!R.tty || *text == '\0') return;
  add_history(text);
  if (R.histfile) write_history(R.histfile);
}

/* Handles one line: compiles and runs it, or keeps it for more. */
static void handle_line(ml_State *S, char *line) {
  char *text;
  switch (ml__repl_split(S, &R.chunk, line, CHUNKNAME, &text)) {
  case ML_SPLIT_MORE: return; /* more lines on the ">>" prompt */
  case ML_SPLIT_NOMEM: say("moonloop: not enough memory"); return;
  case ML_SPLIT_ERROR:
    remember(text);
    free(text);
    say(ml_state_error(S));
    return;
  default: /* ML_SPLIT_RUN */
    remember(text);
    free(text);
    run_input(S);
  }
}

/* ---------------------------------------------------------------- */
/* Set-up and the main cycle.                                         */

static void winch_cb(struct ev_loop *loop, ev_signal *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  if (R.editing) rl_resize_terminal();
}

/* [-0, +0] replaces os.exit (the os table at idx) by repl_os_exit. */
static void wrap_exit(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_getfield(L, idx, "exit") != LUA_TFUNCTION) {
    lua_pop(L, 1);
    return;
  }
  if (ml_load_string(L, exit_src, sizeof exit_src - 1, "=repl") != ML_OK)
    luaL_error(L, "%s", ml_state_error(ml_state_from_lua(L)));
  lua_call(L, 0, 2); /* [original, current_task, park] */
  lua_pushcclosure(L, repl_os_exit, 3);
  lua_setfield(L, idx, "exit");
}

/* Installs the output wrappers and os.exit; raises on failure (memory),
 * so it runs in protected mode.  [-0, +0] */
static int install_wrappers(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  wrap_field(L, -1, "print", repl_print);
  if (lua_getfield(L, -1, "io") == LUA_TTABLE) wrap_field(L, -1, "write", repl_io_write);
  lua_pop(L, 1);
  if (lua_getfield(L, -1, "os") == LUA_TTABLE) wrap_exit(L, -1);
  lua_pop(L, 2);
  if (luaL_getmetatable(L, LUA_FILEHANDLE) == LUA_TTABLE) {
    if (lua_getfield(L, -1, "__index") == LUA_TTABLE) wrap_field(L, -1, "write", repl_file_write);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 0;
}

/* [-0, +0] puts back t[name] (t at idx) if it is still the wrapper f. */
static void unwrap_field(lua_State *L, int idx, const char *name, lua_CFunction f) {
  int top = lua_gettop(L);
  idx = lua_absindex(L, idx);
  if (lua_getfield(L, idx, name) == LUA_TFUNCTION && lua_tocfunction(L, -1) == f &&
      lua_getupvalue(L, -1, 1) != NULL)
    lua_setfield(L, idx, name);
  lua_settop(L, top);
}

/* Puts back what install_wrappers replaced.  [-0, +0] */
static void remove_wrappers(lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  unwrap_field(L, -1, "print", repl_print);
  if (lua_getfield(L, -1, "io") == LUA_TTABLE) unwrap_field(L, -1, "write", repl_io_write);
  lua_pop(L, 1);
  if (lua_getfield(L, -1, "os") == LUA_TTABLE) unwrap_field(L, -1, "exit", repl_os_exit);
  lua_pop(L, 2);
  if (luaL_getmetatable(L, LUA_FILEHANDLE) == LUA_TTABLE) {
    if (lua_getfield(L, -1, "__index") == LUA_TTABLE) unwrap_field(L, -1, "write", repl_file_write);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void setup_editor(void) {
  const char *h = getenv("MOONLOOP_HISTORY"), *home = getenv("HOME");
  rl_readline_name = "moonloop";
  rl_catch_signals = 0; /* libedit's handlers would re-raise at the group */
  rl_instream = stdin;
  rl_outstream = stdout;
  rl_initialize();
  using_history();
  stifle_history(HISTORY_MAX);
  ml__complete_install(ml_state_lua(R.S));
  if (h == NULL && home && *home) {
    size_t n = strlen(home) + sizeof "/.moonloop_history";
    if ((R.histfile = malloc(n)) != NULL) snprintf(R.histfile, n, "%s/.moonloop_history", home);
  } else if (h && *h) {
    R.histfile = strdup(h);
  }
  if (R.histfile) read_history(R.histfile);
}

/* Runs the REPL on S (its globals and tasks as the script left them) until
 * the user leaves with Ctrl+D / end of input (returns 0) or os.exit(code)
 * (returns code).  It owns SIGINT, stdin and the error handler while it
 * runs, and puts them back before returning; the tasks left are the
 * caller's to cancel (ml_state_close does). */
int ml__repl_main(ml_State *S) {
  lua_State *L = ml_state_lua(S);
  struct sigaction sa;
  char *line;
  const char *why;

  memset(&R, 0, sizeof R);
  R.S = S;
  R.loop = ml_state_loop(S);
  R.tty = isatty(0);
  if (R.tty && (why = ml__edit_load()) != NULL) {
    fprintf(stderr, "moonloop: no line editing (%s)\n", why);
    R.tty = 0; /* reads plain lines, as from a pipe */
  }
  R.at_bol = 1;
  if (R.tty) {
    R.tio_saved = tcgetattr(0, &R.tio) == 0;
    setup_editor();
    printf("moonloop %s (%s) -- top-level await works; Ctrl+D leaves\n", MOONLOOP_VERSION,
           LUA_RELEASE);
  }
  ev_io_init(&R.in, R.tty ? tty_cb : pipe_cb, 0, EV_READ);
  ev_prepare_init(&R.redraw, redraw_cb);
  ev_prepare_start(R.loop, &R.redraw);
  ev_unref(R.loop);
  ev_async_init(&R.sigint, sigint_cb);
  ev_set_priority(&R.sigint, EV_MAXPRI);
  ev_async_start(R.loop, &R.sigint);
  ev_unref(R.loop);
  ev_signal_init(&R.winch, winch_cb, SIGWINCH);
  if (R.tty) {
    ev_signal_start(R.loop, &R.winch);
    ev_unref(R.loop);
  }
  /* The REPL owns SIGINT while it runs (main.c's handler cancels the main
   * task and exits on the second one, which is not what a prompt wants). */
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &R.old_sigint);
  R.old_on_error = ml_state_error_handler(S, &R.old_on_error_ud);
  ml_state_set_error_handler(S, repl_on_error, NULL);
  lua_pushcfunction(L, install_wrappers);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    say(lua_tostring(L, -1) ? lua_tostring(L, -1) : "moonloop: the REPL cannot start");
    lua_pop(L, 1);
    R.quit = 1;
    R.status = 1;
  }

  while (!R.quit) {
    if ((line = pop_line()) != NULL) {
      handle_line(S, line);
      continue;
    }
    if (R.eof) break;
    editor_start();
    while (R.nlines == 0 && !R.eof && !R.quit) {
      if (ml_state_run(S) < 0) {
        /* The loop cannot run (memory, in the scheduler's own
         * bookkeeping): leave, with the reason. */
        editor_stop();
        say(lua_pushfstring(L, "moonloop: %s", ml_state_error(S)));
        lua_pop(L, 1);
        R.quit = 1;
        R.status = 1;
      }
    }
    editor_stop();
  }
  if (R.tty && !R.quit) fputc('\n', stdout);
  fflush(stdout);
  tty_normal();

  remove_wrappers(L);
  ml_state_set_error_handler(S, R.old_on_error, R.old_on_error_ud);
  sigaction(SIGINT, &R.old_sigint, NULL);
  ev_ref(R.loop);
  ev_prepare_stop(R.loop, &R.redraw);
  ev_ref(R.loop);
  ev_async_stop(R.loop, &R.sigint);
  if (R.tty) {
    ev_ref(R.loop);
    ev_signal_stop(R.loop, &R.winch);
  }
  while ((line = pop_line()) != NULL) free(line);
  free(R.lines);
  free(R.chunk);
  free(R.rbuf);
  free(R.histfile);
  ml__complete_free();
  return R.quit ? R.status : 0;
}
