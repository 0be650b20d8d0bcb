-- http_request.lua: the HTTP server's request-path fuzz property (issue
-- #16), shared by the libFuzzer target tests/fuzz/http_request.c and by
-- make test (tests/scripts/test_fuzz_corpus.lua runs it over the seed
-- corpus tests/fuzz/http_request/ and random inputs).  Returns
-- check(data), a function to run in a task: it raises (a plain string
-- naming the divergence) when the property fails.
--
-- One http.serve server on 127.0.0.1 (header_limit 1 KiB, body_limit
-- 1 KiB: the limits are reachable) answers every request with
-- "METHOD TARGET\n" .. body and an X-Method header.  For each input a
-- client connects, writes bytes in the chunks the input chooses (a pause
-- after each, so the server sees them apart), half-closes, and reads
-- everything until the server closes.  The first byte picks the mode:
--   * structured (even): the input describes a series of pipelined
--     requests (method, target, HTTP/1.0 or 1.1, no body, Content-Length
--     or chunked bodies with extensions and trailers, Expect:
--     100-continue, Connection: close, and smuggling shapes: both
--     Content-Length and Transfer-Encoding, two Content-Lengths); the
--     answers must be exactly the model's: one 200 per request with its
--     method, target and body, in order (an optional 100 Continue before
--     one that asked), and a 400 then the end for a smuggling shape;
--   * raw (odd): the rest of the input is sent as is; the output must
--     be a series of complete, well-formed responses, each status one the
--     server may give, nothing after one that says Connection: close.
-- Both: the connection ends (the server closes after the client's EOF),
-- no handler error reaches the loop's exception handler, and afterwards
-- a new connection is answered (the server is still serving).

local http = require "http"
local byte, sub, char, fmt = string.byte, string.sub, string.char, string.format

local M = {}

local srv, srv_loop, handler_errors
-- M.lie = true makes the handler add a byte to every body (make test checks
-- that the property catches it)

local async function handler(req)
  local body = await req:read()
  local text = req.method .. " " .. req.target .. "\n" .. body .. (M.lie and "x" or "")
  return http.Response(200, text, { ["X-Method"] = req.method })
end

local function server()
  local loop = asyncio.get_running_loop()
  if srv and srv_loop == loop then return srv end
  srv = await http.serve(handler, "127.0.0.1", 0, { header_limit = 1024, body_limit = 1024 })
  srv_loop = loop
  handler_errors = {}
  loop:set_exception_handler(function(_, ctx)
    handler_errors[#handler_errors + 1] = tostring(ctx.message) .. ": " .. tostring(ctx.exception)
  end)
  return srv
end

-- Closes the server (make test's fd check).
function M.close()
  if srv then
    srv:close()
    await srv:wait_closed()
    srv = nil
  end
end

local FINAL = { [200] = true, [400] = true, [408] = true, [413] = true, [431] = true,
                [500] = true, [501] = true, [505] = true }

-- Parses the server's output into responses: { status, headers (lower-case
-- names), body, close }.  Raises on anything malformed or truncated.
local function parse(out)
  local res, pos, n = {}, 1, #out
  while pos <= n do
    local e = out:find("\r\n\r\n", pos, true)
    if not e then error(fmt("truncated head at byte %d: %q", pos, sub(out, pos, pos + 80)), 0) end
    local head = sub(out, pos, e + 1)
    pos = e + 4
    local status, rest = head:match("^HTTP/1%.1 (%d%d%d) [^\r\n]*\r\n(.*)$")
    if not status then error(fmt("bad status line: %q", sub(head, 1, 80)), 0) end
    status = tonumber(status)
    local h = {}
    for name, value in rest:gmatch("([^\r\n:]+): ([^\r\n]*)\r\n") do
      name = name:lower()
      if h[name] then error(fmt("header %s given twice", name), 0) end
      h[name] = value
    end
    local r = { status = status, headers = h, body = "" }
    if status == 100 then
      -- no body
    elseif h["transfer-encoding"] then
      if h["transfer-encoding"] ~= "chunked" or h["content-length"] then
        error("bad framing: " .. tostring(h["transfer-encoding"]), 0)
      end
      local parts = {}
      while true do
        local le = out:find("\r\n", pos, true)
        if not le then error("truncated chunk size", 0) end
        local size = tonumber(sub(out, pos, le - 1), 16)
        if not size then error(fmt("bad chunk size %q", sub(out, pos, le - 1)), 0) end
        pos = le + 2
        if size == 0 then
          if sub(out, pos, pos + 1) ~= "\r\n" then error("bad last chunk", 0) end
          pos = pos + 2
          break
        end
        if pos + size + 1 > n or sub(out, pos + size, pos + size + 1) ~= "\r\n" then
          error("truncated chunk", 0)
        end
        parts[#parts + 1] = sub(out, pos, pos + size - 1)
        pos = pos + size + 2
      end
      r.body = table.concat(parts)
    elseif h["content-length"] then
      local len = tonumber(h["content-length"])
      if not len or math.type(len) ~= "integer" then error("bad Content-Length " .. h["content-length"], 0) end
      if h["x-method"] ~= "HEAD" then
        if pos + len - 1 > n then error(fmt("truncated body: %d of %d bytes", n - pos + 1, len), 0) end
        r.body = sub(out, pos, pos + len - 1)
        pos = pos + len
      end
    else
      r.body = sub(out, pos)
      pos = n + 1
      r.close = true
    end
    if (h["connection"] or ""):lower() == "close" then r.close = true end
    if status ~= 100 and not FINAL[status] then error("unexpected status " .. status, 0) end
    if r.close and pos <= n then
      error(fmt("%d bytes after a response with Connection: close", n - pos + 1), 0)
    end
    res[#res + 1] = r
  end
  return res
end

-- Decodes a structured input into the request bytes and the model's
-- expected answers: { status, method, target, body, continue }.
local METHODS = { "GET", "POST", "PUT", "HEAD", "DELETE", "PATCH" }
local function structured(d, pos)
  local n = #d
  local function b()
    local v = byte(d, pos); pos = pos + 1; return v or 0
  end
  local function letters(k)
    local t = {}
    for i = 1, k do t[i] = char(97 + b() % 26) end
    return table.concat(t)
  end
  local reqs, want = {}, {}
  local i = 0
  while pos <= n and i < 32 do
    i = i + 1
    local f = b()
    local method = METHODS[1 + f % #METHODS]
    local target = "/r" .. i
    if f & 8 ~= 0 then target = target .. "?q=" .. letters(1 + b() % 4) end
    local v10 = (f & 16) ~= 0 and (b() % 4 == 0)
    local g = b()
    local framing = g % 5  -- 0 none, 1 CL, 2 chunked, 3 CL+TE, 4 two different CLs
    local body = (framing ~= 0) and letters(b() % 48) or ""
    if v10 and framing ~= 1 then framing = 1 end  -- chunked is 1.1
    local close = (g & 8) ~= 0
    local expect = (g & 16) ~= 0 and framing ~= 0 and not v10
    local lines = { fmt("%s %s HTTP/1.%d", method, target, v10 and 0 or 1), "Host: fuzz" }
    if (g & 32) ~= 0 then lines[#lines + 1] = "User-Agent: fuzz/" .. letters(b() % 8) end
    if close then lines[#lines + 1] = "Connection: close"
    elseif v10 and (g & 64) ~= 0 then lines[#lines + 1] = "Connection: keep-alive" end
    if expect then lines[#lines + 1] = "Expect: 100-continue" end
    local payload = ""
    if framing == 1 then
      lines[#lines + 1] = "Content-Length: " .. #body
      payload = body
    elseif framing == 2 or framing == 3 then
      if framing == 3 then
        if (g & 128) ~= 0 then lines[#lines + 1] = "Content-Length: " .. #body
        else table.insert(lines, 2, "Content-Length: " .. #body) end
      end
      lines[#lines + 1] = "Transfer-Encoding: chunked"
      local parts, p = {}, 1
      while p <= #body do
        local k = 1 + b() % 16
        local ext = (b() % 4 == 0) and ";x=y" or ""
        parts[#parts + 1] = fmt("%x%s\r\n%s\r\n", math.min(k, #body - p + 1), ext, sub(body, p, p + k - 1))
        p = p + k
      end
      parts[#parts + 1] = "0\r\n"
      if b() % 4 == 0 then parts[#parts + 1] = "X-Trailer: t\r\n" end
      parts[#parts + 1] = "\r\n"
      payload = table.concat(parts)
    elseif framing == 4 then
      lines[#lines + 1] = "Content-Length: " .. #body
      lines[#lines + 1] = "Content-Length: " .. (#body + 1)
      payload = body
    end
    reqs[#reqs + 1] = table.concat(lines, "\r\n") .. "\r\n\r\n" .. payload
    if framing >= 3 then
      want[#want + 1] = { status = 400 }
      break
    end
    want[#want + 1] = { status = 200, method = method, target = target,
                        body = method == "HEAD" and "" or method .. " " .. target .. "\n" .. body,
                        continue = expect }
    if close or (v10 and (g & 64) == 0) then break end
  end
  return table.concat(reqs), want
end

local function compare(res, want)
  local j = 1
  for k, w in ipairs(want) do
    local r = res[j]
    if r and r.status == 100 and w.continue then j = j + 1; r = res[j] end
    if not r then error(fmt("request %d (of %d) got no answer", k, #want), 0) end
    if r.status ~= w.status then
      error(fmt("request %d: status %d, the model says %d (%s)", k, r.status, w.status, r.body), 0)
    end
    if w.status == 200 then
      if r.headers["x-method"] ~= w.method then error(fmt("request %d: answered for %s", k, tostring(r.headers["x-method"])), 0) end
      if r.body ~= w.body then error(fmt("request %d: body %q, the model says %q", k, r.body, w.body), 0) end
    end
    j = j + 1
  end
  if res[j] then error(fmt("%d answers, the model says %d", #res, #want), 0) end
end

-- Sends data in the given chunk sizes (cycled), half-closes, reads all.
local function exchange(port, data, sizes)
  local reader, writer = await asyncio.open_connection("127.0.0.1", port)
  local out
  local async function read_all() out = await reader:read() end
  local async function write_all()
    local p, i = 1, 0
    while p <= #data do
      local k = sizes[i % #sizes + 1]
      i = i + 1
      writer:write(sub(data, p, p + k - 1))
      p = p + k
      await writer:drain()
      await asyncio.sleep(0)
    end
    if not writer:is_closing() then writer:write_eof() end
  end
  local ok, err = pcall(await, write_all())
  if not ok and not asyncio.isinstance(err, asyncio.ConnectionError) then error(err, 0) end
  -- the server closes once it has answered what it got and seen EOF; the
  -- bound only turns a hang into a failure
  local rok, rerr = pcall(await, asyncio.wait_for(read_all(), 20))
  writer:close()
  pcall(await, writer:wait_closed())
  if not rok then
    if asyncio.isinstance(rerr, asyncio.TimeoutError) then error("the server did not close the connection", 0) end
    if not asyncio.isinstance(rerr, asyncio.ConnectionError) then error(rerr, 0) end
    out = out or ""
  end
  return out
end

function M.check(data)
  local s = server()
  local n0 = #handler_errors
  local c = byte(data, 1) or 0
  local pos = 2
  local sizes = {}
  for i = 1, 1 + (c >> 1) % 4 do
    sizes[i] = 1 + (byte(data, pos) or 255) % 97
    pos = pos + 1
  end
  if c & 1 == 0 then
    local bytes, want = structured(data, pos)
    local out = exchange(s.port, bytes, sizes)
    local ok, res = pcall(parse, out)
    if not ok then error("structured: " .. tostring(res) .. " in " .. fmt("%q", out), 0) end
    local cok, cerr = pcall(compare, res, want)
    if not cok then error(fmt("structured: %s\nsent %q\ngot %q", cerr, bytes, out), 0) end
  else
    local bytes = sub(data, pos)
    local out = exchange(s.port, bytes, sizes)
    local ok, err = pcall(parse, out)
    if not ok then error(fmt("raw: %s\nsent %q\ngot %q", tostring(err), bytes, out), 0) end
  end
  if #handler_errors > n0 then error("handler error reported: " .. handler_errors[#handler_errors], 0) end
  -- still serving
  local alive = exchange(s.port, "GET /alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", { 4096 })
  local res = parse(alive)
  if #res ~= 1 or res[1].status ~= 200 or res[1].body ~= "GET /alive\n" then
    error(fmt("the server no longer answers: %q", alive), 0)
  end
end

return M
