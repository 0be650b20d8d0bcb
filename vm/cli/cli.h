/* cli.h: what the files of the moonloop command (main.c, repl.c,
 * pretty.c, complete.c) share.  None of it is in libmoonloop: the command
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

#endif
