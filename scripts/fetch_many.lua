-- fetch_many.lua: many concurrent HTTP/1.0 fetches against a tiny server.
--
--   moonloop scripts/fetch_many.lua [requests] [concurrency]   (default 500 50)
--
-- Starts an HTTP/1.0 server on 127.0.0.1 (a port the kernel picks), then
-- fetches /item/1 .. /item/N with at most `concurrency` connections open at
-- once (a Semaphore), each fetch under a deadline, and prints a summary.
-- Every 97th path is missing (404) to show error accounting.
local asyncio = require "asyncio"

local N = tonumber(arg and arg[1]) or 500
local CONC = tonumber(arg and arg[2]) or 50

local async function serve_http(reader, writer)
  local ok, err = pcall(function()
    local request = await reader:readline()
    local path = request:match("^GET (%S+) HTTP/1%.[01]\r?\n$")
    while true do                                   -- skip the headers
      local h = await reader:readline()
      if h == "\r\n" or h == "\n" or h == "" then break end
    end
    local n = path and tonumber(path:match("^/item/(%d+)$"))
    local status, body
    if n and n % 97 ~= 0 then
      status, body = "200 OK", string.rep("item " .. n .. "\n", n % 50 + 1)
    else
      status, body = "404 Not Found", "no such item\n"
    end
    writer:write("HTTP/1.0 " .. status .. "\r\nContent-Type: text/plain\r\nContent-Length: "
                 .. #body .. "\r\n\r\n" .. body)
    await writer:drain()
  end)
  writer:close()
  if not ok and not asyncio.isinstance(err, asyncio.ConnectionError) then error(err, 0) end
end

local server = await asyncio.start_server(serve_http, "127.0.0.1", 0, { backlog = 256 })
local port = server.sockets[1]:getsockname()[2]

local async function fetch(path)
  local reader, writer = await asyncio.open_connection("127.0.0.1", port)
  writer:write("GET " .. path .. " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
  local status = tonumber((await reader:readline()):match("^HTTP/1%.%d (%d+)"))
  local length
  while true do
    local h = await reader:readline()
    if h == "\r\n" then break end
    length = length or tonumber(h:match("^Content%-Length: (%d+)"))
  end
  local body = await reader:readexactly(length)
  writer:close()
  return status, #body
end

local sem = asyncio.Semaphore(CONC)
local stats = { ok = 0, missing = 0, failed = 0, bytes = 0 }
local loop = asyncio.get_running_loop()
local t0 = loop:time()

local async function one(i)
  local _ <close> = await sem:acquire()
  local ok, status, size = pcall(function() return await asyncio.wait_for(fetch("/item/" .. i), 5) end)
  if not ok then stats.failed = stats.failed + 1
  elseif status == 200 then stats.ok = stats.ok + 1; stats.bytes = stats.bytes + size
  else stats.missing = stats.missing + 1 end
end

local tasks = {}
for i = 1, N do tasks[i] = one(i) end
await asyncio.gather(table.unpack(tasks))
local dt = loop:time() - t0

server:close()
await server:wait_closed()
print(string.format("%d requests, %d concurrent: %d ok, %d not found, %d failed, %d body bytes",
                    N, CONC, stats.ok, stats.missing, stats.failed, stats.bytes))
print(string.format("%.3f s, %.0f requests/s", dt, N / dt))
