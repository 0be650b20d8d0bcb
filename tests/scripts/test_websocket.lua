-- WebSocket (http.websocket, req:websocket()): moonloop client <-> moonloop
-- server, Python's websockets package as the client of our server and as
-- the server of our client, close codes, ping/pong, the message size
-- limit (1009), a handshake refused, and fds back where they started.
local T = require "asyncio.test"
local http = require "http"
local PIPE = asyncio.subprocess.PIPE
local PY = "/usr/bin/python3"

local nfds = T.open_fds

local closes = {}
local srv = await http.serve(async function(req)
  if req.path == "/plain" then return "not a websocket" end
  local ws = await req:websocket({ max_message = 64 * 1024, protocols = { "chat.v1" } })
  for msg, kind in ws:messages() do
    if msg == "close-me" then
      await ws:close(4001, "asked to")
      break
    end
    await ws:send(msg, kind)
  end
  closes[#closes + 1] = { ws.close_code, ws.close_reason }
end, "127.0.0.1", 0)
local URL = "ws://127.0.0.1:" .. srv.port

local async function settle()
  for _ = 1, 500 do
    if next(srv._conns) == nil and srv._server._active == 0 then return end
    await asyncio.sleep(0.01)
  end
end

T.case("moonloop client <-> moonloop server: text, binary, ping, close", async function()
  await settle()
  local fds0 = nfds()
  local ws = await http.websocket(URL .. "/echo", { protocols = { "chat.v0", "chat.v1" } })
  T.eq(ws.protocol, "chat.v1", "subprotocol chosen")
  await ws:send("hello")
  T.eq({ await ws:receive() }, { "hello", "text" }, "text echo")
  await ws:send("\0\1\2\255", "binary")
  T.eq({ await ws:receive() }, { "\0\1\2\255", "binary" }, "binary echo")
  local big = string.rep("x", 60000)
  await ws:send(big)
  T.eq(await ws:receive(), big, "60 KB message")
  await ws:ping("p1")
  await ws:send("after ping")
  T.eq(await ws:receive(), "after ping", "message after a ping")
  T.eq(ws.last_pong, "p1", "pong seen")
  for i = 1, 100 do await ws:send("m" .. i) end
  for i = 1, 100 do T.eq(await ws:receive(), "m" .. i, "in order " .. i) end
  await ws:close(1000, "done")
  T.eq(ws.close_code, 1000, "client's close code")
  local ok = pcall(function() return await ws:send("late") end)
  T.ok(not ok, "send after close raises")
  await settle()
  T.eq(closes[#closes], { 1000, "done" }, "the server saw 1000 'done'")
  T.eq(nfds(), fds0, "fds back")
end)

T.case("the server closes with a code; the client sees it", async function()
  local ws = await http.websocket(URL .. "/echo")
  await ws:send("close-me")
  T.eq(await ws:receive(), nil, "receive ends")
  T.eq(ws.close_code, 4001, "code")
  T.eq(ws.close_reason, "asked to", "reason")
end)

T.case("a message over max_message closes with 1009", async function()
  local ws = await http.websocket(URL .. "/echo")
  await ws:send(string.rep("y", 100 * 1024))
  T.eq(await ws:receive(), nil, "closed instead of an echo")
  T.eq(ws.close_code, 1009, "1009 Message Too Big")
  await settle()
  T.eq(closes[#closes][1], 1009, "the server's side says 1009 too")
end)

T.case("a handshake the server refuses is an error; a plain request to req:websocket() is 400", async function()
  local ok, err = pcall(function() return await http.websocket(URL .. "/plain") end)
  T.ok(not ok and asyncio.isinstance(err, http.WebSocketError), "WebSocketError: " .. tostring(err))
  T.ok(tostring(err):match("HTTP status 200"), "names the status: " .. tostring(err))
  local r, w = await asyncio.open_connection("127.0.0.1", srv.port)
  w:write("GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  local got = await r:read()
  T.ok(got:match("^HTTP/1.1 400 "), "400: " .. got)
  w:close()
  ok, err = pcall(function() return await http.websocket("http://x/") end)
  T.ok(not ok and tostring(err):match("ws:// or wss://"), "bad scheme: " .. tostring(err))
end)

local have_py = os.execute(PY .. " -c 'import websockets' 2>/dev/null")

if have_py then
  T.case("Python's websockets client against our server", async function()
    local p = await asyncio.create_subprocess_exec(PY, "-c", [[
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1], subprotocols=["chat.v1"]) as ws:
        out = [ws.subprotocol]
        await ws.send("from python")
        out.append(await ws.recv())
        await ws.send(b"\x00bin")
        out.append(repr(await ws.recv()))
        pong = await ws.ping(b"pp")
        await pong
        out.append("pong")
        await ws.send("x" * 70000)
        try:
            await ws.recv()
        except websockets.ConnectionClosed as e:
            out.append(str(e.rcvd.code))
        print("|".join(out))
asyncio.run(main())
]], URL .. "/py", { stdout = PIPE, stderr = PIPE })
    local out, err = await p:communicate()
    T.eq(p.returncode, 0, "python's status: " .. tostring(err))
    T.eq(out, "chat.v1|from python|b'\\x00bin'|pong|1009\n", "python's view")
  end)

  T.case("our client against Python's websockets server", async function()
    local p = await asyncio.create_subprocess_exec(PY, "-c", [[
import asyncio, websockets
async def echo(ws):
    async for m in ws:
        if m == "bye":
            await ws.close(4002, "py bye")
            return
        await ws.send(m)
async def main():
    async with websockets.serve(echo, "127.0.0.1", 0) as s:
        print(s.sockets[0].getsockname()[1], flush=True)
        await asyncio.sleep(20)
asyncio.run(main())
]], { stdout = PIPE })
    local port = tonumber(await p.stdout:readline())
    local ws = await http.websocket("ws://127.0.0.1:" .. port .. "/")
    await ws:send("hi python")
    T.eq(await ws:receive(), "hi python", "text echo")
    await ws:send("\1\2\3", "binary")
    T.eq({ await ws:receive() }, { "\1\2\3", "binary" }, "binary echo")
    await ws:send("bye")
    T.eq(await ws:receive(), nil, "closed by the server")
    T.eq(ws.close_code, 4002, "code")
    T.eq(ws.close_reason, "py bye", "reason")
    p:kill()
    await p:wait()
  end)
end

T.run({ timeout = 60 })
srv:close()
await srv:wait_closed()
