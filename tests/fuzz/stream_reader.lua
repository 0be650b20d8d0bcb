-- stream_reader.lua: the StreamReader fuzz property (issue #19), shared by
-- the libFuzzer target tests/fuzz/stream_reader.c and by make test
-- (tests/scripts/test_fuzz_corpus.lua runs it over the seed corpus and
-- random inputs).  Returns check(data), a function to run in a task: it
-- raises (a plain string naming the input's divergence) when the
-- property fails.
--
-- The input decides everything: the reader's limit, the chunks fed (their
-- boundaries, contents, and where feed_eof falls) and the sequence of
-- read calls (readline, readuntil with one separator or a list of two,
-- readexactly(n), read(n)).  One task makes the read calls in order on a
-- real asyncio.StreamReader while this one feeds a chunk at a time,
-- waiting after each until the reader has parked again (or finished), so
-- the reader sees each chunk on its own.  The same schedule drives a
-- model written from CPython's asyncio/streams.py (3.13) on a plain
-- string.  Properties:
--   * every call gives the model's result: the same bytes, or the same
--     error (IncompleteReadError with the same partial and expected,
--     LimitOverrunError with the same message and consumed, readline's
--     ValueError), exactly when the model raises it;
--   * bytes out == bytes in, in order: what the calls returned (values,
--     IncompleteReadError partials, the bytes readline dropped with a
--     ValueError) followed by what is left == everything fed;
--   * once EOF is fed, every call finishes (none hangs).

local byte, sub = string.byte, string.sub

-- Decodes the input into a limit, a list of feeds (strings; true = EOF)
-- and a list of read calls.
local function decode(data)
  local pos, n = 1, #data
  local function b()
    local v = byte(data, pos); pos = pos + 1; return v or 0
  end
  local function bytes(k)
    local s = sub(data, pos, pos + k - 1); pos = pos + k; return s
  end
  local limit = 1 + b() % 24
  local feeds, reads = {}, {}
  while pos <= n do
    local o = b() % 8
    if o <= 2 then
      feeds[#feeds + 1] = bytes(b() % 40)
    elseif o == 3 then
      reads[#reads + 1] = { "readline" }
    elseif o == 4 then
      local k = b()
      local s1 = bytes(1 + k % 3)
      if s1 == "" then s1 = "\n" end
      if k >= 128 then
        local s2 = bytes(1 + (k >> 2) % 3)
        if s2 == "" then s2 = "\n" end
        reads[#reads + 1] = { "readuntil", { s1, s2 } }
      else
        reads[#reads + 1] = { "readuntil", s1 }
      end
    elseif o == 5 then
      reads[#reads + 1] = { "readexactly", b() % 40 }
    elseif o == 6 then
      reads[#reads + 1] = { "read", b() % 41 - 1 }
    else
      feeds[#feeds + 1] = true
    end
  end
  return limit, feeds, reads
end

-- The model: CPython's StreamReader on a string buffer; wait() yields the
-- model's coroutine until the driver feeds it.  Each call returns an
-- outcome {kind, value, extra} and the bytes it took off the stream.
local function model(limit)
  local M = { buf = "", eof = false }
  local function wait() coroutine.yield("wait") end

  local function readuntil(seps)
    if type(seps) == "string" then seps = { seps } end
    local sorted = { table.unpack(seps) }
    table.sort(sorted, function(x, y) return #x < #y end)
    local minlen, maxlen = #sorted[1], #sorted[#sorted]
    local offset = 0
    local mstart, mend
    while true do
      local buflen = #M.buf
      if buflen - offset >= minlen then
        for _, sep in ipairs(sorted) do
          local i = string.find(M.buf, sep, offset + 1, true)
          if i then
            local e = i - 1 + #sep
            if mend == nil or e < mend then mend, mstart = e, i - 1 end
          end
        end
        if mend then break end
        offset = math.max(0, buflen + 1 - maxlen)
        if offset > limit then
          return { "LimitOverrunError", "Separator is not found, and chunk exceed the limit", offset }, ""
        end
      end
      if M.eof then
        local chunk = M.buf
        M.buf = ""
        return { "IncompleteReadError", chunk, nil }, chunk
      end
      wait()
    end
    if mstart > limit then
      return { "LimitOverrunError", "Separator is found, but chunk is longer than limit", mstart }, ""
    end
    local chunk = sub(M.buf, 1, mend)
    M.buf = sub(M.buf, mend + 1)
    return { "ok", chunk }, chunk
  end

  function M.call(op)
    local name, arg = op[1], op[2]
    if name == "readline" then
      local out, took = readuntil("\n")
      if out[1] == "ok" then return out, took end
      if out[1] == "IncompleteReadError" then return { "ok", out[2] }, took end
      local consumed = out[3]
      local dropped
      if sub(M.buf, consumed + 1, consumed + 1) == "\n" then
        dropped = sub(M.buf, 1, consumed + 1)
      else
        dropped = M.buf
      end
      M.buf = sub(M.buf, #dropped + 1)
      return { "ValueError", out[2] }, dropped
    elseif name == "readuntil" then
      return readuntil(arg)
    elseif name == "readexactly" then
      while #M.buf < arg do
        if M.eof then
          local partial = M.buf
          M.buf = ""
          return { "IncompleteReadError", partial, arg }, partial
        end
        wait()
      end
      local s = sub(M.buf, 1, arg)
      M.buf = sub(M.buf, arg + 1)
      return { "ok", s }, s
    else  -- read(n)
      if arg == 0 then return { "ok", "" }, "" end
      if arg < 0 then
        while not M.eof do wait() end
        local s = M.buf
        M.buf = ""
        return { "ok", s }, s
      end
      if M.buf == "" and not M.eof then wait() end
      local s = sub(M.buf, 1, arg)
      M.buf = sub(M.buf, arg + 1)
      return { "ok", s }, s
    end
  end
  return M
end

local function show(s)
  return (string.format("%q", s):gsub("\\\n", "\\n"))
end

local function describe(out)
  if out == nil then return "(no result: the call never finished)" end
  local parts = { out[1] }
  for i = 2, 3 do
    local v = out[i]
    parts[#parts + 1] = type(v) == "string" and show(v) or tostring(v)
  end
  return table.concat(parts, " ")
end

-- The real reader's outcome of one call, in the model's form.
local function real_call(r, op)
  local name, arg = op[1], op[2]
  local ok, res = pcall(function()
    if name == "readline" then return await r:readline()
    elseif name == "readuntil" then return await r:readuntil(arg)
    elseif name == "readexactly" then return await r:readexactly(arg)
    else return await r:read(arg) end
  end)
  if ok then return { "ok", res } end
  if asyncio.isinstance(res, asyncio.IncompleteReadError) then
    return { "IncompleteReadError", res.partial, res.expected }
  elseif asyncio.isinstance(res, asyncio.LimitOverrunError) then
    return { "LimitOverrunError", res.message, res.consumed }
  elseif asyncio.isinstance(res, asyncio.ValueError) then
    return { "ValueError", res.message }
  end
  error("unexpected error from " .. name .. ": " .. tostring(res), 0)
end

local function same(a, b)
  return a ~= nil and b ~= nil and a[1] == b[1] and a[2] == b[2] and a[3] == b[3]
end

-- The property, for one input.  Raises a message on failure.
local function check(data)
  local limit, feeds, reads = decode(data)
  local r = asyncio.StreamReader(limit)
  local real, done = {}, false
  local task = asyncio.create_task((async function()
    for i, op in ipairs(reads) do real[i] = real_call(r, op) end
    done = true
  end)())
  -- Lets the reader run until it parks again or is finished.
  local function settle()
    for _ = 1, 1000 do
      if done or task:done() or string.find(tostring(r), " waiting", 1, true) then return end
      await asyncio.sleep(0)
    end
    error("the reader neither parked nor finished in 1000 iterations", 0)
  end

  local M = model(limit)
  local mout, mtook = {}, {}
  local mco = coroutine.create(function()
    for i, op in ipairs(reads) do
      mout[i], mtook[i] = M.call(op)
    end
    return "done"
  end)
  local function mstep()
    if coroutine.status(mco) == "dead" then return end
    local ok, err = coroutine.resume(mco)
    if not ok then error("model failed: " .. tostring(err), 0) end
  end

  local fed = {}
  mstep()
  settle()
  local eof = false
  local function feed_eof()
    eof = true
    r:feed_eof()
    M.eof = true
    mstep()
    settle()
  end
  for _, f in ipairs(feeds) do
    if f == true then
      feed_eof()
      break
    end
    fed[#fed + 1] = f
    r:feed_data(f)
    M.buf = M.buf .. f
    if f ~= "" then mstep() end  -- feed_data(b"") wakes nobody, in both
    settle()
  end
  if not eof then feed_eof() end
  if not (done or task:done()) then
    error(string.format("a call hangs after EOF: call %d %s", #real + 1,
                        tostring(reads[#real + 1] and reads[#real + 1][1])), 0)
  end
  if task:done() and not done then
    error("the reader task failed: " .. tostring(task:exception()), 0)
  end
  if coroutine.status(mco) ~= "dead" then error("model did not finish after EOF", 0) end
  for i, op in ipairs(reads) do
    if not same(real[i], mout[i]) then
      error(string.format("limit %d, call %d %s(%s): got %s, expected %s", limit, i, op[1],
                          type(op[2]) == "table" and table.concat(op[2], "|") or tostring(op[2]),
                          describe(real[i]), describe(mout[i])), 0)
    end
  end
  -- Conservation, on the real reader's results (a ValueError's dropped
  -- bytes are the model's, the only part not visible from outside).
  local rest = await r:read()
  if rest ~= M.buf then
    error(string.format("left in the buffer: %s, expected %s", show(rest), show(M.buf)), 0)
  end
  local out = {}
  for i, o in ipairs(real) do
    if o[1] == "ok" or o[1] == "IncompleteReadError" then out[#out + 1] = o[2]
    elseif o[1] == "ValueError" then out[#out + 1] = mtook[i] end
  end
  out[#out + 1] = rest
  local got, want = table.concat(out), table.concat(fed)
  if got ~= want then
    error(string.format("bytes out %s ~= bytes in %s", show(got), show(want)), 0)
  end
  return #reads
end

return { check = check, decode = decode }
