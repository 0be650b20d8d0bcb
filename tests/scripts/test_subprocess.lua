-- Child processes: create_subprocess_exec/_shell, Process, the low-level
-- subprocess_exec with a SubprocessProtocol, connect_read/write_pipe,
-- against real programs; fds and zombies counted before and after.
local T = require "asyncio.test"
local socket = require "socket"
local PIPE, STDOUT, DEVNULL = asyncio.PIPE, asyncio.STDOUT, asyncio.DEVNULL

-- This process's pid: the parent of the shell io.popen runs.
local MYPID = tonumber((T.sh("echo $PPID")))

local count_fds = T.open_fds

-- Children of this process that are zombies.
local function count_zombies()
  local out = T.sh("ps -o stat= --ppid " .. MYPID .. " 2>/dev/null | grep -c '^Z'")
  return tonumber(out) or 0
end

local have_python = select(2, T.sh("command -v python3 >/dev/null")) == 0

T.case("PIPE, STDOUT and DEVNULL are Python's values, also under asyncio.subprocess", function()
  T.eq({ PIPE, STDOUT, DEVNULL }, { -1, -2, -3 }, "values")
  T.eq(asyncio.subprocess.PIPE, PIPE, "asyncio.subprocess.PIPE")
  T.eq(asyncio.signal.SIGTERM, 15, "asyncio.signal.SIGTERM")
end)

T.case("echo's output through communicate", async function()
  local p = await asyncio.create_subprocess_exec("echo", "hello", "world", { stdout = PIPE })
  T.ok(math.type(p.pid) == "integer" and p.pid > 0, "pid")
  local out, err = await p:communicate()
  T.eq(out, "hello world\n", "stdout")
  T.eq(err, nil, "stderr is not a pipe")
  T.eq(p.returncode, 0, "returncode")
end)

T.case("returncode is nil while running, the exit status after", async function()
  local p = await asyncio.create_subprocess_shell("exit 7")
  T.eq(p.returncode, nil, "while running")
  T.eq(await p:wait(), 7, "wait's result")
  T.eq(p.returncode, 7, "returncode")
  T.eq(await p:wait(), 7, "a second wait")
end)

T.case("cat round trip through stdin and stdout, stderr separately", async function()
  local p = await asyncio.create_subprocess_shell("cat; echo oops >&2; exit 3",
    { stdin = PIPE, stdout = PIPE, stderr = PIPE })
  local out, err = await p:communicate("abc\0def")
  T.eq(out, "abc\0def", "stdout")
  T.eq(err, "oops\n", "stderr")
  T.eq(p.returncode, 3, "returncode")
end)

