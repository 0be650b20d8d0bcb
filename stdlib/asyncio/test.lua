-- asyncio.test: a small test runner for moonloop scripts.
--
--   local T = require "asyncio.test"
--   T.case("sleep returns its value", async function()
--     T.eq(await asyncio.sleep(0, 42), 42, "sleep's result")
--   end)
--   T.run()   -- prints "ok"/"FAIL" per case, then "N passed, N failed"
--
-- Each case runs as its own task under a timeout (T.run{timeout = s},
-- default 20 s), so a hanging case fails instead of hanging the suite.
local asyncio = require "asyncio"

local T = {}
local cases = {}

-- An assertion failure: a table so the runner can tell it from errors.
local Failure = asyncio.class("AssertionError", asyncio.Exception)
T.AssertionError = Failure

local function show(v, depth)
  depth = depth or 0
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" or depth > 2 or getmetatable(v) then return tostring(v) end
  local parts, n = {}, 0
  for k, x in pairs(v) do
    n = n + 1
    if n > 12 then parts[#parts + 1] = "..."; break end
    local key = type(k) == "string" and k or "[" .. show(k, depth + 1) .. "]"
    parts[#parts + 1] = key .. "=" .. show(x, depth + 1)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
T.show = show

local function deep_eq(a, b, seen)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  if getmetatable(a) or getmetatable(b) then return false end
  seen = seen or {}
  if seen[a] == b then return true end
  seen[a] = b
  for k, v in pairs(a) do if not deep_eq(v, b[k], seen) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function fail(what, msg)
  error(Failure((what and (what .. ": ") or "") .. msg), 3)
end

-- T.eq(got, want, what): equal values (plain tables compared deeply).
function T.eq(got, want, what)
  if not deep_eq(got, want) then
    fail(what, "expected " .. show(want) .. ", got " .. show(got))
  end
end

-- T.ok(cond, what): cond is truthy.
function T.ok(cond, what)
  if not cond then fail(what, "expected a true value, got " .. show(cond)) end
end

-- T.match(s, pattern, what): s is a string matching the Lua pattern.
function T.match(s, pattern, what)
  if type(s) ~= "string" or not s:find(pattern) then
    fail(what, "expected a string matching " .. show(pattern) .. ", got " .. show(s))
  end
end

-- T.raises(cls, f, what): awaits f (a coroutine, an awaitable, or a
-- function called and, if it returns one, awaited) and expects it to
-- raise an instance of cls (any error if cls is nil).  Returns the error.
function T.raises(cls, f, what)
  local ok, err = pcall(function()
    if type(f) == "function" then
      local r = f()
      if asyncio.iscoroutine(r) or asyncio.isfuture(r) then await(r) end
    else
      await(f)
    end
  end)
  if ok then fail(what, "expected an error" .. (cls and (" " .. cls.__name) or "") .. ", none was raised") end
  if cls and not asyncio.isinstance(err, cls) then
    fail(what, "expected " .. cls.__name .. ", got " .. show(err))
  end
  return err
end

-- T.case(name, fn): registers a case; fn is an async function or a plain one.
function T.case(name, fn)
  cases[#cases + 1] = { name = name, fn = fn }
end

-- T.run{timeout = s}: runs every case in order, each as a task.
function T.run(opts)
  local timeout = opts and opts.timeout or 20
  local loop = asyncio.get_running_loop()
  local passed, failed = 0, 0
  for _, c in ipairs(cases) do
    local task = asyncio.create_task(function()
      local r = c.fn()
      if asyncio.iscoroutine(r) then return await(r) end
      return r
    end, { name = c.name })
    local timed_out = false
    local h = loop:call_later(timeout, function() timed_out = true; task:cancel() end)
    local ok, err = pcall(await, task)
    h:cancel()
    if ok and not timed_out then
      passed = passed + 1
      print("ok   " .. c.name)
    else
      failed = failed + 1
      local msg
      if timed_out then msg = "timed out after " .. timeout .. " s"
      elseif asyncio.isinstance(err, Failure) then msg = tostring(err.message)
      else
        msg = "error: " .. tostring(err)
        local tb = task:get_traceback()
        if tb then msg = msg .. "\n" .. tb end
      end
      print("FAIL " .. c.name .. ": " .. msg)
    end
  end
  print(string.format("%d passed, %d failed", passed, failed))
  return failed == 0
end

-- T.settle(): lets every ready task run until it blocks again (ten
-- sleep(0) rounds: scheduling, not timing; CPython's tests call it
-- run_briefly).
async function T.settle()
  for _ = 1, 10 do await asyncio.sleep(0) end
end

-- T.go(fn): runs the async function fn as a new task.
function T.go(fn)
  return asyncio.create_task(fn())
end

-- T.forever(): an awaitable that never finishes (until cancelled).
function T.forever()
  return asyncio.Event():wait()
end

-- T.tmpname(): a fresh path in a private temporary directory.
local tmpdir
function T.tmpname(suffix)
  if not tmpdir then
    local p = io.popen("mktemp -d /tmp/moonloop-test.XXXXXX")
    tmpdir = p:read("l")
    p:close()
  end
  T._n = (T._n or 0) + 1
  return string.format("%s/%d%s", tmpdir, T._n, suffix or "")
end

-- T.sh(cmd): runs a shell command (blocking), returns its stdout and status.
function T.sh(cmd)
  local p = io.popen(cmd .. "; echo \"__status=$?\"")
  local out = p:read("a")
  p:close()
  local status = tonumber(out:match("__status=(%d+)%s*$"))
  return (out:gsub("__status=%d+%s*$", "")), status
end

-- This process's pid (from /proc/self/stat: no child process needed).
do
  local f = assert(io.open("/proc/self/stat"))
  T.pid = f:read("n")
  f:close()
end

-- The number of open fds of this process (for leak checks: compare a
-- count before and after).  The listing's own pipe is not counted, either
-- end: popen closes its copy of the shell's end only after the shell has
-- started, so a listing may see it or not (the shell's stdout, fd 1, is
-- that pipe, and both ends name the same inode).  The first line of
-- ls -l is its "total".
function T.open_fds()
  local p = io.popen("ls -l /proc/" .. T.pid .. "/fd 2>/dev/null | grep -cvF \"$(readlink /proc/$$/fd/1)\"")
  local n = tonumber(p:read("a"))
  p:close()
  return n - 1
end

-- T.settled_fds([collect]): T.open_fds() once the count holds still, for
-- a leak check around work whose far ends close on their own a moment
-- later (a server's side of a connection the client just closed, a
-- resolver thread's pipe).  It lets the loop run in 10 ms steps until two
-- counts in a row agree (at most half a second); with collect, a full
-- collection comes before each count, so an fd left to the collector is
-- not counted either.  A leak still shows: as the count it settles at.
async function T.settled_fds(collect)
  if collect then collectgarbage(); collectgarbage() end
  local n = T.open_fds()
  for _ = 1, 50 do
    await asyncio.sleep(0.01)
    if collect then collectgarbage(); collectgarbage() end
    local m = T.open_fds()
    if m == n then return n end
    n = m
  end
  return n
end

return T
