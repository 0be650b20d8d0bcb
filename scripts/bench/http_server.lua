-- http_server.lua: moonloop's side of make bench's HTTP server rows: wrk
-- -t1 -c50 on / (a 13-byte text body) and /json (a small JSON object);
-- http_server.py (uvloop+httptools, aiohttp), http_server.js (Node's http)
-- and the nginx+lua config in run.sh answer the same.
--   moonloop http_server.lua PORT
local http = require "http"
local port = tonumber(arg[1]) or 8080

local hello = "hello, world\n"
local srv = await http.serve(async function(req)
  if req.path == "/json" then
    return http.json({ message = "hello, world", id = 1, ok = true })
  end
  return hello
end, "127.0.0.1", port)
await srv:serve_forever()
