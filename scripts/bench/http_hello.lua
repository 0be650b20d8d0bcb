-- http_hello.lua: moonloop's server for the workers benchmark (run.sh,
-- "HTTP hello, N workers"): http.serve answering "hello, world\n" to every
-- request, run as
--   moonloop --workers N --listen 127.0.0.1:PORT http_hello.lua PORT
local http = require "http"
local port = assert(tonumber(arg[1]), "usage: http_hello.lua PORT")
local srv = await http.serve(async function() return "hello, world\n" end, "127.0.0.1", port)
await srv:serve_forever()
