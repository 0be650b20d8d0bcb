-- http.server: the HTTP/1.1 server.  http.serve(handler, host, port, opts)
-- listens with loop:create_server (so ssl=, backlog=, reuse_port= and sock=
-- are the loop's); each connection is an http._server protocol object (C:
-- llhttp, the response writer, limits and timers) and one task that awaits
-- its requests in turn and runs the handler for each.
local asyncio = require "asyncio"
local core = require "http._server"
local util = require "asyncio._util"
local transports = require "asyncio.transports"

local M = {}

local raise = util.raise
local iscoroutine = asyncio.iscoroutine

-------------------------------------------------------------------------------
-- Errors and responses

-- error(http.HTTPError(404)) in a handler answers 404 (and is not reported
-- as a handler failure); HTTPError(status, message).
local HTTPError = asyncio.class("HTTPError", asyncio.Exception, function(e, status, msg)
  e.status = status
  e.message = msg
end, function(e)
  return tostring(e.status) .. (e.message and (" " .. tostring(e.message)) or "")
end)
M.HTTPError = HTTPError

-- What a body reader raises when the body cannot be had: over the server's
-- body_limit (413), malformed or cut short by the client's EOF (400).  An
-- HTTPError, so that a handler which lets it pass answers that status, not
-- 500, and nothing is reported as a handler failure.
function M._body_error(status, msg)
  return HTTPError(status, msg)
end

