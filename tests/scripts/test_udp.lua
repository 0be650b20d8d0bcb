-- Datagram endpoints: create_datagram_endpoint, datagram_received,
-- error_received, sendto, IPv4, IPv6 and Unix datagram sockets.
local T = require "asyncio.test"
local socket = require "socket"
local loop = asyncio.get_running_loop()

-- A datagram protocol delivering received datagrams through a queue.
local function proto(opts)
  opts = opts or {}
  local p = { q = asyncio.Queue(), errors = asyncio.Queue(), lost = loop:create_future() }
  function p.connection_made(self, tr) self.transport = tr end
  function p.datagram_received(self, data, addr)
    if opts.echo then self.transport:sendto(data:upper(), addr) end
    self.q:put_nowait({ data, addr })
  end
  function p.error_received(self, exc) self.errors:put_nowait(exc) end
  function p.connection_lost(self, exc) self.lost:set_result(exc or false) end
  return p
end

T.case("UDP echo: local_addr server, remote_addr client", async function()
  local st, sp = await loop:create_datagram_endpoint(function() return proto({ echo = true }) end,
                                                     { local_addr = { "127.0.0.1", 0 } })
  local saddr = st:get_extra_info("sockname")
  T.eq(saddr[1], "127.0.0.1", "server sockname")
  T.eq(st:get_extra_info("peername"), nil, "an unconnected endpoint has no peer")
  local ct, cp = await loop:create_datagram_endpoint(proto, { remote_addr = saddr })
  T.eq(ct:get_extra_info("peername"), saddr, "client peername")
  ct:sendto("hello")
  local got = await cp.q:get()
  T.eq(got[1], "HELLO", "echoed datagram")
  T.eq(got[2], saddr, "from the server's address")
  local seen = await sp.q:get()
  T.eq(seen[1], "hello", "the server got it")
  T.eq(seen[2], ct:get_extra_info("sockname"), "addr is the client's {host, port}")
  T.eq(ct:get_write_buffer_size(), 0, "nothing queued")
  T.raises(asyncio.ValueError, function() ct:sendto("x", { "127.0.0.1", 9 }) end,
           "a connected endpoint sends only to its peer")
  T.raises(asyncio.ValueError, function() st:sendto("x") end, "unconnected needs an address")
  ct:close()
  T.eq(await cp.lost, false, "connection_lost(nil)")
  st:close()
  await sp.lost
end)

T.case("datagrams keep their boundaries", async function()
  local st, sp = await loop:create_datagram_endpoint(proto, { local_addr = { "127.0.0.1", 0 } })
  local ct, cp = await loop:create_datagram_endpoint(proto, { remote_addr = st:get_extra_info("sockname") })
  for i = 1, 20 do ct:sendto(string.rep(string.char(64 + i), i)) end
  for i = 1, 20 do
    local d = await sp.q:get()
    T.eq(d[1], string.rep(string.char(64 + i), i), "datagram " .. i)
  end
  ct:close()
  st:close()
end)

T.case("error_received for a closed port", async function()
  local s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
  s:bind({ "127.0.0.1", 0 })
  local dead = s:getsockname()
  s:close()
  local ct, cp = await loop:create_datagram_endpoint(proto, { remote_addr = dead })
  local exc
  for _ = 1, 50 do
    ct:sendto("anyone?")
    local ok, e = pcall(function() return await asyncio.wait_for(cp.errors:get(), 0.1) end)
    if ok then exc = e; break end
  end
  T.ok(asyncio.isinstance(exc, asyncio.ConnectionRefusedError), "ConnectionRefusedError, got " .. tostring(exc))
  T.eq(exc.errno, 111, "errno")
  T.eq(ct:is_closing(), false, "an ICMP error does not close the endpoint")
  ct:close()
end)

T.case("IPv6 UDP", async function()
  local st, sp = await loop:create_datagram_endpoint(function() return proto({ echo = true }) end,
                                                     { local_addr = { "::1", 0 } })
  local saddr = st:get_extra_info("sockname")
  T.eq(#saddr, 4, "IPv6 address")
  local ct, cp = await loop:create_datagram_endpoint(proto, { remote_addr = { "::1", saddr[2] } })
  ct:sendto("six")
  T.eq((await cp.q:get())[1], "SIX", "echo over IPv6")
  ct:close()
  st:close()
end)

T.case("unconnected endpoint talks to several peers with sendto(data, addr)", async function()
  local a, ap = await loop:create_datagram_endpoint(proto, { local_addr = { "127.0.0.1", 0 } })
  local b, bp = await loop:create_datagram_endpoint(proto, { local_addr = { "127.0.0.1", 0 } })
  local c, cp = await loop:create_datagram_endpoint(proto, { family = socket.AF_INET })
  c:sendto("to a", a:get_extra_info("sockname"))
  c:sendto("to b", b:get_extra_info("sockname"))
  T.eq((await ap.q:get())[1], "to a", "a")
  T.eq((await bp.q:get())[1], "to b", "b")
  a:close(); b:close(); c:close()
end)

T.case("Unix datagram endpoints", async function()
  local spath, cpath = T.tmpname(".dsock"), T.tmpname(".dsock")
  local st, sp = await loop:create_datagram_endpoint(function() return proto({ echo = true }) end,
                                                     { local_addr = spath, family = socket.AF_UNIX })
  local ct, cp = await loop:create_datagram_endpoint(proto, { local_addr = cpath, remote_addr = spath,
                                                              family = socket.AF_UNIX })
  ct:sendto("unix dgram")
  local got = await cp.q:get()
  T.eq(got[1], "UNIX DGRAM", "echo")
  T.eq(got[2], spath, "the sender's address is its path")
  -- Paths too long to keep inline: the transport keeps both aside.
  T.eq(ct:get_extra_info("peername"), spath, "peername")
  T.eq(ct:get_extra_info("sockname"), cpath, "sockname")
  ct:sendto("again", spath) -- the remote address itself is allowed
  T.eq((await asyncio.wait_for(cp.q:get(), 5))[1], "AGAIN", "sent to the given remote address")
  T.raises(asyncio.ValueError, function() ct:sendto("x", cpath) end, "another address")
  ct:close()
  st:close()
end)

T.case("bad arguments", async function()
  T.raises(asyncio.ValueError, loop:create_datagram_endpoint(proto), "no address and no family")
  local st = await loop:create_datagram_endpoint(proto, { local_addr = { "127.0.0.1", 0 } })
  local e = T.raises(nil, function() st:sendto("x", { "not.numeric.invalid", 5 }) end)
  T.match(tostring(e), "numeric", "sendto needs a numeric address")
  st:close()
end)

T.run()
