-- The interactive REPL, driven as a person would: through a pseudo-terminal
-- made by tmux, typing keys and reading the screen.  Each case gets a fresh
-- tmux session on this script's own tmux server; HOME and MOONLOOP_HISTORY
-- point at a temporary directory.  The screen is polled every 50 ms for at
-- most WAIT seconds: that is waiting for an event we cannot be told about,
-- not a timing assertion.
local asyncio = require "asyncio"
local T = require "asyncio.test"

local BIN = os.getenv("MOONLOOP_BIN") or "build/moonloop"
local WAIT = 5

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("a")
  p:close()
  return out
end

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- A scratch directory, and a private tmux server whose socket lives in it
-- (tmux -S: like -L with a unique name, but removed with the directory).
local TMP = sh("mktemp -d"):gsub("%s+$", "")
local TMUX = "tmux -S " .. q(TMP .. "/tmux.sock") .. " -f /dev/null"

if sh("command -v tmux") == "" then
  print("tmux is not installed: run make deps")
  print("0 passed, 1 failed")
  os.exit(1)
end

-- A session that lives as long as the suite, so that the tmux server does
-- not exit (and restart) between cases.
sh(("%s new-session -d -s keep -x 80 -y 24 'sleep 600'"):format(TMUX))

local Term = {}
Term.__index = Term
local nsessions = 0

-- Starts moonloop (with extra arguments args) in a new session.  The shell
-- prints the exit status when moonloop leaves, then keeps the pane open.
local function start(args)
  nsessions = nsessions + 1
  local name = "s" .. nsessions
  local cmd = ("cd %s && env HOME=%s MOONLOOP_HISTORY=%s/history TERM=xterm %s %s; echo EXIT=$?; sleep 600")
    :format(q(TMP), q(TMP), TMP, q(BIN), args or "")
  sh(("%s new-session -d -s %s -x 110 -y 50 %s"):format(TMUX, name, q(cmd)))
  return setmetatable({ name = name }, Term)
end

-- The screen's text, trailing blank lines dropped.
function Term:screen()
  return (sh(("%s capture-pane -p -t %s"):format(TMUX, self.name)):gsub("%s+$", ""))
end

-- Types text literally (no Enter).
function Term:type(text)
  sh(("%s send-keys -t %s -l -- %s"):format(TMUX, self.name, q(text)))
end

-- Presses keys named as tmux names them (Enter, Tab, C-c, C-d, Up).
function Term:key(...)
  sh(("%s send-keys -t %s %s"):format(TMUX, self.name, table.concat({ ... }, " ")))
end

-- Types a line and presses Enter.
function Term:line(text)
  self:type(text)
  self:key("Enter")
end

-- Waits until the screen satisfies pred (a plain string it must contain,
-- or a function of the screen); returns the screen.  Fails after WAIT s.
function Term:wait(pred, what)
  local test = pred
  if type(pred) == "string" then
    test = function(s) return s:find(pred, 1, true) ~= nil end
  end
  local s
  for _ = 1, WAIT / 0.05 do
    s = self:screen()
    if test(s) then return s end
    await asyncio.sleep(0.05)
  end
  T.ok(false, (what or ("screen shows " .. string.format("%q", tostring(pred))))
              .. "; the screen was:\n" .. s)
end

-- The last non-empty line of the screen.
local function last_line(s)
  return s:match("([^\n]*)$")
end

-- Waits for the prompt ("> ", shown by capture-pane without its trailing
-- space) to be the last line, with count prompts on screen at least.
function Term:prompt(count, what)
  return self:wait(function(s)
    local n = select(2, s:gsub("\n>", "")) + (s:find("^>") and 1 or 0)
    return last_line(s) == ">" and n >= count
  end, what or ("prompt number " .. count))
end

function Term:close()
  sh(("%s kill-session -t %s"):format(TMUX, self.name))
end

-- Runs fn(term) in a fresh session, closing it however fn ends.
local function session(args, fn)
  local t = start(args)
  local ok, err = pcall(fn, t)
  t:close()
  if not ok then error(err, 0) end
end

---------------------------------------------------------------- cases

T.case("top-level await of a sleep prints its value", async function()
  session("", function(t)
    t:prompt(1, "the first prompt")
    t:line('await asyncio.sleep(0.1, "slept")')
    local s = t:prompt(2, "a prompt after the await")
    T.ok(s:find("\nslept\n>", 1, true), "the awaited value is printed:\n" .. s)
  end)
end)

