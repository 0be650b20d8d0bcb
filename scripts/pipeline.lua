-- pipeline.lua: producer -> parse -> enrich (a pool) -> consumer, joined by
-- bounded queues.
--
--   moonloop scripts/pipeline.lua [items] [queue size] [enrich workers]
--
-- Backpressure: each queue is bounded, so a fast stage waits in put()
-- while a slow one catches up, and memory stays flat however many items
-- go through.  Clean shutdown: when a stage has no more input it shuts down
-- its output queue (Queue:shutdown()); the next stage drains what is
-- queued, gets QueueShutDown, and does the same.  Everything runs inside
-- one TaskGroup, so an error in any stage (or Ctrl-C) cancels them all.
local asyncio = require "asyncio"

local argv = arg or {}
local ITEMS = tonumber(argv[1]) or 1000
local QSIZE = tonumber(argv[2]) or 8
local WORKERS = tonumber(argv[3]) or 4

local stats = {high = {}}

-- Puts item into q, recording the queue's high-water mark.
local async function put(q, name, item)
  await q:put(item)
  local n = q:qsize()
  if n > (stats.high[name] or 0) then stats.high[name] = n end
end

-- Runs fn(item) for every item of inq until inq is shut down and drained.
local async function drain(inq, fn)
  while true do
    local ok, item = pcall(await, inq:get())
    if not ok then
      if asyncio.isinstance(item, asyncio.QueueShutDown) then return end
      error(item, 0)
    end
    fn(item)
  end
end

local async function producer(out)
  for i = 1, ITEMS do
    await put(out, "raw", string.format("record %d: value=%d", i, (i * 7919) % 1000))
  end
  out:shutdown()  -- no more input: the parser drains the rest, then stops
end

local async function parser(inq, out)
  await drain(inq, function(line)
    local id, value = line:match("^record (%d+): value=(%d+)$")
    await put(out, "parsed", {id = tonumber(id), value = tonumber(value)})
  end)
  out:shutdown()
end

-- A pool of workers sharing one input queue; the output queue is shut down
-- when the last of them has finished.
local async function enricher(inq, out)
  await asyncio.TaskGroup(function(tg)
    for w = 1, WORKERS do
      tg:create_task(drain(inq, function(rec)
        await asyncio.sleep(0)  -- stands for real work that awaits
        rec.square = rec.value * rec.value
        rec.worker = w
        await put(out, "enriched", rec)
      end))
    end
  end)
  out:shutdown()
end

local async function consumer(inq)
  local count, sum, seen, per_worker = 0, 0, {}, {}
  await drain(inq, function(rec)
    assert(not seen[rec.id], "duplicate record")
    seen[rec.id] = true
    count = count + 1
    sum = sum + rec.square
    per_worker[rec.worker] = (per_worker[rec.worker] or 0) + 1
  end)
  return count, sum, per_worker
end

local async function main()
  local raw, parsed, enriched = asyncio.Queue(QSIZE), asyncio.Queue(QSIZE), asyncio.Queue(QSIZE)
  local result
  await asyncio.TaskGroup(function(tg)
    tg:create_task(producer(raw))
    tg:create_task(parser(raw, parsed))
    tg:create_task(enricher(parsed, enriched))
    result = tg:create_task(consumer(enriched))
  end)
  local count, sum, per_worker = result:result()
  local want = 0
  for i = 1, ITEMS do local v = (i * 7919) % 1000; want = want + v * v end
  print(string.format("items: %d of %d, sum of squares: %d (%s)", count, ITEMS, sum,
    sum == want and "correct" or "WRONG, expected " .. want))
  print(string.format("queue high-water marks (bound %d): raw %d, parsed %d, enriched %d",
    QSIZE, stats.high.raw or 0, stats.high.parsed or 0, stats.high.enriched or 0))
  local parts = {}
  for w = 1, WORKERS do parts[w] = tostring(per_worker[w] or 0) end
  print("records per enrich worker: " .. table.concat(parts, ", "))
  if count ~= ITEMS or sum ~= want then os.exit(1) end
end

asyncio.run(main())
