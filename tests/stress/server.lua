-- A workload of a streams server for the stress modes (docs/reliability.md;
-- tests/stress/run.sh runs it): a server and a client on 127.0.0.1, lines,
-- readexactly, readuntil, EOF, and a StreamReader fed by hand.  It checks
-- its own results and prints "server ok".  A connection the server could
-- not set up (out of memory in its accept path) is closed at once and the
-- MemoryError reported to the loop's exception handler, as asyncio does:
-- the client then sees EOF or a reset, and the workload fails naming the
-- memory failure.
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

-- MemoryErrors reported to the exception handler (an accept that ran out).
local reported = 0
local function is_mem(e) return asyncio.isinstance(e, asyncio.MemoryError) or e == "not enough memory" end

local async function main()
  asyncio.get_running_loop():set_exception_handler(function(loop, ctx)
    if is_mem(ctx.exception) then reported = reported + 1 end
    loop:default_exception_handler(ctx)
  end)
  local srv = await asyncio.start_server(handler, "127.0.0.1", 0)
  local port = srv.sockets[1]:getsockname()[2]
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  local ok, e = pcall(function()
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
  end)
  if not ok and not is_mem(e) and reported > 0 then
    -- The server dropped the connection it could not set up.
    error("MemoryError: the server's accept ran out of memory and closed the connection (the client saw: "
          .. tostring(e) .. ")", 0)
  end
  if not ok then error(e, 0) end
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
