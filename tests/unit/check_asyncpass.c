/* check_asyncpass.c: the async/await source pass (vm/dialect/asyncpass.c):
 * the text it writes (passthrough, async, await, lines, errors); what the
 * text means when run is check_asyncpass_lua.c.
 *
 * Alone, from the top of the tree:
 *   cc -std=gnu11 -Wall -Wextra -DSTANDALONE -Ivm $(pkg-config --cflags lua5.4 check) \
 *     tests/unit/check_asyncpass.c vm/dialect/asyncpass.c vm/dialect/buf.c \
 *     $(pkg-config --libs lua5.4 check) -o /tmp/check_asyncpass
 * (add -fsanitize=address,undefined -fno-omit-frame-pointer to check
 * memory use). */
#include "asyncpass_fixture.h"

/* ---------------------------------------------------------------- */
/* Plain Lua passes through byte for byte.                           */

static const char corpus[] =
  "#!/usr/bin/env moonloop\n"
  "local s1 = \"await f() async function g() end\"\n"
  "local s2 = 'it' .. 's' .. '\\'' .. \"\\\"\"\n"
  "local s3 = [[await f()\nasync function x() end]]\n"
  "local s4 = [==[ ]] ]=] await g() ]==]\n"
  "--[[ await f()\n async function h() end ]]\n"
  "--[==[ ]] async function q() end\n ]==] local after = 1\n"
  "-- await f() async function w() end\n"
  "--[= not long: async function z() end\n"
  "local e = \"\\a\\b\\f\\n\\r\\t\\v\\\\\\x41\\65\\0\\255\\u{48}\\u{7FFFFFFF}\\z\n"
  "      continued\\\n"
  "next line\"\n"
  "local n = {0, 42, 3.0, 3.1416, 314.16e-2, 0.31416E1, 34e1, .5, 5., 1e+2,\n"
  "  0xff, 0XBEBADA, 0x0.1E, 0xA23p-4, 0X1.921FB54442D18P+1, 0x.8p1, 1//2}\n"
  "local o = 1 + 2 - 3 * 4 / 5 // 6 % 7 ^ 8 .. 9 & 10 | 11 ~ 12 >> 1 << 2\n"
  "local c = (1 == 2) or (1 ~= 2) and (1 <= 2) and (1 >= 2) or (1 < 2) or (1 > 2)\n"
  "local t = {[1] = #\"x\", -1, ~1, not nil, f = function(...) return ... end}\n"
  "goto done\n"
  "::done:: local await, async = 1, 2\n"
  "local x = t.await, t.async, {await = 1, async = 2}\n"
  "local y = await - 1, async - 1\n";

START_TEST(test_asyncpass_plain_lua_unchanged) {
  /* Strings and comments that hold the new forms, every escape, every
   * numeral form and every operator: copied verbatim. */
  const char *body = strchr(corpus, '\n') + 1;
  SAME(body);
}
END_TEST

START_TEST(test_asyncpass_plain_lua_output_compiles) { assert_compiles(corpus); }
END_TEST

START_TEST(test_asyncpass_shebang_becomes_comment) {
  EXPECT("#!/usr/bin/env moonloop\nprint(1)\n", "--#!/usr/bin/env moonloop\nprint(1)\n");
  /* A shebang that looks like a long bracket still ends at its line. */
  EXPECT("#[[\nx = 1 --]]\n", "--#[[\nx = 1 --]]\n");
  assert_compiles("#!/bin/moonloop await f()\nreturn 1\n");
  /* Only the first line, and only '#' at its very start. */
  SAME("print(#t)\n#x\n");
}
END_TEST

START_TEST(test_asyncpass_bom_dropped) {
  EXPECT("\xEF\xBB\xBFreturn await f()\n", "return __awcall(f)\n");
  EXPECT("\xEF\xBB\xBF#!x\nreturn 1", "--#!x\nreturn 1");
}
END_TEST

START_TEST(test_asyncpass_long_brackets_of_any_level) {
  SAME("x = [=[ ]] ]==] ]=] y = [==[\n]=]\n]==]\n");
  SAME("--[===[ ]] ]=] async function f() end ]===] x = 1");
  /* '--[=' without a second bracket is a line comment. */
  SAME("--[== async function f() end\nx = 1");
  SAME("x = [[\n\r\n\n\r]] y()");
  ck_assert_str_eq(run("x = [[await f()]] await g()"), "x = [[await f()]] __awcall(g)");
}
END_TEST

