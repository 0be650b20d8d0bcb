-- asyncio.locks: Lock, Event, Condition, Semaphore, BoundedSemaphore and
-- Barrier, with the semantics of CPython's asyncio.locks (3.12/3.13).
--
-- Every waiter parks on a fresh Future kept in a FIFO.  Waking a waiter only
-- completes its Future; the state change (taking the lock, taking a permit)
-- happens when the woken task runs.  A task cancelled after it was woken but
-- before it ran therefore sees CancelledError and hands what it was given to
-- the next waiter: nothing is ever lost to a cancelled waiter, and a
-- cancelled waiter never wins.  Uncontended acquire/release allocate nothing.

local asyncio = require "asyncio"
local util = require "asyncio._util"
local raise, is_cancel, call = util.raise, util.is_cancel, util.call

local M = {}

-- Exception classes and Future are looked up at call time: the core may fill
-- them in after this module is loaded.

---------------------------------------------------------------- waiters
-- A FIFO of futures in w[w.first .. w.last].  Removing from the middle is a
-- linear scan, as with Python's deque.remove: it only happens for cancelled
-- waiters, and the common removal (the head, just woken) is O(1).

local function waiters_new()
  return {first = 1, last = 0}
end

local function wlen(w)
  return w.last - w.first + 1
end

local function wpush(w, x)
  local l = w.last + 1
  w.last = l
  w[l] = x
end

local function wremove(w, x)
  local f, l = w.first, w.last
  for i = f, l do
    if w[i] == x then
      if i == f then
        w[f] = nil
        w.first = f + 1
      else
        for j = i, l - 1 do w[j] = w[j + 1] end
        w[l] = nil
        w.last = l - 1
      end
      if w.first > w.last then w.first, w.last = 1, 0 end
      return true
    end
  end
  return false
end

---------------------------------------------------------------- classes

local class = asyncio._class

-- A guard is what acquire() returns: truthy, and a to-be-closed value whose
-- __close releases, so `local _ <close> = await lock:acquire()` releases on
-- scope exit.  One guard per primitive, made once: acquiring allocates none.
local Guard = {__name = "asyncio.Guard"}
Guard.__index = Guard
Guard.__close = function(g) g[1]:release() end
Guard.__tostring = function(g) return "<guard of " .. tostring(g[1]) .. ">" end

local function guard(obj)
  return setmetatable({obj}, Guard)
end

-- `await x:with(fn)`: acquire, run fn (a function, async function or
-- Coroutine), release even if fn raises; returns what fn returns.
local async function with(self, fn, ...)
  local _ <close> = await self:acquire()
  return call(fn, ...)
end

local function flags(parts)
  local t = {}
  for i = 1, #parts do if parts[i] then t[#t + 1] = parts[i] end end
  return table.concat(t, ", ")
end

---------------------------------------------------------------- Lock

local Lock = class("Lock")
M.Lock = Lock

function Lock.new(cls)
  local self = setmetatable({_locked = false, _waiters = nil}, cls)
  self._guard = guard(self)
  return self
end

function Lock:locked()
  return self._locked
end

local function all_cancelled(w)
  for i = w.first, w.last do
    if not w[i]:cancelled() then return false end
  end
  return true
end

-- Fair: a caller queues behind existing waiters even when the lock is free
-- (a woken waiter has not yet run).  Jumping the queue when every waiter is
-- cancelled is the only shortcut.
async function Lock:acquire()
  local w = self._waiters
  if not self._locked and (w == nil or w.last < w.first or all_cancelled(w)) then
    self._locked = true
    return self._guard
  end
  if w == nil then
    w = waiters_new()
    self._waiters = w
  end
  local fut = asyncio.Future()
  wpush(w, fut)
  local ok, err = pcall(await, fut)
  wremove(w, fut)
  if not ok then
    -- Cancelled (perhaps just after release() chose us): keep the invariant
    -- that if the lock is free, the first waiter is being woken.
    if not self._locked then self:_wake_up_first() end
    error(err, 0)
  end
  self._locked = true
  return self._guard
end

function Lock:release()
  if not self._locked then raise("RuntimeError", "Lock is not acquired.") end
  self._locked = false
  self:_wake_up_first()
end

function Lock:_wake_up_first()
  local w = self._waiters
  if w == nil or w.last < w.first then return end
  local fut = w[w.first]
  -- done() means it is already being woken (or was cancelled and will
  -- pass the wake-up on when its task runs).
  if not fut:done() then fut:set_result(true) end
end

Lock.with = with

function Lock:__tostring()
  local w = self._waiters
  local n = w and wlen(w) or 0
  return "<asyncio.Lock [" .. flags{self._locked and "locked" or "unlocked",
    n > 0 and ("waiters:" .. n)} .. "]>"
