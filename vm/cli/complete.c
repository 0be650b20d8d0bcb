/* complete.c: the REPL's tab completion (libedit's readline interface):
 * globals and keywords, fields of tables reached by a dotted path
 * (asyncio.ga -> asyncio.gather), and methods after ':' found through the
 * metatable's __index tables (q:put_n -> q:put_nowait, s:up -> s:upper).
 * Tables are walked with raw access only, so completing runs no user
 * code (no __index function, no __pairs). */
#include <stdlib.h>
#include <string.h>
#include "cli.h"
#include "edit.h"

/* libedit's completion callbacks take no user pointer. */
static struct {
  lua_State *L;
  char **matches; /* candidates being handed out */
  size_t nmatches, nextmatch;
} M;

/* Completed as words besides the reserved ones (ml_dialect_keyword). */
static const char *const contextual[] = {"async", "await"};

static int is_ident(const char *s, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!(c == '_' || ((c | 32) >= 'a' && (c | 32) <= 'z') || (i > 0 && c >= '0' && c <= '9')))
      return 0;
  }
  return 1;
}

/* [-0, +1] pushes v[key] for the value v at idx, by raw access on tables
 * and then through metatables' __index tables (no metamethod runs), or
 * nil. */
static void lookup(lua_State *L, int idx, const char *key) {
  int hops;
  lua_pushvalue(L, idx);
  for (hops = 0; hops < 8; hops++) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushstring(L, key);
      if (lua_rawget(L, -2) != LUA_TNIL) {
        lua_remove(L, -2);
        return;
      }
      lua_pop(L, 1);
    }
    if (!lua_getmetatable(L, -1)) break;
    lua_pushliteral(L, "__index");
    lua_rawget(L, -2);
    lua_remove(L, -2);
    lua_remove(L, -2);
    if (lua_type(L, -1) != LUA_TTABLE) break;
  }
  lua_pop(L, 1);
  lua_pushnil(L);
}

/* [-0, +0] adds to the set at set the names in the table at t (and its
 * __index tables) that start with word; only functions if methods. */
static void collect(lua_State *L, int t, const char *word, int methods, int set) {
  size_t wl = strlen(word);
  int hops;
  lua_pushvalue(L, t);
  for (hops = 0; hops < 8; hops++) {
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_pushnil(L);
      while (lua_next(L, -2)) {
        size_t kl;
        const char *k;
        if (lua_type(L, -2) == LUA_TSTRING && (!methods || lua_type(L, -1) == LUA_TFUNCTION)) {
          k = lua_tolstring(L, -2, &kl);
          if (kl >= wl && memcmp(k, word, wl) == 0 && is_ident(k, kl)) {
            lua_pushvalue(L, -2);
            lua_pushboolean(L, 1);
            lua_rawset(L, set);
          }
        }
        lua_pop(L, 1);
      }
    }
    if (!lua_getmetatable(L, -1)) break;
    lua_pushliteral(L, "__index");
    lua_rawget(L, -2);
    lua_remove(L, -2);
    lua_remove(L, -2);
    if (lua_type(L, -1) != LUA_TTABLE) break;
  }
  lua_pop(L, 1);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Computes the candidates for text into M.matches.  Run in protected mode
 * with text as a light userdata. */
static int build_matches(lua_State *L) {
  const char *text = lua_touserdata(L, 1);
  const char *sep = NULL, *p, *word;
  size_t n = 0, cap = 16;
  int set, methods = 0;
  lua_settop(L, 0);
  lua_newtable(L);
  set = 1;
  for (p = text; *p; p++)
    if (*p == '.' || *p == ':') sep = p;
  if (sep == NULL) {
    const char *kw;
    int k, nctx = (int)(sizeof contextual / sizeof contextual[0]);
    word = text;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    collect(L, 2, word, 0, set);
    for (k = 0; (kw = k < nctx ? contextual[k] : ml_dialect_keyword(k - nctx)) != NULL; k++)
      if (strncmp(kw, word, strlen(word)) == 0) {
        lua_pushboolean(L, 1);
        lua_setfield(L, set, kw);
      }
  } else {
    /* Resolves the path before sep, part by part, from the globals. */
    const char *s = text;
    word = sep + 1;
    methods = *sep == ':';
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
    while (s < sep) {
      const char *e = s;
      while (e < sep && *e != '.' && *e != ':') e++;
      if (e == s || !is_ident(s, (size_t)(e - s)) || (*e == ':' && e != sep)) return 0;
      lua_pushlstring(L, s, (size_t)(e - s));
      lookup(L, -2, lua_tostring(L, -1));
      lua_remove(L, -2);
      lua_remove(L, -2);
      if (lua_isnil(L, -1)) return 0;
      s = e + 1;
    }
    collect(L, lua_gettop(L), word, methods, set);
  }
  M.matches = calloc(cap, sizeof(char *));
  if (M.matches == NULL) return 0;
  lua_pushnil(L);
  while (lua_next(L, set)) {
    size_t pl = (size_t)(word - text), kl;
    const char *k = lua_tolstring(L, -2, &kl);
    char *m;
    lua_pop(L, 1);
    if (n + 1 >= cap) {
      char **nm = realloc(M.matches, (cap *= 2) * sizeof(char *));
      if (nm == NULL) break;
      M.matches = nm;
    }
    m = malloc(pl + kl + 1);
    if (m == NULL) break;
    memcpy(m, text, pl);
    memcpy(m + pl, k, kl + 1);
    M.matches[n++] = m;
  }
  qsort(M.matches, n, sizeof(char *), cmp_str);
  M.nmatches = n;
  return 0;
}

/* Frees the candidates not handed out yet (libedit frees the others). */
void ml__complete_free(void) {
  size_t i;
  for (i = M.nextmatch; i < M.nmatches; i++) free(M.matches[i]);
  free(M.matches);
  M.matches = NULL;
  M.nmatches = M.nextmatch = 0;
}

/* libedit's generator: state 0 starts a new completion; each call hands
 * out one malloc'ed candidate, which libedit frees. */
static char *complete_gen(const char *text, int state) {
  lua_State *L = M.L;
  if (state == 0) {
    int top = lua_gettop(L);
    ml__complete_free();
    lua_pushcfunction(L, build_matches);
    lua_pushlightuserdata(L, (void *)text);
    lua_pcall(L, 1, 0, 0); /* no candidates if it fails */
    lua_settop(L, top);
  }
  if (M.nextmatch < M.nmatches) return M.matches[M.nextmatch++];
  return NULL;
}

static char **complete(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* never fall back to file names */
  return rl_completion_matches(text, complete_gen);
}

/* Makes Tab complete Lua names over the globals of L (the REPL's state).
 * Call after rl_initialize. */
void ml__complete_install(lua_State *L) {
  static char breaks[] = " \t\n\"\\'`@$><=;|&{}()[],+-*/%^#~";
  M.L = L;
  rl_attempted_completion_function = complete;
  rl_basic_word_break_characters = breaks;
  rl_completer_word_break_characters = breaks;
  rl_completion_append_character = '\0'; /* no space after a name */
}
