-- Crafted sources at the moonloop command (issue #19): deep nesting, NUL
-- bytes and invalid UTF-8, given as `moonloop FILE`, `moonloop -` (stdin),
-- `-e CHUNK` and `--emit FILE` (the big inputs are test_cli_big.lua's).
-- Each run must end with a clear error (status 1, a "moonloop: " message
-- naming the problem) or a correct run -- never a signal, a sanitizer
-- report or a hang (tests/scripts/lib/cli_probe.lua runs each under
-- `timeout`).  The inputs are made here, in a private temporary
-- directory.  `-e` gets the variants that fit in one argument (Linux caps
-- one at 128 KiB) and holds no NUL (argv cannot).
local T = require "asyncio.test"
local P = dofile("tests/scripts/lib/cli_probe.lua")
local run, expect_ok, expect_err = P.run, P.expect_ok, P.expect_err
local refused_everywhere, survived, q, ARG_MAX = P.refused_everywhere, P.survived, P.q, P.ARG_MAX

local DEEP = 100000
local NEST = ": nesting too deep: Lua's parser allows about 200 levels"

T.case("100,000 nested parentheses: 'nesting too deep', in every mode", function()
  local function src(n) return "x = " .. ("("):rep(n) .. "1" .. (")"):rep(n) .. "\n" end
  refused_everywhere(src(DEEP), NEST, src(ARG_MAX // 2 - 8), true)
  T.ok(expect_ok("emit", src(DEEP)) == src(DEEP), "no await: the translation is the source")
end)

-- The source pass does not recurse, and Lua's parser stops at 200 levels
-- whatever the depth: 100,000 levels for the forms the brief names, 20,000
-- (a hundred times the limit) for the others, to keep the run short.
local WIDE = 20000

T.case("100,000 nested blocks; 20,000 nested tables, functions, async functions, ifs", function()
  local n = WIDE
  refused_everywhere(("do "):rep(DEEP) .. ("end "):rep(DEEP) .. "\n", NEST, ("do "):rep(15000) .. ("end "):rep(15000), true)
  refused_everywhere("x = " .. ("{"):rep(n) .. ("}"):rep(n) .. "\n", NEST, "x = " .. ("{"):rep(n) .. ("}"):rep(n))
  refused_everywhere("f = " .. ("function() return "):rep(n) .. "1" .. (" end"):rep(n) .. "\n", NEST)
  refused_everywhere("f = " .. ("async function() return "):rep(n) .. "1" .. (" end"):rep(n) .. "\n", NEST)
  refused_everywhere(("if true then "):rep(n) .. ("end "):rep(n) .. "\n", NEST)
end)

T.case("100,000 nested awaits, with and without parentheses", function()
  local n = DEEP
  local head = "local async function f() return 1 end\nreturn "
  refused_everywhere(head .. ("await ("):rep(n) .. "f()" .. (")"):rep(n) .. "\n", NEST,
                     head .. ("await ("):rep(14000) .. "f()" .. (")"):rep(14000), true)
  refused_everywhere(head .. ("await "):rep(n) .. "f()\n", NEST, head .. ("await "):rep(18000) .. "f()")
  -- `await (e)` is a call already; `await await e` is rewritten, in order.
  local tail = "\nreturn " .. ("await ("):rep(n) .. "f()" .. (")"):rep(n) .. "\n"
  local o = expect_ok("emit", head .. tail)
  T.ok(o:sub(-#tail) == tail, "await (e) stays as it is (a call already)")
  o = expect_ok("emit", head .. ("await "):rep(n) .. "f()\n")
  local _, k = o:gsub("await%(", "")
  T.eq(k, n - 1, "every outer await became a call")
  T.ok(o:find("__awcall(f)", 1, true), "the innermost awaited call is direct")
end)

T.case("long operator chains and runs of labels: an error, not a crash", function()
  refused_everywhere("x = " .. ("not "):rep(WIDE) .. "1\n", NEST, "x = " .. ("not "):rep(WIDE) .. "1")
  refused_everywhere("x = " .. ("- "):rep(WIDE) .. "1\n", NEST)
  refused_everywhere("x = " .. ('"a"'):rep(WIDE, "..") .. "\n", NEST)  -- '..' is right-associative
  refused_everywhere("x = " .. ("2"):rep(WIDE, "^") .. "\n", NEST)
  refused_everywhere(("::a::"):rep(WIDE, "\n") .. "\n", NEST)
end)

T.case("nesting within Lua's limit runs correctly, awaits included", function()
  local n = 150
  local src = "local async function f() return 42 end\nprint(" .. ("("):rep(n) .. "await f()" .. (")"):rep(n) .. ")\n"
  for _, mode in ipairs { "file", "stdin", "-e" } do expect_ok(mode, src, "42\n") end
  src = ("do "):rep(n) .. "print(await asyncio.sleep(0, 'deep'))" .. (" end"):rep(n) .. "\n"
  for _, mode in ipairs { "file", "stdin", "-e" } do expect_ok(mode, src, "deep\n") end
end)

T.case("load() of a crafted string: the same messages, the chunk named as Lua names it", function()
  local src = 'print(load("async x()"))\nprint(load(("("):rep(1000)))\nprint(load("x = \\0", "=nul"))\n'
  local o = expect_ok("file", src)
  T.match(o, '^nil\t%[string "async x%(%)"%]:1: \'function\' expected after \'async\' near \'x\'\n', "the pass's message")
  T.match(o, '\nnil\t%[string "' .. ("%("):rep(45) .. '%.%.%."%]' .. NEST, "deep nesting")
  T.match(o, "\nnil\tnul:1: unexpected symbol near '<\\0>' %(a NUL byte%)\n$", "a NUL byte")
end)

T.case("NUL bytes: kept inside strings and comments, refused in code with a message", function()
  local ok = 'print(#"a\0b", #[[c\0d\0]]) -- a \0 in a comment\nprint("x\0y" == "x" .. "\0" .. "y")\n'
  for _, mode in ipairs { "file", "stdin" } do expect_ok(mode, ok, "3\t4\ntrue\n") end
  expect_ok("emit", ok, ok)
  local bad = "local x = 1\nx = x \0 + 1\n"
  for _, mode in ipairs { "file", "stdin", "emit" } do
    expect_err(mode, bad, ":2: unexpected symbol near '<\\0>' %(a NUL byte%)")
  end
  -- A NUL in the error a script raises is printed whole, not cut at it.
  local st, o, e = run("file", 'error("before\\0after", 0)\n')
  survived("file", st, e)
  T.eq(st, 1, "status")
  T.ok(e:find("before", 1, true), "the message is printed: " .. e)
end)

T.case("invalid UTF-8: kept byte for byte in strings, refused in code with a message", function()
  local ok = 'local s = "\xff\xfe\xc3\x28\xed\xa0\x80"\n-- \xff comment \xc0\xaf\nprint(#s, s:byte(1), s:byte(-1))\n'
  for _, mode in ipairs { "file", "stdin", "-e" } do expect_ok(mode, ok, "7\t255\t128\n") end
  expect_ok("emit", ok, ok)
  for _, mode in ipairs { "file", "stdin", "-e" } do
    expect_err(mode, "x = 1\n\xff\xfe = 2\n", ":2: unexpected symbol near '<\\255>'")
    expect_err(mode, "local caf\xc3\xa9 = 1\n", ":1: unexpected symbol near '<\\195>'")
  end
  -- Invalid UTF-8 through utf8 functions is an error, caught like any other.
  expect_ok("file", 'print(utf8.len("a\xffb"))\n', "nil\t2\n")
end)

T.case("empty, shebang-only, BOM-only and binary-looking sources", function()
  for _, mode in ipairs { "file", "stdin" } do
    expect_ok(mode, "", "")
    expect_ok(mode, "#!/usr/bin/env moonloop", "")
    expect_ok(mode, "\xEF\xBB\xBF", "")
    expect_ok(mode, "\xEF\xBB\xBFprint('bom')\n", "bom\n")
    expect_err(mode, "\27Lua\84\0", ": binary chunks are not loaded")
  end
  expect_ok("-e", "", "")
end)

T.run { timeout = 120 }
