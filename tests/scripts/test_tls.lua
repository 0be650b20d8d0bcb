-- TLS: the ssl module and TLS streams, protocols, servers and STARTTLS,
-- against moonloop itself, openssl s_server / s_client, curl and Python's
-- ssl + asyncio.  The CA, server and client certificates are made at test
-- time by openssl req / openssl x509 in a temporary directory (no key is
-- committed).  Peers run in the background under `timeout`, on
-- 127.0.0.1, and report to a small report server of ours, so the loop
-- never blocks on them; every peer is stopped at the end of its case.
local T = require "asyncio.test"
local ssl = require "ssl"
local socket = require "socket"
local loop = asyncio.get_running_loop()

local function have(cmd)
  local _, st = T.sh("command -v " .. cmd .. " >/dev/null 2>&1")
  return st == 0
end

if not have("openssl") then
  print("skip: openssl not installed")
  print("0 passed, 0 failed")
  return
end

local function shquote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- The certificates.
local dir = T.tmpname("-pki")
local function sh(cmd)
  local out, st = T.sh("cd " .. dir .. " && (" .. cmd .. ") 2>&1")
  if st ~= 0 then error("setup failed: " .. cmd .. "\n" .. out) end
end
os.execute("mkdir -p " .. dir)
local function leaf(name, cn, ca, days, san)
  sh(string.format("openssl req -newkey rsa:2048 -nodes -keyout %s.key -out %s.csr -subj '/CN=%s'",
                   name, name, cn))
  sh(string.format("printf 'subjectAltName=%s\\n' > %s.ext", san, name))
  sh(string.format("openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial -out %s.pem -days %d -extfile %s.ext",
                   name, ca, ca, name, days, name))
end
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=moonloop test CA'")
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca2.key -out ca2.pem -days 2 -subj '/CN=another CA'")
leaf("server", "localhost", "ca", 2, "DNS:localhost,IP:127.0.0.1")
leaf("alt", "alt.test", "ca", 2, "DNS:alt.test")
leaf("expired", "localhost", "ca", -1, "DNS:localhost,IP:127.0.0.1")
leaf("unknown", "localhost", "ca2", 2, "DNS:localhost,IP:127.0.0.1")
leaf("client", "moonloop client", "ca", 2, "DNS:client.test")
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout self.key -out self.pem -days 2 -subj '/CN=localhost' -addext 'subjectAltName=DNS:localhost'")
local function P(f) return dir .. "/" .. f end

local function server_ctx(name)
  local ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  ctx:load_cert_chain(P((name or "server") .. ".pem"), P((name or "server") .. ".key"))
  return ctx
end

local function client_ctx()
  return ssl.create_default_context({ cafile = P("ca.pem") })
end

-- The report server: every connection's whole input is one report.
local reports = asyncio.Queue()
local report_srv = await asyncio.start_server(async function(r, w)
  reports:put_nowait(await r:read())
  w:close()
end, "127.0.0.1", 0)
local RPORT = report_srv.sockets[1]:getsockname()[2]

local async function next_report()
  return await asyncio.wait_for(reports:get(), 15)
end

