-- A workload of the core for the stress modes (docs/reliability.md, run by
-- tests/scripts/test_stress_modes.lua): tasks, gather, sleeps, timeouts,
-- cancellation, Queue, Event, Lock, TaskGroup, exceptions.  It checks its
-- own results and prints "core ok"; any error ends it with the error.
local function check(c, what) if not c then error("wrong result: " .. what, 0) end end
-- A pcall'd call that ran out of memory (a MemoryError, or Lua's own
-- "not enough memory" string, which pcall in a script sees): it goes on.
local function mem(ok, e)
  if not ok and (asyncio.isinstance(e, asyncio.MemoryError) or e == "not enough memory") then error(e, 0) end
  return ok, e
end

local async function work(i)
  await asyncio.sleep(0)
  return i * 2
end

local async function main()
  local r = await asyncio.gather(work(1), work(2), work(3))
  check(r[1] == 2 and r[3] == 6, "gather")
  local q = asyncio.Queue(2)
  local prod = asyncio.create_task((async function()
    for i = 1, 5 do await q:put(i) end
    await q:put(nil)
  end)())
  local sum = 0
  while true do
    local v = await q:get()
    if v == nil then break end
    sum = sum + v
  end
  await prod
  check(sum == 15, "queue")
  local ev = asyncio.Event()
  local waiter = asyncio.create_task(ev:wait())
  ev:set()
  check(await waiter == true, "event")
  local lock = asyncio.Lock()
  local n = 0
  local async function locked()
    await lock:acquire()
    n = n + 1
    await asyncio.sleep(0)
    lock:release()
  end
  await asyncio.gather(locked(), locked(), locked())
  check(n == 3, "lock")
  local ok, e = mem(pcall(function() return await asyncio.wait_for(asyncio.sleep(10), 0.001) end))
  check(not ok and asyncio.isinstance(e, asyncio.TimeoutError), "wait_for: " .. tostring(e))
  local t = asyncio.create_task(asyncio.sleep(10))
  await asyncio.sleep(0)
  t:cancel()
  ok, e = mem(pcall(function() return await t end))
  check(not ok and asyncio.isinstance(e, asyncio.CancelledError), "cancel: " .. tostring(e))
  local tg_results = {}
  do
    local tg <close> = asyncio.TaskGroup()
    for i = 1, 3 do tg:create_task((async function() tg_results[i] = await work(i) end)()) end
  end
  check(tg_results[2] == 4, "taskgroup")
  ok, e = mem(pcall(function()
    await asyncio.gather(work(1), (async function() error(asyncio.ValueError("boom")) end)())
  end))
  check(not ok and asyncio.isinstance(e, asyncio.ValueError), "gather error: " .. tostring(e))
  local fut = asyncio.get_running_loop():create_future()
  asyncio.get_running_loop():call_later(0.001, function() fut:set_result("late") end)
  check(await fut == "late", "call_later")
  print("core ok")
end

asyncio.run(main())
