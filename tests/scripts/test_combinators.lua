-- wait_for, wait, as_completed, shield (asyncio 3.12 semantics).
local asyncio = require "asyncio"
local T = require "asyncio.test"

local settle, go = T.settle, T.go

local forever = T.forever

-- A task that finishes when its event is set, with value v (or error e).
local function gated(v, e)
  local ev = asyncio.Event()
  local t = go(async function()
    await ev:wait()
    if e ~= nil then error(e, 0) end
    return v
  end)
  return t, ev
end

---------------------------------------------------------------- wait_for

T.case("wait_for: in time returns every result", async function()
  local a, b = await asyncio.wait_for(asyncio.sleep(0, "a", "b"), 10)
  T.eq(a, "a", "first result")
  T.eq(b, "b", "second result")
  local t = go(async function() return 5 end)
  T.eq(await asyncio.wait_for(t, 10), 5, "a task")
  T.eq(await asyncio.wait_for(asyncio.sleep(0, 6), nil), 6, "no timeout")
end)

T.case("wait_for: the awaitable's error propagates unchanged", async function()
  local e = T.raises(asyncio.ValueError, asyncio.wait_for((async function()
    error(asyncio.ValueError("inner"))
  end)(), 10), "error")
  T.eq(e.message, "inner", "unchanged")
  T.eq(T.raises(nil, asyncio.wait_for((async function() error("str", 0) end)(), 10)),
    "str", "a string stays a string")
end)

T.case("wait_for: timeout cancels the task and waits for it", async function()
  local cleaned = false
  local t = go(async function()
    local ok, err = pcall(await, forever())
    await asyncio.sleep(0)  -- cleanup that itself awaits
    cleaned = true
    error(err, 0)
  end)
  T.raises(asyncio.TimeoutError, asyncio.wait_for(t, 0.01), "TimeoutError")
  T.eq(t:cancelled(), true, "the task was cancelled")
  T.eq(cleaned, true, "its cleanup finished before wait_for returned")
  T.eq(asyncio.current_task():cancelling(), 0, "no cancel request left on us")
end)

T.case("wait_for: timeout cancels a coroutine running inline", async function()
  local saw
  T.raises(asyncio.TimeoutError, asyncio.wait_for((async function()
    local ok, err = pcall(await, forever())
    saw = err
    error(err, 0)
  end)(), 0.01), "TimeoutError")
  T.ok(asyncio.isinstance(saw, asyncio.CancelledError), "the coroutine saw CancelledError")
end)

T.case("wait_for: timeout <= 0 never starts a coroutine", async function()
  local started = false
  T.raises(asyncio.TimeoutError, asyncio.wait_for((async function()
    started = true
  end)(), 0), "TimeoutError")
  T.eq(started, false, "never started")
  local f = asyncio.Future()
  f:set_result("ready")
  T.eq(await asyncio.wait_for(f, 0), "ready", "a done future gives its result")
  local t, ev = gated("late")
  T.raises(asyncio.TimeoutError, asyncio.wait_for(t, -1), "negative timeout")
  T.eq(t:cancelled(), true, "the task was cancelled")
end)

T.case("wait_for: a child that swallows the cancellation returns its value", async function()
  local t = go(async function()
    local ok = pcall(await, forever())
    return "swallowed"
  end)
  T.eq(await asyncio.wait_for(t, 0.01), "swallowed", "the value, not TimeoutError")
  T.eq(asyncio.current_task():cancelling(), 0, "no cancel request left")
end)

T.case("wait_for: an inline coroutine that swallows the cancellation returns its value", async function()
  local v = await asyncio.wait_for((async function()
    local ok, err = pcall(await, forever())
    T.ok(asyncio.isinstance(err, asyncio.CancelledError), "it was cancelled")
    return "swallowed inline"
  end)(), 0.01)
  T.eq(v, "swallowed inline", "the value, not TimeoutError")
  T.eq(asyncio.current_task():cancelling(), 0, "no cancel request left")
end)

