local t = { async function(a) await asyncio.sleep(0) end }
await(t[1](1))
local await = 1; print(await - 1)
