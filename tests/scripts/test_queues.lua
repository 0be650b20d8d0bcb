-- Queue, PriorityQueue, LifoQueue: ordering, backpressure, join/task_done
-- accounting, shutdown, and cancellation safety.
local asyncio = require "asyncio"
local T = require "asyncio.test"

local settle, go = T.settle, T.go

T.case("queue: FIFO order, qsize, empty, full, maxsize", async function()
  local q = asyncio.Queue()
  T.eq(q.maxsize, 0, "default maxsize")
  T.eq(q:empty(), true, "new queue is empty")
  T.eq(q:full(), false, "an unbounded queue is never full")
  for i = 1, 5 do await q:put(i) end
  T.eq(q:qsize(), 5, "five queued")
  T.eq(q:empty(), false, "not empty")
  for i = 1, 5 do T.eq(await q:get(), i, "get " .. i) end
  T.eq(q:empty(), true, "empty again")
  local b = asyncio.Queue(2)
  T.eq(b.maxsize, 2, "maxsize")
  b:put_nowait("a")
  b:put_nowait("b")
  T.eq(b:full(), true, "full at maxsize")
end)

T.case("queue: put_nowait raises QueueFull, get_nowait QueueEmpty", async function()
  local q = asyncio.Queue(1)
  T.raises(asyncio.QueueEmpty, function() q:get_nowait() end, "get_nowait on empty")
  q:put_nowait(1)
  T.raises(asyncio.QueueFull, function() q:put_nowait(2) end, "put_nowait on full")
  T.eq(q:get_nowait(), 1, "the item")
  T.eq(q:qsize(), 0, "empty")
end)

T.case("queue: nil and false are items like any other", async function()
  local q = asyncio.Queue()
  await q:put(nil)
  await q:put(false)
  T.eq(q:qsize(), 2, "two items")
  T.eq(await q:get(), nil, "nil")
  T.eq(await q:get(), false, "false")
end)

