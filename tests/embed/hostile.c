/* hostile.c: a plugin host that runs hostile scripts, each in its own
 * sandboxed state with the default allow-list, a memory cap and a CPU
 * budget, and checks that every escape fails: the host stays alive, the
 * limit holds, and the script is told why.  Built and run by
 * tests/embed/hosts.sh (make test), also under ASan.
 *
 * Each case is a script that returns "contained" when every route it
 * tried was closed, or a host-side check of how it ended. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "moonloop.h"

static int passed, failed;
static char reported[2048];
/* Plugins get a time budget of this many microseconds instead of an
 * instruction budget, if not 0. */
static unsigned long time_budget_us;

static void on_error(ml_State *S, const char *msg, void *ud) {
  (void)S;
  (void)ud;
  snprintf(reported, sizeof reported, "%s", msg);
}

/* A fresh sandboxed plugin state, as a plugin host makes one. */
static ml_State *plugin(const char *const *allow) {
  ml_State *S = ml_state_new(NULL);
  if (S == NULL) {
    fprintf(stderr, "no state\n");
    exit(1);
  }
  ml_state_set_error_handler(S, on_error, NULL);
  if (ml_state_sandbox(S, allow) != ML_OK || ml_state_set_memory_limit(S, 16u << 20) != ML_OK) {
    fprintf(stderr, "set-up: %s\n", ml_state_error(S));
    exit(1);
  }
  if (time_budget_us) {
    /* The watchdog's budget alone: no instruction is counted. */
    if (ml_state_set_time_budget(S, time_budget_us) != ML_OK) {
      fprintf(stderr, "set-up: %s\n", ml_state_error(S));
      exit(1);
    }
  } else {
    ml_state_set_cpu_budget(S, 5 * 1000 * 1000);
  }
  return S;
}

/* Runs src as a task of a new plugin; writes how it ended into out:
 * "ok:<first result>" or "error:<message>". */
static void run_plugin(const char *const *allow, const char *src, char *out, size_t size) {
  ml_State *S = plugin(allow);
  lua_State *L = ml_state_lua(S);
  ml_Future *t = NULL;
  reported[0] = '\0';
  if (ml_load_string(L, src, strlen(src), "=plugin") != ML_OK) {
    snprintf(out, size, "load:%s", ml_state_error(S));
  } else if (ml_task_spawn(L, 0, "plugin", &t) != ML_OK) {
    snprintf(out, size, "spawn:%s", ml_state_error(S));
  } else {
    int rc = ml_state_run(S);
    if (rc < 0) {
      snprintf(out, size, "run:%d:%s", rc, ml_state_error(S));
    } else if (ml_future_state(t) == ML_FUTURE_RESULT) {
      int n = ml_future_push_result(L, t);
      const char *r = n > 0 ? lua_tostring(L, -n) : NULL;
      snprintf(out, size, "ok:%s", r ? r : "(no string)");
      if (n > 0) lua_pop(L, n);
    } else if (ml_future_push_error(L, t) == ML_OK) {
      snprintf(out, size, "error:%s", luaL_tolstring(L, -1, NULL));
      lua_pop(L, 2);
    } else {
      snprintf(out, size, "state:%d", ml_future_state(t));
    }
  }
  if (t) ml_future_release(L, t);
  ml_state_close(S);
}

/* expect(name, src, pattern): the plugin's outcome starts with pattern
 * ("ok:contained") or contains it. */
static void expect(const char *name, const char *src, const char *want) {
  char out[2048];
  if (getenv("HOSTILE_VERBOSE")) fprintf(stderr, "case: %s\n", name);
  run_plugin(NULL, src, out, sizeof out);
  if (strncmp(out, want, strlen(want)) == 0 || strstr(out, want)) {
    passed++;
  } else {
    failed++;
    printf("FAIL %s: wanted '%s', got '%s'\n", name, want, out);
  }
}

