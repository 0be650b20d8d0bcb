-- Bad network conditions: refused, reset, half-close, writing to a closed
-- peer, stalling and flooding peers, EMFILE on accept, cancellation in the
-- middle of I/O.  Every error must reach the script as the right OSError
-- subclass, and nothing may leak or stay armed.
local T = require "asyncio.test"
local socket = require "socket"
local loop = asyncio.get_running_loop()
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"

local async function serve(fn, opts)
  local srv = await asyncio.start_server(fn, "127.0.0.1", 0, opts)
  return srv, srv.sockets[1]:getsockname()[2]
end

local function free_port()
  local s <close> = socket.socket()
  s:bind({ "127.0.0.1", 0 })
  return s:getsockname()[2]
end

-- Bytes a StreamReader holds, from its tostring ("<StreamReader N bytes>").
local function buffered(r)
  return tonumber(tostring(r):match("(%d+) bytes"))
end

-- Runs a moonloop script (source text) in a child process under a time
-- limit, with an optional shell prefix (ulimit); returns output, status.
local function child(src, prefix)
  local path = T.tmpname(".lua")
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return T.sh(string.format("%s timeout -k 2 30 %s %s 2>&1", prefix or "", BIN, path))
end

T.case("connection refused", async function()
  local e = T.raises(asyncio.ConnectionRefusedError, asyncio.open_connection("127.0.0.1", free_port()))
  T.eq(e.errno, 111, "errno")
  T.eq(e.strerror, "Connection refused", "strerror")
  T.eq(tostring(e), "ConnectionRefusedError: [Errno 111] Connection refused", "tostring")
  T.ok(asyncio.isinstance(e, asyncio.ConnectionError), "a ConnectionError")
end)

T.case("reset by peer", async function()
  local srv = socket.socket()
  srv:bind({ "127.0.0.1", 0 })
  srv:listen()
  local _ <close> = srv
  local port = srv:getsockname()[2]
  local rst = asyncio.create_task((async function()
    local c = await loop:sock_accept(srv)
    await loop:sock_recv(c, 10)
    -- SO_LINGER {on, 0}: close() sends RST instead of FIN.
    c:setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, string.pack("ii", 1, 0))
    c:close()
  end)())
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  w:write("x")
  await rst
  local e = T.raises(asyncio.ConnectionResetError, r:read(), "read after RST")
  T.eq(e.errno, 104, "ECONNRESET")
  T.raises(asyncio.ConnectionResetError, r:readline(), "every later read raises it too")
  T.raises(asyncio.ConnectionResetError, w:drain(), "drain raises it")
  T.eq(w:is_closing(), true, "the transport is closing")
  T.raises(asyncio.ConnectionResetError, w:wait_closed(), "wait_closed raises it (as asyncio)")
end)

