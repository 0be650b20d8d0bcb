-- The HTTP client (http.get/request, Session, Response) against real
-- peers started here on 127.0.0.1: nginx (nginx-light, its config, pid,
-- logs and temp paths in a temporary directory; HTTP/1.1, gzip, chunked,
-- redirects, a 20 MiB file, HTTPS and HTTP/2 with a CA made by openssl at
-- test time), Python's http.server (bodies, forms, JSON, headers,
-- cookies) and moonloop servers of our own for the peers nginx cannot
-- play (one that stalls).  Every group ends with the process's fds back
-- where they were.
local T = require "asyncio.test"
local http = require "http"
local client = require "http.client"
local json = require "json"
local ssl = require "ssl"
local loop = asyncio.get_running_loop()

local function have(cmd)
  local _, st = T.sh("command -v " .. cmd .. " >/dev/null 2>&1")
  return st == 0
end
local NGINX = (have("nginx") and "nginx") or (io.open("/usr/sbin/nginx") and "/usr/sbin/nginx")
local PYTHON = io.open("/usr/bin/python3") and "/usr/bin/python3" or (have("python3") and "python3")
if not NGINX or not have("openssl") or not PYTHON then
  print("skip: needs nginx, openssl and python3")
  print("0 passed, 0 failed")
  return
end

local dir = T.tmpname("-http")
local function sh(cmd)
  local out, st = T.sh("cd " .. dir .. " && (" .. cmd .. ") 2>&1")
  if st ~= 0 then error("setup failed: " .. cmd .. "\n" .. out) end
  return out
end
os.execute("mkdir -p " .. dir .. "/www/gz " .. dir .. "/tmp")
local function P(f) return dir .. "/" .. f end

-- Certificates: a CA, a server certificate for 127.0.0.1 and localhost,
-- and one from another CA.
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=moonloop http test CA' 2>/dev/null")
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca2.key -out ca2.pem -days 2 -subj '/CN=another CA' 2>/dev/null")
for _, leaf in ipairs({ { "server", "ca" }, { "unknown", "ca2" }, { "client", "ca" } }) do
  local name, ca = leaf[1], leaf[2]
  sh(string.format("openssl req -newkey rsa:2048 -nodes -keyout %s.key -out %s.csr -subj '/CN=localhost' 2>/dev/null", name, name))
  sh(string.format("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > %s.ext", name))
  sh(string.format("openssl x509 -req -in %s.csr -CA %s.pem -CAkey %s.key -CAcreateserial -out %s.pem -days 2 -extfile %s.ext 2>/dev/null",
                   name, ca, ca, name, name))
end

-- The site.
local function write(path, data)
  local f = assert(io.open(P(path), "wb")); f:write(data); f:close()
end
write("www/hello.txt", "hello from nginx\n")
local TEXT = {}
for i = 1, 2000 do TEXT[i] = "line " .. i .. " of a text that compresses well\n" end
TEXT = table.concat(TEXT)
write("www/gz/text.txt", TEXT)
local BIG = 20 * 1024 * 1024
sh("head -c " .. BIG .. " /dev/zero | tr '\\0' 'x' > www/big.bin")

-- A free port: bound by the kernel, then given up for the peer.
local async function free_port()
  local srv = await asyncio.start_server(function() end, "127.0.0.1", 0)
  local port = srv.sockets[1]:getsockname()[2]
  srv:close()
  await srv:wait_closed()
  return port
end

-- Waits until something accepts on port (bounded: 200 tries).
local async function wait_port(port)
  for _ = 1, 200 do
    local ok, _, w = pcall(function() return await asyncio.open_connection("127.0.0.1", port) end)
    if ok then w:close(); return end
    await asyncio.sleep(0.02)
  end
  error("nothing listens on port " .. port)
end

local PORT, TPORT, TPORT_UNKNOWN, TPORT_MTLS = await free_port(), await free_port(), await free_port(),
  await free_port()
