-- http.websocket: WebSocket (RFC 6455) connections, both ends.  The server
-- side is req:websocket() on an upgrade request of http.serve; the client
-- side is http.websocket(url) over open_connection (wss:// with the ssl
-- module).  Framing is http._ws (wslay); this file does the handshakes and
-- the I/O: a WebSocket reads when a task awaits receive(), and writes what
-- the framer produces (messages, and wslay's own pong and close answers).
local asyncio = require "asyncio"
local util = require "asyncio._util"
local core = require "http._ws"

local raise = util.raise
local M = {}

local WebSocketError = asyncio.class("WebSocketError", asyncio.Exception)
-- send() on a WebSocket that is closed (ws.close_code says how).
local ConnectionClosed = asyncio.class("ConnectionClosed", WebSocketError)
M.WebSocketError, M.ConnectionClosed = WebSocketError, ConnectionClosed

local TEXT, BINARY, PONG, CLOSE, PING = core.TEXT, core.BINARY, core.PONG, core.CLOSE, core.PING

local WebSocket = {}
WebSocket.__index = WebSocket
WebSocket.__name = "http.WebSocket"
M.WebSocket = WebSocket

function WebSocket.__tostring(ws)
  return string.format("<http.WebSocket %s%s>", ws.closed and "closed " or "open",
                       ws.close_code and (" " .. ws.close_code) or "")
end

local function new(framer, io, protocol)
  return setmetatable({ _f = framer, _io = io, protocol = protocol, closed = false }, WebSocket)
end

-- Writes what the framer has for the peer.
local function flush(ws)
  local out = ws._f:output()
  if #out > 0 and not ws._io_closed then
    local ok, err = pcall(ws._io.write, out)
    if not ok then
      ws._io_closed = true
      ws.closed = true
      ws.close_code = ws.close_code or 1006
      error(err, 0)
    end
  end
end

local function finish(ws, code)
  ws.closed = true
  ws.close_code = ws.close_code or code
  if not ws._io_closed then
    ws._io_closed = true
    ws._io.close()
  end
end

-- ws:send(data, [kind]): a text message, or binary with kind "binary"
-- (the default is text when data is valid UTF-8, binary otherwise).
async function WebSocket:send(data, kind)
  if type(data) ~= "string" then raise("TypeError", "send() expects a string, got " .. type(data)) end
  if kind ~= nil and kind ~= "text" and kind ~= "binary" then
    raise("ValueError", "send() kind must be 'text' or 'binary', got " .. tostring(kind))
  end
  if kind == nil then kind = utf8.len(data) and "text" or "binary" end
  if self.closed or not self._f:queue(kind == "text" and TEXT or BINARY, data) then
    error(ConnectionClosed("the WebSocket is closed" .. (self.close_code and (" (" .. self.close_code .. ")") or "")), 2)
  end
  flush(self)
end

-- ws:ping([data]): sends a ping (the peer's pong is ws.last_pong).
async function WebSocket:ping(data)
  if self.closed or not self._f:queue(PING, data or "") then
    error(ConnectionClosed("the WebSocket is closed"), 2)
  end
  flush(self)
end

-- ws:receive() -> data, kind ("text" or "binary"), or nil once the
-- connection is closed (ws.close_code and ws.close_reason say why: 1000 a
-- normal close, 1006 the connection ended without one, 1009 a message over
-- max_message).
async function WebSocket:receive()
  local f = self._f
  while true do
    local op, data, code = f:pop()
    if op == TEXT then return data, "text"
    elseif op == BINARY then return data, "binary"
    elseif op == PONG then self.last_pong = data
    elseif op == CLOSE then
      self.close_code = code ~= 0 and code or 1005
      self.close_reason = data:sub(3)
      pcall(flush, self)  -- wslay's answering close
      finish(self)
      return nil
    elseif self.closed then
      return nil
    elseif self._done then
      finish(self, self._done)
      return nil
    else
      local chunk = ""
      if not self._io_closed then
        local ok, r = pcall(self._io.read)
        if ok then chunk = r end
      end
      if chunk == "" then
        finish(self, 1006)
        return nil
      end
      f:feed(chunk)
      pcall(flush, self)
      local _, sent, sent_code, done = f:state()
      if done and f:pending() == 0 then
        -- a protocol error or a message too big: wslay answered with a close
        pcall(flush, self)
        finish(self, sent and sent_code ~= 0 and sent_code or 1002)
      elseif done then
        -- messages were parsed before the end: deliver them first
        self._done = sent and sent_code ~= 0 and sent_code or 1002
      end
    end
  end
end

-- for data, kind in ws:messages() do ... end: until the connection closes.
function WebSocket:messages()
  return function() return await self:receive() end
end

-- ws:close([code], [reason]): sends a close frame, waits (up to timeout
-- seconds, 5) for the peer's, then closes the connection.
async function WebSocket:close(code, reason, timeout)
  if self.closed then return end
  if code ~= nil and (math.type(code) ~= "integer" or code < 1000 or code > 4999) then
    raise("ValueError", "close() code must be an integer in [1000, 4999], got " .. tostring(code))
  end
  self._f:close(code or 1000, reason or "")
  pcall(flush, self)
  local ok = pcall(function()
    await asyncio.timeout(timeout or 5, function()
      while not self.closed do
        local d = await self:receive()
        if d == nil then break end
      end
    end)
  end)
  self.close_code = self.close_code or code or 1000
  finish(self)
  return ok
end

function WebSocket:__close()
  await self:close()
end

-------------------------------------------------------------------------------
-- Server side: req:websocket({protocols =, max_message =})

local function has_token(value, token)
  if type(value) ~= "string" then return false end
  for t in value:gmatch("[^,%s]+") do
    if t:lower() == token then return true end
  end
  return false
end

local ACCEPT_OPTS = { protocols = true, max_message = true }

async function M._accept(req, opts)
  local server = require "http.server"
  opts = util.check_opts(opts, "websocket", ACCEPT_OPTS)
  local h = req.headers
  local hc = req._hc
  if req.method ~= "GET" or not has_token(h.upgrade, "websocket") or not has_token(h.connection, "upgrade")
      or not hc:_upgraded() then
    error(server.HTTPError(400, "not a WebSocket upgrade request"), 2)
  end
  if h["sec-websocket-version"] ~= "13" then
    error(server.HTTPError(426, "WebSocket version 13 expected"), 2)
  end
  local key = h["sec-websocket-key"]
  if type(key) ~= "string" or #key ~= 24 then
    error(server.HTTPError(400, "bad Sec-WebSocket-Key"), 2)
  end
  local chosen
  if opts.protocols and h["sec-websocket-protocol"] then
    local offered = {}
    for p in h["sec-websocket-protocol"]:gmatch("[^,%s]+") do offered[p] = true end
    for _, p in ipairs(opts.protocols) do
      if offered[p] then chosen = p; break end
    end
  end
  hc:_write_raw("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                .. "Sec-WebSocket-Accept: " .. core._accept_key(key) .. "\r\n"
                .. (chosen and ("Sec-WebSocket-Protocol: " .. chosen .. "\r\n") or "") .. "\r\n")
  local io = {
    read = function() return await hc:_raw() end,
    write = function(s) if hc:_write_raw(s) then await hc:_drain() end end,
    close = function() hc:_close() end,
  }
  local ws = new(core._framer(true, opts.max_message), io, chosen)
  local early = hc:_take_raw()
  if #early > 0 then ws._f:feed(early) end
  return ws
end

-------------------------------------------------------------------------------
-- Client side: http.websocket(url, {headers =, protocols =, ssl =,
-- max_message =, timeout =})

local CONNECT_OPTS = { headers = true, protocols = true, ssl = true, max_message = true,
                       timeout = true, server_hostname = true }

local function parse_url(url)
  local scheme, rest = url:match("^(wss?)://(.+)$")
  if not scheme then raise("ValueError", "http.websocket() needs a ws:// or wss:// URL, got " .. tostring(url)) end
  local hostport, path = rest:match("^([^/?#]+)(.*)$")
  if not hostport then raise("ValueError", "http.websocket(): no host in " .. url) end
  local host, port = hostport:match("^%[(.+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]+):?(%d*)$") end
  port = tonumber(port) or (scheme == "wss" and 443 or 80)
  if path == "" then path = "/" end
  path = path:gsub("#.*$", "")
  return scheme, host, port, path, hostport
end

async function M.connect(url, opts)
  if type(url) ~= "string" then raise("TypeError", "http.websocket() url must be a string, got " .. type(url)) end
  opts = util.check_opts(opts, "http.websocket", CONNECT_OPTS)
  local scheme, host, port, path, hostport = parse_url(url)
  local copts = {}
  if scheme == "wss" then
    copts.ssl = opts.ssl or require("ssl").create_default_context()
    copts.server_hostname = opts.server_hostname or host
  end
  local r, w
  local function handshake()
    r, w = await asyncio.open_connection(host, port, copts)
    local key = core._random_key()
    local lines = { "GET " .. path .. " HTTP/1.1", "Host: " .. hostport, "Upgrade: websocket",
                    "Connection: Upgrade", "Sec-WebSocket-Key: " .. key, "Sec-WebSocket-Version: 13" }
    if opts.protocols then lines[#lines + 1] = "Sec-WebSocket-Protocol: " .. table.concat(opts.protocols, ", ") end
    for k, v in pairs(opts.headers or {}) do
      if tostring(k):find("[\r\n:]") or tostring(v):find("[\r\n]") then
        raise("ValueError", "http.websocket(): bad header " .. tostring(k))
      end
      lines[#lines + 1] = k .. ": " .. v
    end
    w:write(table.concat(lines, "\r\n") .. "\r\n\r\n")
    await w:drain()
    local head = await r:readuntil("\r\n\r\n")
    local status = head:match("^HTTP/1%.[01] (%d%d%d)")
    local hdrs = {}
    for name, value in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do hdrs[name:lower()] = value end
    if status ~= "101" then
      w:close()
      error(WebSocketError("WebSocket handshake with " .. url .. " failed: HTTP status " .. tostring(status)), 0)
    end
    if hdrs["sec-websocket-accept"] ~= core._accept_key(key) then
      w:close()
      error(WebSocketError("WebSocket handshake with " .. url .. " failed: bad Sec-WebSocket-Accept"), 0)
    end
    return hdrs["sec-websocket-protocol"]
  end
  local proto
  if opts.timeout then proto = await asyncio.timeout(opts.timeout, handshake)
  else proto = handshake() end
  local io = {
    read = function() return await r:read(65536) end,
    write = function(s) w:write(s); await w:drain() end,
    close = function()
      w:close()
      pcall(function() await w:wait_closed() end)
    end,
  }
  return new(core._framer(false, opts.max_message), io, proto)
end

return M
