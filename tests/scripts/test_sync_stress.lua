-- A bounded stress test: in a loop, waiters of every primitive are cancelled
-- at random points (before they were woken, right after, while they hold
-- what they acquired), and afterwards nothing may be lost: every lock
-- released, every permit back, every item accounted for exactly once, every
-- notification delivered.  The random sequence is seeded, so a failure
-- reproduces.  Only sleep(0) is used to interleave: no timers, no timing.
local asyncio = require "asyncio"
local T = require "asyncio.test"

math.randomseed(20240613)

local ROUNDS = 200

local go = T.go

-- A to-be-closed value that calls fn on scope exit (also on error).
local function defer(fn)
  return setmetatable({}, {__close = function() fn() end})
end

local async function yield_random(max)
  for _ = 1, math.random(0, max or 3) do await asyncio.sleep(0) end
end

local function cancel_some(tasks, p)
  for i = 1, #tasks do
    if not tasks[i]:done() and math.random() < p then tasks[i]:cancel() end
  end
end

-- steps scheduler turns; at each, with probability p, one random live task
-- is cancelled.
local async function chaos(tasks, steps, p)
  for _ = 1, steps do
    if math.random() < p then
      local live = {}
      for i = 1, #tasks do
        if not tasks[i]:done() then live[#live + 1] = tasks[i] end
      end
      if #live > 0 then live[math.random(#live)]:cancel() end
    end
    await asyncio.sleep(0)
  end
end

-- Awaits every task; a cancellation is expected, any other error is not.
local async function join_all(tasks)
  for i = 1, #tasks do
    local ok, err = pcall(await, tasks[i])
    if not ok and not asyncio.isinstance(err, asyncio.CancelledError) then
      error(err, 0)
    end
  end
end

T.case("stress: Lock hands itself on through cancelled waiters", async function()
  local lock = asyncio.Lock()
  local inside = 0
  for round = 1, ROUNDS do
    local tasks, entered = {}, {}
    await lock:acquire()
    for i = 1, math.random(1, 10) do
      tasks[i] = go(async function()
        local _ <close> = await lock:acquire()
        inside = inside + 1
        local _d <close> = defer(function() inside = inside - 1 end)
        T.eq(inside, 1, "holders at once")
        entered[i] = true
        await yield_random(2)
      end)
    end
    await yield_random()
    cancel_some(tasks, 0.2)   -- waiting (or not started yet)
    lock:release()
    cancel_some(tasks, 0.2)   -- perhaps just handed the lock
    await chaos(tasks, 8, 0.3)
    await join_all(tasks)
    for i = 1, #tasks do
      if not tasks[i]:cancelled() then
        T.ok(entered[i], "round " .. round .. ": survivor " .. i .. " got the lock")
      end
    end
    T.eq(lock:locked(), false, "round " .. round .. ": the lock is free")
    T.eq(inside, 0, "nobody inside")
  end
  await lock:acquire()  -- no stale waiter stands in the way
  lock:release()
end)

T.case("stress: BoundedSemaphore loses and duplicates no permit", async function()
  for round = 1, ROUNDS do
    local k = math.random(1, 3)
    local sem = asyncio.BoundedSemaphore(k)  -- an extra release would raise
    local inside = 0
    local tasks, entered = {}, {}
    for _ = 1, k do await sem:acquire() end
    for i = 1, math.random(1, 12) do
      tasks[i] = go(async function()
        local _ <close> = await sem:acquire()
        inside = inside + 1
        local _d <close> = defer(function() inside = inside - 1 end)
        T.ok(inside <= k, "at most k holders")
        entered[i] = true
        await yield_random(2)
      end)
    end
    await yield_random()
    cancel_some(tasks, 0.2)
    for _ = 1, k do
      sem:release()
      cancel_some(tasks, 0.15)
    end
    await chaos(tasks, 8, 0.3)
    await join_all(tasks)
    for i = 1, #tasks do
      if not tasks[i]:cancelled() then
        T.ok(entered[i], "round " .. round .. ": survivor " .. i .. " got a permit")
      end
    end
    for j = 1, k do
      T.eq(sem:locked(), false, "round " .. round .. ": permit " .. j .. " is back")
      await sem:acquire()
    end
    T.eq(sem:locked(), true, "round " .. round .. ": exactly k permits")
  end
end)

T.case("stress: Queue loses and duplicates no item", async function()
  for round = 1, ROUNDS do
    local q = asyncio.Queue(math.random(0, 3))
    local put_ok, got = {}, {}
    local producers, consumers, all = {}, {}, {}
    local next_item = 0
    for p = 1, math.random(1, 4) do
      producers[p] = go(async function()
        for _ = 1, math.random(1, 6) do
          next_item = next_item + 1
          local item = next_item
          await q:put(item)
          put_ok[item] = true   -- put returned: the item is in
        end
      end)
      all[#all + 1] = producers[p]
    end
    for c = 1, math.random(1, 5) do
      consumers[c] = go(async function()
        while true do
          local item = await q:get()
          T.eq(got[item], nil, "item " .. tostring(item) .. " received once")
          got[item] = true
          if math.random() < 0.5 then q:task_done() else await asyncio.sleep(0); q:task_done() end
        end
      end)
      all[#all + 1] = consumers[c]
    end
    await yield_random()
    cancel_some(all, 0.15)
    await chaos(all, 20, 0.25)
    for _ = 1, 30 do await asyncio.sleep(0) end  -- let the survivors run
    local live = 0
    for c = 1, #consumers do if not consumers[c]:done() then live = live + 1 end end
    T.ok(live == 0 or q:empty(), "round " .. round .. ": no item left while a consumer sleeps")
    for i = 1, #all do all[i]:cancel() end
    await join_all(all)
    -- Every item put is either received or still queued, exactly once.
    local drained = {}
    while not q:empty() do
      local item = q:get_nowait()
      T.eq(got[item] or drained[item], nil, "round " .. round .. ": item " .. item .. " seen once")
      drained[item] = true
    end
    for item in pairs(put_ok) do
      T.ok(got[item] or drained[item], "round " .. round .. ": item " .. item .. " not lost")
    end
    for item in pairs(got) do T.ok(put_ok[item], "received item " .. item .. " was put") end
    -- No stale waiter is left to swallow a wake-up.
    local getter = asyncio.create_task(q:get())
    await asyncio.sleep(0)
    q:put_nowait("probe")
    T.eq(await getter, "probe", "round " .. round .. ": a fresh getter is woken")
  end
end)

T.case("stress: Event wakes every surviving waiter", async function()
  for round = 1, ROUNDS do
    local ev = asyncio.Event()
    local tasks = {}
    for i = 1, math.random(1, 10) do tasks[i] = asyncio.create_task(ev:wait()) end
    await yield_random()
    cancel_some(tasks, 0.3)
    ev:set()
    cancel_some(tasks, 0.2)
    await join_all(tasks)
    for i = 1, #tasks do
      if not tasks[i]:cancelled() then
        T.eq(tasks[i]:result(), true, "round " .. round .. ": survivor woke")
      end
    end
  end
end)

T.case("stress: Condition delivers every notification", async function()
  for round = 1, ROUNDS do
    local cond = asyncio.Condition()
    local tokens, consumed, produced = 0, 0, 0
    local waiters = {}
    for i = 1, math.random(1, 8) do
      waiters[i] = go(async function()
        await cond:with(async function()
          await cond:wait_for(function() return tokens > 0 end)
          T.eq(cond:locked(), true, "holds the lock after wait_for")
          tokens = tokens - 1
          consumed = consumed + 1
        end)
      end)
    end
    await yield_random()
    for _ = 1, math.random(1, 6) do
      await cond:with(function()
        tokens = tokens + 1
        produced = produced + 1
        cond:notify(1)
      end)
      cancel_some(waiters, 0.2)  -- perhaps the one just notified
      await yield_random(2)
    end
    for _ = 1, 30 do await asyncio.sleep(0) end  -- let the survivors run
    local live = 0
    for i = 1, #waiters do if not waiters[i]:done() then live = live + 1 end end
    T.ok(tokens == 0 or live == 0,
      "round " .. round .. ": no token left while a waiter sleeps (tokens "
        .. tokens .. ", sleeping " .. live .. ")")
    T.eq(tokens + consumed, produced, "round " .. round .. ": tokens accounted")
    for i = 1, #waiters do waiters[i]:cancel() end
    await join_all(waiters)
    T.eq(cond:locked(), false, "round " .. round .. ": the lock is free")
  end
end)

T.case("stress: Barrier survives cancelled parties", async function()
  local parties = 3
  local b = asyncio.Barrier(parties)
  for round = 1, ROUNDS do
    local tasks = {}
    for i = 1, math.random(1, 7) do tasks[i] = asyncio.create_task(b:wait()) end
    await yield_random()
    await chaos(tasks, 6, 0.4)
    for i = 1, #tasks do tasks[i]:cancel() end
    await join_all(tasks)
    T.eq(b.n_waiting, 0, "round " .. round .. ": nobody left waiting")
    T.eq(b.broken, false, "round " .. round .. ": not broken")
    -- still usable: a full set of parties passes
    local set = {}
    for i = 1, parties do set[i] = asyncio.create_task(b:wait()) end
    local seen = {}
    for i = 1, parties do seen[await set[i]] = true end
    T.ok(seen[0] and seen[1] and seen[2], "round " .. round .. ": indexes 0..2")
  end
end)

T.run()
