-- Streams: open_connection/start_server, StreamReader, StreamWriter,
-- Server, Unix streams.
local T = require "asyncio.test"
local socket = require "socket"

-- Starts a server whose handler is fn(reader, writer); returns the server
-- and its port.
local async function serve(fn, opts)
  local srv = await asyncio.start_server(fn, "127.0.0.1", 0, opts)
  return srv, srv.sockets[1]:getsockname()[2]
end

-- A server that sends `data` then closes (or half-closes with keep=true).
local async function sender(data, keep)
  return await serve(async function(r, w)
    w:write(data)
    await w:drain()
    if keep then w:write_eof() else w:close() end
    await r:read()
    w:close()
  end)
end

local async function echo(r, w)
  for line in r:lines() do
    w:write(line)
    await w:drain()
  end
  w:close()
end

T.case("echo with readline", async function()
  local srv <close>, port = await serve(echo)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  w:write("hello\n")
  T.eq(await r:readline(), "hello\n", "first line")
  w:writelines({ "a", "b\n", "c\n" })
  T.eq(await r:readline(), "ab\n", "writelines")
  T.eq(await r:readline(), "c\n", "next line")
  w:close()
  await w:wait_closed()
  T.ok(w:is_closing(), "is_closing after close")
end)

T.case("read(n), read() to EOF, at_eof", async function()
  local srv <close>, port = await sender("0123456789")
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(await r:read(0), "", "read(0)")
  local first = await r:read(4)
  T.ok(#first >= 1 and #first <= 4, "read(4) returns at most 4 bytes")
  local rest = await r:read()
  T.eq(first .. rest, "0123456789", "read() to EOF")
  T.eq(r:at_eof(), true, "at_eof")
  T.eq(await r:read(10), "", "read at EOF")
  T.eq(await r:readline(), "", "readline at EOF")
  w:close()
end)

T.case("readexactly and IncompleteReadError(partial, expected)", async function()
  local srv <close>, port = await sender("abcdefgh")
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(await r:readexactly(3), "abc", "exact bytes")
  local e = T.raises(asyncio.IncompleteReadError, r:readexactly(10), "short stream")
  T.eq(e.partial, "defgh", "partial")
  T.eq(e.expected, 10, "expected")
  T.match(tostring(e), "5 bytes read on a total of 10 expected bytes", "message")
  T.raises(asyncio.ValueError, r:readexactly(-1), "negative size")
  w:close()
end)

T.case("readuntil with one and several separators", async function()
  local srv <close>, port = await sender("key=value;rest|end\r\ntail")
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(await r:readuntil("="), "key=", "single separator")
  T.eq(await r:readuntil({ "|", ";" }), "value;", "earliest of several")
  T.eq(await r:readuntil({ "\r\n", "|end" }), "rest|end", "shortest match")
  T.eq(await r:readuntil("\r\n"), "\r\n", "two-byte separator")
  local e = T.raises(asyncio.IncompleteReadError, r:readuntil("\n"), "no separator before EOF")
  T.eq(e.partial, "tail", "partial data")
  T.eq(e.expected, nil, "expected is nil")
  T.raises(asyncio.ValueError, r:readuntil(""), "empty separator")
  T.raises(asyncio.ValueError, r:readuntil({}), "no separators")
  w:close()
end)

T.case("LimitOverrunError keeps the data; readline drops the long line", async function()
  local srv <close>, port = await sender(string.rep("x", 100) .. "\nshort\n" .. string.rep("y", 300), true)
  local r, w = await asyncio.open_connection("127.0.0.1", port, { limit = 50 })
  local e = T.raises(asyncio.LimitOverrunError, r:readuntil("\n"), "line over the limit")
  T.eq(e.consumed, 100, "consumed is where the separator starts")
  T.eq(await r:readexactly(101), string.rep("x", 100) .. "\n", "the data was kept")
  T.eq(await r:readline(), "short\n", "next line")
  e = T.raises(asyncio.ValueError, r:readline(), "readline over the limit")
  T.match(tostring(e), "limit", "message")
  T.eq(await r:read(), "", "the long line was dropped")
  w:close()
end)

T.case("lines() iterates until EOF", async function()
  local srv <close>, port = await sender("one\ntwo\nthree")
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  local got = {}
  for line in r:lines() do got[#got + 1] = line end
  T.eq(got, { "one\n", "two\n", "three" }, "lines")
  w:close()
end)

T.case("big transfers, backpressure and drain from several tasks", async function()
  local total = 4 * 1024 * 1024
  local srv <close>, port = await serve(async function(r, w)
    local n = 0
    while true do
      local chunk = await r:read(65536)
      if chunk == "" then break end
      n = n + #chunk
    end
    w:write(tostring(n))
    w:close()
  end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  local chunk = string.rep("q", 256 * 1024)
  for _ = 1, total // #chunk do
    w:write(chunk)
    T.ok(w.transport:get_write_buffer_size() <= total, "buffered bytes")
  end
  -- Several tasks may wait in drain at once.
  local drains = {}
  for i = 1, 3 do drains[i] = asyncio.create_task(w:drain()) end
  await asyncio.gather(table.unpack(drains))
  local low, high = w.transport:get_write_buffer_limits()
  T.eq(high, 65536, "default high-water mark")
  T.eq(low, 16384, "default low-water mark")
  T.ok(w.transport:get_write_buffer_size() <= low, "drained to the low-water mark")
  T.eq(w:can_write_eof(), true, "can_write_eof")
  w:write_eof()
  T.raises(asyncio.RuntimeError, function() w:write("x") end, "write after write_eof")
  T.eq(await r:read(), tostring(total), "the server got every byte")
  w:close()
end)

T.case("get_extra_info", async function()
  local peer
  local srv <close>, port = await serve(function(r, w)
    peer = w:get_extra_info("peername")
    w:close()
  end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(w:get_extra_info("peername"), { "127.0.0.1", port }, "peername")
  local sn = w:get_extra_info("sockname")
  T.eq(sn[1], "127.0.0.1", "sockname")
  local s = w:get_extra_info("socket")
  T.eq(s:getsockname(), sn, "socket")
  T.eq(w:get_extra_info("nothing", "dflt"), "dflt", "default")
  T.eq(await r:read(), "", "server closed")
  T.eq(peer, sn, "the server saw our address")
  w:close()
end)

T.case("wait_for and timeout cancel a pending read; the stream stays usable", async function()
  local go = asyncio.Event()
  local srv <close>, port = await serve(async function(r, w)
    await go:wait()
    w:write("late line\n")
    await r:read()
    w:close()
  end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.raises(asyncio.TimeoutError, asyncio.wait_for(r:readline(), 0.05), "wait_for")
  T.raises(asyncio.TimeoutError, function()
    local _ <close> = asyncio.timeout(0.05)
    await r:readexactly(5)
  end, "asyncio.timeout")
  go:set()
  T.eq(await r:readline(), "late line\n", "read after timeouts")
  w:close()
end)

T.case("a second concurrent reader gets RuntimeError", async function()
  local srv <close>, port = await sender("x", true)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(await r:read(1), "x", "data")
  local t = asyncio.create_task(r:read(1))
  await asyncio.sleep(0)
  T.raises(asyncio.RuntimeError, r:readline(), "second reader")
  w:close()
  T.eq(await t, "", "first reader sees EOF")
end)

T.case("server: close, wait_closed waits for connections", async function()
  local release = asyncio.Event()
  local srv, port = await serve(async function(r, w)
    await release:wait()
    w:close()
  end)
  T.eq(srv:is_serving(), true, "serving")
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  srv:close()
  T.eq(srv:is_serving(), false, "not serving after close")
  T.eq(#srv.sockets, 0, "no sockets after close")
  T.raises(asyncio.ConnectionRefusedError, asyncio.open_connection("127.0.0.1", port), "listening socket closed")
  local waiter = asyncio.create_task(srv:wait_closed())
  for _ = 1, 3 do await asyncio.sleep(0) end
  T.eq(waiter:done(), false, "wait_closed waits for the open connection")
  release:set()
  await waiter
  T.eq(await r:read(), "", "connection closed by the handler")
  await srv:wait_closed()
  w:close()
end)

T.case("serve_forever, start_serving=false, <close>", async function()
  local srv = await asyncio.start_server(function(r, w) w:write("hi"); w:close() end,
                                         "127.0.0.1", 0, { start_serving = false })
  T.eq(srv:is_serving(), false, "not serving yet")
  local port = srv.sockets[1]:getsockname()[2]
  local forever = asyncio.create_task(srv:serve_forever())
  await asyncio.sleep(0)
  T.eq(srv:is_serving(), true, "serve_forever starts serving")
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(await r:read(), "hi", "served")
  w:close()
  forever:cancel()
  T.raises(asyncio.CancelledError, forever, "serve_forever cancelled")
  T.eq(srv:is_serving(), false, "cancelling serve_forever closes the server")
  do
    local s2 <close> = await asyncio.start_server(function(r, w) w:close() end, "127.0.0.1", 0)
    T.eq(s2:is_serving(), true, "serving inside the block")
  end
end)

T.case("plain and async callbacks, each client in its own task", async function()
  local tasks = {}
  local srv <close>, port = await serve(function(r, w)
    tasks[#tasks + 1] = asyncio.current_task()
    local line = await r:readline()  -- await works in a plain function too
    w:write("plain:" .. line)
    w:close()
  end)
  local ra, wa = await asyncio.open_connection("127.0.0.1", port)
  local rb, wb = await asyncio.open_connection("127.0.0.1", port)
  wb:write("b\n")
  wa:write("a\n")
  T.eq(await rb:read(), "plain:b\n", "second client served first")
  T.eq(await ra:read(), "plain:a\n", "first client")
  T.ok(tasks[1] ~= tasks[2], "separate tasks")
  wa:close()
  wb:close()
end)

-- Catches the loop's next exception report: returns a future of its
-- context, and a function that puts the old handler back.
local function catch_report()
  local loop = asyncio.get_running_loop()
  local reported = loop:create_future()
  local old = loop:get_exception_handler()
  loop:set_exception_handler(function(_, ctx)
    if not reported:done() then reported:set_result(ctx) end
  end)
  return reported, function() loop:set_exception_handler(old) end
end

T.case("an async client callback is the client's task itself, and its failure is reported", async function()
  local reported, restore = catch_report()
  local frames = {}
  local srv <close>, port = await serve(async function(r, w)
    -- No wrapper between the task and the callback: the callback's frame
    -- is the task's first.
    for level = 1, 50 do
      local info = debug.getinfo(level, "S")
      if not info then break end
      frames[#frames + 1] = info.what
    end
    await r:readline()
    error("async boom")
  end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  w:write("go\n")
  T.eq(await r:read(), "", "connection closed")
  local ctx = await asyncio.wait_for(reported, 5)
  restore()
  T.match(ctx.message, "client_connected_cb", "context message")
  T.match(tostring(ctx.exception), "async boom", "the error")
  local lua_frames = 0
  for _, what in ipairs(frames) do if what == "Lua" then lua_frames = lua_frames + 1 end end
  T.eq(lua_frames, 1, "one Lua frame under the callback: its own")
  w:close()
end)

T.case("a failing client callback closes its connection and is reported", async function()
  local reported, restore = catch_report()
  local srv <close>, port = await serve(function() error("boom") end)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(await r:read(), "", "connection closed")
  local ctx = await reported
  restore()
  T.match(ctx.message, "client_connected_cb", "context message")
  T.match(tostring(ctx.exception), "boom", "the error")
  w:close()
end)

T.case("Unix streams", async function()
  local path = T.tmpname(".sock")
  local srv <close> = await asyncio.start_unix_server(echo, path)
  T.eq(srv.sockets[1]:getsockname(), path, "bound to the path")
  local r, w = await asyncio.open_unix_connection(path)
  w:write("over unix\n")
  T.eq(await r:readline(), "over unix\n", "echo")
  T.eq(w:get_extra_info("peername"), path, "peername is the path")
  T.eq(w:get_extra_info("sockname"), "", "an unnamed client socket")
  w:close()
  await w:wait_closed()
  -- The server's side: its own address is the path (too long to keep
  -- inline: the transport keeps both addresses aside), its peer unnamed,
  -- and both still there once the connection is closed.
  local seen = asyncio.Future()
  local srv3 <close> = await asyncio.start_unix_server(async function(r3, w3)
    await r3:read()
    w3:close()
    await w3:wait_closed()
    seen:set_result({ w3:get_extra_info("sockname"), w3:get_extra_info("peername") })
  end, path .. "3")
  local r3, w3 = await asyncio.open_unix_connection(path .. "3")
  w3:close()
  local names = await asyncio.wait_for(seen, 5)
  T.eq(names[1], path .. "3", "the server side's sockname")
  T.eq(names[2], "", "the server side's peer is unnamed")
  srv3:close()
  srv:close()
  await srv:wait_closed()
  -- A stale socket file is replaced by the next server.
  local s2 <close> = await asyncio.start_unix_server(echo, path)
  T.eq(s2:is_serving(), true, "rebound over a stale socket file")
end)

T.case("IPv6 streams", async function()
  local srv <close> = await asyncio.start_server(echo, "::1", 0)
  local port = srv.sockets[1]:getsockname()[2]
  local r, w = await asyncio.open_connection("::1", port)
  w:write("six\n")
  T.eq(await r:readline(), "six\n", "echo over IPv6")
  T.eq(#w:get_extra_info("peername"), 4, "IPv6 peername")
  w:close()
end)

T.case("server on all interfaces with host nil", async function()
  local srv <close> = await asyncio.start_server(echo, nil, 0)
  T.ok(#srv.sockets >= 1, "at least one listening socket")
  local port = srv.sockets[1]:getsockname()[2]
  local r, w = await asyncio.open_connection("localhost", port)
  w:write("any\n")
  T.eq(await r:readline(), "any\n", "reachable on localhost")
  w:close()
end)

T.case("a standalone StreamReader fed by hand", async function()
  local r = asyncio.StreamReader({ limit = 10 })
  local t = asyncio.create_task(r:readline())
  await asyncio.sleep(0)
  r:feed_data("par")
  r:feed_data("tial\nmore")
  T.eq(await t, "partial\n", "line from fed data")
  r:feed_eof()
  T.eq(await r:read(), "more", "rest")
  T.eq(r:at_eof(), true, "at_eof")
  local r2 = asyncio.StreamReader()
  r2:set_exception(asyncio.ValueError("bad"))
  T.raises(asyncio.ValueError, r2:read(), "set_exception")
end)

T.case("readuntil with two separators that end together checks the limit at the shorter one's start (CPython; found by the StreamReader fuzzer)", async function()
  local r = asyncio.StreamReader(3)
  r:feed_data("xxxab")
  local e = T.raises(asyncio.LimitOverrunError, r:readuntil({ "ab", "b" }), "'b' starts past the limit")
  T.eq(e.consumed, 4, "consumed is where 'b' starts")
  local r2 = asyncio.StreamReader(4)
  r2:feed_data("xxxab")
  T.eq(await r2:readuntil({ "ab", "b" }), "xxxab", "within the limit")
end)

T.case("misuse: bad arguments name the argument", async function()
  T.raises(nil, asyncio.open_connection("127.0.0.1", 1, "not a table"), "options must be a table")
  local e = T.raises(nil, function() return asyncio.StreamReader.readline(42) end)
  T.match(tostring(e), "StreamReader expected", "self check")
  T.raises(asyncio.ValueError, function() return asyncio.StreamReader({ limit = 0 }) end, "limit")
end)

T.case("__gc and __close called by a script on the wrong object do nothing; a transport's socket is not closed under it", async function()
  local socket = require "socket"
  local c = asyncio.sleep(1)
  getmetatable(c).__gc({}); getmetatable(c).__gc(asyncio.Future())
  c:close()
  local s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  getmetatable(s).__gc({}); getmetatable(s).__close(asyncio.Future()); getmetatable(s).__gc(socket.buffer(10))
  s:close()
  local srv <close>, port = await serve(echo)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  getmetatable(w).__gc(1); getmetatable(w.transport).__gc({})
  do local sk <close> = w:get_extra_info("socket") end
  T.eq(w.transport:is_closing(), false, "the transport's socket stayed open")
  w:write("still here\n")
  T.eq(await r:readline(), "still here\n", "and works")
  w:close()
end)

-- ---- servers on given sockets, reuse_port ----

-- One line from a fresh connection to port (the server greets with a line).
local async function greeting(port)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  local line = await r:readline()
  w:close()
  return line
end

local function greeter(text)
  return async function(r, w)
    w:write(text .. "\n")
    await w:drain()
    w:close()
  end
end

T.case("start_server with reuse_port: two servers share a port, both accept", async function()
  local a <close> = await asyncio.start_server(greeter("a"), "127.0.0.1", 0, { reuse_port = true })
  local port = a.sockets[1]:getsockname()[2]
  local b <close> = await asyncio.start_server(greeter("b"), "127.0.0.1", port, { reuse_port = true })
  T.eq(b.sockets[1]:getsockname()[2], port, "the same port")
  T.eq(b.sockets[1]:getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1, "SO_REUSEPORT set")
  -- The kernel spreads connections by a hash of the client's address and
  -- port: closing a stops it getting any, and b answers alone.
  a:close()
  await a:wait_closed()
  T.eq(await greeting(port), "b\n", "b serves once a is closed")
  local e = T.raises(asyncio.OSError, asyncio.start_server(greeter("c"), "127.0.0.1", port),
                     "without reuse_port the port is taken")
  T.eq(e.errno, 98, "EADDRINUSE")
end)

T.case("start_server with sock=: a listening socket, an inherited fd, a bound one", async function()
  -- A socket that listens already keeps its backlog (a supervisor's).
  local s = socket.socket()
  s:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, true)
  s:bind({ "127.0.0.1", 0 })
  s:listen(7)
  local port = s:getsockname()[2]
  local srv = await asyncio.start_server(greeter("given"), { sock = s })
  T.eq(srv.sockets[1], s, "the server's socket is the one given")
  T.eq(await greeting(port), "given\n", "serves on it")
  srv:close()
  await srv:wait_closed()
  T.eq(s:fileno(), -1, "closed with the server")
  -- An fd inherited from a parent process: wrapped with socket.socket(fileno=).
  local p = socket.socket()
  p:bind({ "127.0.0.1", 0 })
  p:listen(16)
  local pport = p:getsockname()[2]
  local fd = p:detach()
  local inherited = socket.socket(nil, nil, nil, fd)
  local srv2 <close> = await asyncio.start_server(greeter("inherited"), nil, nil, { sock = inherited })
  T.eq(await greeting(pport), "inherited\n", "serves on the inherited fd")
  -- A bound socket that does not listen yet: the server listens (asyncio's way).
  local b = socket.socket()
  b:bind({ "127.0.0.1", 0 })
  local srv3 <close> = await asyncio.start_server(greeter("bound"), { sock = b })
  T.eq(b:getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN), 1, "listening now")
  T.eq(await greeting(b:getsockname()[2]), "bound\n", "serves on it")
end)

T.case("loop:create_server with sock= and reuse_port", async function()
  local loop = asyncio.get_running_loop()
  local P = {}
  P.__index = P
  function P.connection_made(self, tr) tr:write("proto\n"); tr:close() end
  local s = socket.socket()
  s:bind({ "127.0.0.1", 0 })
  s:listen(8)
  local srv <close> = await loop:create_server(function() return setmetatable({}, P) end, { sock = s })
  T.eq(await greeting(s:getsockname()[2]), "proto\n", "serves on the given socket")
  local r1 <close> = await loop:create_server(function() return setmetatable({}, P) end, "127.0.0.1", 0,
                                              { reuse_port = true })
  local rport = r1.sockets[1]:getsockname()[2]
  local r2 <close> = await loop:create_server(function() return setmetatable({}, P) end, "127.0.0.1", rport,
                                              { reuse_port = true })
  T.eq(await greeting(rport), "proto\n", "a reuse_port pair serves")
end)

T.case("a server's sock= is checked: stream, open, listening or bound, not connected", async function()
  local loop = asyncio.get_running_loop()
  local function check(fn, cls, sock, pattern, what)
    local e = T.raises(cls, fn(sock), what)
    T.match(tostring(e), pattern, what .. ": message")
  end
  local variants = {
    { "start_server", function(sock) return asyncio.start_server(greeter("x"), { sock = sock }) end },
    { "start_unix_server", function(sock) return asyncio.start_unix_server(greeter("x"), { sock = sock }) end },
    { "create_server", function(sock) return loop:create_server(function() return {} end, { sock = sock }) end },
  }
  for _, v in ipairs(variants) do
    local name, fn = v[1], v[2]
    check(fn, asyncio.TypeError, 42, name .. "%(%) sock must be a socket.socket, got number", name .. " number")
    local udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    check(fn, asyncio.ValueError, udp, "A Stream Socket was expected", name .. " UDP")
    udp:close()
    local closed = socket.socket()
    closed:close()
    check(fn, asyncio.ValueError, closed, name .. "%(%) sock is closed", name .. " closed")
    local unbound = socket.socket()
    check(fn, asyncio.ValueError, unbound, name .. "%(%) sock is neither listening nor bound", name .. " unbound")
    unbound:close()
    local a, b = socket.socketpair()
    check(fn, asyncio.ValueError, a, name .. "%(%) sock is connected to", name .. " connected")
    a:close(); b:close()
  end
  local s = socket.socket()
  s:bind({ "127.0.0.1", 0 })
  T.raises(asyncio.ValueError, asyncio.start_server(greeter("x"), "127.0.0.1", 1, { sock = s }),
           "host/port with sock")
  s:close()
end)

T.run()