T.case("wait_for: a child that ignores cancellation is waited for", async function()
  local gate, ignored = asyncio.Event(), asyncio.Event()
  local t = go(async function()
    pcall(await, forever())  -- ignore the cancellation ...
    ignored:set()
    await gate:wait()        -- ... and keep working
    return "finished anyway"
  end)
  local w = go(async function() return await asyncio.wait_for(t, 0.01) end)
  await ignored:wait()  -- the timeout has fired and the child went on
  await settle()
  T.eq(w:done(), false, "wait_for is still waiting for the child")
  gate:set()
  T.eq(await w, "finished anyway", "its value")
end)

T.case("wait_for: cancelling the caller cancels the child, no TimeoutError", async function()
  local child_cancelled = asyncio.Event()
  local t = go(async function()
    local ok, err = pcall(await, forever())
    child_cancelled:set()
    error(err, 0)
  end)
  local w = go(async function() return await asyncio.wait_for(t, 10) end)
  await settle()
  w:cancel()
  T.raises(asyncio.CancelledError, w, "the caller gets CancelledError")
  await child_cancelled:wait()
  T.eq(t:cancelled(), true, "the child was cancelled")
end)

---------------------------------------------------------------- wait

T.case("wait: ALL_COMPLETED returns two lists with n", async function()
  local a = go(async function() return 1 end)
  local b = go(async function() error("boom", 0) end)
  local done, pending = await asyncio.wait({a, b})
  T.eq(done.n, 2, "both done")
  T.eq(pending.n, 0, "none pending")
  T.eq(done[1], a, "input order kept")
  T.eq(done[2], b, "input order kept")
  T.eq(b:exception(), "boom", "wait itself did not raise")
end)

T.case("wait: FIRST_COMPLETED returns at the first completion, cancels nothing", async function()
  local a, eva = gated("a")
  local b, evb = gated("b")
  local w = go(async function()
    return await asyncio.wait({a, b}, {return_when = asyncio.FIRST_COMPLETED})
  end)
  await settle()
  T.eq(w:done(), false, "waiting")
  evb:set()
  local done, pending = await w
  T.eq(done.n, 1, "one done")
  T.eq(done[1], b, "b")
  T.eq(pending.n, 1, "one pending")
  T.eq(pending[1], a, "a")
  T.eq(a:done(), false, "a not cancelled")
  eva:set()
  T.eq(await a, "a", "a finishes normally")
end)

T.case("wait: FIRST_EXCEPTION returns at the first error", async function()
  local a, eva = gated("a")
  local b, evb = gated(nil, "fail")
  local c, evc = gated("c")
  local w = go(async function()
    return await asyncio.wait({a, b, c}, {return_when = asyncio.FIRST_EXCEPTION})
  end)
  await settle()
  evc:set()  -- a success does not end the wait
  await settle()
  T.eq(w:done(), false, "still waiting after a success")
  evb:set()
  local done, pending = await w
  T.eq(done.n, 2, "b and c done")
  T.eq(pending.n, 1, "a pending")
  eva:set()
  await a
  -- with no error, FIRST_EXCEPTION waits for all
  local x = go(async function() return 1 end)
  local y = go(async function() return 2 end)
  done, pending = await asyncio.wait({x, y}, {return_when = "FIRST_EXCEPTION"})
  T.eq(done.n, 2, "all done")
end)

T.case("wait: timeout returns what is done, raises nothing, cancels nothing", async function()
  local a, eva = gated("a")
  local b = go(async function() return "b" end)
  local done, pending = await asyncio.wait({a, b}, {timeout = 0.01})
  T.eq(done.n, 1, "b done")
  T.eq(done[1], b, "b")
  T.eq(pending.n, 1, "a pending")
  T.eq(a:cancelled(), false, "a not cancelled")
  eva:set()
  await a
end)

T.case("wait: bad arguments", async function()
  T.raises(asyncio.ValueError, asyncio.wait({}), "empty list")
  local co = asyncio.sleep(0)
  T.raises(asyncio.TypeError, asyncio.wait({co}), "coroutines are refused")
  await co
  local t = go(async function() end)
  T.raises(asyncio.ValueError, asyncio.wait({t}, {return_when = "SOMETIMES"}), "bad return_when")
  T.raises(asyncio.TypeError, asyncio.wait(t), "a single task is not a list")
  local done = await asyncio.wait({t, t, n = 2})
  T.eq(done.n, 1, "duplicates count once")
end)

