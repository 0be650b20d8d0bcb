-- Out of memory in a server's accept path, and the other failures the
-- allocation-failure driver found (docs/reliability.md), each injected
-- deterministically: asyncio.core._fail_alloc(k) refuses the kth
-- allocation from now (and Lua's retry of it), for every k across the
-- window of the operation, in one process.  The knob exists only in a
-- state made with MOONLOOP_ALLOCFAIL set, so this file runs itself again
-- under MOONLOOP_ALLOCFAIL=count (which refuses nothing by itself).
local core = require "asyncio.core"
if core._allocs() == nil then
  if os.getenv("MOONLOOP_ALLOCFAIL") then error("no allocation count under MOONLOOP_ALLOCFAIL", 0) end
  local bin = os.getenv("MOONLOOP_BIN") or "build/moonloop"
  local ok, _, code = os.execute("MOONLOOP_ALLOCFAIL=count " .. bin .. " " .. arg[0])
  os.exit(ok and 0 or (code or 1))
end

local T = require "asyncio.test"
local socket = require "socket"

local function is_mem(e)
  return e == "not enough memory" or asyncio.isinstance(e, asyncio.MemoryError)
end

-- The loop's exception handler counts the MemoryErrors reported to it;
-- anything else reported is a failure of the case.
local reported, other = 0, {}
local function watch_reports()
  asyncio.get_running_loop():set_exception_handler(function(_, ctx)
    if is_mem(ctx.exception) then reported = reported + 1
    else other[#other + 1] = tostring(ctx.message) .. ": " .. tostring(ctx.exception) end
  end)
end

-- How many allocations an operation makes, measured once without faults.
local async function window(f)
  local a = core._allocs()
  await f()
  return core._allocs() - a
end

-- A client connected (blocking, so the connection waits in the server's
-- accept queue before the knob is set) to 127.0.0.1:port.
local function connect(port)
  local c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  c:setblocking(true)
  c:connect({ "127.0.0.1", port })
  c:setblocking(false)
  return c
end

-- What the client sees: the server's greeting, "" (EOF) or the error.
local async function reply(c)
  return await asyncio.wait_for(asyncio.get_running_loop():sock_recv(c, 16), 10)
end

T.case("out of memory anywhere in accepting a connection closes it at once, reports MemoryError, and the server keeps accepting (the driver's hangs in accept_event and the accept callback)", async function()
  watch_reports()
  local fds0 = T.open_fds()
  local handler = async function(r, w)
    w:write("hi\n")
    await w:drain()
    w:close()
  end
  local srv = await asyncio.start_server(handler, "127.0.0.1", 0)
  local port = srv.sockets[1]:getsockname()[2]
  local once = async function()
    local c = connect(port)
    T.eq(await reply(c), "hi\n", "served without faults")
    c:close()
  end
  await once()
  local w = await window(once)
  local served, dropped = 0, 0
  for k = 1, w + 20 do
    local c = connect(port)
    local before = reported
    local get = function() return await reply(c) end
    core._fail_alloc(k)
    local ok, data = pcall(get)
    core._fail_alloc(0)
    if not ok and is_mem(data) then
      -- The client's own wait ran out (before the server accepted): again.
      ok, data = pcall(get)
    end
    if ok and data == "hi\n" then
      served = served + 1
    elseif (ok and data == "") or (not ok and asyncio.isinstance(data, asyncio.ConnectionResetError)) then
      dropped = dropped + 1
      T.ok(reported > before, "k = " .. k .. ": a dropped connection is reported as a MemoryError")
    else
      T.ok(false, "k = " .. k .. ": the client got " .. T.show(ok and data or tostring(data)))
    end
    c:close()
  end
  T.ok(served > 0 and dropped > 0, string.format("the window covers both: %d served, %d dropped", served, dropped))
  await once()  -- still accepting
  srv:close()
  await asyncio.wait_for(srv:wait_closed(), 10)  -- no dropped connection is still counted
  T.eq(T.open_fds(), fds0, "open fds after")
  T.eq(other, {}, "other reports")
end)

T.case("start_server raises the MemoryError of a failed socket(), not 'could not create any listening socket'", async function()
  watch_reports()
  local fds0 = T.open_fds()
  local start = async function()
    local srv = await asyncio.start_server(async function() end, "127.0.0.1", 0)
    srv:close()
    await srv:wait_closed()
  end
  await start()
  local w = await window(start)
  local failed = 0
  for k = 1, w + 10 do
    local f = function() await start() end
    core._fail_alloc(k)
    local ok, e = pcall(f)
    core._fail_alloc(0)
    if not ok then
      failed = failed + 1
      T.ok(is_mem(e), "k = " .. k .. ": " .. tostring(e))
    end
  end
  T.ok(failed > 0, "some allocation failed")
  T.eq(T.open_fds(), fds0, "open fds after: no socket is left to the collector")
end)

T.case("a read buffer that cannot grow gives the reader MemoryError, not OSError(ENOMEM)", async function()
  local data = string.rep("x", 65536)
  local read = async function()
    local a, b = socket.socketpair()
    local r, w = await asyncio.open_connection({ sock = a })
    b:setblocking(true)
    b:sendall(data)
    b:close()
    return r, w
  end
  local r0, w0 = await read()
  T.ok(await r0:read() == data, "read without faults")
  w0:close()
  local a = core._allocs()
  local r1, w1 = await read()
  local mid = core._allocs()
  T.ok(await r1:read() == data, "read without faults")
  w1:close()
  local w = core._allocs() - mid
  local failed = 0
  for k = 1, w + 10 do
    local r, wr = await read()
    local f = function() return await r:read() end
    core._fail_alloc(k)
    local ok, got = pcall(f)
    core._fail_alloc(0)
    if ok then T.ok(got == data, "k = " .. k .. ": all of it, got " .. #got .. " bytes")
    else
      failed = failed + 1
      T.ok(is_mem(got), "k = " .. k .. ": " .. tostring(got))
    end
    wr:close()
  end
  T.ok(failed > 0, "some allocation failed")
  T.ok(mid > a, "measured")
end)

T.run({ timeout = 100 })
