-- asyncio.subprocess: child processes.  create_subprocess_exec and
-- create_subprocess_shell give a Process whose pipes are StreamWriter /
-- StreamReader objects (the C stream machinery over pipe fds);
-- loop:subprocess_exec and loop:subprocess_shell give a transport and a
-- SubprocessProtocol; loop:connect_read_pipe and connect_write_pipe make
-- protocol transports over any pipe fd.  Spawning and exit watching are C
-- (asyncio._process: posix_spawn, a pidfd on the loop).

local asyncio = require "asyncio"
local core = require "asyncio.core"
local P = require "asyncio._process"
local T = require "asyncio._transport"

local Loop = core.Loop
local M = {}

-- Python's values: an fd is >= 0.
local PIPE, STDOUT, DEVNULL = -1, -2, -3
M.PIPE, M.STDOUT, M.DEVNULL = PIPE, STDOUT, DEVNULL

local function raise(cls, msg, level)
  error(asyncio[cls](msg), level or 0)
end

-- The signal table: asyncio.signal.SIGTERM == 15.
local signals = P.signals
M.signal = signals

-- A signal number from a number or a name ("SIGTERM", "TERM").
local function signum(sig, fn)
  if math.type(sig) == "integer" then return sig end
  if type(sig) == "string" then
    local n = signals[sig] or signals["SIG" .. sig]
    if n then return n end
    raise("ValueError", "unknown signal name '" .. sig .. "'")
  end
  error(string.format("bad argument #1 to '%s' (signal number or name expected, got %s)",
                      fn, type(sig)), 3)
end
M._signum = signum

local function stdio(v, name)
  if v == nil then return nil end
  if v == PIPE then return "pipe" end
  if v == DEVNULL then return "devnull" end
  if v == STDOUT then
    if name ~= "stderr" then raise("ValueError", "STDOUT can only be used for stderr") end
    return "stdout"
  end
  if math.type(v) == "integer" and v >= 0 then return v end
  local mt = getmetatable(v)
  if type(mt) == "table" and mt.__name == "socket.socket" then return v:fileno() end
  raise("TypeError", string.format("bad %s option: PIPE, STDOUT, DEVNULL, a file descriptor or a socket expected, got %s",
                                   name, tostring(v)))
end

