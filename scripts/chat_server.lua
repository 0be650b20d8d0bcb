-- chat_server.lua: a line-based chat room with broadcast.
--
--   moonloop scripts/chat_server.lua [port]      serve on 127.0.0.1 (default 8899)
--   moonloop scripts/chat_server.lua --demo      serve, run three scripted
--                                                clients, print what they saw, exit
--
-- A client sends its name as the first line, then messages; "/quit" leaves.
-- Every message goes to everyone else.  A client that disconnects (or
-- resets) is removed and the others are told.  Broadcast never lets one
-- slow client hold the others up: each client has its own outbox (a Queue)
-- drained by its own writer task; a client whose outbox overflows is
-- dropped.
local asyncio = require "asyncio"

local DEMO = arg and arg[1] == "--demo"
local port = (not DEMO and tonumber(arg and arg[1])) or (DEMO and 0) or 8899
local OUTBOX = 100

local clients = {}   -- name -> client {name, outbox, writer}

local function broadcast(from, text)
  for name, c in pairs(clients) do
    if name ~= from then
      local ok = pcall(c.outbox.put_nowait, c.outbox, text)
      if not ok then                      -- too slow: drop it rather than buffer forever
        clients[name] = nil
        c.writer:close()
      end
    end
  end
end

local async function pump(c)
  while true do
    local text = await c.outbox:get()
    c.writer:write(text)
    await c.writer:drain()
  end
end

local async function handle(reader, writer)
  writer:write("name? ")
  local name = (await reader:readline()):gsub("%s+$", "")
  if name == "" or clients[name] then
    writer:write("name taken or empty, bye\n")
    writer:close()
    return
  end
  local c = { name = name, outbox = asyncio.Queue(OUTBOX), writer = writer }
  clients[name] = c
  local sender = asyncio.create_task(pump(c))
  broadcast(name, "* " .. name .. " joined\n")
  writer:write("welcome, " .. name .. "\n")
  local ok, err = pcall(function()
    for line in reader:lines() do
      line = line:gsub("%s+$", "")
      if line == "/quit" then break end
      if clients[name] ~= c then break end  -- dropped as too slow
      broadcast(name, name .. ": " .. line .. "\n")
    end
  end)
  if clients[name] == c then clients[name] = nil end
  broadcast(name, "* " .. name .. " left\n")
  sender:cancel()
  writer:close()
  if not ok and not asyncio.isinstance(err, asyncio.ConnectionError) then error(err, 0) end
end

local server = await asyncio.start_server(handle, "127.0.0.1", port)
port = server.sockets[1]:getsockname()[2]

if not DEMO then
  print("chat on 127.0.0.1:" .. port .. " (try: nc 127.0.0.1 " .. port .. ")")
  await server:serve_forever()
  return
end

-- Demo: three clients talk; bob leaves with /quit, carol just disconnects.
local async function client(name, script, seen)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  await r:readuntil("? ")
  w:write(name .. "\n")
  await r:readline()                      -- welcome
  for _, step in ipairs(script) do
    if type(step) == "number" then
      for _ = 1, step do seen[#seen + 1] = name .. " sees " .. (await r:readline()):gsub("\n$", "") end
    elseif step == "close" then
      w:close()
      return
    else
      w:write(step .. "\n")
    end
  end
  for line in r:lines() do seen[#seen + 1] = name .. " sees " .. line:gsub("\n$", "") end
  w:close()
end

local seen = {}
local alice_in = asyncio.Event()
local alice = asyncio.create_task((async function()
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  await r:readuntil("? ")
  w:write("alice\n")
  await r:readline()
  alice_in:set()
  for _ = 1, 6 do seen[#seen + 1] = "alice sees " .. (await r:readline()):gsub("\n$", "") end
  w:write("/quit\n")
  w:close()
end)())
await alice_in:wait()
await client("bob", { "hi all", "/quit" }, seen)
await client("carol", { "bye", "close" }, seen)
await alice
for _, s in ipairs(seen) do print(s) end
server:close()
await server:wait_closed()
