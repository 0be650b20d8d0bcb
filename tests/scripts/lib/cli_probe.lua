-- Runs the moonloop command on crafted sources for test_cli_input.lua and
-- test_cli_big.lua (issue #19): every run is under `timeout`, and must end
-- by itself with a correct result or a clear error -- never a signal, a
-- sanitizer report or a hang.  Loaded with dofile (run.sh runs the tests
-- from the repository's root).
local T = require "asyncio.test"
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"
local LIMIT = 60  -- seconds a single run may take before it counts as a hang
local ARG_MAX = 120 * 1024

local function slurp(path)
  local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s
end

local function spit(path, s)
  local f = assert(io.open(path, "wb")); f:write(s); f:close()
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Runs BIN in one mode on src (written to a file first).  Returns the
-- exit status, stdout, stderr, and the paths of the input and stdout.
local function run(mode, src, path)
  path = path or T.tmpname(".lua")
  if mode ~= "-e" then spit(path, src) end
  local out, err = path .. ".out", path .. ".err"
  local cmd
  if mode == "file" then cmd = q(BIN) .. " " .. q(path)
  elseif mode == "stdin" then cmd = q(BIN) .. " - < " .. q(path)
  elseif mode == "emit" then cmd = q(BIN) .. " --emit " .. q(path)
  else cmd = q(BIN) .. " -e " .. q(src) end
  local _, st = T.sh(string.format("timeout -k 5 %d %s > %s 2> %s", LIMIT, cmd, q(out), q(err)))
  local o, e = slurp(out), slurp(err)
  os.remove(err)
  return st, o, e, path, out
end

-- The name a mode's messages give the chunk.
local function chunk(mode, path)
  if mode == "stdin" then return "stdin" elseif mode == "-e" then return "(command line)" end
  return path
end

local function plain(s) return (s:gsub("%p", "%%%0")) end

local function survived(mode, st, e)
  T.ok(st ~= nil and st < 124, string.format("%s: ended by itself (status %s; 124 is a hang, >128 a signal)", mode, tostring(st)))
  T.ok(not e:find("Sanitizer") and not e:find("runtime error:") and not e:find("Assertion"),
       mode .. ": no sanitizer report or assertion: " .. e:sub(1, 300))
end

-- Expects a correct run printing want on stdout (emit: the translation,
-- checked by check_emit(out) when given).
local function expect_ok(mode, src, want, path)
  local st, o, e, p, out = run(mode, src, path)
  survived(mode, st, e)
  T.eq(st, 0, mode .. " status (stderr: " .. e:sub(1, 200) .. ")")
  if want then T.eq(o, want, mode .. " output") end
  return o, p, out
end

-- Expects status 1 and one "moonloop: CHUNK..." message matching pattern
-- (CHUNK is put in front of it).
local function expect_err(mode, src, pattern, path)
  local st, o, e, p = run(mode, src, path)
  survived(mode, st, e)
  T.eq(st, 1, mode .. " status (stderr: " .. e:sub(1, 200) .. ")")
  T.match(e, "^moonloop: " .. plain(chunk(mode, p)) .. pattern, mode .. " message")
  return e
end

-- The same source as a file (and with stdin, from stdin too: the read
-- differs, nothing after it) and at -e (small: a variant that fits in one
-- argument): an error (pattern) when run, and a translation with as many
-- lines when emitted.
local function refused_everywhere(src, pattern, small, stdin)
  expect_err("file", src, pattern)
  if stdin then expect_err("stdin", src, pattern) end
  local o = expect_ok("emit", src)
  local _, n1 = src:gsub("\n", ""); local _, n2 = o:gsub("\n", "")
  T.eq(n2, n1, "emit keeps the line count")
  if small then expect_err("-e", small, pattern) end
end

return {
  run = run, expect_ok = expect_ok, expect_err = expect_err,
  refused_everywhere = refused_everywhere, survived = survived, q = q, ARG_MAX = ARG_MAX,
}
