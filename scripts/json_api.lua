-- json_api.lua: a small JSON API on http.serve and http.Router: a to-do
-- list kept in memory.
--
--   moonloop scripts/json_api.lua [port]    serve on 127.0.0.1 (default 8080)
--   moonloop scripts/json_api.lua --demo    serve on a free port, make the
--                                           calls below with the http client,
--                                           print what came back, exit
--
--   GET    /todos             the list (?done=true|false filters it)
--   POST   /todos             {"title": "..."} -> 201 and the new item
--   GET    /todos/{id}        one item, or 404
--   PATCH  /todos/{id}        {"done": true} and/or {"title": "..."}
--   DELETE /todos/{id}        204
--
-- A body that is not JSON is a 400 (req:json() raises http.HTTPError(400)),
-- a bad field a 422, an unknown path a 404 and a known path with another
-- method a 405 with Allow: the router's.
local asyncio = require "asyncio"
local http = require "http"

local DEMO = arg and arg[1] == "--demo"
local port = (not DEMO and tonumber(arg and arg[1])) or (DEMO and 0) or 8080

local todos, next_id = {}, 1

local function find(req)
  local item = todos[tonumber(req.params.id)]
  if not item then error(http.HTTPError(404, "no to-do " .. req.params.id), 0) end
  return item
end

local function check_fields(body, need_title)
  if type(body) ~= "table" then error(http.HTTPError(422, "the body must be a JSON object"), 0) end
  if (need_title or body.title ~= nil) and (type(body.title) ~= "string" or body.title == "") then
    error(http.HTTPError(422, "'title' must be a non-empty string"), 0)
  end
  if body.done ~= nil and type(body.done) ~= "boolean" then
    error(http.HTTPError(422, "'done' must be true or false"), 0)
  end
end

local r = http.Router()

r:get("/todos", async function(req)
  local list, want = {}, req.query.done
  for id = 1, next_id - 1 do
    local item = todos[id]
    if item and (want == nil or tostring(item.done) == want) then list[#list + 1] = item end
  end
  return http.json(list)
end)

r:post("/todos", async function(req)
  local body = await req:json()
  check_fields(body, true)
  local item = { id = next_id, title = body.title, done = false }
  todos[next_id], next_id = item, next_id + 1
  return http.json(item, 201, { Location = "/todos/" .. item.id })
end)

r:get("/todos/{id}", async function(req) return http.json(find(req)) end)

r:patch("/todos/{id}", async function(req)
  local item = find(req)
  local body = await req:json()
  check_fields(body, false)
  if body.title ~= nil then item.title = body.title end
  if body.done ~= nil then item.done = body.done end
  return http.json(item)
end)

r:delete("/todos/{id}", async function(req)
  todos[find(req).id] = nil
  return http.Response(204)
end)

local srv <close> = await http.serve(r, "127.0.0.1", port)
print(string.format("serving on http://127.0.0.1:%d/todos", srv.port))

if not DEMO then
  await srv:serve_forever()
  return
end

-- The demo: a client session against the server above.
local s <close> = http.Session({ base_url = "http://127.0.0.1:" .. srv.port })
local async function call(method, path, opts)
  local res <close> = await s:request(method, path, opts)
  local text = (await res:text()):gsub("\n$", "")
  print(string.format("%-6s %-16s -> %d %s", method, path, res.status, text))
  return res.status
end
await call("POST", "/todos", { json = { title = "write the docs" } })
await call("POST", "/todos", { json = { title = "run the tests" } })
await call("PATCH", "/todos/2", { json = { done = true } })
await call("GET", "/todos?done=true")
await call("GET", "/todos/3")
await call("POST", "/todos", { body = "not json", headers = { ["Content-Type"] = "application/json" } })
await call("POST", "/todos", { json = { title = 42 } })
await call("DELETE", "/todos/1")
await call("PUT", "/todos/2")
await call("GET", "/todos")
