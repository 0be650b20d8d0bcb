-- The example scripts under scripts/, run as a user runs them, each with a
-- check of what it prints.
local T = require "asyncio.test"
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"

local function run(args)
  return T.sh("timeout 60 " .. BIN .. " " .. args .. " 2>&1")
end

T.case("hello.lua greets", function()
  local out, st = run("scripts/hello.lua moon")
  T.eq(st, 0, "status"); T.eq(out, "hello, moon\n", "output")
end)

T.case("tour.lua walks through tasks, timers, cancellation and timeouts", function()
  local out, st = run("scripts/tour.lua")
  T.eq(st, 0, "status")
  T.match(out, "gather returned {GATHER 1, GATHER 2}", "gather")
  T.match(out, "sleeper cancelled: true", "cancellation")
  T.match(out, "wait_for raised TimeoutError", "timeout")
  T.match(out, "tour done\n$", "reached the end")
end)

T.case("echo_server.lua and echo_client.lua talk over TCP", async function()
  local log = T.tmpname(".log")
  local pid = T.sh(string.format("%s scripts/echo_server.lua 127.0.0.1 0 > %s 2>&1 & echo $!", BIN, log))
  pid = tonumber(pid)
  local port
  for _ = 1, 100 do  -- bounded: 5 s
    local f = io.open(log)
    local text = f and f:read("a") or ""
    if f then f:close() end
    port = text:match("serving on 127%.0%.0%.1:(%d+)")
    if port then break end
    await asyncio.sleep(0.05)
  end
  T.ok(port, "the server said where it serves")
  local out, st = run("scripts/echo_client.lua 127.0.0.1 " .. port .. " one two")
  os.execute("kill " .. pid .. " 2>/dev/null")
  T.eq(st, 0, "client status")
  T.eq(out, "sent one, got one\nsent two, got two\n", "the echoes")
end)

T.case("chat_server.lua --demo broadcasts joins, messages and quits", function()
  local out, st = run("scripts/chat_server.lua --demo")
  T.eq(st, 0, "status")
  T.match(out, "alice sees bob: hi all", "a broadcast message")
  T.match(out, "alice sees %* carol left", "a quit")
end)

T.case("fetch_many.lua fetches through one http.Session", function()
  local out, st = run("scripts/fetch_many.lua")
  T.eq(st, 0, "status")
  T.match(out, "500 requests, 50 concurrent: 495 ok, 5 not found, 0 failed", "summary")
  local conns = tonumber(out:match("(%d+) connections served them"))
  T.ok(conns and conns <= 50, "the session's pool reused its connections: " .. tostring(conns))
end)

T.case("crawler.lua crawls a local site with a Session and a Semaphore", function()
  local out, st = run("scripts/crawler.lua")
  T.eq(st, 0, "status")
  T.match(out, "crawled 59 pages with 4 workers", "summary")
  T.match(out, "missing: /page/404 %(404%)", "the missing page")
  T.match(out, "timed out after 0.5 s: /page/13", "the slow page")
end)

T.case("pipeline.lua runs stages with backpressure and stops cleanly", function()
  local out, st = run("scripts/pipeline.lua")
  T.eq(st, 0, "status")
  T.match(out, "items: 1000 of 1000, sum of squares: 332833500 %(correct%)", "result")
  T.match(out, "high%-water marks %(bound 8%): raw [1-8], parsed [1-8], enriched [1-8]\n", "bounded queues")
end)

T.case("jobs.lua --demo runs commands 3 at a time and kills the straggler", function()
  local out, st = run("scripts/jobs.lua --demo")
  T.eq(st, 0, "status")
  T.match(out, "%[2%] echo beta >&2; exit 3 +exit 3\n    err: beta", "an exit status and stderr")
  T.match(out, "%[3%] sleep 30 +killed after 1 s", "the straggler")
  T.match(out, "%[5%] yes | head %-n 1000 | wc %-l +exit 0\n    out: 1000", "a pipeline")
  T.match(out, "6 jobs, 3 at a time: 4 ok, 2 failed or killed", "summary")
end)

T.case("graceful_server.lua --demo drains on SIGTERM and aborts the straggler", function()
  local out, st = run("scripts/graceful_server.lua --demo")
  T.eq(st, 0, "status")
  T.match(out, "got SIGTERM: no new connections, draining 2 client%(s%)", "the signal")
  T.match(out, "polite client got: server shutting down", "clients told")
  T.match(out, "aborted 1 client%(s%)", "the stubborn one")
  T.match(out, "shut down cleanly", "the end")
end)

T.case("parallel_hash.lua hashes on worker threads, checked inline", function()
  local out, st = run("scripts/parallel_hash.lua 4 32")
  T.eq(st, 0, "status: " .. out)
  T.match(out, "hashed 4 chunks of 32 KiB in worker threads: %x+", "summary")
end)

T.case("json_api.lua --demo: a JSON API on the router, called by the client", function()
  local out, st = run("scripts/json_api.lua --demo")
  T.eq(st, 0, "status: " .. out)
  T.match(out, "POST   /todos           %-> 201 {[^\n]*\"title\":\"write the docs\"", "created")
  T.match(out, "PATCH  /todos/2         %-> 200 {[^\n]*\"done\":true", "updated")
  T.match(out, "GET    /todos%?done=true %-> 200 %[{[^\n]*\"id\":2[^\n]*}%]\n", "filtered by the query")
  T.match(out, "GET    /todos/3         %-> 404 no to%-do 3", "a missing item")
  T.match(out, "POST   /todos           %-> 400 invalid JSON body", "a body that is not JSON")
  T.match(out, "%-> 422 'title' must be a non%-empty string", "a bad field")
  T.match(out, "DELETE /todos/1         %-> 204", "deleted")
  T.match(out, "PUT    /todos/2         %-> 405 Method Not Allowed", "the router's 405")
  T.match(out, "GET    /todos           %-> 200 %[{[^\n]*\"id\":2[^\n]*}%]\n$", "what is left")
end)

T.case("ws_chat.lua --demo: three WebSocket clients see each other's messages", function()
  local out, st = run("scripts/ws_chat.lua --demo")
  T.eq(st, 0, "status: " .. out)
  T.match(out, "alice saw: %* alice joined | %* bob joined | %* carol joined | alice: hello from alice | "
          .. "bob: hello from bob | carol: hello from carol | %* carol left | %* bob left\n", "alice saw everyone")
  T.match(out, "bob saw: %* bob joined | %* carol joined | alice: hello from alice | bob: hello from bob | "
          .. "carol: hello from carol | %* carol left\n", "bob")
  T.match(out, "carol saw: %* carol joined | alice: hello from alice | bob: hello from bob | "
          .. "carol: hello from carol\n", "carol")
end)

T.run()
