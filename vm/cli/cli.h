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

#endif
