/* check_asyncpass_lua.c: the async/await source pass (vm/dialect/asyncpass.c):
 * what its output means when Lua runs it (with stand-ins for the runtime),
 * the callee names it records, and robustness (deep chains, random token
 * soup).  The text it writes is check_asyncpass.c.
 *
 * Alone, from the top of the tree:
 *   cc -std=gnu11 -Wall -Wextra -DSTANDALONE -Ivm $(pkg-config --cflags lua5.4 check) \
 *     tests/unit/check_asyncpass_lua.c vm/dialect/asyncpass.c vm/dialect/buf.c \
 *     $(pkg-config --libs lua5.4 check) -o /tmp/check_asyncpass_lua
 * (add -fsanitize=address,undefined -fno-omit-frame-pointer to check
 * memory use). */
#include "asyncpass_fixture.h"

/* ---------------------------------------------------------------- */
/* What the output means, run with stand-ins for the runtime's globals. */

/* Stand-ins for the runtime (vm/core/coro.c).  Calling an async function makes
 * a Coroutine object (a table here, counted in __made); await runs it.
 * __awcall runs an async function's body directly, with no Coroutine,
 * and calls anything else and awaits what it returns; __awmeth looks the
 * method up on the object and does the same with the object first. */
static const char *stubs = "__made = 0\n"
                           "local amt = {__call = function(self, ...)\n"
                           "  __made = __made + 1\n"
                           "  return {coro = self.body, args = table.pack(...)}\n"
                           "end}\n"
                           "function __ml_async(name, fn)\n"
                           "  return setmetatable({name = name, body = fn}, amt)\n"
                           "end\n"
                           "function await(x)\n"
                           "  if type(x) == 'table' and x.coro then\n"
                           "    return x.coro(table.unpack(x.args, 1, x.args.n))\n"
                           "  end\n"
                           "  return x\n"
                           "end\n"
                           "function __awcall(f, ...)\n"
                           "  if getmetatable(f) == amt then return f.body(...) end\n"
                           "  return await((f(...)))\n"
                           "end\n"
                           "function __awmeth(o, name, ...)\n"
                           "  return __awcall(o[name], o, ...)\n"
                           "end\n";

/* Runs the pass on src, then the output after the stubs; returns the
 * results of the chunk, concatenated with tostring and ",". */
static const char *run_lua(const char *src) {
  static char res[256];
  lua_State *L = luaL_newstate();
  int st, i, n;
  ck_assert_ptr_nonnull(L);
  luaL_openlibs(L);
  ck_assert_int_eq(luaL_dostring(L, stubs), LUA_OK);
  run(src);
  st = luaL_loadbuffer(L, out.data, out.len, "=t.lua");
  if (st == LUA_OK) st = lua_pcall(L, 0, LUA_MULTRET, 0);
  ck_assert_msg(st == LUA_OK, "%s\n--- output:\n%s", lua_tostring(L, -1), out.data);
  res[0] = '\0';
  n = lua_gettop(L);
  for (i = 1; i <= n; i++) {
    size_t k = strlen(res);
    snprintf(res + k, sizeof res - k, "%s%s", i > 1 ? "," : "", luaL_tolstring(L, i, NULL));
    lua_pop(L, 1);
  }
  lua_close(L);
  return res;
}

START_TEST(test_asyncpass_semantics_statement_forms) {
  ck_assert_str_eq(run_lua("async function add(a, b) return a + b end\n"
                           "return add.name, await add(1, 2)"),
                   "add,3");
  ck_assert_str_eq(run_lua("local obj = {k = 10}\n"
                           "async function obj:get(x) return self.k + x end\n"
                           "return obj.get.name, await obj:get(5)"),
                   "obj:get,15");
  ck_assert_str_eq(run_lua("local m = {n = {}}\n"
                           "async function m.n.f() return 7 end\n"
                           "return m.n.f.name, await m.n.f()"),
                   "m.n.f,7");
  ck_assert_str_eq(run_lua("local async function fact(n)\n"
                           "  if n <= 1 then return 1 end\n"
                           "  return n * await fact(n - 1)\n"
                           "end\n"
                           "return await fact(5), fact.name, rawget(_G, 'fact')"),
                   "120,fact,nil");
}
END_TEST

