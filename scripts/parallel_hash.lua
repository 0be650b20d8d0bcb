-- parallel_hash.lua: CPU-heavy work spread over worker threads with
-- asyncio.to_thread.  Hashes chunks of data (FNV-1a, in plain Lua) on the
-- default thread pool while the loop stays responsive (a ticker keeps
-- running), and checks the result against the same work done inline.
--
--   moonloop scripts/parallel_hash.lua [CHUNKS [KIB_PER_CHUNK]]
local asyncio = require "asyncio"

local args = { ... }
local nchunks = tonumber(args[1]) or 8
local kib = tonumber(args[2]) or 128

-- FNV-1a, 32 bits.  Copied to each worker with its upvalues (none here
-- but the string library's functions, looked up again in the worker).
local byte = string.byte
local function fnv1a(s)
  local h = 0x811c9dc5
  for i = 1, #s do
    h = ((h ~ byte(s, i)) * 0x01000193) & 0xffffffff
  end
  return h
end

-- Makes chunk i in the worker (only the small arguments cross threads).
local function make_chunk(i, size)
  local parts, x = {}, i
  for j = 1, size // 8 do
    x = (x * 1103515245 + 12345) & 0x7fffffff
    parts[j] = string.format("%08x", x)
  end
  return table.concat(parts)
end

local function job(i, size) return fnv1a(make_chunk(i, size)) end

local ticks = 0
local ticker = asyncio.create_task(function()
  while true do await asyncio.sleep(0.01); ticks = ticks + 1 end
end)

local jobs = {}
for i = 1, nchunks do jobs[i] = asyncio.to_thread(job, i, kib * 1024) end
local hashes = await asyncio.gather(table.unpack(jobs))
ticker:cancel()

local combined = 0
for i = 1, nchunks do combined = fnv1a(string.format("%d:%08x", combined, hashes[i])) end

-- The same work inline, to check the threads' answers.
for i = 1, nchunks do
  assert(job(i, kib * 1024) == hashes[i], "chunk " .. i .. " differs")
end
print(string.format("hashed %d chunks of %d KiB in worker threads: %08x", nchunks, kib, combined))
print(string.format("the loop kept running meanwhile: %s", ticks > 0 and "yes" or "no (too fast to tell)"))