end

---------------------------------------------------------------- Event

local Event = class("Event")
M.Event = Event

function Event.new(cls)
  return setmetatable({_value = false, _waiters = waiters_new()}, cls)
end

function Event:is_set()
  return self._value
end

function Event:set()
  if not self._value then
    self._value = true
    local w = self._waiters
    for i = w.first, w.last do
      local fut = w[i]
      if not fut:done() then fut:set_result(true) end
    end
  end
end

function Event:clear()
  self._value = false
end

async function Event:wait()
  if self._value then return true end
  local fut = asyncio.Future()
  local w = self._waiters
  wpush(w, fut)
  local ok, err = pcall(await, fut)
  wremove(w, fut)
  if not ok then error(err, 0) end
  return true
end

function Event:__tostring()
  local n = wlen(self._waiters)
  return "<asyncio.Event [" .. flags{self._value and "set" or "unset",
    n > 0 and ("waiters:" .. n)} .. "]>"
end

---------------------------------------------------------------- Condition

local Condition = class("Condition")
M.Condition = Condition

function Condition.new(cls, lock)
  if lock == nil then lock = Lock() end
  local self = setmetatable({_lock = lock, _waiters = waiters_new()}, cls)
  return self
end

function Condition:locked() return self._lock:locked() end
function Condition:acquire() return self._lock:acquire() end
function Condition:release() return self._lock:release() end
Condition.with = with

local function notify(self, n)
  local w = self._waiters
  local idx = 0
  for i = w.first, w.last do
    if idx >= n then break end
    local fut = w[i]
    if not fut:done() then
      idx = idx + 1
      fut:set_result(false)
    end
  end
end

-- Releases the lock, waits for a notify, re-acquires the lock (also when
-- cancelled: the caller always holds the lock again when wait returns or
-- raises).  An error raised out of here may come after this waiter was
-- notified, so the notification is passed on (a spurious wake-up, which
-- the condition-variable protocol allows) rather than lost.
async function Condition:wait()
  if not self._lock:locked() then
    raise("RuntimeError", "cannot wait on un-acquired lock")
  end
  self._lock:release()
  local fut = asyncio.Future()
  local w = self._waiters
  wpush(w, fut)
  local ok, err = pcall(await, fut)
  wremove(w, fut)
  local cancel_err = nil
  while true do
    local aok, aerr = pcall(await, self._lock:acquire())
    if aok then break end
    if not is_cancel(aerr) then
      notify(self, 1)
      error(aerr, 0)
    end
    cancel_err = aerr
  end
  if cancel_err ~= nil then ok, err = false, cancel_err end
  if not ok then
    notify(self, 1)
    error(err, 0)
  end
  return true
end

async function Condition:wait_for(predicate)
  local result = predicate()
  while not result do
    await self:wait()
    result = predicate()
  end
  return result
end

function Condition:notify(n)
  if not self._lock:locked() then
    raise("RuntimeError", "cannot notify on un-acquired lock")
  end
  notify(self, n or 1)
end

function Condition:notify_all()
  self:notify(wlen(self._waiters))
end

function Condition:__tostring()
  local n = wlen(self._waiters)
  return "<asyncio.Condition [" .. flags{self._lock:locked() and "locked" or "unlocked",
    n > 0 and ("waiters:" .. n)} .. "]>"
end

---------------------------------------------------------------- Semaphore

local Semaphore = class("Semaphore")
M.Semaphore = Semaphore

function Semaphore.new(cls, value)
  if value == nil then value = 1 end
  if math.type(value) ~= "integer" then
    if type(value) == "number" and value == math.floor(value) then
      value = math.tointeger(value)
    else
      raise("TypeError", "Semaphore value must be an integer")
    end
  end
  if value < 0 then raise("ValueError", "Semaphore initial value must be >= 0") end
  local self = setmetatable({_value = value, _waiters = nil}, cls)
  self._guard = guard(self)
  return self
end

-- True if acquire() would block: no permit, or (FIFO) live waiters queued
-- ahead of the caller.
function Semaphore:locked()
  if self._value == 0 then return true end
  local w = self._waiters
  if w == nil then return false end
  for i = w.first, w.last do
    if not w[i]:cancelled() then return true end
  end
  return false
end

-- Wakes the first waiter not already woken, taking a permit on its behalf.
function Semaphore:_wake_up_next()
  local w = self._waiters
  if w == nil then return false end
  for i = w.first, w.last do
    local fut = w[i]
    if not fut:done() then
      self._value = self._value - 1
      fut:set_result(true)
      return true
    end
  end
  return false
end

