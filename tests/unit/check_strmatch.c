/* check_strmatch.c: the budgeted string matcher (vm/embed/strmatch.c)
 * gives what Lua's own string.find, match, gmatch and gsub give - the
 * same results, captures and error messages - on a table of patterns that
 * covers every pattern item, and on seeded random patterns and subjects;
 * and it is installed where the budget or the sandbox needs it. */
#include <stdio.h>
#include <string.h>
#include <check.h>
#include "moonloop.h"
#include "host_util.h"

static ml_State *S;
static lua_State *L;

/* A state whose global `stock` holds Lua's own four functions, taken
 * before the budget replaced them in the string library. */
static void setup(void) {
  S = ml_state_new(NULL);
  ck_assert_ptr_nonnull(S);
  L = ml_state_lua(S);
  lua_newtable(L);
  lua_getglobal(L, "string");
  for (const char *const *f = (const char *const[]){"find", "match", "gmatch", "gsub", NULL}; *f;
       f++) {
    lua_getfield(L, -1, *f);
    lua_setfield(L, -3, *f);
  }
  lua_pop(L, 1);
  lua_setglobal(L, "stock");
  ml_state_set_cpu_budget(S, (unsigned long)-1);
}

static void teardown(void) {
  ml_state_close(S);
  S = NULL;
  L = NULL;
}

/* The comparison, in Lua: same(name, f, g, ...) calls both and compares
 * every result (or the error message). */
static const char *const prelude =
  "local function pack(ok, ...) return { ok = ok, n = select('#', ...), ... } end\n"
  "local function show(r)\n"
  "  local t = {}\n"
  "  for i = 1, r.n do t[i] = type(r[i]) .. ':' .. tostring(r[i]) end\n"
  "  -- Lua names the stock function '?' (no library field holds it now)\n"
  "  if not r.ok then t[1] = stock.gsub(stock.gsub(t[1], \"to '%?'\", 'to F'), \"to 'string%.%a+'\", 'to F') end\n"
  "  return (r.ok and 'ok ' or 'error ') .. table.concat(t, ',')\n"
  "end\n"
  "local function call(name, f, ...)\n"
  "  if name == 'gmatch' then\n"
  "    local args = table.pack(...)\n"
  "    return pack(pcall(function()\n"
  "      local out = {}\n"
  "      for a, b, c in f(table.unpack(args, 1, args.n)) do\n"
  "        out[#out + 1] = tostring(a) .. '|' .. tostring(b) .. '|' .. tostring(c)\n"
  "        if #out > 200 then break end\n"
  "      end\n"
  "      return table.concat(out, ';')\n"
  "    end))\n"
  "  end\n"
  "  return pack(pcall(f, ...))\n"
  "end\n"
  "local bad = {}\n"
  "function same(name, ...)\n"
  "  local a, b = show(call(name, stock[name], ...)), show(call(name, string[name], ...))\n"
  "  if a ~= b and #bad < 5 then\n"
  "    local args = {}\n"
  "    for i = 1, select('#', ...) do args[i] = string.format('%q', tostring((select(i, ...)))) end\n"
  "    bad[#bad + 1] = name .. '(' .. table.concat(args, ', ') .. '): stock ' .. a .. ' / budgeted ' .. b\n"
  "  end\n"
  "end\n"
  "function verdict() return #bad == 0 and 'same' or table.concat(bad, '\\n') end\n";

static const char *run_compare(const char *body) {
  static char src[16384];
  snprintf(src, sizeof src, "%s%s\nreturn verdict()", prelude, body);
  return hu_run(S, L, src);
}

START_TEST(test_strmatch_is_installed_by_the_budget_and_the_sandbox) {
  ml_State *s2;
  lua_State *l2;
  ck_assert_str_eq(
    hu_run(S, L, "return tostring(string.find ~= stock.find and ('x').find == string.find)"),
    "true");
  s2 = ml_state_new(NULL);
  l2 = ml_state_lua(s2);
  ck_assert_str_eq(hu_run(s2, l2, "_G.f0 = string.find return 'x'"), "x");
  ck_assert_int_eq(ml_state_sandbox(s2, NULL), ML_OK);
  /* The trusted globals (the sandbox kept them aside): string.find there
   * is no longer what it was. */
  lua_getfield(l2, LUA_REGISTRYINDEX, "moonloop.trustedenv");
  lua_getfield(l2, -1, "f0");
  lua_getfield(l2, -2, "string");
  lua_getfield(l2, -1, "find");
  ck_assert_ptr_nonnull(lua_tocfunction(l2, -1));
  ck_assert_ptr_ne(lua_tocfunction(l2, -1), lua_tocfunction(l2, -3));
  lua_pop(l2, 4);
  /* The script's copy of string and the strings' methods: both counted,
   * i.e. not the function the state had before the sandbox. */
  ck_assert_str_eq(hu_run(s2, l2, "return tostring(string.find == ('x').find)"), "true");
  ml_state_close(s2);
}
END_TEST

