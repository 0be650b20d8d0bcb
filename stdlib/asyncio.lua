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
-- an await yields nothing and marks its thread parked (vm/core/task.c,
-- suspend); the yield is passed up to the task, this thread marked parked
-- in turn, and the generator carries on when the task is resumed.
--
-- A coroutine parked in an await belongs to the task that awaits: only
-- that task may resume it (when what it awaits is done), and nothing may
-- close it, or what would wake the task is left pointing at a dead
-- thread.  resume, a wrap's function and close refuse, with an error.
do
  local co_resume, co_yield, co_create = coroutine.resume, coroutine.yield, coroutine.create
  local co_close = coroutine.close
  local parked, park = core._parked, core._park
  local BUSY = "cannot resume a coroutine that is awaiting in a task: "
    .. "only that task resumes it, when what it awaits is done"
  local function pass(co, ok, first, ...)
    if ok and parked(co) then
      park(true)  -- this thread, parked while co awaits
      co_yield()
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

-- ---- The loop's lifecycle ----
-- One scheduler per state; loop objects are handles on it: the state's
-- own (what futures, callbacks and the stdlib use) and those that
-- new_event_loop() makes (asyncio/runners.lua).  A lifecycle run -
-- loop:run_until_complete, loop:run_forever, asyncio.run, Runner:run - is
-- what Python calls "the loop is running": one at a time, life.loop is
-- its loop object (get_running_loop() returns it).  Run in a task (a
-- script's top level is one), it waits on life.stopper, which its
-- future's completion or loop:stop() resolves; from a host with no task,
-- it drives the scheduler itself.
local Loop, own = core.Loop, core._own_loop()
local RuntimeError = M.RuntimeError
local life = { loop = nil, stopper = nil, set = nil,
               closed = setmetatable({}, { __mode = "k" }),
               stop_pending = setmetatable({}, { __mode = "k" }) }
M._life = life

local function wake(f) if not f:done() then f:set_result() end end

local function running_error(loop)
  return RuntimeError(life.loop == loop and "This event loop is already running"
    or "Cannot run the event loop while another loop is running")
end

-- The lifecycle run of loop in a task: waits until fut is done (fut
-- nil: until loop:stop()) or the loop is stopped.  A run left by an error
-- (the task was cancelled) cancels fut if it is owned.
local function wait_run(loop, fut, owned)
  local stopper = Future()
  life.loop, life.stopper = loop, stopper
  core._set_running(loop)
  local guard <close> = setmetatable({}, { __close = function(_, err)
    life.loop, life.stopper = nil, nil
    core._set_running(nil)
    if err ~= nil and owned and not fut:done() then
      fut:cancel(M.isinstance(err, M.CancelledError) and err.message or nil)
    end
  end })
  if life.stop_pending[loop] then life.stop_pending[loop] = nil; own:call_soon(wake, stopper) end
  if fut then
    if fut:done() then wake(stopper) else fut:add_done_callback(function() wake(stopper) end) end
  end
  await(stopper)
end

-- Runs loop until fut is done (fut nil: until loop:stop()) and returns
-- fut's results.  owned: fut is a task made for this run, cancelled if
-- the run is left by an error (its caller was cancelled).  Errors are
-- raised at level (of the caller of _run_loop).
function M._run_loop(loop, fut, owned, level)
  level = level + 1
  if life.loop ~= nil then error(running_error(loop), level) end
  if core.current_task() == nil then
    if core._in_loop() then  -- a callback: the scheduler is busy running it
      error(RuntimeError("This event loop is already running"), level)
    end
    life.loop = loop
    core._set_running(loop)
    if life.stop_pending[loop] then life.stop_pending[loop] = nil; own:call_soon(core._stop) end
    local r = table.pack(pcall(fut and core.run_until_complete or core._run_forever, fut))
    life.loop = nil
    core._set_running(nil)
    if not r[1] then error(r[2], 0) end
    return table.unpack(r, 2, r.n)
  end
  wait_run(loop, fut, owned)
  if fut == nil then return end
  if not fut:done() then error(RuntimeError("Event loop stopped before Future completed."), level) end
  return await(fut)
end

-- loop:run_until_complete(aw) -> aw's results: runs the loop until aw (a
-- Future, or a coroutine or awaitable wrapped in a Task) is done.
function Loop:run_until_complete(aw)
  if life.loop ~= nil then error(running_error(self), 2) end
  local fut = M.ensure_future(aw)
  return M._run_loop(self, fut, fut ~= aw, 2)
end

