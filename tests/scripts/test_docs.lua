-- Every ```lua run example in docs/ runs without error.
local T = require "asyncio.test"
local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"

local p = io.popen("ls docs/*.md")
for file in p:lines() do
  local f = io.open(file); local text = f:read("a"); f:close()
  local i = 0
  for block in text:gmatch("```lua run\n(.-)```") do
    i = i + 1
    T.case(string.format("%s example %d", file, i), function()
      local path = T.tmpname(".lua")
      local out = io.open(path, "w"); out:write(block); out:close()
      local output, st = T.sh(BIN .. " " .. path .. " 2>&1")
      T.eq(st, 0, "exit status (output: " .. output .. ")")
      T.ok(not output:find("never retrieved") and not output:find("never awaited"), "no warnings: " .. output)
    end)
  end
end
p:close()
T.run()