-- Background peers, each stopped by stop_all() at the end of its case.
local peers = {}
local function spawn(cmd)
  local pidfile = T.tmpname(".pid")
  -- Its own process group (setsid), so that stopping it stops the whole
  -- pipeline.
  os.execute(string.format("(setsid sh -c %s) >/dev/null 2>&1 &",
    shquote("echo $$ > " .. pidfile .. "; exec timeout -k 2 20 sh -c " .. shquote(cmd))))
  peers[#peers + 1] = pidfile
end
local function stop_all()
  for _, pidfile in ipairs(peers) do
    local f = io.open(pidfile)
    local pid = f and tonumber(f:read("l"))
    if f then f:close() end
    if pid then os.execute("kill -TERM -" .. pid .. " 2>/dev/null") end
  end
  peers = {}
end
local only = os.getenv("TLS_CASE")  -- runs the cases whose name has it
local function case(name, fn)
  if only and not name:find(only, 1, true) then return end
  T.case(name, async function()
    local ok, err = pcall(function() return await fn() end)
    stop_all()
    if not ok then error(err, 0) end
  end)
end

-- A port nobody listens on now, for peers that cannot report theirs.
local function free_port()
  local s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  s:bind({ "127.0.0.1", 0 })
  local port = s:getsockname()[2]
  s:close()
  return port
end

-- Starts `openssl s_server` with args and waits until it listens.
local async function s_server(args)
  local port = free_port()
  spawn(string.format("openssl s_server -accept 127.0.0.1:%d %s 2>&1 | "
    .. "(grep -m1 -q ACCEPT && printf ready | nc -N 127.0.0.1 %d; cat >/dev/null)", port, args, RPORT))
  T.eq(await next_report(), "ready", "s_server's start")
  return port
end

local function pyfile(src)
  local path = T.tmpname(".py")
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

local function expect_error(cls, fn, what)
  local ok, err = pcall(fn)
  T.ok(not ok, what .. ": an error")
  T.ok(asyncio.isinstance(err, cls), what .. ": " .. tostring(cls) .. " expected, got " .. tostring(err))
  return err
end

-- Our echo server over TLS (stream API): echoes lines until EOF.
local async function echo_server(ctx, opts)
  opts = opts or {}
  opts.ssl = ctx
  local srv = await asyncio.start_server(async function(r, w)
    pcall(function()  -- clients that reset are part of the tests
      for line in r:lines() do
        w:write(line)
        await w:drain()
      end
    end)
    w:close()
  end, "127.0.0.1", 0, opts)
  return srv, srv.sockets[1]:getsockname()[2]
end

-------------------------------------------------------------------------------
-- The ssl module.

case("contexts: Python's defaults and field checks", async function()
  local c = ssl.create_default_context()
  T.eq(c.check_hostname, true, "client check_hostname")
  T.eq(c.verify_mode, ssl.CERT_REQUIRED, "client verify_mode")
  T.eq(c.minimum_version, ssl.TLSVersion.TLSv1_2, "minimum_version")
  T.eq(c.protocol, ssl.PROTOCOL_TLS_CLIENT, "protocol")
  local s = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
  T.eq(s.check_hostname, false, "server check_hostname")
  T.eq(s.verify_mode, ssl.CERT_NONE, "server verify_mode")
  local e = expect_error(asyncio.ValueError, function() c.verify_mode = ssl.CERT_NONE end, "CERT_NONE with check_hostname")
  T.eq(tostring(e), "ValueError: Cannot set verify_mode to CERT_NONE when check_hostname is enabled.", "message")
  c.check_hostname = false
  c.verify_mode = ssl.CERT_NONE
  T.eq(c.verify_mode, ssl.CERT_NONE, "verify_mode set")
  c.maximum_version = ssl.TLSVersion.TLSv1_2
  T.eq(c.maximum_version, ssl.TLSVersion.TLSv1_2, "maximum_version set")
  expect_error(asyncio.ValueError, function() c.minimum_version = 12345 end, "bad version")
  expect_error(asyncio.OSError, function() s:load_cert_chain(P("nonexistent.pem")) end, "missing cert file")
  local err = expect_error(ssl.SSLError, function() s:load_cert_chain(P("server.pem"), P("alt.key")) end,
                           "key of another certificate")
  T.ok(tostring(err):match("^SSLError: %[X509: KEY_VALUES_MISMATCH%]"), "mismatch message: " .. tostring(err))
  expect_error(ssl.SSLError, function() s:set_ciphers("NO-SUCH-CIPHER") end, "bad cipher list")
  s:set_ciphers("ECDHE+AESGCM")
  expect_error(asyncio.TypeError, function() c:load_verify_locations() end, "no location")
  local f = assert(io.open(P("ca.pem")))
  c:load_verify_locations(nil, nil, f:read("a"))
  f:close()
  T.ok(asyncio.isinstance(ssl.SSLCertVerificationError(1, "x"), asyncio.ValueError), "cert error is a ValueError")
  T.ok(asyncio.isinstance(ssl.SSLError(1, "x"), asyncio.OSError), "SSLError is an OSError")
end)

-------------------------------------------------------------------------------
-- moonloop client, openssl s_server.

case("client <-> openssl s_server: TLS 1.3, peercert, cipher, HTTPS GET", async function()
  local port = await s_server(string.format("-cert %s -key %s -www", P("server.pem"), P("server.key")))
  local r, w = await asyncio.open_connection("localhost", port, { ssl = client_ctx() })
  local obj = w:get_extra_info("ssl_object")
  T.eq(obj:version(), "TLSv1.3", "version")
  T.eq(w:get_extra_info("cipher")[2], "TLSv1.3", "cipher's protocol")
  local cert = w:get_extra_info("peercert")
  T.eq(cert.subject[1][1][2], "localhost", "peer CN")
  T.eq(cert.subjectAltName[1][2], "localhost", "SAN")
  T.eq(cert.issuer[1][1][2], "moonloop test CA", "issuer")
  T.ok(ssl._is_context(w:get_extra_info("sslcontext")), "sslcontext")
  T.eq(w:can_write_eof(), false, "can_write_eof")
  local e = expect_error(asyncio.NotImplementedError, function() w:write_eof() end, "write_eof")
  T.eq(tostring(e), "NotImplementedError: SSL doesn't support half-closes", "write_eof message")
  w:write("GET / HTTP/1.0\r\n\r\n")
  T.eq(await r:readline(), "HTTP/1.0 200 ok\r\n", "status line")
  local body = await r:read()
  T.ok(body:find("TLSv1.3", 1, true), "the page names the protocol")
  w:close()
  await w:wait_closed()
end)

case("client <-> openssl s_server: TLS 1.2, by either side's limit", async function()
  local port = await s_server(string.format("-cert %s -key %s -www -tls1_2", P("server.pem"), P("server.key")))
  local r, w = await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx() })
  T.eq(w:get_extra_info("ssl_object"):version(), "TLSv1.2", "version (server's limit)")
  w:close()
  stop_all()
  port = await s_server(string.format("-cert %s -key %s -www", P("server.pem"), P("server.key")))
  local ctx = client_ctx()
  ctx.maximum_version = ssl.TLSVersion.TLSv1_2
  r, w = await asyncio.open_connection("localhost", port, { ssl = ctx })
  T.eq(w:get_extra_info("ssl_object"):version(), "TLSv1.2", "version (client's limit)")
  w:write("GET / HTTP/1.0\r\n\r\n")
  T.eq(await r:readline(), "HTTP/1.0 200 ok\r\n", "status line")
  w:close()
