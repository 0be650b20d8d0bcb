-- http.client: the HTTP client, in the aiohttp spirit, on libcurl's
-- multi-socket API driven by moonloop's loop (http._curl).
--
--   local r = await http.get(url, {headers =, params =, timeout =, ...})
--   local s <close> = http.Session({base_url =, limit =, ...})
--   local r <close> = await s:post("/items", {json = {name = "x"}})
--   print(r.status, r.headers["content-type"], await r:text())
--
-- Policy lives here (options, URLs, bodies, the Response, errors); the
-- transfers, the pool and the loop's watchers are C.
local asyncio = require "asyncio"
local E = require "asyncio.exceptions"
local json = require "json"
-- libcurl is loaded (dlopen) by the first session, not by require "http":
-- a script that only serves HTTP never pays for it.
local C
local function curl()
  if C == nil then C = require "http._curl" end
  return C
end

local type, tostring, pairs, ipairs, error, setmetatable, rawget = type, tostring, pairs, ipairs,
  error, setmetatable, rawget
local fmt, concat = string.format, table.concat

local M = {}

---------------------------------------------------------------- errors

local function class(name, base, init, str)
  return rawget(E, name) or E.class(name, base, init, str)
end
-- ClientError: what the client raises of its own (aiohttp's names).
local ClientError = class("ClientError", E.Exception)
local ClientConnectionError = class("ClientConnectionError", ClientError)
ClientConnectionError.__bases = { E.ConnectionError }
local ServerDisconnectedError = class("ServerDisconnectedError", ClientConnectionError)
-- ClientResponseError(message, status, url): raise_for_status's, and
-- TooManyRedirects'.
local ClientResponseError = class("ClientResponseError", ClientError, function(e, msg, status, url)
  e.message, e.status, e.url = msg, status, url
end, function(e) return tostring(e.message) end)
local TooManyRedirects = class("TooManyRedirects", ClientResponseError)
local ClientPayloadError = class("ClientPayloadError", ClientError)
local InvalidURL = class("InvalidURL", ClientError)
InvalidURL.__bases = { E.ValueError }
M.ClientError, M.ClientConnectionError, M.ServerDisconnectedError = ClientError,
  ClientConnectionError, ServerDisconnectedError
M.ClientResponseError, M.TooManyRedirects, M.ClientPayloadError, M.InvalidURL = ClientResponseError,
  TooManyRedirects, ClientPayloadError, InvalidURL

local function raise(cls, ...) error(cls(...), 3) end
local function type_error(msg) error(E.TypeError(msg), 3) end
local function value_error(msg) error(E.ValueError(msg), 3) end

-- The exception for a transfer curl ended with code (libcurl-errors(3)).
local function transfer_error(code, errno, msg, url)
  if code == -12 then return E.MemoryError("not enough memory for the response") end
  if code == 6 or code == 5 then
    return E.gaierror(-2, msg)                   -- COULDNT_RESOLVE_HOST / _PROXY
  elseif code == 7 then                          -- COULDNT_CONNECT
    if errno ~= 0 then return E.OSError(errno, msg) end
    return ClientConnectionError(msg)
  elseif code == 28 then                         -- OPERATION_TIMEDOUT
    return E.TimeoutError(msg)
  elseif code == 60 then                         -- PEER_FAILED_VERIFICATION
    local ssl = require "ssl"
    local e = ssl.SSLCertVerificationError(msg)
    e.verify_message = msg
    return e
  elseif code == 35 or code == 58 or code == 77 or code == 83 or code == 90 or code == 91 then
    return (require "ssl").SSLError(msg)         -- handshake, certificate, CA file problems
  elseif code == 47 then                         -- TOO_MANY_REDIRECTS
    return TooManyRedirects(msg, nil, url)
  elseif code == 52 then                         -- GOT_NOTHING
    return ServerDisconnectedError(msg)
  elseif code == 55 or code == 56 then           -- SEND_ERROR / RECV_ERROR
    if errno ~= 0 then return E.OSError(errno, msg) end
    return ClientConnectionError(msg)
  elseif code == 18 or code == 61 or code == 16 or code == 92 then
    return ClientPayloadError(msg)               -- PARTIAL_FILE, BAD_CONTENT_ENCODING, HTTP2
  elseif code == 1 or code == 3 then
    return InvalidURL(msg .. ": " .. tostring(url))
  elseif code == 42 then
    return E.RuntimeError(msg)                   -- the response or session was closed
  end
  return ClientError(fmt("%s (curl error %d)", msg, code))
end

-- Raises the error of transfer x if it failed.
local function check(x, url)
  local state, code, errno, msg = x:result()
  if state ~= "running" and code ~= 0 then error(transfer_error(code, errno, msg, url), 0) end
end

---------------------------------------------------------------- URLs

local function quote(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return fmt("%%%02X", c:byte()) end))
end
M.quote = quote

