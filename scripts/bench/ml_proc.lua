-- ml_proc.lua: moonloop's side of the process and thread benchmarks
-- (peers: peer_proc.py, peer_proc.js).
--
-- usage: moonloop ml_proc.lua spawn|tothread|pipe64 [N]
--
-- Prints RESULT <name> <seconds> <ops>, wall time from loop:time():
--   spawn     N sequential spawn + wait of /bin/true (ops: processes)
--   tothread  N sequential to_thread round trips of a trivial function
--   pipe64    reading 64 MiB from a child (head -c) to its end (ops: MiB)
local asyncio = require "asyncio"
local loop = asyncio.get_running_loop()
local bench = {}

bench.spawn = async function(n)
  local t0 = loop:time()
  for _ = 1, n do
    local p = await asyncio.create_subprocess_exec("/bin/true")
    await p:wait()
  end
  return loop:time() - t0, n
end

bench.tothread = async function(n)
  local f = function(x) return x + 1 end
  await asyncio.to_thread(f, 0)  -- the first thread and its state
  local t0 = loop:time()
  for i = 1, n do await asyncio.to_thread(f, i) end
  return loop:time() - t0, n
end

bench.pipe64 = async function()
  local size = 64 * 1024 * 1024
  local t0 = loop:time()
  local p = await asyncio.create_subprocess_exec("head", "-c", tostring(size), "/dev/zero",
                                                 { stdout = asyncio.PIPE })
  local got, r = 0, p.stdout
  while true do
    local chunk = await r:read(1048576)
    if chunk == "" then break end
    got = got + #chunk
  end
  await p:wait()
  assert(got == size, "read " .. got)
  return loop:time() - t0, 64
end

local DEFAULT_N = { spawn = 500, tothread = 5000, pipe64 = 1 }
local name = arg and arg[1]
if not bench[name] then
  io.stderr:write("usage: moonloop ml_proc.lua spawn|tothread|pipe64 [N]\n")
  os.exit(2)
end
local dt, ops = await bench[name](tonumber(arg[2]) or DEFAULT_N[name])
print(string.format("RESULT %s %.6f %d", name, dt, ops))