async function Semaphore:acquire()
  if not self:locked() then
    self._value = self._value - 1
    return self._guard
  end
  local w = self._waiters
  if w == nil then
    w = waiters_new()
    self._waiters = w
  end
  local fut = asyncio.Future()
  wpush(w, fut)
  local ok, err = pcall(await, fut)
  wremove(w, fut)
  if not ok and fut:done() and not fut:cancelled() then
    -- We were handed a permit (set_result) but are not going to take it:
    -- give it back so that the loop below passes it on.
    self._value = self._value + 1
  end
  -- New waiters may have queued behind us while we waited (FIFO): wake as
  -- many as there are permits.
  while self._value > 0 do
    if not self:_wake_up_next() then break end
  end
  if not ok then error(err, 0) end
  return self._guard
end

function Semaphore:release()
  self._value = self._value + 1
  self:_wake_up_next()
end

Semaphore.with = with

function Semaphore:__tostring()
  local w = self._waiters
  local n = w and wlen(w) or 0
  return "<asyncio." .. self._classname .. " [" .. flags{
    self:locked() and "locked" or ("unlocked, value:" .. self._value),
    n > 0 and ("waiters:" .. n)} .. "]>"
end

local BoundedSemaphore = class("BoundedSemaphore", Semaphore)
M.BoundedSemaphore = BoundedSemaphore
BoundedSemaphore.__tostring = Semaphore.__tostring

function BoundedSemaphore.new(cls, value)
  local self = Semaphore.new(cls, value)
  self._bound_value = self._value
  return self
end

function BoundedSemaphore:release()
  if self._value >= self._bound_value then
    raise("ValueError", "BoundedSemaphore released too many times")
  end
  Semaphore.release(self)
end

---------------------------------------------------------------- Barrier

local FILLING, DRAINING, RESETTING, BROKEN = "filling", "draining", "resetting", "broken"

local Barrier = class("Barrier")
M.Barrier = Barrier

local barrier_props = {
  n_waiting = function(self)
    if self._state == FILLING then return self._count end
    return 0
  end,
  broken = function(self) return self._state == BROKEN end,
}

-- parties is a plain field; n_waiting and broken are computed on read, like
-- Python's properties.
Barrier.__index = function(self, k)
  local m = Barrier[k]
  if m ~= nil then return m end
  local p = barrier_props[k]
  if p then return p(self) end
  return nil
end

function Barrier.new(cls, parties)
  if type(parties) ~= "number" or parties < 1 then
    raise("ValueError", "parties must be > 0")
  end
  return setmetatable({_cond = Condition(), parties = parties,
    _state = FILLING, _count = 0}, cls)
end

-- Blocks while the barrier drains or resets; raises if it is broken.
local function block(self)
  await self._cond:wait_for(function()
    return self._state ~= DRAINING and self._state ~= RESETTING
  end)
  if self._state == BROKEN then
    raise("BrokenBarrierError", "Barrier aborted")
  end
end

-- Waits until the filling ends; raises if reset or aborted meanwhile.
local function wait_filled(self)
  await self._cond:wait_for(function() return self._state ~= FILLING end)
  if self._state == BROKEN or self._state == RESETTING then
    raise("BrokenBarrierError", "Abort or reset of barrier")
  end
end

-- The last task out of a draining or resetting barrier refills it.
local function exit(self)
  if self._count == 0 then
    if self._state == RESETTING or self._state == DRAINING then
      self._state = FILLING
    end
    self._cond:notify_all()
  end
end

-- Returns this task's arrival index, 0 .. parties-1.  A cancelled waiter
-- leaves the barrier without breaking it (asyncio's rule, unlike threading).
async function Barrier:wait()
  local _ <close> = await self._cond:acquire()
  block(self)
  local index = self._count
  self._count = index + 1
  local ok, err = true, nil
  if index + 1 == self.parties then
    self._state = DRAINING
    self._cond:notify_all()
  else
    ok, err = pcall(wait_filled, self)
  end
  self._count = self._count - 1
  exit(self)
  if not ok then error(err, 0) end
  return index
end

async function Barrier:reset()
  local _ <close> = await self._cond:acquire()
  if self._count > 0 then
    if self._state ~= RESETTING then self._state = RESETTING end
  else
    self._state = FILLING
  end
  self._cond:notify_all()
end

async function Barrier:abort()
  local _ <close> = await self._cond:acquire()
  self._state = BROKEN
  self._cond:notify_all()
end

function Barrier:__tostring()
  local s = "<asyncio.Barrier [" .. self._state
  if self._state ~= BROKEN then
    s = s .. ", waiters:" .. barrier_props.n_waiting(self) .. "/" .. self.parties
  end
  return s .. "]>"
end

return M
