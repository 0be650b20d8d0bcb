-- Futures, tasks, sleep, callbacks, gather and cancellation (the core).
local T = require "asyncio.test"
local loop = asyncio.get_running_loop()

T.case("sleep returns its extra arguments", async function()
  local a, b = await asyncio.sleep(0.001, "x", 2)
  T.eq(a, "x", "first value"); T.eq(b, 2, "second value")
  T.eq(select("#", await asyncio.sleep(0)), 0, "no values after sleep(0)")
end)

T.case("awaiting a coroutine runs it inline with all its results", async function()
  local async function three() return 1, nil, 3 end
  local r = table.pack(await three())
  T.eq(r.n, 3, "result count"); T.eq(r[3], 3, "third result")
end)

T.case("a coroutine runs nothing until awaited", async function()
  local ran = false
  local async function f() ran = true end
  local c = f()
  T.ok(asyncio.iscoroutine(c), "iscoroutine"); T.eq(ran, false, "ran before await")
  await c
  T.eq(ran, true, "ran after await")
end)

T.case("awaiting a coroutine twice raises RuntimeError", async function()
  local async function f() return 1 end
  local c = f()
  await c
  local e = T.raises(asyncio.RuntimeError, function() return await(c) end, "second await")
  T.match(tostring(e), "already awaited", "message")
end)

T.case("awaiting a non-awaitable raises TypeError", async function()
  local e = T.raises(asyncio.TypeError, function() return await(42) end)
  T.match(tostring(e), "^TypeError: object is not awaitable", "message")
  T.raises(asyncio.TypeError, function() return await({}) end, "plain table")
end)

T.case("__await objects are awaitable", async function()
  local obj = setmetatable({}, { __await = function(self) await asyncio.sleep(0); return "via __await", 2 end })
  local a, b = await obj
  T.eq(a, "via __await", "first"); T.eq(b, 2, "second")
end)

T.case("await works from nested plain functions", async function()
  local function helper(x) return await asyncio.sleep(0, x * 2) end
  local function outer(x) return helper(x) + 1 end
  T.eq(outer(5), 11, "result through two plain calls")
end)

T.case("await inside a coroutine.wrap generator suspends the task", async function()
  local gen = coroutine.wrap(function()
    for i = 1, 3 do
      local v = await asyncio.sleep(0.001, i * 10)
      coroutine.yield(v)
    end
  end)
  T.eq({gen(), gen(), gen()}, {10, 20, 30}, "generated values")
  local co = coroutine.create(function(a) local b = await asyncio.sleep(0, a + 1); return b end)
  local ok, v = coroutine.resume(co, 1)
  T.eq(ok, true, "resume ok"); T.eq(v, 2, "value through resume")
end)

T.case("future result, exception and states", async function()
  local f = asyncio.Future()
  T.eq(f:done(), false, "pending")
  T.raises(asyncio.InvalidStateError, function() return f:result() end, "result while pending")
  f:set_result(1, 2)
  T.eq({f:result()}, {1, 2}, "several results")
  T.raises(asyncio.InvalidStateError, function() f:set_result(3) end, "set twice")
  T.eq(f:cancel(), false, "cancel after done")
  local g = asyncio.Future()
  g:set_exception(asyncio.ValueError("bad"))
  T.eq(tostring(g:exception()), "ValueError: bad", "exception()")
  T.raises(asyncio.ValueError, g, "await a failed future")
end)

