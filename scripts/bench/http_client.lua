-- http_client.lua: N GETs at concurrency C through one http.Session
-- (make bench's HTTP client row; http_client.py and http_client.js are
-- the peers).
--   moonloop http_client.lua URL [N] [C]
-- Prints RESULT httpclient <seconds> <requests>.
local http = require "http"
local url, N, CONC = arg[1], tonumber(arg[2]) or 20000, tonumber(arg[3]) or 50

local s <close> = http.Session({ limit = CONC })
local errors = 0
local next_i = 0
local async function worker()
  while next_i < N do
    next_i = next_i + 1
    local r <close> = await s:get(url)
    local body = await r:read()
    if r.status ~= 200 or #body == 0 then errors = errors + 1 end
  end
end
-- one warm-up request: libcurl loaded, a connection made
do local r <close> = await s:get(url); await r:read() end
local loop = asyncio.get_running_loop()
local t0 = loop:time()
local tasks = {}
for i = 1, CONC do tasks[i] = worker() end
await asyncio.gather(table.unpack(tasks))
local dt = loop:time() - t0
if errors > 0 then io.stderr:write(errors, " requests failed\n"); os.exit(1) end
print(string.format("RESULT httpclient %.6f %d", dt, N))