-- The spawn options of opts, with stdio defaulting to def.
local function spawn_opts(opts, fn, def, streams)
  if opts ~= nil and type(opts) ~= "table" then
    error(string.format("bad argument to '%s' (options table expected, got %s)", fn, type(opts)), 4)
  end
  opts = opts or {}
  local env
  if opts.env ~= nil then
    if type(opts.env) ~= "table" then raise("TypeError", "env must be a table of name = value") end
    env = {}
    for k, v in pairs(opts.env) do
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
        raise("TypeError", "env must map names to strings")
      end
      if k:find("=", 1, true) or k == "" then raise("ValueError", "illegal environment variable name " .. k) end
      env[#env + 1] = k .. "=" .. v
    end
    table.sort(env)
  end
  local function pick(name)
    local v = opts[name]
    if v == nil then v = def end
    return stdio(v, name)
  end
  for _, k in ipairs({ "universal_newlines", "text", "encoding", "errors" }) do
    if opts[k] then raise("ValueError", k .. " is not supported: pipes carry bytes (Lua strings)") end
  end
  if opts.cwd ~= nil and type(opts.cwd) ~= "string" then raise("TypeError", "cwd must be a string") end
  if opts.pass_fds ~= nil and type(opts.pass_fds) ~= "table" then raise("TypeError", "pass_fds must be a list of fds") end
  return {
    stdin = pick("stdin"), stdout = pick("stdout"), stderr = pick("stderr"),
    cwd = opts.cwd, env = env, pass_fds = opts.pass_fds,
    start_new_session = opts.start_new_session, limit = opts.limit,
    streams = streams,
  }
end

-- The argument list of an exec-style call: program, args..., [opts].
local function exec_args(fn, program, ...)
  local args = table.pack(program, ...)
  local opts
  if args.n > 1 and type(args[args.n]) == "table" then
    opts = args[args.n]
    args[args.n] = nil
    args.n = args.n - 1
  end
  for i = 1, args.n do
    local a = args[i]
    if type(a) == "number" then args[i] = tostring(a)
    elseif type(a) ~= "string" then
      error(string.format("bad argument #%d to '%s' (string expected, got %s)", i, fn, type(a)), 3)
    end
  end
  args.n = nil
  return args, opts
end

local function shell_args(fn, cmd, opts)
  if type(cmd) ~= "string" then
    error(string.format("bad argument #1 to '%s' (string expected, got %s)", fn, type(cmd)), 3)
  end
  return { "/bin/sh", "-c", cmd }, opts
end

-------------------------------------------------------------------------------
-- Process

local Process = asyncio._class("Process")
M.Process = Process

function Process.__tostring(self)
  return string.format("<Process %d%s>", self.pid,
                       self.returncode == nil and " running" or " returncode=" .. self.returncode)
end

local function new_process(argv, o)
  local self = setmetatable({ returncode = nil, _waiters = {} }, Process)
  local h, i, out, err = P.spawn(argv, o, function(rc) self:_exited(rc) end)
  self._h, self.pid = h, h:pid()
  self.stdin, self.stdout, self.stderr = i, out, err
  return self
end

function Process:_exited(rc)
  self.returncode = rc
  local w = self._waiters
  self._waiters = {}
  for _, f in ipairs(w) do
    if not f:done() then f:set_result(rc) end
  end
end

-- wait(): the return code, once the child has exited.
async function Process:wait()
  if self.returncode ~= nil then return self.returncode end
  local f = core.get_running_loop():create_future()
  table.insert(self._waiters, f)
  return await f
end

-- send_signal(sig): a number or a name; nothing once the child is gone.
function Process:send_signal(sig)
  self._h:signal(signum(sig, "send_signal"))
end

function Process:terminate() self._h:signal(signals.SIGTERM) end
function Process:kill() self._h:signal(signals.SIGKILL) end

local function is_pipe_gone(e)
  return asyncio.isinstance(e, asyncio.BrokenPipeError) or asyncio.isinstance(e, asyncio.ConnectionResetError)
end

local async function feed(w, input)
  local ok, e = pcall(function()
    if input ~= nil and #input > 0 then
      w:write(input)
      await w:drain()
    end
  end)
  w:close()
  if not ok and not is_pipe_gone(e) then error(e, 0) end
end

local async function read_all(r)
  return await r:read(-1)
end

-- communicate(input): writes input (a string, or nil) to stdin and closes
-- it, reads stdout and stderr to their end at the same time, waits for the
-- exit; returns stdout, stderr (nil for a stream that is not a pipe).
async function Process:communicate(input)
  if input ~= nil and type(input) ~= "string" then
    error("bad argument #1 to 'communicate' (string expected, got " .. type(input) .. ")", 2)
  end
  local jobs, slots = {}, {}
  if self.stdin then jobs[#jobs + 1] = feed(self.stdin, input); slots[#jobs] = "in" end
  if self.stdout then jobs[#jobs + 1] = read_all(self.stdout); slots[#jobs] = "out" end
  if self.stderr then jobs[#jobs + 1] = read_all(self.stderr); slots[#jobs] = "err" end
  local r = { n = 0 }
  if #jobs > 0 then r = await asyncio.gather(table.unpack(jobs)) end
  local out, err
  for i, s in ipairs(slots) do
    if s == "out" then out = r[i] elseif s == "err" then err = r[i] end
  end
  await self:wait()
  return out, err
end

-- create_subprocess_exec(program, arg..., {stdin=, stdout=, stderr=,
-- cwd=, env=, limit=, pass_fds=, start_new_session=}) -> Process
async function M.create_subprocess_exec(program, ...)
  local argv, opts = exec_args("create_subprocess_exec", program, ...)
  return new_process(argv, spawn_opts(opts, "create_subprocess_exec", nil, true))
end

-- create_subprocess_shell(cmd, {...}) -> Process: cmd run by /bin/sh -c.
async function M.create_subprocess_shell(cmd, opts)
  local argv = shell_args("create_subprocess_shell", cmd)
  return new_process(argv, spawn_opts(opts, "create_subprocess_shell", nil, true))
end

M.subprocess = {
  PIPE = PIPE, STDOUT = STDOUT, DEVNULL = DEVNULL, Process = Process,
  create_subprocess_exec = M.create_subprocess_exec,
  create_subprocess_shell = M.create_subprocess_shell,
}

-------------------------------------------------------------------------------
-- Protocols and transports

-- The base class (every method a no-op, as asyncio's) is
-- asyncio.protocols'.
M.SubprocessProtocol = require("asyncio.protocols").SubprocessProtocol

local SubprocessTransport = asyncio._class("SubprocessTransport")
M.SubprocessTransport = SubprocessTransport

function SubprocessTransport.__tostring(self)
  return string.format("<SubprocessTransport pid=%d %s>", self._pid,
    self._returncode == nil and "running" or "returncode=" .. self._returncode)
end

local function call(proto, method, ...)
  local f = proto[method]
  if f then return f(proto, ...) end
end

-- Makes the pipe transport of the child's fd n over the parent's end fd.
local function connect_pipe(self, n, fd)
  local proto = self._protocol
  local adapter = {
    data_received = function(_, data) call(proto, "pipe_data_received", n, data) end,
    eof_received = function() end,
    connection_lost = function(_, exc)
      self._open = self._open - 1
      local ok, e = pcall(call, proto, "pipe_connection_lost", n, exc)
      self:_try_finish()
      if not ok then error(e, 0) end
    end,
  }
  self._open = self._open + 1
  self._pipes[n] = T._pipe(fd, adapter, n == 0 and "w" or "r")
end

async function SubprocessTransport._start(factory, argv, o)
  local protocol = factory()
  local self = setmetatable({ _protocol = protocol, _pipes = {}, _open = 0,
                              _waiters = {}, _closed = false, _lost = false }, SubprocessTransport)
  local h, i, out, err = P.spawn(argv, o, function(rc) self:_exited(rc) end)
  self._h, self._pid = h, h:pid()
  local fds = { [0] = i, out, err }
  local ok, e = pcall(call, protocol, "connection_made", self)
  if not ok then
    for n = 0, 2 do if fds[n] then P.close_fd(fds[n]) end end
    self:kill()
    error(e, 0)
  end
  for n = 0, 2 do
    if fds[n] then
      local made, e2 = pcall(connect_pipe, self, n, fds[n])
      if not made then
        for m = n, 2 do if fds[m] then P.close_fd(fds[m]) end end
        self:close()
        error(e2, 0)
      end
    end
  end
  return self, protocol
end

function SubprocessTransport:_exited(rc)
  self._returncode = rc
  local w = self._waiters
  self._waiters = {}
  for _, f in ipairs(w) do
    if not f:done() then f:set_result(rc) end
  end
  local ok, e = pcall(call, self._protocol, "process_exited")
  self:_try_finish()
  if not ok then error(e, 0) end
end

-- connection_lost once the child has exited and every pipe is closed.
function SubprocessTransport:_try_finish()
  if self._lost or self._returncode == nil or self._open > 0 then return end
  self._lost = true
  call(self._protocol, "connection_lost", nil)
end

function SubprocessTransport:get_pid() return self._pid end
function SubprocessTransport:get_returncode() return self._returncode end
function SubprocessTransport:get_protocol() return self._protocol end
function SubprocessTransport:is_closing() return self._closed end

-- get_pipe_transport(fd): the transport of the child's stdin (0), stdout
-- (1) or stderr (2), or nil if that is not a pipe.
function SubprocessTransport:get_pipe_transport(fd)
  return self._pipes[fd]
end

function SubprocessTransport:send_signal(sig)
  self._h:signal(signum(sig, "send_signal"))
end
function SubprocessTransport:terminate() self._h:signal(signals.SIGTERM) end
function SubprocessTransport:kill() self._h:signal(signals.SIGKILL) end

-- close(): closes the pipes and kills the child if it still runs, as
-- asyncio does.
function SubprocessTransport:close()
  if self._closed then return end
  self._closed = true
  for n = 0, 2 do
    local p = self._pipes[n]
    if p then p:close() end
  end
  if self._returncode == nil then self._h:signal(signals.SIGKILL) end
end

-- _wait(): the return code, once the child has exited.
async function SubprocessTransport:_wait()
  if self._returncode ~= nil then return self._returncode end
  local f = core.get_running_loop():create_future()
  table.insert(self._waiters, f)
  return await f
end

-- loop:subprocess_exec(protocol_factory, program, arg..., {stdin=PIPE,
-- stdout=PIPE, stderr=PIPE, cwd=, env=, pass_fds=, start_new_session=})
-- -> transport, protocol
async function Loop:subprocess_exec(factory, program, ...)
  local argv, opts = exec_args("subprocess_exec", program, ...)
  return await SubprocessTransport._start(factory, argv, spawn_opts(opts, "subprocess_exec", PIPE, false))
end

-- loop:subprocess_shell(protocol_factory, cmd, {...}) -> transport, protocol
async function Loop:subprocess_shell(factory, cmd, opts)
  local argv = shell_args("subprocess_shell", cmd)
  return await SubprocessTransport._start(factory, argv, spawn_opts(opts, "subprocess_shell", PIPE, false))
end

-- A pipe argument: an fd the transport then owns, or a Lua file, whose fd
-- is duplicated (the transport owns the copy; the script still closes the
-- file).
local function connect_pipe_fd(factory, pipe, mode, fn)
  local fd, dup
  if math.type(pipe) == "integer" then fd = pipe
  elseif io.type(pipe) == "file" then fd, dup = P.dup_file(pipe), true
  else
    error(string.format("bad argument #2 to '%s' (fd or file expected, got %s)", fn, io.type(pipe) or type(pipe)), 3)
  end
  local ok, tr, proto = pcall(function()
    local proto = factory()
    return T._pipe(fd, proto, mode), proto
  end)
  if not ok then
    if dup then P.close_fd(fd) end
    error(tr, 0)
  end
  return tr, proto
end

-- loop:connect_read_pipe(protocol_factory, pipe) -> transport, protocol:
-- reads the pipe into protocol:data_received; at its end eof_received,
-- then connection_lost(nil).
async function Loop:connect_read_pipe(factory, pipe)
  return connect_pipe_fd(factory, pipe, "r", "connect_read_pipe")
end

-- loop:connect_write_pipe(protocol_factory, pipe) -> transport, protocol:
-- write, writelines, write_eof (closes), and connection_lost when the
-- reader goes away.
async function Loop:connect_write_pipe(factory, pipe)
  return connect_pipe_fd(factory, pipe, "w", "connect_write_pipe")
end

return M
