-- asyncio.queues: Queue (FIFO), PriorityQueue and LifoQueue, with the
-- semantics of CPython's asyncio.queues (3.13: shutdown, QueueShutDown).
--
-- Items are never handed to a waiter: a put wakes the first getter, which
-- takes the item itself when it runs.  A getter cancelled after it was woken
-- therefore leaves the item in the queue and wakes the next getter; nothing
-- is lost.  put and get on a queue that has room / has items allocate no
-- Future; a Future is made only for a task that has to wait.

local asyncio = require "asyncio"

local M = {}

local function raise(cls, msg)
  error(asyncio[cls](msg), 0)
end

---------------------------------------------------------------- waiters
-- A FIFO of futures in w[w.first .. w.last] (see locks.lua).

local function waiters_new()
  return {first = 1, last = 0}
end

local function wpush(w, x)
  local l = w.last + 1
  w.last = l
  w[l] = x
end

local function wpop(w)
  local f = w.first
  local x = w[f]
  w[f] = nil
  if f >= w.last then w.first, w.last = 1, 0 else w.first = f + 1 end
  return x
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

-- Wakes the first waiter that is not done (cancelled waiters are skipped and
-- dropped).
local function wakeup_next(w)
  local f, l = w.first, w.last
  while f <= l do
    local fut = w[f]
    w[f] = nil
    f = f + 1
    if not fut:done() then
      fut:set_result(nil)
      break
    end
  end
  if f > l then w.first, w.last = 1, 0 else w.first = f end
end

local function wakeup_all(w)
  while w.first <= w.last do
    local fut = wpop(w)
    if not fut:done() then fut:set_result(nil) end
  end
end

---------------------------------------------------------------- classes

local function class(name, parent)
  local c = {}
  c.__index = c
  c.__name = "asyncio." .. name
  c._classname = name
  setmetatable(c, {
    __index = parent,
    __call = function(cls, ...) return cls.new(cls, ...) end,
    __tostring = function() return "<class 'asyncio." .. name .. "'>" end,
  })
  return c
end

---------------------------------------------------------------- Queue
-- Storage is overridable as in Python: _init(maxsize), _put(item), _get();
-- the count lives in _n and is kept by the base class.

local Queue = class("Queue")
M.Queue = Queue