START_TEST(test_asyncpass_empty_input) {
  ck_assert_int_eq(ml__asyncpass(NULL, 0, "@t.lua", &out, err, sizeof err), 0);
  ck_assert_uint_eq(out.len, 0);
  EXPECT("", "");
  SAME("  -- only a comment");
}
END_TEST

START_TEST(test_asyncpass_output_is_appended) {
  ck_assert_int_eq(ml__buf_add(&out, "head;", 5), 0);
  ck_assert_int_eq(ml__asyncpass("await f()", 9, "@t.lua", &out, err, sizeof err), 0);
  ck_assert_str_eq(out.data, "head;__awcall(f)");
}
END_TEST

/* ---------------------------------------------------------------- */
/* async function.                                                   */

START_TEST(test_asyncpass_async_statement) {
  EXPECT("async function f(x) return x end", "f = __ml_async(\"f\", function(x) return x end)");
  EXPECT("async function f() end\n", "f = __ml_async(\"f\", function() end)\n");
}
END_TEST

START_TEST(test_asyncpass_async_dotted_name) {
  EXPECT("async function a.b.c(x) end", "a.b.c = __ml_async(\"a.b.c\", function(x) end)");
}
END_TEST

START_TEST(test_asyncpass_async_method) {
  EXPECT("async function obj:m(x) return self end",
         "obj.m = __ml_async(\"obj:m\", function(self, x) return self end)");
  EXPECT("async function obj:m() end", "obj.m = __ml_async(\"obj:m\", function(self) end)");
  EXPECT("async function a.b:m(...) end", "a.b.m = __ml_async(\"a.b:m\", function(self, ...) end)");
}
END_TEST

START_TEST(test_asyncpass_async_local) {
  EXPECT("local async function f(n) return f(n) end",
         "local f; f = __ml_async(\"f\", function(n) return f(n) end)");
}
END_TEST

START_TEST(test_asyncpass_async_expression) {
  EXPECT("local g = async function(...) return ... end",
         "local g = __ml_async(nil, function(...) return ... end)");
  EXPECT("run(async function() end, 1)", "run(__ml_async(nil, function() end), 1)");
}
END_TEST

START_TEST(test_asyncpass_async_closes_after_matching_end) {
  /* Blocks inside the body: if, while/for with do, do, repeat..until,
   * nested functions. */
  EXPECT("async function f()\n"
         "  if a then do end elseif b then else end\n"
         "  while x do for i = 1, 2 do end end\n"
         "  repeat local g = function() end until y\n"
         "end\n"
         "x = 1",
         "f = __ml_async(\"f\", function()\n"
         "  if a then do end elseif b then else end\n"
         "  while x do for i = 1, 2 do end end\n"
         "  repeat local g = function() end until y\n"
         "end)\n"
         "x = 1");
  EXPECT("f(async function() return async function() end end)",
         "f(__ml_async(nil, function() return __ml_async(nil, function() end) end))");
  /* The words in strings and comments do not count. */
  EXPECT("async function f() local s = 'end' --[[ end ]] end -- end",
         "f = __ml_async(\"f\", function() local s = 'end' --[[ end ]] end) -- end");
}
END_TEST

START_TEST(test_asyncpass_async_without_end_inserts_nothing) {
  const char *msg;
  EXPECT("async function f()\n  return 1\n", "f = __ml_async(\"f\", function()\n  return 1\n");
  msg = lua_compile(out.data, out.len);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strstr(msg, "'end' expected") != NULL, "got %s", msg);
}
END_TEST

START_TEST(test_asyncpass_async_across_lines_and_comments) {
  EXPECT("async --[[c]] function f() end", "f = __ml_async(\"f\", function() end)");
  EXPECT("async\nfunction f() end", "f = __ml_async(\"f\", \nfunction() end)");
  EXPECT("x = async -- note\n  function() end", "x = __ml_async(nil, \nfunction() end)");
  EXPECT("async function\nf() end", "f = __ml_async(\"f\", function\n () end)");
}
END_TEST

START_TEST(test_asyncpass_async_as_identifier) {
  SAME("local async = 1");
  SAME("async.x = 1");
  SAME("f(async)");
  SAME("async = nil; async()");
  SAME("x = async\ny = 1");
  SAME("t.async = 1; t:async(); local s = t.async");
  SAME("function async(x) end");
  SAME("function t.async() end function t:async() end");
  SAME("local function async() end");
  SAME("x = {async = 1}");
}
END_TEST

