local x <close> = await o:m("s")[1]
return -await f() + 1, not await g, #await h()
