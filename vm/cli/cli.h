/* cli.h: what the files of the moonloop command (main.c, repl.c,
 * pretty.c, complete.c, split.c) share.  None of it is in libmoonloop: the command
 * is a client of the embedding API (moonloop.h) like any host. */
#ifndef ML_CLI_H
#define ML_CLI_H

#include <ev.h>
#include <lua.h>
#include <lauxlib.h>
#include "moonloop.h"

/* Runs the interactive REPL on S's loop until Ctrl+D or os.exit();
 * returns the exit status.  S's loop must not be running. */
int ml__repl_main(ml_State *S);
/* [-0, +1] pushes a readable rendering of the value at idx (tables
 * depth-limited and cycle-safe); raw_string prints strings unquoted. */
void ml__pretty(lua_State *L, int idx, int raw_string);
/* Tab completion for libedit over the globals of L (libedit's state is
 * process-wide: the REPL is the CLI's, never a host's). */
void ml__complete_install(lua_State *L);
void ml__complete_free(void);

/* The REPL's input splitter (split.c): feeds one line of input (taken:
 * kept in *pending or freed) to the chunk being typed, *pending (NULL
 * when none).  Returns ML_SPLIT_MORE when the chunk so far is a prefix of
 * something that may still compile (Lua's "<eof>" errors): the caller
 * asks for another line.  Otherwise *pending is NULL again and *text is
 * the whole input, for the history (the caller frees it), and either
 * ML_SPLIT_RUN, with the compiled chunk pushed on S's stack (a line that
 * is an expression compiles as "return LINE"; "=x" as "return x"), or
 * ML_SPLIT_ERROR, a real syntax error, whose message is ml_state_error(S).
 * ML_SPLIT_NOMEM: out of memory, the input dropped, *text not set.
 * tests/fuzz/repl_split.c fuzzes it. */
enum { ML_SPLIT_RUN, ML_SPLIT_MORE, ML_SPLIT_ERROR, ML_SPLIT_NOMEM };
int ml__repl_split(ml_State *S, char **pending, char *line, const char *chunkname, char **text);

/* `moonloop --workers N` (workers.c). */
typedef struct ml_Supervise {
  int workers;               /* N >= 1 */
  double grace;              /* seconds a stopping worker gets before SIGKILL */
  double ready_timeout;      /* seconds a starting worker gets to be ready, 0: no limit */
  const char *const *listen; /* --listen specs */
  int nlisten;
  char **argv; /* what each worker runs: moonloop's argv without the supervisor's options */
} ml_Supervise;
/* Runs the supervisor until it is told to stop (SIGTERM, SIGINT) and
 * every worker has ended; returns the exit status: 0 if they all
 * stopped cleanly, 1 otherwise (or if the service could not start). */
int ml__supervise(const ml_Supervise *o);
/* In a process the supervisor started: fills w (its listening fds in
 * fds, at most cap), the grace period and the lifeline fd from the
 * environment, removes those variables, and returns 1; returns 0 (the
 * variables removed all the same) in any other process. */
int ml__worker_env(ml_Worker *w, int *fds, int cap, double *grace, int *lifeline);
/* "10s", "500ms", "2m", "1h" or plain seconds -> seconds, or -1. */
double ml__parse_duration(const char *s);
/* The CPUs this process may run on. */
int ml__cpu_count(void);

#endif
