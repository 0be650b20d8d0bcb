-- parked.lua: memory per parked task (benchmark 7); baseline: parked_coro.lua.
--
-- usage: moonloop parked.lua [N]
--
-- N tasks, each awaiting the same pending Future, kept in a list table.
-- Prints
--   RESULT parked_tasks <heap bytes per task> <N> rss=<RSS bytes per task>
-- where heap is the growth of collectgarbage("count") across the creation
-- (after full collections on both sides), and RSS the growth of the
-- process's resident set.

local asyncio = require "asyncio"

local PAGE = 4096  -- x86-64 and arm64 Linux

local function rss()
  local f = io.open("/proc/self/statm")
  if not f then return 0 end
  local _, resident = f:read("n", "n")
  f:close()
  return (resident or 0) * PAGE
end

local function settle()
  collectgarbage()
  collectgarbage()
  return collectgarbage("count") * 1024, rss()
end

local n = tonumber(arg and arg[1]) or 100000
local fut = asyncio.Future()
local park = async function(f) return await f end

local h0, r0 = settle()
local tasks = {}
for i = 1, n do tasks[i] = asyncio.create_task(park(fut)) end
await asyncio.sleep(0)  -- every task runs to its await and parks there
local h1, r1 = settle()

fut:set_result(true)
await asyncio.gather(table.unpack(tasks, 1, n))
print(string.format("RESULT parked_tasks %.1f %d rss=%.1f",
                    (h1 - h0) / n, n, (r1 - r0) / n))