local Response = {}
Response.__index = Response
Response.__name = "http.Response"
M.Response = setmetatable({}, {
  __call = function(_, status, body, headers)
    if status ~= nil and math.type(status) ~= "integer" then
      raise("TypeError", "http.Response() status must be an integer, got " .. type(status))
    end
    if body ~= nil and type(body) ~= "string" then
      raise("TypeError", "http.Response() body must be a string, got " .. type(body))
    end
    if headers ~= nil and type(headers) ~= "table" then
      raise("TypeError", "http.Response() headers must be a table, got " .. type(headers))
    end
    return setmetatable({ status = status or 200, body = body, headers = headers }, Response)
  end,
  __index = Response,
})
function Response.__tostring(r)
  return string.format("<http.Response %d, %d bytes>", r.status, r.body and #r.body or 0)
end

local json_mod = require "json"
local function json() return json_mod end
M._json = json

-- http.json(value, [status], [headers]): a JSON response (an
-- http.Response with content_type "application/json"), made in C
-- (_json.c): json.encode's text, encoded straight from the value.
M.json = core._json_response(Response, json_mod.encode)

-------------------------------------------------------------------------------
-- Requests

local Request = {}
local methods = {}
Request.__name = "http.Request"

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- "a=1&b=2&a=3" -> {a = {"1", "3"}... no: the last value wins, as
-- aiohttp's query.get does; every value is in query_all.
local function parse_query(qs)
  local q = {}
  for pair in qs:gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = unescape(k)
    if q[k] == nil then q[k] = unescape(v) end
  end
  return q
end
M._parse_query = parse_query

Request.__index = function(self, k)
  local m = methods[k]
  if m ~= nil then return m end
  if k == "query" then
    local q = parse_query(rawget(self, "query_string"))
    rawset(self, "query", q)
    return q
  end
  return nil
end
Request.__tostring = function(self)
  return string.format("<http.Request %s %s>", self.method, self.target)
end

-- Header names are kept lower-case; any case finds them.
local Headers = {
  __name = "http.Headers",
  __index = function(t, k)
    if type(k) == "string" then return rawget(t, k:lower()) end
  end,
}

-- req:read() -> the whole body (a string; "" if none).
async function methods:read()
  local body = rawget(self, "_body")
  if body then return body end
  local hc = self._hc
  local first = await hc:_body()
  if first == nil then body = ""
  else
    local more = await hc:_body()
    if more == nil then body = first
    else
      local parts = { first, more }
      while true do
        local c = await hc:_body()
        if c == nil then break end
        parts[#parts + 1] = c
      end
      body = table.concat(parts)
    end
  end
  rawset(self, "_body", body)
  return body
end

-- req:text() -> the body as text.
async function methods:text()
  return await self:read()
end

-- req:json() -> the body decoded as JSON; a bad body is a 400 for the client.
async function methods:json()
  local body = await self:read()
  local ok, v = pcall(json().decode, body)
  if not ok then error(HTTPError(400, "invalid JSON body: " .. tostring(v)), 0) end
  return v
end

-- for chunk in req:chunks() do ... end: the body as it arrives; reading
-- pauses while the handler holds it back.
function methods:chunks()
  local hc = self._hc
  return function() return await hc:_body() end
end

-- A streamed response: w:write(chunk), w:close().
local Writer = {}
Writer.__index = Writer
Writer.__name = "http.ResponseWriter"

async function Writer:write(chunk)
  if type(chunk) ~= "string" then
    raise("TypeError", "write() expects a string, got " .. type(chunk))
  end
  if self._hc:_write(chunk) then await self._hc:_drain() end
end

async function Writer:drain()
  await self._hc:_drain()
end

-- w:close(): ends the response (also done when the handler returns).
function Writer:close()
  self._hc:_finish()
end

-- local w = await req:respond(status, headers): begins a streamed
-- response (chunked unless headers give a Content-Length).
async function methods:respond(status, headers)
  if math.type(status) ~= "integer" then
    raise("TypeError", "respond() status must be an integer, got " .. type(status))
  end
  if headers ~= nil and type(headers) ~= "table" then
    raise("TypeError", "respond() headers must be a table, got " .. type(headers))
  end
  self._hc:_start(status, headers)
  return setmetatable({ _hc = self._hc }, Writer)
end

-- local ws = await req:websocket(opts): accepts a WebSocket upgrade.
async function methods:websocket(opts)
  return await require("http.websocket")._accept(self, opts)
end

-------------------------------------------------------------------------------
-- The connection's task

local traceback
local function msgh(e)
  traceback = debug.traceback(nil, 2)
  return e
end

-- The handler's call, its answer written inside the same protected call.
local function run(handler, req, hc)
  local res = handler(req)
  if iscoroutine(res) then res = await res end
  if res == nil then
    hc:_finish_or_fail()
  else
    hc:_respond(res)
  end
end

local function failed(srv, hc, req, err)
  if asyncio.isinstance(err, HTTPError) and math.type(err.status) == "integer"
      and err.status >= 400 and err.status <= 599 then
    hc:_fail(err.status, err.message and tostring(err.message) or nil)
    return
  end
  if asyncio.isinstance(err, asyncio.CancelledError) then
    hc:_abort()
    return
  end
  hc:_fail(500)
  srv._loop:call_exception_handler({
    message = "Error in HTTP handler for " .. tostring(req.method) .. " " .. tostring(req.target),
    exception = err,
    traceback = traceback,
    request = req,
  })
end

-- One protected call runs the connection's requests until one fails, not
-- one a request (an xpcall was ~430 instructions of a ~11,000-instruction
-- hello request).  Invariant: `req` is the request being handled and nil
-- while the loop awaits the next one, so an error with no request is the
-- await's own (the task cancelled while idle) and leaves the task as it
-- did when the await stood outside any protected call.
-- An async handler runs as `await handler(req)`: its body inline in the
-- connection's task, with no Coroutine object made (~1,300 instructions a
-- request less), and in the loop itself, not through `run` (a call less).
local async function serve_conn(srv, hc, handler, is_async)
  local req
  local requests
  if is_async then
    requests = function()
      while true do
        req = await hc
        if req == nil then return end
        local res = await handler(req)
        if res == nil then
          hc:_finish_or_fail()
        else
          hc:_respond(res)
        end
        req = nil
      end
    end
  else
    requests = function()
      while true do
        req = await hc
        if req == nil then return end
        run(handler, req, hc)
        req = nil
      end
    end
  end
  while true do
    local ok, err = xpcall(requests, msgh)
    if ok then break end
    if req == nil then error(err, 0) end
    failed(srv, hc, req, err)
    req = nil
  end
  srv._conns[hc] = nil
  hc:_close()
end

-------------------------------------------------------------------------------
-- The server

local Server = {}
Server.__index = Server
Server.__name = "http.Server"
M.Server = Server

function Server.__tostring(self)
  return string.format("<http.Server %s serving=%s>", tostring(self.port or self.path),
                       tostring(self:is_serving()))
end

function Server:is_serving()
  return not self._closing and self._server:is_serving()
end

-- srv:close([timeout]): stops accepting; idle connections close now, busy
-- ones after their response; after timeout seconds (default: the
-- shutdown_timeout option, 10) the rest are aborted.
function Server:close(timeout)
  if self._closing then return end
  if timeout ~= nil and type(timeout) ~= "number" then
    raise("TypeError", "close() timeout must be a number, got " .. type(timeout))
  end
  self._closing = true
  transports._on_shutdown(self, false)
  self._server:close()
  for hc in pairs(self._conns) do hc:_shutdown() end
  local conns = self._conns
  self._deadline = self._loop:call_later(timeout or self._shutdown_timeout, function()
    for hc in pairs(conns) do hc:_abort() end
  end)
end

-- await srv:wait_closed(): until the server is closed and its connections
-- are gone.
async function Server:wait_closed()
  await self._server:wait_closed()
  if self._deadline then self._deadline:cancel() end
end

-- `local srv <close> = await http.serve(...)`
function Server:__close()
  self:close()
  await self:wait_closed()
end

-- await srv:serve_forever(): until cancelled (which closes the server).
async function Server:serve_forever()
  local ok, err = pcall(function() return await self._server:serve_forever() end)
  if not ok then
    self:close()
    await self:wait_closed()
    error(err, 0)
  end
end

local SERVE_OPTS = {
  ssl = true, backlog = true, reuse_port = true, reuse_address = true, sock = true,
  header_limit = true, body_limit = true, header_timeout = true, keepalive_timeout = true,
  shutdown_timeout = true, ssl_handshake_timeout = true,
}

local function check_limit(opts, name, kind)
  local v = opts[name]
  if v == nil then return end
  if kind == "integer" then
    if math.type(v) ~= "integer" or v < 0 then
      raise("ValueError", "http.serve() option '" .. name .. "' must be a non-negative integer, got " .. tostring(v))
    end
  elseif type(v) ~= "number" or v <= 0 then
    raise("ValueError", "http.serve() option '" .. name .. "' must be a positive number, got " .. tostring(v))
  end
end

local function make_server(handler, opts)
  if type(handler) ~= "function" and not (getmetatable(handler) or {}).__call then
    raise("TypeError", "http.serve() handler must be a function, got " .. type(handler))
  end
  opts = util.check_opts(opts, "http.serve", SERVE_OPTS)
  check_limit(opts, "header_limit", "integer")
  check_limit(opts, "body_limit", "integer")
  check_limit(opts, "header_timeout", "number")
  check_limit(opts, "keepalive_timeout", "number")
  check_limit(opts, "shutdown_timeout", "number")
  local loop = asyncio.get_running_loop()
  local srv = setmetatable({
    _loop = loop, _conns = {}, _closing = false,
    _shutdown_timeout = opts.shutdown_timeout or 10,
  }, Server)
  local limits = {
    header_limit = opts.header_limit, body_limit = opts.body_limit,
    header_timeout = opts.header_timeout, keepalive_timeout = opts.keepalive_timeout,
  }
  local conn = core._conn
  local conns = srv._conns
  local is_async = asyncio.iscoroutinefunction(handler)
  local function factory()
    local hc = conn(Request, Headers, limits)
    conns[hc] = true
    loop:create_task(serve_conn(srv, hc, handler, is_async))
    return hc
  end
  local sopts = { ssl = opts.ssl, backlog = opts.backlog, reuse_port = opts.reuse_port,
                  reuse_address = opts.reuse_address, sock = opts.sock,
                  ssl_handshake_timeout = opts.ssl_handshake_timeout }
  return srv, factory, sopts, loop
end

-- await http.serve(handler, host, port, opts) -> Server.  handler(req) is an
-- async function returning a string, an http.Response or nil (after
-- req:respond() or req:websocket()).
async function M.serve(handler, host, port, opts)
  if type(host) == "table" and port == nil and opts == nil then opts, host = host, nil end
  local srv, factory, sopts, loop = make_server(handler, opts)
  if sopts.sock == nil and port == nil then
    raise("TypeError", "http.serve() needs a port (0 picks a free one) or the sock option")
  end
  srv._server = await loop:create_server(factory, host, port, sopts)
  transports._on_shutdown(srv, true)  -- a worker's graceful stop closes it as srv:close() does
  local s = srv._server.sockets[1]
  if s then
    local addr = s:getsockname()
    if type(addr) == "table" then srv.host, srv.port = addr[1], addr[2] end
  end
  srv.sockets = srv._server.sockets
  return srv
end

-- await http.serve_unix(handler, path, opts) -> Server, on a Unix socket.
async function M.serve_unix(handler, path, opts)
  local srv, factory, sopts, loop = make_server(handler, opts)
  sopts.reuse_port, sopts.reuse_address = nil, nil
  srv._server = await loop:create_unix_server(factory, path, sopts)
  transports._on_shutdown(srv, true)
  srv.path = path
  srv.sockets = srv._server.sockets
  return srv
end

M._Request = Request
M._Headers = Headers

return M