-- loop:run_forever(): runs the loop until loop:stop().
function Loop:run_forever()
  return M._run_loop(self, nil, false, 2)
end

-- loop:stop(): ends the lifecycle run of this loop after the current
-- iteration; with none in progress, the state's own loop stops the
-- scheduler's run (the host's ml_state_run; in the moonloop command, the
-- main task's), another loop stops its next run after one iteration.
function Loop:stop()
  if life.loop == self then
    if life.stopper then wake(life.stopper) else core._stop() end
  elseif rawequal(self, own) then
    core._stop()
  else
    life.stop_pending[self] = true
  end
end

-- loop:is_running(): in a lifecycle run; the state's own loop is running
-- whenever code runs in the scheduler, as every script's code does.
function Loop:is_running()
  if rawequal(self, own) then return core._in_loop() end
  return life.loop == self
end

function Loop:is_closed() return life.closed[self] == true end

-- A closed loop object: what Python checks (_check_closed) raises
-- RuntimeError('Event loop is closed'); what it does not check works.
local AFTER_CLOSE = { close = true, is_closed = true, is_running = true, stop = true, time = true,
                      get_debug = true, set_debug = true, create_future = true,
                      set_exception_handler = true, get_exception_handler = true,
                      call_exception_handler = true, default_exception_handler = true }
local function closed_method() error(RuntimeError("Event loop is closed"), 2) end
local ClosedLoop = { __name = "asyncio.Loop", __index = function(_, k)
  local m = Loop[k]
  if type(m) == "function" and not AFTER_CLOSE[k] then return closed_method end
  return m
end }

-- loop:close(): a loop object from new_event_loop is closed for good;
-- the state's own loop runs every script and lasts as long as the state.
function Loop:close()
  if self:is_running() then error(RuntimeError("Cannot close a running event loop"), 2) end
  if rawequal(self, own) then
    error(RuntimeError("the state's own event loop cannot be closed: it lasts as long as the state"), 2)
  end
  if life.closed[self] then return end
  life.closed[self] = true
  life.stop_pending[self] = nil
  setmetatable(self, ClosedLoop)
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
      own:call_exception_handler({
        message = "unhandled exception during asyncio.run() shutdown",
        exception = t:exception(), task = t })
    end
  end
end
M._cancel_leftovers = cancel_leftovers

-- [-0, +0] the set of the pending tasks now.
function M._task_set()
  local set, all = {}, core.all_tasks()
  for i = 1, all.n do set[all[i]] = true end
  return set
end

