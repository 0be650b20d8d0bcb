-- http.router: http.Router(), a small request router.  Routes are a method
-- and a path pattern whose {name} parts match one path segment and whose
-- final {name...} matches the rest; the values are in req.params.  A path
-- no route has gets 404; a path known under other methods gets 405 with an
-- Allow header.  HEAD is answered by the GET route when there is no HEAD
-- route.  The router is itself a handler: http.serve(router, ...).
local util = require "asyncio._util"
local raise = util.raise

local M = {}

local Router = {}
Router.__index = Router
Router.__name = "http.Router"

-- Pattern characters that stand for themselves in a route.
local function escape(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- "/users/{id}/posts/{rest...}" -> Lua pattern, parameter names.
local function compile(path)
  local names, parts, pos = {}, { "^" }, 1
  while true do
    local s, e, name, rest = path:find("{([%a_][%w_]*)(%.?%.?%.?)}", pos)
    if not s then break end
    parts[#parts + 1] = escape(path:sub(pos, s - 1))
    if rest == "..." then
      if e ~= #path then raise("ValueError", "route '" .. path .. "': {" .. name .. "...} must end the path") end
      parts[#parts + 1] = "(.*)"
    elseif rest == "" then
      parts[#parts + 1] = "([^/]+)"
    else
      raise("ValueError", "route '" .. path .. "': bad parameter '{" .. name .. rest .. "}'")
    end
    for _, n in ipairs(names) do
      if n == name then raise("ValueError", "route '" .. path .. "': parameter '" .. name .. "' twice") end
    end
    names[#names + 1] = name
    pos = e + 1
  end
  if path:find("[{}]", pos) then raise("ValueError", "route '" .. path .. "': unbalanced '{' or '}'") end
  parts[#parts + 1] = escape(path:sub(pos)) .. "$"
  return table.concat(parts), names
end

function M.Router()
  return setmetatable({ _static = {}, _dynamic = {}, _methods = {} }, Router)
end

-- r:route(method, path, handler): method is "GET", "POST", ... or "*"
-- for every method.
function Router:route(method, path, handler)
  if type(method) ~= "string" then raise("TypeError", "route() method must be a string, got " .. type(method)) end
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" then
    raise("ValueError", "route() path must be a string starting with '/', got " .. tostring(path))
  end
  if type(handler) ~= "function" and not (getmetatable(handler) or {}).__call then
    raise("TypeError", "route() handler must be a function, got " .. type(handler))
  end
  method = method:upper()
  if not path:find("{", 1, true) then
    local byp = self._static[path]
    if not byp then byp = {}; self._static[path] = byp end
    if byp[method] then raise("ValueError", "route " .. method .. " " .. path .. " is already defined") end
    byp[method] = handler
  else
    local pat, names = compile(path)
    local d
    for _, x in ipairs(self._dynamic) do if x.path == path then d = x end end
    if not d then
      d = { path = path, pat = pat, names = names, handlers = {} }
      self._dynamic[#self._dynamic + 1] = d
    end
    if d.handlers[method] then raise("ValueError", "route " .. method .. " " .. path .. " is already defined") end
    d.handlers[method] = handler
  end
  return self
end

for _, m in ipairs({ "get", "post", "put", "delete", "patch", "head", "options" }) do
  local M_ = m:upper()
  Router[m] = function(self, path, handler) return self:route(M_, path, handler) end
end
function Router:any(path, handler) return self:route("*", path, handler) end

local response  -- http.server, loaded on first use (it requires nothing of ours)
local function allow_list(handlers)
  local ms = {}
  for m in pairs(handlers) do if m ~= "*" then ms[#ms + 1] = m end end
  if handlers.GET and not handlers.HEAD then ms[#ms + 1] = "HEAD" end
  table.sort(ms)
  return table.concat(ms, ", ")
end

local function pick(handlers, method)
  return handlers[method] or handlers["*"] or (method == "HEAD" and handlers.GET) or nil
end

-- The router as a handler: returns what the route's handler returns.
function Router:__call(req)
  local path, method = req.path, req.method
  local byp = self._static[path]
  local found
  if byp then
    local h = pick(byp, method)
    if h then
      req.params = {}
      return h(req)
    end
    found = byp
  end
  for _, d in ipairs(self._dynamic) do
    local caps = table.pack(path:match(d.pat))
    if caps[1] ~= nil then
      local h = pick(d.handlers, method)
      if h then
        local params = {}
        for i, n in ipairs(d.names) do params[n] = caps[i] end
        req.params = params
        return h(req)
      end
      found = found or d.handlers
    end
  end
  response = response or require("http.server")
  if found then
    return response.Response(405, "Method Not Allowed\n", { Allow = allow_list(found) })
  end
  return response.Response(404, "Not Found\n")
end

M._Router = Router
return M
