-- hits.lua: an HTTP hit counter whose state lives in Redis, not in the
-- worker that answers (docs/deployment.md, "State that must not live in a
-- worker").  Run it on every core:
--
--   redis-server --port 6379 --save '' --appendonly no &
--   moonloop --workers auto --listen 127.0.0.1:8080 scripts/hits.lua 8080 6379
--   curl http://127.0.0.1:8080/      --> hit 1 (worker 0)
--   curl http://127.0.0.1:8080/      --> hit 2 (worker 1)
--
-- Whichever worker the kernel hands a connection to, the count is the one
-- in Redis: INCR is atomic there, so no two requests get the same number
-- and none is lost when a worker is replaced.  Each worker keeps only what
-- may be rebuilt: its connection to Redis (made before it listens, so a
-- worker is not ready until it can reach its store).  GET /workers lists
-- the workers that have started, from Redis too.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local asyncio = require "asyncio"
local http = require "http"
local redis = require "redis"

local port = assert(tonumber(arg[1]), "usage: hits.lua PORT [REDIS_PORT [REDIS_HOST]]")
local rport, rhost = tonumber(arg[2]) or 6379, arg[3] or "127.0.0.1"
local id = asyncio.worker_id() or 0

local r = await redis.connect(rhost, rport)
await r:call("SADD", "hits:workers", id)

local srv = await http.serve(async function(req)
  if req.path == "/workers" then
    local ids = await r:call("SMEMBERS", "hits:workers")
    table.sort(ids)
    return table.concat(ids, " ") .. "\n"
  end
  return string.format("hit %d (worker %d)\n", await r:call("INCR", "hits"), id)
end, "127.0.0.1", port)
await srv:serve_forever()