end)

local function verify_case(name, cert, host, want)
  case("verification: " .. name, async function()
    local port = await s_server(string.format("-cert %s -key %s -www", P(cert .. ".pem"), P(cert .. ".key")))
    local err = expect_error(ssl.SSLCertVerificationError, function()
      await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx(), server_hostname = host })
    end, name)
    T.eq(err.verify_message, want, "verify_message")
    T.eq(tostring(err), "SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
      .. want, "message")
    T.eq(err.reason, "CERTIFICATE_VERIFY_FAILED", "reason")
    T.eq(type(err.verify_code), "number", "verify_code")
  end)
end
verify_case("self-signed", "self", "localhost", "self-signed certificate")
verify_case("unknown CA", "unknown", "localhost", "unable to get local issuer certificate")
verify_case("expired", "expired", "localhost", "certificate has expired")
verify_case("hostname mismatch", "server", "wrong.test",
            "Hostname mismatch, certificate is not valid for 'wrong.test'.")

case("verification off: CERT_NONE connects to a self-signed server", async function()
  local port = await s_server(string.format("-cert %s -key %s -www", P("self.pem"), P("self.key")))
  local ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
  ctx.check_hostname = false
  ctx.verify_mode = ssl.CERT_NONE
  local r, w = await asyncio.open_connection("127.0.0.1", port, { ssl = ctx })
  T.eq(next(w:get_extra_info("peercert")), nil, "an unverified peer's certificate is empty, as in Python")
  T.ok(#w:get_extra_info("ssl_object"):getpeercert(true) > 100, "its DER form")
  w:close()
end)

case("ssl options: misuse is refused as asyncio does", async function()
  local e = expect_error(asyncio.ValueError, function()
    await asyncio.open_connection("127.0.0.1", RPORT, { server_hostname = "x" })
  end, "server_hostname without ssl")
  T.eq(tostring(e), "ValueError: server_hostname is only meaningful with ssl", "message")
  expect_error(asyncio.ValueError, function()
    await asyncio.start_server(function() end, "127.0.0.1", 0, { ssl = true })
  end, "server ssl=true")
  expect_error(asyncio.ValueError, function()
    await asyncio.open_connection("127.0.0.1", RPORT, { ssl = true, ssl_handshake_timeout = -1 })
  end, "negative timeout")
  expect_error(asyncio.TypeError, function()
    await asyncio.open_connection("127.0.0.1", RPORT, { ssl = "yes" })
  end, "ssl of the wrong type")
end)

-------------------------------------------------------------------------------
-- moonloop server and client.

case("moonloop <-> moonloop: echo, ALPN, close_notify both ways", async function()
  local sctx = server_ctx()
  sctx:set_alpn_protocols({ "h2", "echo/1" })
  local got_eof = asyncio.Future()
  local srv <close> = await asyncio.start_server(async function(r, w)
    T.eq(w:get_extra_info("ssl_object"):selected_alpn_protocol(), "echo/1", "server's ALPN")
    T.eq(w:get_extra_info("ssl_object").server_side, true, "server_side")
    for line in r:lines() do w:write(line) end
    got_eof:set_result(true)  -- the client's close_notify is our EOF
    w:close()
  end, "127.0.0.1", 0, { ssl = sctx })
  local port = srv.sockets[1]:getsockname()[2]
  local cctx = client_ctx()
  cctx:set_alpn_protocols({ "echo/1", "http/1.1" })
  local r, w = await asyncio.open_connection("127.0.0.1", port, { ssl = cctx, server_hostname = "localhost" })
  T.eq(w:get_extra_info("ssl_object"):selected_alpn_protocol(), "echo/1", "client's ALPN")
  for i = 1, 50 do
    w:write("line " .. i .. "\n")
    T.eq(await r:readline(), "line " .. i .. "\n", "echo " .. i)
  end
  w:close()
  T.eq(await got_eof, true, "the server saw our close_notify as EOF")
  T.eq(await r:read(), "", "we saw the server's close_notify as EOF")
  await w:wait_closed()
end)

case("SNI: the servername callback picks the certificate", async function()
  local main, alt = server_ctx("server"), server_ctx("alt")
  local names = {}
  main:set_servername_callback(function(obj, name, ctx)
    names[#names + 1] = name
    T.ok(ctx == main, "the callback gets the context")
    if name == "alt.test" then obj.context = alt end
    if name == "refused.test" then return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME end
  end)
  local srv <close>, port = await echo_server(main)
  local r, w = await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx(), server_hostname = "alt.test" })
  T.eq(w:get_extra_info("peercert").subject[1][1][2], "alt.test", "the alt certificate")
  w:close()
  r, w = await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx(), server_hostname = "localhost" })
  T.eq(w:get_extra_info("peercert").subject[1][1][2], "localhost", "the main certificate")
  w:close()
  local err = expect_error(ssl.SSLError, function()
    await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx(), server_hostname = "refused.test" })
  end, "a refused name")
  T.ok(tostring(err):find("UNRECOGNIZED_NAME", 1, true), "the alert: " .. tostring(err))
  T.eq(names, { "alt.test", "localhost", "refused.test" }, "names seen")
