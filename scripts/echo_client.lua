-- echo_client.lua: sends lines to an echo server and prints the replies.
--
--   moonloop scripts/echo_client.lua [host] [port] [message...]
--
-- With no messages it sends three.  Each reply is awaited with a deadline
-- (asyncio.wait_for), so a server that stalls makes the client fail with a
-- TimeoutError instead of hanging.
local asyncio = require "asyncio"

local host = arg and arg[1] or "127.0.0.1"
local port = tonumber(arg and arg[2]) or 8888
local messages = {}
for i = 3, arg and #arg or 0 do messages[#messages + 1] = arg[i] end
if #messages == 0 then messages = { "hello", "from", "moonloop" } end

local ok, reader, writer = pcall(function()
  return await asyncio.open_connection(host, port)
end)
if not ok then
  print("cannot connect to " .. host .. ":" .. port .. ": " .. tostring(reader))
  os.exit(1)
end

for _, msg in ipairs(messages) do
  writer:write(msg .. "\n")
  await writer:drain()
  local reply = await asyncio.wait_for(reader:readline(), 5)
  print("sent " .. msg .. ", got " .. reply:gsub("\n$", ""))
end
writer:close()
await writer:wait_closed()
