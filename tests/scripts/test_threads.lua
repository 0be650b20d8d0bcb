-- Worker threads: to_thread, run_in_executor, ThreadPoolExecutor; what
-- crosses between states and what is refused.
local T = require "asyncio.test"
local loop = asyncio.get_running_loop()

T.case("to_thread returns every result of the function", async function()
  local a, b, c = await asyncio.to_thread(function(x, y) return x + y, x .. y, nil end, 1, 2)
  T.eq({ a, b, c }, { 3, "12", nil }, "results")
end)

T.case("tables cross by value, shared and cyclic ones keep their shape", async function()
  local shared = { "s" }
  local t = { a = shared, b = shared, n = 1.5, flag = true, [10] = "ten" }
  t.self = t
  local ok, r = await asyncio.to_thread(function(x)
    return x.a == x.b and x.self == x, { got = x.a[1], n = x.n, ten = x[10], flag = x.flag }
  end, t)
  T.eq(ok, true, "identities kept")
  T.eq(r, { got = "s", n = 1.5, ten = "ten", flag = true }, "values")
end)

T.case("upvalues: plain data, recursion, C functions of libraries, nested functions", async function()
  local insert, concat = table.insert, table.concat
  local base = { 10, 20 }
  local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
  local function twice(f, x) return f(f(x)) end
  local r = await asyncio.to_thread(function()
    local out = {}
    insert(out, tostring(fib(20)))
    insert(out, tostring(twice(function(v) return v + base[1] end, base[2])))
    return concat(out, ",")
  end)
  T.eq(r, "6765,40", "computed in the worker")
end)

T.case("a module upvalue is required again by name in the worker", async function()
  local dir = T.tmpname("")
  os.execute("mkdir -p " .. dir)
  local f = io.open(dir .. "/moon_thread_mod.lua", "w")
  f:write("local M = {}\nM.loaded_in = tostring(M)\nfunction M.shout(s) return s:upper() .. '!' end\nreturn M\n")
  f:close()
  package.path = dir .. "/?.lua;" .. package.path
  local mod = require "moon_thread_mod"
  local r, addr = await asyncio.to_thread(function(s) return mod.shout(s), mod.loaded_in end, "hi")
  T.eq(r, "HI!", "the module's function")
  T.ok(addr ~= mod.loaded_in, "a fresh copy of the module in the worker")
end)

T.case("an error in the worker is raised in the awaiting task", async function()
  local e = T.raises(nil, asyncio.to_thread(function() error("boom") end), "string error")
  T.match(e, "test_threads%.lua:%d+: boom$", "the string, with the worker's position")
  e = T.raises(nil, asyncio.to_thread(function() error({ code = 7 }) end), "table error")
  T.eq(e.code, 7, "the table's fields")
  T.match(e.worker_traceback, "stack traceback", "the worker's traceback")
  e = T.raises(nil, asyncio.to_thread(function() return undefined_global.x end), "runtime error")
  T.match(e, "undefined_global", "names the culprit")
end)

T.case("what cannot cross raises TypeError naming it", async function()
  local sock = require("socket").socket(require("socket").AF_INET, require("socket").SOCK_STREAM)
  local e = T.raises(asyncio.TypeError, function()
    return asyncio.to_thread(function() return sock end)
  end, "userdata upvalue")
  T.match(tostring(e), "upvalue 'sock'", "names the upvalue")
  sock:close()
  e = T.raises(asyncio.TypeError, function()
    return asyncio.to_thread(function(c) end, coroutine.create(print))
  end, "a coroutine argument")
  T.match(tostring(e), "argument #1", "names the argument")
  e = T.raises(asyncio.TypeError, asyncio.to_thread(function() return coroutine.create(print) end), "result")
  T.match(tostring(e), "thread", "says what")
  e = T.raises(asyncio.TypeError, asyncio.to_thread(function() error(coroutine.create(print)) end), "error value")
  T.match(tostring(e), "cannot copy", "says why")
  T.raises(nil, function() return asyncio.to_thread(42) end, "not a function")
end)

T.case("results come back in order for each job; 10,000 jobs", async function()
  local futs = {}
  for i = 1, 10000 do
    futs[i] = loop:run_in_executor(nil, function(x) return x * 2 end, i)
  end
  local r = await asyncio.gather(table.unpack(futs))
  local bad
  for i = 1, 10000 do if r[i] ~= 2 * i then bad = i; break end end
  T.eq(bad, nil, "first wrong result")
end)

