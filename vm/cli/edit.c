/* edit.c: loads libedit for the REPL on first use (edit.h says why). */
#include <dlfcn.h>
#include <string.h>
#include "edit.h"

ml_Edit ml__edit;

static char load_error[320];
static int loaded;

const char *ml__edit_load(void) {
#define ML_EDIT_NAME(f) #f,
  static const char *const names[] = {ML_EDIT_FUNCS(ML_EDIT_NAME) ML_EDIT_VARS(ML_EDIT_NAME)};
#undef ML_EDIT_NAME
  void *addr[sizeof names / sizeof *names];
  void *h;
  _Static_assert(sizeof ml__edit == sizeof addr, "ml_Edit is the two lists");
  if (loaded) return load_error[0] ? load_error : NULL;
  loaded = 1; /* the REPL is the CLI's main thread's: no race */
  h = dlopen("libedit.so.2", RTLD_NOW | RTLD_LOCAL);
  if (h == NULL) {
    snprintf(load_error, sizeof load_error, "cannot load libedit (install libedit2): %s",
             dlerror());
    return load_error;
  }
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    if ((addr[i] = dlsym(h, names[i])) == NULL) {
      snprintf(load_error, sizeof load_error, "libedit.so.2 has no %s", names[i]);
      return load_error;
    }
  }
  memcpy(&ml__edit, addr, sizeof addr);
  return NULL;
}
