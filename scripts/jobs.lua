-- jobs.lua: a parallel job runner.  Runs shell commands N at a time
-- (a Semaphore), collects each one's output and exit status, and kills
-- the ones that run past a deadline.
--
--   moonloop scripts/jobs.lua [-j N] [-t SECONDS] 'cmd1' 'cmd2' ...
--   moonloop scripts/jobs.lua --demo
local asyncio = require "asyncio"

local args = { ... }
local width, deadline, cmds = 4, 5, {}
local i = 1
while i <= #args do
  local a = args[i]
  if a == "-j" then width = tonumber(args[i + 1]); i = i + 1
  elseif a == "-t" then deadline = tonumber(args[i + 1]); i = i + 1
  elseif a == "--demo" then
    width, deadline = 3, 1
    cmds = { "echo alpha", "echo beta >&2; exit 3", "sleep 30", "printf 'x%.0s' $(seq 1 5)",
             "yes | head -n 1000 | wc -l", "sleep 0.2; echo late" }
  else cmds[#cmds + 1] = a end
  i = i + 1
end
if #cmds == 0 then
  io.stderr:write("usage: moonloop scripts/jobs.lua [-j N] [-t SECONDS] 'cmd' ... | --demo\n")
  os.exit(2)
end

local limit = asyncio.Semaphore(width)

-- Runs one command under the semaphore; returns a record of what happened.
local async function run(n, cmd)
  local _ <close> = await limit:acquire()
  local p = await asyncio.create_subprocess_shell(cmd, {
    stdout = asyncio.PIPE, stderr = asyncio.PIPE, stdin = asyncio.DEVNULL,
    start_new_session = true })   -- its own process group: kill reaches its children too
  local ok, out, err = pcall(function()
    return await asyncio.wait_for(p:communicate(), deadline)
  end)
  if not ok then
    if not asyncio.isinstance(out, asyncio.TimeoutError) then error(out, 0) end
    os.execute("kill -KILL -" .. p.pid .. " 2>/dev/null")   -- the whole group
    p:kill()
    await p:wait()
    return { n = n, cmd = cmd, status = "killed after " .. deadline .. " s", out = "", err = "" }
  end
  return { n = n, cmd = cmd, status = "exit " .. p.returncode, out = out, err = err }
end

local jobs = {}
for n, cmd in ipairs(cmds) do jobs[n] = run(n, cmd) end
local results = await asyncio.gather(table.unpack(jobs))
local failed = 0
for _, r in ipairs(results) do
  print(string.format("[%d] %-32s %s", r.n, r.cmd, r.status))
  if r.out ~= "" then print("    out: " .. r.out:gsub("\n$", ""):gsub("\n", "\n         ")) end
  if r.err ~= "" then print("    err: " .. r.err:gsub("\n$", ""):gsub("\n", "\n         ")) end
  if r.status ~= "exit 0" then failed = failed + 1 end
end
print(string.format("%d jobs, %d at a time: %d ok, %d failed or killed", #results, width,
                    #results - failed, failed))