write("nginx.conf", ([[
daemon off;
master_process off;
worker_processes 1;
pid DIR/nginx.pid;
error_log DIR/error.log warn;
events { worker_connections 512; }
http {
  access_log DIR/access.log;
  client_body_temp_path DIR/tmp/body;
  proxy_temp_path DIR/tmp/proxy;
  fastcgi_temp_path DIR/tmp/fastcgi;
  uwsgi_temp_path DIR/tmp/uwsgi;
  scgi_temp_path DIR/tmp/scgi;
  default_type text/plain;
  keepalive_requests 10000;
  server {
    listen 127.0.0.1:PORT;
    listen 127.0.0.1:TPORT ssl http2;
    ssl_certificate DIR/server.pem;
    ssl_certificate_key DIR/server.key;
    root DIR/www;
    add_header X-Connection $connection always;
    location /gz/ { gzip on; gzip_types text/plain; gzip_min_length 0; }
    location = /r301 { return 301 /hello.txt; }
    location = /r302 { return 302 /method; }
    location = /r303 { return 303 /method; }
    location = /r307 { return 307 /method; }
    location = /r308 { return 308 /method; }
    location = /loop { return 302 /loop; }
    location = /method { return 200 "$request_method $content_length\n"; }
    location = /proto { return 200 "$server_protocol\n"; }
  }
  server {
    listen 127.0.0.1:TPORT_UNKNOWN ssl;
    ssl_certificate DIR/unknown.pem;
    ssl_certificate_key DIR/unknown.key;
    location / { return 200 "unknown CA\n"; }
  }
  server {
    listen 127.0.0.1:TPORT_MTLS ssl;
    ssl_certificate DIR/server.pem;
    ssl_certificate_key DIR/server.key;
    ssl_client_certificate DIR/ca.pem;
    ssl_verify_client on;
    location / { return 200 "client $ssl_client_verify\n"; }
  }
}
]]):gsub("TPORT_MTLS", tostring(TPORT_MTLS)):gsub("TPORT_UNKNOWN", tostring(TPORT_UNKNOWN)):gsub("TPORT", tostring(TPORT))
  :gsub("PORT", tostring(PORT)):gsub("DIR", dir))