T.case("wait: constants", async function()
  T.eq(asyncio.FIRST_COMPLETED, "FIRST_COMPLETED", "FIRST_COMPLETED")
  T.eq(asyncio.FIRST_EXCEPTION, "FIRST_EXCEPTION", "FIRST_EXCEPTION")
  T.eq(asyncio.ALL_COMPLETED, "ALL_COMPLETED", "ALL_COMPLETED")
end)

---------------------------------------------------------------- as_completed

T.case("as_completed: yields in completion order", async function()
  local tasks, events = {}, {}
  for i = 1, 4 do tasks[i], events[i] = gated(i) end
  local order = {4, 2, 1, 3}
  local got = {}
  local consumer = go(async function()
    for t in asyncio.as_completed(tasks) do
      got[#got + 1] = await t
    end
  end)
  for _, i in ipairs(order) do
    events[i]:set()
    await settle()
  end
  await consumer
  T.eq(#got, 4, "four results")
  for k, i in ipairs(order) do T.eq(got[k], i, "completion " .. k) end
end)

T.case("as_completed: yields the tasks given; errors come out of await", async function()
  local ok = go(async function() return "fine" end)
  local bad = go(async function() error("bad", 0) end)
  local seen = {}
  for t in asyncio.as_completed({ok, bad}) do
    seen[t] = true
    if t == bad then
      T.eq(T.raises(nil, t, "awaiting the failed task"), "bad", "its error")
    else
      T.eq(await t, "fine", "result")
    end
  end
  T.ok(seen[ok] and seen[bad], "the original tasks were yielded")
end)

T.case("as_completed: coroutines are wrapped in tasks", async function()
  local sum = 0
  for t in asyncio.as_completed({asyncio.sleep(0.02, 2), asyncio.sleep(0.01, 1)}) do
    T.ok(asyncio.isfuture(t), "a task")
    sum = sum * 10 + await t
  end
  T.eq(sum, 12, "both, 1 first")
end)

T.case("as_completed: timeout raises TimeoutError from the iteration", async function()
  local fast = go(async function() return "fast" end)
  local slow, ev = gated("slow")
  local got = {}
  local err = T.raises(asyncio.TimeoutError, function()
    for t in asyncio.as_completed({fast, slow}, {timeout = 0.01}) do
      got[#got + 1] = await t
    end
  end, "TimeoutError")
  T.eq(#got, 1, "the fast one came out first")
  T.eq(got[1], "fast", "fast")
  T.eq(slow:cancelled(), false, "the slow one was not cancelled")
  ev:set()
  await slow
end)

---------------------------------------------------------------- shield

T.case("shield: cancelling the waiter does not cancel the shielded task", async function()
  local t, ev = gated("kept")
  local w = go(async function() return await asyncio.shield(t) end)
  await settle()
  w:cancel()
  T.raises(asyncio.CancelledError, w, "the waiter is cancelled")
  T.eq(t:cancelled(), false, "the task is not")
  ev:set()
  T.eq(await t, "kept", "and finishes")
end)

T.case("shield: passes results and errors through", async function()
  local a, b = await asyncio.shield(go(async function() return 1, 2 end))
  T.eq(a, 1, "first result")
  T.eq(b, 2, "second result")
  T.eq(await asyncio.shield(asyncio.sleep(0, "coro")), "coro", "a coroutine is wrapped")
  T.eq(T.raises(nil, asyncio.shield(go(async function() error("e", 0) end))), "e", "error")
end)

T.case("shield: the inner being cancelled cancels the outer", async function()
  local t = go(forever)
  local outer = asyncio.shield(t)
  await settle()
  t:cancel()
  T.raises(asyncio.CancelledError, outer, "outer cancelled")
end)

T.case("shield: a done awaitable is returned as is", async function()
  local f = asyncio.Future()
  f:set_result(1)
  T.eq(asyncio.shield(f), f, "same future")
end)

T.case("shield: with wait_for, the timeout leaves the work running", async function()
  local t, ev = gated("done later")
  T.raises(asyncio.TimeoutError, asyncio.wait_for(asyncio.shield(t), 0.01), "times out")
  T.eq(t:done(), false, "the work goes on")
  ev:set()
  T.eq(await t, "done later", "and finishes")
end)

T.run()
