-- parked_coro.lua: the baseline of benchmark 7: bare Lua coroutines.
--
-- usage: moonloop parked_coro.lua [N]      (plain Lua: lua5.4 runs it too)
--
-- N coroutines of one shared function, each resumed once and suspended in
-- coroutine.yield, kept in a list table: the least a parked task could
-- cost.  Prints
--   RESULT parked_coroutines <heap bytes each> <N> rss=<RSS bytes each>
-- measured as parked.lua measures tasks.

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
local token = {}
local function park(x) return coroutine.yield(x) end

local h0, r0 = settle()
local cos = {}
for i = 1, n do
  local co = coroutine.create(park)
  coroutine.resume(co, token)
  cos[i] = co
end
local h1, r1 = settle()

for i = 1, n do coroutine.resume(cos[i]) end
print(string.format("RESULT parked_coroutines %.1f %d rss=%.1f",
                    (h1 - h0) / n, n, (r1 - r0) / n))