START_TEST(test_asyncpass_semantics_expressions) {
  ck_assert_str_eq(run_lua("local f = async function(x) return x * 2 end\n"
                           "return f.name, await f(4)"),
                   "nil,8");
  ck_assert_str_eq(run_lua("async function two() return 2 end\n"
                           "local t = {1, 2}\n"
                           "return -await two() + 1, await two() ^ 2, #await t, not await two()"),
                   "-1,4.0,2,false");
  ck_assert_str_eq(run_lua("async function id(...) return ... end\n"
                           "return await id(await id(3), 4)"),
                   "3,4");
  ck_assert_str_eq(run_lua("local await_ = 0; local t = {await = 5}\n"
                           "return t.await, (await {6})[1], await(7), await 8"),
                   "5,6,7,8");
}
END_TEST

START_TEST(test_asyncpass_semantics_call_forms) {
  /* String and table arguments, dotted callees, and a plain function that
   * returns something awaitable. */
  ck_assert_str_eq(run_lua("async function len(t) return #t end\n"
                           "local m = {len = len}\n"
                           "return await len{1, 2, 3}, await len\"abcd\", await m.len[[xy]]"),
                   "3,4,2");
  ck_assert_str_eq(run_lua("async function add(a, b) return a + b end\n"
                           "local function later(a, b) return add(a, b) end\n"
                           "return await later(1, 2), await later(3, 4) * 2"),
                   "3,14");
  ck_assert_str_eq(run_lua("async function id(...) return ... end\n"
                           "local fs = {id}\n"
                           "return await fs[1](await id(5, 6), 7)"),
                   "5,7");
}
END_TEST

START_TEST(test_asyncpass_semantics_method_forms) {
  ck_assert_str_eq(run_lua("local q = {items = {'a', 'b'}}\n"
                           "async function q:get() return table.remove(self.items, 1) end\n"
                           "async function q:put(x) self.items[#self.items + 1] = x end\n"
                           "await q:put'c'\n"
                           "await q:put{}\n"
                           "return await q:get(), await q:get(), await q:get(), #q.items"),
                   "a,b,c,1");
  /* A plain method that returns a Coroutine is awaited too. */
  ck_assert_str_eq(run_lua("local obj = {k = 2}\n"
                           "async function obj:slow(x) return self.k * x end\n"
                           "function obj:fast(x) return self:slow(x + 1) end\n"
                           "return await obj:fast(4)"),
                   "10");
}
END_TEST

START_TEST(test_asyncpass_semantics_method_object_evaluated_once) {
  /* `await o:m(x)` evaluates o once, as `o:m(x)` does. */
  ck_assert_str_eq(run_lua("local n, obj = 0, {k = 1}\n"
                           "async function obj:get(x) return self.k + x end\n"
                           "async function obj:cat(s) return s .. self.k end\n"
                           "local function o() n = n + 1; return obj end\n"
                           "local v = await o():get(2)\n"
                           "local w = await o():cat\"k\"\n"
                           "return v, w, n"),
                   "3,k1,2");
}
END_TEST

START_TEST(test_asyncpass_semantics_awaited_call_makes_no_coroutine) {
  /* Awaiting a call of an async function goes straight to its body; only
   * a call that is not awaited at once makes a Coroutine object. */
  ck_assert_str_eq(run_lua("local obj = {}\n"
                           "async function f(x) return x end\n"
                           "async function obj:m(x) return x end\n"
                           "local a = await f(1) + await obj:m(2) + #await f{3}\n"
                           "local made = __made\n"
                           "local c = f(4)\n"
                           "return a, made, await c, __made"),
                   "4,0,4,1");
}
END_TEST

/* ---------------------------------------------------------------- */
/* Robustness.                                                       */

START_TEST(test_asyncpass_deep_await_chain) {
  /* 200k nested awaits: linear time, no recursion. */
  const int n = 200000;
  size_t len = (size_t)n * 6 + 1;
  char *src = malloc(len + 1);
  size_t i, opens = 0, closes = 0;
  int k;
  ck_assert_ptr_nonnull(src);
  for (k = 0; k < n; k++) memcpy(src + (size_t)k * 6, "await ", 6);
  src[len - 1] = 'x';
  src[len] = '\0';
  ck_assert_int_eq(ml__asyncpass(src, len, "@t.lua", &out, err, sizeof err), 0);
  for (i = 0; i < out.len; i++) {
    opens += out.data[i] == '(';
    closes += out.data[i] == ')';
  }
  ck_assert_uint_eq(opens, (size_t)n);
  ck_assert_uint_eq(closes, (size_t)n);
  ck_assert_int_eq(memcmp(out.data, "await(await(", 12), 0);
  free(src);
}
END_TEST

