-- Lock, Event, Condition, Semaphore, BoundedSemaphore and Barrier: asyncio's
-- documented behaviour, fairness, and cancellation safety.
local asyncio = require "asyncio"
local T = require "asyncio.test"

local settle, go = T.settle, T.go

-- Starts a task that acquires prim, appends name to log, and releases.
local function contender(prim, name, log)
  return go(async function()
    local _ <close> = await prim:acquire()
    log[#log + 1] = name
  end)
end

---------------------------------------------------------------- Lock

T.case("lock: uncontended acquire and release", async function()
  local lock = asyncio.Lock()
  T.eq(lock:locked(), false, "new lock is unlocked")
  local g = await lock:acquire()
  T.ok(g, "acquire returns a true value")
  T.eq(lock:locked(), true, "locked after acquire")
  lock:release()
  T.eq(lock:locked(), false, "unlocked after release")
  T.raises(asyncio.RuntimeError, function() lock:release() end,
    "release of an unlocked lock")
end)

T.case("lock: <close> guard releases on scope exit and on error", async function()
  local lock = asyncio.Lock()
  do
    local _ <close> = await lock:acquire()
    T.eq(lock:locked(), true, "held inside the scope")
  end
  T.eq(lock:locked(), false, "released at scope exit")
  local ok, err = pcall(async function()
    local _ <close> = await lock:acquire()
    error("inside", 0)
  end)
  -- pcall of an async function only made the Coroutine: await it.
  T.eq(ok, true, "making the coroutine does not run it")
  local e = T.raises(nil, err, "error inside the scope")
  T.eq(e, "inside", "the error goes on unchanged")
  T.eq(lock:locked(), false, "released when the scope raised")
end)

T.case("lock: a task that dies holding a <close> guard releases it", async function()
  local lock = asyncio.Lock()
  local t = go(async function()
    local _ <close> = await lock:acquire()
    await asyncio.sleep(0)
    error("died", 0)
  end)
  T.eq(T.raises(nil, t, "the task fails"), "died", "its error")
  T.eq(lock:locked(), false, "released when the task died")
  local c = go(async function()
    local _ <close> = await lock:acquire()
    await asyncio.Event():wait()
  end)
  await settle()
  T.eq(lock:locked(), true, "held by c")
  c:cancel()
  T.raises(asyncio.CancelledError, c, "c is cancelled")
  T.eq(lock:locked(), false, "released when c was cancelled")
end)

T.case("lock: with(fn) returns fn's results and releases", async function()
  local lock = asyncio.Lock()
  local a, b = await lock:with(function(x, y)
    T.eq(lock:locked(), true, "held while fn runs")
    return x + 1, y .. "!"
  end, 1, "hi")
  T.eq(a, 2, "first result")
  T.eq(b, "hi!", "second result")
  T.eq(lock:locked(), false, "released after fn")
  local v = await lock:with(async function()
    await asyncio.sleep(0)
    return "async"
  end)
  T.eq(v, "async", "async fn result")
  T.raises(asyncio.ValueError, lock:with(function() error(asyncio.ValueError("x")) end),
    "fn's error propagates")
  T.eq(lock:locked(), false, "released after fn raised")
end)

T.case("lock: waiters acquire in FIFO order", async function()
  local lock = asyncio.Lock()
  local log = {}
  await lock:acquire()
  local tasks = {}
  for i = 1, 20 do tasks[i] = contender(lock, i, log) end
  await settle()
  T.eq(#log, 0, "nobody got the held lock")
  lock:release()
  for i = 1, 20 do await tasks[i] end
  for i = 1, 20 do T.eq(log[i], i, "acquisition " .. i) end
  T.eq(lock:locked(), false, "unlocked at the end")
end)

T.case("lock: a newcomer does not jump ahead of a woken waiter", async function()
  local lock = asyncio.Lock()
  local log = {}
  await lock:acquire()
  local t = contender(lock, "waiter", log)
  await settle()
  lock:release()  -- the waiter is woken but has not run yet
  T.eq(lock:locked(), false, "free until the waiter runs")
  await lock:acquire()  -- must queue behind the woken waiter
  log[#log + 1] = "newcomer"
  lock:release()
  await t
  T.eq(log[1], "waiter", "the woken waiter went first")
  T.eq(log[2], "newcomer", "then the newcomer")
end)

T.case("lock: a cancelled waiter is removed and never wins", async function()
  local lock = asyncio.Lock()
  local log = {}
  await lock:acquire()
  local b = contender(lock, "b", log)
  local c = contender(lock, "c", log)
  await settle()
  b:cancel()
  await settle()
  T.eq(b:cancelled(), true, "b is cancelled")
  lock:release()
  await c
  T.eq(#log, 1, "only one acquisition")
  T.eq(log[1], "c", "c got the lock")
  T.eq(lock:locked(), false, "unlocked at the end")
end)

T.case("lock: a lock handed to a waiter that is then cancelled passes on", async function()
  local lock = asyncio.Lock()
  local log = {}
  await lock:acquire()
  local b = contender(lock, "b", log)
  local c = contender(lock, "c", log)
  await settle()
  lock:release()  -- b is chosen ...
  b:cancel()      -- ... and cancelled before it could run
  T.raises(asyncio.CancelledError, b, "b raises CancelledError")
  await c
  T.eq(#log, 1, "one acquisition")
  T.eq(log[1], "c", "c got the lock b was handed")
  T.eq(lock:locked(), false, "unlocked at the end")
end)

T.case("lock: queue jumping when every waiter is cancelled", async function()
  local lock = asyncio.Lock()
  await lock:acquire()
  local b = contender(lock, "b", {})
  await settle()
  b:cancel()
  lock:release()
  -- b's future is cancelled and b has not run: acquire need not wait.
  await lock:acquire()
  T.eq(lock:locked(), true, "acquired at once")
  lock:release()
  T.raises(asyncio.CancelledError, b, "b was cancelled")
  T.eq(lock:locked(), false, "unlocked at the end")
end)

---------------------------------------------------------------- Event

T.case("event: set wakes every waiter; clear; is_set", async function()
  local ev = asyncio.Event()
  T.eq(ev:is_set(), false, "new event is clear")
  local woke = 0
  local tasks = {}
  for i = 1, 5 do
    tasks[i] = go(async function()
      T.eq(await ev:wait(), true, "wait returns true")
      woke = woke + 1
    end)
  end
  await settle()
  T.eq(woke, 0, "nobody woke before set")
  ev:set()
  T.eq(ev:is_set(), true, "set")
  ev:clear()  -- waiters already released stay released
  for i = 1, 5 do await tasks[i] end
  T.eq(woke, 5, "all five woke")
  T.eq(ev:is_set(), false, "cleared")
  ev:set()
  T.eq(await ev:wait(), true, "wait on a set event returns at once")
end)

T.case("event: a cancelled waiter raises, the others still wake", async function()
  local ev = asyncio.Event()
  local a = asyncio.create_task(ev:wait())
  local b = asyncio.create_task(ev:wait())
  await settle()
  a:cancel()
  ev:set()
  T.raises(asyncio.CancelledError, a, "a cancelled")
  T.eq(await b, true, "b woke")
end)

---------------------------------------------------------------- Condition

T.case("condition: wait and notify need the lock", async function()
  local cond = asyncio.Condition()
  T.raises(asyncio.RuntimeError, cond:wait(), "wait without the lock")
  T.raises(asyncio.RuntimeError, function() cond:notify() end, "notify without the lock")
  T.raises(asyncio.RuntimeError, function() cond:notify_all() end, "notify_all without the lock")
end)

T.case("condition: notify(n) wakes n waiters in FIFO order, notify_all the rest", async function()
  local cond = asyncio.Condition()
  local log = {}
  local tasks = {}
  for i = 1, 5 do
    tasks[i] = go(async function()
      local _ <close> = await cond:acquire()
      T.eq(await cond:wait(), true, "wait returns true")
      T.eq(cond:locked(), true, "the lock is held again after wait")
      log[#log + 1] = i
    end)
  end
  await settle()
  T.eq(cond:locked(), false, "every waiter released the lock")
  await cond:with(function() cond:notify(2) end)
  await settle()
  T.eq(#log, 2, "two woke")
  T.eq(log[1], 1, "first waiter first")
  T.eq(log[2], 2, "second waiter second")
  await cond:with(function() cond:notify_all() end)
  for i = 1, 5 do await tasks[i] end
  for i = 1, 5 do T.eq(log[i], i, "wake-up " .. i) end
end)

T.case("condition: wait_for(predicate) returns the predicate's value", async function()
  local cond = asyncio.Condition()
  local box = {v = nil}
  local t = go(async function()
    local _ <close> = await cond:acquire()
    return await cond:wait_for(function() return box.v end)
  end)
  await settle()
  await cond:with(function() box.v = false; cond:notify_all() end)
  await settle()
  T.eq(t:done(), false, "still waiting while the predicate is false")
  await cond:with(function() box.v = "ready"; cond:notify_all() end)
  T.eq(await t, "ready", "predicate value")
end)

T.case("condition: shares a Lock given to it", async function()
  local lock = asyncio.Lock()
  local cond = asyncio.Condition(lock)
  await lock:acquire()
  T.eq(cond:locked(), true, "the condition sees the lock held")
  local t = go(async function()
    await cond:with(function() cond:notify() end)
  end)
  await cond:wait()  -- releases the shared lock so t can notify
  T.eq(lock:locked(), true, "re-acquired the shared lock")
  lock:release()
  await t
end)

T.case("condition: a cancelled wait re-acquires the lock before raising", async function()
  local cond = asyncio.Condition()
  local held_on_cancel
  local t = go(async function()
    local _ <close> = await cond:acquire()
    local ok, err = pcall(await, cond:wait())
    held_on_cancel = cond:locked()
    error(err, 0)
  end)
  await settle()
  await cond:acquire()  -- hold the lock so t must queue for it after cancel
  t:cancel()
  await settle()
  T.eq(t:done(), false, "t waits for the lock before raising")
  cond:release()
  T.raises(asyncio.CancelledError, t, "the cancellation propagates")
  T.eq(held_on_cancel, true, "the lock was held when CancelledError arrived")
  T.eq(cond:locked(), false, "released by t's guard")
end)

T.case("condition: cancelled again while re-acquiring, wait still re-acquires", async function()
  local cond = asyncio.Condition()
  local held_on_cancel
  local t = go(async function()
    local _ <close> = await cond:acquire()
    local ok, err = pcall(await, cond:wait())
    held_on_cancel = cond:locked()
    error(err, 0)
  end)
  await settle()
  await cond:acquire()
  t:cancel()      -- out of the wait, into re-acquiring the lock we hold
  await settle()
  t:cancel()      -- and again while it waits for the lock
  await settle()
  T.eq(t:done(), false, "t still waits for the lock")
  cond:release()
  T.raises(asyncio.CancelledError, t, "the cancellation propagates")
  T.eq(held_on_cancel, true, "the lock was held when CancelledError arrived")
  T.eq(cond:locked(), false, "released by t's guard")
end)

T.case("condition: a notification given to a cancelled waiter is passed on", async function()
  local cond = asyncio.Condition()
  local log = {}
  local function waiter(name)
    return go(async function()
      local _ <close> = await cond:acquire()
      await cond:wait()
      log[#log + 1] = name
    end)
  end
  local a, b = waiter("a"), waiter("b")
  await settle()
  await cond:acquire()
  cond:notify(1)   -- a is notified ...
  a:cancel()       -- ... and cancelled before it ran
  cond:release()
  T.raises(asyncio.CancelledError, a, "a cancelled")
  await b          -- b must be woken in a's place
  T.eq(#log, 1, "one waiter woke")
  T.eq(log[1], "b", "b got the notification")
  T.eq(cond:locked(), false, "unlocked at the end")
end)

---------------------------------------------------------------- Semaphore

T.case("semaphore: counts permits; locked(); bad values", async function()
  local sem = asyncio.Semaphore(2)
  T.eq(sem:locked(), false, "2 permits")
  await sem:acquire()
  await sem:acquire()
  T.eq(sem:locked(), true, "no permit left")
  sem:release()
  T.eq(sem:locked(), false, "one permit back")
  sem:release()
  sem:release()  -- a plain Semaphore may go above its start value
  await sem:acquire(); await sem:acquire(); await sem:acquire()
  T.eq(sem:locked(), true, "three taken")
  T.raises(asyncio.ValueError, function() asyncio.Semaphore(-1) end, "negative value")
  T.eq(asyncio.Semaphore():locked(), false, "default value is 1")
end)

T.case("semaphore: waiters are served in FIFO order", async function()
  local sem = asyncio.Semaphore(2)
  await sem:acquire()
  await sem:acquire()
  local log = {}
  local tasks = {}
  for i = 1, 30 do tasks[i] = contender(sem, i, log) end
  await settle()
  T.eq(#log, 0, "nobody passed a drained semaphore")
  sem:release()
  sem:release()
  for i = 1, 30 do await tasks[i] end
  for i = 1, 30 do T.eq(log[i], i, "acquisition " .. i) end
  T.eq(sem:locked(), false, "both permits back")
end)

T.case("semaphore: a permit handed to a cancelled waiter passes on", async function()
  local sem = asyncio.Semaphore(1)
  await sem:acquire()
  local log = {}
  local b = contender(sem, "b", log)
  local c = contender(sem, "c", log)
  await settle()
  sem:release()  -- b is handed the permit ...
  b:cancel()     -- ... and cancelled before it ran
  T.raises(asyncio.CancelledError, b, "b cancelled")
  await c
  T.eq(#log, 1, "one acquisition")
  T.eq(log[1], "c", "c got b's permit")
  await sem:acquire()
  T.eq(sem:locked(), true, "exactly one permit exists")
  sem:release()
end)

T.case("semaphore: a cancelled waiter is removed", async function()
  local sem = asyncio.Semaphore(0)
  local log = {}
  local b = contender(sem, "b", log)
  local c = contender(sem, "c", log)
  await settle()
  b:cancel()
  T.raises(asyncio.CancelledError, b, "b cancelled")
  sem:release()
  await c
  T.eq(log[1], "c", "c acquired")
  T.eq(#log, 1, "b never acquired")
end)

T.case("semaphore: with(fn) and <close>", async function()
  local sem = asyncio.Semaphore(1)
  T.eq(await sem:with(function() return sem:locked() end), true, "held in fn")
  T.eq(sem:locked(), false, "released after fn")
  do
    local _ <close> = await sem:acquire()
    T.eq(sem:locked(), true, "held in scope")
  end
  T.eq(sem:locked(), false, "released at scope exit")
end)

T.case("bounded semaphore: over-release raises ValueError", async function()
  local sem = asyncio.BoundedSemaphore(2)
  await sem:acquire()
  sem:release()
  T.raises(asyncio.ValueError, function() sem:release() end, "release past the bound")
  await sem:acquire(); await sem:acquire()
  T.eq(sem:locked(), true, "still exactly two permits")
  sem:release(); sem:release()
end)

---------------------------------------------------------------- Barrier

T.case("barrier: parties pass together with distinct indexes, and it is reusable", async function()
  local b = asyncio.Barrier(3)
  T.eq(b.parties, 3, "parties")
  T.eq(b.broken, false, "not broken")
  for round = 1, 2 do
    local tasks = {}
    for i = 1, 2 do tasks[i] = asyncio.create_task(b:wait()) end
    await settle()
    T.eq(b.n_waiting, 2, "two waiting, round " .. round)
    T.eq(tasks[1]:done(), false, "blocked until the last party")
    local idx = await b:wait()
    local seen = {[idx] = true}
    for i = 1, 2 do seen[await tasks[i]] = true end
    T.ok(seen[0] and seen[1] and seen[2], "indexes 0, 1, 2, round " .. round)
    T.eq(b.n_waiting, 0, "nobody waiting after the round")
  end
  T.raises(asyncio.ValueError, function() asyncio.Barrier(0) end, "parties must be > 0")
end)

T.case("barrier: abort breaks it for current and later waiters", async function()
  local b = asyncio.Barrier(3)
  local t = asyncio.create_task(b:wait())
  await settle()
  await b:abort()
  T.raises(asyncio.BrokenBarrierError, t, "waiter sees the abort")
  T.eq(b.broken, true, "broken")
  T.raises(asyncio.BrokenBarrierError, b:wait(), "later wait raises")
  await b:reset()
  T.eq(b.broken, false, "reset mends it")
  local ts = {asyncio.create_task(b:wait()), asyncio.create_task(b:wait())}
  await b:wait()
  await ts[1]; await ts[2]
end)

T.case("barrier: reset wakes current waiters with BrokenBarrierError", async function()
  local b = asyncio.Barrier(3)
  local ts = {asyncio.create_task(b:wait()), asyncio.create_task(b:wait())}
  await settle()
  await b:reset()
  T.raises(asyncio.BrokenBarrierError, ts[1], "first waiter")
  T.raises(asyncio.BrokenBarrierError, ts[2], "second waiter")
  T.eq(b.broken, false, "reset does not break it")
  T.eq(b.n_waiting, 0, "emptied")
  ts = {asyncio.create_task(b:wait()), asyncio.create_task(b:wait())}
  await b:wait()
  await ts[1]; await ts[2]
end)

T.case("barrier: a cancelled waiter leaves without breaking it", async function()
  local b = asyncio.Barrier(2)
  local t = asyncio.create_task(b:wait())
  await settle()
  T.eq(b.n_waiting, 1, "one waiting")
  t:cancel()
  T.raises(asyncio.CancelledError, t, "cancelled")
  T.eq(b.n_waiting, 0, "it left")
  T.eq(b.broken, false, "not broken")
  local u = asyncio.create_task(b:wait())
  await b:wait()
  await u
end)

T.run()
