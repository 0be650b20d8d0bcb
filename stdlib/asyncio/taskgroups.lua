-- asyncio.taskgroups: TaskGroup, structured concurrency with the semantics of
-- CPython's asyncio.taskgroups (3.13).
--
--   do
--     local tg <close> = asyncio.TaskGroup()     -- async with TaskGroup() as tg
--     tg:create_task(work(1))
--     tg:create_task(work(2))
--   end                                          -- waits for both
--   local v = await asyncio.TaskGroup(function(tg) ... end)
--
-- The first child that fails cancels its siblings (in creation order) and the
-- body (the parent task is cancelled); when every child has finished, the
-- group raises ExceptionGroup("unhandled errors in a TaskGroup", errors),
-- with the errors of the children in the order they failed, followed by the
-- body's own error if it raised one.  A cancellation of the parent from
-- outside cancels the children and propagates as CancelledError.

local asyncio = require "asyncio"
local util = require "asyncio._util"
local raise, is_cancel, finish = util.raise, util.is_cancel, util.finish

local M = {}

-- Errors that are raised as they are instead of in a group (Python's
-- SystemExit and KeyboardInterrupt), if the runtime defines such classes.
local function is_base_error(e)
  local ki, se = asyncio.KeyboardInterrupt, asyncio.SystemExit
  return (ki ~= nil and asyncio.isinstance(e, ki))
      or (se ~= nil and asyncio.isinstance(e, se))
end

local TaskGroup = {}
TaskGroup.__index = TaskGroup
TaskGroup.__name = "asyncio.TaskGroup"

-- Python's __aenter__: the group is entered as soon as it exists, in the
-- running task, which becomes its parent.
local function enter()
  local parent = asyncio.current_task()
  if parent == nil then
    raise("RuntimeError", "TaskGroup cannot determine the parent task")
  end
  local self = setmetatable({
    _parent = parent,
    _tasks = {},          -- task -> creation number
    _ntasks = 0,
    _seq = 0,
    _errors = {n = 0},
    _base_error = nil,
    _exiting = false,
    _aborting = false,
    _parent_cancel_requested = false,
    _on_completed = nil,  -- Future the exit waits on, or nil
  }, TaskGroup)
  self._on_done = function(task) self:_on_task_done(task) end
  return self
end

