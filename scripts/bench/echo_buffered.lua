-- echo_buffered.lua: moonloop's echo server on a BufferedProtocol (the
-- protocols API's zero-copy read path, benchmark 6 variant).
--
-- usage: moonloop echo_buffered.lua PORT
--
-- Each connection reads straight into its own 64 KiB socket.buffer
-- (get_buffer / buffer_updated, no string per read) and writes the bytes
-- back from it (transport:write(buf, 1, n)).  Listens on 127.0.0.1 until
-- killed.

local asyncio = require "asyncio"
local socket = require "socket"

local port = tonumber(arg and arg[1])
if not port then
  io.stderr:write("usage: moonloop echo_buffered.lua PORT\n")
  os.exit(2)
end

local Echo = asyncio.BufferedProtocol:extend()

function Echo:connection_made(transport)
  self.transport = transport
  self.buf = socket.buffer(65536)
end

function Echo:get_buffer(sizehint)
  return self.buf
end

function Echo:buffer_updated(n)
  self.transport:write(self.buf, 1, n)
end

local loop = asyncio.get_running_loop()
local server = await loop:create_server(Echo, "127.0.0.1", port)
await server:serve_forever()
