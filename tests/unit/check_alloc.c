/* check_alloc.c: the state's allocator, alone and under a real Lua VM. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <check.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "core/alloc.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static ml_Alloc *A;

static void setup(void) {
  A = ml__alloc_new(0);
  ck_assert_ptr_nonnull(A);
}

static void teardown(void) {
  ml__alloc_free(A);
  A = NULL;
}

static void *al(size_t n) { return ml__alloc_lua(A, NULL, 0, n); }
static void *re(void *p, size_t o, size_t n) { return ml__alloc_lua(A, p, o, n); }
static void fr(void *p, size_t o) { ck_assert_ptr_null(ml__alloc_lua(A, p, o, 0)); }

/* Fills p[0..n) with a pattern that depends on seed and position. */
static void fill(void *p, size_t n, unsigned seed) {
  unsigned char *c = p;
  for (size_t i = 0; i < n; i++) c[i] = (unsigned char)(seed * 131 + i * 7);
}

/* The first index where p[0..n) differs from fill's pattern, or n. */
static size_t check_fill(const void *p, size_t n, unsigned seed) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++)
    if (c[i] != (unsigned char)(seed * 131 + i * 7)) return i;
  return n;
}

/* ---- classes ------------------------------------------------------ */

START_TEST(test_alloc_every_size_round_trips) {
  /* Several live blocks of every size from 1 to 600 (pools and malloc)
   * hold their own bytes, are aligned for any Lua object, and all go
   * back. */
  enum { MAXN = 600, PER = 3 };
  static void *p[MAXN + 1][PER];
  for (size_t n = 1; n <= MAXN; n++)
    for (int k = 0; k < PER; k++) {
      p[n][k] = al(n);
      ck_assert_ptr_nonnull(p[n][k]);
      ck_assert_uint_eq((uintptr_t)p[n][k] % _Alignof(max_align_t), 0);
      fill(p[n][k], n, (unsigned)(n * PER + k));
    }
  for (size_t n = 1; n <= MAXN; n++)
    for (int k = 0; k < PER; k++) {
      ck_assert_uint_eq(check_fill(p[n][k], n, (unsigned)(n * PER + k)), n);
      fr(p[n][k], n);
    }
  ck_assert_uint_eq(ml__alloc_used(A), 0);
}
END_TEST

START_TEST(test_alloc_freed_block_is_reused) {
  /* A freed block serves the next request of its class, so a workload
   * that churns objects of one size does not grow. */
  void *p = al(40);
  fr(p, 40);
  void *q = al(33); /* same 48-byte class */
  ck_assert_ptr_eq(q, p);
  fr(q, 33);
}
END_TEST

START_TEST(test_alloc_new_block_osize_is_a_type_tag) {
  /* With ptr == NULL Lua passes the object type in osize (5 = table). */
  void *p = ml__alloc_lua(A, NULL, 5, 56);
  ck_assert_ptr_nonnull(p);
  ck_assert_uint_eq(ml__alloc_used(A), 56);
  fr(p, 56);
  ck_assert_uint_eq(ml__alloc_used(A), 0);
}
END_TEST

START_TEST(test_alloc_free_of_null_is_harmless) {
  ck_assert_ptr_null(ml__alloc_lua(A, NULL, 0, 0));
  ck_assert_ptr_null(ml__alloc_lua(A, NULL, 7, 0));
  ck_assert_uint_eq(ml__alloc_used(A), 0);
}
END_TEST

/* ---- realloc ------------------------------------------------------ */

START_TEST(test_alloc_realloc_keeps_content_across_classes) {
  /* Growing and shrinking through every kind of move (same class, class
   * to class, pool to malloc, malloc to malloc, malloc to pool) keeps
   * the first min(osize, nsize) bytes. */
  static const size_t sizes[] = {8,   16,  24,  100, 130, 300, 512, 513, 4000,  70000,
                                 700, 600, 200, 17,  3,   1,   520, 2,   70000, 5};
  size_t n = sizes[0];
  unsigned char *p = al(n);
  fill(p, n, 1);
  for (size_t i = 1; i < sizeof sizes / sizeof *sizes; i++) {
    size_t m = sizes[i], keep = n < m ? n : m;
    unsigned char *q = re(p, n, m);
    ck_assert_msg(q != NULL, "resize %zu -> %zu failed", n, m);
    ck_assert_msg(check_fill(q, keep, 1) == keep, "resize %zu -> %zu lost byte %zu", n, m,
                  check_fill(q, keep, 1));
    if (m > n) fill(q, m, 1);
    ck_assert_uint_eq(ml__alloc_used(A), m);
    p = q;
    n = m;
  }
  fr(p, n);
  ck_assert_uint_eq(ml__alloc_used(A), 0);
}
END_TEST

