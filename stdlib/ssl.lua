-- ssl: TLS for moonloop scripts, Python's ssl module on OpenSSL 3.
-- Contexts, SSLObject and the TLS layer over transports are C
-- (ssl._ssl); this module adds the exception classes, Purpose,
-- create_default_context, and what asyncio uses to put TLS over a
-- transport (handshake with its timeout, the ssl= options of
-- open_connection / start_server / create_connection / create_server).
local E = require "asyncio.exceptions"

-- The exception classes live in asyncio.exceptions, so that C code finds
-- them by name; SSLError is an OSError whose str() is its message, as in
-- Python ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:
-- self-signed certificate").
local function ssl_init(e, errno, strerror)
  if type(errno) == "number" then
    e.errno, e.strerror, e.message = errno, strerror, strerror
  else
    e.message = errno
  end
end
local function ssl_str(e)
  local m = e.strerror or e.message
  return m ~= nil and tostring(m) or ""
end
local function class(name, base, ...)
  return rawget(E, name) or E.class(name, base, ...)
end
local SSLError = class("SSLError", E.OSError, ssl_init, ssl_str)
local SSLCertVerificationError = class("SSLCertVerificationError", SSLError)
SSLCertVerificationError.__bases = { E.ValueError }
class("SSLZeroReturnError", SSLError)
class("SSLWantReadError", SSLError)
class("SSLWantWriteError", SSLError)
class("SSLSyscallError", SSLError)
class("SSLEOFError", SSLError)

local C = require "ssl._ssl"

local M = {}
for k, v in pairs(C) do
  if type(k) == "string" and k:sub(1, 1) ~= "_" then M[k] = v end
end
for _, name in ipairs({ "SSLError", "SSLCertVerificationError", "SSLZeroReturnError",
                        "SSLWantReadError", "SSLWantWriteError", "SSLSyscallError",
                        "SSLEOFError" }) do
  M[name] = E[name]
end
M.CertificateError = SSLCertVerificationError
M.HAS_SNI, M.HAS_ALPN, M.HAS_TLSv1_2, M.HAS_TLSv1_3 = true, true, true, true
M.HAS_NEVER_CHECK_COMMON_NAME = true

M.Purpose = { SERVER_AUTH = "SERVER_AUTH", CLIENT_AUTH = "CLIENT_AUTH" }

local methods = C._methods

-- What a context was told about certificates, for clients that verify
-- with their own TLS stack (the http client hands it to libcurl):
-- M._settings(ctx) -> {cafiles, capaths, cadata (lists), default_paths,
-- verify_mode, check_hostname, certfile, keyfile, password}.
local told = setmetatable({}, { __mode = "k" })
local function record(ctx)
  local r = told[ctx]
  if r == nil then
    r = { cafiles = {}, capaths = {}, cadata = {}, default_paths = false }
    told[ctx] = r
  end
  return r
end
local c_load_verify, c_default_paths, c_cert_chain = methods.load_verify_locations,
  methods.set_default_verify_paths, methods.load_cert_chain
