/* sandbox.c: per-state limits (memory cap, CPU budget) and the module
 * allow-list that lets a host run untrusted scripts. */
#include <errno.h>
#include <string.h>
#include "embed.h"

/* ---- memory ---- */

/* Makes the MemoryError raised at the cap while memory is still there. */
static int memerr_p(lua_State *L) { return ml__prepare_memory_error(L); }

int ml_state_set_memory_limit(ml_State *S, size_t bytes) {
  ml_Embed *E = ml__embed(S);
  int rc;
  if (E == NULL) return -ENOMEM;
  E->err[0] = '\0';
  if (bytes) {
    if ((rc = ml__embed_pcall(S->L, memerr_p, NULL)) < 0) return rc;
    if (bytes <= ml__alloc_used(S->alloc))
      return ml__embed_fail(S, -ENOMEM, "memory limit %zu is below the %zu bytes in use",
                            bytes, ml__alloc_used(S->alloc));
  }
  E->cap = bytes;
  ml__alloc_set_cap(S->alloc, bytes);
  return ML_OK;
}

size_t ml_state_memory_used(ml_State *S) { return ml__alloc_used(S->alloc); }
size_t ml_state_memory_peak(ml_State *S) { return ml__alloc_peak(S->alloc); }

/* ---- CPU ---- */

void ml_state_set_cpu_budget(ml_State *S, unsigned long instructions) {
  ml_Embed *E = ml__embed(S);
  if (E) E->err[0] = '\0';
  S->instr_budget = instructions;
}

/* ---- the sandbox ----
 *
 * Policy, so Lua: the chunk below gets the set of allowed names and the
 * set of host modules, and strips everything else from the globals,
 * package.loaded, package.preload, require's searchers and asyncio. */