/* ---------------------------------------------------------------- */
/* await.                                                            */

START_TEST(test_asyncpass_await_call) {
  /* An awaited call becomes a direct call form, so that the runtime can
   * run an async function's body with no Coroutine object: the callee
   * first, then the arguments. */
  EXPECT("await f()", "__awcall(f)");
  EXPECT("local v = await f(1, 2)", "local v = __awcall(f, 1, 2)");
  EXPECT("await f ()", "__awcall(f )");
  EXPECT("await f(...)", "__awcall(f, ...)");
  EXPECT("local v = await  f()", "local v = __awcall(f)");
  EXPECT("await\tf()", "__awcall(f)");
}
END_TEST

START_TEST(test_asyncpass_await_call_of_suffixed_callee) {
  /* Everything before the last call is the callee, evaluated as Lua
   * would, including earlier calls that are not awaited. */
  EXPECT("await asyncio.sleep(1)", "__awcall(asyncio.sleep, 1)");
  EXPECT("await t[1](2)", "__awcall(t[1], 2)");
  EXPECT("await f(1)(2)", "__awcall(f(1), 2)");
  EXPECT("await f\"s\"(1)", "__awcall(f\"s\", 1)");
  /* A call of the variable await is awaited like any other call. */
  EXPECT("await await(x)", "__awcall(await, x)");
}
END_TEST

START_TEST(test_asyncpass_await_call_string_argument) {
  /* ", " goes before the string and ")" after it. */
  EXPECT("await f\"s\"", "__awcall(f, \"s\")");
  EXPECT("await f'x'", "__awcall(f, 'x')");
  EXPECT("await f \"s\"", "__awcall(f , \"s\")");
  EXPECT("await f[[s]] .. x", "__awcall(f, [[s]]) .. x");
  EXPECT("await f[==[s]==]", "__awcall(f, [==[s]==])");
}
END_TEST

START_TEST(test_asyncpass_await_call_table_argument) {
  EXPECT("await f{1}", "__awcall(f, {1})");
  EXPECT("await f{}", "__awcall(f, {})");
  EXPECT("await f { 1 } + 1", "__awcall(f , { 1 }) + 1");
  EXPECT("await f{k = {2}, [3] = g()}", "__awcall(f, {k = {2}, [3] = g()})");
}
END_TEST

START_TEST(test_asyncpass_await_method) {
  /* The object is evaluated once and the method name becomes a string. */
  EXPECT("await o:m(a, b)", "__awmeth(o, \"m\", a, b)");
  EXPECT("await o:m()", "__awmeth(o, \"m\")");
  EXPECT("await o:m ()", "__awmeth(o, \"m\")");
  EXPECT("await o:m(...)", "__awmeth(o, \"m\", ...)");
  EXPECT("local line = await reader:readline()", "local line = __awmeth(reader, \"readline\")");
  EXPECT("await a.b[1]:c(x)", "__awmeth(a.b[1], \"c\", x)");
  EXPECT("await f():g(1)", "__awmeth(f(), \"g\", 1)");
  /* await and async after ':' are method names. */
  EXPECT("await o:await()", "__awmeth(o, \"await\")");
  EXPECT("await o:async(1)", "__awmeth(o, \"async\", 1)");
}
END_TEST

START_TEST(test_asyncpass_await_method_string_and_table_argument) {
  EXPECT("await o:m\"s\"", "__awmeth(o, \"m\", \"s\")");
  EXPECT("await o:m [[s]]", "__awmeth(o, \"m\", [[s]])");
  EXPECT("await o:m{1}", "__awmeth(o, \"m\", {1})");
  EXPECT("await o:m {1} + 1", "__awmeth(o, \"m\", {1}) + 1");
  /* Only the last call is rewritten; the earlier ones are plain calls. */
  EXPECT("await o:m\"s\":n{}", "__awmeth(o:m\"s\", \"n\", {})");
  EXPECT("await f\"a\":g\"b\"", "__awmeth(f\"a\", \"g\", \"b\")");
}
END_TEST