T.case("expressions print their values, tables readably", async function()
  session("", function(t)
    t:prompt(1)
    t:line("1 + 1")
    t:line("= {1, 2, x = {y = 'z'}}")
    t:line("local hidden = 5")
    t:line("hidden")
    t:line("x = 10")
    t:line("x")
    local s = t:prompt(7)
    T.ok(s:find("> 1 + 1\n2\n", 1, true), "1 + 1 prints 2:\n" .. s)
    T.ok(s:find('{1, 2, x = {y = "z"}}', 1, true), "the table is printed readably:\n" .. s)
    T.ok(s:find("> hidden\nnil\n", 1, true), "a local is scoped to its input:\n" .. s)
    T.ok(s:find("> x\n10\n", 1, true), "a global persists between inputs:\n" .. s)
  end)
end)

T.case("a background task prints while the prompt waits, and the line survives", async function()
  session("", function(t)
    t:prompt(1)
    t:line("bg = asyncio.create_task((async function() for i = 1, 3 do "
           .. "await asyncio.sleep(0.1); print('tick ' .. i) end end)())")
    t:prompt(2)
    t:type("y = 40")                -- typed, not entered, while ticks arrive
    local s = t:wait("tick 3")
    s = t:wait(function(x) return last_line(x) == "> y = 40" end,
               "the prompt and the partial line are redrawn below the output")
    T.ok(s:find("tick 1\ntick 2\ntick 3", 1, true), "the ticks are whole lines:\n" .. s)
    t:line(" + 2")                  -- finishes the partial line
    t:line("y")
    s = t:prompt(4)
    T.ok(s:find("\n42\n>$"), "the partial input was kept by the editor:\n" .. s)
  end)
end)

T.case("a server-like pair: started in one input, reached from the next", async function()
  session("", function(t)
    t:prompt(1)
    if asyncio.start_server and asyncio.open_connection then
      t:line("srv = await asyncio.start_server(async function(r, w) "
             .. "local l = await r:readline(); w:write('echo:' .. l); await w:drain(); w:close() end, "
             .. "'127.0.0.1', 0)")
      t:prompt(2)
      t:line("port = srv.sockets[1]:getsockname()[2]")
      t:line("r, w = await asyncio.open_connection('127.0.0.1', port)")
      t:line("w:write('hello\\n')")
      t:line("await r:readline()")
    end
    -- The same shape with a Queue: a serving task started in one input,
    -- requests sent from the next ones.
    t:line("requests = asyncio.Queue()")
    t:line("server = asyncio.create_task((async function() while true do "
           .. "local req, reply = table.unpack(await requests:get()); reply:set_result('pong:' .. req) end end)())")
    t:line("function call(x) local f = asyncio.Future(); requests:put_nowait({x, f}); return f end")
    t:line("await call('a')")
    t:line("await call('b')")
    local s = t:wait("pong:b")
    T.ok(s:find("\npong:a\n", 1, true), "the first request was served:\n" .. s)
    if asyncio.start_server then
      T.ok(s:find("echo:hello", 1, true), "the TCP server answered:\n" .. s)
    end
  end)
end)

T.case("an error prints a traceback and the REPL goes on", async function()
  session("", function(t)
    t:prompt(1)
    t:line("local function f() error('boom') end f()")
    local s = t:prompt(2)
    T.ok(s:find("stdin:1: boom\nstack traceback:", 1, true), "the error and a traceback:\n" .. s)
    t:line("nosuch.field")
    t:line("1 +* 2")
    t:line("print('still here')")
    s = t:prompt(5)
    T.ok(s:find("attempt to index a nil value (global 'nosuch')", 1, true), "a runtime error:\n" .. s)
    T.ok(s:find("unexpected symbol", 1, true), "a syntax error:\n" .. s)
    T.ok(s:find("\nstill here\n>$"), "the REPL runs the next input:\n" .. s)
  end)
end)

T.case("a multi-line function definition continues on a >> prompt", async function()
  session("", function(t)
    t:prompt(1)
    t:line("async function double(x)")
    t:wait(function(s) return last_line(s) == ">>" end, "the continuation prompt")
    t:line("  await asyncio.sleep(0)")
    t:line("  return x * 2")
    t:line("end")
    t:line("await double(21)")
    t:line("s = [[one")
    t:line("two]]")
    t:line("s")
    local s = t:prompt(4)
    T.ok(s:find(">> end\n> await double(21)\n42\n", 1, true), "the function was defined:\n" .. s)
    T.ok(s:find("\none\ntwo\n>$"), "a long string spans lines:\n" .. s)
  end)
end)

