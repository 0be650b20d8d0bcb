/* repl_split.c: a libFuzzer target for the REPL's input splitter,
 * ml__repl_split (vm/cli/split.c; issue #19).  The input is the text
 * typed at the prompt: its lines (split at '\n', and at NUL, which a
 * line from libedit cannot hold) are fed one by one, as the REPL feeds
 * them.  Properties, beyond never crashing or reading out of bounds
 * (ASan/UBSan) and no leak (LeakSanitizer):
 *   - MORE: the chunk so far is the lines since the last input, joined by
 *     '\n', and compiling it fails at "<eof>" (a prefix, not an error);
 *   - RUN: exactly one function is pushed, and the text is those lines;
 *   - ERROR: a real syntax error: the message does not end at "<eof>",
 *     the text compiled again fails again, and nothing is pushed;
 *   - the stack is otherwise untouched.
 * Nothing compiled is run.  Run with `make fuzz`; the seed corpus is
 * tests/fuzz/repl_split/. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"

static ml_State *S;

static void fail(const char *what, const char *text) {
  fprintf(stderr, "repl_split: %s\n--- text ---\n%s\n--- message ---\n%s\n", what,
          text ? text : "(none)", ml_state_error(S));
  abort();
}

static int ends_at_eof(const char *msg) {
  size_t n = strlen(msg);
  return n >= 5 && strcmp(msg + n - 5, "<eof>") == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lua_State *L;
  char *pending = NULL, *joined;
  size_t i = 0, jlen = 0;
  if (S == NULL && (S = ml_state_new(NULL)) == NULL) abort();
  if (size > 8192) return 0;
  L = ml_state_lua(S);
  lua_settop(L, 0);
  joined = malloc(size + 1); /* what the lines since the last input make */
  if (joined == NULL) abort();
  joined[0] = '\0';
  while (i <= size) {
    size_t j = i;
    while (j < size && data[j] != '\n' && data[j] != '\0') j++;
    if (j == size && i == size && pending == NULL) break; /* no last empty line */
    char *line = malloc(j - i + 1), *text = NULL;
    if (line == NULL) abort();
    memcpy(line, data + i, j - i);
    line[j - i] = '\0';
    if (jlen > 0 || pending != NULL) joined[jlen++] = '\n';
    memcpy(joined + jlen, line, j - i);
    jlen += j - i;
    joined[jlen] = '\0';
    int rc = ml__repl_split(S, &pending, line, "=stdin", &text);
    switch (rc) {
    case ML_SPLIT_MORE:
      if (lua_gettop(L) != 0) fail("MORE pushed something", pending);
      if (pending == NULL || strcmp(pending, joined) != 0)
        fail("MORE: the chunk is not the lines typed", pending);
      if (ml_load_string(L, pending, strlen(pending), "=stdin") != -EINVAL ||
          !ends_at_eof(ml_state_error(S)))
        fail("MORE on a chunk that is not a prefix", pending);
      break;
    case ML_SPLIT_RUN:
      if (pending != NULL) fail("RUN left a pending chunk", pending);
      if (lua_gettop(L) != 1 || !lua_isfunction(L, 1))
        fail("RUN without exactly one function pushed", text);
      if (strcmp(text, joined) != 0) fail("RUN: the text is not the lines typed", text);
      break;
    case ML_SPLIT_ERROR:
      if (pending != NULL) fail("ERROR left a pending chunk", pending);
      if (lua_gettop(L) != 0) fail("ERROR pushed something", text);
      if (ends_at_eof(ml_state_error(S))) fail("ERROR on a chunk that only ends early", text);
      if (strcmp(text, joined) != 0) fail("ERROR: the text is not the lines typed", text);
      if (ml_load_string(L, text, strlen(text), "=stdin") == ML_OK)
        fail("ERROR on a chunk that compiles", text);
      break;
    default: fail("unexpected result (out of memory?)", NULL);
    }
    if (rc != ML_SPLIT_MORE) {
      free(text);
      jlen = 0;
      joined[0] = '\0';
    }
    lua_settop(L, 0);
    i = j + 1;
  }
  free(pending);
  free(joined);
  return 0;
}
