-- crawler.lua: a bounded pool of workers crawling a site through a Queue.
--
--   moonloop scripts/crawler.lua [pages] [workers] [--simulate]
--
-- The script starts its own little HTTP/1.0 server on 127.0.0.1 (a port the
-- kernel picks) serving a made-up site of `pages` pages that link to each
-- other, then crawls it from "/" with `workers` tasks sharing one Queue:
--
--   * each URL is fetched once (a `seen` set, filled before enqueueing);
--   * every fetch has a deadline (asyncio.timeout); one page of the site is
--     deliberately too slow and one is missing, to show both failures;
--   * at most `workers` fetches are in flight, whatever the fan-out;
--   * q:join() says when the crawl is complete; q:shutdown() then ends the
--     workers, which live in a TaskGroup with the server.
--
-- With --simulate (or when this build has no asyncio.start_server /
-- asyncio.open_connection) a fetch is simulated by an awaitable delay that
-- returns the same pages, so the crawling logic runs unchanged.
local asyncio = require "asyncio"

local argv = arg or {}
local PAGES, WORKERS, SIMULATE = 60, 4, false
do
  local nums = {}
  for i = 1, #argv do
    if argv[i] == "--simulate" then SIMULATE = true
    elseif tonumber(argv[i]) then nums[#nums + 1] = tonumber(argv[i]) end
  end
  PAGES, WORKERS = nums[1] or PAGES, nums[2] or WORKERS
end
local FETCH_TIMEOUT = 0.5
local SLOW_PAGE = "/page/13"     -- answers after 2 s: times out
local MISSING_PAGE = "/page/404" -- linked from page 7, not served

local NETWORK = not SIMULATE and asyncio.start_server ~= nil and asyncio.open_connection ~= nil

---------------------------------------------------------------- the site

-- The HTML of path, or nil if there is no such page.  Page i links to
-- 2i+1, 2i+2 and (7i mod pages): a tree with back edges, so the crawler
-- meets every page several times.
local function page(path)
  local i
  if path == "/" then i = 0 else i = tonumber(path:match("^/page/(%d+)$")) end
  if i == nil or i >= PAGES then return nil end
  local links = {}
  for _, j in ipairs{2 * i + 1, 2 * i + 2, (7 * i) % PAGES} do
    if j < PAGES then
      local href = j == 0 and "/" or "/page/" .. j
      links[#links + 1] = string.format('<a href="%s">page %d</a>', href, j)
    end
  end
  if i == 7 then links[#links + 1] = '<a href="' .. MISSING_PAGE .. '">gone</a>' end
  return string.format("<html><h1>Page %d</h1>\n%s\n</html>\n", i, table.concat(links, "\n"))
end

local function links_of(html)
  local out = {}
  for href in html:gmatch('href="([^"]+)"') do out[#out + 1] = href end
  return out
end

---------------------------------------------------------------- server

local async function serve(reader, writer)
  local request = await reader:readline()
  while true do  -- skip the headers
    local line = await reader:readline()
    if line == "" or line == "\r\n" or line == "\n" then break end
  end
  local path = request:match("^GET (%S+) HTTP/1%.[01]")
  if path == SLOW_PAGE then await asyncio.sleep(2) end
  local body = path and page(path)
  if body then
    writer:write("HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
      .. #body .. "\r\n\r\n" .. body)
  else
    writer:write("HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
  end
  await writer:drain()
  writer:close()
  await writer:wait_closed()
end

---------------------------------------------------------------- fetching

local Fetch = {}

-- Network fetch: one HTTP/1.0 request per connection.  Returns the status
-- code and the body.
function Fetch.network(base, path)
  local reader, writer = await asyncio.open_connection(base.host, base.port)
  local _ <close> = setmetatable({}, {__close = function() writer:close() end})
  writer:write("GET " .. path .. " HTTP/1.0\r\nHost: " .. base.host .. "\r\n\r\n")
  await writer:drain()
  local status = await reader:readline()
  local code = tonumber(status:match("^HTTP/1%.[01] (%d%d%d)"))
  while true do
    local line = await reader:readline()
    if line == "" or line == "\r\n" or line == "\n" then break end
  end
  return code, await reader:read(-1)
end

-- Simulated fetch: the same pages after a short delay.
function Fetch.simulated(_, path)
  await asyncio.sleep(path == SLOW_PAGE and 2 or 0.001 * (#path % 5))
  local body = page(path)
  if body then return 200, body end
  return 404, ""
end

---------------------------------------------------------------- crawler

local async function crawl(base, fetch)
  local q = asyncio.Queue()
  local seen = {["/"] = true}
  local results = {ok = 0, missing = {}, timed_out = {}, failed = {}, in_flight = 0, max_in_flight = 0}
  q:put_nowait("/")

  local async function worker(id)
    while true do
      local ok, path = pcall(await, q:get())
      if not ok then
        if asyncio.isinstance(path, asyncio.QueueShutDown) then return end
        error(path, 0)
      end
      results.in_flight = results.in_flight + 1
      if results.in_flight > results.max_in_flight then results.max_in_flight = results.in_flight end
      local fok, code, body = pcall(await, asyncio.timeout(FETCH_TIMEOUT, function()
        return fetch(base, path)
      end))
      results.in_flight = results.in_flight - 1
      if not fok then
        if asyncio.isinstance(code, asyncio.TimeoutError) then
          results.timed_out[#results.timed_out + 1] = path
        else
          results.failed[#results.failed + 1] = path .. ": " .. tostring(code)
        end
      elseif code ~= 200 then
        results.missing[#results.missing + 1] = path .. " (" .. tostring(code) .. ")"
      else
        results.ok = results.ok + 1
        for _, link in ipairs(links_of(body)) do
          if not seen[link] then
            seen[link] = true
            q:put_nowait(link)
          end
        end
      end
      q:task_done()
    end
  end

  await asyncio.TaskGroup(function(tg)
    for i = 1, WORKERS do tg:create_task(worker(i), {name = "worker-" .. i}) end
    await q:join()   -- every URL queued has been handled
    q:shutdown()     -- the idle workers get QueueShutDown and return
  end)
  return results
end

local async function main()
  local base, server = {}, nil
  local fetch = Fetch.simulated
  if NETWORK then
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    local socks = server.sockets
    if type(socks) == "function" then socks = server:sockets() end
    local addr = socks[1]:getsockname()
    base.host, base.port = addr[1], addr[2]
    fetch = Fetch.network
    print(string.format("serving %d pages on http://%s:%d/", PAGES, base.host, base.port))
  else
    print(string.format("simulating a site of %d pages (no network fetch)", PAGES))
  end
  local loop = asyncio.get_running_loop()
  local t0 = loop:time()
  local r = await crawl(base, fetch)
  if server then
    server:close()
    await server:wait_closed()
  end
  print(string.format("crawled %d pages with %d workers in %.2f s (at most %d fetches at once)",
    r.ok, WORKERS, loop:time() - t0, r.max_in_flight))
  print("missing: " .. (#r.missing > 0 and table.concat(r.missing, ", ") or "none"))
  print("timed out after " .. FETCH_TIMEOUT .. " s: "
    .. (#r.timed_out > 0 and table.concat(r.timed_out, ", ") or "none"))
  if #r.failed > 0 then print("failed: " .. table.concat(r.failed, "; ")) end
  local expected = PAGES - ((13 < PAGES) and 1 or 0)
  if r.ok ~= expected then
    print(string.format("expected %d pages", expected))
    os.exit(1)
  end
end

asyncio.run(main())
