-- The fuzz properties of tests/fuzz/ that are written in Lua, run by make
-- test on each target's committed seed corpus and on a fixed series of
-- random inputs, so that a divergence the fuzzer once found (its input is
-- added to the corpus) stays fixed without clang.  docs/reliability.md.
local T = require "asyncio.test"
local SR = dofile("tests/fuzz/stream_reader.lua")

local function corpus(dir)
  local files = {}
  local p = assert(io.popen("ls " .. dir))
  for name in p:lines() do files[#files + 1] = dir .. "/" .. name end
  p:close()
  return files
end

local function slurp(path)
  local f = assert(io.open(path, "rb")); local s = f:read("a"); f:close(); return s
end

T.case("the StreamReader property holds on every input of its seed corpus", async function()
  local files = corpus("tests/fuzz/stream_reader")
  T.ok(#files >= 10, "the corpus is there")
  for _, path in ipairs(files) do
    local ok, err = pcall(SR.check, slurp(path))
    T.ok(ok, path .. ": " .. tostring(err))
  end
end)

T.case("the StreamReader property holds on 2,000 random inputs (fixed seed)", async function()
  math.randomseed(19)
  local alphabet = { "\n", "a", "b", "\r", "=" }
  for i = 1, 2000 do
    local t = {}
    for j = 1, math.random(0, 160) do
      local x = math.random()
      t[j] = x < 0.5 and alphabet[math.random(#alphabet)] or string.char(math.random(0, 255))
    end
    local d = table.concat(t)
    local ok, err = pcall(SR.check, d)
    if not ok then T.ok(false, string.format("input %d %q: %s", i, d, tostring(err))) end
  end
end)

T.case("a divergence is reported, not missed (the property can fail)", async function()
  -- The property's own check, on a reader that lies: a readline that
  -- drops a byte must be caught as bytes out ~= bytes in.
  local real = asyncio.StreamReader
  local ok, err
  asyncio.StreamReader = function(limit)
    local r = real(limit)
    local inner = r.readline
    r.readline = async function(self)
      local line = await inner(self)
      return line:sub(2)
    end
    return r
  end
  ok, err = pcall(SR.check, "\63\3\0\4ab\n\7")
  asyncio.StreamReader = real
  T.eq(ok, false, "the lying reader fails the property")
  T.match(tostring(err), "readline", "the message names the call")
end)

T.run()
