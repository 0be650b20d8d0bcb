-- sandbox.lua: the sandbox policy (ml_state_sandbox), compiled into the
-- library as bytecode.  Default deny: it builds a new global table for
-- scripts holding only what the host allowed, and leaves the state's own
-- globals, require and package to the stdlib, whose modules run in them
-- (state.c loads every embedded module in that trusted environment).
--
-- Which stdlib module needs what is not kept here by hand: the build
-- derives a module graph from the module list (every stdlib .lua file's
-- requires, and the capability stdlib/init.c declares for each C module),
-- and a module is reachable only if everything it needs is allowed.
-- needs_of maps every stdlib module to the capabilities it needs, its own
-- and those of everything it requires, directly or not, as a mask of the
-- bits in switches ({net = 1, ...}); init.c takes that closure once per
-- process, not here per state.
-- Modules that are not reachable are taken out of package.preload before
-- anything loads them, so the asyncio module never merges their names and
-- a sandboxed state never pays for them.
local allow, hostmods, needs_of, switches, G, wrap_gc, guarded, copy_lib = ...

local rawget, rawset, type, pairs, next, select, error, setmetatable, getmetatable, tostring =
  rawget, rawset, type, pairs, next, select, error, setmetatable, getmetatable, tostring
local preload, loaded, real_require = package.preload, package.loaded, require

-- switches (net, process, signal, thread, file): each grants one kind of
-- reach outside the state.  Standard libraries, and what their risky fields need.
local STDLIBS = { string = true, table = true, math = true, utf8 = true, coroutine = true,
                  os = true, io = "file", debug = "debug", package = "package" }
local OS_NEEDS = { execute = "process", exit = "exit", getenv = "env", remove = "file",
                   rename = "file", tmpname = "file", setlocale = "locale" }

local granted = {}
for name in pairs(allow) do if switches[name] then granted[name] = true end end

-- Naming a module grants what it needs ("socket" brings networking).
for name in pairs(allow) do
  local n = needs_of[name]
  if n and n ~= 0 then
    for c, bit in pairs(switches) do if n & bit ~= 0 then granted[c] = true end end
  end
end

-- Allowing io or os whole grants what they reach.  Worker threads run Lua
-- in plain states with every standard library, so "thread" holds only
-- where files and processes are allowed anyway (io and os whole imply it).
if allow.io then granted.file = true end
if allow.os then granted.process = true; granted.file = true end
if allow.io and allow.os then granted.thread = true end
if granted.thread and not (granted.file and granted.process) then granted.thread = nil end

-- The granted switches as a mask: a module is within them if it needs no
-- other bit (init.c gives a capability no switch names a bit of its own).
local gmask = 0
for c, bit in pairs(switches) do if granted[c] then gmask = gmask | bit end end
local function within(n) return n & ~gmask == 0 end

-- Internal modules are never a script's to require: a private name
-- (a component starting with '_') or the core's face to Lua.
local function internal(name)
  return name:find("^_") ~= nil or name:find("%._") ~= nil or name == "asyncio.core"
      or name == "asyncio.exceptions" or name == "asyncio.test"
end

local function public_ok(name)
  if hostmods[name] then return true end
  local n = needs_of[name]
  if n == nil or internal(name) then return false end
  if not within(n) then return false end
  -- Named, part of an allowed asyncio, or a module of a granted switch
  -- (networking on: socket and ssl too).
  return allow[name] or (allow.asyncio and name:find("^asyncio%.") ~= nil) or n ~= 0
end

-- Prune what can never load: the asyncio module merges only what stays.
-- (Every stdlib module is in needs_of; one not in package.preload is
-- taken out of package.loaded all the same.)
for name, n in pairs(needs_of) do
  if not within(n) and not hostmods[name] then
    preload[name], loaded[name] = nil, nil
  end
end

-- string.dump hands out bytecode, and binary chunks cannot be loaded here
-- anyway; the string metatable is shared with the trusted side, so a
-- script must not reach it.
G.string.dump = nil
local smt = getmetatable("")
if smt then smt.__metatable = false end

local env = {
  assert = G.assert, error = G.error, ipairs = G.ipairs, next = G.next, pairs = G.pairs,
  pcall = G.pcall, print = G.print, rawequal = G.rawequal, rawget = G.rawget, rawlen = G.rawlen,
  rawset = G.rawset, select = G.select, tonumber = G.tonumber, tostring = G.tostring,
  type = G.type, xpcall = G.xpcall, _VERSION = G._VERSION, await = G.await,
  __awcall = G.__awcall, __awmeth = G.__awmeth, __ml_async = G.__ml_async,
}
env._G = env

-- Standard libraries: copies, so that a script cannot change the
-- functions the stdlib calls (copy_lib, sandbox.c: the raw pairs, in a
-- table made for their number).  "lib.field" keeps one field.
local function pick(t, keys) -- the fields of t named in the set keys
  local c = {}
  for k in pairs(keys) do c[k] = rawget(t, k) end
  return c
