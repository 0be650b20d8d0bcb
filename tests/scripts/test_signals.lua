-- Signals: loop:add_signal_handler / remove_signal_handler with real
-- signals, sent by the script itself and by kill(1) from outside.
local T = require "asyncio.test"
local C = require "asyncio._signal"
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"
local sig = asyncio.signal
local loop = asyncio.get_running_loop()

T.case("a handler runs as a loop callback, with its arguments", async function()
  local got = loop:create_future()
  local ran = false
  loop:add_signal_handler(sig.SIGUSR1, function(a, b)
    ran = true
    if not got:done() then got:set_result(a .. b) end
  end, "x", 2)
  C.raise(sig.SIGUSR1)
  T.eq(ran, false, "not run inside the C handler")
  T.eq(await got, "x2", "arguments")
  T.eq(loop:remove_signal_handler(sig.SIGUSR1), true, "removed")
  T.eq(loop:remove_signal_handler(sig.SIGUSR1), false, "nothing left to remove")
end)

T.case("a signal from outside (kill -TERM), named as a string", async function()
  local got = loop:create_future()
  loop:add_signal_handler("SIGTERM", function() got:set_result("term") end)
  os.execute("kill -TERM " .. C.getpid())
  T.eq(await got, "term", "handled")
  T.eq(loop:remove_signal_handler("TERM"), true, "short name")
end)

T.case("each signal that arrives runs the handler", async function()
  local n, waiter = 0, nil
  loop:add_signal_handler(sig.SIGUSR2, function()
    n = n + 1
    if waiter and not waiter:done() then waiter:set_result() end
  end)
  for i = 1, 3 do
    waiter = loop:create_future()
    os.execute("kill -USR2 " .. C.getpid())
    await waiter
    T.eq(n, i, "calls")
  end
  loop:remove_signal_handler(sig.SIGUSR2)
end)

T.case("a handler added again replaces the first", async function()
  local got = loop:create_future()
  loop:add_signal_handler(sig.SIGUSR1, function() got:set_result("first") end)
  loop:add_signal_handler(sig.SIGUSR1, function() got:set_result("second") end)
  C.raise(sig.SIGUSR1)
  T.eq(await got, "second", "the later handler")
  loop:remove_signal_handler(sig.SIGUSR1)
end)

T.case("an async handler runs as a task", async function()
  local got = loop:create_future()
  loop:add_signal_handler(sig.SIGUSR1, async function(v)
    await asyncio.sleep(0)
    got:set_result(v)
  end, "async")
  C.raise(sig.SIGUSR1)
  T.eq(await got, "async", "awaited inside")
  loop:remove_signal_handler(sig.SIGUSR1)
end)

T.case("a failing handler goes to the exception handler; the loop goes on", async function()
  local seen = loop:create_future()
  loop:set_exception_handler(function(_, ctx) if not seen:done() then seen:set_result(ctx) end end)
  loop:add_signal_handler(sig.SIGUSR1, function() error("boom") end)
  C.raise(sig.SIGUSR1)
  local ctx = await seen
  loop:set_exception_handler(nil)
  loop:remove_signal_handler(sig.SIGUSR1)
  T.match(tostring(ctx.exception or ctx.message), "boom", "the error")
end)

T.case("bad signals and callbacks are refused", function()
  T.raises(asyncio.ValueError, function() loop:add_signal_handler("SIGNOPE", print) end, "unknown name")
  T.raises(asyncio.ValueError, function() loop:add_signal_handler(0, print) end, "0")
  T.raises(asyncio.ValueError, function() loop:add_signal_handler(1000, print) end, "too big")
  T.raises(asyncio.RuntimeError, function() loop:add_signal_handler(sig.SIGKILL, print) end, "SIGKILL")
  T.raises(asyncio.RuntimeError, function() loop:add_signal_handler("SIGSTOP", print) end, "SIGSTOP")
  local e = T.raises(nil, function() loop:add_signal_handler(sig.SIGUSR1, 42) end, "not a function")
  T.match(tostring(e), "function expected", "the message")
end)

T.case("SIGINT: a script's handler replaces the CLI's meaning; removing it brings it back", function()
  local path = T.tmpname(".lua")
  local f = io.open(path, "w")
  f:write([[
local C = require "asyncio._signal"
local loop = asyncio.get_running_loop()
local got = loop:create_future()
loop:add_signal_handler("SIGINT", function() got:set_result("mine") end)
C.raise(asyncio.signal.SIGINT)
print(await got)
loop:remove_signal_handler("SIGINT")
C.raise(asyncio.signal.SIGINT)   -- the CLI's: cancels the main task
await asyncio.sleep(5)
print("not reached")
]])
  f:close()
  local out, st = T.sh(BIN .. " " .. path .. " 2>&1")
  T.match(out, "^mine\n", "the script's handler ran")
  T.ok(not out:find("not reached"), "the main task was cancelled: " .. out)
  T.eq(st, 130, "exit status of an interrupted script")
end)

T.case("a signal handler alone does not keep the script running", function()
  local out, st = T.sh(BIN .. [[ -e 'asyncio.get_running_loop():add_signal_handler("SIGTERM", print); print("done")' 2>&1]])
  T.eq(out, "done\n", "output")
  T.eq(st, 0, "status")
end)

T.run()