T.case("cancelling the awaiting task raises CancelledError at once", async function()
  local ex = asyncio.ThreadPoolExecutor(1)
  local started = os.time()
  local task = asyncio.create_task(function()
    return await loop:run_in_executor(ex, function()
      local t0 = os.clock()
      while os.clock() - t0 < 0.3 do end
      return "finished"
    end)
  end)
  await asyncio.sleep(0)
  task:cancel()
  T.raises(asyncio.CancelledError, task, "the task")
  T.ok(task:cancelled(), "cancelled")
  -- The thread finishes its call; the executor still works after.
  T.eq(await ex:submit(function() return "next" end), "next", "the next job")
  ex:shutdown(true)
  T.ok(os.time() - started < 30, "bounded")
end)

T.case("ThreadPoolExecutor: submit, set_default_executor, shutdown", async function()
  local ex = asyncio.ThreadPoolExecutor(2)
  T.eq(ex:max_workers(), 2, "max_workers")
  T.eq(await ex:submit(function(a) return a .. "!" end, "sub"), "sub!", "submit")
  loop:set_default_executor(ex)
  T.eq(await asyncio.to_thread(function() return "default" end), "default", "to_thread on it")
  ex:shutdown(true)
  T.raises(asyncio.RuntimeError, function() ex:submit(print) end, "after shutdown")
  loop:set_default_executor(asyncio.ThreadPoolExecutor())
  T.eq(await asyncio.to_thread(function() return 1 end), 1, "a new default")
  T.raises(asyncio.ValueError, function() asyncio.ThreadPoolExecutor(0) end, "0 workers")
  T.raises(asyncio.TypeError, function() loop:set_default_executor({}) end, "not an executor")
end)