START_TEST(test_strmatch_every_pattern_item_as_lua) {
  const char *r = run_compare(
    "local subjects = { '', 'hello world', 'key = value', '  trim me  ', 'a,b,,c', 'THE (quick) [brown] fox',\n"
    "  'f(a(b)c)d', 'aaa', 'abcabc', '123 456 -7.5e3', 'x\\0y\\0z', '\\200\\255 bytes', 'THE END', '%d %s' }\n"
    "local patterns = { '', 'o', 'l+', 'l*', 'l-', 'l?', 'x*', '^h', '^x', 'd$', '$', '^$', '.', '..-',\n"
    "  '%a+', '%A+', '%d+', '%D', '%l+', '%u+', '%s+', '%S+', '%w+', '%W', '%x+', '%p', '%c', '%g+',\n"
    "  '[%a_][%w_]*', '[^,]*', '[^%s]+', '[a-f]+', '[]]', '[^]]', '[%]]', '[a-]', '[-a]', '[%-]',\n"
    "  '(%w+) = (%w+)', '^%s*(.-)%s*$', '()', '()o()', '(h)(e)(l)(l)(o)', '((a)(b))', '(a)%1', '(.)%1',\n"
    "  '%b()', '%b[]', '%bxy', '%f[%w]%w+', '%f[%W]', '%f[%a]%a+%f[%A]', 'a.-b', '(.-),', '%.', '%%',\n"
    "  '[%d.]+', 'e[%+%-]?%d+', '\\0', '[\\0]', '%z', '\\200', '[\\128-\\255]+', 'x?y', '(a*(.)%w(%s*))',\n"
    "  -- malformed: the errors must match too\n"
    "  '%', '[a', '[', '(', ')', '%b', '%ba', '%f', '%fx', '%1', '(%1)', '(()', '%g%', '[%', 'a)' }\n"
    "for _, s in ipairs(subjects) do\n"
    "  for _, p in ipairs(patterns) do\n"
    "    same('find', s, p) same('match', s, p) same('gmatch', s, p)\n"
    "    same('find', s, p, 3) same('find', s, p, -2) same('match', s, p, 100) same('find', s, p, 1, true)\n"
    "    same('gsub', s, p, '<%0>') same('gsub', s, p, '%1%1', 2)\n"
    "    same('gsub', s, p, function(a, b) return b and a .. b or nil end)\n"
    "    same('gsub', s, p, { hello = 'HI', a = false, key = 1 })\n"
    "    same('gmatch', s, p, 4)\n"
    "  end\n"
    "end\n"
    "same('gsub', 'abc', '%w', '%')  same('gsub', 'abc', '%w', '%x')  same('gsub', 'abc', '%w', '%2')\n"
    "same('gsub', 'abc', '()', '%1')  same('gsub', 'abc', '%w', {})  same('gsub', 'abc', '%w', function() return {} end)\n"
    "same('gsub', 'abc', '%w', true)  same('gsub', 'abc', '%w', 5)  same('gsub', 'abc', '', '-')\n"
    "same('gsub', 'abc', '^', '-')  same('gsub', 'abc', '$', '-')  same('gsub', 'a b', '%s*', '.')\n"
    "same('find', 'abc', 'b', 10)  same('find', 'abc', '', 4)  same('find', 'abc', '', 5)\n"
    "same('find', 'abc', 'b', -100)  same('find', 'a.c', '.', 1, true)  same('find', 123456, 34)\n"
    "same('match', 'x', string.rep('(x)', 33))  same('find', string.rep('a', 300), string.rep('a?', 300))\n"
    "same('find', {}, 'x')  same('find', 'x')  same('gsub', 'x', 'x')  same('gsub', 'x', 'x', 'y', 'z')\n");
  ck_assert_str_eq(r, "same");
}
END_TEST

START_TEST(test_strmatch_random_patterns_as_lua) {
  /* Seeded, so a failure is repeatable; short subjects over a small
   * alphabet, so that matches happen and no pattern backtracks long. */
  const char *r = run_compare(
    "local seed = 12345\n"
    "local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648 return seed % n + 1 end\n"
    "local items = { 'a', 'b', '.', '%a', '%d', '%s', '[ab]', '[^a]', '[a-c]', '%b()', '%fa', '%f[a]',\n"
    "  '(', ')', '()', '%1', '%2', '^', '$', '%', '[', ']', '-', ' ', '1' }\n"
    "local quant = { '', '', '', '*', '+', '-', '?' }\n"
    "local chars = { 'a', 'b', 'c', ' ', '1', '(', ')', '-' }\n"
    "for i = 1, 6000 do\n"
    "  local p = {}\n"
    "  for j = 1, rnd(6) do p[j] = items[rnd(#items)] .. quant[rnd(#quant)] end\n"
    "  local s = {}\n"
    "  for j = 1, rnd(12) - 1 do s[j] = chars[rnd(#chars)] end\n"
    "  p, s = table.concat(p), table.concat(s)\n"
    "  same('find', s, p) same('match', s, p, rnd(4) - 2) same('gmatch', s, p) same('gsub', s, p, '[%0]')\n"
    "end\n");
  ck_assert_str_eq(r, "same");
}
END_TEST

Suite *strmatch_suite(void) {
  Suite *s = suite_create("strmatch");
  TCase *tc = tcase_create("as lua");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_strmatch_is_installed_by_the_budget_and_the_sandbox);
  tcase_add_test(tc, test_strmatch_every_pattern_item_as_lua);
  tcase_add_test(tc, test_strmatch_random_patterns_as_lua);
  suite_add_tcase(s, tc);
  return s;
}
