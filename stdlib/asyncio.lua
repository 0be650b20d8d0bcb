-- asyncio: the module scripts use.  It gathers the C core (asyncio.core),
-- the exception classes and every embedded module named asyncio.* (each
-- returns a table merged into this one), and adds the task-level policy:
-- run, gather, ensure_future.
local core = require "asyncio.core"
local exc = require "asyncio.exceptions"

local M = {}
package.loaded.asyncio = M  -- submodules may require "asyncio" while it fills

local function merge(t)
  for k, v in pairs(t) do
    if type(k) == "string" and k:sub(1, 1) ~= "_" then M[k] = v end
  end
end
merge(core)
merge(exc)
M.Loop = core.Loop

-- Generators (coroutine.wrap / coroutine.resume) that await inside a task:
-- the await's marker is passed up to the task, and the generator carries
-- on when the task is resumed.
--
-- A coroutine parked in an await belongs to the task that awaits: only
-- that task may resume it (when what it awaits is done), and nothing may
-- close it, or what would wake the task is left pointing at a dead
-- thread.  resume, a wrap's function and close refuse, with an error.
do
  local co_resume, co_yield, co_create = coroutine.resume, coroutine.yield, coroutine.create
  local co_close, co_status = coroutine.close, coroutine.status
  local MARK, parked, park = core._marker, core._parked, core._park
  local BUSY = "cannot resume a coroutine that is awaiting in a task: "
    .. "only that task resumes it, when what it awaits is done"
  local function pass(co, ok, first, ...)
    if ok and first == MARK and co_status(co) == "suspended" then
      park(true)  -- this thread, parked while co awaits
      co_yield(MARK)
      park(false)
      return pass(co, co_resume(co))
    end
    return ok, first, ...
  end
  function coroutine.resume(co, ...)
    if parked(co) then return false, BUSY end
    return pass(co, co_resume(co, ...))
  end
  function coroutine.close(co)
    if parked(co) then
      error("cannot close a coroutine that is awaiting in a task; cancel the task instead", 2)
    end
    return co_close(co)
  end
  function coroutine.wrap(f)
    local co = co_create(f)
    local function finish(ok, ...)
      if ok then return ... end
      local e = ...
      co_close(co)
      error(e, 0)
    end
    return function(...)
      if parked(co) then error(BUSY, 2) end
      return finish(pass(co, co_resume(co, ...)))
    end
  end
end

-- The class helper of the Lua-written types (Lock, Queue, ...): calling
-- the class calls its new(cls, ...); tostring reads <class 'asyncio.X'>.
function M._class(name, parent)
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

-- _check_opts(fname, opts, allowed, level): opts is nil or a table whose
-- keys are all in the set allowed; else TypeError, as Python's for an
-- unknown keyword ("gather() got an unexpected option 'x'"), raised at
-- level (of the caller of _check_opts; default 2: its caller).  Returns
-- opts, or an empty table for nil.
local EMPTY = setmetatable({}, { __newindex = function() error("read-only", 2) end })
function M._check_opts(fname, opts, allowed, level)
  if opts == nil then return EMPTY end
  level = (level or 2) + 1
  if type(opts) ~= "table" then
    error(M.TypeError(fname .. "() options must be a table, got " .. type(opts)), level)
  end
  for k in pairs(opts) do
    if not allowed[k] then
      if type(k) == "string" then
        error(M.TypeError(fname .. "() got an unexpected option '" .. k .. "'"), level)
      end
      error(M.TypeError(fname .. "() got an unexpected option [" .. tostring(k)
        .. "] (options are named: {name = value})"), level)
    end
  end
  return opts
end

