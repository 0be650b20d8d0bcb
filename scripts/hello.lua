-- hello.lua: the smallest moonloop script.  The file runs as the main
-- task, so top-level await works.
local name = arg[1] or "world"
await asyncio.sleep(0.1)
print("hello, " .. name)
