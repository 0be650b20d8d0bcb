-- The allocation-failure and GC-stress modes (docs/reliability.md): that
-- they work, and the bugs they found.  The modes' full runs over the
-- workloads are tests/stress/run.sh (make test runs it).
local T = require "asyncio.test"
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"

local function run(env, path)
  local p = io.popen(env .. " timeout -k 2 30 " .. BIN .. " " .. path .. " 2>&1; echo \"EXIT=$?\"")
  local out = p:read("a")
  p:close()
  return tonumber(out:match("EXIT=(%d+)\n$")), out
end

local function write(src)
  local path = T.tmpname(".lua")
  local f = assert(io.open(path, "w")); f:write(src); f:close()
  return path
end

T.case("MOONLOOP_ALLOCFAIL=count prints the count; =1 fails the state's creation cleanly", async function()
  local path = write("print('hi')")
  local rc, out = run("MOONLOOP_ALLOCFAIL=count", path)
  T.eq(rc, 0, "exit status")
  local n = tonumber(out:match("MOONLOOP_ALLOCFAIL=count: (%d+) allocations"))
  T.ok(n and n > 100, "a count: " .. out)
  rc, out = run("MOONLOOP_ALLOCFAIL=1", path)
  T.eq(rc, 1, "exit status")
  T.match(out, "out of memory", "message")
  rc, out = run("MOONLOOP_ALLOCFAIL=" .. (n - 5), path)
  T.ok(rc == 0 or out:find("not enough memory"), "late in the run: " .. out)
end)

T.case("MOONLOOP_GCSTRESS=1 collects at every step (a loop of allocations is much slower) and changes no result", async function()
  local path = write("local t0 = os.clock(); local k = {}; for i = 1, 20000 do k[i % 100 + 1] = {i} end\n" ..
                     "print(k[1][1], os.clock() - t0)")
  local rc, out = run("MOONLOOP_GCSTRESS=0", path)
  T.eq(rc, 0, out)
  local v1, t1 = out:match("^(%d+)\t([%d.e-]+)")
  rc, out = run("MOONLOOP_GCSTRESS=1", path)
  T.eq(rc, 0, out)
  local v2, t2 = out:match("^(%d+)\t([%d.e-]+)")
  T.eq(v2, v1, "same result")
  T.ok(tonumber(t2) > 5 * tonumber(t1), string.format("collections happen: %s s against %s s", t2, t1))
end)

T.case("a stream pair that cannot be made (out of memory) raises MemoryError, not 'socket is owned by a transport' (found by the allocation-failure mode)", async function()
  -- Every N in the window of allocations that open_connection(sock=)
  -- makes; before the fix, the half-made transport kept the socket and
  -- make_stream's close() raised over the MemoryError.
  -- Both scripts make one stream pair first (loading every module it
  -- needs), so the window is the second open_connection's alone.
  local setup = "local socket = require 'socket'\nlocal a, b = socket.socketpair()\n" ..
                "local c, d = socket.socketpair()\n" ..
                "asyncio.run((async function()\n" ..
                "  local r0, w0 = await asyncio.open_connection({ sock = c })\n  w0:close()\n"
  local base = write(setup .. "end)())\n")
  local full = write(setup .. "  local r, w = await asyncio.open_connection({ sock = a })\n" ..
                     "  w:close()\nend)())\n")
  local _, o0 = run("MOONLOOP_ALLOCFAIL=count", base)
  local _, o1 = run("MOONLOOP_ALLOCFAIL=count", full)
  local c0 = tonumber(o0:match("count: (%d+)")) - 20
  local c1 = tonumber(o1:match("count: (%d+)"))
  local mem = 0
  for n = c0, c1 do
    local rc, out = run("MOONLOOP_ALLOCFAIL=" .. n, full)
    T.ok(not out:find("owned by a transport"), "N = " .. n .. ": " .. out)
    T.ok(rc == 0 or out:find("not enough memory") or out:find("MemoryError"), "N = " .. n .. ": " .. out)
    if rc ~= 0 then mem = mem + 1 end
  end
  T.ok(mem > 0, "some allocation failed in the window")
end)

T.case("out of memory while the CLI sets arg is an error, not Lua's panic (an abort; found by the allocation-failure mode)", async function()
  local path = write("print(...)")
  local _, out = run("MOONLOOP_ALLOCFAIL=count", path .. " a b")
  local n = tonumber(out:match("count: (%d+)"))
  -- Every N of the start-up's last part, where arg and the arguments are made.
  for k = math.max(1, n - 400), n do
    local rc, o = run("MOONLOOP_ALLOCFAIL=" .. k, path .. " a b")
    T.ok(rc < 128, "N = " .. k .. ": exit status " .. tostring(rc) .. ": " .. o)
  end
end)

T.run({ timeout = 100 })