local function scalar(v, what)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  type_error(fmt("%s must be a string, number or boolean, got %s", what, t))
end

-- The pairs of a params/form table: {k = v} (sorted by key), {k = {v1, v2}}
-- or a list of {k, v}.
local function pairs_of(t, what)
  if type(t) ~= "table" then type_error(fmt("%s must be a table, got %s", what, type(t))) end
  local out = {}
  if #t > 0 then
    for i, p in ipairs(t) do
      if type(p) ~= "table" or p[1] == nil then type_error(fmt("%s[%d] must be a {name, value} pair", what, i)) end
      out[#out + 1] = { scalar(p[1], what .. " name"), scalar(p[2], what .. " value") }
    end
    return out
  end
  local keys = {}
  for k in pairs(t) do
    if type(k) ~= "string" then type_error(fmt("%s keys must be strings", what)) end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do out[#out + 1] = { k, scalar(x, what .. "." .. k) } end
    else
      out[#out + 1] = { k, scalar(v, what .. "." .. k) }
    end
  end
  return out
end

local function urlencode(t, what)
  local parts = {}
  for i, p in ipairs(pairs_of(t, what)) do parts[i] = quote(p[1]) .. "=" .. quote(p[2]) end
  return concat(parts, "&")
end
M.urlencode = function(t) return urlencode(t, "urlencode()") end

local function check_url(url)
  if type(url) ~= "string" then type_error("url must be a string, got " .. type(url)) end
  local scheme = url:match("^(%a[%w+.-]*)://")
  if scheme == nil then raise(InvalidURL, "not an absolute http(s) URL: " .. url) end
  scheme = scheme:lower()
  if scheme ~= "http" and scheme ~= "https" then
    raise(InvalidURL, "unsupported URL scheme '" .. scheme .. "' (http and https only): " .. url)
  end
  if url:find("[%s%c]") then raise(InvalidURL, "URL contains white space or control characters: " .. url) end
end

local function join(base, url)
  if base == nil or url:find("^%a[%w+.-]*://") then return url end
  if url:sub(1, 1) == "/" then
    local root = base:match("^(%a[%w+.-]*://[^/]*)")
    return root .. url
  end
  return (base:sub(-1) == "/" and base or base .. "/") .. url
end

local function with_params(url, params)
  local qs = urlencode(params, "params")
  if qs == "" then return url end
  local hash = url:find("#", 1, true)
  local frag = ""
  if hash then url, frag = url:sub(1, hash - 1), url:sub(hash) end
  return url .. (url:find("?", 1, true) and "&" or "?") .. qs .. frag
end

---------------------------------------------------------------- headers

-- Headers: a table read case-insensitively (r.headers["Content-Type"] and
-- r.headers["content-type"] are the same), iterated with pairs in their
-- first spelling; repeated headers are joined with ", " (get_all gives
-- each one, Set-Cookie included).
local Headers = {}
local HeadersMT = {
  __index = function(h, k)
    if type(k) ~= "string" then return nil end
    local e = rawget(h, 1)[k:lower()]
    if e then return e.value end
    return Headers[k]
  end,
  __newindex = function() error(E.TypeError("response headers are read-only"), 2) end,
  __pairs = function(h)
    local order, i = rawget(h, 2), 0
    return function()
      i = i + 1
      local e = order[i]
      if e then return e.name, e.value end
    end, h, nil
  end,
  __len = function(h) return #rawget(h, 2) end,
  __tostring = function(h)
    local out = {}
    for _, e in ipairs(rawget(h, 2)) do out[#out + 1] = e.name .. ": " .. e.value end
    return "<Headers " .. concat(out, "; ") .. ">"
  end,
}
M.Headers = Headers

local function parse_head(raw)
  local by, order, all = {}, {}, {}
  local status_line
  for line in raw:gmatch("[^\r\n]+") do
    if status_line == nil then
      status_line = line
    else
      local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
      if name then
        local key = name:lower()
        all[#all + 1] = { name, value }
        local e = by[key]
        if e then
          e.value = e.value .. ", " .. value
          e.list[#e.list + 1] = value
        else
          e = { name = name, value = value, list = { value } }
          by[key] = e
          order[#order + 1] = e
        end
      end
    end
  end
  local h = setmetatable({ by, order }, HeadersMT)
  return status_line or "", h, all
end

-- headers:get_all(name): every value of a repeated header, in order.
function Headers.get_all(h, name)
  local e = rawget(h, 1)[tostring(name):lower()]
  if not e then return {} end
  return { table.unpack(e.list) }
end

local function check_header(name, value)
  if type(name) ~= "string" or not name:find("^[!#$%%&'*+%-.^_`|~%w]+$") then
    value_error("invalid header name: " .. tostring(name))
  end
  value = scalar(value, "header " .. name)
  if value:find("[\r\n%z]") then value_error("header " .. name .. " contains a line break or NUL") end
  return value
end

-- Merges header tables ({Name = value} or a list of {name, value}) into a
-- list of "Name: value", later ones replacing earlier ones by name.
local function merge_headers(...)
  local by, order = {}, {}
  for i = 1, select("#", ...) do
    local t = select(i, ...)
    if t ~= nil then
      if type(t) ~= "table" then type_error("headers must be a table, got " .. type(t)) end
      local list = #t > 0 and t or nil
      local function add(name, value)
        value = check_header(name, value)
        local key = name:lower()
        if not by[key] then order[#order + 1] = key end
        by[key] = name .. ": " .. value
      end
      if list then
        for _, p in ipairs(list) do add(p[1], p[2]) end
      else
        for k, v in pairs(t) do add(k, v) end
      end
    end
  end
  local out = {}
  for i, k in ipairs(order) do out[i] = by[k] end
  return out, by
end

---------------------------------------------------------------- Response

-- Reason phrases for responses that carry none (HTTP/2): the server's table.
local known_reason = (require "http._server").reason

local Response = {}  -- aiohttp's ClientResponse
Response.__index = Response
Response.__name = "http.ClientResponse"
M.ClientResponse = Response

local function close_response(r)
  local x = rawget(r, "_x")
  if x then x:close() end
end
Response.__close = close_response
Response.__gc = close_response
function Response.__tostring(r)
  return fmt("<Response [%d %s] %s>", r.status, r.reason, r.url)
end

local function new_response(x, method, url)
  local status, version, eff, raw = x:info()
  local line, headers = parse_head(raw)
  local reason = line:match("^HTTP/%S+%s+%d+%s+(.-)%s*$")
  if reason == nil or reason == "" then
    reason = (status >= 100 and status <= 999 and known_reason(status)) or ""
  end
  return setmetatable({
    status = status, reason = reason, headers = headers, url = eff or url,
    http_version = version, method = method, ok = status < 400, _x = x,
  }, Response)
end

-- await r:read(): the whole body (bytes).
async function Response:read()
  local body = rawget(self, "_body")
  if body then return body end
  local x = self._x
  await x:wait("done")
  check(x, self.url)
  body = x:take() or ""
  self._body = body
  x:close()
  return body
end

-- await r:text(): the body as a string (Lua strings are bytes: no decoding).
Response.text = Response.read

-- await r:json(): the body decoded as JSON.
async function Response:json()
  return json.decode(await self:read())
end

-- for chunk in r:chunks() do ... end: the body as it arrives.  A reader
-- slower than the peer pauses the transfer (the peer is held back by TCP),
-- so memory stays flat.
function Response:chunks()
  local x = self._x
  return function()
    while true do
      local c = x:take()
      if c then return c end
      if x:result() ~= "running" then
        check(x, self.url)
        return nil
      end
      await x:wait("data")
    end
  end
end

-- r:raise_for_status(): ClientResponseError for a 4xx or 5xx status.
function Response:raise_for_status()
  if self.status >= 400 then
    error(ClientResponseError(fmt("%d %s for %s", self.status, self.reason, self.url), self.status,
      self.url), 2)
  end
  return self
end

-- r:close(): releases the response; an unread body is abandoned (the
-- transfer is aborted).  Also its <close> and its finalizer.
Response.close = close_response

---------------------------------------------------------------- Session

local SESSION_OPTS = {
  base_url = true, headers = true, limit = true, limit_per_host = true, timeout = true,
  cookies = true, verify = true, ssl = true, follow_redirects = true, max_redirects = true,
  http2 = true, proxy = true,
}
local REQUEST_OPTS = {
  body = true, json = true, form = true, headers = true, params = true, timeout = true,
  follow_redirects = true, max_redirects = true, verify = true, ssl = true, http2 = true,
  decompress = true, proxy = true, unix_socket = true, cookies = true,
}

local Session = {}
Session.__index = Session
Session.__name = "http.Session"
M.ClientSession = Session

local function check_timeout(t, what)
  if t == nil or t == false then return nil end
  if type(t) ~= "number" then type_error(what .. " must be a number of seconds or nil, got " .. type(t)) end
  if not (t > 0) then value_error(what .. " must be positive, got " .. tostring(t)) end
  return t
end

local function check_int(v, what, lo)
  if v == nil then return nil end
  if math.type(v) ~= "integer" then type_error(what .. " must be an integer, got " .. (math.type(v) or type(v))) end
  if v < lo then value_error(fmt("%s must be at least %d, got %d", what, lo, v)) end
  return v
end

local function check_bool(v, what)
  if v ~= nil and type(v) ~= "boolean" then type_error(what .. " must be a boolean, got " .. type(v)) end
  return v
end

local function check_str(v, what)
  if v ~= nil and type(v) ~= "string" then type_error(what .. " must be a string, got " .. type(v)) end
  return v
end

-- What an ssl.SSLContext says, as curl options: its CA files and data,
-- whether it verifies and checks names, its client certificate.
local function ssl_spec(spec, ctx, what)
  if ctx == nil then return end
  if ctx == false then
    spec.verify, spec.verify_host = false, false
    return
  end
  if ctx == true then return end
  local ssl = require "ssl"
  if not ssl._is_context(ctx) then
    type_error(what .. " must be an ssl.SSLContext or a boolean, got " .. type(ctx))
  end
  local st = ssl._settings(ctx)
  spec.verify = st.verify_mode ~= ssl.CERT_NONE
  spec.verify_host = spec.verify and st.check_hostname
  if #st.cafiles > 0 or #st.cadata > 0 or #st.capaths > 0 then
    local pem = {}
    for _, f in ipairs(st.cafiles) do
      local h = io.open(f, "rb")
      if h then pem[#pem + 1] = h:read("a"); h:close() end
    end
    for _, d in ipairs(st.cadata) do pem[#pem + 1] = d end
    if #pem > 0 then spec.cablob = concat(pem, "\n") end
    if #st.capaths > 0 then spec.capath = st.capaths[1] end
    if not st.default_paths then spec.no_default_ca = true end
  end
  if st.certfile then
    spec.sslcert, spec.sslkey, spec.keypasswd = st.certfile, st.keyfile or st.certfile, st.password
  end
end

-- http.Session({base_url=, headers=, limit=, limit_per_host=, timeout=,
-- cookies=, verify=, ssl=, follow_redirects=, max_redirects=, http2=,
-- proxy=}): a pool of connections (HTTP/1.1 keep-alive, HTTP/2
-- multiplexed) and a cookie jar.  local s <close> = http.Session() closes
-- it at the end of the scope; closing aborts what is still in flight.
function M.Session(opts)
  opts = asyncio._check_opts("Session", opts, SESSION_OPTS, 2)
  local s = {
    base_url = check_str(opts.base_url, "base_url"),
    timeout = check_timeout(opts.timeout, "timeout") or (opts.timeout == nil and 300 or nil),
    follow_redirects = check_bool(opts.follow_redirects, "follow_redirects"),
    max_redirects = check_int(opts.max_redirects, "max_redirects", 0),
    verify = check_bool(opts.verify, "verify"),
    http2 = check_bool(opts.http2, "http2"),
    proxy = check_str(opts.proxy, "proxy"),
    ssl = opts.ssl,
    closed = false,
  }
  if s.base_url then check_url(s.base_url) end
  merge_headers(opts.headers)   -- checks them now
  s.headers = opts.headers
  local cookies = opts.cookies
  if cookies ~= nil and type(cookies) ~= "boolean" and type(cookies) ~= "table" then
    type_error("cookies must be a boolean or a table of name = value, got " .. type(cookies))
  end
  if type(cookies) == "table" then
    local parts = {}
    for _, p in ipairs(pairs_of(cookies, "cookies")) do parts[#parts + 1] = p[1] .. "=" .. p[2] end
    s.cookie = concat(parts, "; ")
  end
  if s.ssl ~= nil then ssl_spec({}, s.ssl, "ssl") end
  s._m = curl().Multi({
    limit = check_int(opts.limit, "limit", 0) or 100,
    limit_per_host = check_int(opts.limit_per_host, "limit_per_host", 0) or 0,
    cookies = cookies ~= false,
  })
  return setmetatable(s, Session)
end

-- s:close(): aborts the transfers in flight and closes every connection.
function Session:close()
  if not self.closed then
    self.closed = true
    self._m:close()
  end
end
Session.__close = Session.close
function Session.__tostring(s)
  return fmt("<http.Session%s%s>", s.base_url and " " .. s.base_url or "", s.closed and " closed" or "")
end

-- await s:request(method, url, opts): the Response, once its headers are
-- in (read the body with r:read()/text()/json()/chunks()).
async function Session:request(method, url, opts)
  if self.closed then error(E.RuntimeError("the session is closed"), 2) end
  if type(method) ~= "string" or not method:find("^[%a][%w%-_]*$") then
    error(E.ValueError("invalid HTTP method: " .. tostring(method)), 2)
  end
  method = method:upper()
  if type(url) ~= "string" then error(E.TypeError("url must be a string, got " .. type(url)), 2) end
  opts = asyncio._check_opts("request", opts, REQUEST_OPTS, 2)
  url = join(self.base_url, url)
  check_url(url)
  if opts.params ~= nil then url = with_params(url, opts.params) end
  local nbodies = (opts.body ~= nil and 1 or 0) + (opts.json ~= nil and 1 or 0) + (opts.form ~= nil and 1 or 0)
  if nbodies > 1 then error(E.ValueError("only one of body, json and form may be given"), 2) end
  local body, ctype = opts.body, nil
  if body ~= nil and type(body) ~= "string" then
    error(E.TypeError("body must be a string, got " .. type(body)), 2)
  end
  if opts.json ~= nil then
    body, ctype = json.encode(opts.json), "application/json"
  elseif opts.form ~= nil then
    body, ctype = urlencode(opts.form, "form"), "application/x-www-form-urlencoded"
  end
  local list, by = merge_headers(self.headers, opts.headers)
  if ctype and not by["content-type"] then list[#list + 1] = "Content-Type: " .. ctype end
  local timeout = opts.timeout
  if timeout == nil then timeout = self.timeout else timeout = check_timeout(timeout, "timeout") end
  local spec = {
    method = method, url = url, headers = list, body = body,
    timeout_ms = timeout and math.max(1, math.ceil(timeout * 1000)) or 0,
    follow = opts.follow_redirects, max_redirects = check_int(opts.max_redirects, "max_redirects", 0),
    verify = check_bool(opts.verify, "verify"), http2 = check_bool(opts.http2, "http2"),
    decompress = check_bool(opts.decompress, "decompress"),
    proxy = check_str(opts.proxy, "proxy") or self.proxy,
    unix_socket = check_str(opts.unix_socket, "unix_socket"),
    cookie = self.cookie,
  }
  if spec.follow == nil then spec.follow = check_bool(self.follow_redirects, "follow_redirects") end
  if spec.follow == nil then spec.follow = true end
  spec.max_redirects = spec.max_redirects or self.max_redirects
  if spec.verify == nil then spec.verify = self.verify end
  if spec.http2 == nil then spec.http2 = self.http2 end
  if opts.cookies ~= nil then
    local parts = {}
    for _, p in ipairs(pairs_of(opts.cookies, "cookies")) do parts[#parts + 1] = p[1] .. "=" .. p[2] end
    spec.cookie = (spec.cookie and spec.cookie .. "; " or "") .. concat(parts, "; ")
  end
  local ctx = opts.ssl
  if ctx == nil then ctx = self.ssl end
  ssl_spec(spec, ctx, "ssl")
  if spec.verify == false then spec.verify_host = false end
  local x = self._m:request(spec)
  await x:wait("headers")
  local ok, err = pcall(check, x, url)
  if not ok then
    x:close()
    error(err, 0)
  end
  return new_response(x, method, url)
end

for _, m in ipairs({ "get", "post", "put", "patch", "delete", "head", "options" }) do
  local M_ = m:upper()
  Session[m] = async function(self, url, opts) return await self:request(M_, url, opts) end
end

---------------------------------------------------------------- module level

-- http.get(url, opts), http.request(method, url, opts), ...: through one
-- default Session per state (its pool is shared by these calls).
local default
local function default_session()
  if default == nil or default.closed then default = M.Session() end
  return default
end

-- Closes the default session (its pooled connections): for tests that
-- count fds, and hosts that want the sockets back.
function M._close_default()
  if default then default:close(); default = nil end
end

async function M.request(method, url, opts)
  return await default_session():request(method, url, opts)
end
for _, m in ipairs({ "get", "post", "put", "patch", "delete", "head", "options" }) do
  local M_ = m:upper()
  M[m] = async function(url, opts) return await default_session():request(M_, url, opts) end
end

-- http.curl_version(): libcurl's version and features (http2, brotli...).
function M.curl_version() return curl().version() end

return M
