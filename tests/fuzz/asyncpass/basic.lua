async function f(x)
  return await g(x)
end
local r = await f(1)