T.case("done callbacks run soon, in order, and can be removed", async function()
  local f = loop:create_future()
  local seen = {}
  local function a(fut) seen[#seen + 1] = "a" end
  local function b(fut) seen[#seen + 1] = "b:" .. fut:result() end
  f:add_done_callback(a); f:add_done_callback(b); f:add_done_callback(a)
  T.eq(f:remove_done_callback(a), 2, "removed count")
  f:set_result("r")
  T.eq(#seen, 0, "not run synchronously")
  await asyncio.sleep(0)
  T.eq(seen, {"b:r"}, "callbacks run")
  f:add_done_callback(a)
  await asyncio.sleep(0)
  T.eq(seen, {"b:r", "a"}, "callback added after done runs too")
end)

T.case("an error in a done callback is reported and the loop goes on", async function()
  local reported
  loop:set_exception_handler(function(l, ctx) reported = ctx end)
  local f = asyncio.Future()
  f:add_done_callback(function() error("cb failed") end)
  f:set_result(1)
  await asyncio.sleep(0)
  loop:set_exception_handler(nil)
  T.ok(reported, "handler called")
  T.match(tostring(reported.exception), "cb failed", "exception in context")
  T.match(reported.traceback, "stack traceback", "traceback in context")
end)

T.case("tasks run concurrently and return results", async function()
  local order = {}
  local async function worker(name, d) await asyncio.sleep(d); order[#order + 1] = name; return name end
  local t1 = asyncio.create_task(worker("slow", 0.02))
  local t2 = asyncio.create_task(worker("fast", 0.001), { name = "fast-one" })
  T.eq(t2:get_name(), "fast-one", "name option")
  T.eq(await t1, "slow", "t1 result"); T.eq(await t2, "fast", "t2 result")
  T.eq(order, {"fast", "slow"}, "completion order")
  T.match(tostring(t1), "^<Task finished name='Task%-%d+' result=slow>$", "repr when done")
  local t3 = asyncio.create_task(worker("x", 0))
  T.match(tostring(t3), "^<Task pending name='Task%-%d+' coro=<coroutine worker>>$", "repr before it starts")
  await asyncio.sleep(0)
  T.match(tostring(t3), "^<Task pending name='Task%-%d+' coro=<coroutine worker>>$", "repr once started")
  await t3
  t3:cancel()
  local t4 = asyncio.create_task(worker("y", 1))
  await asyncio.sleep(0)
  t4:cancel()
  T.raises(asyncio.CancelledError, t4, "cancelled")
  T.match(tostring(t4), "^<Task cancelled name='Task%-%d+'>$", "repr when cancelled")
  local async function bad() error(asyncio.ValueError("no")) end
  local t5 = asyncio.create_task(bad())
  T.raises(asyncio.ValueError, t5, "failed")
  T.match(tostring(t5), "^<Task finished name='Task%-%d+' exception=ValueError: no>$", "repr when failed")
end)

T.case("a task nobody holds still runs to completion", async function()
  local done = asyncio.Future()
  asyncio.create_task(function() await asyncio.sleep(0.001); collectgarbage(); done:set_result("ran") end)
  collectgarbage()
  T.eq(await done, "ran", "unreferenced task finished")
end)

T.case("cancel a sleeping task: CancelledError with message", async function()
  local t = asyncio.create_task(asyncio.sleep(10))
  await asyncio.sleep(0)
  T.eq(t:cancel("stop now"), true, "cancel() result")
  local e = T.raises(asyncio.CancelledError, t, "await cancelled task")
  T.eq(e.message, "stop now", "cancel message")
  T.ok(t:cancelled(), "cancelled()")
  T.eq(t:cancel(), false, "cancelling a finished task")
end)

T.case("cancel before the task starts: its function never runs", async function()
  local ran = false
  local t = asyncio.create_task(function() ran = true end)
  t:cancel()
  T.raises(asyncio.CancelledError, t)
  T.eq(ran, false, "function ran")
end)

T.case("a task may catch CancelledError and go on; cancelling/uncancel", async function()
  local got = asyncio.Future()
  local t = asyncio.create_task(function()
    local ok, e = pcall(await, asyncio.sleep(10))
    local me = asyncio.current_task()
    got:set_result(me:cancelling())
    T.eq(me:uncancel(), 0, "uncancel result")
    return "survived"
  end)
  await asyncio.sleep(0)
  t:cancel()
  T.eq(await got, 1, "cancelling() inside")
  T.eq(await t, "survived", "task result")
end)

T.case("cancelling a task cancels the future it awaits", async function()
  local f = asyncio.Future()
  local t = asyncio.create_task(function() return await f end)
  await asyncio.sleep(0)
  t:cancel("bye")
  T.raises(asyncio.CancelledError, t)
  T.ok(f:cancelled(), "awaited future cancelled")
end)

T.case("to-be-closed variables close (and may await) when a task fails", async function()
  local log = {}
  local t = asyncio.create_task(function()
    local guard <close> = setmetatable({}, { __close = function(_, err)
      await asyncio.sleep(0.001)
      log[#log + 1] = "closed: " .. tostring(err):match("boom") end })
    error("boom")
  end)
  T.raises(nil, t)
  T.eq(log, {"closed: boom"}, "close ran")
end)

T.case("errors keep their value through await", async function()
  local t = asyncio.create_task(function() error({code = 7}) end)
  local ok, e = pcall(await, t)
  T.eq(ok, false, "failed"); T.eq(e.code, 7, "table error unchanged")
  local t2 = asyncio.create_task(function() error("plain", 0) end)
  local _, e2 = pcall(await, t2)
  T.eq(e2, "plain", "string error unchanged")
end)

T.case("a task cannot await itself", async function()
  local t
  t = asyncio.create_task(function() await asyncio.sleep(0); return await t end)
  local e = T.raises(asyncio.RuntimeError, t)
  T.match(tostring(e), "itself", "message")
end)

T.case("gather returns each first result in order", async function()
  local async function v(x, d) await asyncio.sleep(d); return x, "extra" end
  local r = await asyncio.gather(v(1, 0.003), v(2, 0.001), asyncio.sleep(0, 3))
  T.eq(r, {1, 2, 3, n = 3}, "results")
  local empty = await asyncio.gather()
  T.eq(empty, {n = 0}, "empty gather")
end)

T.case("gather fails with the first error; return_exceptions collects", async function()
  local async function bad() await asyncio.sleep(0); error(asyncio.ValueError("x")) end
  local async function good() await asyncio.sleep(0.005); return "g" end
  T.raises(asyncio.ValueError, asyncio.gather(good(), bad()), "first error")
  local r = await asyncio.gather(good(), bad(), { return_exceptions = true })
  T.eq(r[1], "g", "good result")
  T.ok(asyncio.isinstance(r[2], asyncio.ValueError), "exception in place")
end)

T.case("cancelling a gather cancels its children", async function()
  local c1 = asyncio.create_task(asyncio.sleep(10))
  local c2 = asyncio.create_task(asyncio.sleep(10))
  local g = asyncio.gather(c1, c2)
  await asyncio.sleep(0)
  g:cancel()
  T.raises(asyncio.CancelledError, g, "gather")
  await asyncio.sleep(0)
  T.ok(c1:cancelled() and c2:cancelled(), "children cancelled")
end)

T.case("call_soon, call_later and call_at run in time order; cancel works", async function()
  local seen = {}
  local done = asyncio.Future()
  loop:call_later(0.02, function() seen[#seen + 1] = "later"; done:set_result() end)
  loop:call_at(loop:time() + 0.01, function(x) seen[#seen + 1] = x end, "at")
  loop:call_soon(function(a, b) seen[#seen + 1] = a .. b end, "so", "on")
  local h = loop:call_later(0.001, function() seen[#seen + 1] = "cancelled" end)
  h:cancel()
  T.ok(h:cancelled(), "cancelled()")
  await done
  T.eq(seen, {"soon", "at", "later"}, "order")
end)

T.case("handles: when, tostring, cancelled, and arguments with holes", async function()
  local got
  local done = asyncio.Future()
  local t0 = loop:time()
  local h = loop:call_later(0.001, function(...) got = table.pack(...); done:set_result() end, nil, 2, nil)
  T.ok(h:when() >= t0 + 0.001 and h:when() <= loop:time() + 0.001, "when() is the deadline")
  T.eq(tostring(h), "<TimerHandle>", "tostring of a timer")
  T.eq(h:cancelled(), false, "not cancelled")
  local s = loop:call_soon(function() end)
  T.eq(s:when(), nil, "a call_soon handle has no when")
  T.eq(tostring(s), "<Handle>", "tostring of a callback")
  s:cancel()
  T.eq(tostring(s), "<Handle cancelled>", "tostring once cancelled")
  await done
  T.eq(got.n, 3, "argument count with nil holes")
  T.eq(got[2], 2, "second argument")
  T.ok(h:when() >= t0 + 0.001, "when() after it ran")
end)

T.case("cancelling a handle that ran, or twice, leaves the others alone", async function()
  local ran = {}
  local h1 = loop:call_soon(function() ran[#ran + 1] = 1 end)
  await asyncio.sleep(0)
  -- The next handles may reuse what h1 held: h1 must not reach them.
  local done = asyncio.Future()
  local h2 = loop:call_soon(function() ran[#ran + 1] = 2 end)
  local h3 = loop:call_later(0.001, function() ran[#ran + 1] = 3; done:set_result() end)
  h1:cancel()
  h1:cancel()
  T.eq(h1:cancelled(), true, "cancelled() after a late cancel")
  T.eq(h2:cancelled(), false, "the next handle is not cancelled")
  await done
  T.eq(ran, {1, 2, 3}, "every handle ran once")
  local h4 = loop:call_soon(function() ran[#ran + 1] = 4 end)
  h4:cancel()
  h4:cancel()
  await asyncio.sleep(0)
  T.eq(ran, {1, 2, 3}, "a handle cancelled in the ready queue does not run")
end)


-- Every live handle fired once, in the order expected.
local function check_fired(fired, expect)
  T.eq(#fired, #expect, "every live handle fired once")
  for i = 1, #expect do
    if fired[i] ~= expect[i] then T.eq(fired[i], expect[i], "handle fired at position " .. i) end
  end
end
T.case("many timers fire in (when, scheduling) order, also past ones and ties", async function()
  -- Enough for the heap to be sorted at once: due times in the past, many
  -- of them equal, some with arguments, half of them cancelled.
  local x, n = 12345, 3000
  local function rand(m) x = x * 48271 % 2147483647; return x % m end
  local base = loop:time() - 1
  local fired, want, handles = {}, {}, {}
  local function cb(i) fired[#fired + 1] = i end
  for i = 1, n do
    local when = base + rand(i % 3 == 0 and 8 or 100000) * 1e-6
    if i % 2 == 0 then
      handles[i] = loop:call_at(when, cb, i)
    else
      handles[i] = loop:call_at(when, function() fired[#fired + 1] = i end)
    end
    want[#want + 1] = {when, i}
  end
  local cancelled = {}
  for i = 1, n do
    if rand(3) == 0 then handles[i]:cancel(); cancelled[i] = true end
  end
  table.sort(want, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  local expect = {}
  for _, w in ipairs(want) do if not cancelled[w[2]] then expect[#expect + 1] = w[2] end end
  await asyncio.sleep(0.005)
  check_fired(fired, expect)
end)

T.case("a timer that keeps rescheduling itself in the past does not starve tasks", async function()
  local spins, stop = 0, false
  local function spin()
    spins = spins + 1
    if not stop then loop:call_at(loop:time() - 1, spin) end
  end
  loop:call_at(loop:time() - 1, spin)
  await asyncio.sleep(0.002)  -- this task's own timer still fires
  stop = true
  T.ok(spins > 0, "the timer ran")
  await asyncio.sleep(0.001)
end)

T.case("timers keep their order through cancels, compaction and new timers", async function()
  local fired, x = {}, 7
  local function rand(m) x = x * 48271 % 2147483647; return x % m end
  local live, handles, whens = {}, {}, {}
  local t0 = loop:time() + 0.002
  for i = 1, 2000 do
    -- One delay for the first half (scheduled in order), random after.
    whens[i] = i <= 1000 and t0 + i * 1e-6 or t0 + rand(3000) * 1e-6
    handles[i] = loop:call_at(whens[i], function() fired[#fired + 1] = i end)
    live[i] = true
  end
  for i = 1, 2000 do  -- cancelling most of them rebuilds the heap
    if i % 4 ~= 0 then handles[i]:cancel(); live[i] = nil end
  end
  for i = 2001, 2300 do
    whens[i] = t0 + rand(3000) * 1e-6
    handles[i] = loop:call_at(whens[i], function() fired[#fired + 1] = i end)
    live[i] = true
  end
  local expect = {}
  for i in pairs(live) do expect[#expect + 1] = i end
  table.sort(expect, function(a, b) return whens[a] < whens[b] or (whens[a] == whens[b] and a < b) end)
  await asyncio.sleep(0.01)
  check_fired(fired, expect)
end)

T.case("a handle due before a sleep's deadline runs before the sleeper, whenever the heap's timer was armed", async function()
  -- The sleeper's deadline passes while this task blocks; the handle's
  -- deadline is earlier still, but the heap's ev_timer is armed for it
  -- only now, after the sleeper's: asyncio's one heap runs the handle
  -- first, and so must moonloop (it used to wake the sleeper first).
  local order = {}
  local sleeper = asyncio.create_task((async function()
    await asyncio.sleep(0.001)
    order[#order + 1] = "sleeper"
  end)())
  await asyncio.sleep(0) -- the sleeper starts and arms its timer
  local t = loop:time()
  while loop:time() - t < 0.003 do end -- blocks past the sleeper's deadline
  loop:call_at(t - 0.5, function() order[#order + 1] = "handle" end)
  await sleeper
  T.eq(table.concat(order, " "), "handle sleeper")
end)

T.case("timers keep their order as many fire at once, then cancels and new ones", async function()
  local fired, whens, handles = {}, {}, {}
  local now = loop:time()
  local function add(i, when)
    whens[i] = when
    handles[i] = loop:call_at(when, function() fired[#fired + 1] = i end)
  end
  for i = 1, 5000 do add(i, now - 1 + (i % 7) * 1e-3) end     -- due at once
  for i = 5001, 5600 do add(i, now + 0.05 + i * 1e-6) end      -- later
  await asyncio.sleep(0.002)
  T.eq(#fired, 5000, "the past ones fired")
  for k = 2, 5000 do
    local a, b = fired[k - 1], fired[k]
    if whens[a] > whens[b] or (whens[a] == whens[b] and a > b) then
      T.eq(b, a, "handle fired at position " .. k)
    end
  end
  local live = {}
  for i = 5001, 5600 do  -- most of them: the heap is rebuilt
    if i % 3 == 0 then live[#live + 1] = i else handles[i]:cancel() end
  end
  for i = 5601, 8800 do add(i, now + 0.05 + i * 1e-6); live[#live + 1] = i end
  await asyncio.sleep(0.08)
  T.eq(#fired, 5000 + #live, "every live handle fired once")
  for k, i in ipairs(live) do
    if fired[5000 + k] ~= i then T.eq(fired[5000 + k], i, "handle fired at position " .. 5000 + k) end
  end
end)

T.case("an error in a timer callback is reported and the batch goes on", async function()
  local reported, seen = nil, {}
  loop:set_exception_handler(function(l, ctx) reported = ctx end)
  local past = loop:time() - 1
  loop:call_at(past, function() seen[#seen + 1] = 1 end)
  loop:call_at(past + 0.1, function() error("timer failed") end)
  loop:call_at(past + 0.2, function(v) seen[#seen + 1] = v end, 3)
  await asyncio.sleep(0.002)
  loop:set_exception_handler(nil)
  T.eq(seen, {1, 3}, "the other callbacks ran")
  T.ok(reported, "handler called")
  T.eq(reported.message, "Exception in callback", "message")
  T.match(tostring(reported.exception), "timer failed", "exception in context")
  T.match(reported.traceback, "stack traceback", "traceback in context")
end)

T.case("current_task, all_tasks, ensure_future, isfuture", async function()
  T.ok(asyncio.current_task() ~= nil, "current task in a task")
  local t = asyncio.ensure_future(asyncio.sleep(0.01))
  T.ok(asyncio.isfuture(t), "ensure_future makes a task")
  T.eq(asyncio.ensure_future(t), t, "a task stays itself")
  local all = asyncio.all_tasks()
  local found = false
  for i = 1, all.n do if all[i] == t then found = true end end
  T.ok(found, "all_tasks contains it")
  await t
end)

T.case("exceptions: classes, isinstance, tostring, OSError subclasses", async function()
  local e = asyncio.ConnectionRefusedError(111, "Connection refused")
  T.eq(tostring(e), "ConnectionRefusedError: [Errno 111] Connection refused", "tostring")
  T.ok(asyncio.isinstance(e, asyncio.OSError), "is an OSError")
  T.ok(asyncio.isinstance(e, asyncio.ConnectionError), "is a ConnectionError")
  T.ok(not asyncio.isinstance(e, asyncio.TimeoutError), "not a TimeoutError")
  T.ok(not asyncio.isinstance("text", asyncio.Exception), "a string is no instance")
  T.ok(not asyncio.isinstance(asyncio.CancelledError(), asyncio.Exception), "CancelledError is not an Exception")
  local os_e = asyncio.OSError(104, "Connection reset by peer")
  T.ok(asyncio.isinstance(os_e, asyncio.ConnectionResetError), "OSError picks its subclass by errno")
  local ir = asyncio.IncompleteReadError("ab", 5)
  T.eq(ir.partial, "ab", "partial"); T.eq(ir.expected, 5, "expected")
end)

T.case("cancelling a task that awaits a task cancels the inner one properly", async function()
  local cleaned = false
  local inner = asyncio.create_task(function()
    local guard <close> = setmetatable({}, { __close = function() await asyncio.sleep(0.001); cleaned = true end })
    await asyncio.sleep(10)
  end)
  local outer = asyncio.create_task(function() return await inner end)
  await asyncio.sleep(0)
  outer:cancel("outer")
  T.eq(inner:cancelling(), 1, "the cancel reached the inner task")
  T.raises(asyncio.CancelledError, outer, "outer")
  T.ok(inner:cancelled(), "inner cancelled")
  T.ok(cleaned, "the inner task finished its cleanup before the outer woke")
end)

T.case("require of a Lua file applies the async pass", async function()
  local dir = T.tmpname("")
  os.execute("mkdir -p " .. dir)
  local f = io.open(dir .. "/dialectmod.lua", "w")
  f:write("local M = {}\nasync function M.twice(x)\n  return await asyncio.sleep(0, x * 2)\nend\nreturn M\n")
  f:close()
  local saved = package.path
  package.path = dir .. "/?.lua;" .. saved
  local m = require "dialectmod"
  package.path = saved
  T.eq(await m.twice(21), 42, "module function")
end)

T.case("ExceptionGroup is also an Exception", async function()
  local eg = asyncio.ExceptionGroup("many", { asyncio.ValueError("a"), n = 1 })
  T.ok(asyncio.isinstance(eg, asyncio.Exception), "an Exception")
  T.ok(asyncio.isinstance(eg, asyncio.BaseExceptionGroup), "a BaseExceptionGroup")
  T.eq(eg.exceptions.n, 1, "exceptions list")
end)

T.case("cancelling a task that awaits a future inside a generator cancels the future", async function()
  local f = asyncio.Future()
  local async function waiter()
    local gen = coroutine.wrap(function() coroutine.yield(await f) end)
    return gen()
  end
  local t = asyncio.create_task(waiter())
  await asyncio.sleep(0)
  t:cancel("stop")
  T.raises(asyncio.CancelledError, t, "the task ends cancelled")
  T.eq(f:cancelled(), true, "the awaited future was cancelled")
  T.eq(t:cancelled(), true, "the task is cancelled")
end)

T.case("remove_done_callback keeps the rest, from one, two and three callbacks", async function()
  local seen = {}
  local function a() seen[#seen + 1] = "a" end
  local function b() seen[#seen + 1] = "b" end
  local f1, f2, f3 = asyncio.Future(), asyncio.Future(), asyncio.Future()
  f1:add_done_callback(a)
  T.eq(f1:remove_done_callback(b), 0, "one: nothing removed")
  T.eq(f1:remove_done_callback(a), 1, "one: removed")
  f2:add_done_callback(a); f2:add_done_callback(b)
  T.eq(f2:remove_done_callback(a), 1, "two: one removed")
  f2:add_done_callback(a)
  f3:add_done_callback(b); f3:add_done_callback(b); f3:add_done_callback(b)
  T.eq(f3:remove_done_callback(b), 3, "three: all removed")
  f1:set_result(1); f2:set_result(2); f3:set_result(3)
  await asyncio.sleep(0)
  T.eq(seen, {"b", "a"}, "what is left runs, in order")
end)

T.case("a task drops its coroutine when it starts; its repr keeps the name", async function()
  local async function worker() await asyncio.sleep(0) end
  local c = worker()
  local t = asyncio.create_task(c)
  T.eq(t:get_coro(), c, "get_coro() before the task starts")
  await asyncio.sleep(0)
  T.eq(t:get_coro(), nil, "nil once started")
  T.match(tostring(t), "coro=<coroutine [^>]*worker", "repr names the coroutine")
  await t
end)

T.case("create_task turns the Coroutine into its Task in place", async function()
  local async function add(a, b) await asyncio.sleep(0); return a + b end
  local c = add(1, 2)
  T.ok(asyncio.iscoroutine(c), "a Coroutine first")
  local t = asyncio.create_task(c, { name = "adder" })
  T.ok(rawequal(t, c), "the Task is the Coroutine")
  T.ok(not asyncio.iscoroutine(c), "no longer a Coroutine")
  T.ok(asyncio.isfuture(c), "a Task now")
  T.match(tostring(c), "^<Task pending name='adder' coro=<coroutine [^>]*add>>$", "its repr")
  T.eq(await c, 3, "awaiting it awaits the task")
  T.match(tostring(t), "result=3", "done")
  local ok, err = pcall(asyncio.create_task, c)
  T.ok(not ok and tostring(err):find("coroutine was expected"), "a Task is not taken again")
end)

T.case("tasks made in place keep their arguments past the thread pool", async function()
  -- 300 tasks parked at once: past the pool's 256 threads, a task's thread
  -- is its own, in the user value where its function waited.
  local fut = asyncio.Future()
  local async function park(f, i, s) local v = await f; return v + i, s end
  local tasks = {}
  for i = 1, 300 do tasks[i] = asyncio.create_task(park(fut, i, "s" .. i)) end
  await asyncio.sleep(0)
  fut:set_result(1000)
  local r = await asyncio.gather(table.unpack(tasks))
  local okv, oks = true, true
  for i = 1, 300 do
    if r[i] ~= 1000 + i then okv = false end
    local _, s = tasks[i]:result()
    if s ~= "s" .. i then oks = false end
  end
  T.ok(okv, "every task got its arguments")
  T.ok(oks, "and its second result")
end)

T.case("a failed future or task is still a future, and reports if nobody looks", async function()
  local reported = {}
  loop:set_exception_handler(function(_, ctx) reported[#reported + 1] = ctx.message end)
  local f = asyncio.Future()
  f:set_exception(asyncio.ValueError("lost"))
  T.ok(asyncio.isfuture(f), "isfuture after set_exception")
  T.eq(tostring(f:exception()), "ValueError: lost", "exception() retrieves it")
  local async function fail(e) error(e) end
  local t = asyncio.create_task(fail(asyncio.ValueError("task lost")))
  await asyncio.sleep(0)
  T.ok(asyncio.isfuture(t) and t:done(), "a failed task is a done future")
  T.eq(t:get_name():match("^Task%-"), "Task-", "Task methods still there")
  asyncio.create_task(fail("nobody looks"))
  await asyncio.sleep(0)
  t = nil
  collectgarbage(); collectgarbage()
  loop:set_exception_handler(nil)
  T.eq(#reported, 2, "the two unretrieved exceptions reported: " .. table.concat(reported, "; "))
  T.match(reported[1] .. reported[2], "Task exception was never retrieved", "as a task's")
end)

T.case("a task may return thousands of values; one that yields plainly is named in the error", async function()
  local async function many(n)
    local t = {}
    for i = 1, n do t[i] = i end
    return table.unpack(t)
  end
  local r = table.pack(await asyncio.create_task(many(5000)))
  T.eq(r.n, 5000, "all the values"); T.eq(r[5000], 5000, "the last one")
  local g = await asyncio.gather(many(3000), many(2))
  T.eq(g[1], 1, "gather takes the first of many")
  local y = asyncio.create_task((async function() coroutine.yield(1) end)(), {name = "yielder"})
  local e = T.raises(asyncio.RuntimeError, y, "a plain yield fails the task")
  T.match(tostring(e), "task 'yielder' yielded with coroutine.yield%(%)", "named")
  local big = {}
  for i = 1, 70000 do big[i] = i end
  local ok, err = pcall(many, table.unpack(big))
  T.eq(ok, false, "a coroutine of 70,000 arguments is refused")
  T.match(tostring(err), "too many arguments to an async function", "and says so")
end)

T.case("a sleep that cannot suspend (table.sort's comparator) leaves no timer behind", async function()
  local async function f()
    local t = {3, 1, 2}
    return pcall(table.sort, t, function(a, b) await asyncio.sleep(0.01); return a < b end)
  end
  local ok, e = await asyncio.create_task(f())
  T.eq(ok, false, "the sort fails"); T.match(tostring(e), "cannot await here", "and says why")
  collectgarbage(); collectgarbage()  -- the task is gone before the 10 ms
  await asyncio.sleep(0.03)
  T.ok(true, "no timer fired for it")
end)

T.case("a coroutine parked in an await cannot be resumed or closed from outside its task", async function()
  local gen = coroutine.wrap(function()
    while true do coroutine.yield(await asyncio.sleep(0.02, "v")) end
  end)
  local a = asyncio.create_task(function() return gen() end)
  await asyncio.sleep(0)
  local ok, e = pcall(gen)
  T.eq(ok, false, "a second caller of the generator is refused")
  T.match(tostring(e), "awaiting in a task", "and told why")
  T.eq(await a, "v", "the task that owns it is not disturbed")
  local co
  local b = asyncio.create_task(function()
    co = coroutine.running()
    return await asyncio.sleep(0.02, "b done")
  end)
  await asyncio.sleep(0)
  T.eq(select(1, coroutine.resume(co)), false, "resuming a task's thread is refused")
  T.eq(pcall(coroutine.close, co), false, "closing it too")
  T.eq(await b, "b done", "the task finishes as if nothing happened")
  local q = asyncio.Queue()
  local g = coroutine.create(function() return await q:get() end)
  local c = asyncio.create_task(function() return coroutine.resume(g) end)
  await asyncio.sleep(0)
  T.eq(pcall(coroutine.close, g), false, "a generator waiting on a queue cannot be closed")
  q:put_nowait("item")
  T.eq({await c}, {true, "item"}, "and gets its item")
end)

T.case("asyncio.run from a callback of the running loop raises RuntimeError and disturbs nothing", async function()
  local w = asyncio.create_task(asyncio.sleep(0.01, "r"))
  local err
  asyncio.get_running_loop():call_soon(function()
    local c = (async function() end)()
    local ok, e = pcall(asyncio.run, c)
    err = e
    c:close()
  end)
  T.eq(await w, "r", "the other task finishes")
  T.match(tostring(err), "cannot be called from a running event loop", "the error")
end)

T.case("a call_at in the past is a TimerHandle whose when() is its time; call_soon's when() is nil", async function()
  local loop = asyncio.get_running_loop()
  local h = loop:call_at(-5, function() end)
  T.eq(h:when(), -5, "when"); T.eq(tostring(h), "<TimerHandle>", "repr")
  local s = loop:call_soon(function() end)
  T.eq(s:when(), nil, "call_soon"); T.eq(tostring(s), "<Handle>", "repr")
  await asyncio.sleep(0.005)
end)

T.run()
