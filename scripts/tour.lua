-- tour.lua: a walk through moonloop's core, printing what happens.
-- Run it with `make run` or `build/moonloop scripts/tour.lua`.
local loop = asyncio.get_running_loop()
local t0 = loop:time()
local function say(fmt, ...)
  print(string.format("[%5.3fs] " .. fmt, loop:time() - t0, ...))
end

-- 1. An async function returns a coroutine; awaiting it runs it.
async function greet(who, delay)
  await asyncio.sleep(delay)
  say("hello from %s", who)
  return who:upper()
end
say("await greet: %s", await greet("a coroutine", 0.05))

-- 2. Tasks run concurrently: three greetings take as long as the slowest.
local tasks = {}
for i, d in ipairs({ 0.15, 0.05, 0.10 }) do
  tasks[i] = asyncio.create_task(greet("task " .. i, d), { name = "greeter-" .. i })
end
say("started %s", tostring(tasks[1]))
for i, t in ipairs(tasks) do say("task %d returned %s", i, await t) end

-- 3. gather collects results in argument order.
local r = await asyncio.gather(greet("gather 1", 0.02), greet("gather 2", 0.01))
say("gather returned {%s, %s} (n=%d)", r[1], r[2], r.n)

-- 4. Timers: call_later runs a plain function; a future carries a result.
local fut = loop:create_future()
loop:call_later(0.05, function() fut:set_result("set by a timer") end)
say("future says: %s", await fut)

-- 5. Cancellation: a cancelled task gets CancelledError where it waits.
local sleeper = asyncio.create_task(function()
  local ok, err = pcall(await, asyncio.sleep(60))
  say("sleeper woke: %s", tostring(err))
  error(err, 0)  -- let the cancellation finish the task
end)
await asyncio.sleep(0.02)
sleeper:cancel("tour is moving on")
local ok, err = pcall(await, sleeper)
say("sleeper cancelled: %s (%s)", tostring(sleeper:cancelled()), tostring(err))

-- 6. A timeout: wait_for cancels what runs too long and raises TimeoutError.
local ok2, err2 = pcall(await, asyncio.wait_for(asyncio.sleep(10), 0.05))
say("wait_for raised %s", tostring(err2))

-- 7. Errors keep their class through await, and tostring reads well.
local failing = asyncio.create_task(function()
  await asyncio.sleep(0.01)
  error(asyncio.ValueError("bad input"))
end)
local _, e = pcall(await, failing)
say("failed task raised %s; isinstance ValueError: %s", tostring(e),
    tostring(asyncio.isinstance(e, asyncio.ValueError)))
say("tour done")
