-- Real peers: moonloop servers against nc, socat and a python3 asyncio
-- client; moonloop clients against python3 asyncio TCP and Unix servers;
-- UDP both ways.  Peers run in the background under `timeout`, on
-- loopback or a temporary Unix path, and report what they saw to a small
-- report server of ours, so the loop never blocks on them.
local T = require "asyncio.test"
local loop = asyncio.get_running_loop()

local function have(cmd)
  local _, st = T.sh("command -v " .. cmd .. " >/dev/null 2>&1")
  return st == 0
end

local function shquote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Starts cmd in the background, bounded to 20 s.
local function spawn(cmd)
  os.execute("(timeout -k 2 20 sh -c " .. shquote(cmd) .. ") >/dev/null 2>&1 &")
end

-- Writes a python3 script to a temporary file and returns its path.
local function pyfile(src)
  local path = T.tmpname(".py")
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

-- The report server: every connection's whole input is one report.
local reports = asyncio.Queue()
local report_srv = await asyncio.start_server(async function(r, w)
  reports:put_nowait(await r:read())
  w:close()
end, "127.0.0.1", 0)
local RPORT = report_srv.sockets[1]:getsockname()[2]

local async function next_report()
  return await asyncio.wait_for(reports:get(), 15)
end

-- Our upper-casing line echo server.
local async function upper_server()
  local srv = await asyncio.start_server(async function(r, w)
    for line in r:lines() do
      w:write(line:upper())
      await w:drain()
    end
    w:close()
  end, "127.0.0.1", 0)
  return srv, srv.sockets[1]:getsockname()[2]
end

T.case("moonloop server, nc client", async function()
  if not have("nc") then print("skip: nc not installed"); return end
  local srv <close>, port = await upper_server()
  spawn(string.format("printf 'hello nc\\nline two\\n' | nc -N 127.0.0.1 %d | nc -N 127.0.0.1 %d", port, RPORT))
  T.eq(await next_report(), "HELLO NC\nLINE TWO\n", "what nc received")
end)

T.case("moonloop server, socat client", async function()
  if not have("socat") then print("skip: socat not installed"); return end
  local srv <close>, port = await upper_server()
  spawn(string.format("printf 'hello socat\\n' | socat -t 5 - TCP:127.0.0.1:%d | socat - TCP:127.0.0.1:%d",
                      port, RPORT))
  T.eq(await next_report(), "HELLO SOCAT\n", "what socat received")
end)

local PY_CLIENT = [[
import asyncio, sys
async def main(port, rport):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    out = []
    for i in range(100):
        w.write(b"line %d\n" % i)
        await w.drain()
        out.append(await r.readline())
    w.write_eof()
    rest = await r.read()
    w.close()
    _, rw = await asyncio.open_connection("127.0.0.1", rport)
    ok = out == [b"LINE %d\n" % i for i in range(100)] and rest == b""
    rw.write(b"ok" if ok else b"bad: %r" % out[:3])
    await rw.drain()
    rw.close()
asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), int(sys.argv[2])), 15))
]]

T.case("moonloop server, python3 asyncio client", async function()
  if not have("python3") then print("skip: python3 not installed"); return end
  local srv <close>, port = await upper_server()
  spawn(string.format("python3 %s %d %d", pyfile(PY_CLIENT), port, RPORT))
  T.eq(await next_report(), "ok", "python client's verdict")
end)

local PY_SERVER = [[
import asyncio, sys
async def main(rport, path):
    done = asyncio.Event()
    async def handle(r, w):
        while line := await r.readline():
            w.write(line[::-1].strip(b"\n") + b"\n")
            await w.drain()
        w.close()
        done.set()
    if path:
        srv = await asyncio.start_unix_server(handle, path)
        msg = b"ready"
    else:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        msg = b"port %d" % srv.sockets[0].getsockname()[1]
    _, rw = await asyncio.open_connection("127.0.0.1", rport)
    rw.write(msg)
    await rw.drain()
    rw.close()
    await done.wait()
    srv.close()
asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None), 15))
]]

