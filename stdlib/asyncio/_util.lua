-- asyncio._util: the small helpers the stdlib's Lua modules share.  Private:
-- asyncio.lua does not merge it into the asyncio table.

local asyncio = require "asyncio"

local M = {}

-- Raises asyncio[cls](...) as an error with no position added.  The class
-- is looked up at call time: the core may fill asyncio in after a module
-- that uses this is loaded.
function M.raise(cls, ...)
  error(asyncio[cls](...), 0)
end

-- Raises the TypeError of a timeout that is not a number (or nil).
function M.bad_timeout()
  M.raise("TypeError", "timeout must be a number or nil")
end

-- True if e is a CancelledError.
function M.is_cancel(e)
  return asyncio.isinstance(e, asyncio.CancelledError)
end

-- Returns its arguments; if they are a single Coroutine (what calling an
-- async function returns), awaits it and returns its results instead.
function M.finish(...)
  if select("#", ...) == 1 and asyncio.iscoroutine((...)) then
    return await (...)
  end
  return ...
end
local finish = M.finish

-- Calls fn(...) (or awaits fn if it is a Coroutine); if fn returned a single
-- Coroutine (fn was an async function), awaits it.  Returns fn's results.
function M.call(fn, ...)
  if asyncio.iscoroutine(fn) then return await fn end
  return finish(fn(...))
end

-- Checks the options table of the API function fn (nil or a table whose
-- keys are all in allowed; the error names the caller of fn) and returns it,
-- or {} for nil.
function M.check_opts(opts, fn, allowed)
  asyncio._check_opts(fn, opts, allowed, 3)
  return opts or {}
end

return M