function Queue.new(cls, maxsize)
  if maxsize == nil then maxsize = 0 end
  if type(maxsize) ~= "number" then
    raise("TypeError", "maxsize must be a number")
  end
  local self = setmetatable({
    -- The FIFO storage is inlined in the hot paths unless a subclass
    -- brings its own (PriorityQueue, LifoQueue, a user's _put/_get).
    _custom = cls._put ~= Queue._put or cls._get ~= Queue._get,
    maxsize = maxsize,
    _n = 0,
    _getters = waiters_new(),
    _putters = waiters_new(),
    _joiners = waiters_new(),
    _unfinished = 0,
    _shutdown = false,
  }, cls)
  self:_init(maxsize)
  return self
end

-- FIFO storage: a ring of items in _items[_head .. _tail].  nil items are
-- allowed (the count, not the contents, says what is there).
function Queue:_init()
  self._items = {}
  self._head = 1
  self._tail = 0
end

function Queue:_put(item)
  local t = self._tail + 1
  self._tail = t
  self._items[t] = item
end

function Queue:_get()
  local h = self._head
  local items = self._items
  local item = items[h]
  items[h] = nil
  if h >= self._tail then
    self._head, self._tail = 1, 0  -- empty: restart at 1, keeping keys small
  else
    self._head = h + 1
  end
  return item
end

function Queue:qsize() return self._n end
function Queue:empty() return self._n == 0 end

function Queue:full()
  local max = self.maxsize
  return max > 0 and self._n >= max
end

-- Waits for a slot; on error or cancellation passes a wake-up it received
-- but cannot use to the next putter.
local function wait_slot(self)
  local fut = asyncio.Future()
  local w = self._putters
  wpush(w, fut)
  local ok, err = pcall(await, fut)
  if not ok then
    fut:cancel()  -- in case it is not done yet
    wremove(w, fut)  -- it may already have been popped by a get or shutdown
    if not self:full() and not fut:cancelled() then wakeup_next(w) end
    error(err, 0)
  end
end

local function wait_item(self)
  local fut = asyncio.Future()
  local w = self._getters
  wpush(w, fut)
  local ok, err = pcall(await, fut)
  if not ok then
    fut:cancel()
    wremove(w, fut)
    if self._n > 0 and not fut:cancelled() then wakeup_next(w) end
    error(err, 0)
  end
end

-- The bodies of put and get, as plain functions (they await inside: Lua
-- coroutines are stackful).
local function put(self, item)
  local max = self.maxsize
  while max > 0 and self._n >= max do
    if self._shutdown then raise("QueueShutDown") end
    wait_slot(self)
  end
  return self:put_nowait(item)
end

async function Queue:put(item)
  return put(self, item)
end

function Queue:put_nowait(item)
  if self._shutdown then raise("QueueShutDown") end
  local max, n = self.maxsize, self._n
  if max > 0 and n >= max then raise("QueueFull") end
  if self._custom then
    self:_put(item)
  else
    local t = self._tail + 1
    self._tail = t
    self._items[t] = item
  end
  self._n = n + 1
  self._unfinished = self._unfinished + 1
  local g = self._getters
  if g.first <= g.last then wakeup_next(g) end
end

local function get(self)
  while self._n == 0 do
    if self._shutdown then raise("QueueShutDown") end
    wait_item(self)
  end
  return self:get_nowait()
end

async function Queue:get()
  return get(self)
end

function Queue:get_nowait()
  if self._n == 0 then
    if self._shutdown then raise("QueueShutDown") end
    raise("QueueEmpty")
  end
  local item
  if self._custom then
    item = self:_get()
  else
    local h, items = self._head, self._items
    item = items[h]
    items[h] = nil
    if h >= self._tail then
      self._head, self._tail = 1, 0
    else
      self._head = h + 1
    end
  end
  self._n = self._n - 1
  local p = self._putters
  if p.first <= p.last then wakeup_next(p) end
  return item
end

function Queue:task_done()
  if self._unfinished <= 0 then
    raise("ValueError", "task_done() called too many times")
  end
  self._unfinished = self._unfinished - 1
  if self._unfinished == 0 then wakeup_all(self._joiners) end
end

-- Waits until every item put has been matched by a task_done().
async function Queue:join()
  if self._unfinished > 0 then
    local fut = asyncio.Future()
    local w = self._joiners
    wpush(w, fut)
    local ok, err = pcall(await, fut)
    if not ok then
      wremove(w, fut)
      error(err, 0)
    end
  end
end

-- Puts the queue in shutdown mode: put raises QueueShutDown from now on,
-- blocked putters too; get keeps draining what is queued and raises once it
-- is empty.  immediate: drop what is queued (counting each dropped item as
-- done for join), so blocked and later getters raise at once.
function Queue:shutdown(immediate)
  self._shutdown = true
  if immediate then
    while self._n > 0 do
      self:_get()
      self._n = self._n - 1
      if self._unfinished > 0 then self._unfinished = self._unfinished - 1 end
    end
    if self._unfinished == 0 then wakeup_all(self._joiners) end
  end
  wakeup_all(self._getters)
  wakeup_all(self._putters)
end

function Queue:__tostring()
  local parts = {"maxsize=" .. tostring(self.maxsize), "qsize=" .. self._n}
  local g, p = self._getters, self._putters
  if g.last >= g.first then parts[#parts + 1] = "getters[" .. (g.last - g.first + 1) .. "]" end
  if p.last >= p.first then parts[#parts + 1] = "putters[" .. (p.last - p.first + 1) .. "]" end
  if self._unfinished > 0 then parts[#parts + 1] = "tasks=" .. self._unfinished end
  if self._shutdown then parts[#parts + 1] = "shutdown" end
  return "<asyncio." .. self._classname .. " " .. table.concat(parts, " ") .. ">"
end

---------------------------------------------------------------- PriorityQueue

-- a < b, where list tables (without __lt) compare element by element like
-- Python's tuples: the first pair of elements that are not == decides, and a
-- shorter list that is a prefix of the other is smaller.  So {priority, item}
-- orders by priority and only compares items on a tie.
local function lt(a, b)
  if type(a) == "table" and type(b) == "table" then
    local mt = getmetatable(a)
    if not (mt and mt.__lt) then
      local na, nb = #a, #b
      for i = 1, (na < nb and na or nb) do
        local x, y = a[i], b[i]
        if not (x == y) then return lt(x, y) end
      end
      return na < nb
    end
  end
  return a < b
end

local PriorityQueue = class("PriorityQueue", Queue)
M.PriorityQueue = PriorityQueue
PriorityQueue.__tostring = Queue.__tostring

function PriorityQueue:_init()
  self._heap = {}
end

function PriorityQueue:_put(item)
  local h = self._heap
  local i = self._n + 1
  h[i] = item
  while i > 1 do
    local p = i // 2
    local parent = h[p]
    if not lt(item, parent) then break end
    h[i] = parent
    i = p
  end
  h[i] = item
end

function PriorityQueue:_get()
  local h = self._heap
  local n = self._n
  local top = h[1]
  local last = h[n]
  h[n] = nil
  n = n - 1
  if n > 0 then
    local i = 1
    while true do
      local c = 2 * i
      if c > n then break end
      if c < n and lt(h[c + 1], h[c]) then c = c + 1 end
      if not lt(h[c], last) then break end
      h[i] = h[c]
      i = c
    end
    h[i] = last
  end
  return top
end

---------------------------------------------------------------- LifoQueue

local LifoQueue = class("LifoQueue", Queue)
M.LifoQueue = LifoQueue
LifoQueue.__tostring = Queue.__tostring

function LifoQueue:_init()
  self._stack = {}
end

function LifoQueue:_put(item)
  self._stack[self._n + 1] = item
end

function LifoQueue:_get()
  local s = self._stack
  local n = self._n
  local item = s[n]
  s[n] = nil
  return item
end

return M
