/* strmatch.c: string.find, string.match, string.gmatch and string.gsub for
 * states with a CPU budget or a sandbox: Lua's patterns, matched by a
 * matcher that counts its steps and charges them to the budget, so that a
 * backtracking pattern (('a*'):rep(20) .. 'b' on a long subject) is
 * stopped by the budget or by ml_state_interrupt like a loop of Lua code,
 * where Lua's own matcher runs it as one VM instruction.
 *
 * Why a counting matcher and not a limit on the input: a pattern's cost
 * is not a function of the subject's length alone.  ('a*'):rep(20) .. 'b'
 * needs ~10^13 steps on 30 characters, while '^(%w+)%s*=%s*(.-)$' is
 * linear on megabytes; any size limit either lets the first through or
 * refuses the second.  The matcher costs about what Lua's does
 * (docs/performance.md, "Embedding", has the figures).
 *
 * The patterns, the captures, the results and the error messages are
 * those of Lua 5.4's string library (the manual, §6.4.1), which is what
 * tests/unit/check_strmatch.c holds it to, pattern by pattern, against
 * the stock functions.  A step is one attempt of the pattern at a
 * position, or one subject character scanned by a repetition, %b or a
 * back reference; every SLICE steps the count goes to the budget (or to
 * the finalizer's limit), which raises when it is spent. */
#include <ctype.h>
#include <string.h>
#include "embed.h"

#define L_ESC '%'
#define SPECIALS "^$*+?.([%-"
#define MAXCCALLS 200 /* recursion depth, as Lua's: "pattern too complex" */
#define SLICE 1000    /* steps between two charges */
#ifndef LUA_MAXCAPTURES
#define LUA_MAXCAPTURES 32 /* as Lua's string library */
#endif
#define CAP_UNFINISHED (-1)
#define CAP_POSITION (-2)

typedef struct Match {
  const char *src, *src_end, *p_end;
  lua_State *L;
  int level; /* captures open or closed so far */
  int depth; /* recursion left */
  long left; /* steps before the next charge */
  struct {
    const char *init;
    ptrdiff_t len; /* or CAP_UNFINISHED / CAP_POSITION */
  } cap[LUA_MAXCAPTURES];
} Match;

/* ---- the budget ---- */

/* Charges the steps counted since the last charge; raises if the budget
 * is spent or an interrupt was asked (never returns then). */
static void charge(Match *m) {
  unsigned long used = (unsigned long)(SLICE - m->left);
  m->left = SLICE;
  if (ml__state(m->L)->in_finalizer) ml__finalizer_charge(m->L, used);
  else ml__budget_charge(m->L, used);
}

#define STEPS(m, n)                               \
  do {                                            \
    if (((m)->left -= (long)(n)) <= 0) charge(m); \
  } while (0)

/* ---- the matcher ---- */

static const char *do_match(Match *m, const char *s, const char *p);

/* The end of the single-character class at p. */
static const char *class_end(Match *m, const char *p) {
  if (*p++ == L_ESC) {
    if (p == m->p_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
    return p + 1;
  }
  if (p[-1] == '[') {
    if (*p == '^') p++;
    do { /* the first character is a member even if it is ']' */
      if (p == m->p_end) luaL_error(m->L, "malformed pattern (missing ']')");
      if (*p++ == L_ESC && p < m->p_end) p++;
    } while (*p != ']');
    return p + 1;
  }
  return p;
}

static int class_has(int c, int cl) {
  int res;
  switch (tolower(cl)) {
  case 'a': res = isalpha(c); break;
  case 'c': res = iscntrl(c); break;
  case 'd': res = isdigit(c); break;
  case 'g': res = isgraph(c); break;
  case 'l': res = islower(c); break;
  case 'p': res = ispunct(c); break;
  case 's': res = isspace(c); break;
  case 'u': res = isupper(c); break;
  case 'w': res = isalnum(c); break;
  case 'x': res = isxdigit(c); break;
  case 'z': res = c == 0; break; /* deprecated, but Lua 5.4 still has it */
  default: return cl == c;
  }
  if (isupper(cl)) res = !res;
  return res != 0;
}

/* c is in the set [ ... ] from p (its '[') to ec (its ']'). */
static int set_has(int c, const char *p, const char *ec) {
  int yes = 1;
  if (p[1] == '^') {
    yes = 0;
    p++;
  }
  while (++p < ec) {
    if (*p == L_ESC) {
      p++;
      if (class_has(c, (unsigned char)*p)) return yes;
    } else if (p[1] == '-' && p + 2 < ec) {
      p += 2;
      if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p) return yes;
    } else if ((unsigned char)*p == c) {
      return yes;
    }
  }
  return !yes;
}

