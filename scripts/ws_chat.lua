-- ws_chat.lua: a WebSocket chat room on http.serve: every message a
-- client sends goes to every client in the room, joins and leaves too.
--
--   moonloop scripts/ws_chat.lua [port]    serve on 127.0.0.1 (default 8081);
--                                          connect to ws://127.0.0.1:8081/chat?name=you
--   moonloop scripts/ws_chat.lua --demo    serve on a free port, connect three
--                                          clients, let them talk, print what
--                                          each one saw, exit
--
-- Each connection's handler runs in its own task: it reads its client's
-- messages (for msg in ws:messages()) and sends each to the room.  Sending
-- to a client is never awaited by another's task: each client has an
-- outbox (a Queue) and a writer task of its own, so one slow client holds
-- nobody up; a client whose outbox overflows is dropped.
local asyncio = require "asyncio"
local http = require "http"

local DEMO = arg and arg[1] == "--demo"
local port = (not DEMO and tonumber(arg and arg[1])) or (DEMO and 0) or 8081
local OUTBOX = 100

local room = {}   -- name -> { ws, outbox }

local function broadcast(text)
  for name, c in pairs(room) do
    if c.outbox:qsize() >= OUTBOX then
      room[name] = nil                    -- too slow: drop it (its writer closes it)
      c.outbox:put_nowait(nil)
    else
      c.outbox:put_nowait(text)
    end
  end
end

-- Sends what the outbox holds; nil ends it and closes the WebSocket (a
-- no-op if the client closed it already).
local async function writer(ws, outbox)
  while true do
    local text = await outbox:get()
    if text == nil then break end
    if not pcall(function() await ws:send(text) end) then break end
  end
  pcall(function() await ws:close(1000) end)
end

local r = http.Router()
r:get("/chat", async function(req)
  local name = req.query.name
  if not name or name == "" or room[name] then
    error(http.HTTPError(409, "pick a name nobody in the room has (?name=...)"), 0)
  end
  local ws = await req:websocket()
  local me = { ws = ws, outbox = asyncio.Queue() }
  local w = asyncio.create_task(writer(ws, me.outbox))
  room[name] = me
  broadcast("* " .. name .. " joined")
  for msg in ws:messages() do broadcast(name .. ": " .. msg) end
  if room[name] == me then
    room[name] = nil
    me.outbox:put_nowait(nil)
  end
  await w
  broadcast("* " .. name .. " left")
end)

local srv <close> = await http.serve(r, "127.0.0.1", port)
print(string.format("chat on ws://127.0.0.1:%d/chat?name=...", srv.port))

if not DEMO then
  await srv:serve_forever()
  return
end

-- The demo: three clients join in turn, each waiting until it sees its own
-- join (so the order is fixed), say something, then leave one by one.
local base = "ws://127.0.0.1:" .. srv.port .. "/chat?name="
local names = { "alice", "bob", "carol" }
local seen, socks = {}, {}
local async function expect(name, line)
  local ws = socks[name]
  while true do
    local msg = await ws:receive()
    if msg == nil then error(name .. " lost the connection waiting for " .. line) end
    seen[name][#seen[name] + 1] = msg
    if msg == line then return end
  end
end
for _, name in ipairs(names) do
  seen[name] = {}
  socks[name] = await http.websocket(base .. name)
  await expect(name, "* " .. name .. " joined")
end
for _, name in ipairs(names) do
  await socks[name]:send("hello from " .. name)
  for _, other in ipairs(names) do await expect(other, name .. ": hello from " .. name) end
end
await socks.carol:close(1000)
for _, other in ipairs({ "alice", "bob" }) do await expect(other, "* carol left") end
await socks.bob:close(1000)
await expect("alice", "* bob left")
await socks.alice:close(1000)
for _, name in ipairs(names) do
  print(name .. " saw: " .. table.concat(seen[name], " | "))
end
