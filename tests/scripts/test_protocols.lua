-- The protocol base classes (BaseProtocol, Protocol, BufferedProtocol,
-- DatagramProtocol, SubprocessProtocol) and BufferedProtocol's reads into
-- the protocol's own buffer (issue #12).
local T = require "asyncio.test"
local socket = require "socket"
local loop = asyncio.get_running_loop()

T.case("the base classes: isinstance, no-op defaults, extend and instances", function()
  local Echo = asyncio.Protocol:extend({ greeting = "hi" })
  function Echo:data_received(d) self.got = d end
  local e = Echo({ n = 1 })
  T.ok(asyncio.isinstance(e, asyncio.Protocol) and asyncio.isinstance(e, asyncio.BaseProtocol),
       "an Echo is a Protocol and a BaseProtocol")
  T.ok(not asyncio.isinstance(e, asyncio.BufferedProtocol), "not a BufferedProtocol")
  T.eq(e.n, 1, "fields given"); T.eq(e.greeting, "hi", "class fields")
  e:data_received("x"); T.eq(e.got, "x", "own method")
  e:connection_made(nil); e:connection_lost(nil); e:pause_writing(); e:resume_writing()
  T.eq(e:eof_received(), nil, "eof_received: nil (close)")
  for _, c in ipairs({ asyncio.DatagramProtocol, asyncio.BufferedProtocol, asyncio.SubprocessProtocol }) do
    T.ok(asyncio.isinstance(c(), asyncio.BaseProtocol), tostring(c) .. " derives from BaseProtocol")
  end
  local d = asyncio.DatagramProtocol()
  d:datagram_received("x", { "127.0.0.1", 1 }); d:error_received(nil)
  local s = asyncio.SubprocessProtocol()
  s:pipe_data_received(1, "x"); s:pipe_connection_lost(1, nil); s:process_exited()
  T.eq(tostring(asyncio.BufferedProtocol), "<class 'asyncio.BufferedProtocol'>", "tostring")
  T.raises(asyncio.TypeError, function() asyncio.Protocol:extend(42) end, "extend(42)")
end)

T.case("a Protocol subclass serves and connects with its defaults filling in", async function()
  local Echo = asyncio.Protocol:extend()
  function Echo:connection_made(tr) self.tr = tr end
  function Echo:data_received(d) self.tr:write(d) end
  local srv <close> = await loop:create_server(Echo, "127.0.0.1", 0)
  local r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
  w:write("ping\n")
  T.eq(await r:readline(), "ping\n", "echoed")
  w:close()
end)

-- A BufferedProtocol collecting what it reads, get_buffer giving a
-- buffer of size and a position in it.
local function sink(size, done)
  local Sink = asyncio.BufferedProtocol:extend()
  function Sink:connection_made(tr) self.tr = tr; self.buf = socket.buffer(size); self.pos = 1; self.parts = {}; self.hints = {} end
  function Sink:get_buffer(hint) self.hints[#self.hints + 1] = hint; return self.buf, self.pos end
  function Sink:buffer_updated(n)
    T.ok(n > 0 and self.pos + n - 1 <= size, "nbytes within the room given")
    self.pos = self.pos + n
    if self.pos > size then self.parts[#self.parts + 1] = self.buf:tostring(); self.pos = 1 end
  end
  function Sink:eof_received()
    self.parts[#self.parts + 1] = self.buf:tostring(1, self.pos - 1)
    done:set_result(self)
  end
  return Sink
end

T.case("BufferedProtocol: the bytes arrive intact through its buffer, positions honoured", async function()
  local done = asyncio.Future()
  local srv <close> = await loop:create_server(sink(7, done), "127.0.0.1", 0)
  local want = {}
  for i = 1, 20000 do want[i] = string.char(i % 256) end
  want = table.concat(want)
  local r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
  w:write(want); await w:drain(); w:write_eof()
  local p = await done
  T.eq(table.concat(p.parts), want, "20000 bytes, in 7-byte pieces")
  T.eq(p.hints[1], -1, "sizehint -1, as asyncio's socket transports")
  w:close()
end)

T.case("BufferedProtocol: create_connection and set_protocol switch the read path", async function()
  local srv <close> = await asyncio.start_server(async function(r, w)
    w:write("one two "); await w:drain()
    await r:readline()
    w:write("three"); w:close()
  end, "127.0.0.1", 0)
  local first, done = asyncio.Future(), asyncio.Future()
  local Plain = asyncio.Protocol:extend()
  function Plain:data_received(d) if not first:done() then first:set_result(d) end end
  local tr, proto = await loop:create_connection(Plain, "127.0.0.1", srv.sockets[1]:getsockname()[2])
  T.eq(await first, "one two ", "data_received while a Protocol")
  local s = sink(3, done)()
  s:connection_made(tr)
  tr:set_protocol(s)
  tr:write("go\n")
  T.eq(table.concat((await done).parts), "three", "get_buffer/buffer_updated after set_protocol")
  tr:close()
end)

T.case("BufferedProtocol: a bad get_buffer fails the connection with a clear error", async function()
  local function serve_bad(get_buffer)
    local lost = asyncio.Future()
    local Bad = asyncio.BufferedProtocol:extend({ get_buffer = get_buffer })
    function Bad:connection_lost(exc) lost:set_result(exc) end
    local srv = await loop:create_server(Bad, "127.0.0.1", 0)
    local r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
    w:write("data")
    local exc = await lost
    w:close(); srv:close()
    return exc
  end
  local old = loop:get_exception_handler()
  local reports = 0
  loop:set_exception_handler(function() reports = reports + 1 end)
  local e1 = serve_bad(function() return "not a buffer" end)
  local e2 = serve_bad(function() return socket.buffer(0) end)
  local e3 = serve_bad(function() return socket.buffer(4), 6 end)
  loop:set_exception_handler(old)
  T.match(tostring(e1), "TypeError: get_buffer%(%) must return a socket.buffer, got string", "wrong type")
  T.match(tostring(e2), "RuntimeError: get_buffer%(%) returned an empty buffer", "empty")
  T.match(tostring(e3), "ValueError: get_buffer%(%) position out of range 1..5", "position")
  T.eq(reports, 3, "each reported to the exception handler")
end)

T.run()