int main(void) {
  /* ---- require and package: no internal module by any name ---- */
  expect(
    "require internals",
    "for _, m in ipairs { 'socket', 'asyncio._net', 'asyncio._transport', 'asyncio._server',\n"
    "    'asyncio._stream', 'asyncio._process', 'asyncio._signal', 'asyncio.transports',\n"
    "    'asyncio.streams', 'asyncio.subprocess', 'asyncio.core', 'asyncio._util', 'io', 'debug',\n"
    "    'package', 'os.execute' } do\n"
    "  local ok, e = pcall(require, m)\n"
    "  if ok then return 'required ' .. m end\n"
    "  if not tostring(e):find('sandbox') then return 'odd error for ' .. m .. ': ' .. tostring(e) end\n"
    "end\n"
    "return 'contained'",
    "ok:contained");
  expect(
    "package tables",
    "if package ~= nil then return 'package is there' end\n"
    "if rawget(_G, 'package') ~= nil then return 'rawget package' end\n"
    "for k, v in pairs(_G) do\n"
    "  if type(v) == 'table' and (rawget(v, 'preload') or rawget(v, 'searchers')) then return 'found ' .. k end\n"
    "end\n"
    "return 'contained'",
    "ok:contained");
  /* The protocol base classes (asyncio.protocols) are plain tables of
   * no-op methods that reach nothing: they stay. */
  expect(
    "the asyncio module has no network, process or signal names",
    "for _, k in ipairs { 'open_connection', 'start_server', 'open_unix_connection',\n"
    "    'start_unix_server', 'create_subprocess_exec', 'create_subprocess_shell', 'StreamReader',\n"
    "    'StreamWriter', 'Transport', 'to_thread', 'ThreadPoolExecutor' } do\n"
    "  if asyncio[k] ~= nil then return 'asyncio.' .. k end\n"
    "end\n"
    "local loop = asyncio.get_running_loop()\n"
    "for _, k in ipairs { 'sock_connect', 'sock_recv', 'create_connection', 'create_server',\n"
    "    'create_unix_server', 'create_datagram_endpoint', 'getaddrinfo', 'add_reader', 'add_writer',\n"
    "    'subprocess_exec', 'add_signal_handler', 'connect_read_pipe', 'run_in_executor' } do\n"
    "  if loop[k] ~= nil then return 'loop:' .. k end\n"
    "end\n"
    "for k, v in pairs(asyncio) do\n"
    "  if type(v) == 'table' and rawget(v, 'socketpair') then return 'socket in asyncio.' .. k end\n"
    "end\n"
    "return 'contained'",
    "ok:contained");
  /* ---- metatables of what is exposed ---- */
  expect(
    "metatables",
    "if getmetatable('') ~= false then return 'the string metatable: ' .. tostring(getmetatable('')) end\n"
    "if ('x').dump then return 'string.dump via a string' end\n"
    "local seen, queue = {}, { asyncio, asyncio.get_running_loop(), asyncio.Future(),\n"
    "  asyncio.current_task(), asyncio.Queue(), asyncio.Lock(), asyncio.Event(), _G, string, os }\n"
    "local i = 1\n"
    "while i <= #queue and i < 5000 do\n"
    "  local v = queue[i]; i = i + 1\n"
    "  if not seen[v] then\n"
    "    seen[v] = true\n"
    "    local mt = getmetatable(v)\n"
    "    if type(mt) == 'table' then queue[#queue + 1] = mt end\n"
    "    if type(v) == 'table' then\n"
    "      if rawget(v, 'socketpair') or rawget(v, 'preload') or rawget(v, 'searchers')\n"
    "          or rawget(v, 'getupvalue') or rawget(v, 'execute') or rawget(v, 'open') and rawget(v, 'popen') then\n"
    "        return 'reached a forbidden table'\n"
    "      end\n"
    "      for k, x in next, v do\n"
    "        if type(x) == 'table' or type(x) == 'userdata' then queue[#queue + 1] = x end\n"
    "        if type(k) == 'table' then queue[#queue + 1] = k end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return 'contained'",
    "ok:contained");
  /* ---- error objects ---- */
  expect(
    "error objects",
    "local ok, e = pcall(function() return await asyncio.wait_for(asyncio.sleep(1), 0) end)\n"
    "local mt = getmetatable(e)\n"
    "for k, v in pairs(type(mt) == 'table' and mt or {}) do\n"
    "  if type(v) == 'table' and (rawget(v, 'socketpair') or rawget(v, 'preload')) then return 'leak in ' .. k end\n"
    "end\n"
    "local ok2, e2 = pcall(error, setmetatable({}, { __index = function() return 1 end }))\n"
    "return 'contained'",
    "ok:contained");
  /* ---- debug, load, string.dump, collectgarbage ---- */
  expect("debug is gone",
         "if debug ~= nil then return 'debug' end\n"
         "return 'contained'",
         "ok:contained");
  expect("binary chunks",
         "local f, e = load('\\27Lua\\84\\0', 'x', 'b')\n"
         "if f then return 'a binary chunk loaded' end\n"
         "local once = false\n"
         "f = load(function() if once then return nil end once = true return '\\27Lua' end)\n"
         "if f then return 'a binary chunk loaded from a function' end\n"
         "if string.dump ~= nil then return 'string.dump' end\n"
         "local g = load('return package', 'x', 't')\n"
         "if g() ~= nil then return 'load sees the real globals' end\n"
         "return 'contained'",
         "ok:contained");
  expect(
    "collectgarbage",
    "for _, o in ipairs { 'stop', 'generational', 'incremental', 'setpause', 'setstepmul' } do\n"
    "  if pcall(collectgarbage, o) then return 'collectgarbage ' .. o end\n"
    "end\n"
    "collectgarbage('collect')\n"
    "return 'contained'",
    "ok:contained");
  expect(
    "files and processes",
    "if io or dofile or loadfile or (os and (os.execute or os.remove or os.rename or os.exit or os.getenv)) then\n"
    "  return 'a file or process function'\n"
    "end\n"
    "return 'contained'",
    "ok:contained");
  /* ---- coroutines: the hidden threads of tasks ---- */
  expect(
    "coroutines",
    "local co = coroutine.create(function() return await asyncio.sleep(0, 'in a coroutine') end)\n"
    "local ok, r = coroutine.resume(co)\n"
    "local t = asyncio.create_task(asyncio.sleep(10))\n"
    "await asyncio.sleep(0)\n"
    "for _, c in ipairs { t:get_coro() } do\n"
    "  if type(c) == 'thread' and coroutine.resume(c) then return 'resumed a task thread' end\n"
    "end\n"
    "t:cancel()\n"
    "return 'contained'",
    "ok:contained");
  /* ---- the CPU budget cannot be caught ---- */
  expect("a busy loop stops", "while true do end", "error:");
  expect("pcall does not catch the budget",
         "while true do pcall(function() while true do end end) end", "CPU budget");
  expect(
    "xpcall and an error handler do not catch it either",
    "local n = 0\n"
    "while true do xpcall(function() while true do end end, function(e) n = n + 1; while true do end end) end",
    "CPU budget");
  expect(
    "a coroutine does not hide the loop",
    "local co = coroutine.wrap(function() while true do pcall(function() while true do end end) end end)\n"
    "while true do pcall(co) end",
    "CPU budget");
  expect("to-be-closed variables do not restart it",
         "while true do\n"
         "  pcall(function()\n"
         "    local x <close> = setmetatable({}, { __close = function() while true do end end })\n"
         "    while true do end\n"
         "  end)\n"
         "end",
         "CPU budget");
  /* ---- coroutines: the budget follows the thread that runs ---- */
  expect("a loop in a coroutine, from its first instruction",
         "coroutine.wrap(function() while true do end end)()", "CPU budget");
  expect("a loop in coroutine.resume",
         "local co = coroutine.create(function() while true do end end)\n"
         "local ok, e = coroutine.resume(co)\n"
         "while true do end",
         "CPU budget");
  expect("two coroutines passing control back and forth",
         "local a = coroutine.wrap(function() while true do coroutine.yield() end end)\n"
         "while true do a() end",
         "CPU budget");
  expect("coroutines nested fifty deep",
         "local function nest(n)\n"
         "  if n == 0 then while true do end end\n"
         "  return coroutine.wrap(function() return nest(n - 1)() end)\n"
         "end\n"
         "nest(50)()",
         "CPU budget");
  expect("a coroutine that catches the budget and loops on",
         "local co = coroutine.wrap(function()\n"
         "  while true do pcall(coroutine.wrap(function() while true do end end)) end\n"
         "end)\n"
         "while true do pcall(co) end",
         "CPU budget");
  expect("a generator in a task that awaits, then loops",
         "local gen = coroutine.wrap(function()\n"
         "  await asyncio.sleep(0)\n"
         "  while true do end\n"
         "end)\n"
         "gen()",
         "CPU budget");
  /* ---- long C calls: the string library's pattern matching ---- */
  expect("a backtracking find", "return string.rep('a', 1e6):find(('a*'):rep(20) .. 'b')",
         "CPU budget");
  expect("pcall does not catch a match past the budget",
         "local s, p = string.rep('a', 1e5), ('a*'):rep(20) .. 'b'\n"
         "while true do pcall(string.find, s, p) pcall(string.match, s, p) end",
         "CPU budget");
  expect("match, gmatch and gsub, as methods of a string",
         "local s, p = string.rep('a', 1e5), ('a-'):rep(12) .. 'b'\n"
         "local done = {}\n"
         "for _, f in ipairs { function() return s:match(p) end,\n"
         "    function() for x in s:gmatch(p) do end end,\n"
         "    function() return s:gsub(p, '') end } do\n"
         "  local ok, e = pcall(f)\n"
         "  done[#done + 1] = tostring(e)\n"
         "end\n"
         "return table.concat(done, ' / ')",
         "CPU budget");
  expect("back references and %b on a long subject",
         "local s = string.rep('(', 1e5)\n"
         "return s:find(('%b()?'):rep(8) .. 'x') or s:find('((.-)%2)%1$')",
         "CPU budget");
  expect(
    "a match in a finalizer",
    "setmetatable({}, { __gc = function() string.rep('a', 1e5):find(('a*'):rep(20) .. 'b') end })\n"
    "collectgarbage('collect')\n"
    "return 'contained'",
    "ok:contained");
  expect(
    "a plain find of a long needle is linear",
    "local hay, needle = string.rep('a', 4e6), string.rep('a', 2e6) .. 'b'\n"
    "return tostring(hay:find(needle, 1, true)) .. ' ' .. tostring(select(2, hay:gsub('a', 'a', 10)))",
    "ok:nil 10");
  /* ---- finalizers ---- */
  expect("a finalizer that never stops",
         "setmetatable({}, { __gc = function() while true do end end })\n"
         "collectgarbage('collect')\n"
         "return 'contained'",
         "ok:contained");
  expect(
    "a finalizer that catches the budget",
    "setmetatable({}, { __gc = function() while true do pcall(function() while true do end end) end end })\n"
    "collectgarbage('collect')\n"
    "return 'contained'",
    "ok:contained");
  expect("a finalizer swapped in after setmetatable",
         "local mt = { __gc = function() end }\n"
         "local o = setmetatable({}, mt)\n"
         "mt.__gc = function() while true do end end\n"
         "o = nil\n"
         "collectgarbage('collect')\n"
         "return getmetatable(setmetatable({}, mt)) == mt and 'contained' or 'getmetatable lies'",
         "ok:contained");
  expect("finalizers left for the close",
         "for i = 1, 10 do setmetatable({}, { __gc = function() while true do end end }) end\n"
         "return 'contained'",
         "ok:contained");
  /* ---- memory ---- */
  expect("the memory cap", "local t = {} while true do t[#t + 1] = string.rep('x', 1e5) .. #t end",
         "not enough memory");

  /* ---- the time budget: the watchdog alone stops the step ---- */
  time_budget_us = 20 * 1000;
  expect("time budget: a busy loop", "while true do end", "time budget of 20 ms");
  expect("time budget: pcall does not catch it",
         "while true do pcall(function() while true do end end) end", "time budget");
  expect(
    "time budget: xpcall's handler does not either",
    "while true do xpcall(function() while true do end end, function() while true do end end) end",
    "time budget");
  expect(
    "time budget: a loop in a coroutine",
    "local co = coroutine.wrap(function() while true do pcall(function() while true do end end) end end)\n"
    "while true do pcall(co) end",
    "time budget");
  expect("time budget: coroutines passing control",
         "local a = coroutine.wrap(function() while true do coroutine.yield() end end)\n"
         "while true do a() end",
         "time budget");
  expect("time budget: a backtracking find",
         "return string.rep('a', 1e6):find(('a*'):rep(20) .. 'b')", "time budget");
  expect("time budget: a step that awaits is not stopped",
         "for i = 1, 3 do local n = 0 for j = 1, 1e4 do n = n + j end await asyncio.sleep(0) end\n"
         "return 'contained'",
         "ok:contained");
  /* The finalizer is stopped by the fixed limit; the time it took is the
   * step's, which is then past its budget. */
  expect("time budget: a finalizer that never stops",
         "setmetatable({}, { __gc = function() while true do end end })\n"
         "collectgarbage('collect')\n"
         "return 'contained'",
         "time budget");
  time_budget_us = 0;

  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