-- run(coro, [{debug = bool}]): runs coro as a task until it is done,
-- then cancels and awaits the tasks it left behind.  In a task (a
-- script's top level), the task waits meanwhile; from a host with no
-- running task, it drives the loop.
local RUN_OPTS = { debug = true }
function M.run(coro, opts)
  if not iscoroutine(coro) then
    error(M.ValueError("a coroutine was expected, got " .. tostring(coro)), 2)
  end
  M._check_opts("run", opts, RUN_OPTS)
  if life.loop ~= nil or (core._in_loop() and core.current_task() == nil) then
    error(RuntimeError("asyncio.run() cannot be called from a running event loop"), 2)
  end
  if opts and opts.debug ~= nil then core._set_debug(opts.debug) end
  if core.current_task() then
    local before = M._task_set()
    local guard <close> = setmetatable({}, { __close = function() cancel_leftovers(before) end })
    return M._run_loop(own, create_task(coro), true, 2)
  end
  local task = create_task(coro)
  local results = table.pack(pcall(M._run_loop, own, task, true, 1))
  -- One more iteration: the first steps of the tasks made last (above).
  local tick = Future()
  own:call_soon(tick.set_result, tick)
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
-- use: the first look-up of a name loads the module the index below says
-- has it (loop:create_server loads asyncio.transports and what it
-- requires, not subprocesses, signals and threads); a name the index does
-- not know, or a pairs() over the module, loads them all.  What is not
-- loaded is neither compiled at start-up nor marked by every collection
-- after: a server's live heap is smaller, and so is what the collector
-- does a message (docs/performance.md, "The echo server's collector").
--
-- The index is made by scripts/asyncio_index.lua (`make asyncio-index`);
-- tests/scripts/test_lazy.lua fails if it is not what that script says.
-- BEGIN generated by scripts/asyncio_index.lua
local INDEX = {
  ALL_COMPLETED = "asyncio.combinators", Barrier = "asyncio.locks",
  BaseProtocol = "asyncio.protocols", BoundedSemaphore = "asyncio.locks",
  BufferedProtocol = "asyncio.protocols", Condition = "asyncio.locks",
  DEVNULL = "asyncio.subprocess", DatagramProtocol = "asyncio.protocols", Event = "asyncio.locks",
  Executor = "asyncio._thread", FIRST_COMPLETED = "asyncio.combinators",
  FIRST_EXCEPTION = "asyncio.combinators", LifoQueue = "asyncio.queues", Lock = "asyncio.locks",
  NSIG = "asyncio._signal", PIPE = "asyncio.subprocess", PriorityQueue = "asyncio.queues",
  Process = "asyncio.subprocess", Protocol = "asyncio.protocols", Queue = "asyncio.queues",
  Runner = "asyncio.runners", STDOUT = "asyncio.subprocess", Semaphore = "asyncio.locks",
  Server = "asyncio.transports", StreamReader = "asyncio._stream",
  StreamWriter = "asyncio._stream", SubprocessProtocol = "asyncio.subprocess",
  SubprocessTransport = "asyncio.subprocess", TaskGroup = "asyncio.taskgroups",
  ThreadPoolExecutor = "asyncio.threads", Timeout = "asyncio.timeouts",
  as_completed = "asyncio.combinators", close_fd = "asyncio._process",
  cpu_count = "asyncio._thread", create_subprocess_exec = "asyncio.subprocess",
  create_subprocess_shell = "asyncio.subprocess", default_executor = "asyncio._thread",
  dup_file = "asyncio._process", getpid = "asyncio._signal", new = "asyncio._thread",
  new_event_loop = "asyncio.runners", open_connection = "asyncio.streams",
  open_unix_connection = "asyncio.streams", raise = "asyncio._signal",
  run_coroutine_threadsafe = "asyncio.threads", set_event_loop = "asyncio.runners",
  shield = "asyncio.combinators", signal = "asyncio.subprocess", signals = "asyncio._process",
  spawn = "asyncio._process", start_server = "asyncio.streams",
  start_unix_server = "asyncio.streams", subprocess = "asyncio.subprocess",
  timeout = "asyncio.timeouts", timeout_at = "asyncio.timeouts", to_thread = "asyncio.threads",
  wait = "asyncio.combinators", wait_for = "asyncio.combinators", wrap_future = "asyncio.threads",
}
local LOOP_INDEX = {
  add_reader = "asyncio._net", add_signal_handler = "asyncio.signals",
  add_writer = "asyncio._net", call_soon_threadsafe = "asyncio.threads",
  connect_accepted_socket = "asyncio.transports", connect_read_pipe = "asyncio.subprocess",
  connect_write_pipe = "asyncio.subprocess", create_connection = "asyncio.transports",
  create_datagram_endpoint = "asyncio.transports", create_server = "asyncio.transports",
  create_unix_connection = "asyncio.transports", create_unix_server = "asyncio.transports",
  getaddrinfo = "asyncio._net", getnameinfo = "asyncio._net", remove_reader = "asyncio._net",
  remove_signal_handler = "asyncio.signals", remove_writer = "asyncio._net",
  run_in_executor = "asyncio.threads", sendfile = "asyncio._net",
  set_default_executor = "asyncio.threads", sock_accept = "asyncio._net",
  sock_connect = "asyncio._net", sock_recv = "asyncio._net", sock_recv_into = "asyncio._net",
  sock_recvfrom = "asyncio._net", sock_recvfrom_into = "asyncio._net",
  sock_sendall = "asyncio._net", sock_sendfile = "asyncio._net", sock_sendto = "asyncio._net",
  start_tls = "asyncio.transports", subprocess_exec = "asyncio.subprocess",
  subprocess_shell = "asyncio.subprocess",
}
-- END generated by scripts/asyncio_index.lua

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
-- The value of t[k] once index[k]'s module is loaded, else once all are;
-- a module the state cannot load (a sandbox's preload has no such name)
-- is left to load_all, as before.
local function lookup(index, t, k)
  local name = index[k]
  if name and not merged[name] and package.preload[name] then
    merge(require(name))
    merged[name] = true
  end
  local v = rawget(t, k)
  if v == nil then
    load_all()
    v = rawget(t, k)
  end
  return v
end
-- The loop's methods come from submodules too (sock_recv, create_server).
setmetatable(core.Loop, { __index = function(t, k) return lookup(LOOP_INDEX, t, k) end })

return setmetatable(M, {
  __index = function(t, k) return lookup(INDEX, t, k) end,
  __pairs = function(t) load_all(); return next, t, nil end,
})
