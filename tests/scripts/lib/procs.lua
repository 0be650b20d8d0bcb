-- Processes a test case starts (peers, supervisors, load generators),
-- none of which may outlive it: P.install(T) wraps T.case so that, whatever
-- the case does (passes, fails, times out), every process it started with
-- P.spawn is killed and reaped when it ends, and so are they all if the
-- test itself gets SIGTERM (run.sh's timeout).  A process started with
-- group = true (and start_new_session = true in its options) is killed
-- with its whole process group: a supervisor and its workers.  Also
-- ONLY=text in the environment runs only the cases whose name contains
-- it.  Loaded with dofile (run.sh runs the tests from the repository's
-- root).
local T = require "asyncio.test"
local P = {}

local spawned = {}  -- {proc =, group =} of the running case

local function kill(s)
  T.sh("kill -KILL " .. (s.group and "-" or "") .. s.proc.pid .. " 2>/dev/null")
end

function P.install()
  local only = os.getenv("ONLY")
  local case = T.case
  T.case = function(name, fn)
    if only and not name:find(only, 1, true) then return end
    case(name, async function()
      local ok, err = pcall(function()
        local r = fn()
        if asyncio.iscoroutine(r) then return await(r) end
      end)
      local left = spawned
      spawned = {}
      for _, s in ipairs(left) do
        if s.proc.returncode == nil then
          kill(s)
          await s.proc:wait()
        end
        if s.group then kill(s) end  -- what is left of its group
      end
      if not ok then error(err, 0) end
    end)
  end
  asyncio.get_running_loop():add_signal_handler("SIGTERM", function()
    for _, s in ipairs(spawned) do kill(s) end
    os.exit(1)
  end)
end

-- await P.spawn(group, program, args..., opts): create_subprocess_exec,
-- the process killed at the end of the case.
async function P.spawn(group, ...)
  local p = await asyncio.create_subprocess_exec(...)
  spawned[#spawned + 1] = { proc = p, group = group }
  return p
end

-- A TCP port free on 127.0.0.1 (the kernel's pick, released for the
-- peer to bind).
function P.free_port()
  local socket = require "socket"
  local s = socket.socket()
  s:bind({ "127.0.0.1", 0 })
  local port = s:getsockname()[2]
  s:close()
  return port
end

return P
