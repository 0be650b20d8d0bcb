-- tls_server.lua: moonloop's TLS server for the TLS benchmarks (peers:
-- tls_server.py, tls_server.js; load client: tlsload.c).
--
-- usage: moonloop tls_server.lua PORT CERT KEY echo|bulk [BYTES]
--
-- echo: asyncio.start_server with ssl, a read/write/drain loop per client
-- (handshakes and echo); bulk: writes BYTES (64 MiB) to each client, then
-- closes.  Listens on 127.0.0.1 until killed.
local asyncio = require "asyncio"
local ssl = require "ssl"

local port, cert, key, mode = tonumber(arg[1]), arg[2], arg[3], arg[4]
local bytes = tonumber(arg[5]) or 64 * 1024 * 1024
if not (port and cert and key and (mode == "echo" or mode == "bulk")) then
  io.stderr:write("usage: moonloop tls_server.lua PORT CERT KEY echo|bulk [BYTES]\n")
  os.exit(2)
end
local ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx:load_cert_chain(cert, key)

local chunk = string.rep("x", 256 * 1024)
local handle
if mode == "echo" then
  handle = async function(reader, writer)
    while true do
      local data = await reader:read(65536)
      if data == nil or data == "" then break end
      writer:write(data)
      await writer:drain()
    end
    writer:close()
  end
else
  handle = async function(reader, writer)
    local left = bytes
    while left > 0 do
      local n = math.min(left, #chunk)
      writer:write(n == #chunk and chunk or chunk:sub(1, n))
      await writer:drain()
      left = left - n
    end
    writer:close()
  end
end

-- A client that resets or fails its handshake ends its handler quietly.
local server = await asyncio.start_server(async function(r, w)
  pcall(await, handle(r, w))
  w:close()
end, "127.0.0.1", port, { ssl = ctx })
await server:serve_forever()
