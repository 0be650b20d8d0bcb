-- The async/await dialect at run time: every form, and the places where
-- `async` and `await` stay ordinary names.
local T = require "asyncio.test"

T.case("the four async function forms define coroutine functions", async function()
  async function global_f(x) return x + 1 end
  local async function local_f(x) return x * 2 end
  local obj = { k = 10 }
  async function obj:method(x) return self.k + x end
  local ns = { inner = {} }
  async function ns.inner.deep(x) return "deep" .. x end
  local anon = async function(x) return -x end
  T.eq(await global_f(1), 2, "global")
  T.eq(await local_f(4), 8, "local")
  T.eq(await obj:method(5), 15, "method with self")
  T.eq(await ns.inner.deep(1), "deep1", "dotted name")
  T.eq(await anon(3), -3, "expression")
  T.ok(asyncio.iscoroutinefunction(local_f), "iscoroutinefunction")
  local c = anon(1)
  T.ok(asyncio.iscoroutine(c), "calling returns a coroutine")
  c:close()
end)

T.case("a local async function can call itself", async function()
  local async function fact(n) if n <= 1 then return 1 end return n * await fact(n - 1) end
  T.eq(await fact(10), 3628800, "recursion")
end)

T.case("await binds to the whole suffixed expression", async function()
  local f = asyncio.Future()
  f:set_result("done")
  local holder = { list = { 1, f }, get = function(self) return self end, fut = f }
  T.eq(await holder.list[2], "done", "index chain")
  T.eq(await holder:get().fut, "done", "method call then field")
  T.eq(await holder
    :get()
    .fut, "done", "a chain over several lines")
end)

T.case("await precedence: -await f() + 1, nested awaits, await await", async function()
  local async function five() return 5 end
  local async function id(x) return x end
  local async function coro_of(x) return id(x) end
  T.eq(-await five() + 1, -4, "unary minus and addition")
  T.eq(await id(await five()), 5, "nested")
  T.eq(await await coro_of(7), 7, "await await")
  local r = await id(1) + await id(2) * await id(3)
  T.eq(r, 7, "arithmetic between awaits")
end)

T.case("await(x) is a plain call and works the same", async function()
  T.eq(await(asyncio.sleep(0, "call")), "call", "await(x)")
  T.raises(asyncio.TypeError, function() return await { 1 } end, "await {table} is a call with a table")
end)

T.case("async and await stay names where the spec says so", async function()
  local async = 1
  local t = { await = 2, async = 3 }
  T.eq(async + t.await + t.async, 6, "fields and locals named async/await")
  local o = { await = function(self, x) return x * 10 end }
  T.eq(o:await(4), 40, "a method named await")
  local await_ = 5
  T.eq(await_ - 1, 4, "await_ is another name")
end)

T.case("error lines name the user's own lines", async function()
  local async function fails()
    await asyncio.sleep(0)
    error("on purpose")
  end
  local ok, e = pcall(await, fails())
  T.match(e, "test_dialect.lua:%d+: on purpose", "message with file and line")
  local line = tonumber(e:match(":(%d+):"))
  local src = io.open("tests/scripts/test_dialect.lua"):read("a")
  local n = 0
  for l in src:gmatch("([^\n]*)\n") do
    n = n + 1
    if n == line then T.match(l, 'error%("on purpose"%)', "the line the error names") end
  end
end)

T.case("load, loadfile and dofile take the dialect; modes and env as Lua's", async function()
  local f = load("async function inc(x) return x + 1 end return inc")()
  T.eq(await f(1), 2, "load of a string")
  local parts, i = { "return await ", "asyncio.sleep(0, 'pieces')" }, 0
  T.eq(load(function() i = i + 1; return parts[i] end)(), "pieces", "load of a reader function")
  local ok, msg = load("x = = 1", "=chunk")
  T.eq(ok, nil, "syntax error gives nil"); T.match(msg, "^chunk:1:", "message names the chunk")
  T.eq(select(2, load(string.dump(function() end), "bin", "t")), "attempt to load a binary chunk (mode is 't')", "mode")
  T.eq(load("return y", "env", "t", { y = 3 })(), 3, "env")
  local path = T.tmpname(".lua")
  local fh = io.open(path, "w"); fh:write("return await asyncio.sleep(0, ...)\n"); fh:close()
  T.eq(loadfile(path)("from file"), "from file", "loadfile")
  T.eq(dofile(path), nil, "dofile runs the file")
  local nf, err = loadfile(path .. ".missing")
  T.eq(nf, nil, "missing file"); T.match(err, "cannot open", "message")
end)

T.run()
