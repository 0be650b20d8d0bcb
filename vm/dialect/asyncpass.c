/* asyncpass.c: the line-preserving source pass from the dialect (Lua 5.4 with
 * async/await) to plain Lua 5.4, run on every chunk before lua_load. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asyncpass.h"

/* How it works.  The whole chunk is cut into tokens by a Lua 5.4 lexer, so
 * that strings and comments are never mistaken for code.  One pass matches
 * brackets and blocks; a second finds the new forms and records edits:
 * byte ranges of the source to replace by new text (insertions are empty
 * ranges).  The output is the source with the edits applied, so everything
 * the edits do not touch -- comments, spacing, newlines -- is copied
 * verbatim, and an edit never adds or removes a line break.
 *
 * Lexical errors (an unfinished string, a malformed number) are left to
 * Lua: lexing stops there, the rest is copied verbatim, and lua_load
 * reports the error with its own message on the same line. */

/* ---------------------------------------------------------------- */
/* Tokens.                                                            */

enum { TK_EOF, TK_NAME, TK_KW, TK_NUM, TK_STR, TK_OP };

enum {
  K_AND,
  K_BREAK,
  K_DO,
  K_ELSE,
  K_ELSEIF,
  K_END,
  K_FALSE,
  K_FOR,
  K_FUNCTION,
  K_GOTO,
  K_IF,
  K_IN,
  K_LOCAL,
  K_NIL,
  K_NOT,
  K_OR,
  K_REPEAT,
  K_RETURN,
  K_THEN,
  K_TRUE,
  K_UNTIL,
  K_WHILE,
  NKW
};

/* The reserved words, in K_* order (alphabetical): the one list of them
 * in moonloop (the CLI reaches it through ml_dialect_keyword). */
const char *const ml__lua_keywords[NKW + 1] = {
  "and",      "break",  "do",   "else", "elseif", "end",   "false", "for",
  "function", "goto",   "if",   "in",   "local",  "nil",   "not",   "or",
  "repeat",   "return", "then", "true", "until",  "while", NULL};

/* Operators of more than one character; the others are their own char. */
enum { OP_CONCAT = 256, OP_DOTS, OP_EQ, OP_GE, OP_LE, OP_NE, OP_SHL, OP_SHR, OP_IDIV, OP_DBCOLON };

#define NOTYET (-2) /* Tok.opnd not computed yet */
#define EOZ (-1)    /* the end of the input, for cur() */

typedef struct Tok {
  int kind; /* TK_* */
  int code; /* TK_KW: a K_*; TK_OP: the char or an OP_* */
  size_t start, end;
  int line;  /* the line the token starts on */
  int match; /* opener: index of its closer ("end", ")"), or -1 */
  int opnd;  /* last token of an await operand starting here, or NOTYET */
} Tok;

typedef struct Edit {
  size_t pos, end;    /* replaces src[pos..end) */
  size_t text, ntext; /* by Pass.text.data[text..text+ntext) */
  int seq;            /* creation order, to keep equal positions stable */
} Edit;

typedef struct Pass {
  const char *src;
  size_t len;
  size_t p;   /* lexer position */
  int line;   /* lexer line */
  int lexerr; /* lexing stopped at a malformed token */
  Tok *tok;   /* the tokens, ending with a TK_EOF */
  int ntok, captok;
  Edit *ed;
  int ned, caped;
  ml_Buf text;       /* the replacement texts of the edits */
  const char *chunk; /* chunkname for messages */
  ml_Buf *names;     /* the callees of __awcall, or NULL: see ml__asyncpass_names */
  char *err;
  size_t errsz;
} Pass;

