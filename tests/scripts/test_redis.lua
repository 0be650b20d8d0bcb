-- scripts/redis.lua, the example Redis client on moonloop streams, against
-- the real redis-server from Debian's packages (started here on a free
-- port of 127.0.0.1, without persistence, and stopped), from one task,
-- from many tasks on one connection, and from the workers of
-- `moonloop --workers 2` running scripts/hits.lua.
local T = require "asyncio.test"
io.stdout:setvbuf("line")
package.path = "scripts/?.lua;" .. package.path
local redis = require "redis"
local P = dofile("tests/scripts/lib/procs.lua")
P.install()
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"
local PIPE, DEVNULL = asyncio.PIPE, asyncio.DEVNULL

-- Starts redis-server; returns its port once it accepts connections.
local async function start_redis()
  local port = P.free_port()
  local p = await P.spawn(false, "redis-server", "--port", tostring(port), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--protected-mode", "no",
                          { stdout = PIPE, stderr = asyncio.STDOUT, stdin = DEVNULL })
  local log = {}
  while true do  -- bounded by the case's timeout; ends at the line or at end of file
    local line = await p.stdout:readline()
    if line == "" then error("redis-server did not start:\n" .. table.concat(log), 0) end
    log[#log + 1] = line
    if line:find("Ready to accept connections", 1, true) then break end
  end
  -- its later lines are not read: a pipe full of them would block it
  asyncio.create_task(function() while (await p.stdout:read(65536)) ~= "" do end end)
  return port, p
end

T.case("replies: status, bulk, integer, nil, arrays, errors", async function()
  local port = await start_redis()
  local r = await redis.connect("127.0.0.1", port)
  T.eq(await r:call("PING"), "PONG", "status")
  T.eq(await r:call("SET", "k", "a\r\nb\0c"), "OK", "SET")
  T.eq(await r:call("GET", "k"), "a\r\nb\0c", "a bulk string with CRLF and NUL in it")
  T.eq(await r:call("SET", "e", ""), "OK", "SET empty")
  T.eq(await r:call("GET", "e"), "", "an empty bulk string")
  T.eq(await r:call("GET", "missing"), nil, "a nil bulk string")
  T.eq(await r:call("INCRBY", "n", -5), -5, "a negative integer")
  T.eq(math.type(await r:call("INCRBY", "n", 9007199254740993)), "integer", "an integer stays one")
  T.eq(await r:call("GET", "n"), "9007199254740988", "64 bits, exactly")
  T.eq(await r:call("SET", "f", 0.1), "OK", "a float argument")
  T.eq(await r:call("GET", "f"), "0.10000000000000001", "written with all its digits")
  T.eq(await r:call("MGET", "k", "missing", "e"), { n = 3, "a\r\nb\0c", nil, "" }, "an array with a nil")
  T.eq(await r:call("LRANGE", "nolist", 0, -1), { n = 0 }, "an empty array")
  T.eq(await r:call("BLPOP", "nolist", "0.01"), nil, "a nil array (BLPOP timed out)")
  T.eq(await r:call("EVAL", "return {1, {'x', {2}}, redis.status_reply('fine')}", 0),
       { n = 3, 1, { n = 2, "x", { n = 1, 2 } }, "fine" }, "nested arrays")
  local e = T.raises(redis.Error, r:call("NOSUCHCOMMAND", "x"), "an unknown command")
  T.eq(e.kind, "ERR", "its kind")
  T.match(tostring(e), "^RedisError: ERR unknown command 'NOSUCHCOMMAND'", "its message")
  await r:call("RPUSH", "list", "v")
  e = T.raises(redis.Error, r:call("INCR", "list"), "a command on the wrong type")
  T.eq(e.kind, "WRONGTYPE", "WRONGTYPE")
  -- Inside an array (EXEC's results) an error reply is a value.
  T.eq(await r:call("MULTI"), "OK", "MULTI")
  T.eq(await r:call("INCR", "m"), "QUEUED", "queued")
  T.eq(await r:call("INCR", "list"), "QUEUED", "queued")
  local res = await r:call("EXEC")
  T.eq(res.n, 2, "two results")
  T.eq(res[1], 1, "the first")
  T.ok(asyncio.isinstance(res[2], redis.Error) and res[2].kind == "WRONGTYPE", "the second is an Error value")
  T.eq(await r:call("PING"), "PONG", "still in step")
  r:close()
  await r:wait_closed()
end)

T.case("bad arguments, a closed connection and a server that goes away", async function()
  local port, server = await start_redis()
  local r = await redis.connect("127.0.0.1", port)
  local e = T.raises(asyncio.TypeError, function() return r:call("SET", "k", {}) end, "a table argument")
  T.match(tostring(e), "argument 3 of SET must be a string or a number, got table", "named")
  T.raises(asyncio.TypeError, function() return r:call("SET", "k", nil, "x") end, "a nil argument")
  T.raises(asyncio.TypeError, function() return r:pipeline({ "GET k" }) end, "a command not a table")
  T.eq(await r:call("PING"), "PONG", "nothing was sent for them")
  -- A call waiting when the server dies fails, and so do later ones.
  local blocked = asyncio.create_task(r:call("BLPOP", "never", 0))
  await T.settle()  -- it has sent its command and waits for the reply
  server:kill()
  await server:wait()
  e = T.raises(asyncio.ConnectionError, blocked, "the waiting call")
  T.match(tostring(e):lower(), "connection", "why: " .. tostring(e))
  T.raises(asyncio.ConnectionError, r:call("PING"), "a later call")
  r:close()
end)

T.case("a pipeline: the commands in one write, the replies in order, errors raised after all", async function()
  local port = await start_redis()
  local r = await redis.connect("127.0.0.1", port)
  local cmds = {}
  for i = 1, 1000 do cmds[i] = { "INCR", "p" } end
  local res = await r:pipeline(cmds)
  T.eq(res.n, 1000, "1000 replies")
  local inorder = true
  for i = 1, 1000 do inorder = inorder and res[i] == i end
  T.ok(inorder, "each reply is its command's: 1 .. 1000")
  local e = T.raises(redis.Error, r:pipeline({ { "SET", "a", "1" }, { "HGET", "a", "f" }, { "INCR", "a" },
                                               { "NOSUCH" } }), "an error in the pipeline")
  T.eq(e.index, 2, "the first error is raised, with the command's number")
  T.eq(e.kind, "WRONGTYPE", "its kind")
  T.eq(await r:call("GET", "a"), "2", "the commands after it ran too")
  T.eq(await r:call("PING"), "PONG", "and the connection is in step")
  r:close()
end)

T.case("many tasks on one connection: pipelined, each gets its own reply", async function()
  local port = await start_redis()
  local r = await redis.connect("127.0.0.1", port)
  local tasks = {}
  for t = 1, 50 do
    tasks[t] = asyncio.create_task(function()
      local last, ok = 0, true
      for i = 1, 20 do
        local v = await r:call("INCR", "c")
        ok = ok and v > last
        last = v
        T.eq(await r:call("ECHO", "task " .. t .. " call " .. i), "task " .. t .. " call " .. i, "its own reply")
      end
      return ok
    end)
  end
  local oks = await asyncio.gather(table.unpack(tasks))
  for t = 1, 50 do T.ok(oks[t], "task " .. t .. "'s counts went up") end
  T.eq(await r:call("GET", "c"), "1000", "50 x 20 increments, none lost")
  -- A caller cancelled while it waits: its reply is read and dropped.
  local r2 = await redis.connect("127.0.0.1", port)
  local waiting = asyncio.create_task(r:call("BLPOP", "q", 0))
  await T.settle()
  waiting:cancel()
  T.raises(asyncio.CancelledError, waiting, "cancelled")
  local after = asyncio.create_task(r:call("ECHO", "after"))
  await T.settle()
  T.eq(await r2:call("RPUSH", "q", "for the cancelled one"), 1, "BLPOP's answer is on its way")
  T.eq(await after, "after", "the next caller gets its own reply, not BLPOP's")
  r:close()
  r2:close()
end)

T.case("the reply parser over arbitrary chunks", async function()
  local wire = "+OK\r\n-ERR no\r\n:-42\r\n$5\r\na\r\nbc\r\n$0\r\n\r\n$-1\r\n*-1\r\n"
    .. "*3\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n-WRONGTYPE t\r\n*0\r\n"
  local async function parse_all(chunks)
    local reader = asyncio.StreamReader()
    local feeder = asyncio.create_task(function()
      for _, c in ipairs(chunks) do
        reader:feed_data(c)
        await asyncio.sleep(0)  -- the parser reads what there is before the next chunk
      end
      reader:feed_eof()
    end)
    local out = {}
    for i = 1, 9 do out[i] = await redis.read_reply(reader) end
    await feeder
    return out
  end
  local function check(out, what)
    T.eq(out[1], "OK", what .. ": status")
    T.ok(asyncio.isinstance(out[2], redis.Error) and out[2].message == "ERR no", what .. ": error")
    T.eq(out[3], -42, what .. ": integer")
    T.eq(out[4], "a\r\nbc", what .. ": bulk")
    T.eq(out[5], "", what .. ": empty bulk")
    T.eq(out[6], nil, what .. ": nil bulk")
    T.eq(out[7], nil, what .. ": nil array")
    T.eq(out[8][1], 1, what .. ": array")
    T.eq(out[8][2], { n = 2, "x", nil }, what .. ": nested array")
    T.ok(asyncio.isinstance(out[8][3], redis.Error) and out[8][3].kind == "WRONGTYPE", what .. ": error in array")
    T.eq(out[9], { n = 0 }, what .. ": empty array")
  end
  local bytes = {}
  for i = 1, #wire do bytes[i] = wire:sub(i, i) end
  check(await parse_all(bytes), "one byte at a time")
  for cut = 1, #wire - 1 do  -- every place one split can fall
    check(await parse_all({ wire:sub(1, cut), wire:sub(cut + 1) }), "split at " .. cut)
  end
  math.randomseed(18)
  for _ = 1, 20 do
    local chunks, i = {}, 1
    while i <= #wire do
      local n = math.random(1, 7)
      chunks[#chunks + 1] = wire:sub(i, i + n - 1)
      i = i + n
    end
    check(await parse_all(chunks), "random chunks")
  end
  -- Bad input and a short read.
  local function reader_of(s)
    local rd = asyncio.StreamReader()
    rd:feed_data(s)
    rd:feed_eof()
    return rd
  end
  T.raises(redis.ProtocolError, redis.read_reply(reader_of("?what\r\n")), "an unknown type")
  T.raises(redis.ProtocolError, redis.read_reply(reader_of(":12x\r\n")), "a bad integer")
  T.raises(redis.ProtocolError, redis.read_reply(reader_of("$-2\r\n")), "a bad length")
  T.raises(redis.ProtocolError, redis.read_reply(reader_of("$2\r\nabcd")), "a bulk without its CRLF")
  T.raises(asyncio.IncompleteReadError, redis.read_reply(reader_of("$10\r\nabc")), "end of file in a bulk")
end)

T.case("two workers share one counter in Redis (scripts/hits.lua)", async function()
  local rport = await start_redis()
  local port = P.free_port()
  local sup = await P.spawn(true, BIN, "--workers", "2", "--listen", "127.0.0.1:" .. port,
                            "scripts/hits.lua", tostring(port), tostring(rport),
                            { stdout = DEVNULL, stderr = PIPE, start_new_session = true })
  local ready = 0
  while ready < 2 do
    local line = await sup.stderr:readline()
    T.ok(line ~= "", "the supervisor runs")
    if line:find("%) ready") then ready = ready + 1 end
  end
  local async function get(path)
    local rd, wr = await asyncio.open_connection("127.0.0.1", port)
    wr:write("GET " .. path .. " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    local resp = await rd:read()
    wr:close()
    return resp:match("\r\n\r\n(.*)$")
  end
  -- Both workers connected to Redis before they were ready.
  T.eq(await get("/workers"), "0 1\n", "both workers are in Redis")
  -- 40 requests, 8 at a time, over new connections: whichever worker
  -- answers, the numbers are 1 .. 40, each once.
  local seen, n = {}, 40
  local sem = asyncio.Semaphore(8)
  local tasks = {}
  for i = 1, n do
    tasks[i] = asyncio.create_task(function()
      await sem:acquire()
      local body = await get("/")
      sem:release()
      return body
    end)
  end
  for _, body in ipairs(await asyncio.gather(table.unpack(tasks))) do
    local hit, w = body:match("^hit (%d+) %(worker (%d)%)\n$")
    T.ok(hit, "an answer: " .. body)
    seen[tonumber(hit)] = (seen[tonumber(hit)] or 0) + 1
  end
  for i = 1, n do T.eq(seen[i], 1, "hit " .. i .. " given once") end
  local r = await redis.connect("127.0.0.1", rport)
  T.eq(await r:call("GET", "hits"), tostring(n), "the count in Redis")
  r:close()
  T.sh("kill -TERM " .. sup.pid)
  T.eq(await sup:wait(), 0, "the workers stopped cleanly")
end)

T.run({ timeout = 30 })
