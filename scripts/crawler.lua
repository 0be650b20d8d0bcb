-- crawler.lua: a concurrent crawler on one http.Session and a Semaphore.
--
--   moonloop scripts/crawler.lua [pages] [workers]
--
-- The script starts its own little HTTP/1.1 server on 127.0.0.1 (a port the
-- kernel picks) serving a made-up site of `pages` pages that link to each
-- other, then crawls it from "/":
--
--   * each URL is fetched once (a `seen` set, filled before the fetch starts);
--   * every page found starts a task in one TaskGroup, and a Semaphore lets
--     at most `workers` fetches run at once, whatever the fan-out;
--   * all of them go through one Session, whose pool keeps the connections
--     alive between fetches;
--   * every fetch has a deadline (the request's timeout); one page of the
--     site is deliberately too slow and one is missing (a 404 is a result,
--     not an error), to show both;
--   * the TaskGroup says when the crawl is complete: when every task it
--     started has finished.
local asyncio = require "asyncio"
local http = require "http"

local argv = arg or {}
local PAGES, WORKERS = tonumber(argv[1]) or 60, tonumber(argv[2]) or 4
local FETCH_TIMEOUT = 0.5
local SLOW_PAGE = "/page/13"     -- answers after 2 s: times out
local MISSING_PAGE = "/page/404" -- linked from page 7, not served

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

-- HTTP/1.1 with keep-alive: requests on a connection until the client
-- closes it.
local async function serve(reader, writer)
  pcall(function()
    while true do
      local request = await reader:readline()
      if request == "" then break end
      while true do  -- skip the headers
        local line = await reader:readline()
        if line == "" or line == "\r\n" or line == "\n" then break end
      end
      local path = request:match("^GET (%S+) HTTP/1%.[01]")
      if path == SLOW_PAGE then await asyncio.sleep(2) end
      local body = path and page(path)
      if body then
        writer:write("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
          .. #body .. "\r\n\r\n" .. body)
      else
        writer:write("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
      end
      await writer:drain()
    end
  end)
  writer:close()
end

---------------------------------------------------------------- crawler

local async function crawl(session)
  local sem = asyncio.Semaphore(WORKERS)
  local seen = {}
  local results = {ok = 0, missing = {}, timed_out = {}, failed = {}, in_flight = 0, max_in_flight = 0}

  await asyncio.TaskGroup(function(tg)
    local async function visit(path)
      local _ <close> = await sem:acquire()
      results.in_flight = results.in_flight + 1
      if results.in_flight > results.max_in_flight then results.max_in_flight = results.in_flight end
      local ok, err = pcall(function()
        local r <close> = await session:get(path, {timeout = FETCH_TIMEOUT})
        if r.status ~= 200 then
          results.missing[#results.missing + 1] = path .. " (" .. r.status .. ")"
          return
        end
        results.ok = results.ok + 1
        for _, link in ipairs(links_of(await r:text())) do
          if not seen[link] then
            seen[link] = true
            tg:create_task(visit(link))
          end
        end
      end)
      results.in_flight = results.in_flight - 1
      if not ok then
        if asyncio.isinstance(err, asyncio.TimeoutError) then
          results.timed_out[#results.timed_out + 1] = path
        else
          results.failed[#results.failed + 1] = path .. ": " .. tostring(err)
        end
      end
    end
    seen["/"] = true
    tg:create_task(visit("/"))
  end)
  return results
end

local async function main()
  local server = await asyncio.start_server(serve, "127.0.0.1", 0)
  local addr = server.sockets[1]:getsockname()
  local base = string.format("http://%s:%d", addr[1], addr[2])
  print(string.format("serving %d pages on %s/", PAGES, base))
  local loop = asyncio.get_running_loop()
  local t0 = loop:time()
  local r
  do
    local session <close> = http.Session({base_url = base, limit = WORKERS})
    r = await crawl(session)
  end
  local dt = loop:time() - t0
  server:close()
  await server:wait_closed()
  table.sort(r.missing)
  print(string.format("crawled %d pages with %d workers in %.2f s (at most %d fetches at once)",
    r.ok, WORKERS, dt, r.max_in_flight))
  print("missing: " .. (#r.missing > 0 and table.concat(r.missing, ", ") or "none"))
  print("timed out after " .. FETCH_TIMEOUT .. " s: "
    .. (#r.timed_out > 0 and table.concat(r.timed_out, ", ") or "none"))
  if #r.failed > 0 then print("failed: " .. table.concat(r.failed, "; ")) end
  local expected = PAGES - ((13 < PAGES) and 1 or 0)
  if r.ok ~= expected or r.max_in_flight > WORKERS then
    print(string.format("expected %d pages, at most %d at once", expected, WORKERS))
    os.exit(1)
  end
end

asyncio.run(main())