START_TEST(test_alloc_realloc_within_class_stays_in_place) {
  void *p = al(20);
  ck_assert_ptr_eq(re(p, 20, 32), p);
  ck_assert_ptr_eq(re(p, 32, 17), p);
  ck_assert_uint_eq(ml__alloc_used(A), 17);
  fr(p, 17);
}
END_TEST

START_TEST(test_alloc_impossible_growth_fails_and_keeps_block) {
  /* No cap: malloc itself refuses; the old block stays valid.  ASan
   * aborts on such sizes instead of returning NULL, so not under it. */
#ifndef UNDER_ASAN
  char *p = al(100);
  fill(p, 100, 9);
  ck_assert_ptr_null(re(p, 100, SIZE_MAX / 2));
  ck_assert_ptr_null(re(p, 100, SIZE_MAX - 8));
  ck_assert_uint_eq(check_fill(p, 100, 9), 100);
  ck_assert_uint_eq(ml__alloc_used(A), 100);
  char *q = al(1000);
  ck_assert_ptr_null(re(q, 1000, SIZE_MAX - 8));
  fr(q, 1000);
  fr(p, 100);
#endif
}
END_TEST

/* ---- cap ---------------------------------------------------------- */

START_TEST(test_alloc_cap_refuses_growth) {
  ml__alloc_set_cap(A, 1000);
  char *p = al(600);
  ck_assert_ptr_nonnull(p);
  fill(p, 600, 3);
  ck_assert_ptr_null(al(401)); /* 1001 > 1000 */
  ck_assert_uint_eq(ml__alloc_used(A), 600);
  ck_assert_ptr_null(re(p, 600, 1001)); /* growth past the cap */
  ck_assert_uint_eq(check_fill(p, 600, 3), 600);
  char *q = re(p, 600, 1000); /* exactly at the cap is allowed */
  ck_assert_ptr_nonnull(q);
  ck_assert_uint_eq(ml__alloc_used(A), 1000);
  ck_assert_ptr_null(al(1));
  ck_assert_uint_eq(check_fill(q, 600, 3), 600);
  fr(q, 1000);
  ck_assert_ptr_nonnull(p = al(1000));
  fr(p, 1000);
}
END_TEST

START_TEST(test_alloc_cap_allows_frees_and_shrinks) {
  /* A cap lowered below what is in use refuses growth but never a free
   * or a shrink, so a script over its budget can still give memory back. */
  char *small = al(64), *big = al(5000);
  fill(big, 5000, 4);
  ml__alloc_set_cap(A, 100);
  ck_assert_ptr_null(al(1));
  ck_assert_ptr_null(re(small, 64, 65));
  char *b2 = re(big, 5000, 3000); /* large to large */
  ck_assert_ptr_nonnull(b2);
  char *b3 = re(b2, 3000, 200); /* large to pool */
  ck_assert_ptr_nonnull(b3);
  char *b4 = re(b3, 200, 20); /* pool to pool */
  ck_assert_ptr_nonnull(b4);
  ck_assert_uint_eq(check_fill(b4, 20, 4), 20);
  ck_assert_uint_eq(ml__alloc_used(A), 84);
  ck_assert_ptr_nonnull(re(b4, 20, 36)); /* 100: at the cap again */
  ck_assert_ptr_null(al(1));
  fr(small, 64);
  ck_assert_ptr_nonnull(small = al(64)); /* freed room is usable */
  fr(small, 64);
  fr(b4, 36);
  ck_assert_uint_eq(ml__alloc_used(A), 0);
}
END_TEST

START_TEST(test_alloc_cap_zero_means_none) {
  ml__alloc_set_cap(A, 10);
  ck_assert_ptr_null(al(11));
  ml__alloc_set_cap(A, 0);
  void *p = al(1 << 20);
  ck_assert_ptr_nonnull(p);
  fr(p, 1 << 20);
}
END_TEST

