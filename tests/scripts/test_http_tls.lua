-- TLS serving: http.serve with an ssl context, under curl --cacert and the
-- moonloop client (a CA and a server certificate for 127.0.0.1 made by
-- openssl here), and wss:// through the same server.  Each case ends with
-- the process's fds back where they were.
local T = require "asyncio.test"
local http = require "http"
local ssl = require "ssl"

local function have(cmd)
  local _, st = T.sh("command -v " .. cmd .. " >/dev/null 2>&1")
  return st == 0
end
if not have("openssl") or not have("curl") then
  print("skip: needs openssl and curl")
  print("0 passed, 0 failed")
  return
end

local dir = T.tmpname("-https")
local function sh(cmd)
  local out, st = T.sh("cd " .. dir .. " && (" .. cmd .. ") 2>&1")
  if st ~= 0 then error("setup failed: " .. cmd .. "\n" .. out) end
  return out
end
os.execute("mkdir -p " .. dir)
local function P(f) return dir .. "/" .. f end
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj '/CN=moonloop https test CA' 2>/dev/null")
sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 2 -subj '/CN=another CA' 2>/dev/null")
sh("openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj '/CN=localhost' 2>/dev/null")
sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > srv.ext")
sh("openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile srv.ext 2>/dev/null")

local sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
sctx:load_cert_chain(P("srv.pem"), P("srv.key"))

local r = http.Router()
r:get("/", async function(req) return "hello over TLS\n" end)
r:post("/echo", async function(req)
  local body = await req:read()
  return http.json({ n = #body, scheme_ok = true, head = body:sub(1, 8) })
end)
r:get("/ws", async function(req)
  local ws = await req:websocket()
  for msg in ws:messages() do await ws:send("echo: " .. msg) end
end)

local function case(name, fn)
  T.case(name, async function()
    local fds = await T.settled_fds()
    local srv = await http.serve(r, "127.0.0.1", 0, { ssl = sctx })
    local ok, err = pcall(await, fn(srv))
    require("http.client")._close_default()  -- http.get's pooled connections
    srv:close()
    await srv:wait_closed()
    if not ok then error(err, 0) end
    T.eq(await T.settled_fds(), fds, "fds back to their start")
  end)
end

-- curl as a child process, so that this loop keeps serving while it runs;
-- returns its output (stdout and stderr) and its exit status.
local async function curl(args)
  local p = await asyncio.create_subprocess_shell(
    "timeout 20 curl -sS " .. args,
    { stdout = asyncio.subprocess.PIPE, stderr = asyncio.subprocess.STDOUT })
  local out = await p:communicate()
  return out, p.returncode
end

case("curl --cacert: GET, keep-alive, a POST of 1 MiB; an unknown CA is refused", async function(srv)
  local base = "https://127.0.0.1:" .. srv.port
  local ca = "--http1.1 --cacert " .. P("ca.pem") .. " "
  local out, st = await curl(ca .. base .. "/ " .. base .. "/")
  T.eq(st, 0, "curl's status: " .. out)
  T.eq(out, "hello over TLS\nhello over TLS\n", "two answers (one connection)")
  local f = assert(io.open(P("big"), "wb")); f:write(string.rep("b", 1024 * 1024)); f:close()
  out, st = await curl(ca .. "--data-binary @" .. P("big") .. " " .. base .. "/echo")
  T.eq(st, 0, "curl's status: " .. out)
  T.match(out, '"n":1048576', "the whole body arrived: " .. out)
  out, st = await curl("--cacert " .. P("other.pem") .. " " .. base .. "/")
  T.ok(st ~= 0, "curl refuses a certificate from a CA it does not trust: " .. out)
end)

case("the moonloop client with the test CA; verification on by default", async function(srv)
  local base = "https://127.0.0.1:" .. srv.port
  local cctx = ssl.create_default_context({ cafile = P("ca.pem") })
  local s <close> = http.Session({ base_url = base, ssl = cctx })
  for i = 1, 3 do
    local res <close> = await s:get("/")
    T.eq(res.status, 200, "status")
    T.eq(await res:text(), "hello over TLS\n", "body " .. i)
  end
  local res <close> = await s:post("/echo", { body = string.rep("x", 100000) })
  T.eq((await res:json()).n, 100000, "a POST body over TLS")
  local ok, err = pcall(function() local r2 <close> = await http.get(base .. "/") end)
  T.eq(ok, false, "without the CA the server is not trusted")
  T.match(tostring(err), "certificate", "and the error says why: " .. tostring(err))
end)

case("wss:// through the same server", async function(srv)
  local cctx = ssl.create_default_context({ cafile = P("ca.pem") })
  local ws = await http.websocket("wss://127.0.0.1:" .. srv.port .. "/ws", { ssl = cctx })
  for i = 1, 3 do
    await ws:send("m" .. i)
    T.eq(await ws:receive(), "echo: m" .. i, "echo " .. i)
  end
  await ws:send(string.rep("z", 200000))
  T.eq(#(await ws:receive()), #"echo: " + 200000, "a 200 KB message both ways")
  await ws:close(1000)
  T.eq(ws.close_code, 1000, "closed cleanly")
end)

T.run()
