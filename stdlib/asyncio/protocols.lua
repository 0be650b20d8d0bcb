-- asyncio.protocols: the protocol base classes (BaseProtocol, Protocol,
-- BufferedProtocol, DatagramProtocol, SubprocessProtocol), with Python's
-- do-nothing default methods.  A class is a table whose methods its
-- instances inherit; Cls:extend([methods]) makes a subclass, Cls([fields])
-- an instance.  Transports also take any plain table with the methods.
local M = {}

local function extend(base, methods)
  local cls = methods or {}
  if type(cls) ~= "table" then
    error(require("asyncio").TypeError("extend() takes a table of methods, got " .. type(cls)), 2)
  end
  cls.__index = cls
  cls.__base = base  -- asyncio.isinstance follows it
  cls.__name = rawget(cls, "__name") or (base and base.__name)
  return setmetatable(cls, {
    __index = base,
    __call = function(c, fields) return setmetatable(fields or {}, c) end,
    __tostring = function(c) return "<class '" .. (rawget(c, "__name") or "protocol") .. "'>" end,
  })
end

local function noop() end

-- connection_made(transport), connection_lost(exc), pause_writing(),
-- resume_writing()
local BaseProtocol = extend(nil, {
  __name = "asyncio.BaseProtocol",
  connection_made = noop, connection_lost = noop,
  pause_writing = noop, resume_writing = noop,
})
BaseProtocol.extend = extend

M.BaseProtocol = BaseProtocol
-- data_received(data), eof_received() (a true result keeps the transport
-- half-open)
M.Protocol = extend(BaseProtocol, {
  __name = "asyncio.Protocol", data_received = noop, eof_received = noop,
})
-- get_buffer(sizehint) -> a socket.buffer [, position]: the transport
-- reads into it (no string is made), then buffer_updated(nbytes)
M.BufferedProtocol = extend(BaseProtocol, {
  __name = "asyncio.BufferedProtocol", get_buffer = noop, buffer_updated = noop,
  eof_received = noop,
})
-- datagram_received(data, addr), error_received(exc)
M.DatagramProtocol = extend(BaseProtocol, {
  __name = "asyncio.DatagramProtocol", datagram_received = noop, error_received = noop,
})
-- pipe_data_received(fd, data), pipe_connection_lost(fd, exc),
-- process_exited()
M.SubprocessProtocol = extend(BaseProtocol, {
  __name = "asyncio.SubprocessProtocol", pipe_data_received = noop,
  pipe_connection_lost = noop, process_exited = noop,
})

return M
