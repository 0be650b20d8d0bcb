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

local default  -- the default executor (the process's shared pool), made on first use

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
      default = default or C.default_executor()
      ex = default
    end
  end
  return ex:_submit(fn, ...)
end

-- loop:call_soon_threadsafe(fn, ...): in the loop's own state, Lua code
-- runs on the loop's thread, where call_soon already is safe.  A worker
-- thread reaches the loop through the loop copied into its state (a
-- RemoteLoop: asyncio._thread, remote.c); a host's threads through
-- ml_state_call_threadsafe from C.
function Loop:call_soon_threadsafe(fn, ...)
  return self:call_soon(fn, ...)
end

-- A worker's run_coroutine_threadsafe(coro, loop) arrives here, on the
-- loop's thread: afn(...) runs as a task and the handle (the worker's
-- ConcurrentFuture) gets its outcome, copied; an error as its string.
local function settle(h, t)
  if t:cancelled() then return h:_settle(false, "CancelledError") end
  local e = t:exception()
  if e ~= nil then return h:_settle(false, tostring(e)) end
  return h:_settle(true, t:result())
end
C._set_spawner(function(h, afn, ...)
  local ok, task = pcall(function(...) return asyncio.ensure_future(afn(...)) end, ...)
  if not ok then return h:_settle(false, tostring(task)) end
  task:add_done_callback(function(t) settle(h, t) end)
end)

-- run_coroutine_threadsafe's result in the loop's own state: Python's
-- concurrent.futures.Future over the task.  (In a worker's state the C
-- ConcurrentFuture of asyncio._thread, whose result() blocks the thread.)
local ConcurrentFuture = { __name = "asyncio.ConcurrentFuture" }
ConcurrentFuture.__index = ConcurrentFuture
function ConcurrentFuture:done() return self._task:done() end
function ConcurrentFuture:cancelled() return self._task:cancelled() end
function ConcurrentFuture:cancel() return self._task:cancel() end
function ConcurrentFuture:add_done_callback(fn)
  self._task:add_done_callback(function() fn(self) end)
end
local function not_blocking(self, what)
  if not self._task:done() then
    error(asyncio.RuntimeError(what .. "() would block the event loop's own thread forever: "
      .. "await asyncio.wrap_future(f) instead"), 3)
  end
end
function ConcurrentFuture:result(timeout)
  not_blocking(self, "result")
  return self._task:result()
end
function ConcurrentFuture:exception(timeout)
  not_blocking(self, "exception")
  return self._task:exception()
end
function ConcurrentFuture:__tostring()
  return "<ConcurrentFuture of " .. tostring(self._task) .. ">"
end

-- run_coroutine_threadsafe(coro, loop) -> ConcurrentFuture: coro runs as a
-- task of loop.  (From a worker thread, see asyncio._thread.)
function M.run_coroutine_threadsafe(coro, loop)
  if not asyncio.iscoroutine(coro) then
    error(asyncio.TypeError("A coroutine object is required"), 2)
  end
  if loop == nil or type(loop.create_task) ~= "function" then
    error(asyncio.TypeError("run_coroutine_threadsafe() needs the loop as its second argument"), 2)
  end
  return setmetatable({ _task = loop:create_task(coro) }, ConcurrentFuture)
end

-- wrap_future(f) -> an asyncio Future: f itself if it is one (as Python),
-- the task behind a ConcurrentFuture.
function M.wrap_future(f)
  if asyncio.isfuture(f) then return f end
  if getmetatable(f) == ConcurrentFuture then return f._task end
  error(asyncio.TypeError("a Future or ConcurrentFuture is expected, got " .. tostring(f)), 2)
end

-- to_thread(fn, ...): awaits fn(...) run in the default executor.
async function M.to_thread(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'to_thread' (function expected, got " .. type(fn) .. ")", 2)
  end
  return await core.get_running_loop():run_in_executor(nil, fn, ...)
end

return M
