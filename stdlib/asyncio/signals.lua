-- asyncio.signals: loop:add_signal_handler and remove_signal_handler.
-- The catching is C (asyncio._signal): the C handler only wakes the
-- loop, and the Lua handler runs as a loop callback.

local asyncio = require "asyncio"
local core = require "asyncio.core"
local C = require "asyncio._signal"
local signum = require("asyncio.subprocess")._signum

local Loop = core.Loop
local M = {}

local set  -- this state's SignalSet, made on first use

-- Runs one handler entry {fn, args..., n = k}; an async handler (one that
-- returns a coroutine) gets a task.
local function run(h)
  local r = h.fn(table.unpack(h, 1, h.n))
  if asyncio.iscoroutine(r) then core.create_task(r) end
end

-- loop:add_signal_handler(sig, callback, ...): callback(...) runs as a
-- loop callback each time sig (a number or a name: "SIGTERM") arrives,
-- replacing the handler sig had.  SIGINT then no longer cancels the main
-- task, until remove_signal_handler(SIGINT).
function Loop:add_signal_handler(sig, callback, ...)
  local n = signum(sig, "add_signal_handler")
  if type(callback) ~= "function" and not (getmetatable(callback) or {}).__call then
    error(string.format("bad argument #2 to 'add_signal_handler' (function expected, got %s)",
                        type(callback)), 2)
  end
  if set == nil then set = C.new() end
  set:catch(n, { run, { fn = callback, n = select("#", ...), ... } })
end

-- loop:remove_signal_handler(sig) -> true if sig had a handler; its
-- previous disposition comes back.
function Loop:remove_signal_handler(sig)
  local n = signum(sig, "remove_signal_handler")
  if set == nil then
    if n < 1 or n >= C.NSIG then error(asyncio.ValueError("sig " .. n .. " out of range(1, " .. C.NSIG .. ")"), 2) end
    return false
  end
  return set:release(n)
end

-- asyncio._signal.raise(sig), os.kill(os.getpid(), sig) for scripts.
M._raise = C.raise
M._getpid = C.getpid

return M
