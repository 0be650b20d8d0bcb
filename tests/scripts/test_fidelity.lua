-- asyncio fidelity: behaviours a script ported from Python asyncio depends
-- on, each once reproduced as a bug (issue #12).
local T = require "asyncio.test"
local loop = asyncio.get_running_loop()
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"
local socket = require "socket"

local function run_script(src, extra)
  local path = T.tmpname(".lua")
  local f = assert(io.open(path, "w")); f:write(src); f:close()
  return T.sh(string.format("%s %s %s 2>&1", extra or "", BIN, path))
end

-- ---- tasks ----

T.case("create_task of an async function runs its body, as create_task(f()) does", async function()
  local ran = 0
  local f = async function() ran = ran + 1; await asyncio.sleep(0); return "body" end
  local t = asyncio.create_task(f, { name = "af" })
  T.eq(await t, "body", "the body's result, not a Coroutine")
  T.eq(ran, 1, "the body ran once")
  T.eq(t:get_name(), "af", "options still apply")
  local t2 = asyncio.Task(f)
  T.eq(await t2, "body", "asyncio.Task too")
  local g = await asyncio.gather(asyncio.create_task(f), asyncio.create_task(f))
  T.eq(g[1], "body"); T.eq(g[2], "body")
  T.eq(ran, 4, "every task ran its body")
  -- A plain function still runs as itself, and may return a Coroutine.
  local c = f()
  local t3 = asyncio.create_task(function() return c end)
  T.eq(await t3, c, "a plain function's result is kept as it is")
  await c
end)

-- ---- cancellation ----

T.case("a task that cancels itself is interrupted at its next await, which is cancelled", async function()
  local fut = asyncio.Future()
  local reached_end = false
  local t = asyncio.create_task((async function()
    asyncio.current_task():cancel("self")
    await fut  -- never completed by anyone: the cancel must interrupt it
    reached_end = true
  end)())
  local ok, e = pcall(await, t)
  T.eq(ok, false, "awaiting the task raised")
  T.ok(asyncio.isinstance(e, asyncio.CancelledError), "CancelledError, got " .. tostring(e))
  T.eq(e.message, "self", "the cancel message")
  T.eq(t:cancelled(), true, "task cancelled")
  T.eq(fut:cancelled(), true, "the awaited future was cancelled")
  T.eq(reached_end, false, "the code after the await did not run")
end)

T.case("a task cancelling itself cancels the task it awaits", async function()
  local inner = asyncio.create_task(T.forever())
  local t = asyncio.create_task((async function()
    asyncio.current_task():cancel()
    await inner
  end)())
  T.raises(asyncio.CancelledError, t, "outer")
  T.eq(inner:cancelled(), true, "inner cancelled")
end)

T.case("a task cancelling itself before sleep(0) raises there", async function()
  local after = false
  local t = asyncio.create_task((async function()
    asyncio.current_task():cancel()
    await asyncio.sleep(0)
    after = true
  end)())
  T.raises(asyncio.CancelledError, t)
  T.eq(after, false, "ran past the sleep")
end)

T.case("a task that cancels itself and returns ends cancelled", async function()
  local t = asyncio.create_task((async function()
    asyncio.current_task():cancel("bye")
    return 5
  end)())
  local e = T.raises(asyncio.CancelledError, t, "awaiting it")
  T.eq(e.message, "bye", "message")
  T.eq(t:cancelled(), true, "cancelled()")
end)

T.case("a task that cancels and uncancels itself returns normally", async function()
  local t = asyncio.create_task((async function()
    local me = asyncio.current_task()
    me:cancel(); me:uncancel()
    await asyncio.sleep(0)
    return 5
  end)())
  T.eq(await t, 5, "result")
end)

T.case("gather's outer future keeps the message of cancel(msg)", async function()
  local g = asyncio.gather(T.forever(), T.forever())
  await asyncio.sleep(0)
  g:cancel("stop now")
  local e = T.raises(asyncio.CancelledError, g)
  T.eq(e.message, "stop now", "message")
end)

T.case("cancel(msg) keeps a message that is not a string as it is", async function()
  local msg = { reason = "shutdown" }
  local t = asyncio.create_task(T.forever())
  await asyncio.sleep(0)
  t:cancel(msg)
  local e = T.raises(asyncio.CancelledError, t)
  T.ok(rawequal(e.message, msg), "e.message is the table given, got " .. tostring(e.message))
  local f = asyncio.Future()
  f:cancel(42)
  e = T.raises(asyncio.CancelledError, f)
  T.eq(e.message, 42, "a number stays a number")
  local t2 = asyncio.create_task(T.forever())
  t2:cancel(msg)  -- before it ever ran
  e = T.raises(asyncio.CancelledError, t2)
  T.ok(rawequal(e.message, msg), "never-started task")
end)

-- ---- gather ----

T.case("cancel() with no message from another task: e.message is nil, not the task", async function()
  local t = asyncio.create_task(T.forever())
  await asyncio.sleep(0)
  t:cancel()
  local ok, e = pcall(await, t)
  T.ok(asyncio.isinstance(e, asyncio.CancelledError), "CancelledError, got " .. tostring(e))
  T.eq(e.message, nil, "no message")
  T.eq(tostring(e), "CancelledError", "tostring")
end)

T.case("gather(c, c) wraps the coroutine once and fills both places", async function()
  local runs = 0
  local async function c() runs = runs + 1; return "v" end
  local co = c()
  local r = await asyncio.gather(co, co, asyncio.sleep(0, "w"))
  T.eq(r, { "v", "v", "w", n = 3 }, "results")
  T.eq(runs, 1, "ran once")
end)

T.case("gather(list) raises TypeError saying to unpack the list", async function()
  local list = { asyncio.create_task(asyncio.sleep(0, 1)), asyncio.create_task(asyncio.sleep(0, 2)) }
  local e = T.raises(asyncio.TypeError, function() return asyncio.gather(list) end)
  T.match(tostring(e), "table%.unpack", "the message says to unpack")
  T.eq(await asyncio.gather(table.unpack(list)), { 1, 2, n = 2 }, "unpacked")
end)

T.case("gather refuses an unknown option by name", async function()
  local e = T.raises(asyncio.TypeError, function()
    return asyncio.gather(asyncio.sleep(0), { return_exception = true })
  end)
  T.eq(e.message, "gather() got an unexpected option 'return_exception'", "message")
end)

-- ---- timers ----

T.case("call_later with negative delays runs them by deadline, and when() is the deadline", async function()
  local order = {}
  local now = loop:time()
  local h1 = loop:call_later(-1, function() order[#order + 1] = "-1" end)
  local h2 = loop:call_later(-2, function() order[#order + 1] = "-2" end)
  local h3 = loop:call_later(-1.5, function() order[#order + 1] = "-1.5" end)
  T.ok(h1:when() <= now - 0.9, "h1:when() is a second ago, got " .. h1:when() - now)
  T.ok(h2:when() < h3:when() and h3:when() < h1:when(), "when() ordered as the delays")
  local done = asyncio.Future()
  loop:call_later(0, function() done:set_result() end)
  await done
  T.eq(order, { "-2", "-1.5", "-1" }, "order")
end)

-- ---- tasks ----

T.case("Task:set_result and set_exception raise RuntimeError", async function()
  local t = asyncio.create_task(asyncio.sleep(0))
  local e = T.raises(asyncio.RuntimeError, function() t:set_result(1) end)
  T.match(tostring(e), "set_result", "message")
  T.raises(asyncio.RuntimeError, function() t:set_exception(asyncio.ValueError()) end)
  await t
end)

T.case("the main task's repr names its chunk, not a function address", function()
  local out, st = run_script("print(tostring(asyncio.current_task()))")
  T.eq(st, 0, "status")
  T.match(out, "coro=<main chunk of [^>]*%.lua>", "repr")
end)

T.case("the debug slow-step report names the main task's chunk", function()
  local out = run_script("local t0 = os.clock() while os.clock() - t0 < 0.15 do end\nawait asyncio.sleep(0)\n",
                         "MOONLOOP_DEBUG=1")
  T.match(out, "Executing <Task pending name='main' coro=<main chunk of", "report")
  T.ok(not out:find("function: 0x"), "no function address: " .. out)
end)

-- ---- streams and servers ----

local function echo(r, w)
  local line = await r:readline()
  w:write(line)
  await w:drain()
  w:close()
end

local function is_socket_file(path)
  local _, st = T.sh("test -S '" .. path .. "'")
  return st == 0
end

T.case("drain() right after close() raises ConnectionResetError", async function()
  local srv <close> = await asyncio.start_server(echo, "127.0.0.1", 0)
  local r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
  w:write("x\n")
  w:close()
  T.raises(asyncio.ConnectionResetError, function() return w:drain() end, "drain after close")
  await w:wait_closed()
end)

T.case("closing a Unix server leaves a socket file another server bound at its path", async function()
  local path = T.tmpname(".sock")
  local srv = await asyncio.start_unix_server(echo, path)
  os.remove(path)  -- someone removed it ...
  local other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  other:bind(path)  -- ... and bound their own
  srv:close()
  await srv:wait_closed()
  T.ok(is_socket_file(path), "the other socket's file is still there")
  other:close()
  os.remove(path)
end)

T.case("closing a Unix server removes its own socket file", async function()
  local path = T.tmpname(".sock")
  local srv = await asyncio.start_unix_server(echo, path)
  T.ok(is_socket_file(path), "bound")
  srv:close()
  await srv:wait_closed()
  T.ok(not is_socket_file(path), "removed")
end)

T.case("a Unix server given sock= removes its socket file when closed, unless cleanup_socket=false", async function()
  for _, cleanup in ipairs({ true, false }) do
    local path = T.tmpname(".sock")
    local s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s:bind(path)
    s:listen(8)
    local srv = await asyncio.start_unix_server(echo, nil, { sock = s, cleanup_socket = cleanup })
    local r, w = await asyncio.open_unix_connection(path)
    w:write("hi\n")
    T.eq(await r:readline(), "hi\n", "serves")
    w:close()
    srv:close()
    await srv:wait_closed()
    T.eq(is_socket_file(path), not cleanup, "file left with cleanup_socket=" .. tostring(cleanup))
    os.remove(path)
  end
end)

-- ---- errors that guide ----

T.case("await asyncio.typo() names the missing field, as plain Lua does", async function()
  local ok, e = pcall(function() await asyncio.typo() end)
  T.eq(ok, false, "raised")
  T.match(e, "test_fidelity%.lua:%d+: attempt to call a nil value %(field 'typo'%)$", "message")
  local obj = {}
  ok, e = pcall(function() await obj:missing() end)
  T.match(e, ":%d+: attempt to call a nil value %(method 'missing'%)$", "method")
end)

local never_set
T.case("an awaited call of a nil local, upvalue or global names it", async function()
  local nothing
  local _, e = pcall(function() local x; await x(1) end)
  T.match(e, "%(local 'x'%)$", "local")
  _, e = pcall(function() await never_set() end)
  T.match(e, "%(upvalue 'never_set'%)$", "upvalue")
  _, e = pcall(function() await no_such_global_fn() end)
  T.match(e, "%(global 'no_such_global_fn'%)$", "global")
  _, e = pcall(function() await asyncio.sleep(0) await nothing() end)
  T.eq(e:match("%(.*%)$"), nil, "two awaited calls on one line: no name guessed")
end)

T.case("the traceback of a failed await shows no __awcall or __awmeth frame", function()
  local out = run_script("local t = {}\nasync function f() await t:nope() end\nawait f()\nawait asyncio.typo()\n")
  T.match(out, "attempt to call a nil value %(method 'nope'%)", "message")
  T.ok(not out:find("__aw"), "no __aw frame in: " .. out)
  T.match(out, ":3: in main chunk", "the user's line")
end)

T.case("the never-awaited report of pcall(async_fn) suggests pcall(await, f(...))", function()
  local out = run_script("async function fetch(x) error('boom') end\nlocal ok, c = pcall(fetch, 1)\nc = nil\ncollectgarbage()\ncollectgarbage()\n")
  T.match(out, "coroutine 'fetch' was never awaited %(created at [^\n]*:2 by pcall", "where")
  T.match(out, "pcall%(await, fetch%(%.%.%.%)%)", "the idiom")
end)

-- ---- options tables ----

T.case("an unknown option raises TypeError naming it, as Python's unknown keyword", async function()
  local function msg(f)
    local e = T.raises(asyncio.TypeError, f)
    return e.message
  end
  T.eq(msg(function() asyncio.create_task(asyncio.sleep(0), { nme = "x" }) end),
       "create_task() got an unexpected option 'nme'", "create_task")
  T.eq(msg(function() return asyncio.wait({ asyncio.create_task(asyncio.sleep(0)) }, { timout = 1 }) end),
       "wait() got an unexpected option 'timout'", "wait")
  T.eq(msg(function() return asyncio.wait_for(asyncio.sleep(0), { timeot = 1 }) end),
       "wait_for() got an unexpected option 'timeot'", "wait_for")
  T.eq(msg(function() return asyncio.open_connection("127.0.0.1", 1, { limt = 10 }) end),
       "open_connection() got an unexpected option 'limt'", "open_connection")
  T.eq(msg(function() return asyncio.start_server(function() end, "127.0.0.1", 0, { backlg = 1 }) end),
       "start_server() got an unexpected option 'backlg'", "start_server")
  T.eq(msg(function() return loop:create_connection(function() end, "127.0.0.1", 1, { sok = 1 }) end),
       "create_connection() got an unexpected option 'sok'", "create_connection")
  T.eq(msg(function() asyncio.Queue({ maxsiz = 1 }) end), "Queue() got an unexpected option 'maxsiz'", "Queue")
  T.eq(msg(function() for _ in asyncio.as_completed({}, { tmeout = 1 }) do end end),
       "as_completed() got an unexpected option 'tmeout'", "as_completed")
  await asyncio.sleep(0)
end)

T.case("Python's keyword names are accepted by name", async function()
  T.eq(asyncio.Queue({ maxsize = 5 }).maxsize, 5, "Queue({maxsize = 5})")
  T.eq(asyncio.PriorityQueue({ maxsize = 2 }).maxsize, 2, "PriorityQueue")
  T.eq(await asyncio.wait_for(asyncio.sleep(0, "v"), { timeout = 1 }), "v", "wait_for(aw, {timeout = 1})")
  T.eq(await asyncio.sleep(0, { result = "r" }), "r", "sleep(0, {result = x})")
  T.eq(await asyncio.sleep(0.001, { result = "r2" }), "r2", "sleep(d, {result = x})")
  local plain = { result = 1, other = 2 }
  T.ok(rawequal(await asyncio.sleep(0, plain), plain), "any other table is a value")
  local srv <close> = await asyncio.start_server(echo, { host = "127.0.0.1", port = 0 })
  local port = srv.sockets[1]:getsockname()[2]
  local r, w = await asyncio.open_connection({ host = "127.0.0.1", port = port })
  w:write("kw\n")
  T.eq(await r:readline(), "kw\n", "served and connected by keywords")
  w:close()
  local e = T.raises(asyncio.TypeError, function()
    return asyncio.open_connection("127.0.0.1", port, { host = "127.0.0.1" })
  end)
  T.eq(e.message, "open_connection() got multiple values for argument 'host'", "both ways")
  local path = T.tmpname(".sock")
  local us <close> = await asyncio.start_unix_server(echo, { path = path })
  local r2, w2 = await asyncio.open_unix_connection({ path = path })
  w2:write("u\n")
  T.eq(await r2:readline(), "u\n", "unix by keywords")
  w2:close()
end)

T.case("a wrong argument to a stdlib call is a TypeError naming the call, not a stdlib line", async function()
  local cases = {
    { function() return asyncio.open_connection("127.0.0.1", {}) end, "^open_connection%(%) port must be" },
    { function() return asyncio.open_connection(123, 80) end, "^open_connection%(%) host must be" },
    { function() return asyncio.start_server(nil, "127.0.0.1", 0) end, "^start_server%(%) client_connected_cb" },
    { function() return asyncio.open_unix_connection(5) end, "^open_unix_connection%(%) path must be" },
    { function() return asyncio.sleep("x") end, "^sleep%(%) delay must be a number, got string" },
    { function() return loop:create_connection(function() end, "127.0.0.1", true) end, "^create_connection%(%) port" },
  }
  for i, c in ipairs(cases) do
    local e = T.raises(asyncio.TypeError, c[1], "case " .. i)
    T.match(e.message, c[2], "case " .. i)
    T.ok(not tostring(e):find("stdlib"), "no stdlib line: " .. tostring(e))
  end
end)

-- ---- ExceptionGroup ----

local function sample_group()
  return asyncio.ExceptionGroup("many", { asyncio.ValueError("v"), asyncio.TypeError("t"),
    asyncio.ExceptionGroup("inner", { asyncio.ValueError("v2"), asyncio.OSError(111, "refused") }) })
end

T.case("the loop's async socket methods name themselves in argument errors, not '?' or '__awmeth'", async function()
  local s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  local u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
  local function err(f) local ok, e = pcall(f); return tostring(e) end
  T.match(err(function() return await loop:sock_recv(s, "x") end),
          "bad argument #2 to 'sock_recv' %(number expected, got string%)$", "await loop:sock_recv")
  local c = loop:sock_recv(s, "x")
  T.eq(err(function() return await c end), "bad argument #2 to 'sock_recv' (number expected, got string)",
       "a Coroutine awaited later")
  T.match(err(function() return await loop:sock_recv_into(s, 5) end),
          "bad argument #2 to 'sock_recv_into' %(socket.buffer expected, got number%)$", "sock_recv_into")
  T.match(err(function() return await loop:sock_recvfrom(nil, 5) end),
          "bad argument #1 to 'sock_recvfrom' %(socket.socket expected, got nil%)$", "sock_recvfrom")
  T.match(err(function() return await loop:sock_sendall(s, {}) end), "#2 to 'sock_sendall'", "sock_sendall")
  T.match(err(function() return await loop:sock_sendto(u, "x", { "127.0.0.1", "p" }) end),
          "#3 to 'sock_sendto' %(bad address", "sock_sendto's address")
  T.match(err(function() return await loop:sock_connect(s, 42) end),
          "#2 to 'sock_connect' %(address must be {host, port}%)", "sock_connect's address")
  T.match(err(function() return await loop:sock_accept("x") end), "#1 to 'sock_accept'", "sock_accept")
  T.match(err(function() return await loop:getaddrinfo({}, 80) end), "#1 to 'getaddrinfo'", "getaddrinfo")
  T.match(err(function() return await loop:getnameinfo(5) end),
          "#1 to 'getnameinfo' %(address expected%)", "getnameinfo")
  s:close(); u:close()
end)

T.case("StreamReader/StreamWriter async methods name themselves in argument errors, not '__awmeth' or '?'", async function()
  local srv = await asyncio.start_server(function() end, "127.0.0.1", 0)
  local r, w = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
  local function err(f) local ok, e = pcall(f); T.eq(ok, false, "raises"); return tostring(e) end
  T.match(err(function() return await r:readexactly("x") end),
          "bad argument #1 to 'readexactly' %(number expected, got string%)$", "readexactly")
  local c = r:readexactly("x")
  T.eq(err(function() return await c end), "bad argument #1 to 'readexactly' (number expected, got string)",
       "a Coroutine awaited later")
  T.match(err(function() return await r:read("x") end), "bad argument #1 to 'read' %(number expected", "read")
  T.match(err(function() return await r:read(1.5) end),
          "bad argument #1 to 'read' %(number has no integer representation%)$", "read(1.5)")
  T.match(err(function() return await r:readuntil(5) end),
          "bad argument #1 to 'readuntil' %(string or list of strings expected, got number%)$", "readuntil")
  T.match(err(function() return await r:readuntil({ 5 }) end),
          "bad argument #1 to 'readuntil' %(list of strings expected%)$", "readuntil's list")
  T.match(err(function() return await r.readline(5) end),
          "calling 'readline' on bad self %(StreamReader expected, got number%)$", "readline's self")
  T.match(err(function() return await w.drain({}) end),
          "calling 'drain' on bad self %(StreamWriter expected, got table%)$", "drain's self")
  T.match(err(function() return await w.wait_closed("w") end),
          "calling 'wait_closed' on bad self %(StreamWriter expected, got string%)$", "wait_closed's self")
  for _, m in ipairs({ "readexactly", "read", "readuntil" }) do
    T.ok(not err(function() return await r[m](r, {}) end):find("__aw"), m .. ": no __aw* name")
  end
  w:close()
  srv:close()
end)

T.case("ExceptionGroup's exceptions is a list with n, from a list with or without n", function()
  local a, b = asyncio.ValueError("a"), asyncio.TypeError("b")
  local eg = asyncio.ExceptionGroup("m", { a, b })
  T.eq(eg.exceptions.n, 2, "n counted from the list")
  T.ok(eg.exceptions[1] == a and eg.exceptions[2] == b and #eg.exceptions == 2, "the elements, in order")
  local src = { a, b, n = 2 }
  local eg2 = asyncio.ExceptionGroup("m", src)
  T.eq(eg2.exceptions.n, 2, "n given")
  T.ok(eg2.exceptions ~= src, "a copy: changing the list given does not change the group")
  T.eq(asyncio.ExceptionGroup("m", { a, n = 1 }).exceptions.n, 1, "n = 1")
  local m = eg:subgroup(asyncio.ValueError)
  T.eq(m.exceptions.n, 1, "subgroup's list has n too")
end)

T.case("ExceptionGroup:split and subgroup keep the nesting, by class or predicate", function()
  local eg = sample_group()
  local m, r = eg:split(asyncio.ValueError)
  T.eq(m.exceptions.n, 2, "matching leaves at the top and in the inner group")
  T.eq(m.exceptions[1].message, "v", "first")
  T.eq(m.exceptions[2].message, "inner", "the inner group kept")
  T.eq(m.exceptions[2].exceptions[1].message, "v2", "inner leaf")
  T.eq(r.exceptions.n, 2, "the rest")
  T.ok(getmetatable(m) == asyncio.ExceptionGroup and m.message == "many", "same class and message")
  T.eq(eg:subgroup(asyncio.KeyError), nil, "nothing matches")
  T.ok(eg:subgroup(function(e) return e == eg end) == eg, "the whole group matches: itself")
  local only, none = eg:split(asyncio.Exception)
  T.ok(only == eg and none == nil, "all match")
  T.raises(asyncio.TypeError, function() eg:split(42) end, "a bad condition")
end)

T.case("asyncio.catch is except*: each leaf to the most specific handler, the rest raised again", function()
  local seen = {}
  local ok, e = pcall(asyncio.catch, sample_group(), {
    [asyncio.ValueError] = function(g) seen[#seen + 1] = "value:" .. g.exceptions.n end,
    [asyncio.OSError] = function() seen[#seen + 1] = "os" end,
    [asyncio.ConnectionError] = function() seen[#seen + 1] = "conn" end,
  })
  table.sort(seen)
  T.eq(seen, { "conn", "value:2" }, "handlers called once each, the most specific one")
  T.eq(ok, false, "the unhandled rest is raised")
  T.ok(asyncio.isinstance(e, asyncio.ExceptionGroup) and e.exceptions.n == 1
       and asyncio.isinstance(e.exceptions[1], asyncio.TypeError), "the rest: " .. tostring(e))
  local got
  asyncio.catch(asyncio.ValueError("plain"), { [asyncio.ValueError] = function(g) got = g end })
  T.eq(got.exceptions[1].message, "plain", "a plain error is a group of one")
end)

-- ---- asyncio.run ----

T.case("asyncio.run from the main task gives left-behind tasks their first step", async function()
  local ran = {}
  local before = asyncio.all_tasks().n
  asyncio.run((async function()
    asyncio.create_task((async function() ran[#ran + 1] = "a"; await T.forever() end)())
    asyncio.create_task((async function() ran[#ran + 1] = "b" end)())
  end)())
  T.eq(ran, { "a", "b" }, "both ran their first step")
  T.eq(asyncio.all_tasks().n, before, "the left-behind tasks were cancelled")
end)

T.case("the docs' 'Task exception was never retrieved' example reports the task", function()
  local out = run_script([[
async function bug() error(asyncio.Exception("not consumed")) end
async function main() asyncio.create_task(bug()) end
asyncio.run(main())
]])
  T.match(out, "Task exception was never retrieved", "report")
  T.match(out, "Exception: not consumed", "the exception")
end)

-- ---- exceptions ----

T.case("TimeoutError is an OSError, and asyncio's is the same class", function()
  local e = asyncio.TimeoutError("slow")
  T.ok(asyncio.isinstance(e, asyncio.OSError), "isinstance OSError")
  T.ok(asyncio.isinstance(e, asyncio.Exception), "isinstance Exception")
  T.eq(tostring(e), "TimeoutError: slow", "tostring")
  local oe = asyncio.OSError(110, "Connection timed out")
  T.ok(getmetatable(oe) == asyncio.TimeoutError, "OSError(110) is a TimeoutError")
  T.eq(tostring(oe), "TimeoutError: [Errno 110] Connection timed out", "tostring of errno form")
  T.eq(oe.errno, 110, "errno")
  T.ok(require("asyncio.exceptions").TimeoutError == asyncio.TimeoutError, "one class")
end)

T.case("wait_for's timeout raises a TimeoutError caught as OSError", async function()
  local ok, e = pcall(await, asyncio.wait_for(T.forever(), 0.001))
  T.eq(ok, false, "raised")
  T.ok(asyncio.isinstance(e, asyncio.OSError), "an OSError: " .. tostring(e))
end)

T.case("a server's <close> does not wait on connections whose handler dropped its streams", async function()
  local done_handlers = 0
  local release = asyncio.Future()
  local port
  local client_w, late_w
  await asyncio.wait_for((async function()
    local srv <close> = await asyncio.start_server(async function(r, w)
      if done_handlers == 1 then await release end  -- the second one ends after close()
      done_handlers = done_handlers + 1
    end, "127.0.0.1", 0)
    port = srv.sockets[1]:getsockname()[2]
    local _
    _, client_w = await asyncio.open_connection("127.0.0.1", port)
    _, late_w = await asyncio.open_connection("127.0.0.1", port)
    while done_handlers < 1 do await asyncio.sleep(0.001) end
    asyncio.get_running_loop():call_later(0.01, function() release:set_result(true) end)
  end)(), 5)
  T.eq(done_handlers, 2, "both handlers ended, and the server closed")
  client_w:close(); late_w:close()
end)

T.case("a server's wait_closed still waits for a connection a handler kept", async function()
  local kept = {}
  local srv = await asyncio.start_server(function(r, w) kept[1] = w end, "127.0.0.1", 0)
  local _, cw = await asyncio.open_connection("127.0.0.1", srv.sockets[1]:getsockname()[2])
  while not kept[1] do await asyncio.sleep(0.001) end
  srv:close()
  local waiter = asyncio.create_task(srv:wait_closed())
  await asyncio.sleep(0.02)
  T.eq(waiter:done(), false, "the kept writer's connection is alive")
  kept[1]:close()
  await asyncio.wait_for(waiter, 5)
  cw:close()
end)

T.run()
