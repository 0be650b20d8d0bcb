-- TaskGroup: both forms, sibling cancellation, ExceptionGroup contents, and
-- how the group's cancellation interacts with the parent's (asyncio 3.13).
local asyncio = require "asyncio"
local T = require "asyncio.test"

local settle, go = T.settle, T.go

-- A child that waits on ev forever, logging its cancellation.
local async function sleeper(name, log)
  local ok, err = pcall(await, asyncio.Event():wait())
  log[#log + 1] = name
  error(err, 0)
end

local async function fail_after_yield(e)
  await asyncio.sleep(0)
  error(e, 0)
end

T.case("taskgroup: <close> form waits for every child", async function()
  local results = {}
  local t1, t2
  do
    local tg <close> = asyncio.TaskGroup()
    t1 = tg:create_task(asyncio.sleep(0.01, "a"))
    t2 = tg:create_task((async function()
      await asyncio.sleep(0)
      results[#results + 1] = "b ran"
      return "b"
    end)(), {name = "child-b"})
    T.eq(t2:get_name(), "child-b", "name option")
  end
  T.eq(t1:done() and t2:done(), true, "both done at scope exit")
  T.eq(t1:result(), "a", "first result")
  T.eq(t2:result(), "b", "second result")
  T.eq(results[1], "b ran", "body of b ran")
end)

T.case("taskgroup: functional form returns fn's results", async function()
  local a, b = await asyncio.TaskGroup(function(tg)
    local t = tg:create_task(asyncio.sleep(0, 42))
    return "x", t
  end)
  T.eq(a, "x", "first result")
  T.eq(b:result(), 42, "the task finished before the group returned")
  local v = await asyncio.TaskGroup(async function(tg)
    local t = tg:create_task(asyncio.sleep(0, 7))
    return await t
  end)
  T.eq(v, 7, "async fn result")
end)

T.case("taskgroup: a failing child cancels siblings in creation order, then the body", async function()
  local log = {}
  local body_cancelled = false
  local eg = T.raises(asyncio.ExceptionGroup, asyncio.TaskGroup(async function(tg)
    for i = 1, 4 do tg:create_task(sleeper("s" .. i, log)) end
    tg:create_task(fail_after_yield(asyncio.ValueError("child failed")))
    local ok, err = pcall(await, asyncio.Event():wait())
    body_cancelled = asyncio.isinstance(err, asyncio.CancelledError)
    error(err, 0)
  end), "the group raises")
  T.eq(body_cancelled, true, "the body was cancelled")
  T.eq(#log, 4, "every sibling was cancelled")
  for i = 1, 4 do T.eq(log[i], "s" .. i, "cancellation " .. i) end
  T.eq(eg.message, "unhandled errors in a TaskGroup", "message")
  T.eq(eg.exceptions.n, 1, "one error")
  T.ok(asyncio.isinstance(eg.exceptions[1], asyncio.ValueError), "the child's error")
  T.eq(eg.exceptions[1].message, "child failed", "its message")
  T.eq(asyncio.current_task():cancelling(), 0, "the group's own cancel was taken back")
  await asyncio.sleep(0)  -- and nothing is left pending on us
end)

T.case("taskgroup: every error is collected, in the order they happened", async function()
  local eg = T.raises(asyncio.ExceptionGroup, asyncio.TaskGroup(function(tg)
    tg:create_task(fail_after_yield("first"))
    tg:create_task((async function()
      -- raises its own error when cancelled by the group
      local ok = pcall(await, asyncio.Event():wait())
      error("second", 0)
    end)())
    tg:create_task(asyncio.sleep(0, "fine"))
  end), "the group raises")
  T.eq(eg.exceptions.n, 2, "two errors")
  T.eq(eg.exceptions[1], "first", "the first failure")
  T.eq(eg.exceptions[2], "second", "the error raised on cancellation")
end)

T.case("taskgroup: a child cancelled before it started never runs", async function()
  local ran = false
  T.raises(asyncio.ExceptionGroup, asyncio.TaskGroup(function(tg)
    tg:create_task((async function() ran = true end)())
    error("body", 0)
  end), "the body's error is grouped")
  T.eq(ran, false, "the child's body never ran")
end)

T.case("taskgroup: the body's error cancels the children and is grouped last", async function()
  local log = {}
  local eg = T.raises(asyncio.ExceptionGroup, asyncio.TaskGroup(function(tg)
    tg:create_task(sleeper("child", log))
    await settle()  -- let the child start
    error(asyncio.RuntimeError("body failed"))
  end), "the group raises")
  T.eq(log[1], "child", "the child was cancelled")
  T.eq(eg.exceptions.n, 1, "one error")
  T.eq(eg.exceptions[1].message, "body failed", "the body's error")
end)

T.case("taskgroup: <close> form raises the ExceptionGroup in place of the body's error", async function()
  local function body()
    local tg <close> = asyncio.TaskGroup()
    tg:create_task(fail_after_yield("child"))
    pcall(await, asyncio.Event():wait())  -- cancelled by the group when the child fails
    error("body", 0)
  end
  local eg = T.raises(asyncio.ExceptionGroup, body, "grouped")
  T.eq(eg.exceptions.n, 2, "child error and body error")
  T.eq(eg.exceptions[2], "body", "body error last")
end)

T.case("taskgroup: cancelling the parent cancels the children; CancelledError propagates", async function()
  local log = {}
  local started = asyncio.Event()
  local parent = go(async function()
    local tg <close> = asyncio.TaskGroup()
    tg:create_task(sleeper("a", log))
    tg:create_task(sleeper("b", log))
    started:set()
    await asyncio.Event():wait()
  end)
  await started:wait()
  await settle()
  parent:cancel()
  T.raises(asyncio.CancelledError, parent, "the parent is cancelled, not grouped")
  T.eq(#log, 2, "both children cancelled")
  T.eq(log[1], "a", "in creation order")
end)

T.case("taskgroup: cancelling the parent while it waits at the exit", async function()
  local log = {}
  local exiting = asyncio.Event()
  local parent = go(async function()
    local tg <close> = asyncio.TaskGroup()
    tg:create_task(sleeper("child", log))
    exiting:set()
  end)
  await exiting:wait()
  await settle()
  T.eq(parent:done(), false, "waiting for the child")
  parent:cancel()
  T.raises(asyncio.CancelledError, parent, "CancelledError propagates")
  T.eq(log[1], "child", "child cancelled")
end)

T.case("taskgroup: a child failing while the parent waits at the exit", async function()
  local gate = asyncio.Event()
  local after = "not reached"
  local parent = go(async function()
    local ok, eg = pcall(await, asyncio.TaskGroup(function(tg)
      tg:create_task((async function()
        await gate:wait()
        error("late", 0)
      end)())
    end))
    T.ok(asyncio.isinstance(eg, asyncio.ExceptionGroup), "grouped")
    T.eq(asyncio.current_task():cancelling(), 0, "no cancel request left on the parent")
    await asyncio.sleep(0)  -- the parent is not cancelled any more
    after = "reached"
  end)
  await settle()
  gate:set()
  await parent
  T.eq(after, "reached", "the parent carried on after the group")
end)

T.case("taskgroup: an outside cancel during a failure keeps the parent cancelled", async function()
  local caught
  local parent = go(async function()
    local ok, eg = pcall(await, asyncio.TaskGroup(function(tg)
      tg:create_task((async function()
        -- fails when the group cancels it
        pcall(await, asyncio.Event():wait())
        error("cleanup failed", 0)
      end)())
      await asyncio.Event():wait()
    end))
    caught = eg
    await asyncio.sleep(0)  -- the outside request still stands: raises here
    caught = "not cancelled"
  end)
  await settle()
  parent:cancel()
  T.raises(asyncio.CancelledError, parent, "the parent ends cancelled")
  T.ok(asyncio.isinstance(caught, asyncio.ExceptionGroup), "the group raised ExceptionGroup first")
  T.eq(caught.exceptions[1], "cleanup failed", "with the child's error")
end)

T.case("taskgroup: create_task on a finished or aborting group raises", async function()
  local saved
  await asyncio.TaskGroup(function(tg) saved = tg end)
  T.raises(asyncio.RuntimeError, function() saved:create_task(asyncio.sleep(0)) end,
    "finished group")
  local in_abort
  T.raises(asyncio.ExceptionGroup, asyncio.TaskGroup(function(tg)
    tg:create_task(fail_after_yield("x"))
    local ok = pcall(await, asyncio.Event():wait())
    in_abort = T.raises(asyncio.RuntimeError, function()
      tg:create_task(asyncio.sleep(0))
    end, "aborting group")
  end), "group fails")
  T.ok(in_abort ~= nil, "create_task refused while shutting down")
end)

T.case("taskgroup: nested groups nest their ExceptionGroups", async function()
  local eg = T.raises(asyncio.ExceptionGroup, asyncio.TaskGroup(function(outer)
    outer:create_task(asyncio.TaskGroup(function(inner)
      inner:create_task(fail_after_yield("deep"))
    end))
  end), "outer group")
  T.eq(eg.exceptions.n, 1, "one error in the outer group")
  local inner = eg.exceptions[1]
  T.ok(asyncio.isinstance(inner, asyncio.ExceptionGroup), "the inner group's error")
  T.eq(inner.exceptions[1], "deep", "the original error inside")
end)

T.case("taskgroup: inside a timeout, expiry cancels the group and raises TimeoutError", async function()
  local log = {}
  T.raises(asyncio.TimeoutError, asyncio.timeout(0.01, function()
    local tg <close> = asyncio.TaskGroup()
    tg:create_task(sleeper("child", log))
    await asyncio.Event():wait()
  end), "TimeoutError, not a group")
  T.eq(log[1], "child", "child cancelled")
  T.eq(asyncio.current_task():cancelling(), 0, "no cancel request left")
end)

T.case("taskgroup: tasks that succeed leave no error behind", async function()
  local n = 0
  await asyncio.TaskGroup(function(tg)
    for i = 1, 50 do
      tg:create_task((async function()
        await asyncio.sleep(0)
        n = n + 1
      end)())
    end
  end)
  T.eq(n, 50, "all fifty ran")
end)

T.run()
