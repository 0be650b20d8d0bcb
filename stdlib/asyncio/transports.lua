-- asyncio.transports: the policy half of the networking API.  It adds to
-- the loop create_connection, create_server, create_unix_connection,
-- create_unix_server, create_datagram_endpoint and connect_accepted_socket,
-- and defines Server.  The hot paths (transports, the accept loop, name
-- resolution, sock_*) are C: asyncio._transport, asyncio._server,
-- asyncio._net, socket.
--
-- Connecting resolves the host on the resolver pool (numeric addresses
-- skip it) and tries each address in turn, as asyncio does without
-- happy_eyeballs_delay; a failure on every address raises the one error,
-- or OSError("Multiple exceptions: ...") when they differ.

local asyncio = require "asyncio"
local core = require "asyncio.core"
local socket = require "socket"
local util = require "asyncio._util"
local raise = util.raise

-- The OSError of a name that resolved to no address (Python's words).
local NO_ADDRESS = "getaddrinfo() returned empty list"
local T = require "asyncio._transport"
local listener = require("asyncio._server")._listener
require "asyncio._net"  -- loop:sock_connect, loop:getaddrinfo

local Loop = core.Loop
local M = {}

-- Every server not closed yet (weak: a serving one is anchored by its
-- listener), for the worker's graceful stop, M._shutdown; a server built
-- on one (http.serve's) adds itself with M._on_shutdown, so that its own
-- close() runs too (it also ends idle keep-alive connections).
local live = setmetatable({}, { __mode = "k" })

-- _on_shutdown(srv, on): srv (with close() and wait_closed()) is closed
-- by the graceful stop (on true), or no longer (on false).
function M._on_shutdown(srv, on)
  live[srv] = on and true or nil
end

-- The listening sockets the process inherited from a supervisor
-- (ml_state_set_worker): {family =, name =} each, read once.  A server
-- whose address one of them is bound to serves on a duplicate of it
-- instead of binding: every worker, and every generation of workers,
-- shares the one accept queue.
local inherited
local inherited_socks = setmetatable({}, { __mode = "k" })  -- sockets made from them

local function inherited_list()
  if inherited then return inherited end
  inherited = {}
  local i = 1
  while true do
    local fd = core._listen_dup(i)
    if fd == nil then break end
    local s = socket.socket(nil, nil, nil, fd)
    local ok, name = pcall(s.getsockname, s)
    inherited[i] = { family = s.family, name = ok and name or nil }
    s:close()
    i = i + 1
  end
  return inherited
end

-- A socket on a duplicate of the inherited listener bound to addr (a
-- sockaddr of family), or nil.
local function take_inherited(family, addr)
  if core.worker_id() == nil then return nil end
  for i, h in ipairs(inherited_list()) do
    local n = h.name
    if h.family == family and n ~= nil and (n == addr or type(n) == "table" and type(addr) == "table"
                                             and n[1] == addr[1] and n[2] == addr[2]) then
      local s = socket.socket(nil, nil, nil, core._listen_dup(i))
      inherited_socks[s] = true
      return s
    end
  end
  return nil
end

-- "('127.0.0.1', 8080)" for messages, as Python prints addresses.
local function fmt_addr(a)
  if type(a) ~= "table" then return string.format("%q", tostring(a)) end
  local parts = {}
  for i = 1, #a do
    parts[i] = type(a[i]) == "string" and ("'" .. a[i] .. "'") or tostring(a[i])
  end
  return "(" .. table.concat(parts, ", ") .. ")"
end
M._fmt_addr = fmt_addr

-- The error to raise when every address failed (asyncio's rule).
local function aggregate(errors)
  if #errors == 1 then return errors[1] end
  local model = tostring(errors[1])
  local same, msgs = true, {}
  for i, e in ipairs(errors) do
    msgs[i] = tostring(e)
    if msgs[i] ~= model then same = false end
  end
  if same then return errors[1] end
  return asyncio.OSError("Multiple exceptions: " .. table.concat(msgs, ", "))
end

-- The options each loop method takes (Python's keyword parameters), the
-- positional ones by name included.
local OPTS = {
  create_connection = { sock = true, local_addr = true, family = true, proto = true,
                        flags = true, host = true, port = true, ssl = true,
                        server_hostname = true, ssl_handshake_timeout = true,
                        ssl_shutdown_timeout = true },
  create_unix_connection = { sock = true, path = true, ssl = true, server_hostname = true,
                             ssl_handshake_timeout = true, ssl_shutdown_timeout = true },
  create_server = { sock = true, backlog = true, reuse_address = true, reuse_port = true,
                    family = true, flags = true, start_serving = true,
                    host = true, port = true, ssl = true, ssl_handshake_timeout = true,
                    ssl_shutdown_timeout = true },
  create_unix_server = { sock = true, backlog = true, start_serving = true,
                         cleanup_socket = true, path = true, ssl = true,
                         ssl_handshake_timeout = true, ssl_shutdown_timeout = true },
  start_tls = { server_side = true, server_hostname = true, ssl_handshake_timeout = true,
                ssl_shutdown_timeout = true },
  create_datagram_endpoint = { sock = true, local_addr = true, remote_addr = true,
                               family = true, proto = true, flags = true,
                               reuse_port = true, allow_broadcast = true },
}

-- A tail call, so that the error still names the caller of the API function.
local function check_opts(opts, fn)
  return util.check_opts(opts, fn, OPTS[fn])
end

-- TLS options (the ssl module is loaded only when they are used).  Here, not
-- in asyncio._util: the sandbox derives a module's needs from its requires,
-- and every module uses _util.
local function no_tls(opts)
  return opts.ssl == nil and opts.server_hostname == nil and opts.ssl_handshake_timeout == nil
    and opts.ssl_shutdown_timeout == nil
end

-- The client TLS options for a connection to host, or nil without TLS.
local function client_tls(opts, host)
  if no_tls(opts) then return nil end
  return require("ssl")._client_opts(opts, host)
end
M._client_tls = client_tls

-- The server TLS options, or nil without TLS.
local function server_tls(opts)
  if no_tls(opts) then return nil end
  return require("ssl")._server_opts(opts)
end
M._server_tls = server_tls

-- A stand-in protocol for a TLS transport until its handshake is over:
-- the user's protocol sees connection_made only then, as in asyncio.
local Handshaking = {}

-- Binds sock to the first local address of its family; raises otherwise.
local function bind_local(sock, family, laddrs, errors)
  for j = 1, laddrs.n do
    local l = laddrs[j]
    if l[1] == family then
      local ok, e = pcall(sock.bind, sock, l[5])
      if ok then return end
      local err = asyncio.OSError(e.errno, string.format(
        "error while attempting to bind on address %s: %s", fmt_addr(l[5]),
        tostring(e.strerror):lower()))
      errors[#errors + 1] = err
    end
  end
  error(errors[#errors] or asyncio.OSError(string.format(
    "no matching local address with family=%d found", family)), 0)
end

-- Raises TypeError, naming fn (the user's call), unless host is nil or a
-- string (or, for a server, a list of strings) and port nil, a number or
-- a string: they would fail deep inside getaddrinfo with its own name.
function M._check_hostport(fn, host, port, hostlist)
  local th = type(host)
  if not (th == "nil" or th == "string" or (hostlist and th == "table")) then
    raise("TypeError", fn .. "() host must be a string" .. (hostlist and " or a list of strings" or "")
      .. " or nil, got " .. th)
  end
  local tp = type(port)
  if not (tp == "nil" or tp == "number" or tp == "string") then
    raise("TypeError", fn .. "() port must be a number, a string or nil, got " .. tp)
  end
end
local check_hostport = M._check_hostport

-- Opens a connected TCP socket to host:port (opts: family, proto, flags,
-- local_addr).  Cancellation closes whatever socket was being connected.
async function M._open_tcp(loop, host, port, opts)
  local infos = await loop:getaddrinfo(host, port, {
    family = opts.family or 0, type = socket.SOCK_STREAM,
    proto = opts.proto or 0, flags = opts.flags or 0 })
  if infos.n == 0 then raise("OSError", NO_ADDRESS) end
  local laddrs
  if opts.local_addr then
    local la = opts.local_addr
    laddrs = await loop:getaddrinfo(la[1], la[2], {
      family = opts.family or 0, type = socket.SOCK_STREAM,
      proto = opts.proto or 0, flags = opts.flags or 0 })
    if laddrs.n == 0 then raise("OSError", NO_ADDRESS) end
  end
  local errors = {}
  for i = 1, infos.n do
    local family, stype, proto, _, addr = table.unpack(infos[i], 1, 5)
    local sock = socket.socket(family, stype, proto)
    local ok, err = pcall(function()
      if laddrs then bind_local(sock, family, laddrs, errors) end
      await loop:sock_connect(sock, addr)
    end)
    if ok then return sock end
    sock:close()
    if not asyncio.isinstance(err, asyncio.OSError) then error(err, 0) end
    if errors[#errors] ~= err then errors[#errors + 1] = err end
  end
  error(aggregate(errors), 0)
end

-- Opens a connected Unix stream socket to path.
async function M._open_unix(loop, path, opts)
  if type(path) ~= "string" then
    raise("TypeError", "open_unix_connection() path must be a string, got " .. type(path))
  end
  local sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  local ok, err = pcall(function() await loop:sock_connect(sock, path) end)
  if not ok then
    sock:close()
    error(err, 0)
  end
  return sock
end

-- Checks a socket passed as opts.sock.
local function given_sock(sock, stype, fn)
  local mt = getmetatable(sock)
  if type(mt) ~= "table" or mt.__name ~= "socket.socket" then
    raise("TypeError", fn .. "() sock must be a socket.socket, got " .. type(sock))
  end
  if sock.type ~= stype then
    raise("ValueError", string.format("A %s Socket was expected, got %s",
      stype == socket.SOCK_STREAM and "Stream" or "UDP", tostring(sock)))
  end
  return sock
end
M._given_sock = given_sock

-- Whether sock is listening already (an inherited or pre-made listener).
local function is_listening(sock)
  local ok, v = pcall(sock.getsockopt, sock, socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
  return ok and v ~= 0 and v ~= false
end

-- Checks a socket passed as a server's opts.sock: an open stream socket
-- that listens already (inherited from a supervisor or made with the
-- socket module) or is at least bound (the server then listens on it, as
-- asyncio does); not a connected one.
local function given_server_sock(sock, fn)
  local mt = getmetatable(sock)
  if type(mt) == "table" and mt.__name == "socket.socket" and sock:fileno() < 0 then
    raise("ValueError", fn .. "() sock is closed; a listening socket was expected")
  end
  given_sock(sock, socket.SOCK_STREAM, fn)
  if is_listening(sock) then return sock end
  local okp, peer = pcall(sock.getpeername, sock)
  if okp then
    raise("ValueError", string.format("%s() sock is connected to %s; a listening socket was expected",
      fn, fmt_addr(peer)))
  end
  local okn, name = pcall(sock.getsockname, sock)
  local bound = okn and (type(name) == "string" and name ~= ""
                         or type(name) == "table" and name[2] ~= 0)
  if not bound then
    raise("ValueError", fn .. "() sock is neither listening nor bound; bind it (and listen) "
      .. "before passing it as sock, or pass host and port instead")
  end
  return sock
end
M._given_server_sock = given_server_sock

-- Calls factory() and makes the transport; the socket is closed if that
-- fails.  [sock -> transport, protocol]
local function make_transport(sock, factory, onlost)
  local ok, proto = pcall(factory)
  if not ok then sock:close(); error(proto, 0) end
  local ok2, tr = pcall(T._transport, sock, proto, onlost)
  if not ok2 then sock:close(); error(tr, 0) end
  return tr, proto
end

-- The same over TLS: the handshake runs before connection_made.
local async function make_tls_transport(loop, sock, factory, tls)
  local ok, proto = pcall(factory)
  if not ok then sock:close(); error(proto, 0) end
  local ok2, tr = pcall(T._transport, sock, Handshaking)
  if not ok2 then sock:close(); error(tr, 0) end
  local ssl = require "ssl"
  await ssl._handshake(loop, tr, tls, true)
  tr:set_protocol(proto)
  if proto.connection_made then
    local ok3, err = pcall(proto.connection_made, proto, tr)
    if not ok3 then tr:abort(); error(err, 0) end
  end
  ssl._release(tr)
  return tr, proto
end

-- loop:create_connection(protocol_factory, host, port, {sock=, local_addr=,
-- family=, proto=, flags=, ssl=, server_hostname=, ssl_handshake_timeout=})
-- -> transport, protocol
async function Loop:create_connection(factory, host, port, opts)
  if type(host) == "table" and host[1] == nil and port == nil then opts, host = host, nil end
  opts = check_opts(opts, "create_connection")
  host, port = asyncio._positional("create_connection", opts, { "host", "port" }, host, port)
  check_hostport("create_connection", host, port)
  local tls = client_tls(opts, host)
  local sock
  if opts.sock then
    if host ~= nil or port ~= nil then
      raise("ValueError", "host/port and sock can not be specified at the same time")
    end
    sock = given_sock(opts.sock, socket.SOCK_STREAM, "create_connection")
  else
    if host == nil and port == nil then
      raise("ValueError", "host and port was not specified and no sock specified")
    end
    sock = await M._open_tcp(self, host, port, opts)
  end
  if tls then return await make_tls_transport(self, sock, factory, tls) end
  return make_transport(sock, factory)
end

-- loop:create_unix_connection(protocol_factory, path, {sock=})
async function Loop:create_unix_connection(factory, path, opts)
  if type(path) == "table" and opts == nil then opts, path = path, nil end
  opts = check_opts(opts, "create_unix_connection")
  path = asyncio._positional("create_unix_connection", opts, { "path" }, path)
  local tls = client_tls(opts, nil)
  local sock
  if opts.sock then
    if path ~= nil then raise("ValueError", "path and sock can not be specified at the same time") end
    sock = given_sock(opts.sock, socket.SOCK_STREAM, "create_unix_connection")
  else
    sock = await M._open_unix(self, path, opts)
  end
  if tls then return await make_tls_transport(self, sock, factory, tls) end
  return make_transport(sock, factory)
end

-- loop:connect_accepted_socket(protocol_factory, sock)
async function Loop:connect_accepted_socket(factory, sock)
  given_sock(sock, socket.SOCK_STREAM, "connect_accepted_socket")
  return make_transport(sock, factory)
end

-------------------------------------------------------------------------------
-- Server

local Server = {}
Server.__index = Server
Server.__name = "asyncio.Server"
M.Server = Server

function Server.__tostring(self)
  return string.format("<Server sockets=%d serving=%s>", self.sockets.n or #self.sockets,
                       tostring(self:is_serving()))
end

-- on_accept(server, sock, addr) handles each accepted socket.
function Server._new(loop, socks, on_accept, opts)
  local self = setmetatable({
    _loop = loop,
    sockets = socks,
    _active = 0,
    _clients = {},
    _waiters = {},
    _serving = false,
    _closed = false,
    _backlog = opts.backlog or 100,
    _unix_path = nil,
  }, Server)
  socks.n = #socks
  live[self] = true
  self._detach = function(tr) self:_detach_one(tr) end
  -- A worker accepts one connection each time its listening socket is
  -- readable (nginx's multi_accept off), not a whole backlog: workers
  -- sharing a socket then take turns, where the first one awake would
  -- otherwise take a burst of connections (a load balancer's or wrk's
  -- pool) for itself and leave the others idle.
  self._listener = listener(socks, function(sock, addr)
    on_accept(self, sock, addr)
  end, core.worker_id() ~= nil and 1 or self._backlog)
  return self
end

function Server:_attach(tr)
  self._active = self._active + 1
  self._clients[tr] = true
end

function Server:_detach_one(tr)
  if self._clients[tr] then
    self._clients[tr] = nil
    self._active = self._active - 1
  end
  if self._active == 0 and self._closed then self:_wakeup() end
end

function Server:_wakeup()
  local waiters = self._waiters
  self._waiters = nil
  if waiters then
    for _, f in ipairs(waiters) do
      if not f:done() then f:set_result(nil) end
    end
  end
end

function Server:_start_serving()
  if self._serving or self._closed then return end
  self._serving = true
  -- A socket that listens already keeps its backlog: a supervisor's
  -- shared listener is listened on by every worker.
  for _, sock in ipairs(self.sockets) do
    if not is_listening(sock) then sock:listen(self._backlog) end
  end
  self._listener:start()
  core.worker_ready()  -- a worker's first listening server: tell the supervisor
end

function Server:get_loop() return self._loop end

function Server:is_serving() return self._serving and not self._closed end

-- start_serving(): starts accepting (servers made with
-- {start_serving = false} do not).
async function Server:start_serving()
  self:_start_serving()
end

-- close(): stops listening and closes the listening sockets.  Connections
-- already accepted stay open; wait_closed() waits for them.
function Server:close()
  if self._closed then return end
  self._closed = true
  self._serving = false
  live[self] = nil
  self._listener:close()
  if self._unix_path then T._unlink_socket(self._unix_path, self._unix_dev, self._unix_ino) end
  self.sockets = { n = 0 }
  local f = self._serve_forever_fut
  if f and not f:done() then f:cancel() end
  if self._active == 0 then self:_wakeup() end
end

-- close_clients() / abort_clients(): close every accepted connection.
function Server:close_clients()
  for tr in pairs(self._clients) do tr:close() end
end

function Server:abort_clients()
  for tr in pairs(self._clients) do tr:abort() end
end

-- A closing server's connections that nobody holds any more: a handler
-- that returned without closing its writer drops the streams, and Python's
-- reference counting closes such a transport at once (StreamWriter's
-- __del__).  Lua's collector finds them only at its next cycle, so a
-- closed server with live connections runs one full collection (coalesced:
-- at most one per loop iteration), and wait_closed() does not wait on
-- garbage.
function Server:_collect_dropped()
  if self._collect_queued or not self._closed or self._active == 0 then return end
  self._collect_queued = true
  self._loop:call_soon(function()
    self._collect_queued = false
    if self._closed and self._active > 0 then collectgarbage() end
  end)
end

-- wait_closed(): returns once the server is closed and its connections
-- are all gone.
async function Server:wait_closed()
  if self._waiters == nil then return end
  self:_collect_dropped()
  local f = self._loop:create_future()
  table.insert(self._waiters, f)
  await f
end

-- serve_forever(): serves until cancelled; cancelling it closes the server.
async function Server:serve_forever()
  if self._serve_forever_fut then
    raise("RuntimeError", "server " .. tostring(self) .. " is already being awaited on serve_forever()")
  end
  if self._closed then raise("RuntimeError", "server " .. tostring(self) .. " is closed") end
  self:_start_serving()
  local f = self._loop:create_future()
  self._serve_forever_fut = f
  local ok, err = pcall(await, f)
  self._serve_forever_fut = nil
  if not ok then
    if asyncio.isinstance(err, asyncio.CancelledError) then
      self:close()
      await self:wait_closed()
    end
    error(err, 0)
  end
end

-- `local srv <close> = await asyncio.start_server(...)`: close and wait.
function Server:__close()
  self:close()
  await self:wait_closed()
end

-- Binds listening sockets for host(s):port (opts: family, flags,
-- reuse_address, reuse_port).  host nil or "" means every interface.
async function M._bind_tcp(loop, host, port, opts)
  local hosts
  if host == nil or host == "" then hosts = { false }
  elseif type(host) == "table" then hosts = host
  else hosts = { host } end
  local infos, seen = {}, {}
  for _, h in ipairs(hosts) do
    local r = await loop:getaddrinfo(h or nil, port, {
      family = opts.family or 0, type = socket.SOCK_STREAM,
      flags = (opts.flags or 0) | socket.AI_PASSIVE })
    for i = 1, r.n do
      local key = r[i][1] .. "|" .. fmt_addr(r[i][5])
      if not seen[key] then
        seen[key] = true
        infos[#infos + 1] = r[i]
      end
    end
  end
  if #infos == 0 then raise("OSError", NO_ADDRESS) end
  local socks = {}
  -- In a worker, a server that shares no inherited listener shares its
  -- port with the other workers' through SO_REUSEPORT.
  local reuse_port = opts.reuse_port
  if reuse_port == nil and core.worker_id() ~= nil then reuse_port = true end
  local pending  -- a socket made, not yet in socks (that can run out of memory)
  local ok, err = pcall(function()
    for _, info in ipairs(infos) do
      local family, stype, proto, _, sa = table.unpack(info, 1, 5)
      local given = take_inherited(family, sa)
      local made, sock
      if given then
        pending = given
        socks[#socks + 1] = given
        pending = nil
      else
        made, sock = pcall(socket.socket, family, stype, proto)
        -- Only an OSError (an address family the kernel lacks) skips the
        -- address, as asyncio's socket.error: out of memory is raised.
        if not made and not asyncio.isinstance(sock, asyncio.OSError) then error(sock, 0) end
      end
      if made then  -- an address family the kernel lacks is skipped
        pending = sock
        socks[#socks + 1] = sock
        pending = nil
        if opts.reuse_address ~= false then
          sock:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, true)
        end
        if reuse_port then
          sock:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, true)
        end
        if family == socket.AF_INET6 then
          sock:setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, true)
        end
        local bound, e = pcall(sock.bind, sock, sa)
        if not bound then
          if type(e) == "table" and e.errno then
            raise("OSError", e.errno, string.format(
              "error while attempting to bind on address %s: %s", fmt_addr(sa),
              tostring(e.strerror):lower()))
          end
          error(e, 0)
        end
      end
    end
  end)
  if not ok then
    if pending then pcall(pending.close, pending) end
    for _, s in ipairs(socks) do s:close() end
    error(err, 0)
  end
  if #socks == 0 then raise("OSError", "could not create any listening socket") end
  return socks
end

-- Binds a Unix listening socket at path, removing a stale socket file.
function M._bind_unix(path, opts)
  if type(path) ~= "string" then
    raise("TypeError", "create_unix_server() path must be a string, got " .. type(path))
  end
  local given = take_inherited(socket.AF_UNIX, path)
  if given then return given end  -- the supervisor's: never unlinked by a worker
  if path:sub(1, 1) ~= "\0" then T._unlink_socket(path) end
  local sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  local ok, e = pcall(sock.bind, sock, path)
  if not ok then
    sock:close()
    if type(e) == "table" and e.errno == 98 then
      raise("OSError", e.errno, "Address " .. fmt_addr(path) .. " is already in use")
    end
    error(e, 0)
  end
  return sock
end

-- Makes a Server over socks, with on_accept(server, sock, addr).  A Unix
-- server (unix true) removes its socket file when closed unless
-- opts.cleanup_socket is false, whether it bound it or was given it
-- (sock=), and only if the file is still the one it had (Python 3.13).
local function finish_server(server, socks, opts, unix)
  if unix and opts.cleanup_socket ~= false and not inherited_socks[socks[1]] then
    local ok, path = pcall(socks[1].getsockname, socks[1])
    if ok and type(path) == "string" and path ~= "" and path:sub(1, 1) ~= "\0" then
      local dev, ino = T._socket_ident(path)
      if dev then server._unix_path, server._unix_dev, server._unix_ino = path, dev, ino end
    end
  end
  if opts.start_serving ~= false then server:_start_serving() end
end

local function make_server(loop, socks, on_accept, opts, unix)
  local server = Server._new(loop, socks, on_accept, opts)
  local ok, err = pcall(finish_server, server, socks, opts, unix)
  if not ok then
    server:close()  -- its listener may be watching the sockets: it closes them
    error(err, 0)
  end
  return server
end

-- The Server over the bound sockets socks.  If making it fails (out of
-- memory), the sockets are closed now, as asyncio's create_server does,
-- not left to the collector with the port still bound.  (Nothing here
-- allocates before the pcall.)
function M._server(loop, socks, on_accept, opts, unix)
  local ok, server = pcall(make_server, loop, socks, on_accept, opts, unix)
  if not ok then
    for i = 1, #socks do pcall(socks[i].close, socks[i]) end
    error(server, 0)
  end
  return server
end

local function protocol_accept(factory, tls)
  if tls then
    -- The handshake runs from callbacks (no task per connection); the
    -- user's protocol is made and connected once it is over.
    return function(server, sock)
      local tr = T._transport(sock, Handshaking, server._detach)
      server:_attach(tr)
      local ssl = require "ssl"
      ssl._start(server._loop, tr, tls, true, function(exc)
        if exc ~= nil then
          if server._loop:get_debug() then
            server._loop:call_exception_handler({
              message = "SSL handshake failed", exception = exc, transport = tr })
          end
          tr:abort()
          return
        end
        local ok, proto = pcall(factory)
        if ok then
          tr:set_protocol(proto)
          if proto.connection_made then ok, proto = pcall(proto.connection_made, proto, tr) end
        end
        if not ok then
          tr:abort()
          server._loop:call_exception_handler({
            message = "Error on transport creation for incoming connection",
            exception = proto, transport = tr })
          return
        end
        ssl._release(tr)
      end)
    end
  end
  return function(server, sock)
    local tr = make_transport(sock, factory, server._detach)
    server:_attach(tr)
  end
end

-- loop:create_server(protocol_factory, host, port, {sock=, backlog=100,
-- reuse_address=, reuse_port=, family=, flags=, start_serving=true})
async function Loop:create_server(factory, host, port, opts)
  if type(host) == "table" and host[1] == nil and port == nil then opts, host = host, nil end
  opts = check_opts(opts, "create_server")
  host, port = asyncio._positional("create_server", opts, { "host", "port" }, host, port)
  check_hostport("create_server", host, port, true)
  local tls = server_tls(opts)
  local on_accept = protocol_accept(factory, tls)  -- before the sockets: nothing to close
  local socks
  if opts.sock then
    if host ~= nil or port ~= nil then
      raise("ValueError", "host/port and sock can not be specified at the same time")
    end
    socks = { given_server_sock(opts.sock, "create_server") }
  else
    socks = await M._bind_tcp(self, host, port, opts)
  end
  return M._server(self, socks, on_accept, opts)
end

-- loop:create_unix_server(protocol_factory, path, {sock=, backlog=,
-- start_serving=, cleanup_socket=true})
async function Loop:create_unix_server(factory, path, opts)
  if type(path) == "table" and opts == nil then opts, path = path, nil end
  opts = check_opts(opts, "create_unix_server")
  path = asyncio._positional("create_unix_server", opts, { "path" }, path)
  local tls = server_tls(opts)
  local on_accept = protocol_accept(factory, tls)
  local socks
  if opts.sock then
    if path ~= nil then raise("ValueError", "path and sock can not be specified at the same time") end
    socks = { given_server_sock(opts.sock, "create_unix_server") }
  else
    socks = { M._bind_unix(path, opts) }
  end
  return M._server(self, socks, on_accept, opts, true)
end

-- loop:start_tls(transport, protocol, sslcontext, {server_side=,
-- server_hostname=, ssl_handshake_timeout=}) -> transport: upgrades a
-- connected stream transport to TLS (STARTTLS).  The transport returned
-- is the same object, encrypted from now on, with protocol as its
-- protocol; nothing is delivered to either protocol during the
-- handshake.
async function Loop:start_tls(transport, protocol, ctx, opts)
  local ssl = require "ssl"
  opts = check_opts(opts, "start_tls")
  if not ssl._is_context(ctx) then
    raise("TypeError", "sslcontext is expected to be an instance of ssl.SSLContext, got " .. tostring(ctx))
  end
  local tls
  if opts.server_side then
    tls = ssl._server_opts({ ssl = ctx, ssl_handshake_timeout = opts.ssl_handshake_timeout })
  else
    tls = ssl._client_opts({ ssl = ctx, ssl_handshake_timeout = opts.ssl_handshake_timeout,
                             server_hostname = opts.server_hostname or "" }, nil)
  end
  await ssl._handshake(self, transport, tls, true)
  transport:set_protocol(protocol)
  ssl._release(transport)
  return transport
end

-- The graceful stop of a worker (ml_state_shutdown): closes every
-- server (accepted connections carry on; an http.Server also closes its
-- idle ones), and once their connections are all gone cancels main (the
-- main task, or nil) if it is still running.  Once main has ended, every
-- task still pending is cancelled and awaited, as asyncio.run() does when
-- its coroutine returns: a client connection's reader task (a pool of
-- connections to Redis or PostgreSQL) does not keep the worker alive
-- until the grace period ends.  With no main (a host's call with NULL),
-- the host's other tasks are left alone.
function M._shutdown(main)
  local servers = {}
  for srv in pairs(live) do servers[#servers + 1] = srv end
  for _, srv in ipairs(servers) do srv:close() end
  if #servers == 0 and main == nil then return end
  asyncio.create_task((async function()
    for _, srv in ipairs(servers) do await srv:wait_closed() end
    if main == nil then return end
    if not main:done() then
      main:cancel("shutdown")
      await asyncio.wait({ main })
    end
    asyncio._cancel_leftovers({})  -- (a function that awaits, as asyncio.run calls it)
  end)(), { name = "shutdown" })
end

-------------------------------------------------------------------------------
-- Datagrams

local function resolve_dgram(loop, addr, opts)
  return await loop:getaddrinfo(addr[1], addr[2], {
    family = opts.family or 0, type = socket.SOCK_DGRAM,
    proto = opts.proto or 0, flags = opts.flags or 0 })
end

-- loop:create_datagram_endpoint(protocol_factory, {local_addr=,
-- remote_addr=, family=, proto=, flags=, reuse_port=, allow_broadcast=,
-- sock=}) -> transport, protocol
async function Loop:create_datagram_endpoint(factory, opts)
  opts = check_opts(opts, "create_datagram_endpoint")
  local sock
  if opts.sock then
    sock = given_sock(opts.sock, socket.SOCK_DGRAM, "create_datagram_endpoint")
  elseif opts.family == socket.AF_UNIX or type(opts.local_addr) == "string"
      or type(opts.remote_addr) == "string" then
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    local ok, err = pcall(function()
      if opts.local_addr then
        if opts.local_addr:sub(1, 1) ~= "\0" then T._unlink_socket(opts.local_addr) end
        sock:bind(opts.local_addr)
      end
      if opts.remote_addr then await self:sock_connect(sock, opts.remote_addr) end
    end)
    if not ok then sock:close(); error(err, 0) end
  else
    local lo, re
    if opts.local_addr then lo = resolve_dgram(self, opts.local_addr, opts) end
    if opts.remote_addr then re = resolve_dgram(self, opts.remote_addr, opts) end
    -- Pairs (family, local, remote) with matching families.
    local pairs_ = {}
    if not lo and not re then
      if not opts.family or opts.family == 0 then raise("ValueError", "unexpected address family") end
      pairs_[1] = { opts.family, opts.proto or 0 }
    else
      local fams = {}
      for _, list in ipairs({ lo or { n = 0 }, re or { n = 0 } }) do
        for i = 1, list.n do
          local fam = list[i][1]
          if not fams[fam] then fams[fam] = { list[i][3] }; fams[#fams + 1] = fam end
        end
      end
      for _, fam in ipairs(fams) do
        local l, r
        if lo then for i = 1, lo.n do if lo[i][1] == fam then l = lo[i][5]; break end end end
        if re then for i = 1, re.n do if re[i][1] == fam then r = re[i][5]; break end end end
        if (not lo or l) and (not re or r) then
          pairs_[#pairs_ + 1] = { fam, fams[fam][1], l, r }
        end
      end
      if #pairs_ == 0 then raise("ValueError", "can not get address information") end
    end
    local errors = {}
    for _, p in ipairs(pairs_) do
      local s = socket.socket(p[1], socket.SOCK_DGRAM, p[2])
      local ok, err = pcall(function()
        if opts.reuse_port then s:setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, true) end
        if opts.allow_broadcast then s:setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, true) end
        if p[3] then s:bind(p[3]) end
        if p[4] then await self:sock_connect(s, p[4]) end
      end)
      if ok then sock = s; break end
      s:close()
      if not asyncio.isinstance(err, asyncio.OSError) then error(err, 0) end
      errors[#errors + 1] = err
    end
    if not sock then error(aggregate(errors), 0) end
  end
  local ok, proto = pcall(factory)
  if not ok then sock:close(); error(proto, 0) end
  local ok2, tr = pcall(T._datagram, sock, proto)
  if not ok2 then sock:close(); error(tr, 0) end
  return tr, proto
end

return M