START_TEST(test_asyncpass_await_method_over_lines_keeps_plain_form) {
  /* Turning ":m(" into ", "m", " would remove a line break, so a method
   * call whose ':', name and argument start are not all on one line keeps
   * the plain form. */
  EXPECT("await o:\nm(1)", "await(o:\nm(1))");
  EXPECT("await o:m\n(1)", "await(o:m\n(1))");
  EXPECT("await o:m\n\"s\"", "await(o:m\n\"s\")");
  EXPECT("await o:m\n{1}", "await(o:m\n{1})");
  EXPECT("await o:m --[[\n]] (1)", "await(o:m --[[\n]] (1))");
  /* The object on an earlier line, or arguments that span lines, are
   * fine: no line break is inside the rewritten text. */
  EXPECT("await o\n:m(1)", "__awmeth(o\n, \"m\", 1)");
  EXPECT("await o:m(1,\n2)", "__awmeth(o, \"m\", 1,\n2)");
  EXPECT("await o:m{\n}", "__awmeth(o, \"m\", {\n})");
}
END_TEST

START_TEST(test_asyncpass_await_not_a_call_keeps_plain_form) {
  /* The last suffix is a field or an index: await(E). */
  EXPECT("await x.y", "await(x.y)");
  EXPECT("await t[1]", "await(t[1])");
  EXPECT("local v = await a.b:c(x)[1]", "local v = await(a.b:c(x)[1])");
  EXPECT("await f{1, 2}.x", "await(f{1, 2}.x)");
  EXPECT("await f().x + 1", "await(f().x) + 1");
  EXPECT("await o:m(1).x", "await(o:m(1).x)");
  EXPECT("return await x", "return await(x)");
  EXPECT("x = await f(), 2", "x = __awcall(f), 2");
}
END_TEST

START_TEST(test_asyncpass_await_chain_continues_across_lines) {
  /* Arguments may span lines, and a '(' on a new line still continues the
   * call chain, as Lua's parser has it; the line breaks do not move. */
  EXPECT("await f(1,\n 2)\n.x", "await(f(1,\n 2)\n.x)");
  EXPECT("await f\n(1)", "__awcall(f\n, 1)");
  EXPECT("await f\n\"s\"", "__awcall(f\n, \"s\")");
  EXPECT("await f\n{1}", "__awcall(f\n, {1})");
  EXPECT("await f\n(1)\n(2)", "__awcall(f\n(1)\n, 2)");
}
END_TEST

START_TEST(test_asyncpass_await_unary_operand) {
  EXPECT("await not x", "await(not x)");
  EXPECT("await #t.items", "await(#t.items)");
  EXPECT("await not not f()", "await(not not f())");
  EXPECT("await not -x", "await(not -x)");
  EXPECT("await # await f()", "await(# __awcall(f))");
}
END_TEST

START_TEST(test_asyncpass_await_literal_operand) {
  EXPECT("await 1 + 2", "await(1) + 2");
  EXPECT("await 0x1p4", "await(0x1p4)");
  EXPECT("await nil", "await(nil)");
  EXPECT("await true and await false", "await(true) and await(false)");
  EXPECT("return await ...", "return await(...)");
}
END_TEST

START_TEST(test_asyncpass_await_function_operand) {
  EXPECT("await function() return 1 end", "await(function() return 1 end)");
  EXPECT("await async function() end", "await(__ml_async(nil, function() end))");
}
END_TEST

START_TEST(test_asyncpass_await_nested) {
  /* An operand that is itself an await keeps the plain form around it. */
  EXPECT("await await f()", "await(__awcall(f))");
  EXPECT("await await o:m(1)", "await(__awmeth(o, \"m\", 1))");
  EXPECT("await await await x.y", "await(await(await(x.y)))");
  EXPECT("await f(await g(1))", "__awcall(f, __awcall(g, 1))");
  EXPECT("await o:m(await p:n())", "__awmeth(o, \"m\", __awmeth(p, \"n\"))");
  EXPECT("await f(await g(await h()), await k)[await i]",
         "await(f(__awcall(g, __awcall(h)), await(k))[await(i)])");
  EXPECT("await f(function() return await g() end)",
         "__awcall(f, function() return __awcall(g) end)");
  EXPECT("await f(async function() end)", "__awcall(f, __ml_async(nil, function() end))");
}
END_TEST