static int isalpha_(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
static int isdigit_(int c) { return c >= '0' && c <= '9'; }
static int isalnum_(int c) { return isalpha_(c) || isdigit_(c); }
static int isxdigit_(int c) {
  return isdigit_(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
static int isnl(int c) { return c == '\n' || c == '\r'; }
static int isspace_(int c) { return c == ' ' || c == '\t' || c == '\f' || c == '\v' || isnl(c); }

/* ---------------------------------------------------------------- */
/* The lexer: Lua 5.4's llex.c rules, decided the same way.           */

static int cur(const Pass *P) { return P->p < P->len ? (unsigned char)P->src[P->p] : EOZ; }
static int peek(const Pass *P, size_t k) {
  return P->p + k < P->len ? (unsigned char)P->src[P->p + k] : EOZ;
}

/* Skips one line break: "\n", "\r", "\n\r" or "\r\n", like Lua. */
static void newline(Pass *P) {
  int old = cur(P);
  P->p++;
  if (isnl(cur(P)) && cur(P) != old) P->p++;
  P->line++;
}

/* At '[' or ']': skips it and any '='s.  Returns the level + 2 if the same
 * bracket follows (which is not skipped), 1 for a lone bracket and 0 for
 * brackets with '='s but no second bracket (Lua's skip_sep). */
static size_t skip_sep(Pass *P) {
  int b = cur(P);
  size_t count = 0;
  P->p++;
  while (cur(P) == '=') {
    P->p++;
    count++;
  }
  return cur(P) == b ? count + 2 : (count == 0 ? 1 : 0);
}

/* At the second bracket of a long string or comment of level sep - 2:
 * skips to after its closing bracket.  Returns 0, or -1 if unfinished. */
static int read_long(Pass *P, size_t sep) {
  P->p++;
  for (;;) {
    int c = cur(P);
    if (c == EOZ) return -1;
    if (c == ']') {
      if (skip_sep(P) == sep) {
        P->p++;
        return 0;
      }
    } else if (isnl(c)) {
      newline(P);
    } else {
      P->p++;
    }
  }
}

/* At the opening quote: skips the short string.  Returns 0, or -1 if it is
 * unfinished or holds an invalid escape sequence. */
static int read_string(Pass *P) {
  int del = cur(P);
  P->p++;
  for (;;) {
    int c = cur(P), i;
    if (c == del) {
      P->p++;
      return 0;
    }
    if (c == EOZ || isnl(c)) return -1;
    P->p++;
    if (c != '\\') continue;
    c = cur(P);
    switch (c) {
    case 'a':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
    case 'v':
    case '\\':
    case '"':
    case '\'': P->p++; break;
    case '\n':
    case '\r': newline(P); break;
    case 'x':
      P->p++;
      for (i = 0; i < 2; i++, P->p++)
        if (!isxdigit_(cur(P))) return -1;
      break;
    case 'z':
      P->p++;
      while (isspace_(cur(P))) {
        if (isnl(cur(P))) newline(P);
        else P->p++;
      }
      break;
    case 'u': {
      unsigned long r = 0;
      int nd = 0;
      P->p++;
      if (cur(P) != '{') return -1;
      for (P->p++; isxdigit_(cur(P)); P->p++, nd++) {
        int d = cur(P);
        if (r > (0x7FFFFFFFul >> 4)) return -1; /* "UTF-8 value too large" */
        r = r * 16 + (unsigned long)(isdigit_(d) ? d - '0' : (d | 32) - 'a' + 10);
      }
      if (nd == 0 || cur(P) != '}') return -1;
      P->p++;
      break;
    }
    default: {
      int r = 0;
      if (!isdigit_(c)) return -1; /* also a backslash at the end of the input */
      for (i = 0; i < 3 && isdigit_(cur(P)); i++, P->p++) r = r * 10 + cur(P) - '0';
      if (r > 255) return -1;
    }
    }
  }
}

/* 1 if s[0..n) is a numeral Lua accepts (decimal or hex, integer or
 * float), which is what lua_stringtonumber decides for a lexed numeral. */
static int valid_numeral(const char *s, size_t n) {
  size_t i = 0, digits = 0;
  int hex = n >= 2 && s[0] == '0' && (s[1] | 32) == 'x';
  int (*isd)(int) = hex ? isxdigit_ : isdigit_;
  if (hex) i = 2;
  for (; i < n && isd((unsigned char)s[i]); i++) digits++;
  if (i < n && s[i] == '.')
    for (i++; i < n && isd((unsigned char)s[i]); i++) digits++;
  if (digits == 0) return 0;
  if (i < n && (s[i] | 32) == (hex ? 'p' : 'e')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    if (i == n || !isdigit_((unsigned char)s[i])) return 0;
    while (i < n && isdigit_((unsigned char)s[i])) i++;
  }
  return i == n;
}

/* At the first character of a numeral, which began at start (start is
 * before the position when a '.' came first).  Reads as greedily as Lua
 * does ("3..2" is one malformed numeral).  Returns 0, or -1 if malformed. */
static int read_numeral(Pass *P, size_t start) {
  int first = cur(P), e1 = 'e', e2 = 'E';
  P->p++;
  if (first == '0' && (cur(P) == 'x' || cur(P) == 'X')) {
    P->p++;
    e1 = 'p';
    e2 = 'P';
  }
  for (;;) {
    int c = cur(P);
    if (c == e1 || c == e2) {
      P->p++;
      if (cur(P) == '+' || cur(P) == '-') P->p++;
    } else if (isxdigit_(c) || c == '.') {
      P->p++;
    } else {
      break;
    }
  }
  if (isalpha_(cur(P))) return -1; /* a numeral touching a letter */
  return valid_numeral(P->src + start, P->p - start) ? 0 : -1;
}

/* Skips spaces, line breaks and comments.  Returns 0, or -1 at an
 * unfinished long comment (t then says where it began). */
static int skip_space(Pass *P, Tok *t) {
  for (;;) {
    int c = cur(P);
    if (isnl(c)) {
      newline(P);
    } else if (c == ' ' || c == '\t' || c == '\f' || c == '\v') {
      P->p++;
    } else if (c == '-' && peek(P, 1) == '-') {
      t->start = P->p;
      t->line = P->line;
      P->p += 2;
      if (cur(P) == '[') {
        size_t sep = skip_sep(P);
        if (sep >= 2) {
          if (read_long(P, sep) != 0) return -1;
          continue;
        }
      }
      while (cur(P) != EOZ && !isnl(cur(P))) P->p++;
    } else {
      return 0;
    }
  }
}

static int two(Pass *P, int next, int code, int single) {
  P->p++;
  if (cur(P) != next) return single;
  P->p++;
  return code;
}

/* Reads the next token into t.  Returns 0, or -1 at a malformed token
 * (t->start and t->line say where it began). */
static int lex(Pass *P, Tok *t) {
  int c;
  t->match = -1;
  t->opnd = NOTYET;
  if (skip_space(P, t) != 0) return -1;
  t->start = P->p;
  t->line = P->line;
  t->kind = TK_OP;
  t->code = c = cur(P);
  switch (c) {
  case EOZ: t->kind = TK_EOF; break;
  case '[': {
    size_t sep = skip_sep(P);
    if (sep >= 2) {
      t->kind = TK_STR;
      if (read_long(P, sep) != 0) return -1;
    } else if (sep == 0) {
      return -1; /* "invalid long string delimiter" */
    }
    break;
  }
  case '=': t->code = two(P, '=', OP_EQ, '='); break;
  case '/': t->code = two(P, '/', OP_IDIV, '/'); break;
  case '~': t->code = two(P, '=', OP_NE, '~'); break;
  case ':': t->code = two(P, ':', OP_DBCOLON, ':'); break;
  case '<':
    t->code = two(P, '=', OP_LE, '<');
    if (t->code == '<' && cur(P) == '<') {
      P->p++;
      t->code = OP_SHL;
    }
    break;
  case '>':
    t->code = two(P, '=', OP_GE, '>');
    if (t->code == '>' && cur(P) == '>') {
      P->p++;
      t->code = OP_SHR;
    }
    break;
  case '"':
  case '\'':
    t->kind = TK_STR;
    if (read_string(P) != 0) return -1;
    break;
  case '.':
    if (peek(P, 1) == '.') {
      P->p += peek(P, 2) == '.' ? 3 : 2;
      t->code = P->p - t->start == 3 ? OP_DOTS : OP_CONCAT;
    } else if (isdigit_(peek(P, 1))) {
      P->p++;
      t->kind = TK_NUM;
      if (read_numeral(P, t->start) != 0) return -1;
    } else {
      P->p++;
    }
    break;
  default:
    if (isdigit_(c)) {
      t->kind = TK_NUM;
      if (read_numeral(P, t->start) != 0) return -1;
    } else if (isalpha_(c)) {
      size_t n;
      int k;
      while (isalnum_(cur(P))) P->p++;
      n = P->p - t->start;
      t->kind = TK_NAME;
      for (k = 0; k < NKW; k++)
        if (strlen(ml__lua_keywords[k]) == n &&
            memcmp(ml__lua_keywords[k], P->src + t->start, n) == 0) {
          t->kind = TK_KW;
          t->code = k;
          break;
        }
    } else {
      P->p++; /* any other byte is a token of its own, as in Lua */
    }
  }
  t->end = P->p;
  return 0;
}

/* Cuts src[from..len) into P->tok, ending with a TK_EOF (placed at the
 * malformed token if lexing stopped early).  Returns 0, -ENOMEM, or
 * -EINVAL at a NUL byte outside strings and comments: Lua would refuse it
 * too, but its message says only "unexpected symbol" (a NUL token drops
 * the "near" part), and a message with the byte in it would be cut short
 * wherever it is printed as a C string. */
static int tokenize(Pass *P, size_t from) {
  P->p = from;
  P->line = 1;
  for (;;) {
    Tok t;
    if (lex(P, &t) != 0) {
      P->lexerr = 1;
      t.kind = TK_EOF;
      t.end = t.start;
    } else if (t.kind == TK_OP && t.code == 0) {
      if (P->err != NULL && P->errsz > 0)
        snprintf(P->err, P->errsz, "%s:%d: unexpected symbol near '<\\0>' (a NUL byte)", P->chunk,
                 t.line);
      return -EINVAL;
    }
    if (P->ntok == P->captok) {
      int cap = P->captok ? P->captok * 2 : 256;
      Tok *nt = cap > 0 ? realloc(P->tok, (size_t)cap * sizeof *nt) : NULL;
      if (nt == NULL) return -ENOMEM;
      P->tok = nt;
      P->captok = cap;
    }
    P->tok[P->ntok++] = t;
    if (t.kind == TK_EOF) return 0;
  }
}

/* ---------------------------------------------------------------- */
/* Matching brackets and blocks.                                      */

static int is_op(const Tok *t, int code) { return t->kind == TK_OP && t->code == code; }
static int is_kw(const Tok *t, int k) { return t->kind == TK_KW && t->code == k; }

static int is_name(const Pass *P, const Tok *t, const char *s) {
  size_t n = strlen(s);
  return t->kind == TK_NAME && t->end - t->start == n && memcmp(P->src + t->start, s, n) == 0;
}

/* Sets Tok.match of every bracket to its closer, and of every block opener
 * (function, if, do, repeat) to the "end" or "until" that closes it, the
 * way counting them would: any closer closes the innermost open one.  A
 * function closed by "until" (bad Lua) keeps -1.  Returns 0 or -ENOMEM. */
static int match_all(Pass *P) {
  int *bs = malloc(2 * (size_t)P->ntok * sizeof *bs), *ks, nb = 0, nk = 0, i;
  if (bs == NULL) return -ENOMEM;
  ks = bs + P->ntok;
  for (i = 0; i < P->ntok; i++) {
    Tok *t = &P->tok[i];
    if (is_op(t, '(') || is_op(t, '[') || is_op(t, '{')) {
      bs[nb++] = i;
    } else if (is_op(t, ')') || is_op(t, ']') || is_op(t, '}')) {
      if (nb > 0) P->tok[bs[--nb]].match = i;
    } else if (is_kw(t, K_FUNCTION) || is_kw(t, K_IF) || is_kw(t, K_DO) || is_kw(t, K_REPEAT)) {
      ks[nk++] = i;
    } else if (is_kw(t, K_END) || is_kw(t, K_UNTIL)) {
      if (nk > 0) {
        Tok *o = &P->tok[ks[--nk]];
        if (is_kw(o, K_REPEAT) == is_kw(t, K_UNTIL)) o->match = i;
      }
    }
  }
  free(bs);
  return 0;
}

/* ---------------------------------------------------------------- */
/* Edits.                                                             */

static int text_add(Pass *P, const char *s, size_t n) { return ml__buf_add(&P->text, s, n); }

/* Appends one "\n" for each line break in src[from..to). */
static int text_nl(Pass *P, size_t from, size_t to, int *count) {
  size_t i;
  *count = 0;
  for (i = from; i < to; i++) {
    char c = P->src[i];
    if (!isnl((unsigned char)c)) continue;
    if (i + 1 < to && isnl((unsigned char)P->src[i + 1]) && P->src[i + 1] != c) i++;
    (*count)++;
    if (text_add(P, "\n", 1) != 0) return -ENOMEM;
  }
  return 0;
}

/* Replaces src[pos..end) by the text added since mark. */
static int edit(Pass *P, size_t pos, size_t end, size_t mark) {
  Edit *e;
  if (P->ned == P->caped) {
    int cap = P->caped ? P->caped * 2 : 64;
    Edit *ne = cap > 0 ? realloc(P->ed, (size_t)cap * sizeof *ne) : NULL;
    if (ne == NULL) return -ENOMEM;
    P->ed = ne;
    P->caped = cap;
  }
  e = &P->ed[P->ned];
  e->pos = pos;
  e->end = end;
  e->text = mark;
  e->ntext = P->text.len - mark;
  e->seq = P->ned++;
  return 0;
}

static int edit_str(Pass *P, size_t pos, size_t end, const char *s) {
  size_t mark = P->text.len;
  if (text_add(P, s, strlen(s)) != 0) return -ENOMEM;
  return edit(P, pos, end, mark);
}

static int cmp_edit(const void *a, const void *b) {
  const Edit *x = a, *y = b;
  if (x->pos != y->pos) return x->pos < y->pos ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Appends the source with the edits applied to out. */
static int emit(Pass *P, ml_Buf *out) {
  size_t at = 0;
  int i;
  if (P->ned > 0) qsort(P->ed, (size_t)P->ned, sizeof *P->ed, cmp_edit);
  for (i = 0; i < P->ned; i++) {
    const Edit *e = &P->ed[i];
    size_t pos = e->pos < at ? at : e->pos; /* never overlap; be safe */
    if (ml__buf_add(out, P->src + at, pos - at) != 0 ||
        ml__buf_add(out, P->text.data + e->text, e->ntext) != 0)
      return -ENOMEM;
    at = e->end > pos ? e->end : pos;
  }
  return ml__buf_add(out, P->src + at, P->len - at);
}

/* ---------------------------------------------------------------- */
/* The dialect.                                                       */

/* Writes "<chunk>:<line>: <msg> near '<token>'" to P->err; -EINVAL. */
static int syntax_error(Pass *P, const char *msg, const Tok *near) {
  if (P->err != NULL && P->errsz > 0) {
    if (near->kind == TK_EOF)
      snprintf(P->err, P->errsz, "%s:%d: %s near <eof>", P->chunk, near->line, msg);
    else
      snprintf(P->err, P->errsz, "%s:%d: %s near '%.*s'", P->chunk, near->line, msg,
               (int)(near->end - near->start > 80 ? 80 : near->end - near->start),
               P->src + near->start);
  }
  return -EINVAL;
}

/* A field or method name: "await" and "async" there are plain names. */
static int after_dot(const Pass *P, int i) {
  return i > 0 && (is_op(&P->tok[i - 1], '.') || is_op(&P->tok[i - 1], ':'));
}

/* 1 if token i is the keyword await: the name "await", not a field, with
 * an operand start on the same line. */
static int is_await(const Pass *P, int i) {
  const Tok *t = &P->tok[i], *n = t + 1;
  if (!is_name(P, t, "await") || after_dot(P, i) || n->line != t->line) return 0;
  switch (n->kind) {
  case TK_NAME:
  case TK_NUM: return 1;
  case TK_KW:
    return n->code == K_NIL || n->code == K_TRUE || n->code == K_FALSE || n->code == K_NOT ||
           n->code == K_FUNCTION;
  case TK_OP: return n->code == OP_DOTS || n->code == '#';
  }
  return 0;
}

/* The last token of the operand that starts at k after its unary
 * prefixes, or -1 if there is none (unbalanced brackets, no "end"). */
static int core_end(const Pass *P, int k) {
  const Tok *T = P->tok;
  int j;
  if (is_kw(&T[k], K_FUNCTION)) return T[k].match;
  if (is_name(P, &T[k], "async") && is_kw(&T[k + 1], K_FUNCTION)) return T[k + 1].match;
  if (is_op(&T[k], '{') || T[k].kind == TK_NUM || T[k].kind == TK_STR || is_op(&T[k], OP_DOTS) ||
      is_kw(&T[k], K_NIL) || is_kw(&T[k], K_TRUE) || is_kw(&T[k], K_FALSE))
    return is_op(&T[k], '{') ? T[k].match : k;
  if (T[k].kind != TK_NAME && !is_op(&T[k], '(')) return -1;
  /* A suffixed expression, continued across lines as Lua's parser does. */
  j = T[k].kind == TK_NAME ? k : T[k].match;
  while (j >= 0) {
    const Tok *n = &T[j + 1];
    if (is_op(n, '.') && n[1].kind == TK_NAME) {
      j += 2;
    } else if (is_op(n, '[') || is_op(n, '(') || is_op(n, '{')) {
      j = n->match;
    } else if (n->kind == TK_STR) {
      j++;
    } else if (is_op(n, ':') && n[1].kind == TK_NAME) {
      const Tok *a = &n[2];
      if (is_op(a, '(') || is_op(a, '{')) j = a->match;
      else if (a->kind == TK_STR) j += 3;
      else return j + 2; /* no arguments: Lua will say so */
    } else {
      break;
    }
  }
  return j;
}

static int is_prefix(const Pass *P, int k) {
  const Tok *t = &P->tok[k];
  return is_kw(t, K_NOT) || is_op(t, '#') || is_op(t, '-') || is_op(t, '~') || is_await(P, k);
}

/* The last token of the await operand starting at token i, or -1.  The
 * result is cached on every token of the prefix chain, so that a chain of
 * n awaits costs O(n), not O(n^2), and nothing recurses. */
static int operand_end(Pass *P, int i) {
  int k = i, e, m;
  while (P->tok[k].opnd == NOTYET && is_prefix(P, k)) k++;
  e = P->tok[k].opnd != NOTYET ? P->tok[k].opnd : core_end(P, k);
  for (m = i; m <= k; m++) P->tok[m].opnd = e;
  return e;
}

static int only_blanks(const Pass *P, size_t from, size_t to) {
  for (; from < to; from++) {
    char c = P->src[from];
    if (c != ' ' && c != '\t' && c != '\f' && c != '\v') return 0;
  }
  return 1;
}

/* If the await operand from token k to e is a suffixed expression whose
 * last suffix is a call, returns the index of that suffix's first token
 * (the "(", "{" or string of a call, the ":" of a method call) and sets
 * *meth; otherwise -1. */
static int last_call(const Pass *P, int k, int e, int *meth) {
  const Tok *T = P->tok;
  int j, last = -1;
  if (is_await(P, k) || (T[k].kind != TK_NAME && !is_op(&T[k], '('))) return -1;
  j = T[k].kind == TK_NAME ? k : T[k].match;
  while (j >= 0 && j < e) {
    const Tok *n = &T[j + 1];
    if (is_op(n, '.') && n[1].kind == TK_NAME) {
      last = -1;
      j += 2;
    } else if (is_op(n, '[')) {
      last = -1;
      j = n->match;
    } else if (is_op(n, '(') || is_op(n, '{') || n->kind == TK_STR) {
      last = j + 1;
      *meth = 0;
      j = n->kind == TK_STR ? j + 1 : n->match;
    } else if (is_op(n, ':') && n[1].kind == TK_NAME &&
               (is_op(&n[2], '(') || is_op(&n[2], '{') || n[2].kind == TK_STR)) {
      last = j + 1;
      *meth = 1;
      j = n[2].kind == TK_STR ? j + 3 : n[2].match;
    } else {
      break;
    }
  }
  return j == e ? last : -1;
}

/* Records in P->names what the callee of the __awcall made of the await
 * at token i is, the call's first token being c: "line\tfield 'x'\n" for
 * a.b.x, "line\t'x'\n" for the name x, "line\t\n" for anything else. */
static int note_callee(Pass *P, int i, int c) {
  const Tok *T = P->tok;
  char num[24];
  int j = i + 1;
  if (P->names == NULL) return 0;
  snprintf(num, sizeof num, "%d\t", T[i].line);
  if (ml__buf_add(P->names, num, strlen(num)) != 0) return -ENOMEM;
  if (T[j].kind == TK_NAME) {
    while (j + 2 < c && is_op(&T[j + 1], '.') && T[j + 2].kind == TK_NAME) j += 2;
    if (j == c - 1) {
      const Tok *n = &T[j];
      if ((j > i + 1 && ml__buf_add(P->names, "field ", 6) != 0) ||
          ml__buf_add(P->names, "'", 1) != 0 ||
          ml__buf_add(P->names, P->src + n->start, n->end - n->start) != 0 ||
          ml__buf_add(P->names, "'", 1) != 0)
        return -ENOMEM;
    }
  }
  return ml__buf_add(P->names, "\n", 1) != 0 ? -ENOMEM : 0;
}

/* `await f(args)` -> `__awcall(f, args)` and `await o:m(args)` ->
 * `__awmeth(o, "m", args)`: the runtime calls an async function's body
 * directly, with no Coroutine object (an await of a call allocates
 * nothing).  Any other operand: `await E` -> `await(E)`.  The opening
 * text replaces the blanks after await; no line break moves. */
static int do_await(Pass *P, int i) {
  const Tok *T = P->tok, *a = &T[i], *n = a + 1;
  int e = operand_end(P, i + 1), meth = 0, c;
  size_t after, head_end;
  const char *head = "(";
  if (e < 0) return 0; /* no operand to close: leave it to Lua's parser */
  after = T[e].end;
  head_end = only_blanks(P, a->end, n->start) ? n->start : a->end;
  c = last_call(P, i + 1, e, &meth);
  if (c >= 0 && meth && (T[c].line != T[c + 1].line || T[c + 1].line != T[c + 2].line))
    c = -1; /* a method call split over lines keeps the plain form */
  if (c < 0) {
    if (edit_str(P, a->end, head_end, head) != 0 || edit_str(P, after, after, ")") != 0)
      return -ENOMEM;
    return 0;
  }
  if (edit_str(P, a->start, head_end, meth ? "__awmeth(" : "__awcall(") != 0) return -ENOMEM;
  if (!meth && note_callee(P, i, c) != 0) return -ENOMEM;
  if (meth) {
    /* ":m(" -> ", "m", ", or ", "m"" before ")" */
    const Tok *name = &T[c + 1], *o = &T[c + 2];
    size_t mark = P->text.len;
    int empty = is_op(o, '(') && o->match == c + 3;
    if (text_add(P, ", \"", 3) != 0 ||
        text_add(P, P->src + name->start, name->end - name->start) != 0 ||
        text_add(P, empty ? "\"" : "\", ", empty ? 1 : 3) != 0)
      return -ENOMEM;
    if (is_op(o, '(')) {
      if (edit(P, T[c].start, o->end, mark) != 0) return -ENOMEM;
    } else if (edit(P, T[c].start, o->start, mark) != 0 || edit_str(P, after, after, ")") != 0) {
      return -ENOMEM;
    }
    return 0;
  }
  if (is_op(&T[c], '(')) {
    /* "(" -> ", ", or nothing before an empty ")" */
    return edit_str(P, T[c].start, T[c].end, T[c].match == c + 1 ? "" : ", ") != 0 ? -ENOMEM : 0;
  }
  /* f"str" and f{...}: ", " before the argument, ")" after it */
  if (edit_str(P, T[c].start, T[c].start, ", ") != 0 || edit_str(P, after, after, ")") != 0)
    return -ENOMEM;
  return 0;
}

/* Appends src[t.start..t.end) to the edit text. */
static int text_tok(Pass *P, const Tok *t) {
  return text_add(P, P->src + t->start, t->end - t->start);
}

/* `async function` at token i (async) and i+1 (function): the statement
 * forms `[local] async function NAME` and the expression form.  Sets *last
 * to the last token it rewrote. */
static int do_async(Pass *P, int i, int *last) {
  Tok *T = P->tok;
  int fn = i + 1, l = fn, method = 0, local = i > 0 && is_kw(&T[i - 1], K_LOCAL);
  int n1, n2 = 0, k;
  size_t mark = P->text.len;
  if (local || T[fn + 1].kind == TK_NAME) {
    /* The function's name: Name {'.' Name} [':' Name]. */
    for (l = fn + 1;; l += 2) {
      if (T[l].kind != TK_NAME)
        return T[l].kind == TK_EOF && P->lexerr ? 0 : syntax_error(P, "<name> expected", &T[l]);
      if (local || method || !(is_op(&T[l + 1], '.') || is_op(&T[l + 1], ':'))) break;
      method = is_op(&T[l + 1], ':');
    }
    /* The assignment target: "a.b.c", or "f; f" for a local. */
    for (k = fn + 1; k <= l; k += 2)
      if ((k > fn + 1 && text_add(P, ".", 1) != 0) || text_tok(P, &T[k]) != 0) return -ENOMEM;
    if (local && (text_add(P, "; ", 2) != 0 || text_tok(P, &T[l]) != 0)) return -ENOMEM;
    if (text_add(P, " = __ml_async(\"", 15) != 0) return -ENOMEM;
    for (k = fn + 1; k <= l; k += 2) /* the name shown: "a.b:m" */
      if ((k > fn + 1 && text_tok(P, &T[k - 1]) != 0) || text_tok(P, &T[k]) != 0) return -ENOMEM;
    if (text_add(P, "\", ", 3) != 0) return -ENOMEM;
  } else if (text_add(P, "__ml_async(nil, ", 16) != 0) {
    return -ENOMEM;
  }
  /* The line breaks the rewritten span held stay where they were: those
   * before "function" before it, the others after it, followed by a blank
   * so that a "\n" of ours never pairs with a "\r" of the source. */
  if (text_nl(P, T[i].end, T[fn].start, &n1) != 0 || text_add(P, "function", 8) != 0 ||
      text_nl(P, T[fn].end, T[l].end, &n2) != 0 || (n2 > 0 && text_add(P, " ", 1) != 0))
    return -ENOMEM;
  if (edit(P, T[i].start, T[l].end, mark) != 0) return -ENOMEM;
  if (method && is_op(&T[l + 1], '(')) {
    size_t at = T[l + 1].end;
    if (edit_str(P, at, at, is_op(&T[l + 2], ')') ? "self" : "self, ") != 0) return -ENOMEM;
  }
  if (T[fn].match >= 0) {
    size_t at = T[T[fn].match].end;
    if (edit_str(P, at, at, ")") != 0) return -ENOMEM;
  }
  *last = l;
  return 0;
}

static int translate(Pass *P) {
  int i, r;
  for (i = 0; P->tok[i].kind != TK_EOF; i++) {
    const Tok *t = &P->tok[i];
    if (t->kind != TK_NAME || after_dot(P, i)) continue;
    if (is_name(P, t, "async")) {
      if (is_kw(t + 1, K_FUNCTION)) {
        if ((r = do_async(P, i, &i)) != 0) return r;
      } else if (t[1].kind == TK_NAME && t[1].line == t->line) {
        return syntax_error(P, "'function' expected after 'async'", t + 1);
      }
    } else if (is_await(P, i)) {
      if ((r = do_await(P, i)) != 0) return r;
    }
  }
  return 0;
}

/* ---------------------------------------------------------------- */

/* See asyncpass.h.  Also: a UTF-8 byte order mark at the start is dropped,
 * and a first line starting with '#' (a shebang, which luaL_loadfile would
 * skip) becomes a comment by prefixing it with "--".  On error out is left
 * as it was. */
int ml__asyncpass(const char *src, size_t len, const char *chunkname, ml_Buf *out, char *err,
                  size_t errsz) {
  return ml__asyncpass_names(src, len, chunkname, out, NULL, err, errsz);
}

int ml__asyncpass_names(const char *src, size_t len, const char *chunkname, ml_Buf *out,
                        ml_Buf *names, char *err, size_t errsz) {
  Pass P;
  size_t from = 0, outlen = out->len, nameslen = names ? names->len : 0;
  int r;
  memset(&P, 0, sizeof P);
  P.names = names;
  if (err != NULL && errsz > 0) err[0] = '\0';
  if (chunkname == NULL) chunkname = "?";
  if (*chunkname == '@' || *chunkname == '=') chunkname++;
  P.src = len > 0 ? src : "";
  P.len = len;
  P.chunk = chunkname;
  P.err = err;
  P.errsz = errsz;
  if (len >= (size_t)INT_MAX - 2) {
    r = -ENOMEM; /* token indexes are ints */
    goto done;
  }
  if (len >= 3 && memcmp(src, "\xEF\xBB\xBF", 3) == 0) {
    if ((r = edit_str(&P, 0, 3, "")) != 0) goto done;
    from = 3;
  }
  if (from < len && src[from] == '#') {
    if ((r = edit_str(&P, from, from, "--")) != 0) goto done;
    while (from < len && !isnl((unsigned char)src[from])) from++;
  }
  if ((r = tokenize(&P, from)) == 0 && (r = match_all(&P)) == 0 && (r = translate(&P)) == 0)
    r = emit(&P, out);
done:
  free(P.tok);
  free(P.ed);
  ml__buf_free(&P.text);
  if (r != 0) {
    out->len = outlen;
    if (out->data != NULL) out->data[outlen] = '\0';
    if (names != NULL) {
      names->len = nameslen;
      if (names->data != NULL) names->data[nameslen] = '\0';
    }
    if (r == -ENOMEM && err != NULL && errsz > 0)
      snprintf(err, errsz, "%s: not enough memory", chunkname);
  }
  return r;
}