end)

case("client certificates: required, missing, given", async function()
  local sctx = server_ctx()
  sctx.verify_mode = ssl.CERT_REQUIRED
  sctx:load_verify_locations(P("ca.pem"))
  local seen = asyncio.Future()
  local srv <close> = await asyncio.start_server(async function(r, w)
    seen:set_result(w:get_extra_info("peercert").subject[1][1][2])
    w:write(await r:readline())
    w:close()
  end, "127.0.0.1", 0, { ssl = sctx })
  local port = srv.sockets[1]:getsockname()[2]
  -- Without a certificate: in TLS 1.3 the server's refusal comes after
  -- the client's handshake is over, on the first read.
  local ok, err = pcall(function()
    local r, w = await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx(), server_hostname = "localhost" })
    w:write("hello\n")
    return await r:readline()
  end)
  T.ok(not ok and asyncio.isinstance(err, ssl.SSLError), "refused without a certificate: " .. tostring(err))
  T.ok(tostring(err):find("CERTIFICATE_REQUIRED", 1, true), "the alert names it: " .. tostring(err))
  local cctx = client_ctx()
  cctx:load_cert_chain(P("client.pem"), P("client.key"))
  local r, w = await asyncio.open_connection("127.0.0.1", port, { ssl = cctx, server_hostname = "localhost" })
  w:write("hello\n")
  T.eq(await r:readline(), "hello\n", "served with a certificate")
  T.eq(await seen, "moonloop client", "the server saw our certificate")
  w:close()
end)

case("resumption: a second connection resumes the session", async function()
  local sctx = server_ctx()
  local srv <close>, port = await echo_server(sctx)
  local cctx = client_ctx()
  for i = 1, 3 do
    local r, w = await asyncio.open_connection("localhost", port, { ssl = cctx })
    w:write("x\n")
    T.eq(await r:readline(), "x\n", "echo")  -- TLS 1.3 tickets come after the handshake
    T.eq(w:get_extra_info("ssl_object").session_reused, i > 1, "session_reused on connection " .. i)
    w:close()
    await w:wait_closed()
  end
  -- TLS 1.2 session ids / tickets too.
  cctx = client_ctx()
  cctx.maximum_version = ssl.TLSVersion.TLSv1_2
  for i = 1, 2 do
    local r, w = await asyncio.open_connection("localhost", port, { ssl = cctx })
    T.eq(w:get_extra_info("ssl_object").session_reused, i > 1, "TLS 1.2 session_reused on connection " .. i)
    w:close()
    await w:wait_closed()
  end
end)

