/* repl.c: placeholder until the interactive REPL lands (issue 5). */
#include <stdio.h>
#include "internal.h"
int ml__repl_main(ml_State *S) {
  (void)S;
  fprintf(stderr, "moonloop: the interactive REPL is not built yet\n");
  return 1;
}
