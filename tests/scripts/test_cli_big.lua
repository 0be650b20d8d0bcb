-- Big inputs at the moonloop command (issue #19): a 50 MB file, a 1 MB
-- file of statements, very long lines, strings, names and numbers, as
-- `moonloop FILE`, `moonloop -` and `--emit FILE` (and `-e` where they
-- fit in one argument).  The helpers are tests/scripts/lib/cli_probe.lua's,
-- shared with test_cli_input.lua (the crafted sources); they are two files
-- so that each stays well inside the runner's 120 s on a loaded machine.
-- The inputs are made in a private temporary directory and removed when
-- their case ends.
local T = require "asyncio.test"
local P = dofile("tests/scripts/lib/cli_probe.lua")
local run, expect_ok, expect_err = P.run, P.expect_ok, P.expect_err
local refused_everywhere, survived, q, ARG_MAX = P.refused_everywhere, P.survived, P.q, P.ARG_MAX

T.case("a 50 MB file: run from the file and from stdin, and emitted unchanged", function()
  local line = ("a"):rep(99) .. "\n"
  local src = "local s = [[\n" .. line:rep(250000) .. "]]\n--[[\n" .. line:rep(250000) .. "]]\nlocal n = 0\nfor _ in s:gmatch('\\n') do n = n + 1 end\nprint(#s, n)\n"
  T.ok(#src >= 50 * 1000 * 1000, "the file is 50 MB: " .. #src)
  local path = T.tmpname(".lua")
  expect_ok("file", src, "25000000\t250000\n", path)
  expect_ok("stdin", src, nil, path)
  local _, _, out = expect_ok("emit", src, nil, path)
  local _, same = T.sh(string.format("cmp -s %s %s", q(path), q(out)))
  T.eq(same, 0, "the translation of a source with no async is the source itself")
  os.remove(out); os.remove(path .. ".out"); os.remove(path)
end)

T.case("a 1 MB file of short statements, from the file and stdin", function()
  local src = "local x = 0\n" .. ("x = x + 1\n"):rep(100000) .. "print(x)\n"
  local path = T.tmpname(".lua")
  expect_ok("file", src, "100000\n", path)
  expect_ok("stdin", src, "100000\n", path)
  os.remove(path)
end)

T.case("very long lines, strings, names and numbers", function()
  local cases = {
    { "a sum on one 1 MB line", "x = " .. ("1"):rep(500000, "+") .. "\nprint(x)\n", "500000\n" },
    { "an 8 MB string literal on one line", 'local s = "' .. ("z"):rep(8 * 1024 * 1024) .. '"\nprint(#s)\n', "8388608\n" },
    { "a 2 MB identifier", "local " .. ("n"):rep(2000000) .. " = 7\nprint(7)\n", "7\n" },
    { "a number of 1,000,000 digits", "print(" .. ("9"):rep(1000000) .. " > 1)\n", "true\n" },
    { "a 4 MB comment line", "-- " .. ("#"):rep(4000000) .. "\nprint('after')\n", "after\n" },
    { "a long string of level 1,000,000", "local s = [" .. ("="):rep(1000000) .. "[x]" .. ("="):rep(1000000) .. "]\nprint(s)\n", "x\n" },
    { "a 550 KB line of awaits", "local async function f() return 1 end\nlocal t = 0 " ..
      ("t = t + await f() "):rep(30000) .. "\nprint(t)\n", "30000\n" },
  }
  for k, c in ipairs(cases) do
    local path = T.tmpname(".lua")
    expect_ok("file", c[2], c[3], path)
    if k <= 2 then expect_ok("stdin", c[2], c[3], path) end  -- the rest reads the same way
    local o = expect_ok("emit", c[2], nil, path)
    local _, n1 = c[2]:gsub("\n", ""); local _, n2 = o:gsub("\n", "")
    T.eq(n2, n1, c[1] .. ": emit keeps the line count")
    if #c[2] < ARG_MAX then expect_ok("-e", c[2], c[3]) end
    os.remove(path); os.remove(path .. ".out")
  end
  -- What fits in one argument: a 100 KB line at -e.
  expect_ok("-e", "x = " .. ("1"):rep(50000, "+") .. " print(x)", "50000\n")
  -- An unfinished long string of a huge level is Lua's clear error.
  local src = "local s = [" .. ("="):rep(1000000) .. "[x]" .. ("="):rep(999999) .. "]\n"
  for _, mode in ipairs { "file", "stdin" } do
    expect_err(mode, src, ":2: unfinished long string %(starting at line 1%) near <eof>")
  end
end)

T.run { timeout = 120 }