T.case("10 MiB through cat both ways: no deadlock", async function()
  local p = await asyncio.create_subprocess_exec("cat", { stdin = PIPE, stdout = PIPE })
  local big = string.rep("0123456789abcdef", 655360)
  local out = await p:communicate(big)
  T.eq(#out, #big, "length")
  T.ok(out == big, "the same bytes")
end)

T.case("python3 writing 10 MiB to stdout and to stderr at once", async function()
  if not have_python then print("     (skipped: no python3)"); return end
  local p = await asyncio.create_subprocess_exec("python3", "-c",
    "import sys; sys.stdout.write('x' * 10485760); sys.stderr.write('y' * 10485760)",
    { stdout = PIPE, stderr = PIPE })
  local out, err = await p:communicate()
  T.eq(#out, 10485760, "stdout length")
  T.eq(#err, 10485760, "stderr length")
  T.ok(out:find("[^x]") == nil and err:find("[^y]") == nil, "contents")
  T.eq(p.returncode, 0, "returncode")
end)

T.case("yes | head: a pipeline in the shell, read line by line", async function()
  local p = await asyncio.create_subprocess_shell("yes moon | head -n 1000", { stdout = PIPE })
  local n = 0
  for line in p.stdout:lines() do
    if line ~= "moon\n" then error("unexpected line " .. line) end
    n = n + 1
  end
  T.eq(n, 1000, "lines")
  T.eq(await p:wait(), 0, "returncode")
end)

T.case("stderr = STDOUT merges the two", async function()
  local p = await asyncio.create_subprocess_shell("echo a; echo b >&2", { stdout = PIPE, stderr = STDOUT })
  local out, err = await p:communicate()
  T.eq(out, "a\nb\n", "merged")
  T.eq(err, nil, "no stderr pipe")
end)

T.case("stdin = DEVNULL gives an empty input", async function()
  local p = await asyncio.create_subprocess_exec("cat", { stdin = DEVNULL, stdout = PIPE })
  T.eq(await p.stdout:read(), "", "cat's output")
  T.eq(await p:wait(), 0, "returncode")
end)

T.case("cwd and env", async function()
  local p = await asyncio.create_subprocess_shell('pwd; echo "$MOON-$HOME"',
    { stdout = PIPE, cwd = "/tmp", env = { MOON = "full", PATH = "/usr/bin:/bin" } })
  local out = await p:communicate()
  T.eq(out, "/tmp\nfull-\n", "cwd and environment")
end)

T.case("a missing program raises FileNotFoundError from the awaiting call", async function()
  local e = T.raises(asyncio.FileNotFoundError, function()
    return asyncio.create_subprocess_exec("no-such-program-moonloop", { stdout = PIPE })
  end, "missing")
  T.eq(e.errno, 2, "errno")
  T.match(tostring(e), "no%-such%-program%-moonloop", "the message names the program")
  T.raises(asyncio.FileNotFoundError, function()
    return asyncio.create_subprocess_exec("true", { cwd = "/no/such/dir" })
  end, "missing cwd")
end)

T.case("a file that is not executable raises PermissionError", async function()
  local path = T.tmpname(".txt")
  local f = io.open(path, "w"); f:write("not a program\n"); f:close()
  T.raises(asyncio.PermissionError, function()
    return asyncio.create_subprocess_exec(path)
  end, "not executable")
end)

T.case("kill gives returncode -9, terminate -15, send_signal by name", async function()
  local p = await asyncio.create_subprocess_exec("sleep", "30")
  p:kill()
  T.eq(await p:wait(), -9, "killed")
  p = await asyncio.create_subprocess_exec("sleep", "30")
  p:terminate()
  T.eq(await p:wait(), -15, "terminated")
  p = await asyncio.create_subprocess_exec("sleep", "30")
  p:send_signal("SIGUSR1")
  T.eq(await p:wait(), -asyncio.signal.SIGUSR1, "by name")
  p:kill()  -- after the exit: nothing happens
  T.raises(asyncio.ValueError, function() p:send_signal("SIGNOPE") end, "unknown name")
end)

T.case("a signal sent from outside with kill(1)", async function()
  local p = await asyncio.create_subprocess_exec("sleep", "30")
  os.execute("kill -TERM " .. p.pid)
  T.eq(await p:wait(), -15, "returncode")
end)

T.case("wait_for(p:wait(), t) times out and the process can still be waited for", async function()
  local p = await asyncio.create_subprocess_exec("sleep", "30")
  T.raises(asyncio.TimeoutError, asyncio.wait_for(p:wait(), 0.05), "timeout")
  T.eq(p.returncode, nil, "still running")
  p:kill()
  T.eq(await p:wait(), -9, "then killed")
end)

T.case("pass_fds hands an fd to the child; others stay closed", async function()
  local a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
  local fd = b:fileno()
  local p = await asyncio.create_subprocess_shell(
    string.format("echo through >&%d; ls /proc/self/fd | wc -l", fd),
    { stdout = PIPE, pass_fds = { fd } })
  local out = await p:communicate()
  b:close()
  local got = await asyncio.get_running_loop():sock_recv(a, 100)
  a:close()
  T.eq(got, "through\n", "written by the child")
  -- 0, 1, 2, the passed fd, and ls's own directory fd.
  T.eq(tonumber(out), 5, "fds the child's ls saw")
end)

T.case("start_new_session puts the child in its own session", async function()
  local p = await asyncio.create_subprocess_exec("sh", "-c", "cut -d' ' -f6 /proc/$$/stat",
    { stdout = PIPE, start_new_session = true })
  local out = await p:communicate()
  T.eq(tonumber(out), p.pid, "session id")
end)

T.case("bad arguments raise clear errors", async function()
  T.raises(asyncio.TypeError, function()
    return asyncio.create_subprocess_exec("true", { stdout = "pipe" })
  end, "stdout")
  T.raises(asyncio.ValueError, function()
    return asyncio.create_subprocess_exec("true", { stdout = STDOUT })
  end, "STDOUT for stdout")
  T.raises(asyncio.TypeError, function()
    return asyncio.create_subprocess_exec("true", { env = { X = {} } })
  end, "env value")
  local e = T.raises(nil, function() return asyncio.create_subprocess_exec("true", {}, "x") end, "argument")
  T.match(tostring(e), "bad argument #2", "names the argument")
  T.raises(nil, function() return asyncio.create_subprocess_shell(42) end, "shell command")
end)

T.case("no fd and no zombie is left by 50 processes with pipes", async function()
  -- Earlier cases' pipes finish closing: connection_lost comes from a
  -- zero-delay timer, due at the next poll of the loop, which a sleep
  -- with a timer makes happen (sleep(0) rounds need not poll).
  await asyncio.sleep(0.001)
  local before_fds, before_z = count_fds(), count_zombies()
  local jobs = {}
  for i = 1, 50 do
    jobs[i] = (async function()
      local p = await asyncio.create_subprocess_shell("cat; echo " .. i .. " >&2",
        { stdin = PIPE, stdout = PIPE, stderr = PIPE })
      local out, err = await p:communicate(tostring(i))
      return out .. "/" .. err
    end)()
  end
  local r = await asyncio.gather(table.unpack(jobs))
  T.eq(r[50], "50/50\n", "the last job's output")
  -- Killed children with unread pipes.
  for _ = 1, 10 do
    local p = await asyncio.create_subprocess_exec("sleep", "30", { stdin = PIPE, stdout = PIPE, stderr = PIPE })
    p:kill()
    await p:wait()
    await p.stdout:read()
    await p.stderr:read()
    p.stdin:close()
  end
  await asyncio.sleep(0.001)
  T.eq(count_fds(), before_fds, "open fds")
  T.eq(count_zombies(), before_z, "zombies")
end)

-------------------------------------------------------------------------------
-- Low level

local function recorder()
  local P = setmetatable({ log = {}, out = {}, done = asyncio.get_running_loop():create_future() },
                         { __index = asyncio.SubprocessProtocol })
  function P:connection_made(t) self.log[#self.log + 1] = "made"; self.t = t end
  function P:pipe_data_received(fd, d) self.out[fd] = (self.out[fd] or "") .. d end
  function P:pipe_connection_lost(fd, exc) self.log[#self.log + 1] = "pipe " .. fd end
  function P:process_exited() self.log[#self.log + 1] = "exited " .. self.t:get_returncode() end
  function P:connection_lost(exc) self.log[#self.log + 1] = "lost"; self.done:set_result(true) end
  return P
end

T.case("subprocess_exec with a SubprocessProtocol", async function()
  local loop = asyncio.get_running_loop()
  local P
  local tr, proto = await loop:subprocess_exec(function() P = recorder(); return P end,
    "sh", "-c", "cat; echo err >&2; exit 4")
  T.ok(proto == P, "the protocol returned")
  T.ok(tr:get_pid() > 0, "get_pid")
  T.eq(tr:get_returncode(), nil, "running")
  local stdin = tr:get_pipe_transport(0)
  stdin:write("hello\n")
  stdin:close()
  await P.done
  T.eq(P.out[1], "hello\n", "stdout data")
  T.eq(P.out[2], "err\n", "stderr data")
  T.eq(tr:get_returncode(), 4, "get_returncode")
  T.eq(P.log[1], "made", "connection_made first")
  T.eq(P.log[#P.log], "lost", "connection_lost last")
  local seen = {}
  for _, e in ipairs(P.log) do seen[e] = true end
  T.ok(seen["pipe 0"] and seen["pipe 1"] and seen["pipe 2"] and seen["exited 4"], "every event: " .. T.show(P.log))
end)

T.case("subprocess_shell; transport close kills the child", async function()
  local loop = asyncio.get_running_loop()
  local P
  local tr = await loop:subprocess_shell(function() P = recorder(); return P end, "sleep 30",
    { stdin = DEVNULL, stdout = DEVNULL, stderr = DEVNULL })
  T.eq(tr:get_pipe_transport(1), nil, "no pipe for DEVNULL")
  tr:close()
  await P.done
  T.eq(tr:get_returncode(), -9, "killed")
end)

T.case("connect_read_pipe over a file from io.popen", async function()
  local loop = asyncio.get_running_loop()
  local f = io.popen("printf 'one\\ntwo\\n'")
  local got, eof, lost = {}, false, loop:create_future()
  local tr = await loop:connect_read_pipe(function()
    return {
      data_received = function(_, d) got[#got + 1] = d end,
      eof_received = function() eof = true end,
      connection_lost = function(_, exc) lost:set_result(exc == nil) end,
    }
  end, f)
  T.eq(await lost, true, "connection_lost(nil)")
  f:close()
  T.eq(table.concat(got), "one\ntwo\n", "data")
  T.ok(eof, "eof_received")
  T.ok(tr:is_closing(), "closed at the end")
end)

T.case("connect_write_pipe writes to a child's stdin", async function()
  local loop = asyncio.get_running_loop()
  local path = T.tmpname(".out")
  local f = io.popen("cat > " .. path, "w")
  local lost = loop:create_future()
  local tr = await loop:connect_write_pipe(function()
    return { connection_lost = function(_, exc) lost:set_result(exc) end }
  end, f)
  T.ok(tr:can_write_eof(), "can_write_eof")
  tr:write("written ")
  tr:write("through a pipe\n")
  tr:write_eof()
  await lost
  f:close()  -- the file's own fd; pclose waits for cat
  local r = io.open(path); local text = r:read("a"); r:close()
  T.eq(text, "written through a pipe\n", "cat's file")
  T.raises(asyncio.ValueError, function()
    local g = io.open(path)
    local ok, e = pcall(function() await loop:connect_read_pipe(function() return {} end, g) end)
    g:close()
    if not ok then error(e, 0) end
    return e
  end, "a regular file is refused")
end)

T.run()
