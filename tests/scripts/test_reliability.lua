-- Scripts that aborted or hung the whole process (issue: reliability),
-- each now a clean error or a correct run: closing a socket with a
-- reader on it, wrapping fds that are not ours to wrap, trusting a list's
-- n, starving timers and I/O from the ready queue, and script integers
-- used in C arithmetic before any range check.
local T = require "asyncio.test"
local socket = require "socket"
local loop = asyncio.get_running_loop()

T.case("closing a socket removes its add_reader/add_writer callbacks (no abort in libev)", async function()
  local a, b = socket.socketpair()
  local fired = 0
  loop:add_reader(a, function() fired = fired + 1 end)
  loop:add_writer(a, function() fired = fired + 1 end)
  local fd = a:fileno()
  a:close()  -- before the loop ever polled the new watchers
  await asyncio.sleep(0.01)
  T.eq(loop:remove_reader(fd), false, "the reader is gone")
  T.eq(loop:remove_writer(fd), false, "the writer is gone")
  T.eq(fired, 0, "no callback on a closed socket")
  -- The same after the watchers were polled once.
  local c, d = socket.socketpair()
  loop:add_reader(c, function() fired = fired + 1 end)
  await asyncio.sleep(0.01)
  c:close()
  await asyncio.sleep(0.01)
  T.eq(fired, 0, "still none")
  d:close()
  b:close()
end)

T.case("socket.socket(fileno=) refuses what is not a socket, and fds another socket owns", async function()
  -- The loop's own epoll fd and eventfds are not sockets.
  for fd = 0, 6 do
    local ok, e = pcall(socket.socket, nil, nil, nil, fd)
    if ok then e:detach() end
    T.ok(not ok, "fd " .. fd .. " refused")
    T.ok(asyncio.isinstance(e, asyncio.OSError), "an OSError: " .. tostring(e))
  end
  local srv = await asyncio.start_server(function(_, sw) sw:close() end, "127.0.0.1", 0)
  local r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
  local fd = w:get_extra_info("socket"):fileno()
  local e = T.raises(asyncio.OSError, function() socket.socket(nil, nil, nil, fd) end, "a transport's fd")
  T.eq(e.errno, 16, "EBUSY")
  T.match(tostring(e), "belongs to another socket object", "says why")
  local s = socket.socket()
  T.raises(asyncio.OSError, function() socket.socket(nil, nil, nil, s:fileno()) end, "a socket's fd")
  s:close()
  w:close()
  await w:wait_closed()
  srv:close()
  await srv:wait_closed()
end)

T.case("ExceptionGroup checks its list instead of trusting n", function()
  T.raises(asyncio.ValueError, function() asyncio.ExceptionGroup("m", { n = math.tointeger(2 ^ 40) }) end, "n = 2^40")
  T.raises(asyncio.ValueError, function() asyncio.ExceptionGroup("m", { n = 2 ^ 40 }) end, "a float n")
  T.raises(asyncio.ValueError, function() asyncio.ExceptionGroup("m", { n = -1 }) end, "a negative n")
  T.raises(asyncio.ValueError, function() asyncio.ExceptionGroup("m", {}) end, "empty, as Python")
  T.raises(asyncio.TypeError, function() asyncio.ExceptionGroup("m", "x") end, "not a list")
  T.raises(asyncio.TypeError, function() asyncio.ExceptionGroup(1, { asyncio.ValueError() }) end, "message not a string")
  local e = T.raises(asyncio.ValueError, function() asyncio.ExceptionGroup("m", { "a", nil, "c", n = 3 }) end, "a hole")
  T.match(tostring(e), "item 2", "names the missing item")
  local eg = asyncio.ExceptionGroup("m", { asyncio.ValueError("a"), "b", n = 2 })
  T.eq(eg.exceptions.n, 2, "a good list")
end)

T.case("a callback that re-schedules itself with call_soon does not starve timers or I/O", async function()
  local n, N = 0, 200000
  local timer_at, io_at
  local function spin() n = n + 1; if n < N then loop:call_soon(spin) end end
  local a, b = socket.socketpair()
  loop:add_reader(a, function() io_at = io_at or n; loop:remove_reader(a) end)
  b:send("x")
  loop:call_later(0, function() timer_at = n end)
  loop:call_soon(spin)
  while n < N do await asyncio.sleep(0.001) end
  T.ok(timer_at ~= nil and timer_at < N, "the due timer ran while the callback spun (at " .. tostring(timer_at) .. ")")
  T.ok(io_at ~= nil and io_at < N, "the ready fd was seen while the callback spun (at " .. tostring(io_at) .. ")")
  a:close()
  b:close()
end)

T.case("a protocol that pauses and resumes reading on alternate iterations still reads", async function()
  local got, k, k_at = "", 0
  local srv = await loop:create_server(function()
    local p, tr = {}
    function p:connection_made(t)
      tr = t
      local function toggle()
        if tr:is_closing() then return end
        k = k + 1
        if k % 2 == 1 then tr:pause_reading() else tr:resume_reading() end
        if #got < 5 and k < 100000 then loop:call_soon(toggle)
        else tr:resume_reading() end  -- reading again, to see the EOF
      end
      loop:call_soon(toggle)
    end
    function p:data_received(d) got = got .. d; k_at = k_at or k end
    return p
  end, "127.0.0.1", 0)
  local r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
  w:write("hello")
  await w:drain()
  for _ = 1, 500 do
    if #got >= 5 then break end
    await asyncio.sleep(0.002)
  end
  T.eq(got, "hello", "the rate-limited protocol received the bytes")
  T.ok(k_at < 100000, "while it was still pausing and resuming (after " .. tostring(k_at) .. " toggles)")
  w:close()
  srv:close()
  await srv:wait_closed()
end)

T.case("script integers are range-checked before C uses them", async function()
  local srv = await asyncio.start_server(function(_, w) w:close() end, "127.0.0.1", 0)
  local r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
  local tr = w.transport
  T.raises(nil, function() tr:set_write_buffer_limits(nil, math.mininteger) end, "low = mininteger")
  T.raises(nil, function() tr:set_write_buffer_limits(nil, math.maxinteger) end, "low = maxinteger (4 * low overflows)")
  T.raises(nil, function() tr:set_write_buffer_limits(math.mininteger) end, "high = mininteger")
  tr:set_write_buffer_limits(1024)
  T.eq(tr:get_write_buffer_limits(), 256, "a good call still works (low)")
  -- An fd of 2^32 + 3 is not fd 3.
  local e = T.raises(nil, function() socket.socket(nil, nil, nil, 2 ^ 32 + 3) end, "a huge fd")
  T.match(tostring(e), "out of range", "says it is out of range")
  T.raises(nil, function() socket.socket(2 ^ 32 + 2) end, "a huge family")
  T.raises(nil, function() socket.socket():listen(math.mininteger) end, "a huge backlog")
  w:close()
  srv:close()
  await srv:wait_closed()
end)

T.run()