static const char sandbox_lua[] =
  "local allow, hostmods = ...\n"
  "local G, loaded, preload = _G, package.loaded, package.preload\n"
  /* asyncio loads its parts on first use, through package: load them now. */
  "if type(loaded.asyncio) == 'table' then for _ in pairs(loaded.asyncio) do end end\n"
  "local stdlibs = { io = true, os = true, debug = true, string = true, table = true,\n"
  "                  math = true, utf8 = true, coroutine = true, package = true }\n"
  /* "lib.field" keeps one field of a standard library that is not kept. */
  "local partial = {}\n"
  "for name in pairs(allow) do\n"
  "  local lib, field = name:match('^([%w_]+)%.([%w_]+)$')\n"
  "  if lib and stdlibs[lib] and not allow[lib] then\n"
  "    partial[lib] = partial[lib] or {}\n"
  "    partial[lib][field] = true\n"
  "  end\n"
  "end\n"
  /* asyncio's network (TLS too), process and thread parts come with
   * \"socket\". */
  "local net = allow.socket\n"
  "local function io_module(name)\n"
  "  return name == 'socket' or name == 'asyncio._net' or name:match('^asyncio%.subprocess')\n"
  "      or name == 'ssl' or name:match('^ssl%.')\n"
  "      or name:match('^asyncio%.streams') or name:match('^asyncio%.threads')\n"
  "      or name == 'asyncio._process' or name:match('^asyncio%._?signal') or name == 'asyncio._thread'\n"
  "end\n"
  "local function keep_module(name)\n"
  "  if hostmods[name] or allow[name] then return true end\n"
  "  if io_module(name) then return net end\n"
  "  return allow.asyncio and name:match('^asyncio%.') ~= nil\n"
  "end\n"
  /* Standard libraries. */
  "for lib in pairs(stdlibs) do\n"
  "  local t = G[lib] or loaded[lib]\n"
  "  if lib == 'package' then\n"
  "  elseif allow[lib] or hostmods[lib] then\n"
  "  elseif partial[lib] and type(t) == 'table' then\n"
  "    local kept = {}\n"
  "    for f in pairs(partial[lib]) do kept[f] = t[f] end\n"
  "    G[lib], loaded[lib] = kept, kept\n"
  "  else\n"
  "    G[lib], loaded[lib] = nil, nil\n"
  "  end\n"
  "end\n"
  "string.dump = nil\n"
  /* require: only package.preload, no file system, no C libraries. */
  "local searchers = package.searchers\n"
  "for i = #searchers, 2, -1 do searchers[i] = nil end\n"
  "package.path, package.cpath = '', ''\n"
  "package.loadlib, package.searchpath = nil, nil\n"
  "if not allow.package then G.package, loaded.package = nil, nil end\n"
  "for name in pairs(preload) do\n"
  "  if not keep_module(name) then preload[name] = nil end\n"
  "end\n"
  "for name in pairs(loaded) do\n"
  "  if name ~= '_G' and not stdlibs[name] and not keep_module(name) then loaded[name] = nil end\n"
  "end\n"
  /* The base library. */
  "G.dofile, G.loadfile = nil, nil\n"
  "local raw_load = load\n"
  "G.load = function(chunk, name, mode, ...)\n"
  "  if select('#', ...) > 0 then return raw_load(chunk, name, 't', (...)) end\n"
  "  return raw_load(chunk, name, 't')\n"
  "end\n"
  "local raw_gc = collectgarbage\n"
  "local gc_ok = { collect = true, count = true, step = true, isrunning = true }\n"
  "G.collectgarbage = function(opt, ...)\n"
  "  if opt ~= nil and not gc_ok[opt] then\n"
  "    error(\"bad argument #1 to 'collectgarbage' (option '\" .. tostring(opt) .. \"' is not allowed here)\", 2)\n"
  "  end\n"
  "  return raw_gc(opt, ...)\n"
  "end\n"
  /* asyncio without network, processes and threads. */
  "local asyncio = loaded.asyncio\n"
  "if not allow.asyncio then G.asyncio = nil\n"
  "elseif not net and type(asyncio) == 'table' then\n"
  "  for k in pairs(asyncio) do\n"
  "    if type(k) == 'string' and (k:match('^open_') or k:match('^start_') or k:match('subprocess')\n"
  "        or k == 'to_thread' or k == 'run_in_executor' or k:match('^sock_')\n"
  "        or k == 'getaddrinfo' or k == 'getnameinfo' or k == 'StreamReader' or k == 'StreamWriter') then\n"
  "      asyncio[k] = nil\n"
  "    end\n"
  "  end\n"
  "  local methods = asyncio.Loop\n"
  "  local pure = { time = true, call_soon = true, call_later = true, call_at = true,\n"
  "    create_future = true, create_task = true, stop = true, is_running = true,\n"
  "    is_closed = true, get_debug = true, set_debug = true, set_exception_handler = true,\n"
  "    get_exception_handler = true, call_exception_handler = true,\n"
  "    default_exception_handler = true, call_soon_threadsafe = true,\n"
  "    run_until_complete = true, run_forever = true }\n"
  "  if type(methods) == 'table' then\n"
  "    for k in pairs(methods) do\n"
  "      if not pure[k] then methods[k] = nil end\n"
  "    end\n"
  "  end\n"
  "end\n"
  /* Worker threads run in plain states with every standard library: only
   * for a script that may have io and os anyway. */
  "if not (allow.io and allow.os) then\n"
  "  preload['asyncio._thread'], loaded['asyncio._thread'] = nil, nil\n"
  "  if type(asyncio) == 'table' then\n"
  "    asyncio.to_thread, asyncio.ThreadPoolExecutor = nil, nil\n"
  "    local methods = asyncio.Loop\n"
  "    if type(methods) == 'table' then methods.run_in_executor, methods.set_default_executor = nil, nil end\n"
  "  end\n"
  "end\n"
  "G.arg = nil\n";

typedef struct Sandbox {
  const char *const *allow;
} Sandbox;

static const char *const default_allow[] = { ML_SANDBOX_DEFAULT, NULL };

static int sandbox_p(lua_State *L) {
  Sandbox *a = lua_touserdata(L, 1);
  const char *const *p;
  if (luaL_loadbufferx(L, sandbox_lua, sizeof sandbox_lua - 1, "=[sandbox]", "t") != LUA_OK)
    return lua_error(L);
  lua_newtable(L);
  for (p = a->allow; *p; p++) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, *p);
  }
  luaL_getsubtable(L, LUA_REGISTRYINDEX, ML_HOSTMODS_KEY);
  lua_call(L, 2, 0);
  return 0;
}

int ml_state_sandbox(ml_State *S, const char *const *allow) {
  Sandbox a = { allow ? allow : default_allow };
  ml_Embed *E = ml__embed(S);
  if (E == NULL) return -ENOMEM;
  E->err[0] = '\0';
  return ml__embed_pcall(S->L, sandbox_p, &a);
}
