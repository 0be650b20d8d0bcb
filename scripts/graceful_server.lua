-- graceful_server.lua: a line echo server that shuts down gracefully on
-- SIGTERM (or SIGINT): it stops accepting, tells every client, gives them
-- a deadline to finish and hang up, then aborts the stragglers.
--
--   moonloop scripts/graceful_server.lua [HOST PORT [DRAIN_SECONDS]]
--   moonloop scripts/graceful_server.lua --demo   (clients and a SIGTERM of its own)
local asyncio = require "asyncio"

local args = { ... }
local demo = args[1] == "--demo"
local host, port = "127.0.0.1", 0
local drain = demo and 0.5 or 5
if not demo then
  host, port, drain = args[1] or host, tonumber(args[2]) or 8888, tonumber(args[3]) or drain
end

local clients = {}  -- writer -> true

local async function handle(reader, writer)
  clients[writer] = true
  for line in reader:lines() do
    writer:write("echo: " .. line)
    await writer:drain()
  end
  clients[writer] = nil
  writer:close()
end

local server = await asyncio.start_server(handle, host, port)
local addr = server.sockets[1]:getsockname()
print(string.format("serving on %s:%d (pid %d)", addr[1], addr[2], require("asyncio._signal").getpid()))

local loop = asyncio.get_running_loop()
local stop = loop:create_future()
for _, sig in ipairs({ "SIGTERM", "SIGINT" }) do
  loop:add_signal_handler(sig, function()
    if not stop:done() then stop:set_result(sig) end
  end)
end

if demo then
  -- Two clients: a polite one that leaves when told, a stubborn one.
  asyncio.create_task(function()
    local r, w = await asyncio.open_connection(addr[1], addr[2])
    w:write("hello\n")
    print("polite client got: " .. (await r:readline()):gsub("\n", ""))
    print("polite client got: " .. (await r:readline()):gsub("\n", ""))
    w:close()
  end)
  asyncio.create_task(function()
    local r, w = await asyncio.open_connection(addr[1], addr[2])
    w:write("hi\n")
    await r:readline()
    await r:read()   -- never hangs up; sees the end when aborted
    print("stubborn client was cut off")
  end)
  await asyncio.sleep(0.2)
  local k = await asyncio.create_subprocess_shell("kill -TERM $PPID")   -- ourselves
  await k:wait()
end

local sig = await stop
print("got " .. sig .. ": no new connections, draining " .. (function()
  local n = 0; for _ in pairs(clients) do n = n + 1 end; return n end)() .. " client(s)")
server:close()
for w in pairs(clients) do w:write("server shutting down, please disconnect\n") end
local ok = pcall(function() await asyncio.wait_for(server:wait_closed(), drain) end)
if not ok then
  local n = 0
  for w in pairs(clients) do n = n + 1; w.transport:abort() end
  print(string.format("deadline of %.1f s passed: aborted %d client(s)", drain, n))
  await server:wait_closed()
end
for _, s in ipairs({ "SIGTERM", "SIGINT" }) do loop:remove_signal_handler(s) end
print("shut down cleanly")
