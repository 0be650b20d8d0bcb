-- redis.lua: a small Redis client on moonloop streams (RESP2), the example
-- of docs/deployment.md: state that must outlive a worker goes to Redis.
-- Copy it into your project and require it:
--
--   local redis = require "redis"
--   local r = await redis.connect("127.0.0.1", 6379)   -- {password =, db =}
--   await r:call("SET", "greeting", "hello")           --> "OK"
--   print(await r:call("GET", "greeting"))             --> hello
--   print(await r:call("INCR", "hits"))                --> 1 (an integer)
--   local res = await r:pipeline({ { "INCR", "a" }, { "GET", "nope" } })
--   -- res[1] == 1, res[2] == nil, res.n == 2
--   r:close()
--
-- Replies: a status ("+OK") and a bulk string are strings, an integer is a
-- Lua integer, a nil bulk or nil array is nil, an array is a table with
-- its length in n (an element may be nil).  An error reply ("-ERR ...")
-- is raised as a redis.Error (e.kind is its first word: "ERR",
-- "WRONGTYPE"...); inside an array (EXEC's results) it is the Error value.
--
-- One connection serves any number of tasks: every call writes its
-- command at once and waits for its reply, and one reader task hands the
-- replies out in order, so calls from concurrent tasks are pipelined on
-- the wire.  A cancelled caller's reply is read and dropped, so the
-- connection stays in step.  Not here: pub/sub and RESP3 (they push
-- messages no command asked for), cluster, TLS, reconnecting (a lost
-- connection fails every pending and later call with a ConnectionError:
-- connect again).
local asyncio = require "asyncio"

local M = {}

-- An error reply of the server.
M.Error = asyncio.class("RedisError", asyncio.Exception, function(e, msg)
  e.message = msg
  e.kind = msg:match("^(%u+)") or "ERR"
end)
-- A reply that is not RESP2: the connection is closed.
M.ProtocolError = asyncio.class("RedisProtocolError", asyncio.ConnectionError)

local CRLF = "\r\n"

-- The command as a RESP array of bulk strings.
local function encode(args, n, out)
  out[#out + 1] = "*" .. n .. CRLF
  for i = 1, n do
    local a = args[i]
    local ta = math.type(a)
    if ta == "integer" then a = string.format("%d", a)
    elseif ta == "float" then a = string.format("%.17g", a)
    elseif type(a) ~= "string" then
      error(asyncio.TypeError(string.format("redis: argument %d of %s must be a string or a number, got %s",
                                            i, tostring(args[1]), type(a))), 3)
    end
    out[#out + 1] = "$" .. #a .. CRLF
    out[#out + 1] = a
    out[#out + 1] = CRLF
  end
  return out
end

local function protocol_error(what, line)
  error(M.ProtocolError(string.format("redis: %s: %q", what, line)), 0)
end

-- await redis.read_reply(reader) -> one reply from a StreamReader: its
-- value (nil for a nil reply), or a redis.Error value for an error reply.
-- Raises IncompleteReadError at end of file, ProtocolError on bad input.
async function M.read_reply(reader)
  local line = await reader:readuntil(CRLF)
  local kind, rest = line:sub(1, 1), line:sub(2, -3)
  if kind == "+" then return rest
  elseif kind == "-" then return M.Error(rest)
  elseif kind == ":" then
    local v = math.tointeger(tonumber(rest))
    if v == nil then protocol_error("bad integer", line) end
    return v
  elseif kind == "$" or kind == "*" then
    local n = math.tointeger(tonumber(rest))
    if n == nil or n < -1 then protocol_error("bad length", line) end
    if n == -1 then return nil end
    if kind == "$" then
      local data = await reader:readexactly(n + 2)
      if data:sub(-2) ~= CRLF then protocol_error("bulk string not ended by CRLF", data:sub(-2)) end
      return data:sub(1, n)
    end
    local t = { n = n }
    for i = 1, n do t[i] = await M.read_reply(reader) end
    return t
  end
  protocol_error("unknown reply type", line)
end

local Conn = {}
Conn.__index = Conn
Conn.__name = "redis.Connection"

function Conn.__tostring(self)
  return string.format("<redis.Connection %s:%s%s>", self.host, self.port, self._closed and " closed" or "")
end

-- Fails every call still waiting, and later ones, with err.
function Conn:_fail(err)
  if not self._closed then
    self._closed = true
    self._err = err
    self._writer:close()
  end
  local q = self._queue
  for i = q.head, q.tail do
    local f = q[i]
    q[i] = nil
    if not f:done() then f:set_exception(err) end
  end
  q.head, q.tail = 1, 0
end

-- The reader task: each reply goes to the oldest waiting call.
async function Conn:_read_loop()
  local q = self._queue
  while true do
    local ok, reply = pcall(function() return await M.read_reply(self._reader) end)
    if not ok then
      local e = reply
      if asyncio.isinstance(e, asyncio.CancelledError) then
        -- the task cancelled (a worker's graceful stop): the connection ends
        self:_fail(self._closed and self._err or asyncio.ConnectionError("redis: the connection is closed"))
        error(e, 0)
      elseif asyncio.isinstance(e, asyncio.IncompleteReadError) then
        e = asyncio.ConnectionError("redis: the server closed the connection")
      elseif not asyncio.isinstance(e, asyncio.Exception) then
        e = M.ProtocolError("redis: " .. tostring(e))
      end
      return self:_fail(self._closed and self._err or e)
    end
    if q.head > q.tail then
      return self:_fail(M.ProtocolError("redis: a reply no command asked for (pub/sub is not supported)"))
    end
    local f = q[q.head]
    q[q.head] = nil
    q.head = q.head + 1
    if not f:done() then f:set_result(reply) end  -- a cancelled caller's is dropped
  end
end

-- Writes the commands (an array of argument lists) and returns their
-- futures, in order.
function Conn:_send(cmds)
  if self._closed then error(self._err, 0) end
  local out, futs, q = {}, {}, self._queue
  for i, args in ipairs(cmds) do
    if type(args) ~= "table" or args[1] == nil then
      error(asyncio.TypeError("redis: command " .. i .. " must be a table of arguments"), 3)
    end
    encode(args, args.n or #args, out)
  end
  self._writer:write(table.concat(out))
  for i = 1, #cmds do
    local f = self._loop:create_future()
    q.tail = q.tail + 1
    q[q.tail] = f
    futs[i] = f
  end
  return futs
end

-- await conn:call(cmd, ...) -> the reply; raises redis.Error for an error reply.
async function Conn:call(...)
  local f = self:_send({ table.pack(...) })[1]
  await self._writer:drain()
  local v = await f
  if asyncio.isinstance(v, M.Error) then error(v, 0) end
  return v
end

-- await conn:pipeline({{cmd, ...}, ...}) -> {reply, ..., n = count}, the
-- commands written at once.  If any reply is an error, the first one is
-- raised (with e.index, the command's number) once all have arrived.
async function Conn:pipeline(cmds)
  if type(cmds) ~= "table" then
    error(asyncio.TypeError("redis: pipeline() takes a table of commands, got " .. type(cmds)), 2)
  end
  local futs = self:_send(cmds)
  await self._writer:drain()
  local res, first = { n = #futs }, nil
  for i, f in ipairs(futs) do
    res[i] = await f
    if first == nil and asyncio.isinstance(res[i], M.Error) then
      first = res[i]
      first.index = i
    end
  end
  if first then error(first, 0) end
  return res
end

-- conn:close(): closes the connection; calls still waiting fail.
function Conn:close()
  if self._closed then return end
  self:_fail(asyncio.ConnectionError("redis: the connection is closed"))
end

-- await conn:wait_closed(): until the connection and its reader task are done.
async function Conn:wait_closed()
  await self._writer:wait_closed()
  await asyncio.wait({ self._task })
end

-- `local r <close> = await redis.connect(...)`
function Conn:__close() self:close() end

-- await redis.connect(host, port, {password =, db =}) -> a connection.
async function M.connect(host, port, opts)
  opts = opts or {}
  local reader, writer = await asyncio.open_connection(host or "127.0.0.1", port or 6379)
  local self = setmetatable({
    host = host or "127.0.0.1", port = port or 6379,
    _reader = reader, _writer = writer, _loop = asyncio.get_running_loop(),
    _queue = { head = 1, tail = 0 }, _closed = false,
  }, Conn)
  self._task = asyncio.create_task(self:_read_loop(), { name = "redis reader" })
  local ok, err = pcall(function()
    if opts.password then await self:call("AUTH", opts.password) end
    if opts.db then await self:call("SELECT", opts.db) end
  end)
  if not ok then
    self:close()
    error(err, 0)
  end
  return self
end

return M
