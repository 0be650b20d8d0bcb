-- timeout / timeout_at: both forms, reschedule, when, expired, nesting, and
-- how a timeout tells its own cancellation from someone else's.
local asyncio = require "asyncio"
local T = require "asyncio.test"

local settle, go = T.settle, T.go

local forever = T.forever

T.case("timeout: a body that finishes in time is left alone", async function()
  local loop = asyncio.get_running_loop()
  local cm
  do
    local t0 = loop:time()
    cm = asyncio.timeout(10)
    local _ <close> = cm
    T.ok(cm:when() >= t0 + 10, "when() is loop time + delay")
    T.eq(await asyncio.sleep(0, "v"), "v", "the body runs")
  end
  T.eq(cm:expired(), false, "not expired")
  T.eq(asyncio.current_task():cancelling(), 0, "no cancel request")
end)

T.case("timeout: expiry raises TimeoutError at the <close> scope", async function()
  local cm
  local cleaned = false
  local function body()
    local c <close> = asyncio.timeout(0.01)
    cm = c
    local ok, err = pcall(await, forever())
    cleaned = asyncio.isinstance(err, asyncio.CancelledError)
    error(err, 0)
  end
  T.raises(asyncio.TimeoutError, body, "TimeoutError in place of CancelledError")
  T.eq(cleaned, true, "the body saw CancelledError first")
  T.eq(cm:expired(), true, "expired")
  T.eq(asyncio.current_task():cancelling(), 0, "its cancel request was taken back")
  await asyncio.sleep(0)  -- the task is not cancelled any more
end)

T.case("timeout: functional form returns fn's results and passes the timeout", async function()
  local a, b = await asyncio.timeout(10, function(cm)
    T.ok(cm:when() ~= nil, "fn gets the timeout")
    return 1, 2
  end)
  T.eq(a, 1, "first result")
  T.eq(b, 2, "second result")
  local v = await asyncio.timeout(10, async function() return await asyncio.sleep(0, "async") end)
  T.eq(v, "async", "async fn result")
  T.eq(await asyncio.timeout(10, asyncio.sleep(0, "coro")), "coro", "a Coroutine works too")
  T.raises(asyncio.TimeoutError, asyncio.timeout(0.01, forever), "expiry")
end)

T.case("timeout: nil never expires; reschedule moves the deadline", async function()
  local loop = asyncio.get_running_loop()
  local cm
  T.raises(asyncio.TimeoutError, function()
    local c <close> = asyncio.timeout(nil)
    cm = c
    T.eq(c:when(), nil, "no deadline")
    c:reschedule(loop:time() - 1)  -- in the past: expires at once
    T.ok(c:when() < loop:time(), "when() follows reschedule")
    await forever()
  end, "expires after reschedule")
  T.raises(asyncio.RuntimeError, function() cm:reschedule(nil) end,
    "reschedule after exit")
  await asyncio.timeout(0.01, function(c)
    c:reschedule(nil)  -- disarmed
    await asyncio.sleep(0.05)
  end)
  T.raises(asyncio.TimeoutError, asyncio.timeout(1000, function(c)
    c:reschedule(loop:time() + 0.01)  -- brought forward
    await forever()
  end), "brought forward")
end)

T.case("timeout_at: absolute deadline", async function()
  local loop = asyncio.get_running_loop()
  local when = loop:time() + 0.01
  local err = T.raises(asyncio.TimeoutError, asyncio.timeout_at(when, function(cm)
    T.eq(cm:when(), when, "when()")
    await forever()
  end), "expires")
  T.ok(loop:time() >= when, "not before the deadline")
  T.eq(await asyncio.timeout_at(loop:time() + 10, asyncio.sleep(0, 3)), 3, "in time")
end)

T.case("timeout: zero and negative delays expire at the first await", async function()
  local reached = false
  T.raises(asyncio.TimeoutError, asyncio.timeout(0, function()
    reached = true  -- code before the first await still runs
    await asyncio.sleep(0)
    reached = "after"
  end), "zero")
  T.eq(reached, true, "ran up to the first await")
  T.raises(asyncio.TimeoutError, asyncio.timeout(-1, forever), "negative")
end)

