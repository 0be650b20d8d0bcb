-- echo_streams.lua: moonloop's echo server on the streams API (benchmark 5).
--
-- usage: moonloop echo_streams.lua PORT
--
-- asyncio.start_server with a read/write/drain loop per client, the same
-- program as the Python peer.  Listens on 127.0.0.1 until killed.

local asyncio = require "asyncio"

local port = tonumber(arg and arg[1])
if not port then
  io.stderr:write("usage: moonloop echo_streams.lua PORT\n")
  os.exit(2)
end

local handle = async function(reader, writer)
  while true do
    local data = await reader:read(65536)
    if data == nil or data == "" then break end
    writer:write(data)
    await writer:drain()
  end
  writer:close()
end

local server = await asyncio.start_server(handle, "127.0.0.1", port)
await server:serve_forever()
