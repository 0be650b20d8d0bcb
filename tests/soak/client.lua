-- The soak's load (tests/soak/soak.sh): CONNS connections to 127.0.0.1:PORT,
-- each sending a 64-byte message every INTERVAL seconds and checking the
-- echo, for SECONDS seconds.  Prints "connected N" when every connection
-- is up, then "messages M errors E" at the end; exits 1 on any error.
local port, conns, seconds, interval = tonumber(arg[1]), tonumber(arg[2]), tonumber(arg[3]), tonumber(arg[4])
local messages, errors, first_error = 0, 0, nil

local async function one(i, r, w, deadline)
  local loop = asyncio.get_running_loop()
  local msg = string.format("%-63d\n", i)
  local ok, err = pcall(function()
    while loop:time() < deadline do
      w:write(msg)
      await w:drain()
      local back = await r:readexactly(64)
      if back ~= msg then error("wrong echo on connection " .. i, 0) end
      messages = messages + 1
      await asyncio.sleep(interval * (0.5 + math.random()))
    end
  end)
  if not ok then
    errors = errors + 1
    first_error = first_error or tostring(err)
  end
  w:close()
  pcall(function() await w:wait_closed() end)
end

asyncio.run((async function()
  local pairs_ = {}
  for b = 1, conns, 50 do  -- in batches, so the listen backlog is never the limit
    local batch = {}
    for i = b, math.min(b + 49, conns) do
      batch[#batch + 1] = (async function()
        local r, w = await asyncio.open_connection("127.0.0.1", port)
        return { r, w }
      end)()
    end
    local got = await asyncio.gather(table.unpack(batch))
    for _, rw in ipairs(got) do pairs_[#pairs_ + 1] = rw end
  end
  print("connected " .. #pairs_)
  io.stdout:flush()
  local deadline = asyncio.get_running_loop():time() + seconds
  local tasks = {}
  for i, rw in ipairs(pairs_) do tasks[i] = one(i, rw[1], rw[2], deadline) end
  await asyncio.gather(table.unpack(tasks))
  print(string.format("messages %d errors %d%s", messages, errors,
                      first_error and (" (first: " .. first_error .. ")") or ""))
  io.stdout:flush()
  if errors > 0 then os.exit(1) end
end)())