function methods:load_verify_locations(cafile, capath, cadata)
  c_load_verify(self, cafile, capath, cadata)
  local r = record(self)
  if cafile then r.cafiles[#r.cafiles + 1] = cafile end
  if capath then r.capaths[#r.capaths + 1] = capath end
  if cadata then r.cadata[#r.cadata + 1] = cadata end
end
function methods:set_default_verify_paths()
  c_default_paths(self)
  record(self).default_paths = true
end
function methods:load_cert_chain(certfile, keyfile, password)
  c_cert_chain(self, certfile, keyfile, password)
  local r = record(self)
  r.certfile, r.keyfile, r.password = certfile, keyfile, password
end
function M._settings(ctx)
  local r = record(ctx)
  return { cafiles = r.cafiles, capaths = r.capaths, cadata = r.cadata,
           default_paths = r.default_paths, verify_mode = ctx.verify_mode,
           check_hostname = ctx.check_hostname, certfile = r.certfile, keyfile = r.keyfile,
           password = type(r.password) == "string" and r.password or nil }
end

-- ctx:load_default_certs([purpose]): the system's CA store.
function methods:load_default_certs(purpose)
  if purpose ~= nil and purpose ~= "SERVER_AUTH" and purpose ~= "CLIENT_AUTH" then
    error(E.TypeError("purpose must be ssl.Purpose.SERVER_AUTH or CLIENT_AUTH"), 2)
  end
  self:set_default_verify_paths()
end

local function is_context(v)
  local mt = getmetatable(v)
  return type(mt) == "table" and mt.__name == "ssl.SSLContext"
end
M._is_context = is_context

-- create_default_context([purpose], {cafile=, capath=, cadata=}): a
-- client context (SERVER_AUTH, the default) verifies certificates against
-- the system store and checks host names, TLS 1.2 at least; a server
-- context (CLIENT_AUTH) verifies nothing until told to.
function M.create_default_context(purpose, opts)
  if type(purpose) == "table" and opts == nil then purpose, opts = nil, purpose end
  purpose = purpose or "SERVER_AUTH"
  opts = opts or {}
  local ctx
  if purpose == "SERVER_AUTH" then ctx = C.SSLContext(C.PROTOCOL_TLS_CLIENT)
  elseif purpose == "CLIENT_AUTH" then ctx = C.SSLContext(C.PROTOCOL_TLS_SERVER)
  else error(E.TypeError("purpose must be ssl.Purpose.SERVER_AUTH or CLIENT_AUTH"), 2) end
  if opts.cafile or opts.capath or opts.cadata then
    ctx:load_verify_locations(opts.cafile, opts.capath, opts.cadata)
  elseif ctx.verify_mode ~= C.CERT_NONE then
    ctx:load_default_certs(purpose)
  end
  return ctx
end

-------------------------------------------------------------------------------
-- What asyncio uses.

local function value_error(msg) error(E.ValueError(msg), 0) end

local function check_timeout(v, name)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v or v <= 0 then
    value_error(string.format("%s should be a positive number, got %s", name, tostring(v)))
  end
  return v
end

-- The ssl options of a connection or server: refuses the TLS-only ones
-- without ssl, as asyncio does.  Returns nil when opts.ssl is not set.
local function without_ssl(opts)
  for _, k in ipairs({ "server_hostname", "ssl_handshake_timeout", "ssl_shutdown_timeout" }) do
    if opts[k] ~= nil then value_error(k .. " is only meaningful with ssl") end
  end
end

-- Client side: {ctx, hostname, timeout} for opts, host the host name
-- connected to (nil for sock= and Unix paths).
function M._client_opts(opts, host)
  if not opts.ssl then without_ssl(opts); return nil end
  local ctx = opts.ssl
  if ctx == true then ctx = M.create_default_context()
  elseif not is_context(ctx) then
    error(E.TypeError("ssl must be true or an ssl.SSLContext, got " .. tostring(ctx)), 0)
  end
  local hostname = opts.server_hostname
  if hostname == nil then
    if type(host) ~= "string" then
      value_error("You must set server_hostname when using ssl without a host")
    end
    hostname = host
  end
  if hostname == "" then
    if ctx.check_hostname then value_error("check_hostname requires server_hostname") end
    hostname = nil
  end
  return { ctx = ctx, hostname = hostname,
           timeout = check_timeout(opts.ssl_handshake_timeout, "ssl_handshake_timeout"),
           shutdown = check_timeout(opts.ssl_shutdown_timeout, "ssl_shutdown_timeout") }
end

-- Server side: {ctx, timeout}, or nil.
function M._server_opts(opts)
  if not opts.ssl then without_ssl(opts); return nil end
  if opts.server_hostname ~= nil then value_error("server_hostname is only meaningful with ssl client") end
  if not is_context(opts.ssl) then
    if opts.ssl == true then value_error("Server side SSL needs a valid SSLContext") end
    error(E.TypeError("ssl must be an ssl.SSLContext, got " .. tostring(opts.ssl)), 0)
  end
  return { ctx = opts.ssl, server = true,
           timeout = check_timeout(opts.ssl_handshake_timeout, "ssl_handshake_timeout"),
           shutdown = check_timeout(opts.ssl_shutdown_timeout, "ssl_shutdown_timeout") }
end

local DEFAULT_HANDSHAKE_TIMEOUT = 60.0

-- Starts TLS over transport tr (tls from _client_opts / _server_opts) and
-- calls done(nil) once the handshake is over, or done(exc) when it failed
-- or took longer than its timeout (the transport is then closed).
function M._start(loop, tr, tls, hold, done)
  local fut = C._wrap(tr, tls.ctx, tls.server, tls.hostname, hold, tls.shutdown)
  local timeout = tls.timeout or DEFAULT_HANDSHAKE_TIMEOUT
  local timer = loop:call_later(timeout, function()
    C._abort(tr, E.ConnectionAbortedError(string.format(
      "SSL handshake is taking longer than %s seconds: aborting the connection", tostring(timeout))))
  end)
  fut:add_done_callback(function(f)
    timer:cancel()
    if f:cancelled() then done(E.CancelledError()) else done(f:exception()) end
  end)
  return fut
end

-- The same in the running task: returns once the handshake is over, or
-- raises what ended it.  Cancelling the task aborts the connection.
async function M._handshake(loop, tr, tls, hold)
  local fut = C._wrap(tr, tls.ctx, tls.server, tls.hostname, hold, tls.shutdown)
  local timeout = tls.timeout or DEFAULT_HANDSHAKE_TIMEOUT
  local timer = loop:call_later(timeout, function()
    C._abort(tr, E.ConnectionAbortedError(string.format(
      "SSL handshake is taking longer than %s seconds: aborting the connection", tostring(timeout))))
  end)
  local ok, err = pcall(await, fut)
  timer:cancel()
  if not ok then
    tr:abort()
    error(err, 0)
  end
end

M._release = C._release

return M
