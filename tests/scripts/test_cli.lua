-- The moonloop command as users run it: scripts, options, exit status,
-- error reports, the lifecycle rules.  Each case runs a real process.
local T = require "asyncio.test"
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"

-- Writes src to a temp script and runs it; returns output (stdout+stderr)
-- and exit status.
local function run(src, args, extra)
  local path = T.tmpname(".lua")
  local f = assert(io.open(path, "w")); f:write(src); f:close()
  local out, st = T.sh(string.format("%s %s %s %s 2>&1", extra or "", BIN, path, args or ""))
  return out, st, path
end

T.case("a script runs as the main task with top-level await and arg", function()
  local out, st = run('local a, b = ...\nprint(await asyncio.sleep(0, "ok"), arg[1], a, b)', "x y")
  T.eq(st, 0, "status"); T.eq(out, "ok\tx\tx\ty\n", "output")
end)

T.case("a syntax error names the file and line; status 1", function()
  local out, st, path = run("local x = 1\nlocal y = = 2\n")
  T.eq(st, 1, "status")
  T.match(out, path:gsub("%p", "%%%0") .. ":2:", "file and line")
end)

T.case("a syntax error in the new forms reads like Lua's own", function()
  local out, st, path = run("\n\nasync x()\n")
  T.eq(st, 1, "status")
  T.match(out, ":3: 'function' expected after 'async' near 'x'", "message")
end)

T.case("an uncaught error prints a traceback naming the user's line", function()
  local out, st, path = run("async function f()\n  await asyncio.sleep(0)\n  error('boom')\nend\nawait f()\n")
  T.eq(st, 1, "status")
  T.match(out, "^moonloop: [^\n]*:3: boom", "message first")
  T.match(out, "stack traceback:", "traceback")
  T.match(out, ":5: in main chunk", "the awaiting line")
end)

T.case("the traceback of a failed awaited task shows the chain of awaits", function()
  local out, st = run("local t = asyncio.create_task(function()\n  await asyncio.sleep(0)\n  error('deep')\nend)\nawait t\n")
  T.eq(st, 1, "status")
  T.match(out, ":3: in function", "the failing task's frame")
  T.match(out, "awaited task", "the chain marker")
  T.match(out, ":5: in main chunk", "the awaiting frame")
end)

T.case("missing file and bad option: one line, status 2", function()
  local out, st = T.sh(BIN .. " /nonexistent/x.lua 2>&1")
  T.eq(st, 2, "missing file status"); T.match(out, "^moonloop: cannot open /nonexistent/x.lua: No such file", "message")
  out, st = T.sh(BIN .. " --bogus 2>&1")
  T.eq(st, 2, "bad option status"); T.match(out, "unknown option '%-%-bogus'", "message")
  local _, nl = out:gsub("\n", "")
  T.eq(nl, 1, "one line")
end)

T.case("-v, -h, -e and - (stdin)", function()
  local out, st = T.sh(BIN .. " -v")
  T.eq(st, 0, "-v status"); T.match(out, "^moonloop %d+%.%d+%.%d+", "version")
  out, st = T.sh(BIN .. " --help")
  T.eq(st, 0, "help status"); T.match(out, "usage: moonloop", "usage")
  out, st = T.sh(BIN .. " -e 'print(await asyncio.sleep(0.001, 42))'")
  T.eq(out, "42\n", "-e output")
  out, st = T.sh("echo 'print(await asyncio.sleep(0, \"piped\"))' | " .. BIN .. " -")
  T.eq(out, "piped\n", "- reads stdin")
  out, st = T.sh("echo 'print(1 + 1)' | " .. BIN)
  T.eq(out, "2\n", "no args and no terminal reads stdin")
end)

T.case("--emit keeps every line and translates the forms", function()
  local src = "local async function f(a)\n  return await g(a)\nend\n-- await f()\nlocal s = [[\nawait x\n]]\n"
  local path = T.tmpname(".lua")
  local f = io.open(path, "w"); f:write(src); f:close()
  local out, st = T.sh(BIN .. " --emit " .. path)
  T.eq(st, 0, "status")
  local _, n1 = src:gsub("\n", ""); local _, n2 = out:gsub("\n", "")
  T.eq(n2, n1, "line count")
  T.match(out, '^local f; f = __ml_async%("f", function%(a%)\n  return __awcall%(g, a%)\nend%)\n', "translation")
  T.match(out, "%-%- await f%(%)\nlocal s = %[%[\nawait x\n%]%]", "comments and strings untouched")
end)

T.case("Node's rule: the process runs until no task or timer is left", function()
  local out, st = run("asyncio.create_task(function() await asyncio.sleep(0.05); print('background done') end)\nprint('main done')\n")
  T.eq(st, 0, "status"); T.eq(out, "main done\nbackground done\n", "order")
end)