/* The character at s is of the class p..ep. */
static int single(Match *m, const char *s, const char *p, const char *ep) {
  int c;
  if (s >= m->src_end) return 0;
  c = (unsigned char)*s;
  switch (*p) {
  case '.': return 1;
  case L_ESC: return class_has(c, (unsigned char)p[1]);
  case '[': return set_has(c, p, ep - 1);
  default: return (unsigned char)*p == c;
  }
}

/* %bxy at p (after the "%b"). */
static const char *balance(Match *m, const char *s, const char *p) {
  const char *start = s;
  int b, e, open = 1;
  if (p >= m->p_end - 1) luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
  if (s >= m->src_end || *s != *p) return NULL;
  b = *p;
  e = p[1];
  while (++s < m->src_end) {
    if (*s == e) {
      if (--open == 0) {
        STEPS(m, s - start);
        return s + 1;
      }
    } else if (*s == b) {
      open++;
    }
  }
  STEPS(m, s - start);
  return NULL;
}

/* The longest run of the class p..ep from s, then the rest of the
 * pattern, giving back one character at a time. */
static const char *max_expand(Match *m, const char *s, const char *p, const char *ep) {
  ptrdiff_t i = 0;
  while (single(m, s + i, p, ep)) i++;
  STEPS(m, i);
  for (; i >= 0; i--) {
    const char *r = do_match(m, s + i, ep + 1);
    if (r) return r;
  }
  return NULL;
}

/* The shortest run: the rest of the pattern first, then one more. */
static const char *min_expand(Match *m, const char *s, const char *p, const char *ep) {
  for (;;) {
    const char *r = do_match(m, s, ep + 1);
    if (r) return r;
    if (!single(m, s, p, ep)) return NULL;
    s++;
  }
}

static const char *start_capture(Match *m, const char *s, const char *p, ptrdiff_t what) {
  const char *r;
  if (m->level >= LUA_MAXCAPTURES) luaL_error(m->L, "too many captures");
  m->cap[m->level].init = s;
  m->cap[m->level].len = what;
  m->level++;
  if ((r = do_match(m, s, p)) == NULL) m->level--;
  return r;
}

static const char *end_capture(Match *m, const char *s, const char *p) {
  const char *r;
  int l;
  for (l = m->level - 1; l >= 0; l--)
    if (m->cap[l].len == CAP_UNFINISHED) break;
  if (l < 0) luaL_error(m->L, "invalid pattern capture");
  m->cap[l].len = s - m->cap[l].init;
  if ((r = do_match(m, s, p)) == NULL) m->cap[l].len = CAP_UNFINISHED;
  return r;
}

/* %1..%9: the text of a closed capture again. */
static const char *back_ref(Match *m, const char *s, int digit) {
  int l = digit - '1';
  size_t len;
  if (l < 0 || l >= m->level || m->cap[l].len == CAP_UNFINISHED)
    luaL_error(m->L, "invalid capture index %%%d", l + 1);
  len = (size_t)m->cap[l].len;
  STEPS(m, len);
  if ((size_t)(m->src_end - s) >= len && memcmp(m->cap[l].init, s, len) == 0) return s + len;
  return NULL;
}

