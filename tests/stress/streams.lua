-- A workload of the streams for the stress modes (docs/reliability.md, run
-- by tests/stress/run.sh in make test): a stream pair over a socket pair
-- (open_connection with sock=) talking to a raw socket peer, lines,
-- readuntil, readexactly, EOF, and a StreamReader fed by hand.  (The
-- server's accept path is tests/stress/server.lua.)  It checks its own
-- results and prints "streams ok".
local socket = require "socket"
local function check(c, what) if not c then error("wrong result: " .. what, 0) end end
-- A pcall'd call that ran out of memory (a MemoryError, or Lua's own
-- "not enough memory" string, which pcall in a script sees): it goes on.
local function mem(ok, e)
  if not ok and (asyncio.isinstance(e, asyncio.MemoryError) or e == "not enough memory") then error(e, 0) end
  return ok, e
end

local async function main()
  local a, b = socket.socketpair()
  local r, w = await asyncio.open_connection({ sock = a })
  local pr, pw = await asyncio.open_connection({ sock = b })
  for i = 1, 3 do
    w:write("line " .. i .. "\n")
    await w:drain()
    local line = await pr:readline()
    check(line == "line " .. i .. "\n", "line " .. i)
    pw:write(line:upper())
    await pw:drain()
    check(await r:readline() == "LINE " .. i .. "\n", "echo " .. i)
  end
  pw:write("ABC;DEFGH\n")
  await pw:drain()
  check(await r:readuntil(";") == "ABC;", "readuntil")
  check(await r:readexactly(6) == "DEFGH\n", "readexactly")
  pw:write_eof()
  check(await r:read() == "", "eof")
  w:close()
  pw:close()
  await w:wait_closed()
  await pw:wait_closed()
  local sr = asyncio.StreamReader(8)
  sr:feed_data("ab\ncd")
  sr:feed_eof()
  check(await sr:readline() == "ab\n", "fed line")
  local ok, e = mem(pcall(function() return await sr:readexactly(5) end))
  check(not ok and asyncio.isinstance(e, asyncio.IncompleteReadError) and e.partial == "cd", "incomplete")
  print("streams ok")
end

asyncio.run(main())
