-- asyncio.streams: open_connection, start_server, open_unix_connection,
-- start_unix_server.  StreamReader and StreamWriter themselves are C
-- (asyncio._stream): this module connects sockets, makes servers and runs
-- each client of a server in its own task.

local asyncio = require "asyncio"
local core = require "asyncio.core"
local S = require "asyncio._stream"
local tr = require "asyncio.transports"
local socket = require "socket"

local M = {}

local function loop_of()
  return core.get_running_loop()
end

local function check_opts(opts, fn)
  if opts ~= nil and type(opts) ~= "table" then
    error(string.format("bad argument to '%s' (options table expected, got %s)", fn, type(opts)), 3)
  end
  opts = opts or {}
  if opts.ssl then error(asyncio.NotImplementedError(fn .. ": ssl is not supported"), 0) end
  return opts
end

-- open_connection(host, port, {limit=, local_addr=, family=, sock=, ...})
-- -> reader, writer
async function M.open_connection(host, port, opts)
  opts = check_opts(opts, "open_connection")
  local sock
  if opts.sock then
    sock = tr._given_sock(opts.sock, socket.SOCK_STREAM, "open_connection")
  else
    if host == nil and port == nil then
      error(asyncio.ValueError("host and port was not specified and no sock specified"), 0)
    end
    sock = await tr._open_tcp(loop_of(), host, port, opts)
  end
  local ok, reader, writer = pcall(S._stream, sock, opts.limit)
  if not ok then sock:close(); error(reader, 0) end
  return reader, writer
end

-- open_unix_connection(path, {limit=, sock=}) -> reader, writer
async function M.open_unix_connection(path, opts)
  opts = check_opts(opts, "open_unix_connection")
  local sock = opts.sock or await tr._open_unix(loop_of(), path, opts)
  local ok, reader, writer = pcall(S._stream, sock, opts.limit)
  if not ok then sock:close(); error(reader, 0) end
  return reader, writer
end

-- Runs client_connected_cb(reader, writer) in the client's task: an async
-- callback is awaited, a plain one just called.
local async function run_client(cb, reader, writer)
  local r = cb(reader, writer)
  if asyncio.iscoroutine(r) or asyncio.isfuture(r) then return await(r) end
  return r
end

-- The accept handler of stream servers: one task per connection.  A
-- failing callback closes its connection and is reported through the
-- loop's exception handler, as asyncio does.
local function stream_accept(cb, limit)
  return function(server, sock)
    local ok, reader, writer = pcall(S._stream, sock, limit, server._detach)
    if not ok then sock:close(); error(reader, 0) end
    server:_attach(writer.transport)
    local task = asyncio.create_task(run_client(cb, reader, writer))
    task:add_done_callback(function(t)
      if t:cancelled() then return end
      local e = t:exception()
      if e ~= nil then
        writer:close()
        server._loop:call_exception_handler({
          message = "Unhandled exception in client_connected_cb",
          exception = e,
          traceback = t.get_traceback and t:get_traceback() or nil,
          transport = writer.transport,
        })
      end
    end)
  end
end

-- start_server(client_connected_cb, host, port, {limit=, backlog=,
-- reuse_address=, reuse_port=, family=, flags=, sock=, start_serving=})
-- -> Server
async function M.start_server(cb, host, port, opts)
  opts = check_opts(opts, "start_server")
  if type(cb) ~= "function" then
    error("bad argument #1 to 'start_server' (function expected, got " .. type(cb) .. ")", 2)
  end
  local loop = loop_of()
  local socks
  if opts.sock then
    socks = { tr._given_sock(opts.sock, socket.SOCK_STREAM, "start_server") }
  else
    socks = await tr._bind_tcp(loop, host, port, opts)
  end
  return tr._server(loop, socks, stream_accept(cb, opts.limit), opts)
end

-- start_unix_server(client_connected_cb, path, {limit=, backlog=, sock=,
-- start_serving=, cleanup_socket=true}) -> Server
async function M.start_unix_server(cb, path, opts)
  opts = check_opts(opts, "start_unix_server")
  if type(cb) ~= "function" then
    error("bad argument #1 to 'start_unix_server' (function expected, got " .. type(cb) .. ")", 2)
  end
  local socks = opts.sock and { tr._given_sock(opts.sock, socket.SOCK_STREAM, "start_unix_server") }
                or { tr._bind_unix(path, opts) }
  return tr._server(loop_of(), socks, stream_accept(cb, opts.limit), opts, true)
end

return M