/* Matches the pattern from p at s: the end of the match, or NULL. */
static const char *do_match(Match *m, const char *s, const char *p) {
  const char *ep;
  if (m->depth-- == 0) luaL_error(m->L, "pattern too complex");
  STEPS(m, 1);
  while (p != m->p_end) {
    switch (*p) {
    case '(':
      s = p[1] == ')' ? start_capture(m, s, p + 2, CAP_POSITION)
                      : start_capture(m, s, p + 1, CAP_UNFINISHED);
      goto done;
    case ')': s = end_capture(m, s, p + 1); goto done;
    case '$':
      if (p + 1 != m->p_end) goto single_char;
      s = s == m->src_end ? s : NULL;
      goto done;
    case L_ESC:
      switch (p[1]) {
      case 'b':
        if ((s = balance(m, s, p + 2)) == NULL) goto done;
        p += 4;
        continue;
      case 'f': {
        int prev;
        p += 2;
        if (*p != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
        ep = class_end(m, p);
        prev = s == m->src ? '\0' : (unsigned char)s[-1];
        if (!set_has(prev, p, ep - 1) && set_has((unsigned char)*s, p, ep - 1)) {
          p = ep;
          continue;
        }
        s = NULL;
        goto done;
      }
      case '0':
      case '1':
      case '2':
      case '3':
      case '4':
      case '5':
      case '6':
      case '7':
      case '8':
      case '9':
        if ((s = back_ref(m, s, (unsigned char)p[1])) == NULL) goto done;
        p += 2;
        continue;
      default: goto single_char;
      }
    default:
    single_char:
      ep = class_end(m, p);
      if (!single(m, s, p, ep)) {
        if (*ep == '*' || *ep == '?' || *ep == '-') { /* zero of them is fine */
          p = ep + 1;
          continue;
        }
        s = NULL;
        goto done;
      }
      switch (*ep) {
      case '?': {
        const char *r = do_match(m, s + 1, ep + 1);
        if (r) {
          s = r;
          goto done;
        }
        p = ep + 1;
        continue;
      }
      case '+': s = max_expand(m, s + 1, p, ep); goto done;
      case '*': s = max_expand(m, s, p, ep); goto done;
      case '-': s = min_expand(m, s, p, ep); goto done;
      default:
        s++;
        p = ep;
        continue;
      }
    }
  }
done:
  m->depth++;
  return s;
}

/* ---- captures ---- */

/* [-0, +1] pushes capture i (the whole match s..e if there is none). */
static void push_capture(Match *m, int i, const char *s, const char *e) {
  if (i >= m->level) {
    if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
    lua_pushlstring(m->L, s, (size_t)(e - s));
    return;
  }
  if (m->cap[i].len == CAP_UNFINISHED) luaL_error(m->L, "unfinished capture");
  if (m->cap[i].len == CAP_POSITION) lua_pushinteger(m->L, (m->cap[i].init - m->src) + 1);
  else lua_pushlstring(m->L, m->cap[i].init, (size_t)m->cap[i].len);
}

/* [-0, +n] pushes every capture (or the whole match, if s is not NULL
 * and there is none) and returns how many. */
static int push_captures(Match *m, const char *s, const char *e) {
  int i, n = m->level == 0 && s ? 1 : m->level;
  luaL_checkstack(m->L, n, "too many captures");
  for (i = 0; i < n; i++) push_capture(m, i, s, e);
  return n;
}

static void prepare(Match *m, lua_State *L, const char *s, size_t ls, const char *p, size_t lp) {
  m->L = L;
  m->src = s;
  m->src_end = s + ls;
  m->p_end = p + lp;
  m->left = SLICE;
}

static void restart(Match *m) {
  m->level = 0;
  m->depth = MAXCCALLS;
}

/* The steps of a call that never reached a slice still count. */
static void settle(Match *m) {
  if (m->left != SLICE) charge(m);
}

/* ---- the functions ---- */

static size_t start_index(lua_Integer pos, size_t len) {
  if (pos > 0) return (size_t)pos;
  if (pos == 0) return 1;
  if (pos < -(lua_Integer)len) return 1;
  return len + (size_t)pos + 1;
}

static int has_specials(const char *p, size_t lp) {
  size_t i;
  for (i = 0; i < lp; i++)
    if (p[i] != '\0' && strchr(SPECIALS, p[i])) return 1;
  return 0;
}

static int find_aux(lua_State *L, int find) {
  size_t ls, lp, init;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {
    luaL_pushfail(L);
    return 1;
  }
  if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
    /* A plain search: glibc's memmem is linear (two-way), no budget needed. */
    const char *r = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
    if (r) {
      lua_pushinteger(L, (r - s) + 1);
      lua_pushinteger(L, (lua_Integer)((r - s) + lp));
      return 2;
    }
  } else {
    Match m;
    const char *s1 = s + init, *e;
    int anchor = *p == '^';
    if (anchor) {
      p++;
      lp--;
    }
    prepare(&m, L, s, ls, p, lp);
    do {
      restart(&m);
      if ((e = do_match(&m, s1, p)) != NULL) {
        settle(&m);
        if (find) {
          lua_pushinteger(L, (s1 - s) + 1);
          lua_pushinteger(L, e - s);
          return push_captures(&m, NULL, NULL) + 2;
        }
        return push_captures(&m, s1, e);
      }
    } while (s1++ < m.src_end && !anchor);
    settle(&m);
  }
  luaL_pushfail(L);
  return 1;
}

static int str_find(lua_State *L) { return find_aux(L, 1); }
static int str_match(lua_State *L) { return find_aux(L, 0); }

typedef struct GMatch {
  const char *src; /* where the next search starts */
  const char *p;
  const char *lastmatch; /* the end of the last match, not matched again empty */
  Match m;
} GMatch;