START_TEST(test_alloc_shrink_never_fails_when_malloc_does) {
  /* While malloc fails (RLIMIT_AS at zero), shrinks that would move a
   * block into an exhausted pool keep the block where it is instead, and
   * growth fails cleanly.  Under ASan the limit would break the
   * sanitizer's own mappings, so the test only runs without it. */
#ifndef UNDER_ASAN
  char *big = al(2000), *mid = al(500);
  fill(big, 2000, 5);
  fill(mid, 500, 6);
  struct rlimit old, lim;
  ck_assert_int_eq(getrlimit(RLIMIT_AS, &old), 0);
  lim = old;
  lim.rlim_cur = 0;
  ck_assert_int_eq(setrlimit(RLIMIT_AS, &lim), 0);
  void *chain = NULL, *b = NULL;
  size_t taken = 0;
  while (taken < 10 * 1000 * 1000 && (b = al(16)) != NULL) {
    *(void **)b = chain; /* keep them all live, linked through themselves */
    chain = b;
    taken++;
  }
  void *big2 = re(big, 2000, 10);      /* malloc to exhausted pool */
  void *mid2 = re(mid, 500, 12);       /* pool to exhausted pool */
  void *grown = re(mid2, 12, 1 << 20); /* needs malloc: must fail */
  setrlimit(RLIMIT_AS, &old);
  ck_assert_msg(b == NULL, "malloc never failed under RLIMIT_AS");
  ck_assert_ptr_eq(big2, big);
  ck_assert_ptr_eq(mid2, mid);
  ck_assert_ptr_null(grown);
  ck_assert_uint_eq(check_fill(big2, 10, 5), 10);
  ck_assert_uint_eq(check_fill(mid2, 12, 6), 12);
  while (chain != NULL) {
    void *next = *(void **)chain;
    fr(chain, 16);
    chain = next;
  }
  fr(big2, 10);
  fr(mid2, 12);
  ck_assert_uint_eq(ml__alloc_used(A), 0);
  /* The kept blocks joined the 16-byte pool and serve it. */
  void *p = al(16), *q = al(16);
  ck_assert_ptr_eq(p, mid);
  ck_assert_ptr_eq(q, big);
  fr(p, 16);
  fr(q, 16);
#endif
}
END_TEST

/* ---- accounting --------------------------------------------------- */

START_TEST(test_alloc_used_and_peak_count_requested_bytes) {
  void *a = al(10), *b = al(100), *c = al(1000);
  ck_assert_uint_eq(ml__alloc_used(A), 1110);
  fr(b, 100);
  ck_assert_uint_eq(ml__alloc_used(A), 1010);
  ck_assert_uint_eq(ml__alloc_peak(A), 1110);
  a = re(a, 10, 50);
  ck_assert_uint_eq(ml__alloc_used(A), 1050);
  c = re(c, 1000, 2000);
  ck_assert_uint_eq(ml__alloc_used(A), 2050);
  ck_assert_uint_eq(ml__alloc_peak(A), 2050);
  c = re(c, 2000, 30);
  ck_assert_uint_eq(ml__alloc_used(A), 80);
  ml__alloc_set_cap(A, 100);
  ck_assert_ptr_null(re(a, 50, 71)); /* a failure counts nothing */
  ck_assert_uint_eq(ml__alloc_used(A), 80);
  ml__alloc_set_cap(A, 0);
  fr(a, 50);
  fr(c, 30);
  ck_assert_uint_eq(ml__alloc_used(A), 0);
  ck_assert_uint_eq(ml__alloc_peak(A), 2050);
}
END_TEST

/* ---- under a Lua VM ----------------------------------------------- */

static lua_State *new_lua(void) {
  lua_State *L = lua_newstate(ml__alloc_lua, A);
  ck_assert_ptr_nonnull(L);
  luaL_openlibs(L);
  return L;
}

/* Lua's own byte count, which the allocator's must equal. */
static size_t lua_bytes(lua_State *L) {
  return (size_t)lua_gc(L, LUA_GCCOUNT) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB);
}

static const char grow_forever[] = "local t, i = {}, 0\n"
                                   "while true do i = i + 1; t[i] = ('x'):rep(64) .. i end\n";