T.case("queue: put blocks on a full queue until a get makes room", async function()
  local q = asyncio.Queue(2)
  local log = {}
  local producer = go(async function()
    for i = 1, 5 do
      await q:put(i)
      log[#log + 1] = "put" .. i
    end
  end)
  await settle()
  T.eq(#log, 2, "two puts went through")
  T.eq(q:qsize(), 2, "queue holds maxsize items")
  for i = 1, 5 do
    T.eq(await q:get(), i, "item " .. i)
    T.ok(q:qsize() <= 2, "never more than maxsize queued")
  end
  await producer
  T.eq(#log, 5, "all puts done")
end)

T.case("queue: blocked getters are served in FIFO order", async function()
  local q = asyncio.Queue()
  local got = {}
  local tasks = {}
  for i = 1, 10 do
    tasks[i] = go(async function() got[i] = await q:get() end)
  end
  await settle()
  for i = 1, 10 do q:put_nowait(i * 10) end
  for i = 1, 10 do await tasks[i] end
  for i = 1, 10 do T.eq(got[i], i * 10, "getter " .. i) end
end)

T.case("queue: blocked putters are served in FIFO order", async function()
  local q = asyncio.Queue(1)
  q:put_nowait(0)
  local tasks = {}
  for i = 1, 10 do tasks[i] = go(async function() await q:put(i) end) end
  await settle()
  for i = 0, 10 do T.eq(await q:get(), i, "item " .. i) end
  for i = 1, 10 do await tasks[i] end
end)

T.case("priority queue: numbers, strings and tables with __lt", async function()
  local q = asyncio.PriorityQueue()
  for _, v in ipairs{5, 1, 4, 2, 3, 9, 0, 7, 8, 6} do q:put_nowait(v) end
  for i = 0, 9 do T.eq(q:get_nowait(), i, "number " .. i) end
  for _, v in ipairs{"pear", "apple", "fig"} do q:put_nowait(v) end
  T.eq(q:get_nowait(), "apple", "strings by <")
  T.eq(q:get_nowait(), "fig", "strings by <")
  T.eq(q:get_nowait(), "pear", "strings by <")
  local V = {__lt = function(a, b) return a.k > b.k end}  -- reversed
  for k = 1, 3 do q:put_nowait(setmetatable({k = k}, V)) end
  T.eq(q:get_nowait().k, 3, "__lt decides")
  T.eq(q:get_nowait().k, 2, "__lt decides")
  T.eq(q:get_nowait().k, 1, "__lt decides")
end)

T.case("priority queue: list tables order like Python tuples", async function()
  local q = asyncio.PriorityQueue()
  local job = {}  -- not comparable: only reached on a tie with itself
  q:put_nowait({2, "b"})
  q:put_nowait({1, "z"})
  q:put_nowait({2, "a"})
  q:put_nowait({1, "y", 0})
  q:put_nowait({1, "y"})
  q:put_nowait({0, job})
  T.eq(q:get_nowait()[2], job, "priority 0 first, item never compared")
  local e = q:get_nowait()
  T.eq(e[2], "y", "{1,'y'} before {1,'y',0}: a prefix is smaller")
  T.eq(#e, 2, "the shorter one")
  T.eq(#q:get_nowait(), 3, "then {1,'y',0}")
  T.eq(q:get_nowait()[2], "z", "then {1,'z'}")
  T.eq(q:get_nowait()[2], "a", "ties on priority compare the next element")
  T.eq(q:get_nowait()[2], "b", "last")
  -- nested lists compare element by element too
  q:put_nowait({1, {2, 1}})
  q:put_nowait({1, {1, 9}})
  T.eq(q:get_nowait()[2][1], 1, "nested list compared")
  q:get_nowait()
  T.eq(q:empty(), true, "drained")
end)

T.case("priority queue: blocking get and maxsize", async function()
  local q = asyncio.PriorityQueue(2)
  local t = go(async function() return await q:get() end)
  await settle()
  await q:put({3, "x"})
  T.eq((await t)[1], 3, "blocked get receives the item")
  q:put_nowait({2, "b"})
  q:put_nowait({1, "a"})
  T.raises(asyncio.QueueFull, function() q:put_nowait({0, "c"}) end, "full")
  T.eq((await q:get())[2], "a", "lowest first")
end)

T.case("lifo queue: last in, first out", async function()
  local q = asyncio.LifoQueue()
  for i = 1, 5 do await q:put(i) end
  for i = 5, 1, -1 do T.eq(await q:get(), i, "item " .. i) end
  T.raises(asyncio.QueueEmpty, function() q:get_nowait() end, "empty")
end)

T.case("queue: join waits for a task_done per item", async function()
  local q = asyncio.Queue()
  await q:join()  -- nothing put: returns at once
  for i = 1, 3 do q:put_nowait(i) end
  local joined = false
  local j = go(async function() await q:join(); joined = true end)
  for _ = 1, 3 do await q:get() end
  await settle()
  T.eq(joined, false, "getting is not finishing")
  q:task_done()
  q:task_done()
  await settle()
  T.eq(joined, false, "one item unfinished")
  q:task_done()
  await j
  T.eq(joined, true, "joined after the last task_done")
  T.raises(asyncio.ValueError, function() q:task_done() end, "task_done too many times")
end)

T.case("queue: workers with join (the documented pattern)", async function()
  local q = asyncio.Queue()
  local total = 0
  local workers = {}
  for w = 1, 3 do
    workers[w] = go(async function()
      while true do
        local n = await q:get()
        await asyncio.sleep(0)
        total = total + n
        q:task_done()
      end
    end)
  end
  for i = 1, 100 do q:put_nowait(i) end
  await q:join()
  T.eq(total, 5050, "every item processed before join returned")
  for w = 1, 3 do workers[w]:cancel() end
  local done = await asyncio.wait(workers)
  T.eq(done.n, 3, "workers stopped")
end)

T.case("queue: shutdown lets get drain, then raises; put raises at once", async function()
  local q = asyncio.Queue()
  q:put_nowait(1)
  q:put_nowait(2)
  q:shutdown()
  T.raises(asyncio.QueueShutDown, q:put(3), "put after shutdown")
  T.raises(asyncio.QueueShutDown, function() q:put_nowait(3) end, "put_nowait after shutdown")
  T.eq(await q:get(), 1, "queued items still come out")
  T.eq(q:get_nowait(), 2, "queued items still come out")
  T.raises(asyncio.QueueShutDown, q:get(), "get on a shut-down empty queue")
  T.raises(asyncio.QueueShutDown, function() q:get_nowait() end, "get_nowait too")
end)

T.case("queue: shutdown wakes every blocked getter and putter", async function()
  local getq = asyncio.Queue()
  local getters = {}
  for i = 1, 5 do getters[i] = asyncio.create_task(getq:get()) end
  local putq = asyncio.Queue(1)
  putq:put_nowait("x")
  local putters = {}
  for i = 1, 5 do putters[i] = asyncio.create_task(putq:put(i)) end
  await settle()
  getq:shutdown()
  putq:shutdown()
  for i = 1, 5 do
    T.raises(asyncio.QueueShutDown, getters[i], "getter " .. i)
    T.raises(asyncio.QueueShutDown, putters[i], "putter " .. i)
  end
  T.eq(putq:qsize(), 1, "no blocked put got in")
  T.eq(await putq:get(), "x", "the queued item still comes out")
end)

T.case("queue: shutdown(immediate) drops items, releases join and getters", async function()
  local q = asyncio.Queue()
  for i = 1, 3 do q:put_nowait(i) end
  local joiner = asyncio.create_task(q:join())
  await settle()
  q:shutdown(true)
  T.eq(q:qsize(), 0, "items dropped")
  await joiner  -- each dropped item counts as done
  T.raises(asyncio.QueueShutDown, q:get(), "get raises at once")
  T.raises(asyncio.ValueError, function() q:task_done() end, "nothing left unfinished")
end)

T.case("queue: shutdown(immediate) keeps join waiting for items already taken", async function()
  local q = asyncio.Queue()
  q:put_nowait(1)
  q:put_nowait(2)
  await q:get()   -- taken, not yet done
  local joiner = asyncio.create_task(q:join())
  q:shutdown(true)
  await settle()
  T.eq(joiner:done(), false, "one item is still being worked on")
  q:task_done()
  await joiner
end)

T.case("queue: a getter cancelled while waiting is removed", async function()
  local q = asyncio.Queue()
  local a = asyncio.create_task(q:get())
  local b = asyncio.create_task(q:get())
  await settle()
  a:cancel()
  T.raises(asyncio.CancelledError, a, "a cancelled")
  q:put_nowait("item")
  T.eq(await b, "item", "b gets the item")
end)

T.case("queue: a get cancelled right after it was woken loses no item", async function()
  local q = asyncio.Queue()
  local a = asyncio.create_task(q:get())
  local b = asyncio.create_task(q:get())
  await settle()
  q:put_nowait("item")  -- wakes a ...
  a:cancel()            -- ... which is cancelled before it ran
  T.raises(asyncio.CancelledError, a, "a cancelled")
  T.eq(await b, "item", "b was woken in a's place and got the item")
  T.eq(q:qsize(), 0, "nothing left over")
end)

T.case("queue: a put cancelled after it was woken passes the slot on", async function()
  local q = asyncio.Queue(1)
  q:put_nowait(0)
  local a = asyncio.create_task(q:put("a"))
  local b = asyncio.create_task(q:put("b"))
  await settle()
  T.eq(q:get_nowait(), 0, "make room: wakes a ...")
  a:cancel()  -- ... which is cancelled before it ran
  T.raises(asyncio.CancelledError, a, "a cancelled")
  await b
  T.eq(q:qsize(), 1, "exactly one item")
  T.eq(q:get_nowait(), "b", "b's item got in, a's did not")
end)

local async function round_trips(q, n)
  for i = 1, n do
    await q:put(i)
    T.eq(await q:get(), i, "round trip " .. i)
  end
end

T.case("queue: put/get allocate no Future, even when they wait", async function()
  local made = 0
  local Future = asyncio.Future
  asyncio.Future = function(...)
    made = made + 1
    return Future(...)
  end
  local q = asyncio.Queue(4)
  local ok, err = pcall(await, round_trips(q, 100))
  local getter = asyncio.create_task(q:get())
  await settle()
  q:put_nowait("x")
  local got = await getter
  -- The instrument works: it counts a Future made here.
  asyncio.Future()
  asyncio.Future = Future
  if not ok then error(err, 0) end
  T.eq(got, "x", "the waiting get")
  T.eq(made, 1, "futures made (only the instrument's own)")
end)

T.case("queue: items given back by cancelled getters keep their order", async function()
  local q = asyncio.Queue()
  local a = asyncio.create_task(q:get())
  local b = asyncio.create_task(q:get())
  await settle()
  q:put_nowait("h1")   -- handed to a
  q:put_nowait("h2")   -- handed to b
  q:put_nowait("s3")   -- queued
  a:cancel()
  b:cancel()           -- both before they ran
  await settle()
  local out = {}
  while not q:empty() do out[#out + 1] = q:get_nowait() end
  T.eq(table.concat(out, ","), "h1,h2,s3", "FIFO order kept")
  local l = asyncio.LifoQueue()
  a = asyncio.create_task(l:get())
  await settle()
  l:put_nowait("h")
  a:cancel()
  l:put_nowait("s")
  await settle()
  T.eq(l:get_nowait(), "s", "LIFO: the later item first")
  T.eq(l:get_nowait(), "h", "then the one given back")
end)

T.case("queue: shutdown(immediate) also drops items handed to getters not yet run", async function()
  local q = asyncio.Queue()
  local a = asyncio.create_task(q:get())
  await settle()
  q:put_nowait(1)      -- handed to a, which has not run
  local j = asyncio.create_task(q:join())
  q:shutdown(true)
  T.raises(asyncio.QueueShutDown, a, "a raises, as in asyncio")
  await j              -- the dropped item counts as done
end)

T.case("queue: a getter waiting inside a generator gets what is put, and shutdown finds it", async function()
  local q = asyncio.Queue()
  local got = {}
  local gen = coroutine.wrap(function()
    while true do coroutine.yield(await q:get()) end
  end)
  local consumer = asyncio.create_task((async function()
    for _ = 1, 3 do got[#got + 1] = gen() end
  end)())
  for i = 1, 3 do
    await asyncio.sleep(0)  -- the generator's get is waiting now
    await q:put("item" .. i)
  end
  await consumer
  T.eq(got, {"item1", "item2", "item3"}, "handed through the generator's own stack")
  -- Handed, then dropped by shutdown(immediate) before the getter ran.
  local q2 = asyncio.Queue()
  local gen2 = coroutine.wrap(function() return await q2:get() end)
  local t = asyncio.create_task((async function() return gen2() end)())
  await asyncio.sleep(0)
  q2:put_nowait("dropped")
  q2:shutdown(true)
  T.raises(asyncio.QueueShutDown, t, "the getter sees the shutdown, not the item")
end)

T.case("queue: growing a ring that has wrapped keeps every item in order", async function()
  for _, kind in ipairs({"Queue", "LifoQueue"}) do
    local q = asyncio[kind]()
    local expect, out = {}, {}
    for round = 1, 6 do
      for i = 1, round * 3 do q:put_nowait(round * 100 + i) end
      for _ = 1, round do out[#out + 1] = q:get_nowait() end
    end
    while not q:empty() do out[#out + 1] = q:get_nowait() end
    T.eq(#out, 63, kind .. ": every item")
    if kind == "Queue" then
      for round = 1, 6 do for i = 1, round * 3 do expect[#expect + 1] = round * 100 + i end end
      T.eq(out, expect, "FIFO order across growths")
    end
  end
end)

T.case("queue: a getter cancelled after it was handed an item passes it on before a later put", async function()
  local q = asyncio.Queue()
  local g1 = asyncio.create_task(q:get())
  local g2 = asyncio.create_task(q:get())
  await asyncio.sleep(0)
  q:put_nowait("a")  -- handed to g1, which has not run yet
  g1:cancel()
  q:put_nowait("b")
  T.eq(await g2, "a", "the next getter gets the first item, as in asyncio")
  T.eq(q:get_nowait(), "b", "the later one waits in the queue")
  T.raises(asyncio.CancelledError, g1, "the cancelled getter")
  local q2 = asyncio.Queue()
  local h = asyncio.create_task(q2:get())
  await asyncio.sleep(0)
  q2:put_nowait("x"); h:cancel(); q2:put_nowait("y")
  T.eq({q2:get_nowait(), q2:get_nowait()}, {"x", "y"}, "with no other getter, it goes back to the front")
end)

T.case("queue: waits that time out leave no waiter behind", async function()
  local q = asyncio.Queue(1)
  T.raises(asyncio.TimeoutError, asyncio.wait_for(q:get(), 0.001), "get times out")
  q:put_nowait(1)
  T.raises(asyncio.TimeoutError, asyncio.wait_for(q:put(2), 0.001), "put times out")
  T.eq(tostring(q), "<asyncio.Queue maxsize=1 qsize=1 tasks=1>", "no getter or putter left")
end)

T.case("queue: contended put/get round trips allocate nothing", async function()
  local q1, q2 = asyncio.Queue(), asyncio.Queue()
  local p = asyncio.create_task((async function()
    while true do
      local x = await q1:get()
      if x == false then return end
      await q2:put(x)
    end
  end)())
  for i = 1, 100 do await q1:put(i); await q2:get() end  -- warm up
  collectgarbage()
  collectgarbage("stop")
  local before = collectgarbage("count")
  for i = 1, 10000 do await q1:put(i); await q2:get() end
  local grown = collectgarbage("count") - before
  collectgarbage("restart")
  await q1:put(false)
  await p
  T.ok(grown < 1, "KiB allocated by 10000 round trips that each wait twice: " .. grown)
end)

T.run()
