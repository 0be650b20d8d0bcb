-- http.json's C encoder (stdlib/http/_json.c) against json.encode: the
-- same text for every value, fixed edge cases and random ones, the same
-- errors for what JSON cannot hold; the Response it makes; and the
-- handler kinds the server runs (an async function runs inline in the
-- connection's task, a plain function's result is awaited if it is a
-- coroutine), over real connections.
local T = require "asyncio.test"
local http = require "http"
local json = require "json"

-- json.encode's result or error text, for comparing.
local function via_json(v)
  local ok, s = pcall(json.encode, v)
  return ok, ok and s or tostring(s)
end

local function via_http(v)
  local ok, r = pcall(http.json, v)
  if not ok then return false, tostring(r) end
  return true, r.body
end

local function same(v, what)
  local ok1, a = via_json(v)
  local ok2, b = via_http(v)
  T.eq(ok2, ok1, what .. ": both encode, or both raise")
  T.eq(b, a, what)
end

T.case("every single byte is escaped as json.encode does", async function()
  for i = 0, 255 do same(string.char(i), "byte " .. i) end
  same(("a/b\"c\\d\0e\127f\u{e9}\u{1F600}"):rep(50), "a long mixed string")
end)

T.case("edge cases: the same text or the same error as json.encode", async function()
  local deep = {}
  local d = deep
  for _ = 1, 200 do d[1] = {}; d = d[1] end
  local too_deep = {}
  d = too_deep
  for _ = 1, 1100 do d.x = {}; d = d.x end
  local cases = {
    {}, { {} }, { a = {} }, "", 0, -1, 1, math.maxinteger, math.mininteger, true, false,
    json.null, { json.null }, { 1, 2, nil, 4 }, { [2] = 3 }, { [1] = 1, x = 2 },
    { [1] = "a", [3] = "c" }, { [10] = 1 }, { [11] = 1 }, { [1] = 1, [30] = 2 },
    { [-1] = 1 }, { [0] = 1 }, { [1.5] = 1 }, 0.1, -0.0, 1e300, 2 ^ 53, 1 / 3,
    { price = 9.99, n = 3 }, { 1, 2.5, "x" }, 0 / 0, math.huge, -math.huge,
    print, { f = print }, { [true] = 1 }, coroutine.create(print),
    { message = "hello, world", id = 1, ok = true }, deep, too_deep,
    { a = { b = { c = { 1, 2, { d = "e" } } } } }, { ["k\n/\""] = "v" },
  }
  for i = 1, #cases do same(cases[i], "case " .. i .. " (" .. tostring(cases[i]) .. ")") end
  same(nil, "nil")
end)