T.case("a function sent again gets fresh upvalues; closures it left behind keep theirs", async function()
  local ex = asyncio.ThreadPoolExecutor(1)  -- one worker: the second job finds the first's function
  local counter = 0
  local function job(add)
    counter = counter + add
    keep = keep or {}              -- a global of the worker's state
    keep[#keep + 1] = function() return counter end
    local seen = {}
    for i, get in ipairs(keep) do seen[i] = get() end
    return counter, seen
  end
  local c1, s1 = await ex:submit(job, 10)
  local c2, s2 = await ex:submit(job, 5)
  T.eq({ c1, s1 }, { 10, { 10 } }, "first job")
  T.eq({ c2, s2 }, { 5, { 10, 5 } }, "second job: its own upvalue, the first closure's kept")
  T.eq(counter, 0, "the caller's upvalue is untouched")
  -- Plain data only (the path that skips the protected encoder), changed between calls.
  local base = 1
  local function add(x) return x + base end
  T.eq(await ex:submit(add, 1), 2, "base 1")
  base = 100
  T.eq(await ex:submit(add, 1), 101, "base 100: the upvalue's value now, not a cached one")
  ex:shutdown(true)
end)

T.case("the default size is Python's, min(32, cores + 4)", function()
  local ex = asyncio.ThreadPoolExecutor()
  local cores = tonumber((T.sh("nproc")))
  T.eq(ex:max_workers(), math.min(32, cores + 4), "max_workers")
  ex:shutdown(false)
end)

T.case("workers have the standard libraries and no loop", async function()
  local r = await asyncio.to_thread(function()
    return type(string.format) .. type(os.time) .. type(io.open) .. type(asyncio) .. type(await)
  end)
  T.eq(r, "functionfunctionfunctionnilnil", "globals in the worker")
end)

T.case("a job that breaks its worker's globals does not break the next one", async function()
  local ex = asyncio.ThreadPoolExecutor(1)
  await ex:submit(function() package = nil; setmetatable(_G, { __index = function() error("no") end }) end)
  T.eq(await ex:submit(function(x) return x end, "still"), "still", "the next job")
  ex:shutdown(true)
end)

-- From a worker back to the loop: call_soon_threadsafe, Futures by
-- reference, run_coroutine_threadsafe; wrap_future.

T.case("call_soon_threadsafe from a worker runs the copied callback on the loop, in order", async function()
  local got, done = {}, loop:create_future()
  -- The callback's upvalues are copies too: it reaches the loop's state
  -- through its globals (_ENV is the globals of the state it runs in).
  _G.__thread_test_sink = function(i, s)
    got[#got + 1] = i .. s
    if i == 3 then done:set_result(true) end
  end
  local r = await asyncio.to_thread(function(l)
    for i = 1, 3 do l:call_soon_threadsafe(function(n, s) __thread_test_sink(n, s) end, i, "x") end
    return tostring(l), l:is_closed()
  end, loop)
  await done
  _G.__thread_test_sink = nil
  T.eq(got, { "1x", "2x", "3x" }, "all three, in order")
  T.match(r, "RemoteLoop", "the loop in the worker")
end)

T.case("an error in a callback from a worker goes to the loop's exception handler", async function()
  local reported = loop:create_future()
  local old = loop:get_exception_handler()
  loop:set_exception_handler(function(_, ctx) if not reported:done() then reported:set_result(ctx) end end)
  await asyncio.to_thread(function(l) l:call_soon_threadsafe(function() error("cb failed") end) end, loop)
  local ctx = await reported
  loop:set_exception_handler(old)
  T.match(tostring(ctx.exception), "cb failed", "the callback's error")
  T.match(ctx.message, "call_soon_threadsafe", "says where")
end)

T.case("a Future crosses by reference: set_result, set_exception, cancel from a worker", async function()
  local f1, f2, f3, f4 = loop:create_future(), loop:create_future(), loop:create_future(), loop:create_future()
  await asyncio.to_thread(function(a, b, c, d, l)
    a:set_result("done", 2)
    b:set_exception("worker failed")
    c:cancel()
    -- Sent back as an argument, a RemoteFuture is the Future itself again.
    l:call_soon_threadsafe(function(f) f:set_result(tostring(f):match("Future") ~= nil) end, d)
  end, f1, f2, f3, f4, loop)
  T.eq({ await f1 }, { "done", 2 }, "set_result")
  T.eq(T.raises(nil, f2, "set_exception"), "worker failed", "the exception value")
  T.raises(asyncio.CancelledError, f3, "cancel")
  T.eq(await f4, true, "the same Future on the loop's side")
end)

T.case("run_coroutine_threadsafe from a worker: results, errors, timeouts", async function()
  local async function twice(x) await asyncio.sleep(0.01) return x * 2, "ok" end
  local async function fail() error("bad coroutine") end
  local async function slow(f) return await f end
  local gate = loop:create_future()
  local r = { await asyncio.to_thread(function(l, g)
    local asyncio = require "asyncio"   -- the part of asyncio a worker has
    local a, b = asyncio.run_coroutine_threadsafe(twice(21), l):result(30)
    local ok, e = pcall(function() return asyncio.run_coroutine_threadsafe(fail(), l):result(30) end)
    local cf = asyncio.run_coroutine_threadsafe(slow(g), l)  -- g goes back as the Future itself
    local tok, te = pcall(cf.result, cf, 0.01)
    local was_done = cf:done()
    g:set_result("opened")
    return a, b, e, te, was_done, cf:result(30)
  end, loop, gate) }
  T.eq(r[1], 42, "first result")
  T.eq(r[2], "ok", "second result")
  T.match(r[3], "bad coroutine", "the coroutine's error, as a string")
  T.match(r[4], "^TimeoutError", "result(timeout) gave up")
  T.eq(r[5], false, "still running then")
  T.eq(r[6], "opened", "and finished once the worker opened the gate")
end)

T.case("run_coroutine_threadsafe in the loop's own state, and wrap_future", async function()
  local async function add(a, b) await asyncio.sleep(0) return a + b end
  local cf = asyncio.run_coroutine_threadsafe(add(1, 2), loop)
  T.raises(asyncio.RuntimeError, function() cf:result() end, "result() on the loop's thread while pending")
  T.eq(await asyncio.wrap_future(cf), 3, "wrap_future of a ConcurrentFuture")
  T.eq(cf:result(), 3, "result() once done")
  local f = loop:create_future()
  T.ok(asyncio.wrap_future(f) == f, "a Future is returned as it is")
  T.raises(asyncio.TypeError, function() asyncio.wrap_future(42) end, "not a future")
  T.raises(asyncio.TypeError, function() asyncio.run_coroutine_threadsafe(42, loop) end, "not a coroutine")
end)

T.run()
