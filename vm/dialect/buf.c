/* buf.c: the growable byte buffer (ml_Buf) shared by the vm/ files, and
 * the file reader that fills one. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asyncpass.h"

/* Appends s[0..n) to b, growing it geometrically; data stays
 * NUL-terminated, also after ml__buf_add(b, NULL, 0) on an empty buffer.
 * Returns 0, or -ENOMEM (b is unchanged then).  A zeroed ml_Buf is a valid
 * empty buffer; the caller owns data and releases it with ml__buf_free. */
int ml__buf_add(ml_Buf *b, const char *s, size_t n) {
  if (n > SIZE_MAX - 1 - b->len) return -ENOMEM;
  size_t need = b->len + n + 1; /* + the terminating NUL */
  if (need > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (p == NULL) return -ENOMEM;
    b->data = p;
    b->cap = cap;
  }
  if (n > 0) memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

int ml__buf_read_file(ml_Buf *b, const char *path, const char **failed) {
  FILE *f = path ? fopen(path, "rb") : stdin;
  char chunk[16384];
  size_t n;
  int rc = 0;
  if (failed) *failed = "open";
  if (f == NULL) return errno ? -errno : -EIO;
  if (failed) *failed = "read";
  while (rc == 0 && (n = fread(chunk, 1, sizeof chunk, f)) > 0) rc = ml__buf_add(b, chunk, n);
  if (rc == 0 && ferror(f)) rc = errno ? -errno : -EIO;
  if (f != stdin) fclose(f);
  return rc;
}

/* Releases the bytes of b and leaves it a valid empty buffer. */
void ml__buf_free(ml_Buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}
