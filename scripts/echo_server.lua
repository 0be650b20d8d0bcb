-- echo_server.lua: a line echo server on the streams API.
--
--   moonloop scripts/echo_server.lua [host] [port]     (default 127.0.0.1 8888)
--
-- Each client runs in its own task: every line it sends comes back.  A
-- client that resets the connection ends only its own task.  Ctrl+C stops
-- the server (the first SIGINT cancels the main task, which is awaiting
-- serve_forever: that closes the server).
local asyncio = require "asyncio"

local host = arg and arg[1] or "127.0.0.1"
local port = tonumber(arg and arg[2]) or 8888

local function fmt(addr)
  if type(addr) == "table" then return addr[1] .. ":" .. addr[2] end
  return tostring(addr)
end

local async function handle(reader, writer)
  local peer = fmt(writer:get_extra_info("peername"))
  print("connected: " .. peer)
  local ok, err = pcall(function()
    for line in reader:lines() do
      writer:write(line)
      await writer:drain()          -- backpressure: wait if the client reads slowly
    end
  end)
  if not ok and not asyncio.isinstance(err, asyncio.ConnectionError) then error(err, 0) end
  print("closed: " .. peer .. (ok and "" or " (" .. tostring(err) .. ")"))
  writer:close()
end

local server = await asyncio.start_server(handle, host, port)
for _, sock in ipairs(server.sockets) do print("serving on " .. fmt(sock:getsockname())) end
await server:serve_forever()