T.case("peer half-close: at_eof, and we may still write", async function()
  local got = loop:create_future()
  local srv <close>, port = await serve(async function(r, w)
    w:write("bye")
    w:write_eof()
    got:set_result(await r:read())
    w:close()
  end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(await r:read(), "bye", "data before EOF")
  T.eq(r:at_eof(), true, "at_eof")
  T.eq(w:is_closing(), false, "our side stays open")
  w:write("still here")
  w:write_eof()
  T.eq(await got, "still here", "the peer read what we wrote after its EOF")
  w:close()
  await w:wait_closed()
end)

T.case("writing after the peer closed raises BrokenPipe/ConnectionReset, no SIGPIPE", async function()
  local srv <close>, port = await serve(function(r, w) w:close() end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(await r:read(), "", "the peer closed")
  local chunk = string.rep("p", 65536)
  local err
  for _ = 1, 1000 do
    w:write(chunk)
    local ok, e = pcall(function() await w:drain() end)
    if not ok then err = e; break end
    await asyncio.sleep(0)
  end
  T.ok(err ~= nil, "drain failed")
  T.ok(asyncio.isinstance(err, asyncio.BrokenPipeError) or asyncio.isinstance(err, asyncio.ConnectionResetError),
       "BrokenPipeError or ConnectionResetError, got " .. tostring(err))
  T.ok(err.errno == 32 or err.errno == 104, "errno")
  w:close()
  -- Same with the raw socket API.
  local a, b = socket.socketpair()
  b:close()
  local e = T.raises(asyncio.BrokenPipeError, loop:sock_sendall(a, "x"), "sock_sendall")
  T.eq(e.errno, 32, "EPIPE")
  a:close()
end)

T.case("a stalling peer: timeouts fire and the stream stays usable", async function()
  local go = asyncio.Event()
  local srv <close>, port = await serve(async function(r, w)
    await go:wait()
    w:write("finally\n")
    await r:read()
    w:close()
  end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.raises(asyncio.TimeoutError, asyncio.wait_for(r:readline(), 0.05), "readline")
  T.raises(asyncio.TimeoutError, asyncio.wait_for(r:read(5), 0.05), "read")
  T.raises(asyncio.TimeoutError, asyncio.wait_for(r:readuntil("!"), 0.05), "readuntil")
  go:set()
  T.eq(await r:readline(), "finally\n", "the line after the stall")
  w:close()
end)

T.case("a writer to a slow reader blocks in drain; memory stays bounded", async function()
  local release = asyncio.Event()
  local total = loop:create_future()
  local srv <close>, port = await serve(async function(r, w)
    await release:wait()
    total:set_result(#(await r:read()))
    w:close()
  end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  local chunk = string.rep("s", 65536)
  local sent, blocked = 0, false
  for _ = 1, 10000 do
    w:write(chunk)
    sent = sent + #chunk
    T.ok(w.transport:get_write_buffer_size() <= 65536 + #chunk, "write buffer bounded")
    local ok, e = pcall(function() await asyncio.wait_for(w:drain(), 0.2) end)
    if not ok then
      T.ok(asyncio.isinstance(e, asyncio.TimeoutError), "drain timed out: " .. tostring(e))
      blocked = true
      break
    end
  end
  T.ok(blocked, "drain blocked once the peer stopped reading")
  release:set()
  await w:drain()
  w:write_eof()
  T.eq(await total, sent, "every byte arrived once the peer read again")
  w:close()
end)

T.case("a flooding peer: the reader's limit holds its buffer", async function()
  local stalled = loop:create_future()
  local limit = 16384
  local srv <close>, port = await serve(async function(r, w)
    local chunk = string.rep("f", 65536)
    local n = 0
    while true do
      w:write(chunk)
      n = n + #chunk
      local ok = pcall(function() await asyncio.wait_for(w:drain(), 0.2) end)
      if not ok then break end
    end
    stalled:set_result(n)
    await w:drain()
    w:close()
  end)
  local r, w = await asyncio.open_connection("127.0.0.1", port, { limit = limit })
  local n = await stalled
  T.ok(buffered(r) <= 2 * limit + 256 * 1024, "reader buffer bounded: " .. buffered(r))
  local got = 0
  while true do
    local s = await r:read(65536)
    if s == "" then break end
    got = got + #s
  end
  T.ok(got >= n, "all the flood arrives once read")
  w:close()
end)

T.case("accept hitting EMFILE backs off and recovers", function()
  local out, st = child([[
local socket = require "socket"
local loop = asyncio.get_running_loop()
local reported = loop:create_future()
loop:set_exception_handler(function(_, ctx)
  if not reported:done() then reported:set_result(ctx) end
end)
local srv = await asyncio.start_server(async function(r, w)
  w:write(await r:readline()); await w:drain(); w:close()
end, "127.0.0.1", 0)
local port = srv.sockets[1]:getsockname()[2]
local hogs = {}
while true do
  local ok, s = pcall(socket.socket)
  if not ok then assert(s.errno == 24, tostring(s)); break end
  hogs[#hogs + 1] = s
end
table.remove(hogs):close()                 -- one fd: for our client only
local c = socket.socket()
await loop:sock_connect(c, {"127.0.0.1", port})
local ctx = await reported                 -- the server found no fd to accept with
print("reported", ctx.message, ctx.exception.errno)
for _ = 1, 10 do table.remove(hogs):close() end
await loop:sock_sendall(c, "recovered\n")
print("echo", await loop:sock_recv(c, 100))
c:close()
srv:close()
await srv:wait_closed()
for _, h in ipairs(hogs) do h:close() end
]], "ulimit -n 48;")
  T.eq(st, 0, "child exit status (output: " .. out .. ")")
  T.match(out, "reported\tsocket.accept%(%) out of system resource[^\n]*\t24", "EMFILE reported")
  T.match(out, "echo\trecovered", "served after fds came back")
end)

T.case("cancelling read, drain and sock_connect leaks no fd and leaves nothing armed", function()
  local out, st = child([[
local socket = require "socket"
local loop = asyncio.get_running_loop()
local nfds = require("asyncio.test").open_fds
local before = nfds()
local srv = await asyncio.start_server(async function(r, w) await r:read(); w:close() end, "127.0.0.1", 0)
local port = srv.sockets[1]:getsockname()[2]
-- read
local r, w = await asyncio.open_connection("127.0.0.1", port)
local t = asyncio.create_task(r:readline())
await asyncio.sleep(0)
t:cancel()
assert(not pcall(function() await t end))
-- drain
w.transport:set_write_buffer_limits(1)
w:write(string.rep("d", 4 * 1024 * 1024))
local d = asyncio.create_task(w:drain())
await asyncio.sleep(0)
d:cancel()
assert(not pcall(function() await d end))
w:close()
-- sock_connect to a full backlog stays pending
local ls = socket.socket()
ls:bind({"127.0.0.1", 0}); ls:listen(0)
local conns, tasks = {}, {}
for i = 1, 4 do
  conns[i] = socket.socket()
  tasks[i] = asyncio.create_task(loop:sock_connect(conns[i], ls:getsockname()))
end
for _ = 1, 3 do await asyncio.sleep(0) end  -- the connects are started
for i = 1, 4 do tasks[i]:cancel() end
for i = 1, 4 do pcall(function() await tasks[i] end) end
for i = 1, 4 do conns[i]:close() end
ls:close()
await w:wait_closed()
srv:close()
await srv:wait_closed()
collectgarbage()
print("fds", before, nfds())
]])
  T.eq(st, 0, "the child exited by itself (124 means something stayed armed): " .. out)
  local a, b = out:match("fds\t(%d+)\t(%d+)")
  T.ok(a ~= nil, "fd counts printed: " .. out)
  T.eq(tonumber(b), tonumber(a), "fds after == fds before")
end)

T.case("closing a server closes its listening sockets", async function()
  local srv, port = await serve(function(r, w) w:close() end)
  local s = srv.sockets[1]
  srv:close()
  T.eq(s:fileno(), -1, "listening socket closed")
  T.raises(asyncio.ConnectionRefusedError, asyncio.open_connection("127.0.0.1", port), "refused after close")
  await srv:wait_closed()
end)

T.run()