START_TEST(test_asyncpass_await_in_expressions) {
  EXPECT("x = -await f() + 1", "x = -__awcall(f) + 1");
  EXPECT("x = await f() ^ 2", "x = __awcall(f) ^ 2");
  EXPECT("x = {await f(), k = await g()}", "x = {__awcall(f), k = __awcall(g)}");
  EXPECT("if await ok() then end", "if __awcall(ok) then end");
  EXPECT("print(await f() .. await g())", "print(__awcall(f) .. __awcall(g))");
  EXPECT("return await o:m(1), await o.p:q\"s\"",
         "return __awmeth(o, \"m\", 1), __awmeth(o.p, \"q\", \"s\")");
}
END_TEST

START_TEST(test_asyncpass_await_keeps_comments) {
  /* A comment after await keeps the blanks around it. */
  EXPECT("await --[[c]] f()", "__awcall( --[[c]] f)");
  EXPECT("await --[[c]] o:m(1)", "__awmeth( --[[c]] o, \"m\", 1)");
  EXPECT("await --[[c]] x.y", "await( --[[c]] x.y)");
  /* A comment between the callee and its arguments stays in place. */
  EXPECT("await f --[[c]] (1)", "__awcall(f --[[c]] , 1)");
  EXPECT("await f -- c\n(1)", "__awcall(f -- c\n, 1)");
  EXPECT("await f --[[\n]] \"s\"", "__awcall(f --[[\n]] , \"s\")");
  EXPECT("await o -- c\n:m(1)", "__awmeth(o -- c\n, \"m\", 1)");
}
END_TEST

START_TEST(test_asyncpass_await_as_call_unchanged) {
  SAME("await(f())");
  SAME("await (f)()");
  SAME("await \"s\"");
  SAME("await [[s]]");
  SAME("await {x}");
}
END_TEST

START_TEST(test_asyncpass_await_as_identifier) {
  SAME("local await = 1");
  SAME("t.await = 1; x = t.await");
  SAME("x = {await = 1}");
  SAME("obj:await()");
  SAME("x = await - 1");
  SAME("x = await == nil, await, await .. 'x'");
  SAME("f(await)");
  SAME("x = await.x");
  SAME("for await in pairs(t) do end");
  SAME("function t:await(x) end function t.await(y) end");
  SAME("t.await x"); /* a field is never the keyword (bad Lua either way) */
  SAME("t:await f()");
}
END_TEST

START_TEST(test_asyncpass_await_variable_before_statement_changes_meaning) {
  /* The one plain-Lua program whose meaning changes, and its fix. */
  EXPECT("local r = await print(1)", "local r = __awcall(print, 1)");
  SAME("local r = await; print(1)");
}
END_TEST

START_TEST(test_asyncpass_await_at_end_of_line_is_a_name) {
  SAME("x = await\nf()");
  SAME("x = await --[[\n]] f()");
  SAME("return await");
}
END_TEST

START_TEST(test_asyncpass_await_without_operand_end_inserts_nothing) {
  SAME("await f(1, 2");
  SAME("await function() return 1");
}
END_TEST

/* ---------------------------------------------------------------- */
/* Lines.                                                            */

static const char *multiline_src = "local async\n"
                                   "function\n"
                                   "  helper(a,\n"
                                   "         b)\n"
                                   "  return await\n"
                                   "    a\n"
                                   "end\n"
                                   "async --[[ one\n two ]]\n"
                                   "function obj\n"
                                   "  :\n"
                                   "  method(x)\n"
                                   "  local y = await obj.f(\n"
                                   "    x)\n"
                                   "  return async\n"
                                   "  function\n"
                                   "  (z) return z end\n"
                                   "end\n";

START_TEST(test_asyncpass_lines_preserved) {
  const char *o = run(multiline_src);
  ck_assert_int_eq(count_lines(o, out.len), count_lines(multiline_src, strlen(multiline_src)));
  /* function keywords stay on their lines, and so do (a, b), the body and
   * the end of each function. */
  ck_assert_int_eq(line_of(o, "function"), 2);
  ck_assert_int_eq(line_of(o, "b)"), 4);
  ck_assert_int_eq(line_of(o, "return await"), 5);
  ck_assert_int_eq(line_of(o, "obj.method = "), 8);
  ck_assert_int_eq(line_of(o, "(self, x)"), 12);
  ck_assert_int_eq(line_of(o, "__awcall(obj.f, "), 13);
  ck_assert_int_eq(line_of(o, "(z) return z end)"), 17);
  ck_assert_int_eq(line_of(o, "end)\n"), 7);
}
END_TEST