START_TEST(test_alloc_used_matches_lua_count) {
  lua_State *L = new_lua();
  ck_assert_int_eq(
    luaL_dostring(
      L, "local t = {} for i = 1, 5000 do t[i] = {i, tostring(i), function() return i end} end\n"
         "t = nil collectgarbage()"),
    LUA_OK);
  ck_assert_uint_eq(ml__alloc_used(A), lua_bytes(L));
  lua_close(L);
  ck_assert_uint_eq(ml__alloc_used(A), 0);
}
END_TEST

START_TEST(test_alloc_lua_cap_raises_memory_error) {
  lua_State *L = new_lua();
  size_t base = ml__alloc_used(A), cap = base + 2 * 1024 * 1024;
  ml__alloc_set_cap(A, cap);
  ck_assert_int_eq(luaL_loadstring(L, grow_forever), LUA_OK);
  ck_assert_int_eq(lua_pcall(L, 0, 0, 0), LUA_ERRMEM);
  ck_assert_str_eq(lua_tostring(L, -1), "not enough memory");
  ck_assert_uint_le(ml__alloc_peak(A), cap);
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  ck_assert_uint_lt(ml__alloc_used(A), base + 64 * 1024);
  /* The state is usable again. */
  ck_assert_int_eq(
    luaL_dostring(L, "local s = 0 for i = 1, 1000 do s = s + #tostring(i) end return s"), LUA_OK);
  ck_assert_int_eq(lua_tointeger(L, -1), 2893);
  lua_close(L);
  ck_assert_uint_eq(ml__alloc_used(A), 0);
}
END_TEST

START_TEST(test_alloc_lua_pcall_catches_memory_error) {
  /* Inside a script: pcall returns false, "not enough memory", and the
   * script carries on once the garbage is collected. */
  lua_State *L = new_lua();
  ml__alloc_set_cap(A, ml__alloc_used(A) + 1024 * 1024);
  ck_assert_int_eq(luaL_loadstring(L, "local ok, err = pcall(load(...))\n"
                                      "collectgarbage()\n"
                                      "local u = {} for i = 1, 1000 do u[i] = 'v' .. i end\n"
                                      "return ok, err, #u"),
                   LUA_OK);
  lua_pushstring(L, grow_forever);
  ck_assert_int_eq(lua_pcall(L, 1, 3, 0), LUA_OK);
  ck_assert(lua_isboolean(L, 1) && !lua_toboolean(L, 1));
  ck_assert_str_eq(lua_tostring(L, 2), "not enough memory");
  ck_assert_int_eq(lua_tointeger(L, 3), 1000);
  lua_close(L);
  ck_assert_uint_eq(ml__alloc_used(A), 0);
}
END_TEST

Suite *alloc_suite(void) {
  Suite *s = suite_create("alloc");
  TCase *tc;

  tc = tcase_create("classes");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_alloc_every_size_round_trips);
  tcase_add_test(tc, test_alloc_freed_block_is_reused);
  tcase_add_test(tc, test_alloc_new_block_osize_is_a_type_tag);
  tcase_add_test(tc, test_alloc_free_of_null_is_harmless);
  suite_add_tcase(s, tc);

  tc = tcase_create("realloc");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_alloc_realloc_keeps_content_across_classes);
  tcase_add_test(tc, test_alloc_realloc_within_class_stays_in_place);
  tcase_add_test(tc, test_alloc_impossible_growth_fails_and_keeps_block);
  suite_add_tcase(s, tc);

  tc = tcase_create("cap");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_alloc_cap_refuses_growth);
  tcase_add_test(tc, test_alloc_cap_allows_frees_and_shrinks);
  tcase_add_test(tc, test_alloc_cap_zero_means_none);
  tcase_add_test(tc, test_alloc_shrink_never_fails_when_malloc_does);
  suite_add_tcase(s, tc);

  tc = tcase_create("accounting");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_alloc_used_and_peak_count_requested_bytes);
  tcase_add_test(tc, test_alloc_used_matches_lua_count);
  suite_add_tcase(s, tc);

  tc = tcase_create("lua");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_alloc_lua_cap_raises_memory_error);
  tcase_add_test(tc, test_alloc_lua_pcall_catches_memory_error);
  suite_add_tcase(s, tc);

  return s;
}

#ifdef STANDALONE
int main(void) {
  SRunner *sr = srunner_create(alloc_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
#endif