case("1 MiB both ways with a slow reader: buffers stay bounded", async function()
  local MiB = 1024 * 1024
  local chunk = string.rep("0123456789abcdef", 1024)  -- 16 KiB
  local max_rbuf, max_wbuf = 0, 0
  local srv <close> = await asyncio.start_server(async function(r, w)
    -- Echoes in 16 KiB pieces, slowly at first.
    local n = 0
    while n < MiB do
      if n < 256 * 1024 then await asyncio.sleep(0.002) end
      local data = await r:read(16384)
      if data == "" then break end
      n = n + #data
      local rb = tonumber(tostring(r):match("(%d+) bytes"))
      if rb > max_rbuf then max_rbuf = rb end
      w:write(data)
      await w:drain()
      local wb = w.transport:get_write_buffer_size()
      if wb > max_wbuf then max_wbuf = wb end
    end
    w:close()
  end, "127.0.0.1", 0, { ssl = server_ctx() })
  local port = srv.sockets[1]:getsockname()[2]
  local r, w = await asyncio.open_connection("localhost", port, { ssl = client_ctx() })
  local reader = asyncio.create_task((async function()
    local got = {}
    local n = 0
    while n < MiB do
      local d = await r:read(65536)
      if d == "" then break end
      got[#got + 1] = d
      n = n + #d
    end
    return table.concat(got)
  end)())
  for _ = 1, MiB // #chunk do
    w:write(chunk)
    await w:drain()
    T.ok(w.transport:get_write_buffer_size() <= 64 * 1024 + 2 * #chunk, "writer buffer bounded")
  end
  local back = await reader
  T.eq(#back, MiB, "bytes echoed")
  T.ok(back == string.rep(chunk, MiB // #chunk), "the same bytes")
  T.ok(max_rbuf <= 2 * 65536 + 32 * 1024, "server read buffer bounded: " .. max_rbuf)
  T.ok(max_wbuf <= 64 * 1024, "server write buffer bounded after drain: " .. max_wbuf)
  w:close()
end)

-------------------------------------------------------------------------------
-- Protocols: create_server / create_connection, start_tls.

local Echo = {}
Echo.__index = Echo
function Echo:connection_made(tr) self.tr = tr; self.made = true end
function Echo:data_received(d) self.tr:write(d) end
function Echo:connection_lost() end

case("protocols: create_server and create_connection over TLS", async function()
  local made_before = {}
  local srv <close> = await loop:create_server(function()
    local p = setmetatable({}, Echo)
    made_before[#made_before + 1] = p
    return p
  end, "127.0.0.1", 0, { ssl = server_ctx() })
  local port = srv.sockets[1]:getsockname()[2]
  local got, lost = {}, asyncio.Future()
  local whole = asyncio.Future()
  local Client = {
    connection_made = function(self, tr) self.tr = tr; self.version = tr:get_extra_info("ssl_object"):version() end,
    data_received = function(self, d)
      got[#got + 1] = d
      if #table.concat(got) >= 12 and not whole:done() then whole:set_result(table.concat(got)) end
    end,
    connection_lost = function(self, exc) lost:set_result(exc or false) end,
  }
  local tr, proto = await loop:create_connection(function() return Client end, "localhost", port,
                                                 { ssl = client_ctx() })
  T.eq(proto.version, "TLSv1.3", "connection_made after the handshake")
  tr:write("hello ")
  tr:write("world!")
  T.eq(await whole, "hello world!", "echoed")
  tr:close()
  T.eq(await lost, false, "connection_lost(nil) after close")
  T.eq(made_before[1].made, true, "the server's protocol was connected")
end)

case("a BufferedProtocol over TLS gets the decrypted bytes in its buffers", async function()
  local srv <close> = await loop:create_server(function() return setmetatable({}, Echo) end,
                                               "127.0.0.1", 0, { ssl = server_ctx() })
  local port = srv.sockets[1]:getsockname()[2]
  local socket = require "socket"
  local want = string.rep("0123456789", 3000)
  local whole = asyncio.Future()
  local Sink = asyncio.BufferedProtocol:extend()
  function Sink:connection_made(tr) self.tr = tr; self.buf = socket.buffer(1000); self.parts = {} end
  function Sink:get_buffer(hint) return self.buf end
  function Sink:buffer_updated(n)
    self.parts[#self.parts + 1] = self.buf:tostring(1, n)
    local got = table.concat(self.parts)
    if #got >= #want and not whole:done() then whole:set_result(got) end
  end
  local tr = await loop:create_connection(Sink, "localhost", port, { ssl = client_ctx() })
  tr:write(want)
  T.eq(await whole, want, "echoed through 1000-byte buffers")
  tr:close()
end)

case("STARTTLS: streams upgrade in place, both sides", async function()
  local sctx = server_ctx()
  local srv <close> = await asyncio.start_server(async function(r, w)
    T.eq(await r:readline(), "STARTTLS\n", "command")
    w:write("GO\n")
    await w:start_tls(sctx)
    T.ok(w:get_extra_info("ssl_object") ~= nil, "the server's writer is TLS now")
    w:write("secret: " .. await r:readline())
    w:close()
  end, "127.0.0.1", 0)
  local port = srv.sockets[1]:getsockname()[2]
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  T.eq(w:get_extra_info("ssl_object"), nil, "plain at first")
  w:write("STARTTLS\n")
  T.eq(await r:readline(), "GO\n", "reply")
  await w:start_tls(client_ctx(), { server_hostname = "localhost" })
  T.eq(w:get_extra_info("ssl_object"):version(), "TLSv1.3", "TLS now")
  w:write("42\n")
  T.eq(await r:readline(), "secret: 42\n", "over TLS")
  w:close()
end)

case("STARTTLS: loop:start_tls on a protocol transport", async function()
  local srv <close>, port = await echo_server(server_ctx())
  local P0 = { data_received = function() error("plain protocol got TLS bytes") end }
  local tr = await loop:create_connection(function() return P0 end, "127.0.0.1", port)
  local got = asyncio.Future()
  local P1 = { data_received = function(self, d) got:set_result(d) end }
  local tr2 = await loop:start_tls(tr, P1, client_ctx(), { server_hostname = "localhost" })
  T.ok(tr2 == tr, "the same transport, upgraded")
  T.ok(tr2:get_protocol() == P1, "the new protocol")
  tr2:write("ping\n")
  T.eq(await got, "ping\n", "echoed over TLS")
  tr2:close()
end)

-------------------------------------------------------------------------------
-- Bad peers.

-- A raw TCP server whose handler gets the plain socket streams.
local async function raw_server(handler)
  local srv = await asyncio.start_server(handler, "127.0.0.1", 0)
  return srv, srv.sockets[1]:getsockname()[2]
end

case("a stalled handshake hits its (short) timeout", async function()
  local srv <close>, port = await raw_server(async function(r, w)
    await r:read()  -- says nothing, until the client gives up
    w:close()
  end)
  local e = expect_error(asyncio.ConnectionAbortedError, function()
    await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx(), server_hostname = "localhost",
                                                      ssl_handshake_timeout = 0.2 })
  end, "stalled server")
  T.eq(tostring(e), "ConnectionAbortedError: SSL handshake is taking longer than 0.2 seconds: aborting the connection",
       "message")
  -- And a server whose client never speaks drops it after its timeout.
  local closed = asyncio.Future()
  local tsrv <close> = await asyncio.start_server(function() error("no handshake happened") end,
    "127.0.0.1", 0, { ssl = server_ctx(), ssl_handshake_timeout = 0.2 })
  local r, w = await asyncio.open_connection("127.0.0.1", tsrv.sockets[1]:getsockname()[2])
  T.eq(await r:read(), "", "the server closed the silent client")
  w:close()
end)

case("a peer that resets mid-handshake or mid-record", async function()
  -- The server reads the ClientHello and resets.
  local srv <close>, port = await raw_server(async function(r, w)
    await r:read(10)
    local s = w:get_extra_info("socket")
    s:setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, string.pack("ii", 1, 0))
    w.transport:abort()
  end)
  local e = expect_error(asyncio.ConnectionError, function()
    await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx(), server_hostname = "localhost" })
  end, "reset mid-handshake")
  -- A client that sends half a record and closes: the server carries on.
  local tsrv <close>, tport = await echo_server(server_ctx())
  local r, w = await asyncio.open_connection("127.0.0.1", tport)
  w:write("\22\3\1\2\0\1\0\1\252")  -- a handshake record header and 4 of its 512 bytes
  w:close()
  local r2, w2 = await asyncio.open_connection("localhost", tport, { ssl = client_ctx() })
  w2:write("still serving\n")
  T.eq(await r2:readline(), "still serving\n", "the server survived")
  w2:close()
end)

-- A proxy to a TLS server that passes the server's first `cut` bytes on,
-- then ends the client's side: reset (RST) or a plain FIN, or (stall)
-- passes nothing more until the client goes.  With cut past the
-- handshake, that is in the middle of a 16 KiB application record.
local async function cutting_proxy(tport, cut, reset, stall)
  return await raw_server(async function(r, w)
    local ur, uw = await asyncio.open_connection("127.0.0.1", tport)
    local up = asyncio.create_task((async function()
      while true do
        local d = await r:read(65536)
        if d == "" then break end
        uw:write(d)
      end
    end)())
    local n = 0
    while n < cut do
      local d = await ur:read(math.min(65536, cut - n))
      if d == "" then break end
      n = n + #d
      w:write(d)
      await w:drain()
    end
    if stall then
      await up  -- until the client goes
      w:close()
    elseif reset then
      w:get_extra_info("socket"):setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, string.pack("ii", 1, 0))
      w.transport:abort()
    else
      w:close()
    end
    up:cancel()
    uw:close()
  end)
end

case("a peer that resets or closes mid-record", async function()
  local big = string.rep("z", 200 * 1024)
  local tsrv <close> = await asyncio.start_server(async function(r, w)
    pcall(function()
      await r:readline()
      w:write(big)
      await w:drain()
      await r:read()
    end)
    w:close()
  end, "127.0.0.1", 0, { ssl = server_ctx() })
  local tport = tsrv.sockets[1]:getsockname()[2]
  -- A reset; a FIN, which is EOF by default, as asyncio reports it; a FIN
  -- with OP_IGNORE_UNEXPECTED_EOF cleared, which is SSLEOFError.
  for _, how in ipairs({ "reset", "eof", "strict" }) do
    local reset = how == "reset"
    local ctx = client_ctx()
    if how == "strict" then ctx.options = ctx.options & ~ssl.OP_IGNORE_UNEXPECTED_EOF end
    local psrv <close>, pport = await cutting_proxy(tport, 40000, reset)
    local r, w = await asyncio.open_connection("127.0.0.1", pport, { ssl = ctx, server_hostname = "localhost" })
    w:write("go\n")
    local got, ok, err = 0, true, nil
    while true do
      local d
      ok, d = pcall(function() return await r:read(65536) end)
      if not ok then err = d; break end
      if d == "" then break end
      got = got + #d
    end
    T.ok(got > 0 and got < #big, "part of the data came through: " .. got)
    if reset then
      T.ok(asyncio.isinstance(err, asyncio.ConnectionResetError), "a reset is ConnectionResetError: " .. tostring(err))
    elseif how == "eof" then
      T.eq(err, nil, "an EOF without close_notify is EOF")
    else
      T.ok(asyncio.isinstance(err, ssl.SSLEOFError), "strict: SSLEOFError: " .. tostring(err))
      T.eq(tostring(err), "SSLEOFError: [SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol",
           "message")
    end
    w:close()
  end
end)

case("a peer that sends garbage", async function()
  local srv <close>, port = await raw_server(async function(r, w)
    w:write("HTTP/1.1 400 Bad Request\r\n\r\nthis is not TLS at all\r\n")
    await r:read()
    w:close()
  end)
  local e = expect_error(ssl.SSLError, function()
    await asyncio.open_connection("127.0.0.1", port, { ssl = client_ctx(), server_hostname = "localhost" })
  end, "garbage from a server")
  T.ok(tostring(e):match("^SSLError: %[SSL: [A-Z_]+%] "), "an OpenSSL reason: " .. tostring(e))
  local tsrv <close>, tport = await echo_server(server_ctx())
  local r, w = await asyncio.open_connection("127.0.0.1", tport)
  w:write(string.rep("GET / HTTP/1.1\r\n", 100))
  local rest = await r:read()  -- at most the server's alert, then EOF
  T.ok(not rest:find("GET", 1, true), "nothing echoed: " .. #rest .. " bytes")
  w:close()
end)

case("close waits for the peer's close_notify, as long as ssl_shutdown_timeout", async function()
  local big = string.rep("z", 100 * 1024)
  local tsrv <close> = await asyncio.start_server(async function(r, w)
    pcall(function()
      await r:readline()
      w:write(big)
      await w:drain()
      await r:read()
    end)
    w:close()
  end, "127.0.0.1", 0, { ssl = server_ctx() })
  local tport = tsrv.sockets[1]:getsockname()[2]
  -- The proxy stops passing the server's bytes (its close_notify too).
  local psrv <close>, pport = await cutting_proxy(tport, 30000, false, true)
  local r, w = await asyncio.open_connection("127.0.0.1", pport, { ssl = client_ctx(), server_hostname = "localhost",
                                                                   ssl_shutdown_timeout = 0.3 })
  w:write("go\n")
  T.ok(#(await r:read(65536)) > 0, "some data came")
  w:close()
  T.eq(w.transport:is_closing(), true, "closing")
  -- With the default (30 s) this wait would fail.
  await asyncio.wait_for(w:wait_closed(), 10)
  -- A peer that answers: both sides close cleanly, at once.
  local r2, w2 = await asyncio.open_connection("localhost", tport, { ssl = client_ctx() })
  w2:write("go\n")
  await r2:readexactly(#big)
  w2:close()
  await asyncio.wait_for(w2:wait_closed(), 10)
end)

-------------------------------------------------------------------------------
-- Other peers: curl, openssl s_client, Python.

case("moonloop server <-> curl --cacert", async function()
  if not have("curl") then print("skip: curl not installed"); return end
  local srv <close> = await asyncio.start_server(async function(r, w)
    while true do
      local l = await r:readline()
      if l == "\r\n" or l == "" then break end
    end
    w:write("HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello curl\n")
    await w:drain()
    w:close()
  end, "127.0.0.1", 0, { ssl = server_ctx() })
  local port = srv.sockets[1]:getsockname()[2]
  spawn(string.format("curl -sS --cacert %s https://localhost:%d/ 2>&1 | nc -N 127.0.0.1 %d",
                      P("ca.pem"), port, RPORT))
  T.eq(await next_report(), "hello curl\n", "what curl received")
  spawn(string.format("curl -sS --http1.1 --tlsv1.2 --tls-max 1.2 --cacert %s https://127.0.0.1:%d/ 2>&1 | nc -N 127.0.0.1 %d",
                      P("ca.pem"), port, RPORT))
  T.eq(await next_report(), "hello curl\n", "what curl received over TLS 1.2")
end)

case("moonloop server <-> openssl s_client", async function()
  -- One line back, then our close_notify ends s_client.
  local srv <close> = await asyncio.start_server(async function(r, w)
    w:write(await r:readline())
    w:close()
  end, "127.0.0.1", 0, { ssl = server_ctx() })
  local port = srv.sockets[1]:getsockname()[2]
  spawn(string.format("printf 'hello s_client\\n' | openssl s_client -connect 127.0.0.1:%d -servername localhost "
    .. "-CAfile %s -verify_return_error -quiet 2>/dev/null | nc -N 127.0.0.1 %d", port, P("ca.pem"), RPORT))
  T.eq(await next_report(), "hello s_client\n", "what s_client received")
end)

local PY_CLIENT = [[
import asyncio, ssl, sys
async def main(port, rport, ca):
    ctx = ssl.create_default_context(cafile=ca)
    r, w = await asyncio.open_connection("localhost", port, ssl=ctx)
    out = []
    for i in range(100):
        w.write(b"line %d\n" % i)
        await w.drain()
        out.append(await r.readline())
    w.close()
    await w.wait_closed()
    _, rw = await asyncio.open_connection("127.0.0.1", rport)
    ok = out == [b"line %d\n" % i for i in range(100)]
    rw.write(b"ok" if ok else b"bad: %r" % out[:3])
    await rw.drain()
    rw.close()
asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]), 15))
]]

case("moonloop server <-> Python asyncio ssl client", async function()
  if not have("python3") then print("skip: python3 not installed"); return end
  local srv <close>, port = await echo_server(server_ctx())
  spawn(string.format("python3 %s %d %d %s", pyfile(PY_CLIENT), port, RPORT, P("ca.pem")))
  T.eq(await next_report(), "ok", "python client's verdict")
end)

local PY_SERVER = [[
import asyncio, ssl, sys
async def main(rport, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    done = asyncio.Event()
    async def handle(r, w):
        while line := await r.readline():
            w.write(line.upper())
            await w.drain()
        w.close()
        done.set()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    _, rw = await asyncio.open_connection("127.0.0.1", rport)
    rw.write(b"%d" % srv.sockets[0].getsockname()[1])
    await rw.drain()
    rw.close()
    await done.wait()
    srv.close()
asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]), 15))
]]

