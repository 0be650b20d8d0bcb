-- The loop's lifecycle as Python writes it: asyncio.Runner,
-- new_event_loop/set_event_loop, run_until_complete, run_forever/stop,
-- close/is_closed/is_running, and the errors of each misuse (issue #12).
local T = require "asyncio.test"
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"

local function run_script(src)
  local path = T.tmpname(".lua")
  local f = assert(io.open(path, "w")); f:write(src); f:close()
  return T.sh(string.format("%s %s 2>&1; echo \"rc=$?\"", BIN, path))
end

async function double(x) await asyncio.sleep(0.001); return x * 2, "more" end

-- ---- run_until_complete ----

T.case("run_until_complete runs a coroutine in a task and returns its results", async function()
  local loop = asyncio.new_event_loop()
  local a, b = loop:run_until_complete(double(21))
  T.eq({ a, b }, { 42, "more" }, "results")
  T.eq(loop:is_running(), false, "not running once it returned")
  loop:close()
end)

T.case("run_until_complete takes a Future and raises its exception", async function()
  local loop = asyncio.new_event_loop()
  local f = loop:create_future()
  asyncio.get_running_loop():call_soon(function() f:set_exception(asyncio.ValueError("bad")) end)
  T.raises(asyncio.ValueError, function() loop:run_until_complete(f) end, "the future's error")
  loop:close()
end)

T.case("inside run_until_complete the loop is running and get_running_loop() is it", async function()
  local loop = asyncio.new_event_loop()
  local same, running = loop:run_until_complete((async function()
    return asyncio.get_running_loop() == loop, loop:is_running()
  end)())
  T.eq(same, true, "get_running_loop() is the loop")
  T.eq(running, true, "is_running() inside")
  loop:close()
end)

T.case("run_until_complete inside a run raises 'This event loop is already running'", async function()
  local loop = asyncio.new_event_loop()
  local e = loop:run_until_complete((async function()
    local c = double(1)
    local ok, e = pcall(loop.run_until_complete, loop, c)
    c:close()
    return e
  end)())
  T.eq(tostring(e), "RuntimeError: This event loop is already running", "error")
  local other = asyncio.new_event_loop()
  e = loop:run_until_complete((async function()
    local ok, e = pcall(other.run_forever, other)
    return e
  end)())
  T.eq(tostring(e), "RuntimeError: Cannot run the event loop while another loop is running", "other loop")
  loop:close(); other:close()
end)

T.case("run_until_complete from a callback raises 'This event loop is already running'", async function()
  local loop, f = asyncio.get_running_loop(), asyncio.Future()
  loop:call_soon(function()
    local fut = asyncio.Future()
    f:set_result(select(2, pcall(loop.run_until_complete, loop, fut)))
  end)
  T.eq(tostring(await f), "RuntimeError: This event loop is already running", "error")
end)

T.case("run_until_complete refuses what is not awaitable", async function()
  local loop = asyncio.new_event_loop()
  T.raises(asyncio.TypeError, function() loop:run_until_complete(42) end, "a number")
  loop:close()
end)

-- ---- run_forever and stop ----

T.case("run_forever runs until stop() is called from a callback", async function()
  local loop = asyncio.new_event_loop()
  local ticks = 0
  local function tick()
    ticks = ticks + 1
    if ticks == 3 then loop:stop() else loop:call_soon(tick) end
  end
  loop:call_soon(tick)
  loop:run_forever()
  T.eq(ticks, 3, "ran until stopped")
  T.eq(loop:is_running(), false, "not running after")
  loop:close()
end)

T.case("stop() from a task ends run_forever; call_soon(stop) runs one iteration", async function()
  local loop = asyncio.new_event_loop()
  loop:create_task((async function() await asyncio.sleep(0.001); loop:stop() end)())
  loop:run_forever()
  local ran = false
  loop:call_soon(function() ran = true end)
  loop:call_soon(loop.stop, loop)
  loop:run_forever()
  T.eq(ran, true, "the callback before stop ran")
  loop:close()
end)

T.case("stop() before run_forever makes the next run return after one iteration", async function()
  local loop = asyncio.new_event_loop()
  loop:stop()
  local ran = false
  loop:call_soon(function() ran = true end)
  loop:run_forever()
  T.eq(ran, true, "one iteration ran")
  -- and only the next run: this one runs until its stop
  loop:call_later(0.001, loop.stop, loop)
  loop:run_forever()
  loop:close()
end)

T.case("stop() during run_until_complete raises 'Event loop stopped before Future completed.'", async function()
  local loop = asyncio.new_event_loop()
  local inner
  local e = T.raises(asyncio.RuntimeError, function()
    loop:run_until_complete((async function()
      inner = asyncio.current_task()
      loop:stop()
      await asyncio.sleep(0.05)
      return "done"
    end)())
  end, "stopped")
  T.eq(e.message, "Event loop stopped before Future completed.", "message")
  T.eq(inner:done(), false, "the task goes on, as in Python")
  T.eq(loop:run_until_complete(inner), "done", "a second run finishes it")
  loop:close()
end)

T.case("stop() inside asyncio.run raises from asyncio.run", async function()
  local e = T.raises(asyncio.RuntimeError, function()
    asyncio.run((async function()
      asyncio.get_running_loop():stop()
      await asyncio.sleep(0.01)
    end)())
  end, "asyncio.run")
  T.eq(e.message, "Event loop stopped before Future completed.", "message")
end)

T.case("loop:stop() in a script outside any run stops the main task's run and says so", function()
  local out = run_script([[
local t = asyncio.create_task(function()
  local ok, e = pcall(await, asyncio.sleep(30)); print("task unwound", asyncio.isinstance(e, asyncio.CancelledError))
end)
await asyncio.sleep(0)
asyncio.get_running_loop():stop()
local ok, e = pcall(await, asyncio.sleep(30))
print("main unwound", asyncio.isinstance(e, asyncio.CancelledError))
]])
  T.match(out, "RuntimeError: Event loop stopped before Future completed%.", "the error")
  T.match(out, "main unwound\ttrue", "the main task was cancelled and unwound")
  T.match(out, "task unwound\ttrue", "so was the other task")
  T.match(out, "rc=1\n$", "exit status")
end)

T.case("run_forever at a script's top level: a server script stopped by a signal handler", function()
  local out = run_script([[
local loop = asyncio.new_event_loop()
local n = 0
local function tick() n = n + 1; if n < 5 then loop:call_later(0.001, tick) else loop:stop() end end
loop:call_soon(tick)
loop:run_forever()
loop:close()
print("ticks", n, loop:is_closed())
]])
  T.eq(out, "ticks\t5\ttrue\nrc=0\n", "output")
end)

-- ---- close ----

T.case("a closed loop raises 'Event loop is closed'; is_closed, close again and time work", async function()
  local loop = asyncio.new_event_loop()
  T.eq(loop:is_closed(), false, "open")
  loop:close()
  T.eq(loop:is_closed(), true, "closed")
  loop:close()  -- idempotent
  T.ok(type(loop:time()) == "number", "time() works")
  for _, m in ipairs({ "call_soon", "call_later", "create_task", "run_until_complete", "run_forever" }) do
    local ok, e = pcall(loop[m], loop, function() end)
    T.eq(tostring(e), "RuntimeError: Event loop is closed", m)
  end
  local c = double(1)
  local ok, e = pcall(loop.run_until_complete, loop, c)
  c:close()
  T.eq(tostring(e), "RuntimeError: Event loop is closed", "run_until_complete of a coroutine")
end)

T.case("close() of a running loop raises 'Cannot close a running event loop'", async function()
  local loop = asyncio.new_event_loop()
  local e = loop:run_until_complete((async function()
    return select(2, pcall(loop.close, loop))
  end)())
  T.eq(tostring(e), "RuntimeError: Cannot close a running event loop", "in its run")
  loop:close()
  local own = asyncio.get_running_loop()
  T.eq(tostring(select(2, pcall(own.close, own))), "RuntimeError: Cannot close a running event loop",
       "the state's own loop, which runs this very task")
  T.eq(own:is_running(), true, "the state's loop runs every task")
end)

-- ---- set_event_loop and get_event_loop ----

T.case("set_event_loop sets what get_event_loop returns outside a run", async function()
  local loop = asyncio.new_event_loop()
  local own = asyncio.get_event_loop()
  asyncio.set_event_loop(loop)
  T.ok(asyncio.get_event_loop() == loop, "the loop set")
  asyncio.set_event_loop(nil)
  T.ok(asyncio.get_event_loop() == own, "nil: the state's own again")
  T.raises(asyncio.TypeError, function() asyncio.set_event_loop(42) end, "not a loop")
  loop:close()
end)

-- ---- asyncio.run ----

T.case("asyncio.run inside a run raises 'cannot be called from a running event loop'", async function()
  local e = await asyncio.create_task(function()
    local loop = asyncio.new_event_loop()
    local r = loop:run_until_complete((async function()
      local c = double(1)
      local ok, e = pcall(asyncio.run, c)
      c:close()
      return e
    end)())
    loop:close()
    return r
  end)
  T.eq(tostring(e), "RuntimeError: asyncio.run() cannot be called from a running event loop", "error")
end)

T.case("asyncio.run runs its coroutine in a task of its own, as Python's", async function()
  local me = asyncio.current_task()
  local inner = asyncio.run((async function() return asyncio.current_task() end)())
  T.ok(inner ~= me and inner:done(), "a new task")
end)

-- ---- Runner ----

T.case("Runner runs several coroutines in one loop and closes it", async function()
  local loop
  do
    local runner <close> = asyncio.Runner()
    T.eq(runner:run(double(1)), 2, "first run")
    T.eq(runner:run(double(2)), 4, "second run")
    loop = runner:get_loop()
    T.eq(runner:run((async function() return asyncio.get_running_loop() end)()), loop, "the same loop")
    T.ok(asyncio.get_event_loop() == loop, "set as the event loop meanwhile")
  end
  T.eq(loop:is_closed(), true, "closed by <close>")
  T.ok(asyncio.get_event_loop() ~= loop, "no longer the event loop")
end)

T.case("Runner:close cancels the tasks made since it started, and awaits them", async function()
  local runner = asyncio.Runner()
  local unwound = false
  local t
  runner:run((async function()
    t = asyncio.create_task((async function()
      local ok = pcall(await, T.forever()); unwound = not ok
    end)())
  end)())
  T.eq(t:done(), false, "the task outlives run()")
  runner:close()
  T.eq(t:cancelled() or t:done(), true, "done after close()")
  T.eq(unwound, true, "it was cancelled and unwound")
  runner:close()  -- idempotent
end)

T.case("Runner: debug option, closed runner, run inside a run, bad arguments", async function()
  local runner = asyncio.Runner({ debug = true })
  T.eq(runner:get_loop():get_debug(), true, "debug")
  runner:get_loop():set_debug(false)
  local e = runner:run((async function()
    local c = double(1)
    local ok, e = pcall(runner.run, runner, c)
    c:close()
    return e
  end)())
  T.eq(tostring(e), "RuntimeError: Runner.run() cannot be called from a running event loop", "nested")
  runner:close()
  local c = double(1)
  T.eq(tostring(select(2, pcall(runner.run, runner, c))), "RuntimeError: Runner is closed", "closed")
  c:close()
  T.raises(asyncio.ValueError, function() asyncio.Runner():run(42) end, "not a coroutine")
  T.raises(asyncio.TypeError, function() asyncio.Runner({ debgu = true }) end, "unknown option")
end)

T.case("Runner with loop_factory uses the loop it makes", async function()
  local made
  local runner = asyncio.Runner({ loop_factory = function() made = asyncio.new_event_loop(); return made end })
  T.eq(runner:run((async function() return asyncio.get_running_loop() end)()), made, "its loop")
  runner:close()
  T.eq(made:is_closed(), true, "closed")
end)

T.case("the Python porting idiom: new_event_loop, run_until_complete, close, in a script", function()
  local out = run_script([[
async function main() await asyncio.sleep(0.001); return "ok" end
local loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
print(loop:run_until_complete(main()))
loop:close()
local runner <close> = asyncio.Runner()
print(runner:run(main()))
]])
  T.eq(out, "ok\nok\nrc=0\n", "output")
end)

T.run()