START_TEST(test_asyncpass_lines_direct_forms) {
  /* The direct call forms move no line break: what is inserted before an
   * argument goes after the line breaks in front of it. */
  const char *src = "local a = await f\n"      /* 1 */
                    "  (1,\n"                  /* 2 */
                    "   2)\n"                  /* 3 */
                    "local b = await obj\n"    /* 4 */
                    "  :m\"s\"\n"              /* 5 */
                    "local c = await g --[[\n" /* 6 */
                    "]] {3,\n"                 /* 7 */
                    "  4}\n"                   /* 8 */
                    "local d = await o:m(\n"   /* 9 */
                    "  await p:n\n"            /* 10 */
                    "  (5))\n"                 /* 11 */
                    "return await h\n"         /* 12 */
                    "[[\n"                     /* 13 */
                    "]]\n"                     /* 14 */
                    "x = = 1\n";               /* 15 */
  const char *msg;
  EXPECT(src, "local a = __awcall(f\n"
              "  , 1,\n"
              "   2)\n"
              "local b = __awmeth(obj\n"
              "  , \"m\", \"s\")\n"
              "local c = __awcall(g --[[\n"
              "]] , {3,\n"
              "  4})\n"
              "local d = __awmeth(o, \"m\", \n"
              "  await(p:n\n"
              "  (5)))\n"
              "return __awcall(h\n"
              ", [[\n"
              "]])\n"
              "x = = 1\n");
  msg = lua_compile(out.data, out.len);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strncmp(msg, "t.lua:15:", 9) == 0, "got %s", msg);
}
END_TEST

START_TEST(test_asyncpass_lines_match_lua_errors) {
  /* An error on line 14 of the dialect is reported by Lua on line 14. */
  const char *src = "async function f()\n"   /* 1 */
                    "  local x = await g(\n" /* 2 */
                    "    1,\n"               /* 3 */
                    "    2)\n"               /* 4 */
                    "end\n"                  /* 5 */
                    "local async\n"          /* 6 */
                    "\n"                     /* 7 */
                    "function h()\n"         /* 8 */
                    "end\n"                  /* 9 */
                    "x = async\n"            /* 10 */
                    "function()\n"           /* 11 */
                    "end\n"                  /* 12 */
                    "--[[\n]]\n"             /* 13, 14 */
                    "x = = 1\n";             /* 15 */
  const char *msg;
  run(src);
  msg = lua_compile(out.data, out.len);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strncmp(msg, "t.lua:15:", 9) == 0, "got %s", msg);
}
END_TEST

START_TEST(test_asyncpass_lines_crlf) {
  const char *src = "async\r\nfunction f()\r\n  local v = await\r\n g()\r\nend\r\nx = = 1";
  const char *msg;
  run(src);
  msg = lua_compile(out.data, out.len);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strncmp(msg, "t.lua:6:", 8) == 0, "got %s\n%s", msg, out.data);
  /* "\r" before "function": our "\n" must not pair with it. */
  run("local async\rfunction\rf() end x = = 1");
  msg = lua_compile(out.data, out.len);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strncmp(msg, "t.lua:3:", 8) == 0, "got %s\n%s", msg, out.data);
  /* The direct forms leave "\r\n" pairs whole. */
  EXPECT("x = await f\r\n(1)\r\ny = await o\r\n:m\"s\"\r\nz = await o:m\r\n{}\r\nw = = 1",
         "x = __awcall(f\r\n, 1)\r\ny = __awmeth(o\r\n, \"m\", \"s\")\r\n"
         "z = await(o:m\r\n{})\r\nw = = 1");
  msg = lua_compile(out.data, out.len);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strncmp(msg, "t.lua:7:", 8) == 0, "got %s\n%s", msg, out.data);
}
END_TEST

/* ---------------------------------------------------------------- */
/* Errors.                                                           */

START_TEST(test_asyncpass_error_async_before_name) {
  ck_assert_int_eq(run_rc("local x = 1\n\nasync x()\n"), -EINVAL);
  ck_assert_str_eq(err, "t.lua:3: 'function' expected after 'async' near 'x'");
  ck_assert_int_eq(run_rc("async await"), -EINVAL);
  ck_assert_str_eq(err, "t.lua:1: 'function' expected after 'async' near 'await'");
}
END_TEST

