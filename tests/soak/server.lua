-- The soak's echo server (tests/soak/soak.sh): a streams server on
-- 127.0.0.1 that echoes what each connection sends until it closes.
-- Prints "port N" once listening; runs until killed (SIGTERM).
local async function echo(r, w)
  while true do
    local data = await r:read(65536)
    if data == "" then break end
    w:write(data)
    await w:drain()
  end
  w:close()
end

asyncio.run((async function()
  local srv = await asyncio.start_server(echo, "127.0.0.1", 0, { backlog = 1024 })
  print("port " .. srv.sockets[1]:getsockname()[2])
  io.stdout:flush()
  await srv:serve_forever()
end)())
