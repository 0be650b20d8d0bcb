-- asyncio.timeouts: timeout(delay) and timeout_at(when), CPython 3.12's
-- asyncio.timeouts in Lua form.
--
--   do
--     local cm <close> = asyncio.timeout(2)    -- async with timeout(2) as cm
--     ...
--   end
--   local v = await asyncio.timeout(2, fn)     -- runs fn(cm), returns its results
--
-- When the deadline passes, the task that entered the timeout is cancelled;
-- on exit the CancelledError this caused is replaced by TimeoutError.  The
-- bookkeeping uses the task's cancel count (cancelling/uncancel), so a
-- timeout never swallows a cancellation that came from elsewhere, and nested
-- timeouts each convert only their own.
--
-- Lua has no `async with`: the <close> form enters the timeout when
-- asyncio.timeout() is called, and its __close is Python's __aexit__.

local asyncio = require "asyncio"
local util = require "asyncio._util"
local raise, call = util.raise, util.call

local M = {}

local CREATED, ENTERED, EXPIRING, EXPIRED, EXITED =
  "created", "active", "expiring", "expired", "finished"

local Timeout = {}
Timeout.__index = Timeout
Timeout.__name = "asyncio.Timeout"
M.Timeout = setmetatable(Timeout, {
  __tostring = function() return "<class 'asyncio.Timeout'>" end,
})

-- Loop callback: the deadline passed.
local function on_timeout(self)
  if self._state ~= ENTERED then return end
  self._task:cancel()
  self._state = EXPIRING
  self._handle = nil
end

-- The deadline, in loop:time() units, or nil for none.
function Timeout:when()
  return self._when
end

-- Moves the deadline (nil: no deadline).  Only while the timeout is active.
function Timeout:reschedule(when)
  if self._state ~= ENTERED then
    if self._state == CREATED then
      raise("RuntimeError", "Timeout has not been entered")
    end
    raise("RuntimeError", "Cannot change state of " .. self._state .. " Timeout")
  end
  if when ~= nil and type(when) ~= "number" then
    raise("TypeError", "timeout deadline must be a number or nil")
  end
  self._when = when
  if self._handle ~= nil then self._handle:cancel() end
  if when == nil then
    self._handle = nil
  else
    local loop = asyncio.get_running_loop()
    if when <= loop:time() then
      self._handle = loop:call_soon(on_timeout, self)
    else
      self._handle = loop:call_at(when, on_timeout, self)
    end
  end
end

-- True once the deadline has passed (and cancelled the task).
function Timeout:expired()
  return self._state == EXPIRING or self._state == EXPIRED
end

-- Python's __aexit__.  err is the error leaving the scope, or nil.  Raises
-- TimeoutError in place of the CancelledError this timeout caused; any other
-- error (or a cancellation requested by someone else) goes on unchanged.
function Timeout:__close(err)
  local state = self._state
  if state ~= ENTERED and state ~= EXPIRING then return end
  if self._handle ~= nil then
    self._handle:cancel()
    self._handle = nil
  end
  if state == EXPIRING then
    self._state = EXPIRED
    if self._task:uncancel() <= self._cancelling and err ~= nil
        and asyncio.isinstance(err, asyncio.CancelledError) then
      -- No cancellation requests other than ours: this one is ours.
      raise("TimeoutError")
    end
  else
    self._state = EXITED
  end
end

function Timeout:__tostring()
  local s = "<Timeout [" .. self._state .. "]"
  if self._state == ENTERED then
    s = s .. " when=" .. tostring(self._when)
  end
  return s .. ">"
end

-- Python's __aenter__ (the object is entered as soon as it exists).
local function enter(when)
  if when ~= nil and type(when) ~= "number" then
    util.bad_timeout()
  end
  if when ~= when then raise("ValueError", "timeout is NaN") end
  local task = asyncio.current_task()
  if task == nil then
    raise("RuntimeError", "Timeout should be used inside a task")
  end
  local self = setmetatable({
    _when = when,
    _state = ENTERED,
    _task = task,
    _cancelling = task:cancelling(),
    _handle = nil,
  }, Timeout)
  self:reschedule(when)
  return self
end

-- Runs fn(cm) (fn a function or async function; or a Coroutine, awaited)
-- inside a timeout ending at when.  Returns fn's results.
local async function run(when, is_delay, fn)
  if is_delay and when ~= nil then
    if type(when) ~= "number" then util.bad_timeout() end
    when = asyncio.get_running_loop():time() + when
  end
  local cm <close> = enter(when)
  return call(fn, cm)
end

-- timeout(delay): enters a timeout of delay seconds from now (nil: none)
-- and returns it, for a <close> variable.  timeout(delay, fn): a Coroutine
-- that runs fn within the timeout (the delay counts from when it is
-- awaited) and returns fn's results.
function M.timeout(delay, fn)
  if fn ~= nil then return run(delay, true, fn) end
  local when = nil
  if delay ~= nil then
    if type(delay) ~= "number" then util.bad_timeout() end
    when = asyncio.get_running_loop():time() + delay
  end
  return enter(when)
end

-- timeout_at(when), timeout_at(when, fn): the same with an absolute
-- deadline in loop:time() units.
function M.timeout_at(when, fn)
  if fn ~= nil then return run(when, false, fn) end
  return enter(when)
end

return M