START_TEST(test_asyncpass_error_chunkname_forms) {
  const char *src = "\nasync foo";
  ck_assert_int_eq(ml__asyncpass(src, strlen(src), "=stdin", &out, err, sizeof err), -EINVAL);
  ck_assert_str_eq(err, "stdin:2: 'function' expected after 'async' near 'foo'");
  ck_assert_int_eq(ml__asyncpass(src, strlen(src), "@dir/a.lua", &out, err, sizeof err), -EINVAL);
  ck_assert_str_eq(err, "dir/a.lua:2: 'function' expected after 'async' near 'foo'");
  ck_assert_int_eq(ml__asyncpass(src, strlen(src), "chunk", &out, err, sizeof err), -EINVAL);
  ck_assert_str_eq(err, "chunk:2: 'function' expected after 'async' near 'foo'");
}
END_TEST

START_TEST(test_asyncpass_error_missing_function_name) {
  ck_assert_int_eq(run_rc("local async function (x) end"), -EINVAL);
  ck_assert_str_eq(err, "t.lua:1: <name> expected near '('");
  ck_assert_int_eq(run_rc("async function a.\n(x) end"), -EINVAL);
  ck_assert_str_eq(err, "t.lua:2: <name> expected near '('");
  ck_assert_int_eq(run_rc("local async function"), -EINVAL);
  ck_assert_str_eq(err, "t.lua:1: <name> expected near <eof>");
}
END_TEST

START_TEST(test_asyncpass_error_leaves_output_untouched) {
  ck_assert_int_eq(ml__buf_add(&out, "kept", 4), 0);
  ck_assert_int_eq(ml__asyncpass("await f() async x", 17, "@t.lua", &out, err, sizeof err),
                   -EINVAL);
  ck_assert_uint_eq(out.len, 4);
  ck_assert_str_eq(out.data, "kept");
}
END_TEST

START_TEST(test_asyncpass_error_nul_byte_in_code) {
  static const char src[] = "x = \"a\0b\" -- c\0\ny = 1 \0 + 2";
  ck_assert_int_eq(ml__asyncpass(src, sizeof src - 1, "@t.lua", &out, err, sizeof err), -EINVAL);
  ck_assert_str_eq(err, "t.lua:2: unexpected symbol near '<\\0>' (a NUL byte)");
  /* In strings and comments a NUL is data, copied as it is. */
  ck_assert_int_eq(ml__asyncpass(src, 17, "@t.lua", &out, err, sizeof err), 0);
  ck_assert_uint_eq(out.len, 17);
  ck_assert_mem_eq(out.data, src, 17);
}
END_TEST

START_TEST(test_asyncpass_error_small_buffer_truncates) {
  char small[8];
  ck_assert_int_eq(ml__asyncpass("async x", 7, "@t.lua", &out, small, sizeof small), -EINVAL);
  ck_assert_str_eq(small, "t.lua:1");
  ck_assert_int_eq(ml__asyncpass("async x", 7, "@t.lua", &out, NULL, 0), -EINVAL);
}
END_TEST

/* Lexical errors are left to Lua: copied verbatim, reported by lua_load on
 * their own line with Lua's message. */
static void assert_lua_reports(const char *src, const char *want) {
  const char *msg;
  run(src);
  msg = lua_compile(out.data, out.len);
  ck_assert_ptr_nonnull(msg);
  ck_assert_msg(strstr(msg, want) != NULL, "want [%s], got [%s]", want, msg);
}

START_TEST(test_asyncpass_error_lexical_left_to_lua) {
  SAME("x = 1\nlocal s = \"abc\nasync function f() end");
  assert_lua_reports("x = 1\nlocal s = \"abc\nasync function f() end",
                     "t.lua:2: unfinished string");
  assert_lua_reports("await f()\nx = 3x\nasync y", "t.lua:2: malformed number near '3x'");
  assert_lua_reports("await f()\nx = 1..2", "t.lua:2: malformed number near '1..2'");
  assert_lua_reports("x = 1 --[==[\n]]", "t.lua:2: unfinished long comment");
  assert_lua_reports("x = [[\n\n", "t.lua:3: unfinished long string");
  assert_lua_reports("x = '\\q'", "t.lua:1: invalid escape sequence");
  assert_lua_reports("x = '\\u{80000000}'", "UTF-8 value too large");
  assert_lua_reports("x = [=x", "invalid long string delimiter");
  assert_lua_reports("x = '\\300'", "decimal escape too large");
  /* An edit before the error still happens; the error keeps its line. */
  ck_assert_str_eq(run("async function f() end\nx = 'a"),
                   "f = __ml_async(\"f\", function() end)\nx = 'a");
  /* A name error after a lexical error is Lua's to report, not ours. */
  ck_assert_int_eq(run_rc("x = 'a\nlocal async function"), 0);
}
END_TEST

