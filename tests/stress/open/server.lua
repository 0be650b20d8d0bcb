-- A workload of a streams server for the stress modes (docs/reliability.md;
-- NOT run by make test: the allocation-failure mode still finds hangs in
-- the accept path, listed there as open.  Run it by hand with
-- tests/stress/run.sh build/moonloop tests/stress/open/server.lua): a
-- server and a client on 127.0.0.1, lines, readexactly, readuntil, EOF,
-- and a StreamReader fed by hand.  It checks its own results and prints
-- "server ok".
local function check(c, what) if not c then error("wrong result: " .. what, 0) end end
-- A pcall'd call that ran out of memory (a MemoryError, or Lua's own
-- "not enough memory" string, which pcall in a script sees): it goes on.
local function mem(ok, e)
  if not ok and (asyncio.isinstance(e, asyncio.MemoryError) or e == "not enough memory") then error(e, 0) end
  return ok, e
end

local async function handler(r, w)
  while true do
    local line = await r:readline()
    if line == "" then break end
    w:write(line:upper())
    await w:drain()
  end
  w:close()
end

local async function main()
  local srv = await asyncio.start_server(handler, "127.0.0.1", 0)
  local port = srv.sockets[1]:getsockname()[2]
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  for i = 1, 3 do
    w:write("line " .. i .. "\n")
    await w:drain()
    check(await r:readline() == "LINE " .. i .. "\n", "echo " .. i)
  end
  w:write("abc;defgh\n")
  check(await r:readuntil(";") == "ABC;", "readuntil")
  check(await r:readexactly(6) == "DEFGH\n", "readexactly")
  w:write_eof()
  check(await r:read() == "", "eof")
  w:close()
  await w:wait_closed()
  srv:close()
  await srv:wait_closed()
  local sr = asyncio.StreamReader(8)
  sr:feed_data("ab\ncd")
  sr:feed_eof()
  check(await sr:readline() == "ab\n", "fed line")
  local ok, e = mem(pcall(function() return await sr:readexactly(5) end))
  check(not ok and asyncio.isinstance(e, asyncio.IncompleteReadError) and e.partial == "cd", "incomplete")
  print("server ok")
end

asyncio.run(main())