T.case("moonloop client, python3 asyncio TCP server", async function()
  if not have("python3") then print("skip: python3 not installed"); return end
  spawn(string.format("python3 %s %d", pyfile(PY_SERVER), RPORT))
  local port = tonumber((await next_report()):match("^port (%d+)$"))
  T.ok(port ~= nil, "the server told its port")
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  for i = 1, 50 do
    w:write("abc" .. i .. "\n")
    T.eq(await r:readline(), ("abc" .. i):reverse() .. "\n", "reply " .. i)
  end
  w:write_eof()
  T.eq(await r:read(), "", "the server closed after our EOF")
  w:close()
  await w:wait_closed()
end)

T.case("moonloop client, python3 asyncio Unix server", async function()
  if not have("python3") then print("skip: python3 not installed"); return end
  local path = T.tmpname(".sock")
  spawn(string.format("python3 %s %d %s", pyfile(PY_SERVER), RPORT, path))
  T.eq(await next_report(), "ready", "the server is listening")
  local r, w = await asyncio.open_unix_connection(path)
  w:write("unix\n")
  T.eq(await r:readline(), "xinu\n", "reply over the Unix socket")
  w:write_eof()
  T.eq(await r:read(), "", "closed")
  w:close()
end)

local PY_UDP = [[
import asyncio, sys
class Echo(asyncio.DatagramProtocol):
    def connection_made(self, tr): self.tr = tr
    def datagram_received(self, data, addr): self.tr.sendto(b"py:" + data, addr)
class Client(asyncio.DatagramProtocol):
    def __init__(self, fut): self.fut = fut
    def datagram_received(self, data, addr):
        if not self.fut.done(): self.fut.set_result(data)
async def report(rport, msg):
    _, rw = await asyncio.open_connection("127.0.0.1", rport)
    rw.write(msg); await rw.drain(); rw.close()
async def main(mode, rport, port):
    loop = asyncio.get_running_loop()
    if mode == "server":
        tr, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        await report(rport, b"port %d" % tr.get_extra_info("sockname")[1])
        await asyncio.sleep(10)
    else:
        fut = loop.create_future()
        tr, _ = await loop.create_datagram_endpoint(lambda: Client(fut), remote_addr=("127.0.0.1", port))
        for _ in range(50):
            tr.sendto(b"ping")
            try:
                data = await asyncio.wait_for(asyncio.shield(fut), 0.2)
                break
            except asyncio.TimeoutError:
                pass
        await report(rport, fut.result() if fut.done() else b"no reply")
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0))
]]

local function udp_echo_proto()
  local p = {}
  function p.connection_made(self, tr) self.tr = tr end
  function p.datagram_received(self, data, addr) self.tr:sendto("ml:" .. data, addr) end
  return p
end

T.case("UDP: moonloop endpoint echoes to python3 and socat", async function()
  if not have("python3") then print("skip: python3 not installed"); return end
  local tr = await loop:create_datagram_endpoint(udp_echo_proto, { local_addr = { "127.0.0.1", 0 } })
  local port = tr:get_extra_info("sockname")[2]
  spawn(string.format("python3 %s client %d %d", pyfile(PY_UDP), RPORT, port))
  T.eq(await next_report(), "ml:ping", "python3 got our echo")
  if have("socat") then
    spawn(string.format("printf 'hey' | socat -t 2 - UDP:127.0.0.1:%d | socat - TCP:127.0.0.1:%d", port, RPORT))
    T.eq(await next_report(), "ml:hey", "socat got our echo")
  end
  tr:close()
end)

T.case("UDP: moonloop endpoint talks to a python3 echo server", async function()
  if not have("python3") then print("skip: python3 not installed"); return end
  spawn(string.format("python3 %s server %d", pyfile(PY_UDP), RPORT))
  local port = tonumber((await next_report()):match("^port (%d+)$"))
  local got = asyncio.Queue()
  local tr = await loop:create_datagram_endpoint(function()
    return { datagram_received = function(_, data, addr) got:put_nowait({ data, addr }) end }
  end, { remote_addr = { "127.0.0.1", port } })
  tr:sendto("hello")
  local d = await asyncio.wait_for(got:get(), 10)
  T.eq(d[1], "py:hello", "python's echo")
  T.eq(d[2], { "127.0.0.1", port }, "from python's address")
  tr:close()
end)

T.run()
report_srv:close()
