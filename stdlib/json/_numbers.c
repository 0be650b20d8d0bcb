/* _numbers.c: how lua-cjson (the json module's engine, Debian's
 * liblua5.4-cjson.a linked in whole) reads and writes numbers.
 *
 * lua-cjson 2.1 was written for Lua 5.1: it writes every number through a
 * double with 14 significant digits (2^53 becomes 9.007199254741e+15, 0.1
 * + 0.2 becomes 0.3) and reads every number back as a float.  Python's json
 * round-trips both integers and floats, and so must ours: an id in a JSON
 * API is an integer.  The Makefile renames four symbols in lua_cjson.o
 * (objcopy --redefine-sym) to the functions below, which are otherwise the
 * same calls:
 *
 *   lua_tonumberx  -> ml__json_tonumberx   (encoding: the value to write)
 *   fpconv_g_fmt   -> ml__json_fmt         (encoding: its text)
 *   fpconv_strtod  -> ml__json_strtod      (decoding: a number token)
 *   lua_pushnumber -> ml__json_pushnumber  (decoding: the value pushed)
 *
 * lua-cjson calls each pair back to back (json_append_number: tonumber
 * then fmt; json_next_token then json_process_value: strtod then push), so
 * the exact integer travels beside the double in a per-thread slot: an
 * integer is written as one (all 64 bits), an integer token is pushed as a
 * Lua integer when it fits, and a float is written with the fewest digits
 * that read back as the same double (%.17g at most, as Python's repr). */
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include "core/module.h"

/* strbuf.c and fpconv.c print to stderr before they abort (out of
 * memory), through a PC-relative reference that cannot reach libc's
 * stderr from a shared object: the Makefile points it here. */
__attribute__((visibility("hidden"))) FILE *ml__json_stderr;
__attribute__((constructor)) static void init_stderr(void) { ml__json_stderr = stderr; }

/* lua-cjson's own (fpconv.c), which handle the locale's decimal point. */
double fpconv_strtod(const char *nptr, char **endptr);

int ml__json_fmt(char *str, double num, int precision);
double ml__json_strtod(const char *nptr, char **endptr);
void ml__json_pushnumber(lua_State *L, lua_Number n);
lua_Number ml__json_tonumberx(lua_State *L, int idx, int *isnum);

/* The integer beside the double lua-cjson is handling, if it is one. */
static __thread struct {
  int valid;
  lua_Integer i;
} slot;

lua_Number ml__json_tonumberx(lua_State *L, int idx, int *isnum) {
  slot.valid = lua_isinteger(L, idx);
  if (slot.valid) slot.i = lua_tointeger(L, idx);
  return lua_tonumberx(L, idx, isnum);
}

/* Writes num into str (lua-cjson gives 32 bytes); returns the length. */
int ml__json_fmt(char *str, double num, int precision) {
  char point = localeconv()->decimal_point[0];
  int len, p;
  (void)precision;
  if (slot.valid && (double)slot.i == num) {
    slot.valid = 0;
    return snprintf(str, 32, "%lld", (long long)slot.i);
  }
  slot.valid = 0;
  for (p = 15;; p++) {
    len = snprintf(str, 32, "%.*g", p, num);
    if (p == 17) break;
    if (point != '.') {
      char *c = strchr(str, point);
      if (c) *c = '.';
    }
    if (fpconv_strtod(str, NULL) == num) return len;
  }
  if (point != '.') {
    char *c = strchr(str, point);
    if (c) *c = '.';
  }
  return len;
}

double ml__json_strtod(const char *nptr, char **endptr) {
  double d = fpconv_strtod(nptr, endptr);
  const char *s = nptr, *end = endptr ? *endptr : NULL;
  slot.valid = 0;
  if (*s == '-') s++;
  if (end && s < end && strspn(s, "0123456789") == (size_t)(end - s)) {
    char *e;
    long long v;
    errno = 0;
    v = strtoll(nptr, &e, 10);
    if (errno == 0 && e == end) {
      slot.valid = 1;
      slot.i = v;
    }
  }
  return d;
}

void ml__json_pushnumber(lua_State *L, lua_Number n) {
  if (slot.valid && (double)slot.i == n) {
    slot.valid = 0;
    lua_pushinteger(L, slot.i);
    return;
  }
  slot.valid = 0;
  lua_pushnumber(L, n);
}
