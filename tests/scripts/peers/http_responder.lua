-- http_responder.lua: a small HTTP/1.1 server on asyncio.start_server for
-- the worker tests (test_workers.lua) and the workers bench row.  Every
-- response says which worker answered.  Run as
--   moonloop --workers N --listen 127.0.0.1:PORT http_responder.lua PORT
-- Paths:
--   /            "worker ID pid PID\n"
--   /block/NAME  answers, then blocks the whole worker (a synchronous read
--                of the FIFO NAME) until the test writes a line to it:
--                while blocked, the worker accepts nothing
--   /slow        sends half of its body, waits until the worker has begun
--                to stop (its server no longer serves), then sends the rest
-- After its 100th request a worker says so on stderr ("worker ID pid PID:
-- 100 requests"): the tests' sign that a load reaches it.
-- Keep-alive; once the server is closed (the worker stops) each response
-- says "Connection: close" and the connection ends after it, so clients
-- reconnect to another worker without a failed request.
local asyncio = require "asyncio"
local port = assert(tonumber(arg[1]), "usage: http_responder.lua PORT")
local pid = require("asyncio._signal").getpid()
local me = string.format("worker %s pid %d\n", tostring(asyncio.worker_id()), pid)

local srv, serve
local served = 0

local function head(len, close)
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. len
    .. (close and "\r\nConnection: close" or "") .. "\r\n\r\n"
end

-- A client that resets its connection (wrk does, at the end of its run)
-- ends it, like one that closes it.
local async function handle(reader, writer)
  local ok, err = pcall(await, serve(reader, writer))
  writer:close()
  if not ok and not asyncio.isinstance(err, asyncio.ConnectionError) then error(err, 0) end
end

serve = async function(reader, writer)
  while true do
    local line = await reader:readline()
    if line == "" then break end
    local path = line:match("^%u+ (%S+) HTTP/1%.%d\r\n$")
    local close = not srv:is_serving()
    repeat
      line = await reader:readline()
      if line:lower():find("^connection:%s*close") then close = true end
    until line == "\r\n" or line == ""
    if line == "" or not path then break end
    served = served + 1
    if served == 100 then io.stderr:write(me:sub(1, -2) .. ": 100 requests\n") end
    if path:sub(1, 7) == "/block/" then
      writer:write(head(#me, close) .. me)
      await writer:drain()
      local f = assert(io.open(path:sub(8), "r"))  -- blocks until the test opens it to write
      f:read("l")
      f:close()
    elseif path == "/slow" then
      local tail = "completed after the stop began\n"
      writer:write(head(#me + #tail, true) .. me)
      await writer:drain()
      while srv:is_serving() do await asyncio.sleep(0.01) end
      writer:write(tail)
      await writer:drain()
      close = true
    else
      writer:write(head(#me, close) .. me)
      await writer:drain()
    end
    if close then break end
  end
end

srv = await asyncio.start_server(handle, "127.0.0.1", port)
await srv:serve_forever()
