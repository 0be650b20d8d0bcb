-- The fuzz properties of tests/fuzz/ that are written in Lua, run by make
-- test on each target's committed seed corpus and on a fixed series of
-- random inputs, so that a divergence the fuzzer once found (its input is
-- added to the corpus) stays fixed without clang.  docs/reliability.md.
local T = require "asyncio.test"
local SR = dofile("tests/fuzz/stream_reader.lua")
local HR = dofile("tests/fuzz/http_request.lua")

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

T.case("the HTTP request-path property holds on its seed corpus, and fds come back", async function()
  local files = corpus("tests/fuzz/http_request")
  HR.check(slurp(files[1]))  -- what the first use opens for good (the loop's)
  HR.close()
  -- Counted once the count holds still: the server's side of the last
  -- connection closes a moment after the client's (no collection: a
  -- socket left to the collector would count as the leak it is).
  local fds = await T.settled_fds()
  T.ok(#files >= 20, "the corpus is there")
  for _, path in ipairs(files) do
    local ok, err = pcall(HR.check, slurp(path))
    T.ok(ok, path .. ": " .. tostring(err))
  end
  HR.close()
  T.eq(await T.settled_fds(), fds, "no descriptor left open")
end)

T.case("the HTTP request-path property holds on 600 random inputs (fixed seed)", async function()
  math.randomseed(16)
  local pieces = { "GET / HTTP/1.1\r\n", "\r\n", "Content-Length: 3\r\n", "Transfer-Encoding: chunked\r\n",
                   "0\r\n\r\n", "abc", "POST /x HTTP/1.1\r\n", " ", ":", "HTTP/1.0\r\n" }
  for i = 1, 600 do
    local t = { string.char(math.random(0, 255)) }
    for j = 1, math.random(0, 60) do
      t[#t + 1] = math.random() < 0.5 and pieces[math.random(#pieces)] or string.char(math.random(0, 255))
    end
    local d = table.concat(t)
    local ok, err = pcall(HR.check, d)
    if not ok then T.ok(false, string.format("input %d %q: %s", i, d, tostring(err))) end
  end
  HR.close()
end)

T.case("the HTTP property catches a wrong answer (it can fail)", async function()
  HR.lie = true
  local ok, err = pcall(HR.check, "\0\255\1\1\1\1\1\1\1\1\1\1")
  HR.lie = nil
  HR.close()
  T.eq(ok, false, "a handler adding a byte fails the property")
  T.match(tostring(err), "the model says", "the message names the divergence")
end)

T.run()