Suite *asyncpass_suite(void) {
  Suite *s = suite_create("asyncpass");
  TCase *tc;

  tc = tcase_create("passthrough");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_asyncpass_plain_lua_unchanged);
  tcase_add_test(tc, test_asyncpass_plain_lua_output_compiles);
  tcase_add_test(tc, test_asyncpass_shebang_becomes_comment);
  tcase_add_test(tc, test_asyncpass_bom_dropped);
  tcase_add_test(tc, test_asyncpass_long_brackets_of_any_level);
  tcase_add_test(tc, test_asyncpass_empty_input);
  tcase_add_test(tc, test_asyncpass_output_is_appended);
  suite_add_tcase(s, tc);

  tc = tcase_create("async");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_asyncpass_async_statement);
  tcase_add_test(tc, test_asyncpass_async_dotted_name);
  tcase_add_test(tc, test_asyncpass_async_method);
  tcase_add_test(tc, test_asyncpass_async_local);
  tcase_add_test(tc, test_asyncpass_async_expression);
  tcase_add_test(tc, test_asyncpass_async_closes_after_matching_end);
  tcase_add_test(tc, test_asyncpass_async_without_end_inserts_nothing);
  tcase_add_test(tc, test_asyncpass_async_across_lines_and_comments);
  tcase_add_test(tc, test_asyncpass_async_as_identifier);
  suite_add_tcase(s, tc);

  tc = tcase_create("await");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_asyncpass_await_call);
  tcase_add_test(tc, test_asyncpass_await_call_of_suffixed_callee);
  tcase_add_test(tc, test_asyncpass_await_call_string_argument);
  tcase_add_test(tc, test_asyncpass_await_call_table_argument);
  tcase_add_test(tc, test_asyncpass_await_method);
  tcase_add_test(tc, test_asyncpass_await_method_string_and_table_argument);
  tcase_add_test(tc, test_asyncpass_await_method_over_lines_keeps_plain_form);
  tcase_add_test(tc, test_asyncpass_await_not_a_call_keeps_plain_form);
  tcase_add_test(tc, test_asyncpass_await_chain_continues_across_lines);
  tcase_add_test(tc, test_asyncpass_await_unary_operand);
  tcase_add_test(tc, test_asyncpass_await_literal_operand);
  tcase_add_test(tc, test_asyncpass_await_function_operand);
  tcase_add_test(tc, test_asyncpass_await_nested);
  tcase_add_test(tc, test_asyncpass_await_in_expressions);
  tcase_add_test(tc, test_asyncpass_await_keeps_comments);
  tcase_add_test(tc, test_asyncpass_await_as_call_unchanged);
  tcase_add_test(tc, test_asyncpass_await_as_identifier);
  tcase_add_test(tc, test_asyncpass_await_variable_before_statement_changes_meaning);
  tcase_add_test(tc, test_asyncpass_await_at_end_of_line_is_a_name);
  tcase_add_test(tc, test_asyncpass_await_without_operand_end_inserts_nothing);
  suite_add_tcase(s, tc);

  tc = tcase_create("lines");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_asyncpass_lines_preserved);
  tcase_add_test(tc, test_asyncpass_lines_direct_forms);
  tcase_add_test(tc, test_asyncpass_lines_match_lua_errors);
  tcase_add_test(tc, test_asyncpass_lines_crlf);
  suite_add_tcase(s, tc);

  tc = tcase_create("errors");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_asyncpass_error_async_before_name);
  tcase_add_test(tc, test_asyncpass_error_chunkname_forms);
  tcase_add_test(tc, test_asyncpass_error_missing_function_name);
  tcase_add_test(tc, test_asyncpass_error_leaves_output_untouched);
  tcase_add_test(tc, test_asyncpass_error_nul_byte_in_code);
  tcase_add_test(tc, test_asyncpass_error_small_buffer_truncates);
  tcase_add_test(tc, test_asyncpass_error_lexical_left_to_lua);
  suite_add_tcase(s, tc);

  return s;
}

#ifdef STANDALONE
ASYNCPASS_MAIN(asyncpass_suite)
#endif
