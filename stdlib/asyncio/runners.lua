-- asyncio.runners: new_event_loop, set_event_loop and Runner, Python's
-- loop lifecycle over the state's one scheduler.  A loop object of
-- new_event_loop() is a handle on that scheduler with its own running and
-- closed state (the lifecycle itself is in stdlib/asyncio.lua).
local asyncio = require "asyncio"
local core = require "asyncio.core"
local util = require "asyncio._util"

local life = asyncio._life
local LoopMT = getmetatable(core._own_loop())

local M = {}

-- new_event_loop() -> a loop object, not running, not closed, on the
-- state's scheduler.
function M.new_event_loop()
  return setmetatable({}, LoopMT)
end

-- set_event_loop(loop | nil): what get_event_loop() returns outside a run.
function M.set_event_loop(loop)
  if loop ~= nil and (type(loop) ~= "table" or loop.call_soon == nil) then
    error(asyncio.TypeError("set_event_loop() expects a loop object or nil, got " .. tostring(loop)), 2)
  end
  life.set = loop
  core._set_current(loop)
end

-- Runner([{debug =, loop_factory =}]): runs coroutines in one loop, made
-- on first use; close() (or leaving a <close> variable) cancels the tasks
-- made since, lets them finish and closes the loop.
local Runner = asyncio._class("Runner")
M.Runner = Runner
local RUNNER_OPTS = { debug = true, loop_factory = true }

function Runner.new(cls, opts)
  opts = util.check_opts(opts, "Runner", RUNNER_OPTS)
  if opts.loop_factory ~= nil and type(opts.loop_factory) ~= "function" then
    error(asyncio.TypeError("Runner() option 'loop_factory' must be a function"), 3)
  end
  return setmetatable({ _debug = opts.debug, _factory = opts.loop_factory, _state = "created" }, cls)
end

local function lazy_init(self, level)
  if self._state == "closed" then error(asyncio.RuntimeError("Runner is closed"), level + 1) end
  if self._state == "initialized" then return end
  local loop
  if self._factory then
    loop = self._factory()
  else
    loop = M.new_event_loop()
    M.set_event_loop(loop)
    self._set_loop = true
  end
  if self._debug ~= nil then loop:set_debug(self._debug) end
  self._loop, self._before, self._state = loop, asyncio._task_set(), "initialized"
end

-- runner:run(coro) -> coro's results, run as a task in the runner's loop.
function Runner:run(coro)
  if not asyncio.iscoroutine(coro) then
    error(asyncio.ValueError("a coroutine was expected, got " .. tostring(coro)), 2)
  end
  if life.loop ~= nil or (core._in_loop() and core.current_task() == nil) then
    error(asyncio.RuntimeError("Runner.run() cannot be called from a running event loop"), 2)
  end
  lazy_init(self, 2)
  return asyncio._run_loop(self._loop, self._loop:create_task(coro), true, 2)
end

-- runner:get_loop() -> its loop (made now if it was not yet).
function Runner:get_loop()
  lazy_init(self, 2)
  return self._loop
end

-- runner:close(): cancels the tasks made since the runner made its loop,
-- awaits them (reporting their errors), and closes the loop.  Idempotent.
function Runner:close()
  if self._state ~= "initialized" then self._state = "closed"; return end
  local loop = self._loop
  local ok, e = pcall(function()
    if core.current_task() then
      asyncio._cancel_leftovers(self._before)
    else
      local left = {}
      for t in pairs(asyncio._task_set()) do
        if not self._before[t] then left[#left + 1] = t; t:cancel() end
      end
      if #left > 0 then
        loop:run_until_complete(asyncio.gather(table.unpack(left), { return_exceptions = true }))
      end
    end
  end)
  if self._set_loop and life.set == loop then M.set_event_loop(nil) end
  loop:close()
  self._loop, self._before, self._state = nil, nil, "closed"
  if not ok then error(e, 0) end
end

Runner.__close = Runner.close

return M
