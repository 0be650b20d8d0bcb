-- ml_bench.lua: moonloop's side of benchmarks 1-4 (peers: peer.py, peer.js).
--
-- usage: moonloop ml_bench.lua gather|gather_eager|sleep0|queue|timers|timers1m[_warm] [N]
--
-- Prints one line: RESULT <name> <seconds> <ops>.  gather, sleep0 and queue
-- are CPU-bound in one thread, so they are timed with os.clock() (process
-- CPU time, equal to wall time here within noise, and never cached the way
-- an event loop's clock may be between polls); timers waits on the clock,
-- so it is timed with loop:time().

local asyncio = require "asyncio"

local clock = os.clock
local bench = {}

bench.gather = async function(n)
  local noop = async function() end
  local t0 = clock()
  local tasks = {}
  for i = 1, n do tasks[i] = asyncio.create_task(noop()) end
  await asyncio.gather(table.unpack(tasks, 1, n))
  return clock() - t0
end

-- The same with loop:set_task_factory(asyncio.eager_task_factory): each
-- task runs to its end inside create_task and never queues.
bench.gather_eager = async function(n)
  local loop = asyncio.get_running_loop()
  loop:set_task_factory(asyncio.eager_task_factory)
  local dt = await bench.gather(n)
  loop:set_task_factory(nil)
  return dt
end

bench.sleep0 = async function(n)
  local sleep = asyncio.sleep
  local t0 = clock()
  for _ = 1, n do await sleep(0) end
  return clock() - t0
end

bench.queue = async function(n)
  local q1, q2 = asyncio.Queue(), asyncio.Queue()
  local pong = async function()
    while true do
      local x = await q1:get()
      if x == false then return end
      await q2:put(x)
    end
  end
  local t0 = clock()
  local p = asyncio.create_task(pong())
  for i = 1, n do
    await q1:put(i)
    await q2:get()
  end
  await q1:put(false)
  await p
  return clock() - t0
end

bench.timers = async function(n)
  -- MINSTD, seeded alike in every implementation: delays 0..10 ms.
  local loop = asyncio.get_running_loop()
  local done = asyncio.Future()
  local left = n
  local function fire()
    left = left - 1
    if left == 0 then done:set_result(true) end
  end
  local x = 42
  local t0 = loop:time()
  for _ = 1, n do
    x = x * 48271 % 2147483647
    loop:call_later((x % 10000) / 1e6, fire)
  end
  await done
  return loop:time() - t0
end

-- Many timers: n pending call_later handles (delays 0..100 ms, MINSTD),
-- half of them cancelled once all are scheduled, the rest fired; the time
-- from scheduling the first to the last one firing.
bench.timers1m = async function(n)
  local loop = asyncio.get_running_loop()
  local done = asyncio.Future()
  local left = n - n // 2
  local function fire()
    left = left - 1
    if left == 0 then done:set_result(true) end
  end
  local handles = {}
  local x = 42
  local t0 = loop:time()
  for i = 1, n do
    x = x * 48271 % 2147483647
    handles[i] = loop:call_later((x % 100000) / 1e6, fire)
  end
  for i = 2, n, 2 do handles[i]:cancel() end
  await done
  return loop:time() - t0
end

local DEFAULT_N = {gather = 200000, gather_eager = 200000, sleep0 = 1000000, queue = 200000,
                   timers = 200000, timers1m = 1000000}

-- NAME_warm (gather_warm, timers_warm): the same benchmark run once
-- untimed first, in the same process, then timed: what it costs once the
-- process has touched its memory.  On a VM a fresh page can fault at
-- ~14 us (docs/performance.md, "Timers"), which a cold run pays for every
-- page its heap grows into.  Every peer harness does the same.
local name = arg and arg[1]
local base = name and name:match("^(.-)_warm$")
if base and bench[base] then
  bench[name] = async function(n)
    await bench[base](n)
    return await bench[base](n)
  end
  DEFAULT_N[name] = DEFAULT_N[base]
end
if not bench[name] then
  io.stderr:write("usage: moonloop ml_bench.lua gather|gather_eager|sleep0|queue|timers|timers1m[_warm] [N]\n")
  os.exit(2)
end
local n = tonumber(arg[2]) or DEFAULT_N[name]
local dt = await bench[name](n)
print(string.format("RESULT %s %.6f %d", name, dt, n))
