-- script.lua: a level script for the game host in host.c.  It runs as a
-- task in a sandbox: no io, no os.execute, no sockets, but timers, tasks
-- and the host's `game` module, whose load_asset is completed by one of
-- the host's worker threads.
local game = require "game"

local async function load_assets(names)
  local loads = {}
  for i, name in ipairs(names) do loads[i] = game.load_asset(name) end
  local assets = await asyncio.gather(table.unpack(loads))
  for i = 1, assets.n do print("loaded " .. assets[i]) end
end

local async function waves()
  for wave = 1, 3 do
    local id = game.spawn_enemy("slime", wave * 10)
    print(("wave %d: enemy #%d"):format(wave, id))
    await asyncio.sleep(0.02)   -- a few frames
  end
end

-- A bug: this task never awaits.  The CPU budget stops it, the error
-- goes to the host's handler, and the rest of the level carries on.
local async function runaway()
  while true do end
end
asyncio.create_task(runaway())

await asyncio.gather(load_assets { "hero.png", "map.dat" }, waves())

local ok, err = pcall(function() return await game.load_asset("missing.png") end)
print("missing asset: " .. tostring(err))

-- Allocating without bound hits the memory cap; the script survives it.
ok, err = pcall(function()
  local t = {}
  while true do t[#t + 1] = ("x"):rep(64) .. #t end
end)
print("memory hog stopped: " .. tostring(err))

print("sandbox: io=" .. tostring(io) .. " os.execute=" .. tostring(os.execute))
return "level done at frame " .. (game.frame() > 0 and "N" or "0")
