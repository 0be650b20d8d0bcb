/* split.c: the REPL's input splitter, where one line ends an input and
 * where it asks for more (cli.h says the contract).  It is the REPL's
 * only use of the compiler, kept apart from libedit so that
 * tests/fuzz/repl_split.c can fuzz it with nothing but moonloop.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "cli.h"

#define EOFMARK "<eof>"

/* 1 if the failure of ml_load_string (rc) means "the chunk is not
 * finished yet": Lua's message ends at "<eof>". */
static int incomplete(ml_State *S, int rc) {
  size_t lmsg, lmark = sizeof(EOFMARK) - 1;
  const char *msg = ml_state_error(S);
  if (rc != -EINVAL) return 0;
  lmsg = strlen(msg);
  return lmsg >= lmark && strcmp(msg + lmsg - lmark, EOFMARK) == 0;
}

int ml__repl_split(ml_State *S, char **pending, char *line, const char *chunkname, char **text) {
  lua_State *L = ml_state_lua(S);
  int status;
  if (*pending == NULL) {
    const char *body = line;
    char *ret;
    if (line[0] == '=') body = line + 1; /* "= x", as Lua 5.1 took it */
    if ((ret = malloc(strlen(body) + 8)) == NULL) goto oom;
    strcpy(ret, "return ");
    strcat(ret, body);
    status = ml_load_string(L, ret, strlen(ret), chunkname);
    free(ret);
    if (status == ML_OK) {
      *text = line;
      return ML_SPLIT_RUN;
    }
    *pending = line;
  } else {
    size_t a = strlen(*pending), b = strlen(line);
    char *c = realloc(*pending, a + b + 2);
    if (c == NULL) goto oom;
    c[a] = '\n';
    memcpy(c + a + 1, line, b + 1);
    *pending = c;
    free(line);
  }
  line = NULL;
  status = ml_load_string(L, *pending, strlen(*pending), chunkname);
  if (incomplete(S, status)) return ML_SPLIT_MORE;
  *text = *pending;
  *pending = NULL;
  return status == ML_OK ? ML_SPLIT_RUN : ML_SPLIT_ERROR;
oom:
  free(line);
  free(*pending);
  *pending = NULL;
  return ML_SPLIT_NOMEM;
}
