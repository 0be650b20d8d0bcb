-- loop:sock_sendfile and loop:sendfile (issue #12): sendfile(2) on plain
-- sockets and transports, the read+send fallback (non-regular files, TLS),
-- fallback = false, offset/count, the file position, the transport's queue
-- flushed first, write() refused meanwhile, cancellation, bad arguments.
-- Real sockets on 127.0.0.1; the TLS certificate is made at test time.
local T = require "asyncio.test"
local socket = require "socket"
local loop = asyncio.get_running_loop()

-- A file of n bytes whose every 8 bytes say where they are.
local function make_file(n)
  local path = T.tmpname(".bin")
  local f = assert(io.open(path, "wb"))
  local parts, len = {}, 0
  while len < n do
    local s = string.format("%07d\n", len)
    parts[#parts + 1] = s
    len = len + #s
  end
  local data = table.concat(parts):sub(1, n)
  f:write(data)
  f:close()
  return path, data
end

-- A TCP pair on 127.0.0.1: the listening side's accepted socket and the
-- connected client socket, both non-blocking.
local async function tcp_pair()
  local l = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  l:bind({ "127.0.0.1", 0 })
  l:listen(1)
  local c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  local acc = asyncio.create_task(loop:sock_accept(l))
  await loop:sock_connect(c, l:getsockname())
  local s = await acc
  l:close()
  return s, c
end

-- Reads sock until EOF.
local async function drain_sock(sock)
  local parts = {}
  while true do
    local d = await loop:sock_recv(sock, 65536)
    if d == "" then return table.concat(parts) end
    parts[#parts + 1] = d
  end
end

local BIG = 6 * 1024 * 1024  -- more than loopback's socket buffers hold

T.case("sock_sendfile: a file larger than the socket buffers arrives intact; position at the end", async function()
  local path, data = make_file(BIG)
  local s, c = await tcp_pair()
  local f <close> = assert(io.open(path, "rb"))
  local got = asyncio.create_task(drain_sock(c))
  local n = await loop:sock_sendfile(s, f)
  T.eq(n, BIG, "bytes sent")
  T.eq(f:seek(), BIG, "the file's position is offset + bytes sent")
  s:shutdown(socket.SHUT_WR)
  local r = await got
  T.eq(#r, BIG, "bytes received")
  T.ok(r == data, "the bytes are the file's")
  s:close(); c:close()
end)

T.case("sock_sendfile: offset and count; count past the end sends what there is", async function()
  local path, data = make_file(100000)
  local s, c = await tcp_pair()
  local f <close> = assert(io.open(path, "rb"))
  f:seek("set", 5)  -- the position is not the offset: offset defaults to 0
  T.eq(await loop:sock_sendfile(s, f, 1000, 5000), 5000, "count bytes")
  T.eq(f:seek(), 6000, "position offset + count")
  T.eq(await loop:sock_sendfile(s, f, { offset = 99990, count = 1000 }), 10, "to the end of file")
  T.eq(f:seek(), 100000, "position at the end")
  T.eq(await loop:sock_sendfile(s, f, 100000), 0, "nothing at the end of file")
  T.eq(f:seek(), 100000, "nothing sent: position unchanged")
  T.eq(await loop:sock_sendfile(s, f, nil, 3), 3, "count alone, from offset 0")
  s:shutdown(socket.SHUT_WR)
  T.eq(await drain_sock(c), data:sub(1001, 6000) .. data:sub(99991) .. data:sub(1, 3), "the slices, in order")
  s:close(); c:close()
end)

T.case("sock_sendfile: a non-regular file falls back to read+send; fallback = false raises", async function()
  local s, c = await tcp_pair()
  local z <close> = assert(io.open("/dev/zero", "rb"))
  local got = asyncio.create_task(drain_sock(c))
  T.eq(await loop:sock_sendfile(s, z, 0, 300000), 300000, "the fallback sends count bytes")
  local e = T.raises(asyncio.SendfileNotAvailableError, function()
    await loop:sock_sendfile(s, z, 0, 10, false)
  end, "fallback = false")
  T.match(e.message, "not a regular file", "says why")
  T.ok(asyncio.isinstance(e, asyncio.RuntimeError), "a RuntimeError, as in Python")
  T.raises(asyncio.SendfileNotAvailableError, function()
    await loop:sock_sendfile(s, z, { count = 10, fallback = false })
  end, "fallback = false by name")
  s:shutdown(socket.SHUT_WR)
  T.ok(await got == string.rep("\0", 300000), "zeros, intact")
  s:close(); c:close()
end)

T.case("sock_sendfile: cancelled while the peer is not reading leaves nothing armed", async function()
  local path = make_file(BIG * 3)
  local s, c = await tcp_pair()
  local f <close> = assert(io.open(path, "rb"))
  local t = asyncio.create_task(loop:sock_sendfile(s, f))
  await T.settle()
  T.ok(not t:done(), "waiting for the peer")
  t:cancel()
  T.raises(asyncio.CancelledError, function() await t end, "cancelled")
  local sent = f:seek()
  T.ok(sent > 0 and sent < BIG * 3, "position: the bytes sent before the cancel (" .. sent .. ")")
  -- The socket's watcher is free again: another send on it works.
  local got = asyncio.create_task(drain_sock(c))
  await loop:sock_sendall(s, "END")
  s:shutdown(socket.SHUT_WR)
  local r = await got
  T.eq(#r, sent + 3, "everything sent before the cancel, then END")
  T.eq(r:sub(-3), "END", "END last")
  s:close(); c:close()
end)

T.case("sock_sendfile: bad arguments raise errors naming the problem", async function()
  local path = make_file(10)
  local s, c = await tcp_pair()
  local f <close> = assert(io.open(path, "rb"))
  local function err(cls, pat, ...)
    local args = table.pack(...)
    local e = T.raises(cls, function() await loop:sock_sendfile(table.unpack(args, 1, args.n)) end, pat)
    T.match(tostring(e.message or e), pat, pat)
  end
  err(nil, "bad argument #1 to 'sock_sendfile' %(socket.socket expected, got string%)", "x", f)
  err(nil, "bad argument #2 to 'sock_sendfile' %(io file handle expected, got string%)", s, path)
  err(asyncio.TypeError, "offset must be a non%-negative integer %(got x%)", s, f, "x")
  err(asyncio.ValueError, "offset must be a non%-negative integer %(got %-1%)", s, f, -1)
  err(asyncio.ValueError, "count must be a positive integer %(got 0%)", s, f, 0, 0)
  err(asyncio.TypeError, "count must be a positive integer %(got 1.5%)", s, f, 0, 1.5)
  err(asyncio.TypeError, "fallback must be a boolean, got number", s, f, 0, 1, 1)
  err(asyncio.TypeError, "unexpected option 'fall_back'", s, f, { fall_back = false })
  err(asyncio.TypeError, "got multiple values for argument 'offset'", s, f, 0, { offset = 1 })
  local p <close> = io.popen("true")
  err(nil, "the file is not seekable", s, p)
  local u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
  err(asyncio.ValueError, "only SOCK_STREAM type sockets are supported", u, f)
  u:close()
  local g = assert(io.open(path, "rb")); g:close()
  err(asyncio.ValueError, "I/O operation on closed file", s, g)
  s:close()
  err(asyncio.OSError, "Bad file descriptor", s, f)
  c:close()
end)

-- A stream server whose handler hands its reader to the test.
local async function stream_server(opts)
  local conns = asyncio.Queue()
  local srv = await asyncio.start_server(function(r, w) conns:put_nowait({ r, w }) end,
                                         "127.0.0.1", 0, opts)
  return srv, conns, srv.sockets[1]:getsockname()[2]
end

T.case("loop:sendfile on a StreamWriter's transport: queued bytes first, write() refused meanwhile, reading back after", async function()
  local path, data = make_file(BIG * 2)
  local srv <close>, conns, port = await stream_server()
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  local peer = await conns:get()
  local prefix = string.rep("p", 3 * 1024 * 1024)
  w:write(prefix)  -- more than the kernel takes at once: queued in the transport
  local f <close> = assert(io.open(path, "rb"))
  local t = asyncio.create_task(loop:sendfile(w.transport, f))
  await T.settle()
  T.ok(not t:done(), "the peer does not read yet")
  T.ok(not w.transport:is_reading(), "reading is paused during sendfile")
  local e = T.raises(asyncio.RuntimeError, function() w:write("x") end, "write during sendfile")
  T.eq(e.message, "unable to write; sendfile is in progress", "asyncio's message")
  T.raises(asyncio.RuntimeError, function() await loop:sendfile(w.transport, f) end, "a second sendfile")
  local got = asyncio.create_task(peer[1]:readexactly(#prefix + #data))
  T.eq(await t, #data, "bytes sent")
  T.ok(w.transport:is_reading(), "reading resumed")
  w:write("tail")
  await w:drain()
  local all = await got
  T.ok(all:sub(1, #prefix) == prefix, "the queued bytes went first")
  T.ok(all:sub(#prefix + 1) == data, "then the file, intact")
  T.eq(await peer[1]:readexactly(4), "tail", "writes work again after")
  peer[2]:write("reply")
  T.eq(await r:readexactly(5), "reply", "the reader gets data again")
  w:close(); peer[2]:close()
end)

T.case("loop:sendfile on a protocol transport, offset/count; a closed transport and bad transports", async function()
  local path, data = make_file(200000)
  local srv <close>, conns, port = await stream_server()
  local Proto = asyncio.Protocol:extend()
  function Proto:connection_made(tr) self.tr = tr end
  local tr, proto = await loop:create_connection(Proto, "127.0.0.1", port)
  local peer = await conns:get()
  local f <close> = assert(io.open(path, "rb"))
  T.eq(await loop:sendfile(tr, f, 100, 150000), 150000, "count bytes")
  T.eq(f:seek(), 150100, "the position")
  T.eq(await peer[1]:readexactly(150000), data:sub(101, 150100), "the slice")
  T.ok(tr:is_reading(), "reading resumed")
  tr:close()
  local e = T.raises(asyncio.RuntimeError, function() await loop:sendfile(tr, f) end, "closed transport")
  T.eq(e.message, "Transport is closing", "asyncio's message")
  local u = await loop:create_datagram_endpoint(asyncio.DatagramProtocol, { local_addr = { "127.0.0.1", 0 } })
  e = T.raises(asyncio.RuntimeError, function() await loop:sendfile(u, f) end, "datagram transport")
  T.match(e.message, "sendfile is not supported for transport", "says so")
  u:close()
  T.raises(nil, function() await loop:sendfile({}, f) end, "not a transport")
  peer[2]:close()
end)

-- A loop:sendfile of a file larger than the socket buffers on a
-- StreamWriter's transport whose peer does not read: {w =, peer =, f =,
-- t =} once the task waits; closing it closes the file and the server.
local async function sendfile_in_flight()
  local path = make_file(BIG * 2)
  local srv, conns, port = await stream_server()
  local _, w = await asyncio.open_connection("127.0.0.1", port)
  local peer = await conns:get()
  local f = assert(io.open(path, "rb"))
  local t = asyncio.create_task(loop:sendfile(w.transport, f))
  await T.settle()
  T.ok(not t:done(), "waiting for the peer")
  return setmetatable({ w = w, peer = peer, f = f, t = t },
                      { __close = function() f:close(); srv:close() end })
end

T.case("loop:sendfile on a transport closed during the send raises ConnectionError and frees it", async function()
  local x <close> = await sendfile_in_flight()
  x.w.transport:abort()
  T.raises(asyncio.ConnectionError, function() await x.t end, "the send stops")
  T.ok(x.f:seek() > 0, "the position counts what was sent")
  x.peer[2]:close()
end)

T.case("loop:sendfile cancelled: the transport is usable again", async function()
  local x <close> = await sendfile_in_flight()
  x.t:cancel()
  T.raises(asyncio.CancelledError, function() await x.t end, "cancelled")
  T.ok(x.w.transport:is_reading(), "reading resumed")
  local sent = x.f:seek()
  x.w:write("END")
  local got = await x.peer[1]:readexactly(sent + 3)
  T.eq(got:sub(-3), "END", "what was sent, then END")
  x.w:close(); x.peer[2]:close()
end)

-- TLS: the file goes through the TLS layer (fallback); fallback = false
-- is asyncio's RuntimeError.
local have_openssl = select(2, T.sh("command -v openssl >/dev/null 2>&1")) == 0
if have_openssl then
  local ssl = require "ssl"
  T.case("loop:sendfile over TLS falls back to writes through the layer; fallback = false refuses", async function()
    local dir = T.tmpname("-pki")
    local out, st = T.sh("mkdir -p " .. dir .. " && cd " .. dir .. " && openssl req -x509 -newkey rsa:2048 -nodes"
                         .. " -keyout k.pem -out c.pem -days 2 -subj /CN=localhost"
                         .. " -addext subjectAltName=IP:127.0.0.1 2>&1")
    T.eq(st, 0, "certificate made: " .. out)
    local sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx:load_cert_chain(dir .. "/c.pem", dir .. "/k.pem")
    local cctx = ssl.create_default_context({ cafile = dir .. "/c.pem" })
    local path, data = make_file(BIG)
    local srv <close>, conns, port = await stream_server({ ssl = sctx })
    local _, w = await asyncio.open_connection("127.0.0.1", port, { ssl = cctx })
    local peer = await conns:get()
    local f <close> = assert(io.open(path, "rb"))
    local e = T.raises(asyncio.RuntimeError, function() await loop:sendfile(w.transport, f, 0, 10, false) end,
                       "fallback = false")
    T.match(e.message, "fallback is disabled and native sendfile is not supported", "asyncio's message")
    T.ok(w.transport:is_reading(), "nothing changed")
    local got = asyncio.create_task(peer[1]:readexactly(BIG - 10))
    T.eq(await loop:sendfile(w.transport, f, 10), BIG - 10, "bytes sent")
    T.eq(f:seek(), BIG, "the position")
    T.ok(await got == data:sub(11), "decrypted intact")
    w:write("more")
    T.eq(await peer[1]:readexactly(4), "more", "the stream goes on")
    w:close(); peer[2]:close()
  end)
end

T.run({ timeout = 60 })