end
local partial = {}
for name in pairs(allow) do
  -- "lib.field", both [%w_]+ (a plain find first: most names have no dot)
  local dot = name:find(".", 1, true)
  local lib = dot and name:sub(1, dot - 1)
  if lib and STDLIBS[lib] then
    local field = name:sub(dot + 1)
    if field:find("^[%w_]+$") then
      partial[lib] = partial[lib] or {}
      partial[lib][field] = true
    end
  end
end
local libs = {}
for lib in pairs(STDLIBS) do
  local t = G[lib]
  if type(t) ~= "table" or hostmods[lib] or lib == "package" then
    -- the host's module, or package (below)
  elseif allow[lib] or (lib == "io" and allow.file) then
    libs[lib] = copy_lib(t)
  elseif lib == "os" then
    local keys = {}
    if partial.os then for k in pairs(partial.os) do keys[k] = true end end
    for k, n in pairs(OS_NEEDS) do if granted[n] then keys[k] = true end end
    local kept = pick(t, keys)
    if next(kept) ~= nil then libs.os = kept end
  elseif partial[lib] then
    libs[lib] = pick(t, partial[lib])
  end
end
if libs.string then libs.string.dump = nil end
for lib, t in pairs(libs) do env[lib] = t end

-- require: the allowed standard libraries, the host's modules, and the
-- public stdlib modules whose needs are granted.  Never the file system.
local sloaded = { _G = env }
for lib, t in pairs(libs) do sloaded[lib] = t end
local function sandbox_require(name)
  if type(name) ~= "string" then
    error("bad argument #1 to 'require' (string expected, got " .. type(name) .. ")", 2)
  end
  local m = sloaded[name]
  if m ~= nil then return m end
  if hostmods[name] or public_ok(name) then
    m = real_require(name)
    if name == "asyncio" then m = env.asyncio or m end
    sloaded[name] = m
    return m
  end
  error("module '" .. name .. "' not found: the sandbox does not allow it", 2)
end
env.require = sandbox_require
if allow.package then
  env.package = { loaded = sloaded, config = package.config, path = "", cpath = "" }
  sloaded.package = env.package
end

if allow.asyncio then
  env.asyncio = G.asyncio
  sloaded.asyncio = G.asyncio
end

-- load: text only, in the sandbox's globals unless given others.
local raw_load = G.load
env.load = function(chunk, name, mode, ...)
  if select("#", ...) > 0 then return raw_load(chunk, name, "t", (...)) end
  return raw_load(chunk, name, "t", env)
end
if granted.file then
  local raw_loadfile = G.loadfile
  env.loadfile = function(file, mode, ...)
    if select("#", ...) > 0 then return raw_loadfile(file, "t", (...)) end
    return raw_loadfile(file, "t", env)
  end
  env.dofile = function(file)
    local f = assert(env.loadfile(file))
    return f()
  end
end

local raw_gc = G.collectgarbage
local gc_ok = { collect = true, count = true, step = true, isrunning = true }
env.collectgarbage = function(opt, ...)
  if opt ~= nil and not gc_ok[opt] then
    error("bad argument #1 to 'collectgarbage' (option '" .. tostring(opt) .. "' is not allowed here)", 2)
  end
  return raw_gc(opt, ...)
end

-- Finalizers: Lua runs __gc with hooks off, so a finalizer would escape
-- the CPU budget.  A table given a metatable with __gc gets a copy of it
-- whose __gc runs the script's function on a thread of its own, under the
-- budget (wrap_gc, sandbox.c); getmetatable still returns the original.
-- (A metamethod added to the original afterwards is not seen by objects
-- already set: the copy is made once per metatable.)
local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end
local proxies = setmetatable({}, { __mode = "k" })   -- original -> copy
local originals = setmetatable({}, { __mode = "k" }) -- copy -> original
local finof = setmetatable({}, { __mode = "k" })     -- copy -> the __gc it wraps
env.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    local fin, p = rawget(mt, "__gc"), proxies[mt]
    if p == nil or finof[p] ~= fin then
      p = copy(mt)
      p.__gc = type(fin) == "function" and wrap_gc(fin) or nil
      proxies[mt], originals[p], finof[p] = p, mt, fin
    end
    mt = p
  end
  return setmetatable(t, mt)
end
env.getmetatable = function(v)
  local m = getmetatable(v)
  return originals[m] or m
end
env.warn = G.warn

-- xpcall: the message handler runs on a thread of its own, under the
-- budget (Lua would run it with hooks off after the budget's error).
local raw_xpcall = G.xpcall
env.xpcall = function(f, msgh, ...)
  if type(msgh) ~= "function" then return raw_xpcall(f, msgh, ...) end
  return raw_xpcall(f, function(e) return guarded(msgh, e) end, ...)
end

return env
