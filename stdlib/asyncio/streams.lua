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

-- The options each function takes (Python's keyword parameters), the
-- positional ones by name included.
local TCP = { limit = true, sock = true, local_addr = true, family = true, proto = true,
              flags = true, host = true, port = true, ssl = true, server_hostname = true,
              ssl_handshake_timeout = true, ssl_shutdown_timeout = true }
local UNIX = { limit = true, sock = true, path = true, ssl = true, server_hostname = true,
               ssl_handshake_timeout = true, ssl_shutdown_timeout = true }
local TCP_SERVER = { limit = true, sock = true, backlog = true, reuse_address = true,
                     reuse_port = true, family = true, flags = true, start_serving = true,
                     host = true, port = true, ssl = true, ssl_handshake_timeout = true,
                     ssl_shutdown_timeout = true }
local UNIX_SERVER = { limit = true, sock = true, backlog = true, start_serving = true,
                      cleanup_socket = true, path = true, ssl = true,
                      ssl_handshake_timeout = true, ssl_shutdown_timeout = true }

-- A table where a host or path goes, and no port or options after it: the
-- options, with the positional parameters by name.
local function is_opts(v, after)
  return type(v) == "table" and v[1] == nil and after == nil
end

local check_opts = require("asyncio._util").check_opts
local client_tls, server_tls = tr._client_tls, tr._server_tls

-- Makes the stream pair over sock and, with tls, runs the handshake.
local async function make_stream(sock, opts, tls)
  local ok, reader, writer = pcall(S._stream, sock, opts.limit)
  -- A transport that failed half-made was aborted and closes the socket
  -- itself (its close() then refuses): the first error is the one raised.
  if not ok then
    pcall(sock.close, sock)
    error(reader, 0)
  end
  if tls then await require("ssl")._handshake(loop_of(), writer.transport, tls) end
  return reader, writer
end

-- open_connection(host, port, {limit=, local_addr=, family=, sock=, ssl=,
-- server_hostname=, ssl_handshake_timeout=, ...}) -> reader, writer
async function M.open_connection(host, port, opts)
  if is_opts(host, port) then opts, host = host, nil end
  opts = check_opts(opts, "open_connection", TCP)
  host, port = asyncio._positional("open_connection", opts, { "host", "port" }, host, port)
  tr._check_hostport("open_connection", host, port)
  local tls = client_tls(opts, host)
  local sock
  if opts.sock then
    sock = tr._given_sock(opts.sock, socket.SOCK_STREAM, "open_connection")
  else
    if host == nil and port == nil then
      error(asyncio.ValueError("host and port was not specified and no sock specified"), 0)
    end
    sock = await tr._open_tcp(loop_of(), host, port, opts)
  end
  return await make_stream(sock, opts, tls)
end

-- open_unix_connection(path, {limit=, sock=}) -> reader, writer
async function M.open_unix_connection(path, opts)
  if is_opts(path, opts) then opts, path = path, nil end
  opts = check_opts(opts, "open_unix_connection", UNIX)
  path = asyncio._positional("open_unix_connection", opts, { "path" }, path)
  local tls = client_tls(opts, nil)
  local sock = opts.sock or await tr._open_unix(loop_of(), path, opts)
  return await make_stream(sock, opts, tls)
end

-- Runs client_connected_cb(reader, writer) in the client's task: an async
-- callback is awaited, a plain one just called.  With tls, after the
-- handshake; a client whose handshake fails is dropped quietly (reported
-- in debug mode only), as asyncio does.
local async function run_client(cb, reader, writer, tls, server)
  if tls then
    local ssl = require "ssl"
    local ok, err = pcall(function() await ssl._handshake(server._loop, writer.transport, tls) end)
    if not ok then
      if asyncio.isinstance(err, asyncio.CancelledError) then error(err, 0) end
      if server._loop:get_debug() then
        server._loop:call_exception_handler({
          message = "SSL handshake failed", exception = err, transport = writer.transport })
      end
      return
    end
  end
  local r = cb(reader, writer)
  if asyncio.iscoroutine(r) or asyncio.isfuture(r) then return await(r) end
  return r
end

-- The accept handler of stream servers: one task per connection.  A
-- failing callback closes its connection and is reported through the
-- loop's exception handler, as asyncio does.
local function stream_accept(cb, limit, tls)
  -- An async callback without TLS: calling it makes its Coroutine and runs
  -- nothing, so that Coroutine becomes the client's task itself (asyncio's
  -- StreamReaderProtocol calls the callback and makes a task of the
  -- coroutine it returns).  No run_client frame, no second Coroutine: ~400
  -- bytes less an idle connection (docs/performance.md, "Idle
  -- connections").  A plain function still runs in a task of its own, where
  -- it may await.
  local direct = not tls and asyncio.iscoroutinefunction(cb)
  return function(server, sock)
    local ok, reader, writer = pcall(S._stream, sock, limit, server._detach)
    -- A transport that failed half-made was aborted and closes the socket
    -- itself (its close() then refuses): the first error is the one raised.
    if not ok then
      pcall(sock.close, sock)
      error(reader, 0)
    end
    local task
    ok, task = pcall(function()
      server:_attach(writer.transport)
      writer._server_side = true
      if direct then return asyncio.create_task(cb(reader, writer)) end
      return asyncio.create_task(run_client(cb, reader, writer, tls, server))
    end)
    -- No task to serve it (out of memory): the connection is dropped now,
    -- not left open with its client waiting.
    if not ok then
      writer.transport:abort()
      error(task, 0)
    end
    task:add_done_callback(function(t)
      -- The handler may have dropped its streams: see _collect_dropped.
      if server._closed then server:_collect_dropped() end
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
  if is_opts(host, port) then opts, host = host, nil end
  opts = check_opts(opts, "start_server", TCP_SERVER)
  host, port = asyncio._positional("start_server", opts, { "host", "port" }, host, port)
  tr._check_hostport("start_server", host, port, true)
  if type(cb) ~= "function" then
    error(asyncio.TypeError("start_server() client_connected_cb must be a function, got " .. type(cb)), 2)
  end
  local tls = server_tls(opts)
  local loop = loop_of()
  local on_accept = stream_accept(cb, opts.limit, tls)  -- before the sockets: nothing to close
  local socks
  if opts.sock then
    if host ~= nil or port ~= nil then
      error(asyncio.ValueError("host/port and sock can not be specified at the same time"), 0)
    end
    socks = { tr._given_server_sock(opts.sock, "start_server") }
  else
    socks = await tr._bind_tcp(loop, host, port, opts)
  end
  return tr._server(loop, socks, on_accept, opts)
end

-- start_unix_server(client_connected_cb, path, {limit=, backlog=, sock=,
-- start_serving=, cleanup_socket=true}) -> Server
async function M.start_unix_server(cb, path, opts)
  if is_opts(path, opts) then opts, path = path, nil end
  opts = check_opts(opts, "start_unix_server", UNIX_SERVER)
  path = asyncio._positional("start_unix_server", opts, { "path" }, path)
  if type(cb) ~= "function" then
    error(asyncio.TypeError("start_unix_server() client_connected_cb must be a function, got " .. type(cb)), 2)
  end
  local tls = server_tls(opts)
  local on_accept = stream_accept(cb, opts.limit, tls)
  local socks
  if opts.sock then
    if path ~= nil then
      error(asyncio.ValueError("path and sock can not be specified at the same time"), 0)
    end
    socks = { tr._given_server_sock(opts.sock, "start_unix_server") }
  else
    socks = { tr._bind_unix(path, opts) }
  end
  return tr._server(loop_of(), socks, on_accept, opts, true)
end

-- writer:start_tls(sslcontext, {server_hostname=, ssl_handshake_timeout=,
-- server_side=}): upgrades the connection to TLS in place (STARTTLS);
-- the reader and writer go on over it.  A writer of start_server's is the
-- server side, as in asyncio.
S.StreamWriter.start_tls = async function(self, ctx, opts)
  local ssl = require "ssl"
  if type(opts) ~= "nil" and type(opts) ~= "table" then
    error("bad argument #2 to 'start_tls' (options table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  if not ssl._is_context(ctx) then
    error(asyncio.TypeError("sslcontext is expected to be an instance of ssl.SSLContext, got "
      .. tostring(ctx)), 0)
  end
  local server_side = opts.server_side
  if server_side == nil then server_side = self._server_side or false end
  local tls
  if server_side then
    tls = ssl._server_opts({ ssl = ctx, ssl_handshake_timeout = opts.ssl_handshake_timeout })
  else
    tls = ssl._client_opts({ ssl = ctx, ssl_handshake_timeout = opts.ssl_handshake_timeout,
                             server_hostname = opts.server_hostname or "" }, nil)
  end
  await ssl._handshake(loop_of(), self.transport, tls)
end

return M
