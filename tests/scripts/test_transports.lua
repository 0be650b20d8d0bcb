-- Transports and protocols: create_server, create_connection, the Unix
-- variants, flow control, half-close, abort, errors in callbacks.
local T = require "asyncio.test"
local socket = require "socket"
local loop = asyncio.get_running_loop()

-- A protocol that records every call and completes futures on events.
local Recorder = {}
Recorder.__index = Recorder

local function recorder(opts)
  opts = opts or {}
  return setmetatable({
    events = {},
    data = {},
    made = loop:create_future(),
    lost = loop:create_future(),
    eof = loop:create_future(),
    keep_open = opts.keep_open,
    echo = opts.echo,
  }, Recorder)
end

function Recorder:connection_made(tr)
  self.transport = tr
  self.events[#self.events + 1] = "made"
  self.made:set_result(tr)
end

function Recorder:data_received(data)
  self.data[#self.data + 1] = data
  if self.echo then self.transport:write(data) end
  if self.on_data then self.on_data(data) end
end

function Recorder:eof_received()
  self.events[#self.events + 1] = "eof"
  self.eof:set_result(true)
  return self.keep_open
end

function Recorder:connection_lost(exc)
  self.events[#self.events + 1] = "lost"
  self.lost:set_result(exc or false)
end

function Recorder:pause_writing() self.events[#self.events + 1] = "pause_writing" end
function Recorder:resume_writing() self.events[#self.events + 1] = "resume_writing" end

local function received(p) return table.concat(p.data) end

-- Waits until protocol p has received at least n bytes.
local async function until_bytes(p, n)
  while #received(p) < n do
    local f = loop:create_future()
    p.on_data = function() if not f:done() then f:set_result() end end
    await f
  end
  p.on_data = nil
end

local async function echo_server(opts)
  local protos = {}
  local srv = await loop:create_server(function()
    local p = recorder({ echo = true, keep_open = opts and opts.keep_open })
    protos[#protos + 1] = p
    return p
  end, "127.0.0.1", 0)
  return srv, srv.sockets[1]:getsockname()[2], protos
end

T.case("echo: connection_made, data_received, connection_lost", async function()
  local srv <close>, port, protos = await echo_server()
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", port)
  T.eq(await p.made, tr, "connection_made got the transport")
  T.eq(tr:get_protocol(), p, "get_protocol")
  tr:write("ping")
  await until_bytes(p, 4)
  T.eq(received(p), "ping", "echoed")
  T.eq(tr:get_extra_info("peername"), { "127.0.0.1", port }, "peername")
  T.eq(tr:is_closing(), false, "open")
  tr:close()
  T.eq(tr:is_closing(), true, "closing after close()")
  T.eq(await p.lost, false, "connection_lost(nil) after a clean close")
  await protos[1].lost
  T.eq(protos[1].events, { "made", "eof", "lost" }, "server protocol saw EOF then lost")
  T.eq(p.events, { "made", "lost" }, "client events")
end)

T.case("connection_lost runs after close() returns, not inside it", async function()
  local srv <close>, port = await echo_server()
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", port)
  tr:close()
  T.eq(p.lost:done(), false, "deferred")
  await p.lost
end)

T.case("half-close: write_eof, eof_received keeping the transport open", async function()
  local srv <close>, port, protos = await echo_server({ keep_open = true })
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", port)
  tr:write("before eof")
  T.eq(tr:can_write_eof(), true, "can_write_eof")
  tr:write_eof()
  await until_bytes(p, 10)
  T.eq(received(p), "before eof", "the server still writes after our EOF")
  await protos[1].eof
  T.eq(protos[1].transport:is_closing(), false, "kept open by eof_received returning true")
  protos[1].transport:write("after")
  await until_bytes(p, 15)
  protos[1].transport:close()
  await p.eof
  await p.lost
  T.eq(p.events, { "made", "eof", "lost" }, "client saw EOF, then the close")
end)

T.case("pause_reading and resume_reading", async function()
  local srv <close>, port, protos = await echo_server()
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", port)
  await p.made
  T.eq(tr:is_reading(), true, "reading")
  tr:pause_reading()
  T.eq(tr:is_reading(), false, "paused")
  tr:write("held")
  -- The echo arrives but is not read while paused.
  for _ = 1, 5 do await asyncio.sleep(0) end
  T.eq(received(p), "", "nothing delivered while paused")
  tr:resume_reading()
  await until_bytes(p, 4)
  T.eq(received(p), "held", "delivered after resume")
  tr:close()
  await p.lost
end)

T.case("write buffer limits drive pause_writing and resume_writing", async function()
  local srv <close>, port, protos = await echo_server()
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", port)
  await p.made
  await protos[1].made
  protos[1].transport:pause_reading()  -- the peer stops reading: our writes pile up
  tr:pause_reading()
  tr:set_write_buffer_limits(1000)
  local low, high = tr:get_write_buffer_limits()
  T.eq(high, 1000, "high")
  T.eq(low, 250, "low defaults to high/4")
  local chunk = string.rep("w", 65536)
  for _ = 1, 200 do
    tr:write(chunk)
    if p.events[#p.events] == "pause_writing" then break end
  end
  T.eq(p.events[#p.events], "pause_writing", "paused over the high-water mark")
  T.ok(tr:get_write_buffer_size() > 1000, "bytes are buffered")
  local resumed = loop:create_future()
  function p:resume_writing()
    self.events[#self.events + 1] = "resume_writing"
    resumed:set_result(tr:get_write_buffer_size())
  end
  protos[1].transport:resume_reading()
  T.ok(await resumed <= 250, "resumed at the low-water mark")
  T.raises(asyncio.ValueError, function() tr:set_write_buffer_limits(10, 20) end, "high < low")
  tr:abort()
  await p.lost
end)

T.case("abort drops buffered data and closes at once", async function()
  local srv <close>, port, protos = await echo_server()
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", port)
  await p.made
  tr:abort()
  T.eq(tr:is_closing(), true, "closing")
  T.eq(await p.lost, false, "connection_lost(nil)")
  tr:write("ignored")  -- writes after close are dropped, as asyncio does
  tr:close()           -- idempotent
end)

T.case("an error in data_received is reported and ends the connection", async function()
  local got = loop:create_future()
  local old = loop:get_exception_handler()
  loop:set_exception_handler(function(_, ctx) if not got:done() then got:set_result(ctx) end end)
  local lost = loop:create_future()
  local srv <close> = await loop:create_server(function()
    return {
      data_received = function() error("bad data") end,
      connection_lost = function(_, exc) lost:set_result(exc) end,
    }
  end, "127.0.0.1", 0)
  local port = srv.sockets[1]:getsockname()[2]
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", port)
  tr:write("x")
  local ctx = await got
  loop:set_exception_handler(old)
  T.match(tostring(ctx.exception), "bad data", "reported error")
  T.match(tostring(await lost), "bad data", "connection_lost got the error")
  await p.lost
end)

T.case("protocols may be plain tables with only some methods", async function()
  local srv <close> = await loop:create_server(function() return {} end, "127.0.0.1", 0)
  local port = srv.sockets[1]:getsockname()[2]
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", port)
  tr:write("into the void")
  tr:write_eof()
  await p.eof  -- the server protocol has no eof_received: it closes
  await p.lost
end)

T.case("Unix transports", async function()
  local path = T.tmpname(".sock")
  local sp
  local srv <close> = await loop:create_unix_server(function()
    sp = recorder({ echo = true })
    return sp
  end, path)
  local tr, p = await loop:create_unix_connection(recorder, path)
  tr:write("unix")
  await until_bytes(p, 4)
  T.eq(received(p), "unix", "echo")
  T.eq(tr:get_extra_info("peername"), path, "peername")
  tr:close()
  await p.lost
end)

T.case("create_connection with sock=, connect_accepted_socket", async function()
  local a, b = socket.socketpair()
  local ta, pa = await loop:create_connection(recorder, nil, nil, { sock = a })
  local tb, pb = await loop:connect_accepted_socket(recorder, b)
  T.eq(ta:get_extra_info("socket"), a, "the given socket")
  T.raises(nil, function() a:close() end, "a transport owns its socket")
  ta:write("pair")
  await until_bytes(pb, 4)
  T.eq(received(pb), "pair", "data over the pair")
  ta:close()
  await pb.eof
  tb:close()
  await pa.lost
  await pb.lost
  T.eq(a:fileno(), -1, "the socket is closed with the transport")
end)

T.case("create_connection: refused, local_addr, bad arguments", async function()
  local s = socket.socket()
  s:bind({ "127.0.0.1", 0 })
  local port = s:getsockname()[2]
  s:close()
  local e = T.raises(asyncio.ConnectionRefusedError, loop:create_connection(recorder, "127.0.0.1", port))
  T.eq(e.errno, 111, "errno")
  local srv <close>, sport = await echo_server()
  local tr, p = await loop:create_connection(recorder, "127.0.0.1", sport, { local_addr = { "127.0.0.1", 0 } })
  T.eq(tr:get_extra_info("sockname")[1], "127.0.0.1", "bound locally")
  tr:close()
  await p.lost
  T.raises(asyncio.ValueError, loop:create_connection(recorder), "no host and no sock")
  T.raises(asyncio.ValueError, loop:create_connection(recorder, "h", 1, { sock = socket.socket() }),
           "host with sock")
end)

T.case("create_server: address in use, reuse_port, backlog", async function()
  local srv <close>, port = await echo_server()
  local e = T.raises(asyncio.OSError, loop:create_server(recorder, "127.0.0.1", port, { reuse_address = false }))
  T.eq(e.errno, 98, "EADDRINUSE")
  T.match(tostring(e), "error while attempting to bind on address %('127.0.0.1', " .. port .. "%)", "message")
  local a <close> = await loop:create_server(recorder, "127.0.0.1", 0, { reuse_port = true, backlog = 5 })
  local p2 = a.sockets[1]:getsockname()[2]
  local b <close> = await loop:create_server(recorder, "127.0.0.1", p2, { reuse_port = true })
  T.eq(b.sockets[1]:getsockname()[2], p2, "two servers share a port with reuse_port")
end)

T.case("close_clients and abort_clients", async function()
  local srv, port, protos = await echo_server()
  local t1, p1 = await loop:create_connection(recorder, "127.0.0.1", port)
  await p1.made
  while #protos < 1 do await asyncio.sleep(0) end
  await protos[1].made
  srv:close()
  srv:close_clients()
  await p1.lost
  await srv:wait_closed()
end)

T.run()