T.case("timeout: the inner of nested timeouts expires first", async function()
  local outer_cm, inner_cm
  local v = await asyncio.timeout(10, function(outer)
    outer_cm = outer
    T.raises(asyncio.TimeoutError, asyncio.timeout(0.01, function(inner)
      inner_cm = inner
      await forever()
    end), "the inner raises")
    return "outer carried on"
  end)
  T.eq(v, "outer carried on", "the outer body continued")
  T.eq(inner_cm:expired(), true, "inner expired")
  T.eq(outer_cm:expired(), false, "outer did not")
end)

T.case("timeout: the outer of nested timeouts expires first", async function()
  local inner_saw
  local inner_cm
  T.raises(asyncio.TimeoutError, asyncio.timeout(0.01, function()
    local ok, err = pcall(await, asyncio.timeout(10, function(inner)
      inner_cm = inner
      await forever()
    end))
    inner_saw = err
    error(err, 0)
  end), "the outer raises")
  T.ok(asyncio.isinstance(inner_saw, asyncio.CancelledError),
    "the inner let the CancelledError through")
  T.eq(inner_cm:expired(), false, "inner not expired")
end)

T.case("timeout: both nested timeouts expire; only the outer converts", async function()
  local loop = asyncio.get_running_loop()
  local when = loop:time() + 0.01
  local inner_saw
  T.raises(asyncio.TimeoutError, asyncio.timeout_at(when, function()
    local ok, err = pcall(await, asyncio.timeout_at(when, function()
      await forever()
    end))
    inner_saw = err
    error(err, 0)
  end), "the outer raises TimeoutError")
  T.ok(asyncio.isinstance(inner_saw, asyncio.CancelledError),
    "the inner saw two requests and passed CancelledError on")
  T.eq(asyncio.current_task():cancelling(), 0, "both requests taken back")
end)

T.case("timeout: an outside cancel is not turned into TimeoutError", async function()
  local entered = asyncio.Event()
  local t = go(async function()
    local _ <close> = asyncio.timeout(10)
    entered:set()
    await forever()
  end)
  await entered:wait()
  t:cancel()
  T.raises(asyncio.CancelledError, t, "CancelledError, not TimeoutError")
end)

T.case("timeout: an outside cancel racing the expiry still wins", async function()
  local loop = asyncio.get_running_loop()
  local cm
  local entered = asyncio.Event()
  local t = go(async function()
    local c <close> = asyncio.timeout(0)  -- expires at the next iteration
    cm = c
    entered:set()
    await forever()
  end)
  await entered:wait()
  t:cancel()  -- a second request, from outside
  T.raises(asyncio.CancelledError, t, "CancelledError is kept")
  T.eq(cm:expired(), true, "the timeout did expire")
end)

T.case("timeout: a body that swallows the cancellation ends normally", async function()
  local v = await asyncio.timeout(0.01, function(cm)
    local ok, err = pcall(await, forever())
    T.ok(asyncio.isinstance(err, asyncio.CancelledError), "cancelled")
    T.eq(cm:expired(), true, "expired")
    return "swallowed"
  end)
  T.eq(v, "swallowed", "no TimeoutError")
  T.eq(asyncio.current_task():cancelling(), 0, "request taken back")
end)

T.case("timeout: another error raised after expiry goes on unchanged", async function()
  local e = T.raises(asyncio.ValueError, asyncio.timeout(0.01, function()
    pcall(await, forever())
    error(asyncio.ValueError("mine"))
  end), "the body's own error")
  T.eq(e.message, "mine", "unchanged")
end)

T.case("timeout: needs a running task", async function()
  local loop = asyncio.get_running_loop()
  local fut = asyncio.Future()
  loop:call_soon(function()
    local ok, err = pcall(asyncio.timeout, 1)
    fut:set_result(ok, err)
  end)
  local ok, err = await fut
  T.eq(ok, false, "refused in a callback")
  T.ok(asyncio.isinstance(err, asyncio.RuntimeError), "RuntimeError")
end)

T.case("a NaN timeout is a ValueError, and leaves no coroutine unawaited behind", async function()
  T.raises(asyncio.ValueError, function() return await asyncio.wait_for(asyncio.sleep(1), 0/0) end, "wait_for")
  T.raises(asyncio.ValueError, function() local _ <close> = asyncio.timeout(0/0) end, "timeout")
end)

T.run()
