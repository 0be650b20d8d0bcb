-- asyncio.combinators: wait_for, wait, as_completed and shield, with the
-- semantics of CPython 3.12's asyncio.tasks (wait_for is built on timeout).

local asyncio = require "asyncio"
local util = require "asyncio._util"
local raise, is_cancel = util.raise, util.is_cancel

local M = {}

M.FIRST_COMPLETED = "FIRST_COMPLETED"
M.FIRST_EXCEPTION = "FIRST_EXCEPTION"
M.ALL_COMPLETED = "ALL_COMPLETED"

-- A Future or Task as is; a Coroutine (or other awaitable) wrapped in a Task.
local function ensure_future(aw)
  if asyncio.isfuture(aw) then return aw end
  local ef = asyncio.ensure_future
  if ef ~= nil then return ef(aw) end
  return asyncio.create_task(aw)
end

local function release_waiter(waiter)
  if not waiter:done() then waiter:set_result(nil) end
end

-- The elements of list table fs (fs.n or #fs), without duplicates, in order.
local function unique(fs, what)
  if type(fs) ~= "table" or asyncio.isfuture(fs) or asyncio.iscoroutine(fs) then
    raise("TypeError", "expect a list of futures, not " .. type(fs) .. " (" .. what .. ")")
  end
  local n = fs.n or #fs
  local list, seen = {}, {}
  for i = 1, n do
    local f = fs[i]
    if f == nil then raise("TypeError", what .. ": element " .. i .. " is nil") end
    if not seen[f] then
      seen[f] = true
      list[#list + 1] = f
    end
  end
  return list
end

---------------------------------------------------------------- wait_for

-- Cancels fut and waits until it is done, without awaiting fut itself so
-- that this wait stays cancellable.
local function cancel_and_wait(fut)
  local waiter = asyncio.Future()
  local cb = function() release_waiter(waiter) end
  fut:add_done_callback(cb)
  fut:cancel()
  local ok, err = pcall(await, waiter)
  fut:remove_done_callback(cb)
  if not ok then error(err, 0) end
end

-- Awaits aw with a deadline of timeout seconds (nil: none).  On timeout
-- cancels aw, waits for it to finish and raises TimeoutError.  If aw
-- swallows the cancellation and returns, its results are returned.  A
-- cancellation of the caller cancels aw too.
local WAIT_FOR_OPTS = { timeout = true }
async function M.wait_for(aw, timeout)
  if type(timeout) == "table" then  -- wait_for(aw, {timeout = s}), Python's keyword
    timeout = asyncio._check_opts("wait_for", timeout, WAIT_FOR_OPTS).timeout
  end
  if timeout ~= nil and type(timeout) ~= "number" then
    util.bad_timeout()
  end
  if timeout ~= timeout then
    if asyncio.iscoroutine(aw) then aw:close() end  -- it will never run
    raise("ValueError", "timeout is NaN")
  end
  if timeout ~= nil and timeout <= 0 then
    -- Not through timeout(): a coroutine must not even start.
    local fut = ensure_future(aw)
    if fut:done() then return fut:result() end
    cancel_and_wait(fut)
    local r = table.pack(pcall(fut.result, fut))
    if r[1] then return table.unpack(r, 2, r.n) end
    if is_cancel(r[2]) then raise("TimeoutError") end
    error(r[2], 0)
  end
  local _ <close> = asyncio.timeout(timeout)
  return await aw
end

---------------------------------------------------------------- wait

local RETURN_WHEN = {
  FIRST_COMPLETED = true, FIRST_EXCEPTION = true, ALL_COMPLETED = true,
}

-- Waits for the futures and tasks of the list fs until the condition
-- opts.return_when (default ALL_COMPLETED) holds or opts.timeout seconds
-- pass.  Returns two lists (with n): done and pending.  Never raises
-- TimeoutError, never cancels anything.
local WAIT_OPTS = { timeout = true, return_when = true }
async function M.wait(fs, opts)
  local timeout, return_when = nil, M.ALL_COMPLETED
  if opts ~= nil then
    asyncio._check_opts("wait", opts, WAIT_OPTS)
    timeout = opts.timeout
    if opts.return_when ~= nil then return_when = opts.return_when end
  end
  local list = unique(fs, "wait")
  if #list == 0 then raise("ValueError", "Set of Tasks/Futures is empty.") end
  if not RETURN_WHEN[return_when] then
    raise("ValueError", "Invalid return_when value: " .. tostring(return_when))
  end
  for i = 1, #list do
    local f = list[i]
    if asyncio.iscoroutine(f) then
      raise("TypeError", "Passing coroutines is forbidden, use tasks explicitly.")
    end
    if not asyncio.isfuture(f) then
      raise("TypeError", "wait: element " .. i .. " is not a future or task")
    end
  end
  if timeout ~= nil and type(timeout) ~= "number" then
    util.bad_timeout()
  end

  local loop = asyncio.get_running_loop()
  local waiter = asyncio.Future()
  local handle = nil
  if timeout ~= nil then
    handle = loop:call_later(timeout, release_waiter, waiter)
  end
  local counter = #list
  local function on_completion(f)
    counter = counter - 1
    if counter <= 0 or return_when == "FIRST_COMPLETED"
        or (return_when == "FIRST_EXCEPTION" and not f:cancelled()
            and f:exception() ~= nil) then
      if handle ~= nil then handle:cancel() end
      release_waiter(waiter)
    end
  end
  for i = 1, #list do list[i]:add_done_callback(on_completion) end
  local ok, err = pcall(await, waiter)
  if handle ~= nil then handle:cancel() end
  for i = 1, #list do list[i]:remove_done_callback(on_completion) end
  if not ok then error(err, 0) end

  local done, pending = {n = 0}, {n = 0}
  for i = 1, #list do
    local f = list[i]
    local t = f:done() and done or pending
    t.n = t.n + 1
    t[t.n] = f
  end
  return done, pending
end

---------------------------------------------------------------- as_completed

local TIMED_OUT = {}

-- An iterator for a generic for over the awaitables of the list aws, in the
-- order they complete:
--
--   for t in asyncio.as_completed(tasks, {timeout = 5}) do
--     local r = await t      -- t is done: its result, or its error raised
--   end
--
-- Each step waits (in the running task) for the next completion and yields
-- the completed future: the Task or Future itself if one was passed, the Task
-- wrapping it if a Coroutine was (Python 3.13's `async for` form).  If the
-- timeout passes first, the step raises TimeoutError.  Nothing is cancelled.
local AS_COMPLETED_OPTS = { timeout = true }
function M.as_completed(aws, opts)
  local timeout = asyncio._check_opts("as_completed", opts, AS_COMPLETED_OPTS).timeout
  if timeout ~= nil and type(timeout) ~= "number" then
    util.bad_timeout()
  end
  local list = unique(aws, "as_completed")
  local todo, ntodo = {}, 0
  local done, dfirst, dlast = {}, 1, 0
  local left = 0          -- completions still to yield
  local waiter = nil      -- the Future the consumer sleeps on
  local handle = nil
  local on_completion

  local function push(x)
    dlast = dlast + 1
    done[dlast] = x
    if waiter ~= nil then release_waiter(waiter) end
  end

  on_completion = function(f)
    if not todo[f] then return end  -- the timeout was here first
    todo[f] = nil
    ntodo = ntodo - 1
    if ntodo == 0 and handle ~= nil then handle:cancel() end
    push(f)
  end

  local function on_timeout()
    for f in pairs(todo) do
      f:remove_done_callback(on_completion)
      push(TIMED_OUT)
    end
    todo, ntodo = {}, 0
  end

  for i = 1, #list do
    local f = ensure_future(list[i])
    if not todo[f] then
      todo[f] = true
      ntodo = ntodo + 1
      left = left + 1
      f:add_done_callback(on_completion)
    end
  end
  if ntodo > 0 and timeout ~= nil then
    handle = asyncio.get_running_loop():call_later(timeout, on_timeout)
  end

  return function()
    if left == 0 then return nil end
    while dfirst > dlast do
      waiter = asyncio.Future()
      local ok, err = pcall(await, waiter)
      waiter = nil
      if not ok then error(err, 0) end
    end
    local f = done[dfirst]
    done[dfirst] = nil
    dfirst = dfirst + 1
    left = left - 1
    if f == TIMED_OUT then raise("TimeoutError") end
    return f
  end
end

---------------------------------------------------------------- shield

-- Returns a Future that follows aw (a Future, Task or Coroutine, which is
-- wrapped in a Task) but whose cancellation does not cancel aw.  If aw is
-- cancelled itself, the returned Future is cancelled too.
function M.shield(aw)
  local inner = ensure_future(aw)
  if inner:done() then return inner end
  local outer = asyncio.Future()

  local function inner_done(i)
    if outer:cancelled() then
      -- Nobody will read it: mark the inner error retrieved.
      if not i:cancelled() then i:exception() end
      return
    end
    if i:cancelled() then
      outer:cancel()
    else
      local exc = i:exception()
      if exc ~= nil then
        outer:set_exception(exc)
      else
        outer:set_result(i:result())
      end
    end
  end

  local function outer_done()
    if not inner:done() then inner:remove_done_callback(inner_done) end
  end

  inner:add_done_callback(inner_done)
  outer:add_done_callback(outer_done)
  return outer
end

return M