START_TEST(test_asyncpass_random_token_soup) {
  /* Random mixes of fragments: the pass either fails with a message or
   * keeps the line count, and never reads or writes out of bounds. */
  static const char *frag[] = {
    "async ", "await ",  "function ", "f",        "(",      ")",  "end ", "\n",   "local ",
    "\"s\"",  "'\\z\n'", "[[\n]]",    "--[[\n]]", "-- c\n", ".",  ":",    "{",    "}",
    "[",      "]",       "1.5e3 ",    "0x1p",     "not ",   "#",  "...",  "=",    ",",
    "\r",     "if ",     "do ",       "repeat ",  "until ", "x ", "\"",   "[==[", "\\"};
  unsigned seed = 12345;
  int round, j;
  char src[256];
  for (round = 0; round < 20000; round++) {
    size_t len = 0;
    int rc, parts;
    seed = seed * 1103515245u + 12345u;
    parts = (int)(seed >> 16) % 24;
    for (j = 0; j < parts; j++) {
      const char *f;
      seed = seed * 1103515245u + 12345u;
      f = frag[(seed >> 16) % (sizeof frag / sizeof *frag)];
      if (len + strlen(f) >= sizeof src) break;
      memcpy(src + len, f, strlen(f));
      len += strlen(f);
    }
    out.len = 0;
    rc = ml__asyncpass(src, len, "@t.lua", &out, err, sizeof err);
    if (rc == 0) {
      lua_State *L = luaL_newstate();
      int lines_in = lua_lines(src, len), lines_out = lua_lines(out.data, out.len);
      ck_assert_msg(lines_in == lines_out, "lines %d -> %d for [%.*s] -> [%s]", lines_in, lines_out,
                    (int)len, src, out.data);
      luaL_loadbuffer(L, out.data, out.len, "=t"); /* must not crash */
      lua_close(L);
    } else {
      ck_assert_int_eq(rc, -EINVAL);
      ck_assert_msg(strncmp(err, "t.lua:", 6) == 0, "message %s", err);
    }
  }
}
END_TEST

/* The pass records each __awcall's callee by line, for the runtime's
 * "attempt to call a nil value (field 'x')". */
START_TEST(test_asyncpass_names_record_awaited_callees) {
  ml_Buf names = {0};
  const char *src = "await asyncio.typo()\nawait f(1)\nawait a.b\n  .c \"s\"\n"
                    "await g()(x)\nawait o:m()\nawait t[1]()\n";
  ck_assert_int_eq(ml__asyncpass_names(src, strlen(src), "@t.lua", &out, &names, err, sizeof err),
                   0);
  ck_assert_str_eq(names.data, "1\tfield 'typo'\n2\t'f'\n3\tfield 'c'\n5\t\n7\t\n");
  /* A failed pass leaves names as it was. */
  ck_assert_int_eq(
    ml__asyncpass_names("await f() async x", 17, "@t.lua", &out, &names, err, sizeof err), -EINVAL);
  ck_assert_str_eq(names.data, "1\tfield 'typo'\n2\t'f'\n3\tfield 'c'\n5\t\n7\t\n");
  ml__buf_free(&names);
}
END_TEST

Suite *asyncpass_lua_suite(void) {
  Suite *s = suite_create("asyncpass_lua");
  TCase *tc;

  tc = tcase_create("semantics");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_asyncpass_semantics_statement_forms);
  tcase_add_test(tc, test_asyncpass_semantics_expressions);
  tcase_add_test(tc, test_asyncpass_semantics_call_forms);
  tcase_add_test(tc, test_asyncpass_semantics_method_forms);
  tcase_add_test(tc, test_asyncpass_semantics_method_object_evaluated_once);
  tcase_add_test(tc, test_asyncpass_semantics_awaited_call_makes_no_coroutine);
  suite_add_tcase(s, tc);

  tc = tcase_create("callee names");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_asyncpass_names_record_awaited_callees);
  suite_add_tcase(s, tc);

  tc = tcase_create("robustness");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_asyncpass_deep_await_chain);
  tcase_add_test(tc, test_asyncpass_random_token_soup);
  suite_add_tcase(s, tc);

  return s;
}

#ifdef STANDALONE
ASYNCPASS_MAIN(asyncpass_lua_suite)
#endif