T.case("a task exception never retrieved is reported at exit", function()
  local out, st = run("local t = asyncio.create_task(function() error('lost error') end)\nawait asyncio.sleep(0.01)\nt = nil\n")
  T.eq(st, 0, "status")
  T.match(out, "Task exception was never retrieved", "report")
  T.match(out, "lost error", "the error")
end)

T.case("a coroutine never awaited is reported with where it was created", function()
  local out, st = run("async function f() end\nlocal c = f()\nc = nil\ncollectgarbage()\nawait asyncio.sleep(0)\n")
  T.eq(st, 0, "status")
  T.match(out, "coroutine 'f' was never awaited %(created at [^)]*:2%)", "report")
end)

T.case("the main task awaiting what can never happen exits with an error", function()
  local out, st = run("await asyncio.Future()\n")
  T.eq(st, 1, "status"); T.match(out, "can never finish", "message")
end)

T.case("await outside a task (in a callback) raises RuntimeError", function()
  local out, st = run([[
local f = asyncio.Future()
asyncio.get_running_loop():call_soon(function()
  local ok, e = pcall(await, asyncio.Future())
  f:set_result(tostring(e))
end)
print(await f)
]])
  T.eq(out, "RuntimeError: await outside of a running task\n", "message")
end)

T.case("an error in a callback is reported; the script goes on", function()
  local out, st = run("asyncio.get_running_loop():call_soon(function() error('cb boom') end)\nawait asyncio.sleep(0.01)\nprint('still here')\n")
  T.eq(st, 0, "status"); T.match(out, "cb boom", "report"); T.match(out, "still here", "went on")
end)

T.case("SIGINT cancels the main task; status 130", function()
  local path = T.tmpname(".lua")
  local f = io.open(path, "w")
  f:write("print('ready'); io.stdout:flush()\nlocal ok, e = pcall(await, asyncio.sleep(30))\nprint('cleanup', tostring(e)); error(e, 0)\n")
  f:close()
  local out, st = T.sh(string.format(
    "(%s %s > %s.out 2>&1 & pid=$!; for i in $(seq 50); do grep -q ready %s.out 2>/dev/null && break; sleep 0.1; done; kill -INT $pid; wait $pid; echo \"rc=$?\"; cat %s.out)",
    BIN, path, path, path, path))
  T.match(out, "rc=130", "status")
  T.match(out, "cleanup\tCancelledError: KeyboardInterrupt", "the main task saw the cancellation")
  T.match(out, "KeyboardInterrupt", "report")
end)

T.case("asyncio.run from the main task awaits and cancels leftovers", function()
  local out, st = run([[
local leftover
async function main()
  leftover = asyncio.create_task(asyncio.sleep(30))
  await asyncio.sleep(0)
  return "main result"
end
print(asyncio.run(main()))
print("leftover cancelled:", leftover:cancelled())
]])
  T.eq(st, 0, "status"); T.eq(out, "main result\nleftover cancelled:\ttrue\n", "output")
end)

T.case("a plain coroutine.yield in a task fails the task clearly", function()
  local out, st = run("local t = asyncio.create_task(function() coroutine.yield(1) end)\nlocal ok, e = pcall(await, t)\nprint(tostring(e))\n")
  T.match(out, "RuntimeError: .*coroutine.yield%(%) outside a generator", "message")
end)

T.case("debug mode: slow steps are reported, creation tracebacks kept", function()
  local src = "async function f() end\nlocal function g() return f() end\nlocal c = g(); c = nil; collectgarbage()\n" ..
    "asyncio.create_task(function() local t = os.clock(); while os.clock() - t < 0.15 do end end, {name = 'busy'})\n" ..
    "await asyncio.sleep(0.2)\n"
  local out, st = run(src, "", "MOONLOOP_DEBUG=1")
  T.eq(st, 0, "status")
  T.match(out, "Executing <Task finished name='busy'[^\n]*> took 0%.%d+ seconds", "slow step warning")
  T.match(out, "Coroutine created at[^\n]*\n[^\n]*\n[^\n]*:2: in local 'g'", "creation traceback")
  out = run(src)
  T.ok(not out:find("Executing"), "no slow warnings without debug mode: " .. out)
end)

T.case("an error object whose __tostring fails is still reported; status 1", function()
  local out, st = run("error(setmetatable({}, {__tostring = function(self) return self.msg end}))\n")
  T.eq(st, 1, "status, not an abort")
  T.match(out, "^moonloop: %(a table value whose __tostring failed%)", "message")
end)

T.run()
