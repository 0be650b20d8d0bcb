-- asyncio.queues: Queue (FIFO), PriorityQueue and LifoQueue, with the
-- semantics of CPython's asyncio.queues (3.13: shutdown, QueueShutDown).
--
-- The classes are here; the items and the waiting tasks live in C
-- (stdlib/asyncio/_queue.c, module asyncio._queue), where put, get, join
-- and the rest are implemented: a put to a queue with a waiting getter
-- hands the item straight to it, and no put or get allocates, even when a
-- task has to wait.  A getter cancelled after it was handed an item (before
-- it ran) passes the item to the next getter or back to the front of the
-- queue; a putter cancelled after it was woken passes the room on: nothing
-- is lost, and a cancelled waiter never wins.
--
-- Storage is overridable as in Python: a class that defines _put(item) or
-- _get() (and _init(maxsize), called by the constructor) gets them called
-- for every item; the count is kept by the queue.  Each built-in class's
-- own _put and _get remain callable from such overrides.

local asyncio = require "asyncio"
local C = require "asyncio._queue"

local M = {}

local class = asyncio._class

local builtin = {}  -- storage kind -> the built-in class that has it

local function builtin_class(name, parent, kind)
  local c = class(name, parent)
  -- The methods are copied into every class: one look-up less per call.
  for k, f in pairs(C._methods) do c[k] = f end
  c._kind = kind
  c._put = C._storage[kind].put
  c._get = C._storage[kind].get
  builtin[kind] = c
  return c
end

---------------------------------------------------------------- Queue

local Queue = builtin_class("Queue", nil, C._FIFO)
M.Queue = Queue

local QUEUE_OPTS = { maxsize = true }
function Queue.new(cls, maxsize)
  if type(maxsize) == "table" then  -- Queue({maxsize = n}), Python's keyword
    maxsize = asyncio._check_opts(cls._classname or "Queue", maxsize, QUEUE_OPTS).maxsize
  end
  if maxsize == nil then maxsize = 0 end
  if type(maxsize) ~= "number" then
    error(asyncio.TypeError("maxsize must be a number"), 2)
  end
  -- [1] is the C queue.  get and put are copied into the instance: await
  -- q:get() looks the method up on every call, and a hit in the instance
  -- saves the __index step, about 8% of a put/get round trip.
  local self = setmetatable({false, maxsize = maxsize, get = cls.get, put = cls.put}, cls)
  local kind = cls._kind
  local base = builtin[kind]
  if cls._put ~= base._put or cls._get ~= base._get then kind = C._CUSTOM end
  C._new(self, kind, maxsize)
  self:_init(maxsize)
  return self
end

function Queue:_init() end

function Queue:__tostring()
  local n, getters, putters, unfinished, shutdown = C._info(self)
  local parts = {"maxsize=" .. tostring(self.maxsize), "qsize=" .. n}
  if getters > 0 then parts[#parts + 1] = "getters[" .. getters .. "]" end
  if putters > 0 then parts[#parts + 1] = "putters[" .. putters .. "]" end
  if unfinished > 0 then parts[#parts + 1] = "tasks=" .. unfinished end
  if shutdown then parts[#parts + 1] = "shutdown" end
  return "<asyncio." .. self._classname .. " " .. table.concat(parts, " ") .. ">"
end

---------------------------------------------------------------- the others

-- PriorityQueue returns the smallest item first, comparing with <, and
-- list tables (without __lt) element by element like Python's tuples, so
-- {priority, item} orders by priority and compares items only on a tie.
local PriorityQueue = builtin_class("PriorityQueue", Queue, C._HEAP)
M.PriorityQueue = PriorityQueue
PriorityQueue.__tostring = Queue.__tostring

local LifoQueue = builtin_class("LifoQueue", Queue, C._LIFO)
M.LifoQueue = LifoQueue
LifoQueue.__tostring = Queue.__tostring

return M