T.case("random values: the same text as json.encode", async function()
  local seed = 16
  local function rnd(n) -- a small LCG: the same values every run
    seed = (seed * 1103515245 + 12345) % 2147483648
    return seed % n
  end
  local chars = { "a", "b", "/", "\"", "\\", "\n", "\0", "\127", "\u{e9}", "z", " " }
  local function str()
    local t = {}
    for i = 1, rnd(8) do t[i] = chars[rnd(#chars) + 1] end
    return table.concat(t)
  end
  local gen
  local function value(depth)
    local k = rnd(depth > 3 and 6 or 9)
    if k == 0 then return str()
    elseif k == 1 then return rnd(2000000) - 1000000
    elseif k == 2 then return rnd(2) == 0
    elseif k == 3 then return json.null
    elseif k == 4 then return rnd(1000) / 8
    elseif k == 5 then return math.mininteger + rnd(3)
    else return gen(depth + 1) end
  end
  function gen(depth)
    local t = {}
    local kind = rnd(3)
    for i = 1, rnd(6) do
      if kind == 0 then t[i] = value(depth)
      elseif kind == 1 then t[str() .. i] = value(depth)
      elseif rnd(2) == 0 then t[rnd(30) + 1] = value(depth)
      else t[str()] = value(depth) end
    end
    return t
  end
  for i = 1, 3000 do same(gen(0), "random value " .. i) end
end)

T.case("the Response http.json makes", async function()
  local r = http.json({ a = 1 })
  T.eq(r.status, 200, "status")
  T.eq(r.body, '{"a":1}', "body")
  T.eq(r.content_type, "application/json", "content_type")
  T.eq(r.headers, nil, "headers")
  T.ok(tostring(r):match("^<http.Response 200, 7 bytes>$"), tostring(r))
  T.eq(getmetatable(r), getmetatable(http.Response(200, "")), "an http.Response")
  r = http.json({ 1 }, 201, { ["X-A"] = "b" })
  T.eq(r.status, 201, "status given")
  T.eq(r.headers["X-A"], "b", "headers given")
  r.status = 202 -- an ordinary table: a handler may change it
  T.eq(r.status, 202, "mutable")
  local ok, err = pcall(http.json, {}, "200")
  T.ok(not ok and tostring(err):match("http.json%(%) status must be an integer, got string"),
       tostring(err))
  ok, err = pcall(http.json, {}, 200, "x")
  T.ok(not ok and tostring(err):match("http.json%(%) headers must be a table, got string"),
       tostring(err))
  ok, err = pcall(http.json, { f = print })
  T.ok(not ok and asyncio.isinstance(err, asyncio.TypeError), "a function: " .. tostring(err))
  ok, err = pcall(http.json, { 0 / 0 })
  T.ok(not ok and asyncio.isinstance(err, asyncio.ValueError), "NaN: " .. tostring(err))
end)

-- One GET over a fresh connection: the response's head and body.
local async function get(port, path)
  local r, w = await asyncio.open_connection("127.0.0.1", port)
  w:write("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  local got = await r:read(-1)
  w:close()
  await w:wait_closed()
  return got:match("^(.-\r\n)\r\n(.*)$")
end

T.case("handlers: async (inline), plain, plain returning a coroutine, callable", async function()
  local seen = {}
  local async function inner(req)
    await asyncio.sleep(0)
    return http.json({ path = req.path })
  end
  local handlers = {
    async_fn = async function(req)
      await asyncio.sleep(0) -- suspends the connection's task in the handler's body
      seen[#seen + 1] = req.path
      return http.json({ path = req.path, n = #seen }, 201)
    end,
    plain = function(req) return "plain " .. req.path end,
    wrapper = function(req) return inner(req) end,
    callable = setmetatable({}, { __call = function(_, req) return "callable " .. req.method end }),
  }
  local want = {
    async_fn = { "201 Created", "application/json", json.encode({ path = "/a", n = 1 }) },
    plain = { "200 OK", "text/plain; charset=utf-8", "plain /a" },
    wrapper = { "200 OK", "application/json", '{"path":"\\/a"}' },
    callable = { "200 OK", "text/plain; charset=utf-8", "callable GET" },
  }
  for _, name in ipairs({ "async_fn", "plain", "wrapper", "callable" }) do
    local srv <close> = await http.serve(handlers[name], "127.0.0.1", 0)
    local head, body = await get(srv.port, "/a")
    T.ok(head:match("^HTTP/1.1 " .. want[name][1]:gsub("%p", "%%%0") .. "\r\n"), name .. ": " .. head)
    T.ok(head:find("\r\nContent-Type: " .. want[name][2] .. "\r\n", 1, true), name .. ": " .. head)
    T.ok(head:find("\r\nContent-Length: " .. #want[name][3] .. "\r\n", 1, true), name .. ": " .. head)
    T.eq(body, want[name][3], name .. "'s body")
  end
end)

T.case("an async handler's error: 500, reported with its traceback", async function()
  local loop = asyncio.get_running_loop()
  local reported
  local old = loop:get_exception_handler()
  loop:set_exception_handler(function(_, ctx) reported = ctx end)
  local srv <close> = await http.serve(async function(req)
    await asyncio.sleep(0)
    error("boom in " .. req.path)
  end, "127.0.0.1", 0)
  local head, body = await get(srv.port, "/e")
  loop:set_exception_handler(old)
  T.ok(head:match("^HTTP/1.1 500 "), head)
  T.eq(body, "Internal Server Error\n", "body")
  T.ok(reported and tostring(reported.exception):match("boom in /e"), "reported")
  T.ok(reported and reported.traceback and reported.traceback:match("test_http_json.lua"),
       "traceback: " .. tostring(reported and reported.traceback))
end)

T.run({ timeout = 60 })
