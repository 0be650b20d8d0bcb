/* fuzz_asyncpass.c: a libFuzzer target for the async/await source pass.
 * Properties checked on every input: the pass never crashes or reads out
 * of bounds (ASan), a successful pass keeps the line count, an input that
 * is plain Lua with no `async`/`await` comes out unchanged, and the
 * output, fed to Lua's own parser, never crashes it.
 * Run with `make fuzz` (clang's -fsanitize=fuzzer,address,undefined). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "dialect/asyncpass.h"

/* Lines as Lua counts them: \n, \r, \r\n and \n\r each end one. */
static size_t count_lines(const char *s, size_t n) {
  size_t i, lines = 0;
  for (i = 0; i < n; i++) {
    if (s[i] == '\n' || s[i] == '\r') {
      if (i + 1 < n && (s[i + 1] == '\n' || s[i + 1] == '\r') && s[i + 1] != s[i]) i++;
      lines++;
    }
  }
  return lines;
}

static int mentions_keywords(const char *s, size_t n) {
  return memmem(s, n, "async", 5) != NULL || memmem(s, n, "await", 5) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *src = (const char *)data;
  ml_Buf out = {0};
  char err[256];
  static lua_State *L;
  int rc = ml__asyncpass(src, size, "fuzz", &out, err, sizeof err);
  if (rc == 0) {
    /* A leading BOM is dropped and a '#' first line gets "--": both keep
     * the line count. */
    if (count_lines(out.data ? out.data : "", out.len) != count_lines(src, size)) abort();
    if (!mentions_keywords(src, size) && size > 0 && src[0] != '#' &&
        !(size >= 3 && memcmp(src, "\xEF\xBB\xBF", 3) == 0) &&
        (out.len != size || memcmp(out.data, src, size) != 0))
      abort();
    if (L == NULL) L = luaL_newstate();
    luaL_loadbufferx(L, out.data ? out.data : "", out.len, "=fuzz", "t"); /* must not crash */
    lua_settop(L, 0);
  } else if (rc != -22 /* EINVAL */ && rc != -12 /* ENOMEM */) {
    abort();
  }
  ml__buf_free(&out);
  return 0;
}
