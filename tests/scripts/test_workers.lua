-- moonloop --workers: the supervisor and its workers, run for real
-- (tests/scripts/peers/http_responder.lua answers with its worker id and
-- pid).  Each supervisor starts in a session of its own, so that its
-- process group is its pid and leftovers can be looked for by group.
local T = require "asyncio.test"
io.stdout:setvbuf("line")
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"
local RESPONDER = "tests/scripts/peers/http_responder.lua"
local PIPE, DEVNULL = asyncio.PIPE, asyncio.DEVNULL
local P = dofile("tests/scripts/lib/procs.lua")
P.install()
local spawn, free_port = P.spawn, P.free_port

-- The pids of the processes of group pgid (none once all are gone).
local function group(pgid)
  local out = T.sh("pgrep -g " .. pgid)
  local pids = {}
  for pid in out:gmatch("%d+") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

-- Waits (bounded) until group pgid is empty; returns what is left.
local async function group_gone(pgid)
  for _ = 1, 400 do
    if #group(pgid) == 0 then return {} end
    await asyncio.sleep(0.025)
  end
  return group(pgid)
end

local Sup = {}
Sup.__index = Sup

-- Starts `moonloop --workers n ... script port` (with --listen on a free
-- port unless opts.no_listen); its stderr lines are collected.
local async function supervise(n, opts)
  opts = opts or {}
  local port = opts.port or free_port()
  local args = { "--workers", tostring(n), "--grace", opts.grace or "5s" }
  if not opts.no_listen then
    args[#args + 1] = "--listen"
    args[#args + 1] = "127.0.0.1:" .. port
  end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  args[#args + 1] = opts.script or RESPONDER
  args[#args + 1] = tostring(port)
  args[#args + 1] = { stdout = DEVNULL, stderr = PIPE, start_new_session = true }
  local p = await spawn(true, BIN, table.unpack(args))
  local self = setmetatable({ proc = p, pid = p.pid, port = port, lines = {},
                              changed = asyncio.Event() }, Sup)
  self.reader = asyncio.create_task(function()
    for line in p.stderr:lines() do
      self.lines[#self.lines + 1] = line
      local e = self.changed
      self.changed = asyncio.Event()
      e:set()
    end
    self.eof = true
    self.changed:set()
  end)
  return self
end

-- Waits for a line matching pattern after line number `after` (0);
-- returns its index and captures.
function Sup:line(pattern, after)
  local i = after or 0
  while true do
    while i < #self.lines do
      i = i + 1
      local c = { self.lines[i]:match(pattern) }
      if #c > 0 then return i, table.unpack(c) end
    end
    if self.eof then
      error("no line matching " .. pattern .. " in:\n" .. table.concat(self.lines, "\n"), 0)
    end
    await self.changed:wait()
  end
end

-- Waits until all n workers are ready; returns their pids by id.
function Sup:ready(n)
  local pids, i = {}, 0
  for _ = 1, n do
    local id, pid
    i, id, pid = self:line("worker (%d+) %(pid (%d+)%) ready", i)
    pids[tonumber(id)] = tonumber(pid)
  end
  return pids
end

function Sup:signal(sig)
  T.sh("kill -" .. sig .. " " .. self.pid)
end

-- Stops it with SIGTERM; returns its exit status.  No worker may report
-- an error on the way.
async function Sup:stop()
  self:signal("TERM")
  local rc = await self.proc:wait()
  await self.reader
  T.ok(not self:log():find("never retrieved"), "no task failed in the stop:\n" .. self:log())
  return rc
end

function Sup:log() return table.concat(self.lines, "\n") end

-- GET path on a connection of its own; returns the body.
local async function get(port, path)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  w:write("GET " .. (path or "/") .. " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
  local resp = await r:read()
  w:close()
  return resp:match("\r\n\r\n(.*)$")
end

local function who(body)
  local id, pid = (body or ""):match("worker (%d+) pid (%d+)")
  return tonumber(id), tonumber(pid)
end

T.case("outside a supervisor worker_id() is nil and worker_count() 1", function()
  T.eq(asyncio.worker_id(), nil, "worker_id")
  T.eq(asyncio.worker_count(), 1, "worker_count")
  T.eq(asyncio.worker_ready(), false, "nothing to tell")
end)

T.case("every worker accepts on the shared socket", async function()
  local n = 3
  local sup = await supervise(n)
  sup:ready(n)
  -- A worker blocked in a synchronous read cannot accept: after n - 1
  -- blocking requests, each answered by a worker not blocked yet, the
  -- last request reaches the last worker.
  local seen, fifos, conns = {}, {}, {}
  for i = 1, n - 1 do
    fifos[i] = T.tmpname(".fifo")
    T.eq(select(2, T.sh("mkfifo " .. fifos[i])), 0, "mkfifo")
    local r, w = await asyncio.open_connection("127.0.0.1", sup.port)
    w:write("GET /block/" .. fifos[i] .. " HTTP/1.1\r\nHost: t\r\n\r\n")
    await r:readuntil("\r\n\r\n")
    local id = who(await r:readline())
    T.ok(id ~= nil and not seen[id], "a worker not seen yet answered: " .. tostring(id))
    seen[id] = true
    conns[i] = w
  end
  local id = who(await get(sup.port))
  T.ok(id ~= nil and not seen[id], "the last worker answered: " .. tostring(id))
  seen[id] = true
  for i = 0, n - 1 do T.ok(seen[i], "worker " .. i .. " accepted") end
  for i = 1, n - 1 do
    local f = assert(io.open(fifos[i], "w"))
    f:write("go\n")
    f:close()
    conns[i]:close()
  end
  T.eq(await sup:stop(), 0, "exit status:\n" .. sup:log())
end)

T.case("kill -9 a worker: it is replaced, with a log line saying why, and the service answers", async function()
  local sup = await supervise(2)
  local pids = sup:ready(2)
  T.sh("kill -9 " .. pids[1])
  local i = sup:line("worker 1 %(pid " .. pids[1] .. "%) was killed by SIGKILL; restarting in [%d.]+ s")
  local _, newpid = sup:line("worker 1 %(pid (%d+)%) ready", i)
  newpid = tonumber(newpid)
  T.ok(newpid ~= pids[1] and newpid ~= pids[0], "a new process: " .. newpid)
  for _ = 1, 4 do
    local id, pid = who(await get(sup.port))
    T.ok(pid == pids[0] or pid == newpid, "answered by a live worker: " .. tostring(pid))
  end
  T.eq(await sup:stop(), 0, "exit status:\n" .. sup:log())
end)

T.case("SIGHUP under wrk load: every worker replaced, no failed request", async function()
  local sup = await supervise(2)
  local old = sup:ready(2)
  -- wrk runs until it is interrupted (it then prints its results as at
  -- the end of -d), at the latest after 25 s.
  local wrk = await spawn(false, "wrk", "-t1", "-c10", "-d25s",
    "http://127.0.0.1:" .. sup.port .. "/", { stdout = PIPE, stderr = asyncio.STDOUT })
  local wrk_done = false
  local out_task = asyncio.create_task(function()
    local out = await wrk:communicate()
    wrk_done = true
    return out
  end)
  -- The load is running once a worker says it has served 100 requests.
  local i = sup:line("worker %d pid %d+: 100 requests")
  sup:signal("HUP")
  i = sup:line("SIGHUP: replacing 2 workers one at a time", i)
  local hup = i
  local new = {}
  for _ = 1, 2 do
    local id, npid, opid
    i, id, npid, opid = sup:line("worker (%d+): pid (%d+) ready, stopping pid (%d+)", i)
    id, npid, opid = tonumber(id), tonumber(npid), tonumber(opid)
    T.eq(opid, old[id], "worker " .. id .. ": the old process is stopped")
    new[id] = npid
  end
  sup:line("reload done: 2 workers replaced", i)
  for id = 0, 1 do
    sup:line("worker " .. id .. ": the old process %(pid " .. old[id] .. "%) exited with status 0")
    T.ok(new[id] ~= old[id], "worker " .. id .. " replaced")
  end
  -- The load goes on, now served by the new workers.  A worker writes
  -- its line itself, so it may come before the supervisor's line about
  -- it: the search starts at the SIGHUP (each worker says it once: the
  -- two old ones' lines are passed over).
  local npid
  i = hup
  repeat
    local pid
    i, pid = sup:line("worker %d pid (%d+): 100 requests", i)
    npid = tonumber(pid)
  until npid == new[0] or npid == new[1]
  local reloaded_under_load = not wrk_done
  wrk:send_signal("SIGINT")
  local out = await out_task
  T.eq(await wrk:wait(), 0, "wrk's exit status: " .. out)
  local reqs = tonumber(out:match("(%d+) requests in"))
  T.ok(reqs and reqs > 0, "wrk made requests: " .. out)
  T.ok(not out:find("Socket errors"), "no socket errors: " .. out)
  T.ok(not out:find("Non%-2xx"), "no failed responses: " .. out)
  T.ok(reloaded_under_load, "the reload and the new workers' load were over before wrk's 25 s")
  print("     (wrk: " .. reqs .. " requests across the reload, none failed)")
  for _ = 1, 4 do
    local _, pid = who(await get(sup.port))
    T.ok(pid == new[0] or pid == new[1], "answered by a new worker: " .. tostring(pid))
  end
  T.eq(await sup:stop(), 0, "exit status:\n" .. sup:log())
end)

T.case("SIGTERM: a request in flight completes, exit status 0, no process left", async function()
  local sup = await supervise(2)
  sup:ready(2)
  local r, w = await asyncio.open_connection("127.0.0.1", sup.port)
  w:write("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
  await r:readuntil("\r\n\r\n")
  local first = await r:readline()
  T.ok(who(first) ~= nil, "the first half: " .. first)
  sup:signal("TERM")
  T.eq(await r:readline(), "completed after the stop began\n", "the rest, after the stop began")
  T.eq(await r:read(), "", "then the connection ends")
  w:close()
  T.eq(await sup.proc:wait(), 0, "exit status:\n" .. sup:log())
  T.eq(group(sup.pid), {}, "no process left in the group")
  await sup.reader
  sup:line("SIGTERM: stopping 2 workers")
  sup:line("all workers stopped")
end)

T.case("the supervisor killed with SIGKILL: its workers notice and exit", async function()
  local sup = await supervise(2)
  local pids = sup:ready(2)
  sup:signal("KILL")
  T.eq(await sup.proc:wait(), -9, "killed")
  T.eq(await group_gone(sup.pid), {}, "no orphan left (workers were " .. pids[0] .. ", " .. pids[1] .. ")")
end)

T.case("a worker that ignores SIGTERM is killed after the grace period; exit status 1", async function()
  local path = T.tmpname(".lua")
  local f = io.open(path, "w")
  f:write([[
asyncio.get_running_loop():add_signal_handler("SIGTERM", function() end)
local srv = await asyncio.start_server(function() end, "127.0.0.1", tonumber(arg[1]))
await srv:serve_forever()
]])
  f:close()
  local sup = await supervise(1, { script = path, grace = "300ms" })
  sup:ready(1)
  T.eq(await sup:stop(), 1, "exit status")
  sup:line("worker 0 %(pid %d+%) did not stop within 0.3 s: killing it")
  T.eq(group(sup.pid), {}, "no process left")
end)

T.case("without --listen, workers share the port with SO_REUSEPORT", async function()
  local sup = await supervise(2, { no_listen = true })
  sup:ready(2)
  local id = who(await get(sup.port))
  T.ok(id == 0 or id == 1, "answered: " .. tostring(id))
  T.eq(await sup:stop(), 0, "exit status:\n" .. sup:log())
end)

T.case("a script that cannot start: the supervisor says why and exits 1", async function()
  local path = T.tmpname(".lua")
  local f = io.open(path, "w")
  f:write("error('no config')\n")
  f:close()
  local sup = await supervise(2, { script = path })
  T.eq(await sup.proc:wait(), 1, "exit status")
  await sup.reader
  sup:line("worker %d %(pid %d+%) exited with status 1 before it was ready: the service cannot start")
  T.match(sup:log(), "no config", "the script's error is shown")
  T.eq(group(sup.pid), {}, "no process left")
end)

T.case("a reload whose new script fails keeps the old workers serving", async function()
  local path = T.tmpname(".lua")
  local src = io.open(RESPONDER):read("a")
  local f = io.open(path, "w"); f:write(src); f:close()
  local sup = await supervise(2, { script = path })
  local pids = sup:ready(2)
  f = io.open(path, "w"); f:write("error('broken release')\n"); f:close()
  sup:signal("HUP")
  sup:line("worker 0: the new process %(pid %d+%) exited with status 1 before it was ready; "
           .. "reload stopped, the old workers keep serving")
  local _, pid = who(await get(sup.port))
  T.ok(pid == pids[0] or pid == pids[1], "an old worker answers: " .. tostring(pid))
  T.eq(await sup:stop(), 0, "exit status:\n" .. sup:log())
end)

T.case("--workers auto: one worker per CPU the process may run on", async function()
  local ncpu = tonumber((T.sh("nproc")))
  local sup = await supervise("auto")
  local pids = sup:ready(ncpu)
  for id = 0, ncpu - 1 do T.ok(pids[id] ~= nil, "worker " .. id .. " of " .. ncpu) end
  T.eq(await sup:stop(), 0, "exit status:\n" .. sup:log())
  T.eq(select(2, sup:log():gsub("%) ready", "")), ncpu, "no more workers than CPUs")
end)

T.case("SIGTERM to http.serve workers: an idle keep-alive connection is closed, exit 0", async function()
  local path = T.tmpname(".lua")
  local f = io.open(path, "w")
  -- The main task awaits no server, and an idle connection is kept for
  -- 120 s: only the graceful stop ends them.
  f:write([[
local http = require "http"
local srv = await http.serve(async function(req) return "hello from " .. asyncio.worker_id() .. "\n" end,
                             "127.0.0.1", tonumber(arg[1]), { keepalive_timeout = 120 })
await asyncio.Event():wait()
]])
  f:close()
  -- A grace longer than the case's timeout: only a stop that closes the
  -- idle connection itself passes.
  local sup = await supervise(1, { script = path, grace = "60s" })
  sup:ready(1)
  local r, w = await asyncio.open_connection("127.0.0.1", sup.port)
  w:write("GET / HTTP/1.1\r\nHost: t\r\n\r\n")
  local head = await r:readuntil("\r\n\r\n")
  T.ok(not head:lower():find("connection: close"), "a keep-alive response: " .. head)
  T.eq(await r:readexactly(#"hello from 0\n"), "hello from 0\n", "the body")
  -- The connection is idle, and stays open until the worker stops.
  sup:signal("TERM")
  T.eq(await r:read(), "", "the server closed the idle connection")
  w:close()
  T.eq(await sup.proc:wait(), 0, "exit status:\n" .. sup:log())
  await sup.reader
  T.ok(not sup:log():find("did not stop"), "stopped within the grace period:\n" .. sup:log())
  T.eq(group(sup.pid), {}, "no process left")
end)

T.case("SIGTERM: once the main task has ended, the tasks left are cancelled, as asyncio.run does", async function()
  local path = T.tmpname(".lua")
  local f = io.open(path, "w")
  -- A task that would wait forever, as a client connection's reader does.
  f:write([[
asyncio.create_task(function()
  local ok, e = pcall(function() await asyncio.Event():wait() end)
  io.stderr:write("background task: ", tostring(e), "\n")
  error(e, 0)
end)
local srv = await asyncio.start_server(function() end, "127.0.0.1", tonumber(arg[1]))
await srv:serve_forever()
]])
  f:close()
  local sup = await supervise(1, { script = path, grace = "60s" })
  sup:ready(1)
  local rc = await sup:stop()
  T.eq(rc, 0, "exit status:\n" .. sup:log())
  sup:line("^background task: CancelledError")
  T.ok(not sup:log():find("did not stop"), "stopped within the grace period:\n" .. sup:log())
end)

T.case("on a terminal each worker line is prefixed with its id", async function()
  local path = T.tmpname(".lua")
  local f = io.open(path, "w")
  f:write("print('hello from ' .. asyncio.worker_id())\nio.stderr:write('to stderr\\n')\nerror('stop here')\n")
  f:close()
  -- script(1) runs the supervisor on a pseudo-terminal; the worker exits
  -- before it is ready, so the supervisor ends by itself.
  local cmd = string.format("%s --workers 1 %s", BIN, path)
  local p = await spawn(true, "script", "-qec", cmd, "/dev/null",
                        { stdout = PIPE, stderr = asyncio.STDOUT, stdin = DEVNULL, start_new_session = true })
  local out = (await p:communicate()):gsub("\r\n", "\n")
  T.eq(await p:wait(), 1, "the service cannot start: " .. out)
  T.match(out, "\n?%[worker 0%] hello from 0\n", "stdout prefixed: " .. out)
  T.match(out, "%[worker 0%] to stderr\n", "stderr prefixed: " .. out)
  T.match(out, "%[worker 0%] [^\n]*stop here", "the error prefixed: " .. out)
  T.match(out, "\nmoonloop: worker 0 %(pid %d+%) exited with status 1", "the supervisor's own lines are not: " .. out)
end)

T.case("bad options are refused with a message", function()
  local out, st = T.sh(BIN .. " --workers 0 x.lua 2>&1")
  T.eq(st, 2, "status")
  T.match(out, "%-%-workers 0: expected a number from 1 to 1024, or auto", "message")
  out, st = T.sh(BIN .. " --workers 2 --grace soon x.lua 2>&1")
  T.match(out, "%-%-grace soon: expected a duration", "grace")
  out, st = T.sh(BIN .. " --workers 2 2>&1")
  T.match(out, "%-%-workers needs a script file", "no script")
  out, st = T.sh(BIN .. " --grace 1s x.lua 2>&1")
  T.match(out, "go with %-%-workers N", "--grace alone")
  out, st = T.sh(BIN .. " --workers 1 --listen nonsense:port x.lua 2>&1")
  T.eq(st, 1, "status")
  T.match(out, "%-%-listen nonsense:port: expected PORT", "listen")
end)

T.run({ timeout = 30 })
