-- fetch_many.lua: many concurrent HTTP fetches through one http.Session.
--
--   moonloop scripts/fetch_many.lua [requests] [concurrency]   (default 500 50)
--
-- Starts a small HTTP/1.1 keep-alive server on 127.0.0.1 (a port the kernel
-- picks), then fetches /item/1 .. /item/N through one Session, with at most
-- `concurrency` requests in flight (a Semaphore; the session's pool keeps
-- as many connections open and reuses them), each under a deadline, and
-- prints a summary.  Every 97th path is missing (404: a result, not an
-- error) to show error accounting.
local asyncio = require "asyncio"
local http = require "http"

local N = tonumber(arg and arg[1]) or 500
local CONC = tonumber(arg and arg[2]) or 50

-- The server: HTTP/1.1, several requests per connection.
local connections = 0
local async function serve_http(reader, writer)
  connections = connections + 1
  local ok, err = pcall(function()
    while true do
      local request = await reader:readline()
      if request == "" then break end                 -- the client closed
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
      writer:write("HTTP/1.1 " .. status .. "\r\nContent-Type: text/plain\r\nContent-Length: "
                   .. #body .. "\r\n\r\n" .. body)
      await writer:drain()
    end
  end)
  writer:close()
  if not ok and not asyncio.isinstance(err, asyncio.ConnectionError) then error(err, 0) end
end

local server = await asyncio.start_server(serve_http, "127.0.0.1", 0, { backlog = 256 })
local port = server.sockets[1]:getsockname()[2]

local session <close> = http.Session({ base_url = "http://127.0.0.1:" .. port, limit = CONC })
local sem = asyncio.Semaphore(CONC)
local stats = { ok = 0, missing = 0, failed = 0, bytes = 0 }
local loop = asyncio.get_running_loop()
local t0 = loop:time()

local async function one(i)
  local _ <close> = await sem:acquire()
  local ok, err = pcall(function()
    local r <close> = await session:get("/item/" .. i, { timeout = 5 })
    local body = await r:read()
    if r.status == 200 then
      stats.ok = stats.ok + 1
      stats.bytes = stats.bytes + #body
    else
      stats.missing = stats.missing + 1
    end
  end)
  if not ok then
    stats.failed = stats.failed + 1
    print("failed: /item/" .. i .. ": " .. tostring(err))
  end
end

local tasks = {}
for i = 1, N do tasks[i] = one(i) end
await asyncio.gather(table.unpack(tasks))
local dt = loop:time() - t0

session:close()
server:close()
await server:wait_closed()
print(string.format("%d requests, %d concurrent: %d ok, %d not found, %d failed, %d body bytes",
                    N, CONC, stats.ok, stats.missing, stats.failed, stats.bytes))
print(string.format("%d connections served them (kept alive and reused)", connections))
print(string.format("%.3f s, %.0f requests/s", dt, N / dt))
