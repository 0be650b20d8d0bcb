-- asyncio.exceptions: the exception classes, Python's hierarchy in Lua.
--
-- A class is a table; calling it makes an instance (a table whose
-- metatable is the class).  `asyncio.isinstance(v, cls)` walks the chain
-- of bases and works on any value.  tostring(e) reads "Name: message".

local M = {}
local classes = {}

local function tostring_exc(e)
  local cls = getmetatable(e)
  local msg = cls.__str(e)
  if msg == nil or msg == "" then return cls.__name end
  return cls.__name .. ": " .. msg
end

local function default_str(e)
  local args = e.args
  if args.n == 0 then return "" end
  if args.n == 1 then return args[1] == nil and "" or tostring(args[1]) end
  local parts = {}
  for i = 1, args.n do parts[i] = tostring(args[i]) end
  return "(" .. table.concat(parts, ", ") .. ")"
end

local class_mt = {
  __call = function(cls, ...)
    local e = setmetatable({ args = table.pack(...) }, cls)
    cls.__init(e, ...)
    return e
  end,
  __tostring = function(cls) return "<class '" .. cls.__name .. "'>" end,
}

-- Defines class `name` deriving from `base`; init(e, ...) fills fields.
local function class(name, base, init, str)
  local cls = {
    __name = name,
    __base = base,
    __tostring = tostring_exc,
    __init = init or (base and base.__init) or function(e, msg) e.message = msg end,
    __str = str or (base and base.__str) or default_str,
  }
  cls.__index = cls
  if base then setmetatable(cls, { __index = base, __call = class_mt.__call,
                                   __tostring = class_mt.__tostring })
  else setmetatable(cls, class_mt) end
  M[name] = cls
  classes[name] = cls
  return cls
end
M.class = class