case("moonloop client <-> Python asyncio ssl server", async function()
  if not have("python3") then print("skip: python3 not installed"); return end
  spawn(string.format("python3 %s %d %s %s", pyfile(PY_SERVER), RPORT, P("server.pem"), P("server.key")))
  local port = tonumber(await next_report())
  local r, w = await asyncio.open_connection("localhost", port, { ssl = client_ctx() })
  for i = 1, 20 do
    w:write("line " .. i .. "\n")
    T.eq(await r:readline(), "LINE " .. i .. "\n", "line " .. i)
  end
  w:close()
  await w:wait_closed()
end)

-- OpenSSL is loaded by the first require (stdlib/ssl/openssl.c), not
-- linked: with libssl.so.3 unreadable, a script that needs no TLS runs,
-- and require "ssl" fails saying what is missing.  The library is hidden
-- in a private mount namespace (unshare -m: root only; skipped without).
T.case("without libssl.so.3 require 'ssl' says so and plain scripts run", function()
  local maps = io.open("/proc/self/maps"):read("a")
  local lib = maps:match("(/%S*/libssl%.so%.3)\n")
  T.ok(lib ~= nil, "this process has libssl.so.3 mapped")
  local _, st = T.sh("unshare -m --propagation private true 2>/dev/null")
  if st ~= 0 then
    print("skip: no unshare -m here (needs root)")
    return
  end
  local path = T.tmpname(".lua")
  local f = io.open(path, "w")
  f:write('local socket = require "socket"\nprint("plain", socket.AF_INET ~= nil)\n',
          'local ok, e = pcall(require, "ssl")\nprint(ok, e)\n')
  f:close()
  local bin = os.getenv("MOONLOOP_BIN") or "build/moonloop"
  local out, st2 = T.sh("unshare -m --propagation private sh -c " ..
                        shquote("mount --bind /dev/null " .. lib .. " && exec " .. bin .. " " .. path) ..
                        " 2>&1")
  T.eq(st2, 0, out)
  T.ok(out:find("plain\ttrue", 1, true), out)
  T.ok(out:find("false\tssl: cannot load OpenSSL %(install libssl3%): [^\n]*libssl%.so%.3"), out)
end)

T.run({ timeout = 30 })
report_srv:close()
