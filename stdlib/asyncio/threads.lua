-- asyncio.threads: to_thread, run_in_executor, set_default_executor,
-- ThreadPoolExecutor.  The threads, their Lua states and the copying of
-- functions and values are C (asyncio._thread).

local asyncio = require "asyncio"
local core = require "asyncio.core"
local C = require "asyncio._thread"

local Loop = core.Loop
local M = {}

-- ThreadPoolExecutor(max_workers): threads with their own Lua states;
-- max_workers defaults to Python's min(32, cores + 4).
local Executor = C.Executor.__index
function M.ThreadPoolExecutor(n)
  if n == nil then n = math.min(32, C.cpu_count() + 4) end
  return C.new(n)
end

-- ex:submit(fn, ...) -> Future of fn(...)'s results, on the running loop.
function Executor:submit(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'submit' (function expected, got " .. type(fn) .. ")", 2)
  end
  return self:_submit(fn, ...)
end

local default  -- the process-wide default executor, made on first use

-- loop:set_default_executor(executor)
function Loop:set_default_executor(ex)
  if getmetatable(ex) ~= C.Executor then
    error(asyncio.TypeError("executor must be a ThreadPoolExecutor"), 2)
  end
  self._default_executor = ex
end

-- loop:run_in_executor(executor, fn, ...) -> Future: fn(...) in a worker
-- thread (nil: the default executor).  fn and the arguments are copied
-- (docs/processes.md says what can be).
function Loop:run_in_executor(ex, fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #2 to 'run_in_executor' (function expected, got " .. type(fn) .. ")", 2)
  end
  if ex == nil then
    ex = rawget(self, "_default_executor")
    if ex == nil then
      default = default or M.ThreadPoolExecutor()
      ex = default
    end
  end
  return ex:_submit(fn, ...)
end

-- loop:call_soon_threadsafe(fn, ...): call_soon that also wakes the loop.
-- A Lua state runs on one thread at a time, so Lua code calling it is on
-- the loop's thread, where call_soon already is safe; other threads (a
-- host's) use ml_state_call_threadsafe from C.
function Loop:call_soon_threadsafe(fn, ...)
  return self:call_soon(fn, ...)
end

-- to_thread(fn, ...): awaits fn(...) run in the default executor.
async function M.to_thread(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'to_thread' (function expected, got " .. type(fn) .. ")", 2)
  end
  return await core.get_running_loop():run_in_executor(nil, fn, ...)
end

return M
