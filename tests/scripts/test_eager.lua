-- Task factories and eager tasks (issue #12): loop:set_task_factory,
-- loop:get_task_factory, asyncio.Task, asyncio.eager_task_factory and
-- asyncio.create_eager_task_factory, with Python 3.12's semantics.
local T = require "asyncio.test"
local loop = asyncio.get_running_loop()

-- with_factory(f): sets the loop's task factory until the variable
-- holding the result goes out of scope.
local function with_factory(f)
  loop:set_task_factory(f)
  return setmetatable({}, { __close = function() loop:set_task_factory(nil) end })
end

-- ---- the task factory ----

T.case("get_task_factory is nil by default, and what set_task_factory set", function()
  T.eq(loop:get_task_factory(), nil, "default")
  local f = function(l, coro, opts) return asyncio.Task(coro, opts) end
  local _ <close> = with_factory(f)
  T.eq(loop:get_task_factory(), f, "set")
  loop:set_task_factory(nil)
  T.eq(loop:get_task_factory(), nil, "reset with nil")
end)

T.case("create_task calls the factory with the loop, the coroutine and the options", async function()
  local seen = {}
  local _ <close> = with_factory(function(l, coro, opts)
    seen[#seen + 1] = { loop = l, coro = coro, opts = opts }
    return asyncio.Task(coro, opts)
  end)
  local async function f(x) return x + 1 end
  local c = f(1)
  local t = asyncio.create_task(c, { name = "made" })
  T.eq(#seen, 1, "called once")
  T.eq(seen[1].loop, loop, "the loop")
  T.eq(seen[1].coro, c, "the coroutine")
  T.eq(seen[1].opts.name, "made", "the options")
  T.eq(t:get_name(), "made", "the factory's task")
  T.eq(await t, 2, "runs")
  local t2 = loop:create_task(f(2))
  T.eq(#seen, 2, "loop:create_task goes through it too")
  T.eq(seen[2].opts, nil, "no options: nil")
  T.eq(await t2, 3, "runs")
  local r = await asyncio.gather(f(3), f(4))
  T.eq(#seen, 4, "gather wraps its coroutines through it (ensure_future)")
  T.eq(r[1] + r[2], 9, "gather's results")
end)

T.case("create_task returns whatever the factory returns", function()
  local _ <close> = with_factory(function(_, coro) coro:close(); return "not a task" end)
  T.eq(asyncio.create_task((async function() end)()), "not a task", "the factory's value")
end)

T.case("set_task_factory refuses what cannot be called", function()
  local ok, e = pcall(loop.set_task_factory, loop, 42)
  T.eq(ok, false, "raised")
  T.ok(asyncio.isinstance(e, asyncio.TypeError), "TypeError: " .. tostring(e))
  T.match(e.message, "task factory must be a callable or nil, got number", "message")
  T.eq(loop:get_task_factory(), nil, "unchanged")
  local callable = setmetatable({}, { __call = function(_, l, coro, opts) return asyncio.Task(coro, opts) end })
  local _ <close> = with_factory(callable)
  T.eq(loop:get_task_factory(), callable, "a callable table is accepted")
  T.eq(await asyncio.create_task((async function() return "ok" end)()), "ok", "and called")
end)

T.case("asyncio.Task makes a task that no factory sees, queued unless eager_start", async function()
  local called = false
  local _ <close> = with_factory(function(_, coro, opts) called = true; return asyncio.Task(coro, opts) end)
  local ran = false
  local t = asyncio.Task((async function() ran = true; return 5 end)(), { name = "direct" })
  T.eq(called, false, "not through the factory")
  T.eq(ran, false, "not started yet: queued")
  T.eq(t:get_name(), "direct", "named")
  T.eq(await t, 5, "runs when the loop gets to it")
  local c = (async function() end)()
  local e = T.raises(asyncio.TypeError, function() asyncio.Task(c, { eager = true }) end)
  T.match(e.message, "Task%(%) got an unexpected option 'eager'", "options are checked")
  c:close()
end)

-- ---- eager tasks ----

T.case("an eager task runs synchronously in create_task until its first suspension", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local log = {}
  local async function f()
    log[#log + 1] = "before"
    await asyncio.sleep(0)
    log[#log + 1] = "after"
    return "r"
  end
  local t = asyncio.create_task(f())
  T.eq(log, { "before" }, "ran up to its await inside create_task")
  T.eq(t:done(), false, "suspended, pending")
  T.eq(await t, "r", "finishes later")
  T.eq(log, { "before", "after" }, "the rest ran from the loop")
end)

T.case("an eager task that never suspends is done when create_task returns, without queueing", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local order = {}
  loop:call_soon(function() order[#order + 1] = "callback queued first" end)
  local t = asyncio.create_task((async function(x) order[#order + 1] = "task"; return x, x * 2 end)(21))
  T.eq(t:done(), true, "done at once")
  T.eq({ t:result() }, { 21, 42 }, "its results")
  T.eq(order, { "task" }, "before anything the ready queue held")
  local all = asyncio.all_tasks()
  for i = 1, all.n do T.ok(all[i] ~= t, "not among the pending tasks") end
  await asyncio.sleep(0)
  T.eq(order, { "task", "callback queued first" }, "the queue ran after")
end)

T.case("current_task() is the eager task inside its eager step, the creator's again after", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local me = asyncio.current_task()
  local inside, inside_later
  local t = asyncio.create_task((async function()
    inside = asyncio.current_task()
    await asyncio.sleep(0)
    inside_later = asyncio.current_task()
  end)())
  T.eq(inside, t, "inside the eager step")
  T.eq(asyncio.current_task(), me, "back in the creator")
  await t
  T.eq(inside_later, t, "in later steps")
end)

T.case("an exception in the eager step fails the task, not create_task", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local t = asyncio.create_task((async function() error(asyncio.ValueError("eager boom")) end)())
  T.eq(t:done(), true, "done")
  T.ok(asyncio.isinstance(t:exception(), asyncio.ValueError), "the exception is the task's")
  local e = T.raises(asyncio.ValueError, t, "awaiting it raises")
  T.eq(e.message, "eager boom", "the same exception")
  T.match(t:get_traceback(), "test_eager", "the traceback where it was raised")
end)

T.case("an eager task's exception nobody retrieves is reported", function()
  local reported = {}
  loop:set_exception_handler(function(_, ctx) reported[#reported + 1] = ctx.message end)
  do
    local _ <close> = with_factory(asyncio.eager_task_factory)
    asyncio.create_task((async function() error("nobody looks") end)())
  end
  collectgarbage(); collectgarbage()
  loop:set_exception_handler(nil)
  T.eq(#reported, 1, "reported once: " .. table.concat(reported, "; "))
  T.match(reported[1], "Task exception was never retrieved", "as a task's")
end)

T.case("an eager task that cancels itself and returns ends cancelled", function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local t = asyncio.create_task((async function()
    asyncio.current_task():cancel("me")
    return "dropped"
  end)())
  T.eq(t:done(), true, "done")
  T.eq(t:cancelled(), true, "cancelled, its result dropped")
  local e = T.raises(asyncio.CancelledError, function() return t:result() end)
  T.eq(e.message, "me", "the cancel message")
end)

T.case("an eager task that raises CancelledError ends cancelled", function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local t = asyncio.create_task((async function() error(asyncio.CancelledError("inner")) end)())
  T.eq(t:cancelled(), true, "cancelled")
end)

T.case("an eager task that cancels itself is interrupted at its first await, which is cancelled", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local fut = asyncio.Future()
  local after = false
  local t = asyncio.create_task((async function()
    asyncio.current_task():cancel()
    await fut
    after = true
  end)())
  T.eq(t:done(), false, "suspended in the eager step")
  T.eq(fut:cancelled(), true, "what it awaits is cancelled at once")
  T.raises(asyncio.CancelledError, t, "awaiting it raises")
  T.eq(t:cancelled(), true, "it ends cancelled")
  T.eq(after, false, "the code after the await never ran")
end)

T.case("an eager task suspended in its first step can be cancelled by its creator", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local caught
  local t = asyncio.create_task((async function()
    local ok, e = pcall(await, asyncio.sleep(10))
    caught = e
    error(e)
  end)())
  T.eq(t:cancel("stop"), true, "pending: cancel() takes")
  T.raises(asyncio.CancelledError, t)
  T.ok(asyncio.isinstance(caught, asyncio.CancelledError), "raised where it waited")
  T.eq(caught.message, "stop", "with the message")
end)

T.case("eager tasks nest: one made in another's eager step runs first", function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local log = {}
  local outer = asyncio.create_task((async function()
    log[#log + 1] = "outer start"
    local inner = asyncio.create_task((async function()
      log[#log + 1] = "inner"
      return asyncio.current_task()
    end)())
    log[#log + 1] = "outer after inner"
    return inner:result() == inner and asyncio.current_task()
  end)())
  T.eq(log, { "outer start", "inner", "outer after inner" }, "the order")
  T.eq(outer:result(), outer, "current_task() restored between them")
end)

T.case("a task made in a callback of the running loop starts eagerly too", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local got = asyncio.Future()
  loop:call_soon(function()
    local t = asyncio.create_task((async function() return "in callback" end)())
    got:set_result(t:done() and t:result())
  end)
  T.eq(await got, "in callback", "done within the callback")
end)

T.case("gather of eager tasks, done and suspended alike", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local async function now(x) return x end
  local async function later(x) await asyncio.sleep(0); return x end
  local r = await asyncio.gather(now(1), later(2), now(3), later(4))
  T.eq({ r[1], r[2], r[3], r[4], r.n }, { 1, 2, 3, 4, 4 }, "every result in order")
  local tasks = {}
  for i = 1, 100 do tasks[i] = asyncio.create_task(now(i)) end
  local r2 = await asyncio.gather(table.unpack(tasks))
  T.eq(r2.n, 100, "all done before gather: n")
  T.eq(r2[100], 100, "and the results")
  local r3 = await asyncio.gather(now(1), (async function() error(asyncio.ValueError("x")) end)(),
                                  { return_exceptions = true })
  T.ok(asyncio.isinstance(r3[2], asyncio.ValueError), "a failed eager child's exception in place")
  T.raises(asyncio.ValueError, asyncio.gather(now(1), (async function() error(asyncio.ValueError("y")) end)()),
           "or raised by gather")
end)

T.case("a TaskGroup of eager tasks: the done ones count at once, a failing one aborts the rest", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local results = {}
  do
    local tg <close> = asyncio.TaskGroup()
    local a = tg:create_task((async function() return 1 end)())
    local b = tg:create_task((async function() await asyncio.sleep(0); return 2 end)())
    T.eq(a:done(), true, "the first finished inside create_task")
    results = { a, b }
  end
  T.eq(results[1]:result() + results[2]:result(), 3, "both results")
  local sleeper
  local ok, e = pcall(function()
    local tg <close> = asyncio.TaskGroup()
    sleeper = tg:create_task((async function() await asyncio.sleep(10) end)())
    tg:create_task((async function() error(asyncio.ValueError("eager fail")) end)())
  end)
  T.eq(ok, false, "the group raised")
  T.ok(asyncio.isinstance(e, asyncio.ExceptionGroup), "an ExceptionGroup: " .. tostring(e))
  T.eq(sleeper:cancelled(), true, "the suspended sibling was cancelled")
end)

T.case("the eager step of a function task (create_task of a plain function)", function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local t = asyncio.create_task(function() return "fn" end, { name = "plain" })
  T.eq(t:get_name(), "plain", "named")
  T.eq(t:result(), "fn", "done at once")
end)

T.case("create_eager_task_factory passes the loop, eager_start and the options to its constructor", async function()
  local calls = {}
  local factory = asyncio.create_eager_task_factory(function(coro, opts)
    calls[#calls + 1] = opts
    return asyncio.Task(coro, opts)
  end)
  local _ <close> = with_factory(factory)
  local ran = false
  local t = asyncio.create_task((async function() ran = true; return 7 end)(), { name = "custom" })
  T.eq(#calls, 1, "the constructor was called")
  T.eq(calls[1].loop, loop, "with the loop")
  T.eq(calls[1].eager_start, true, "eager_start")
  T.eq(calls[1].name, "custom", "and the name")
  T.eq(ran, true, "started eagerly")
  T.eq(t:result(), 7, "done")
  T.raises(asyncio.TypeError, function() asyncio.create_eager_task_factory(42) end)
end)

T.case("eager_start = false in the options of an eager factory queues the task", async function()
  local _ <close> = with_factory(asyncio.eager_task_factory)
  local ran = false
  local t = asyncio.create_task((async function() ran = true end)(), { eager_start = false })
  T.eq(ran, false, "not run yet")
  await t
  T.eq(ran, true, "run from the queue")
end)

T.run()
