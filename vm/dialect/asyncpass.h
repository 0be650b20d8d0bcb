/* asyncpass.h: the async/await source pass (asyncpass.c) and the byte
 * buffer it writes (buf.c), usable without lua.h. */
#ifndef ML_ASYNCPASS_H
#define ML_ASYNCPASS_H

#include <stddef.h>

/* A growable byte buffer; a zeroed one is empty and valid. */
typedef struct ml_Buf {
  char *data;
  size_t len, cap;
} ml_Buf;

/* Appends n bytes; returns 0 or -ENOMEM.  data stays NUL-terminated. */
int ml__buf_add(ml_Buf *b, const char *s, size_t n);
void ml__buf_free(ml_Buf *b);
/* Appends the whole file at path (NULL: standard input, which is not
 * closed) to b: the one file reader of moonloop (the loader, ml_load_file,
 * ml_file_read).  Returns 0, or -errno with *failed (if failed is not
 * NULL) set to "open" or "read", for the message "cannot open x: ...";
 * on failure b holds what it held before, or more. */
int ml__buf_read_file(ml_Buf *b, const char *path, const char **failed);

/* Lua 5.4's reserved words, alphabetical, ending with NULL.  "async" and
 * "await" are contextual keywords, not reserved: they are not in it. */
extern const char *const ml__lua_keywords[];

/* Translates the dialect in src[0..len) to plain Lua 5.4, appended to
 * out, keeping every token on its line (same number of lines).  chunkname
 * is used in error messages ("file.lua"; a leading '@' or '=' is dropped).
 * Returns 0; or -EINVAL with a Lua-style message in err ("file.lua:3:
 * 'function' expected after 'async' near 'x'"); or -ENOMEM.  On error out
 * is left as it was.  The output refers to four globals: `await` (a call
 * `await(e)`), `__awcall(f, ...)` and `__awmeth(o, "m", ...)` (an awaited
 * call, run with no Coroutine object) and `__ml_async(name, fn)`.  See docs/language.md. */
int ml__asyncpass(const char *src, size_t len, const char *chunkname, ml_Buf *out, char *err,
                  size_t errsz);
/* The same, and appends to names (if not NULL) one line per __awcall
 * made, "LINE\tWHAT\n", WHAT naming its callee as Lua's error messages
 * do: "field 'x'" for a.b.x, "'x'" for a name x (local, upvalue or
 * global: the runtime tells), empty for anything else.  The runtime uses
 * it to say what was nil when an awaited call fails: `await
 * asyncio.typo()` reads "attempt to call a nil value (field 'typo')". */
int ml__asyncpass_names(const char *src, size_t len, const char *chunkname, ml_Buf *out,
                        ml_Buf *names, char *err, size_t errsz);

#endif
