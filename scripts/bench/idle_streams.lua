-- idle_streams.lua: moonloop's side of the idle-connections benchmark.
--
-- usage: moonloop idle_streams.lua PORT N
--
-- asyncio.start_server whose handler waits in reader:readline(); once N
-- connections wait, prints RESULT idle <RSS bytes per connection> <N>
-- (growth of RSS from the 100th waiting connection to the Nth, after a
-- full collection at both points) and exits.  Same program as
-- idle_server.py and idle_server.js.

local asyncio = require "asyncio"

local port, n = tonumber(arg and arg[1]), tonumber(arg and arg[2])
if not port or not n or n <= 100 then
  io.stderr:write("usage: moonloop idle_streams.lua PORT N (N > 100)\n")
  os.exit(2)
end

local function rss()
  collectgarbage(); collectgarbage()
  local f = assert(io.open("/proc/self/statm"))
  local pages = f:read("n"); pages = f:read("n")
  f:close()
  return pages * 4096
end

local waiting, rss0 = 0, nil
local all = asyncio.Future()

local handle = async function(reader, writer)
  waiting = waiting + 1
  if waiting == 100 and not rss0 then rss0 = rss() end
  if waiting == n and not all:done() then all:set_result(rss()) end
  await reader:readline()
  waiting = waiting - 1
  writer:close()
end

local server = await asyncio.start_server(handle, "127.0.0.1", port, { backlog = 1024 })
local rss1 = await all
print(string.format("RESULT idle %.1f %d", (rss1 - rss0) / (n - 100), n))
io.stdout:flush()
os.exit(0)