-- True if class c is cls or derives from it (through __base, or the
-- extra bases in __bases, as Python's multiple inheritance).
local function derives(c, cls)
  while type(c) == "table" do
    if c == cls then return true end
    local more = rawget(c, "__bases")
    if more then
      for i = 1, #more do if derives(more[i], cls) then return true end end
    end
    c = rawget(c, "__base")
  end
  return false
end

-- True if v is an instance of cls (or of a subclass of it).
function M.isinstance(v, cls)
  if type(v) ~= "table" then return false end
  return derives(getmetatable(v), cls)
end

local BaseException = class("BaseException", nil, function(e, msg) e.message = msg end)
local Exception = class("Exception", BaseException)
class("CancelledError", BaseException)
class("KeyboardInterrupt", BaseException)
class("SystemExit", BaseException)
class("InvalidStateError", Exception)
class("TypeError", Exception)
class("ValueError", Exception)
class("RuntimeError", Exception)
class("MemoryError", Exception)
class("KeyError", Exception)
class("NotImplementedError", M.RuntimeError)
class("QueueEmpty", Exception)
class("QueueFull", Exception)
class("QueueShutDown", Exception)
class("BrokenBarrierError", M.RuntimeError)
class("SendfileNotAvailableError", M.RuntimeError)

class("IncompleteReadError", Exception, function(e, partial, expected)
  e.partial, e.expected = partial, expected
  e.message = string.format("%d bytes read on a total of %s expected bytes",
                            #partial, expected == nil and "undefined" or tostring(expected))
end, function(e) return e.message end)

class("LimitOverrunError", Exception, function(e, message, consumed)
  e.message, e.consumed = message, consumed
end, function(e) return e.message end)

-- ExceptionGroup(message, exceptions): e.exceptions is a list with n.
-- The arguments are checked as Python checks them; a list's n is trusted
-- only as far as its elements go (an n of 2^40 over an empty table fails
-- at the first missing element instead of looping for ever).
class("BaseExceptionGroup", BaseException, function(e, message, excs)
  if type(message) ~= "string" then
    error(M.TypeError("ExceptionGroup: argument 1 (message) must be a string, not " .. type(message)), 3)
  end
  if type(excs) ~= "table" or getmetatable(excs) ~= nil then
    error(M.TypeError("ExceptionGroup: argument 2 (exceptions) must be a list table, not " ..
                      (type(excs) == "table" and "an object" or type(excs))), 3)
  end
  local n = excs.n
  if n == nil then
    n = #excs
  elseif math.type(n) ~= "integer" or n < 0 then
    error(M.ValueError("ExceptionGroup: the exceptions list's n must be a non-negative integer, got " ..
                       tostring(n)), 3)
  end
  if n == 0 then
    error(M.ValueError("ExceptionGroup: argument 2 (exceptions) must be a non-empty list"), 3)
  end
  e.message = message
  local list = { n = 0 }
  for i = 1, n do
    local x = excs[i]
    if x == nil then
      error(M.ValueError(string.format(
        "ExceptionGroup: item %d of argument 2 (exceptions) is nil (the list has n = %d)", i, n)), 3)
    end
    list[i] = x
    list.n = i
  end
  e.exceptions = list
end, function(e)
  local n = e.exceptions.n
  local lines = { string.format("%s (%d sub-exception%s)", e.message, n, n == 1 and "" or "s") }
  for i = 1, n do
    lines[#lines + 1] = string.format("  [%d] %s", i, tostring(e.exceptions[i]))
  end
  return table.concat(lines, "\n")
end)
class("ExceptionGroup", M.BaseExceptionGroup)
M.ExceptionGroup.__bases = { Exception }  -- also an Exception, as in Python

-- The test of split/subgroup: a class, or a function of the exception.
local function matcher(cond)
  if type(cond) == "function" then return cond end
  if type(cond) == "table" and getmetatable(cond) ~= nil and rawget(cond, "__name") then
    return function(e) return M.isinstance(e, cond) end
  end
  error(M.TypeError("expected an exception class or a function, got " .. tostring(cond)), 3)
end

-- eg:derive(excs): a group of the same class and message over excs.
function M.BaseExceptionGroup:derive(excs)
  return getmetatable(self)(self.message, excs)
end

-- Splits self by match: the group of what matches and the group of the
-- rest (nil for an empty one), nested groups kept as they are nested, as
-- Python's BaseExceptionGroup.split.
local function split(self, match)
  if match(self) then return self, nil end
  local yes, no = { n = 0 }, { n = 0 }
  for i = 1, self.exceptions.n do
    local x = self.exceptions[i]
    if M.isinstance(x, M.BaseExceptionGroup) then
      local a, b = split(x, match)
      if a then yes.n = yes.n + 1; yes[yes.n] = a end
      if b then no.n = no.n + 1; no[no.n] = b end
    elseif match(x) then
      yes.n = yes.n + 1; yes[yes.n] = x
    else
      no.n = no.n + 1; no[no.n] = x
    end
  end
  return yes.n > 0 and self:derive(yes) or nil, no.n > 0 and self:derive(no) or nil
end

-- eg:split(cls_or_fn) -> matching group, rest (either may be nil).
function M.BaseExceptionGroup:split(cond)
  return split(self, matcher(cond))
end

-- eg:subgroup(cls_or_fn) -> the matching group, or nil.
function M.BaseExceptionGroup:subgroup(cond)
  return (split(self, matcher(cond)))
end

-- How many bases deep class c is: the most specific handler wins.
local function depth(c)
  local d = 0
  while type(c) == "table" and rawget(c, "__base") do d = d + 1; c = rawget(c, "__base") end
  return d
end

-- catch(err, {[cls] = fn, ...}): Python's except* for Lua.  err is an
-- ExceptionGroup (any other error is taken as a group of one, as except*
-- does); each leaf goes to the handler of the most specific class it is an
-- instance of, and each handler is called once, with the group of its
-- leaves.  What no handler takes is raised again, as a group; an error a
-- handler raises propagates.
function M.catch(err, handlers)
  if type(handlers) ~= "table" then
    error(M.TypeError("catch() handlers must be a table {[class] = function}"), 2)
  end
  local classes = {}
  for cls, fn in pairs(handlers) do
    if type(fn) ~= "function" then error(M.TypeError("catch() handler for " .. tostring(cls) .. " is not a function"), 2) end
    matcher(cls)
    classes[#classes + 1] = cls
  end
  table.sort(classes, function(a, b) return depth(a) > depth(b) end)
  local rest = err
  if not M.isinstance(err, M.BaseExceptionGroup) then rest = M.ExceptionGroup("", { err }) end
  local calls = {}
  for _, cls in ipairs(classes) do
    if rest == nil then break end
    local got
    got, rest = split(rest, function(e) return M.isinstance(e, cls) end)
    if got then calls[#calls + 1] = { handlers[cls], got } end
  end
  for _, c in ipairs(calls) do c[1](c[2]) end
  if rest ~= nil then error(rest, 0) end
end

-- OSError(errno, strerror): picks the subclass for errno, as Python does.
local OSError = class("OSError", Exception, function(e, errno, strerror, filename)
  if type(errno) == "number" then
    e.errno, e.strerror, e.filename = errno, strerror, filename
    e.message = strerror
  else
    e.message = errno
  end
end, function(e)
  if e.errno then
    local s = string.format("[Errno %d] %s", e.errno, tostring(e.strerror))
    if e.filename then s = s .. ": " .. tostring(e.filename) end
    return s
  end
  return e.message and tostring(e.message) or ""
end)
M.IOError = OSError
M.EnvironmentError = OSError
local ConnectionError = class("ConnectionError", OSError)
class("BrokenPipeError", ConnectionError)
class("ConnectionAbortedError", ConnectionError)
class("ConnectionRefusedError", ConnectionError)
class("ConnectionResetError", ConnectionError)
class("BlockingIOError", OSError)
class("ChildProcessError", OSError)
class("FileExistsError", OSError)
class("FileNotFoundError", OSError)
class("InterruptedError", OSError)
class("IsADirectoryError", OSError)
class("NotADirectoryError", OSError)
class("PermissionError", OSError)
class("ProcessLookupError", OSError)
class("gaierror", OSError)
-- An OSError since Python 3.11 (ETIMEDOUT maps to it); asyncio.TimeoutError
-- is this class.
class("TimeoutError", OSError)

-- errno -> subclass (Linux numbers, filled from C with the platform's).
local by_errno = {}
M._by_errno = by_errno

local os_new = getmetatable(OSError).__call
getmetatable(OSError).__call = function(cls, errno, ...)
  if cls == OSError and type(errno) == "number" and by_errno[errno] then
    cls = by_errno[errno]
  end
  return os_new(cls, errno, ...)
end

M._classes = classes
return M
