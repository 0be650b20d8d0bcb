-- asyncio_index.lua: prints the index of stdlib/asyncio.lua's lazy
-- loading, the module each name of asyncio and each Loop method comes
-- from, found by loading each module alone in a process of its own.
--
-- usage: moonloop scripts/asyncio_index.lua [MOONLOOP]     (the block)
--        moonloop scripts/asyncio_index.lua MOONLOOP --one MODULE
--
-- `make asyncio-index` writes the block into stdlib/asyncio.lua, between
-- its "generated" markers; tests/scripts/test_lazy.lua fails if the two
-- differ.  An asyncio name is the last module's in sorted order that has
-- it (as loading them all in that order leaves it); a Loop method is the
-- module's whose loading takes the least memory (the one that defines it,
-- not one that requires that one).
local bin, mode, one = ...
bin = bin or "build/moonloop"

local function sorted(t)
  local r = {}
  for k in pairs(t) do r[#r + 1] = k end
  table.sort(r)
  return r
end

if mode == "--one" then
  -- In a fresh state: what loading `one` adds.
  local core = require "asyncio.core"
  collectgarbage()
  local kb = collectgarbage("count")
  local before = {}
  for k in next, core.Loop do before[k] = true end
  local t = require(one)
  local names, methods = {}, {}
  if type(t) == "table" then
    for k in next, t do
      if type(k) == "string" and k:sub(1, 1) ~= "_" then names[k] = true end
    end
  end
  for k in next, core.Loop do
    if not before[k] and type(k) == "string" then methods[k] = true end
  end
  print("M " .. table.concat(sorted(names), " "))
  print("L " .. table.concat(sorted(methods), " "))
  collectgarbage()
  print(string.format("K %.0f", (collectgarbage("count") - kb) * 1024))
  return
end

-- The modules asyncio's first look-up would load (asyncio.lua's skip list).
local skip = { ["asyncio.core"] = true, ["asyncio.exceptions"] = true, ["asyncio.test"] = true,
               ["asyncio._util"] = true }
local mods = {}
for name in pairs(package.preload) do
  if name:match("^asyncio%.") and not skip[name] then mods[#mods + 1] = name end
end
table.sort(mods)

local names, methods, footprint = {}, {}, {}
for _, m in ipairs(mods) do
  local p = assert(io.popen(string.format("%s %s %s --one %s", bin, arg[0], bin, m)))
  local out = p:read("a")
  assert(p:close(), "asyncio_index: loading " .. m .. " alone failed:\n" .. out)
  local ms = out:match("\nL ([^\n]*)") or ""
  local n = assert(tonumber(out:match("\nK (%d+)")), out)
  footprint[m] = n
  for k in (out:match("^M ([^\n]*)") or ""):gmatch("%S+") do names[k] = m end
  for k in ms:gmatch("%S+") do
    local was = methods[k]
    if not was or footprint[was] > n or (footprint[was] == n and was > m) then methods[k] = m end
  end
end

local function block(t)
  local lines, line = {}, " "
  for _, k in ipairs(sorted(t)) do
    local item = string.format(" %s = %q,", k:match("^[%a_][%w_]*$") and k or string.format("[%q]", k), t[k])
    if #line + #item > 98 then lines[#lines + 1] = line; line = " " end
    line = line .. item
  end
  lines[#lines + 1] = line
  return table.concat(lines, "\n")
end
io.write("local INDEX = {\n", block(names), "\n}\n")
io.write("local LOOP_INDEX = {\n", block(methods), "\n}\n")