-- Cancels the children still running, oldest first.
function TaskGroup:_abort()
  self._aborting = true
  local list = {}
  for t, seq in pairs(self._tasks) do list[#list + 1] = {seq, t} end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  for i = 1, #list do
    local t = list[i][2]
    if not t:done() then t:cancel() end
  end
end

function TaskGroup:_on_task_done(task)
  if self._tasks[task] then
    self._tasks[task] = nil
    self._ntasks = self._ntasks - 1
  end
  local fut = self._on_completed
  if fut ~= nil and self._ntasks == 0 and not fut:done() then
    fut:set_result(true)
  end
  if task:cancelled() then return end
  local exc = task:exception()
  if exc == nil then return end
  local errors = self._errors
  errors.n = errors.n + 1
  errors[errors.n] = exc
  if self._base_error == nil and is_base_error(exc) then
    self._base_error = exc
  end
  local parent = self._parent
  if parent:done() then
    local loop = asyncio.get_running_loop()
    if loop.call_exception_handler then
      loop:call_exception_handler({
        message = "Task " .. tostring(task) .. " has errored out but its parent task "
          .. tostring(parent) .. " is already completed",
        exception = exc,
        task = task,
      })
    end
    return
  end
  if not self._aborting and not self._parent_cancel_requested then
    -- Abort whatever the body is awaiting; __close will uncancel the parent.
    self:_abort()
    self._parent_cancel_requested = true
    parent:cancel()
  end
end

-- Starts coro (a Coroutine or function) as a child task; opts as
-- asyncio.create_task's ({name=}).  Returns the task.
-- A coroutine refused by create_task is closed, so that it is not
-- reported as never awaited (Python's coro.close()).
local function refuse(coro, msg)
  if asyncio.iscoroutine(coro) then coro:close() end
  raise("RuntimeError", msg)
end

function TaskGroup:create_task(coro, opts)
  if self._exiting and self._ntasks == 0 then
    refuse(coro, "TaskGroup " .. tostring(self) .. " is finished")
  end
  if self._aborting then
    refuse(coro, "TaskGroup " .. tostring(self) .. " is shutting down")
  end
  local task = asyncio.create_task(coro, opts)
  if task:done() then
    self:_on_task_done(task)
  else
    self._seq = self._seq + 1
    self._tasks[task] = self._seq
    self._ntasks = self._ntasks + 1
    task:add_done_callback(self._on_done)
  end
  return task
end

-- Python's __aexit__: err is the error leaving the body, or nil.  Waits for
-- every child, then raises what Python would raise: the base error, the
-- CancelledError to propagate, or the ExceptionGroup; or nothing, in which
-- case err (if any) goes on propagating, as in Python.
function TaskGroup:__close(err)
  if self._exiting then return end
  self._exiting = true
  local body_cancelled = err ~= nil and is_cancel(err)
  if err ~= nil and self._base_error == nil and is_base_error(err) then
    self._base_error = err
  end
  local propagate = nil
  if body_cancelled then propagate = err end
  if err ~= nil and not self._aborting then
    -- The parent is being cancelled, or the body raised: stop the children.
    self:_abort()
  end
  -- A loop: the wait may be cancelled several times (the parent cancelled
  -- repeatedly, or while our own cancellation is in progress).
  while self._ntasks > 0 do
    if self._on_completed == nil then
      self._on_completed = asyncio.Future()
    end
    local ok, e = pcall(await, self._on_completed)
    if not ok then
      if not is_cancel(e) then error(e, 0) end
      if not self._aborting then
        -- The parent was cancelled while the body had finished and the
        -- children were still running.
        propagate = e
        self:_abort()
      end
    end
    self._on_completed = nil
  end

  if self._base_error ~= nil then
    error(self._base_error, 0)
  end

  if self._parent_cancel_requested then
    -- We cancelled the parent ourselves: take that request back.  If no
    -- other request is left, the CancelledError was only ours.
    if self._parent:uncancel() == 0 then propagate = nil end
  end

  local errors = self._errors
  if propagate ~= nil and errors.n == 0 then
    if propagate == err then return end  -- keep the body's own error as is
    error(propagate, 0)
  end

  if err ~= nil and not body_cancelled then
    errors.n = errors.n + 1
    errors[errors.n] = err
  end

  if errors.n > 0 then
    -- If the parent is also being cancelled from outside, keep that request
    -- pending (uncancel + cancel keeps the count stable and re-arms it).
    local parent = self._parent
    if parent:cancelling() > 0 then
      parent:uncancel()
      parent:cancel()
    end
    error(asyncio.ExceptionGroup("unhandled errors in a TaskGroup", errors), 0)
  end
end

function TaskGroup:__tostring()
  local parts = {}
  if self._ntasks > 0 then parts[#parts + 1] = "tasks=" .. self._ntasks end
  if self._errors.n > 0 then parts[#parts + 1] = "errors=" .. self._errors.n end
  if self._aborting then parts[#parts + 1] = "cancelling"
  elseif self._exiting then parts[#parts + 1] = "exiting"
  else parts[#parts + 1] = "entered" end
  return "<TaskGroup " .. table.concat(parts, " ") .. ">"
end

local async function run(fn)
  local tg <close> = enter()
  return finish(fn(tg))
end

-- TaskGroup(): a group entered in the running task, for a <close> variable.
-- TaskGroup(fn): a Coroutine that runs fn(tg) (a function or async
-- function) in a new group, waits for the children and returns fn's results.
M.TaskGroup = setmetatable(TaskGroup, {
  __call = function(_, fn)
    if fn ~= nil then return run(fn) end
    return enter()
  end,
  __tostring = function() return "<class 'asyncio.TaskGroup'>" end,
})

return M
