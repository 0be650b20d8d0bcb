-- echo_protocol.lua: moonloop's echo server on the protocols API (benchmark 6).
--
-- usage: moonloop echo_protocol.lua PORT
--
-- loop:create_server with a protocol factory; each protocol writes what it
-- receives straight back, as the Python peer's Protocol does.  Listens on
-- 127.0.0.1 until killed.

local asyncio = require "asyncio"

local port = tonumber(arg and arg[1])
if not port then
  io.stderr:write("usage: moonloop echo_protocol.lua PORT\n")
  os.exit(2)
end

local Echo = {}
Echo.__index = Echo

function Echo:connection_made(transport)
  self.transport = transport
end

function Echo:data_received(data)
  self.transport:write(data)
end

local function factory()
  return setmetatable({}, Echo)
end

local loop = asyncio.get_running_loop()
local server = await loop:create_server(factory, "127.0.0.1", port)
await server:serve_forever()