-- Python's http.server: echoes what it got as JSON, sets a cookie, and
-- answers chunked.
write("peer.py", [[
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("latin-1") if n else ""
        if self.path.startswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in ("one,", "two,", "three"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part.encode()))
            self.wfile.write(b"0\r\n\r\n")
            return
        out = json.dumps({"method": self.command, "path": self.path, "body": body,
                          "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        if self.path.startswith("/setcookie"):
            self.send_header("Set-Cookie", "session=abc123; Path=/")
            self.send_header("Set-Cookie", "theme=dark; Path=/")
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
]])

local PIPE = asyncio.subprocess.PIPE
-- Under timeout(1), so that they end even if this script is killed.
local nginx = await asyncio.create_subprocess_exec("timeout", "110", NGINX, "-p", dir, "-c", P("nginx.conf"),
  { stdout = asyncio.subprocess.DEVNULL, stderr = asyncio.subprocess.DEVNULL })
local py = await asyncio.create_subprocess_exec("timeout", "110", PYTHON, P("peer.py"), { stdout = PIPE })
local function stop_peers()
  nginx:terminate()
  await nginx:wait()
  py:terminate()
  await py:wait()
  os.execute("rm -rf " .. dir)
end
local PYPORT = tonumber(await py.stdout:readline())
local up, why = pcall(function()
  await wait_port(PORT)
  await wait_port(TPORT)
end)
if not up or not PYPORT then
  stop_peers()
  error("the peers did not start: " .. tostring(why))
end
local BASE = "http://127.0.0.1:" .. PORT
local TBASE = "https://127.0.0.1:" .. TPORT
local PYBASE = "http://127.0.0.1:" .. PYPORT

-- The fds once the count holds still, after a collection (an fd left to
-- the collector is closed by it) and once the loop has run what closes on
-- its own (the in-process peers' ends of the last case's connections,
-- curl's resolver threads); a leak still shows, as the count it settles at.
local async function settled_nfds() return await T.settled_fds(true) end
local function rss_kib()
  local f = io.open("/proc/self/status")
  local s = f:read("a"); f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

local ASAN = (function()
  local f = io.open("/proc/self/maps")
  local maps = f:read("a"); f:close()
  return maps:find("libasan", 1, true) ~= nil
end)()

-- Each case checks that the fds it opened are closed at its end.
local function case(name, fn)
  T.case(name, async function()
    local before = await settled_nfds()
    await fn()
    client._close_default()
    T.eq(await settled_nfds(), before, "fds back to the start after '" .. name .. "'")
  end)
end

---------------------------------------------------------------- basics

case("http.get: a 200 with status, reason, headers, url, version and body", async function()
  local r = await http.get(BASE .. "/hello.txt")
  T.eq(r.status, 200, "status")
  T.eq(r.reason, "OK", "reason")
  T.eq(r.ok, true, "ok")
  T.eq(r.http_version, "1.1", "HTTP version")
  T.eq(r.url, BASE .. "/hello.txt", "url")
  T.eq(r.headers["Content-Type"], "text/plain", "Content-Type")
  T.eq(r.headers["content-type"], "text/plain", "read case-insensitively")
  T.eq(r.headers["CONTENT-LENGTH"], "17", "Content-Length")
  T.eq(await r:text(), "hello from nginx\n", "body")
  T.eq(await r:read(), "hello from nginx\n", "read again: the same body")
  local names = {}
  for k in pairs(r.headers) do names[#names + 1] = k end
  T.ok(#names >= 3, "pairs() lists the headers")
end)

case("keep-alive: one connection serves a session's requests", async function()
  local s <close> = http.Session({ base_url = BASE })
  local conns = {}
  for i = 1, 5 do
    local r <close> = await s:get("/hello.txt")
    await r:read()
    conns[i] = r.headers["X-Connection"]
  end
  for i = 2, 5 do T.eq(conns[i], conns[1], "request " .. i .. " reused the connection") end
  -- The module-level functions share a default pool too.
  local a = await http.get(BASE .. "/hello.txt"); await a:read()
  local b = await http.get(BASE .. "/hello.txt"); await b:read()
  T.eq(b.headers["x-connection"], a.headers["x-connection"], "http.get reuses connections")
end)

case("gzip: the body is decoded, the response was compressed and chunked", async function()
  local r = await http.get(BASE .. "/gz/text.txt")
  T.eq(r.headers["Content-Encoding"], "gzip", "nginx compressed it")
  T.eq(r.headers["Transfer-Encoding"], "chunked", "and sent it chunked")
  local body = await r:text()
  T.eq(#body, #TEXT, "decoded length")
  T.ok(body == TEXT, "decoded body")
  local raw = await http.get(BASE .. "/gz/text.txt", { decompress = false })
  T.eq(raw.headers["Content-Encoding"], nil, "decompress = false asks for identity")
  await raw:read()
end)

case("chunked: a chunked body from Python's http.server", async function()
  local r = await http.get(PYBASE .. "/chunked")
  T.eq(r.headers["transfer-encoding"], "chunked", "chunked")
  T.eq(await r:text(), "one,two,three", "the chunks joined")
end)

case("404 is a result; raise_for_status raises ClientResponseError", async function()
  local r = await http.get(BASE .. "/missing")
  T.eq(r.status, 404, "status")
  T.eq(r.reason, "Not Found", "reason")
  T.eq(r.ok, false, "not ok")
  await r:read()
  local e = T.raises(http.ClientResponseError, function() r:raise_for_status() end, "raise_for_status")
  T.eq(e.status, 404, "the error's status")
  T.match(tostring(e), "404 Not Found for " .. BASE .. "/missing", "the message")
  local ok = await http.get(BASE .. "/hello.txt")
  T.eq(ok:raise_for_status(), ok, "a 200 passes through")
  await ok:read()
end)

---------------------------------------------------------------- redirects

case("redirects: 301/302/303 turn POST into GET, 307/308 keep it and its body", async function()
  local s <close> = http.Session({ base_url = BASE })
  local r = await s:get("/r301")
  T.eq(r.status, 200, "301 followed")
  T.eq(r.url, BASE .. "/hello.txt", "url after the redirect")
  T.eq(await r:text(), "hello from nginx\n", "the final body")
  for _, c in ipairs({ { "/r302", "GET " }, { "/r303", "GET " }, { "/r307", "POST 4" }, { "/r308", "POST 4" } }) do
    local rr = await s:post(c[1], { body = "data" })
    T.eq(await rr:text(), c[2] .. "\n", "POST to " .. c[1])
  end
  local no = await s:get("/r302", { follow_redirects = false })
  T.eq(no.status, 302, "not followed when told")
  T.eq(no.headers.location, BASE .. "/method", "its Location")
  await no:read()
end)

case("redirects: more than max_redirects raises TooManyRedirects", async function()
  local e = T.raises(http.TooManyRedirects, function() return http.get(BASE .. "/loop", { max_redirects = 3 }) end,
    "a redirect loop")
  T.ok(asyncio.isinstance(e, http.ClientResponseError), "a ClientResponseError")
  T.match(tostring(e), "3", "names the limit")
  T.raises(http.TooManyRedirects, function() return http.get(BASE .. "/r301", { max_redirects = 0 }) end,
    "max_redirects = 0")
end)

---------------------------------------------------------------- bodies

case("Python http.server: POST bodies, forms, JSON, headers, params", async function()
  local s <close> = http.Session({ base_url = PYBASE, headers = { ["X-Session"] = "s1" } })
  local r = await s:post("/echo", { body = "raw bytes \0 here" })
  local v = await r:json()
  T.eq(v.method, "POST", "method")
  T.eq(v.body, "raw bytes \0 here", "the body as sent")
  T.eq(v.headers["x-session"], "s1", "the session's header")
  T.eq(v.headers["expect"], nil, "no Expect: 100-continue")
  r = await s:post("/form", { form = { b = "2 & 3", a = "x=y" } })
  v = await r:json()
  T.eq(v.body, "a=x%3Dy&b=2%20%26%203", "form-encoded, sorted")
  T.eq(v.headers["content-type"], "application/x-www-form-urlencoded", "form content type")
  r = await s:put("/json", { json = { n = 1, list = { 1, 2 } }, headers = { ["X-Session"] = "mine" } })
  v = await r:json()
  T.eq(v.method, "PUT", "PUT")
  T.eq(json.decode(v.body).list[2], 2, "the JSON body")
  T.eq(v.headers["content-type"], "application/json", "JSON content type")
  T.eq(v.headers["x-session"], "mine", "a request header replaces the session's")
  r = await s:get("/q?x=1", { params = { y = "a b", z = { 1, 2 } } })
  T.eq((await r:json()).path, "/q?x=1&y=a%20b&z=1&z=2", "params appended")
  r = await s:delete("/thing")
  T.eq((await r:json()).method, "DELETE", "DELETE")
  local n <close> = http.Session()
  r = await n:head(BASE .. "/hello.txt")
  T.eq(r.status, 200, "HEAD")
  T.eq(r.headers["content-length"], "17", "HEAD's headers")
  T.eq(await r:read(), "", "HEAD has no body")
end)

case("cookies: the session's jar sends back what the server set", async function()
  local s <close> = http.Session({ base_url = PYBASE, cookies = { lang = "lua" } })
  local r = await s:get("/setcookie")
  T.eq(#r.headers:get_all("set-cookie"), 2, "two Set-Cookie headers, each kept")
  await r:read()
  r = await s:get("/after")
  local cookie = (await r:json()).headers.cookie
  T.match(cookie, "session=abc123", "the jar's cookie")
  T.match(cookie, "lang=lua", "the session's own cookie")
  local s2 <close> = http.Session({ base_url = PYBASE, cookies = false })
  r = await s2:get("/setcookie"); await r:read()
  r = await s2:get("/after")
  T.eq((await r:json()).headers.cookie, nil, "cookies = false keeps no jar")
end)

---------------------------------------------------------------- streaming

case("a 20 MiB body streams through chunks() to a slow reader in flat memory", async function()
  local s <close> = http.Session()
  local before = rss_kib()
  local r <close> = await s:get(BASE .. "/big.bin")
  T.eq(r.headers["content-length"], tostring(BIG), "length")
  local total, n, peak = 0, 0, 0
  for chunk in r:chunks() do
    total = total + #chunk
    n = n + 1
    if n % 8 == 0 then
      await asyncio.sleep(0.002)   -- slower than nginx
      local now = rss_kib()
      if now - before > peak then peak = now - before end
    end
  end
  T.eq(total, BIG, "every byte")
  local pauses, most = r._x:stats()
  T.ok(pauses > 0, "the transfer was paused by the slow reader (" .. pauses .. " times)")
  T.ok(most <= 512 * 1024, "at most " .. most .. " bytes buffered")
  -- Under AddressSanitizer freed memory stays mapped (its quarantine), so
  -- RSS says nothing there; the buffer bound above still holds.
  if not ASAN then T.ok(peak < 16 * 1024, "RSS grew by " .. peak .. " KiB for a 20 MiB body") end
end)

case("r:read() of a large body; two readers at once are refused", async function()
  local r = await http.get(BASE .. "/big.bin")
  local other = asyncio.create_task(function() return await r:read() end)
  await asyncio.sleep(0)
  T.raises(asyncio.RuntimeError, function() return r:read() end, "a second reader")
  T.eq(#(await other), BIG, "the whole body")
end)

---------------------------------------------------------------- TLS

case("HTTPS with the test CA through an ssl.SSLContext, over HTTP/2", async function()
  local ctx = ssl.create_default_context({ cafile = P("ca.pem") })
  local s <close> = http.Session({ base_url = TBASE, ssl = ctx })
  local r = await s:get("/proto")
  T.eq(r.status, 200, "status")
  T.eq(r.http_version, "2", "HTTP/2 negotiated by ALPN")
  T.eq(await r:text(), "HTTP/2.0\n", "nginx saw HTTP/2")
  -- Concurrent requests share the one HTTP/2 connection.
  local rs = await asyncio.gather(s:get("/hello.txt"), s:get("/hello.txt"), s:get("/hello.txt"))
  for i = 1, 3 do
    T.eq(rs[i].headers["x-connection"], r.headers["x-connection"], "stream " .. i .. " multiplexed")
    await rs[i]:read()
  end
  local one = await s:get("/proto", { http2 = false })
  T.eq(await one:text(), "HTTP/1.1\n", "http2 = false stays on HTTP/1.1")
end)

case("HTTPS: an unknown CA fails verification; verify = false skips it", async function()
  local e = T.raises(ssl.SSLCertVerificationError, function() return http.get(TBASE .. "/hello.txt") end,
    "the system store does not know the test CA")
  T.ok(asyncio.isinstance(e, ssl.SSLError), "an SSLError")
  local ctx = ssl.create_default_context({ cafile = P("ca.pem") })
  T.raises(ssl.SSLCertVerificationError, function()
    return http.get("https://127.0.0.1:" .. TPORT_UNKNOWN .. "/", { ssl = ctx })
  end, "a certificate of another CA")
  local r = await http.get("https://127.0.0.1:" .. TPORT_UNKNOWN .. "/", { verify = false })
  T.eq(await r:text(), "unknown CA\n", "verify = false")
  r = await http.get("https://127.0.0.1:" .. TPORT_UNKNOWN .. "/", { ssl = false })
  T.eq(await r:text(), "unknown CA\n", "ssl = false")
end)

case("HTTPS: the context's certificate chain authenticates the client", async function()
  local ctx = ssl.create_default_context({ cafile = P("ca.pem") })
  local base = "https://127.0.0.1:" .. TPORT_MTLS .. "/"
  local r = await http.get(base, { ssl = ctx })
  T.eq(r.status, 400, "without a client certificate nginx refuses")
  await r:read()
  ctx:load_cert_chain(P("client.pem"), P("client.key"))
  r = await http.get(base, { ssl = ctx })
  T.eq(await r:text(), "client SUCCESS\n", "with load_cert_chain's certificate")
end)

case("proxies come from the environment (http_proxy)", async function()
  -- A child moonloop with http_proxy pointing at the Python peer: the
  -- request for a name that does not exist reaches the proxy, which sees
  -- the absolute URL.
  local bin = os.getenv("MOONLOOP_BIN") or arg[-1] or "build/moonloop"
  local p = await asyncio.create_subprocess_exec(bin, "-e",
    "local r = await require('http').get('http://no-such-host.invalid/via-proxy'); print((await r:json()).path)",
    { stdout = PIPE, env = { http_proxy = PYBASE, PATH = os.getenv("PATH") } })
  local out = await p.stdout:read(-1)
  T.eq(await p:wait(), 0, "the child's status")
  T.eq(out, "http://no-such-host.invalid/via-proxy\n", "the proxy got the request")
end)

---------------------------------------------------------------- failures

-- A peer that accepts and never answers.
local async function stalled_server()
  local conns = {}
  local srv = await asyncio.start_server(function(_, w) conns[#conns + 1] = w end, "127.0.0.1", 0)
  return srv, srv.sockets[1]:getsockname()[2], conns
end

case("timeout: a stalled peer raises asyncio.TimeoutError", async function()
  local srv, port, conns = await stalled_server()
  local e = T.raises(asyncio.TimeoutError, function()
    return http.get("http://127.0.0.1:" .. port .. "/", { timeout = 0.2 })
  end, "no answer within the timeout")
  T.match(tostring(e), "[Tt]imeout", "the message")
  -- asyncio's own timeout cancels the request: the transfer is aborted.
  local s <close> = http.Session()
  T.raises(asyncio.TimeoutError, function()
    return asyncio.wait_for(s:get("http://127.0.0.1:" .. port .. "/"), 0.2)
  end, "wait_for")
  T.eq(s._m:active(), 0, "the transfer was aborted")
  for _, w in ipairs(conns) do w:close() end
  srv:close()
  await srv:wait_closed()
end)

case("cancel mid-transfer aborts it at once", async function()
  local s <close> = http.Session()
  local got = asyncio.Event()
  local t = asyncio.create_task(function()
    local r <close> = await s:get(BASE .. "/big.bin")
    for _ in r:chunks() do got:set(); await asyncio.sleep(0.001) end
  end)
  await got:wait()
  T.eq(s._m:active(), 1, "one transfer in flight")
  t:cancel()
  T.raises(asyncio.CancelledError, t, "the task was cancelled")
  T.eq(s._m:active(), 0, "the transfer is gone")
  -- Cancelled while waiting for the headers of a stalled peer.
  local srv, port, conns = await stalled_server()
  t = asyncio.create_task(function() return await s:get("http://127.0.0.1:" .. port .. "/") end)
  while #conns == 0 do await asyncio.sleep(0.01) end
  t:cancel()
  T.eq(s._m:active(), 0, "aborted as cancel() returns")
  T.raises(asyncio.CancelledError, t, "cancelled")
  for _, w in ipairs(conns) do w:close() end
  srv:close()
  await srv:wait_closed()
end)

case("connection refused raises ConnectionRefusedError", async function()
  local port = await free_port()
  local e = T.raises(asyncio.ConnectionRefusedError, function()
    return http.get("http://127.0.0.1:" .. port .. "/")
  end, "nothing listens")
  T.eq(e.errno, 111, "errno ECONNREFUSED")
  T.ok(asyncio.isinstance(e, asyncio.OSError), "an OSError")
end)

case("closing a session aborts what is in flight; a closed session refuses", async function()
  local s = http.Session()
  local srv, port, conns = await stalled_server()
  local t = asyncio.create_task(function() return await s:get("http://127.0.0.1:" .. port .. "/") end)
  while #conns == 0 do await asyncio.sleep(0.01) end
  s:close()
  local e = T.raises(asyncio.RuntimeError, t, "the request fails")
  T.match(tostring(e), "session was closed", "says why")
  T.raises(asyncio.RuntimeError, function() return s:get(BASE .. "/") end, "a closed session")
  for _, w in ipairs(conns) do w:close() end
  srv:close()
  await srv:wait_closed()
end)

case("limit_per_host = 1: concurrent requests queue for one connection", async function()
  local s <close> = http.Session({ base_url = BASE, limit_per_host = 1 })
  local rs = await asyncio.gather(s:get("/hello.txt"), s:get("/hello.txt"), s:get("/hello.txt"))
  for i = 1, 3 do
    T.eq(rs[i].headers["x-connection"], rs[1].headers["x-connection"], "request " .. i .. " on the one connection")
    T.eq(await rs[i]:text(), "hello from nginx\n", "body " .. i)
  end
end)

case("a response dropped unread is closed by the collector", async function()
  local s <close> = http.Session()
  do
    local r = await s:get(BASE .. "/big.bin")
    T.eq(s._m:active(), 1, "the transfer runs (and pauses: nobody reads it)")
  end
  collectgarbage(); collectgarbage()
  T.eq(s._m:active(), 0, "its finalizer aborted the transfer")
end)

case("a name that does not resolve raises gaierror", async function()
  local e = T.raises(asyncio.gaierror, function()
    return http.get("http://no-such-host.invalid/", { timeout = 20 })
  end, ".invalid never resolves (RFC 6761)")
  T.ok(asyncio.isinstance(e, asyncio.OSError), "an OSError")
  T.match(tostring(e), "no%-such%-host%.invalid", "names the host")
end)

---------------------------------------------------------------- misuse

case("bad arguments raise TypeError/ValueError naming them", async function()
  local e = T.raises(asyncio.TypeError, function() return http.get(BASE, { bogus = 1 }) end, "unknown option")
  T.match(tostring(e), "unexpected option 'bogus'", "names it")
  e = T.raises(asyncio.TypeError, function() return http.get(BASE, { timeout = "1" }) end, "timeout type")
  T.match(tostring(e), "timeout must be a number", "names timeout")
  T.raises(asyncio.ValueError, function() return http.get(BASE, { timeout = -1 }) end, "negative timeout")
  e = T.raises(asyncio.TypeError, function() return http.post(BASE, { body = 5 }) end, "body type")
  T.match(tostring(e), "body must be a string", "names body")
  e = T.raises(asyncio.ValueError, function() return http.post(BASE, { json = {}, form = {} }) end, "two bodies")
  T.match(tostring(e), "only one of body, json and form", "says so")
  e = T.raises(http.InvalidURL, function() return http.get("ftp://example.com/") end, "scheme")
  T.ok(asyncio.isinstance(e, asyncio.ValueError), "InvalidURL is a ValueError")
  T.raises(http.InvalidURL, function() return http.get("not a url") end, "not a URL")
  T.raises(asyncio.TypeError, function() return http.get(42) end, "url type")
  T.raises(asyncio.ValueError, function() return http.request("GE T", BASE) end, "method")
  e = T.raises(asyncio.ValueError, function() return http.get(BASE, { headers = { ["X-A"] = "a\r\nB: b" } }) end,
    "header injection")
  T.match(tostring(e), "line break", "names the problem")
  e = T.raises(asyncio.TypeError, function() http.Session({ limit = "10" }) end, "Session option type")
  T.match(tostring(e), "limit must be an integer", "names limit")
  T.raises(asyncio.TypeError, function() http.Session({ nope = true }) end, "unknown Session option")
  T.raises(asyncio.TypeError, function() return http.get(BASE, { ssl = "yes" }) end, "ssl type")
  T.raises(asyncio.TypeError, function() return http.get(BASE, { max_redirects = 1.5 }) end, "max_redirects")
end)

-- A first request loads libcurl and OpenSSL's pieces: the fd counts
-- start after it.
do
  local r = await http.get(TBASE .. "/hello.txt", { ssl = ssl.create_default_context({ cafile = P("ca.pem") }) })
  await r:read()
  client._close_default()
  collectgarbage(); collectgarbage()
end

local ok = T.run({ timeout = 60 })
stop_peers()
if not ok then os.exit(1) end