static int gmatch_next(lua_State *L) {
  GMatch *g = lua_touserdata(L, lua_upvalueindex(3));
  const char *src, *e;
  g->m.L = L; /* the iterator may be called from another coroutine */
  for (src = g->src; src <= g->m.src_end; src++) {
    restart(&g->m);
    if ((e = do_match(&g->m, src, g->p)) != NULL && e != g->lastmatch) {
      g->src = g->lastmatch = e;
      settle(&g->m);
      return push_captures(&g->m, src, e);
    }
  }
  settle(&g->m);
  return 0;
}

static int str_gmatch(lua_State *L) {
  size_t ls, lp, init;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  GMatch *g;
  init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) init = ls + 1; /* past the end: the iterator finds nothing */
  lua_settop(L, 2);
  g = lua_newuserdatauv(L, sizeof *g, 0);
  prepare(&g->m, L, s, ls, p, lp);
  g->src = s + init;
  g->p = p;
  g->lastmatch = NULL;
  lua_pushcclosure(L, gmatch_next, 3); /* the subject and pattern stay alive */
  return 1;
}

/* Appends the replacement string (argument 3) for the match s..e. */
static void add_string(Match *m, luaL_Buffer *b, const char *s, const char *e) {
  size_t l;
  lua_State *L = m->L;
  const char *news = lua_tolstring(L, 3, &l), *p;
  while ((p = memchr(news, L_ESC, l)) != NULL) {
    luaL_addlstring(b, news, (size_t)(p - news));
    p++;
    if (*p == L_ESC) {
      luaL_addchar(b, *p);
    } else if (*p == '0') {
      luaL_addlstring(b, s, (size_t)(e - s));
    } else if (isdigit((unsigned char)*p)) {
      push_capture(m, *p - '1', s, e);
      luaL_addvalue(b); /* a position capture is a number: converted */
    } else {
      luaL_error(L, "invalid use of '%c' in replacement string", L_ESC);
    }
    l -= (size_t)(p + 1 - news);
    news = p + 1;
  }
  luaL_addlstring(b, news, l);
}

/* Appends the replacement of the match s..e; 1 if anything changed. */
static int add_value(Match *m, luaL_Buffer *b, const char *s, const char *e, int tr) {
  lua_State *L = m->L;
  switch (tr) {
  case LUA_TFUNCTION: {
    int n;
    lua_pushvalue(L, 3);
    n = push_captures(m, s, e);
    lua_call(L, n, 1);
    break;
  }
  case LUA_TTABLE:
    push_capture(m, 0, s, e);
    lua_gettable(L, 3);
    break;
  default: add_string(m, b, s, e); return 1;
  }
  if (!lua_toboolean(L, -1)) { /* nil or false: keep the original */
    lua_pop(L, 1);
    luaL_addlstring(b, s, (size_t)(e - s));
    return 0;
  }
  if (!lua_isstring(L, -1))
    return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  luaL_addvalue(b);
  return 1;
}

static int str_gsub(lua_State *L) {
  size_t srcl, lp;
  const char *src = luaL_checklstring(L, 1, &srcl);
  const char *p = luaL_checklstring(L, 2, &lp);
  const char *lastmatch = NULL, *e;
  int tr = lua_type(L, 3);
  lua_Integer max_s = luaL_optinteger(L, 4, (lua_Integer)srcl + 1), n = 0;
  int anchor = *p == '^', changed = 0;
  Match m;
  luaL_Buffer b;
  luaL_argexpected(
    L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
    "string/function/table");
  luaL_buffinit(L, &b);
  if (anchor) {
    p++;
    lp--;
  }
  prepare(&m, L, src, srcl, p, lp);
  while (n < max_s) {
    restart(&m);
    if ((e = do_match(&m, src, p)) != NULL && e != lastmatch) {
      n++;
      changed = add_value(&m, &b, src, e, tr) | changed;
      src = lastmatch = e;
    } else if (src < m.src_end) {
      luaL_addchar(&b, *src++);
    } else {
      break;
    }
    if (anchor) break;
  }
  settle(&m);
  if (!changed) {
    lua_pushvalue(L, 1);
  } else {
    luaL_addlstring(&b, src, (size_t)(m.src_end - src));
    luaL_pushresult(&b);
  }
  lua_pushinteger(L, n);
  return 2;
}

/* ---- installing them ---- */

static const luaL_Reg funcs[] = {
  {"find", str_find}, {"match", str_match}, {"gmatch", str_gmatch},
  {"gsub", str_gsub}, {NULL, NULL},
};

void ml__strmatch_install(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, "string") == LUA_TTABLE) {
    if (lua_getfield(L, -1, "find"), lua_tocfunction(L, -1) != str_find) {
      lua_pop(L, 1);
      luaL_setfuncs(L, funcs, 0);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 2);
}