-- _positional(fname, opts, names, ...): the values of the positional
-- parameters named in the list names, given as ... or by name in opts
-- (Python's keywords: open_connection({host = h, port = p})).  Both at
-- once is a TypeError, as Python's "got multiple values for argument".
function M._positional(fname, opts, names, ...)
  local v = table.pack(...)
  for i = 1, #names do
    local given = opts[names[i]]
    if given ~= nil then
      if v[i] ~= nil then
        error(M.TypeError(fname .. "() got multiple values for argument '" .. names[i] .. "'"), 3)
      end
      v[i] = given
    end
  end
  return table.unpack(v, 1, #names)
end

local Future, isfuture, iscoroutine = core.Future, core.isfuture, core.iscoroutine
local create_task = core.create_task

local function is_awaitable_table(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__await ~= nil
end

-- ensure_future(aw): a Future or Task as it is; a Coroutine or any
-- awaitable wrapped in a Task.
function M.ensure_future(aw)
  if isfuture(aw) then return aw end
  if iscoroutine(aw) then return create_task(aw) end
  if is_awaitable_table(aw) then
    return create_task(function() return await(aw) end)
  end
  error(M.TypeError("An asyncio.Future, a coroutine or an awaitable is required"), 2)
end

-- create_eager_task_factory(ctor) -> a task factory for
-- loop:set_task_factory whose tasks ctor makes, started eagerly:
-- factory(loop, coro, opts) calls ctor(coro, {loop =, eager_start = true,
-- and opts' keys}).  asyncio.eager_task_factory is
-- create_eager_task_factory(asyncio.Task), made in C.
function M.create_eager_task_factory(ctor)
  if type(ctor) ~= "function" and not (getmetatable(ctor) or {}).__call then
    error(M.TypeError("create_eager_task_factory() expects a task constructor, got "
      .. type(ctor)), 2)
  end
  return function(loop, coro, opts)
    local o = { loop = loop, eager_start = true }
    if opts ~= nil then
      if type(opts) ~= "table" then
        error(M.TypeError("create_task() options must be a table, got " .. type(opts)), 2)
      end
      for k, v in pairs(opts) do o[k] = v end
    end
    return ctor(coro, o)
  end
end

-- gather(aw1, aw2, ..., [{return_exceptions = bool}]) -> a Future whose
-- result is the list {r1, r2, ..., n = k} of each awaitable's first result.
-- The first failure fails the gather (the others keep running) unless
-- return_exceptions; cancelling the gather cancels every child.
local GATHER_OPTS = { return_exceptions = true }
function M.gather(...)
  local children = table.pack(...)  -- sized once; made futures in place
  local n = children.n
  local opts = children[n]
  if type(opts) == "table" and not is_awaitable_table(opts) then
    n = n - 1
    children[n + 1], children.n = nil, n
    if opts[1] ~= nil or opts.n ~= nil then
      error(M.TypeError("gather() takes the awaitables as its arguments, not a list: "
        .. "unpack it, gather(table.unpack(list, 1, list.n))"), 2)
    end
    M._check_opts("gather", opts, GATHER_OPTS, 2)
  else
    opts = nil
  end
  local outer = Future()
  if n == 0 then outer:set_result({ n = 0 }); return outer end
  core._gather(outer, children, opts and opts.return_exceptions, M.ensure_future)
  return outer
end

-- The tasks coro made in its last step have not run yet: asyncio's loop
-- gives them their first step in the iteration that sees coro done, so a
-- fire-and-forget task runs (and a failing one is reported) before the
-- rest are cancelled.
local function cancel_leftovers(before)
  await M.sleep(0)
  local me = core.current_task()
  local left = {}
  local all = core.all_tasks()
  for i = 1, all.n do
    local t = all[i]
    if t ~= me and not before[t] then left[#left + 1] = t; t:cancel() end
  end
  for _, t in ipairs(left) do
    local ok = pcall(await, t)
    if not ok and not t:cancelled() and t:exception() ~= nil then
      core.get_event_loop():call_exception_handler({
        message = "unhandled exception during asyncio.run() shutdown",
        exception = t:exception(), task = t })
    end
  end
end

-- run(coro, [{debug = bool}]): from the main task, awaits coro and then
-- cancels and awaits the tasks it left behind; from a host with no
-- running task, drives the loop until coro is done.
local RUN_OPTS = { debug = true }
function M.run(coro, opts)
  if not iscoroutine(coro) then
    error(M.ValueError("a coroutine was expected, got " .. tostring(coro)), 2)
  end
  M._check_opts("run", opts, RUN_OPTS)
  if opts and opts.debug ~= nil then core._set_debug(opts.debug) end
  if core.current_task() then
    local before = {}
    local all = core.all_tasks()
    for i = 1, all.n do before[all[i]] = true end
    local guard <close> = setmetatable({}, { __close = function() cancel_leftovers(before) end })
    return await(coro)
  end
  if core.get_event_loop():is_running() then  -- a callback of the running loop
    error(M.RuntimeError("asyncio.run() cannot be called from a running event loop"), 2)
  end
  local task = create_task(coro)
  local results = table.pack(pcall(core.run_until_complete, task))
  -- One more iteration: the first steps of the tasks made last (above).
  local loop, tick = core.get_event_loop(), Future()
  loop:call_soon(tick.set_result, tick)
  pcall(core.run_until_complete, tick)
  -- Cancel and finish what the coroutine left behind.
  local all = core.all_tasks()
  if all.n > 0 then
    for i = 1, all.n do all[i]:cancel() end
    pcall(core.run_until_complete, M.gather(table.unpack(all, 1, all.n), { return_exceptions = true }))
  end
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

-- Every other embedded asyncio.* module adds its names, loaded on first
-- use: the first look-up of a name the module does not have yet (or a
-- pairs() over it) loads them all, so a script that needs only the core
-- starts without compiling the rest.
local skip = { ["asyncio.core"] = true, ["asyncio.exceptions"] = true, ["asyncio.test"] = true,
               ["asyncio._util"] = true }
local loaded_all = false
local merged = {}
local function load_all()
  if loaded_all then return end
  local names = {}
  for name in pairs(package.preload) do
    if name:match("^asyncio%.") and not skip[name] then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    if not merged[name] then
      merge(require(name))  -- an error here propagates, and is retried next time
      merged[name] = true
    end
  end
  loaded_all = true
end
M._load_all = load_all
-- The loop's methods come from submodules too (sock_recv, create_server).
setmetatable(core.Loop, { __index = function(t, k) load_all(); return rawget(t, k) end })

return setmetatable(M, {
  __index = function(t, k) load_all(); return rawget(t, k) end,
  __pairs = function(t) load_all(); return next, t, nil end,
})