T.case("Ctrl+C cancels a long await; at the prompt it clears the line", async function()
  session("", function(t)
    t:prompt(1)
    t:line("await asyncio.sleep(100)")
    -- The await has started when the editor has let go of the line: the
    -- prompt is gone and the input is on screen alone.
    t:wait(function(s) return last_line(s) == "> await asyncio.sleep(100)" end)
    t:key("C-c")
    local s = t:prompt(2, "a prompt after Ctrl+C")
    T.ok(s:find("KeyboardInterrupt", 1, true), "the cancellation is reported:\n" .. s)
    t:type("garbage garbage")
    t:wait("> garbage garbage")
    t:key("C-c")
    t:line("1 + 2")
    s = t:prompt(4)
    T.ok(s:find("\n> 1 + 2\n3", 1, true), "Ctrl+C dropped the typed text:\n" .. s)
  end)
end)

T.case("Ctrl+C stops code that never awaits", async function()
  session("", function(t)
    t:prompt(1)
    t:line("while true do end")
    t:wait(function(s) return last_line(s) == "> while true do end" end)
    -- The first Ctrl+C cancels the task at its next await, which never
    -- comes; a second one stops the Lua code itself.  Two quick presses
    -- may reach the process as one signal, so press until it stops.
    local s
    for _ = 1, 10 do
      t:key("C-c")
      for _ = 1, 10 do
        s = t:screen()
        if last_line(s) == ">" then break end
        await asyncio.sleep(0.05)
      end
      if last_line(s) == ">" then break end
    end
    s = t:prompt(2, "a prompt after Ctrl+C")
    T.ok(s:find("KeyboardInterrupt", 1, true), "the interruption is reported:\n" .. s)
  end)
end)

T.case("Ctrl+D leaves with status 0, cancelling what is left", async function()
  session("", function(t)
    t:prompt(1)
    t:line("asyncio.create_task((async function() local _ <close> = "
           .. "setmetatable({}, {__close = function() print('cleaned up') end}); "
           .. "await asyncio.sleep(100) end)())")
    t:prompt(2)
    t:key("C-d")
    local s = t:wait("EXIT=")
    T.ok(s:find("cleaned up", 1, true), "the leftover task was cancelled and closed:\n" .. s)
    T.ok(s:find("EXIT=0", 1, true), "exit status 0:\n" .. s)
  end)
end)

T.case("os.exit(code) leaves with that status", async function()
  session("", function(t)
    t:prompt(1)
    t:line("os.exit(3)")
    local s = t:wait("EXIT=")
    T.ok(s:find("EXIT=3", 1, true), "exit status 3:\n" .. s)
  end)
end)

T.case("tab completes globals, fields and methods", async function()
  session("", function(t)
    t:prompt(1)
    t:type("asyncio.gat")
    t:key("Tab")
    t:wait("> asyncio.gather", "asyncio.gat<Tab> completes to asyncio.gather")
    t:key("C-c")
    t:line("q = asyncio.Queue()")
    t:type("q:put_n")
    t:key("Tab")
    t:wait("> q:put_nowait", "q:put_n<Tab> completes a method from the metatable")
    t:key("C-c")
    t:type("prin")
    t:key("Tab")
    t:wait("> print", "a global")
    t:key("C-c")
  end)
end)

T.case("history is saved and recalled", async function()
  session("", function(t)
    t:prompt(1)
    t:line("remembered = 'from the last session'")
    t:prompt(2)
    t:key("C-d")
    t:wait("EXIT=0")
  end)
  local f = io.open(TMP .. "/history")
  local text = f and f:read("a") or ""
  if f then f:close() end
  T.ok(text:find("remembered", 1, true), "the history file has the input:\n" .. text)
  session("", function(t)
    t:prompt(1)
    t:key("Up")
    t:wait("> remembered = 'from the last session'", "Up recalls the last input")
  end)
end)

T.case("-i runs a script, then the REPL with its globals and tasks", async function()
  local f = assert(io.open(TMP .. "/script.lua", "w"))
  f:write([[
greeting = "hello from the script"
ready = asyncio.Future()
waiter = asyncio.create_task((async function() return "got " .. await ready end)())
print("script done")
]])
  f:close()
  session("-i script.lua", function(t)
    t:prompt(1)
    t:line("greeting")
    t:line("ready:set_result('it')")
    t:line("await waiter")
    local s = t:prompt(4)
    T.ok(s:find("script done", 1, true), "the script ran first:\n" .. s)
    T.ok(s:find("\nhello from the script\n", 1, true), "its globals are there:\n" .. s)
    T.ok(s:find("\ngot it\n", 1, true), "its task was still alive:\n" .. s)
  end)
end)

local ok = T.run()
sh(TMUX .. " kill-server")
sh("rm -rf " .. q(TMP))
if not ok then os.exit(1) end
