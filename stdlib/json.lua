-- json: JSON for moonloop scripts, on lua-cjson (Debian's, linked into the
-- library; stdlib/json/_numbers.c makes integers and floats round-trip).
--
--   json.encode(value)  -> string   (TypeError / ValueError naming the problem)
--   json.decode(text)   -> value    (json.JSONDecodeError, a ValueError, with .pos)
--   json.null           the value of JSON's null, both ways
--
-- Objects are tables with string keys, arrays are sequences; an empty
-- table encodes as {}.  Pure computation: a sandboxed script may use it.
local E = require "asyncio.exceptions"
local engine = require "json._cjson"

local cjson = engine.new()
cjson.decode_invalid_numbers(false)   -- no NaN, Infinity or hex numbers in input
cjson.encode_invalid_numbers(false)   -- nor in output
cjson.encode_sparse_array(false, 2, 10)
cjson.encode_max_depth(1000)
cjson.decode_max_depth(1000)
local c_encode, c_decode = cjson.encode, cjson.decode

local M = {}

-- JSONDecodeError(msg, doc, pos), as Python's: a ValueError whose str()
-- says what was wrong and where (pos is the 1-based byte offset).
local function decode_init(e, msg, doc, pos)
  e.message, e.doc, e.pos = msg, doc, pos
end
local function decode_str(e) return tostring(e.message) end
M.JSONDecodeError = rawget(E, "JSONDecodeError")
  or E.class("JSONDecodeError", E.ValueError, decode_init, decode_str)

M.null = cjson.null

local TOKENS = {
  T_OBJ_BEGIN = "'{'", T_OBJ_END = "'}'", T_ARR_BEGIN = "'['", T_ARR_END = "']'",
  T_STRING = "a string", T_NUMBER = "a number", T_BOOLEAN = "a boolean", T_NULL = "null",
  T_COLON = "':'", T_COMMA = "','", T_END = "the end of the input", T_WHITESPACE = "white space",
  T_ERROR = "an invalid token",
}

-- json.encode(value): the JSON text of value.
function M.encode(value)
  local ok, s = pcall(c_encode, value)
  if ok then return s end
  s = tostring(s)
  if s:find("type not supported", 1, true) then
    local t = s:match("serialise (%w+)") or "value"
    error(E.TypeError("json.encode: cannot encode a " .. t .. " (only nil, booleans, numbers, "
      .. "strings, tables and json.null)"), 2)
  elseif s:find("excessive nesting", 1, true) then
    error(E.ValueError("json.encode: nested deeper than 1000 levels (a table that contains itself?)"), 2)
  elseif s:find("NaN or Inf", 1, true) then
    error(E.ValueError("json.encode: cannot encode NaN or infinity (JSON has no such numbers)"), 2)
  elseif s:find("sparse array", 1, true) then
    error(E.ValueError("json.encode: a table with integer keys too sparse to be an array "
      .. "(use string keys for an object)"), 2)
  elseif s:find("table key must be", 1, true) then
    error(E.TypeError("json.encode: object keys must be strings or numbers"), 2)
  end
  error(E.ValueError("json.encode: " .. s), 2)
end

-- json.decode(text): the value of the JSON text.
function M.decode(text)
  if type(text) ~= "string" then
    error(E.TypeError("json.decode: the JSON text must be a string, got " .. type(text)), 2)
  end
  local ok, v = pcall(c_decode, text)
  if ok then return v end
  local msg = tostring(v)
  local pos = tonumber(msg:match("at character (%d+)"))
  msg = msg:gsub("T_[%u_]+", TOKENS)
  if msg:find("excessive nesting", 1, true) then
    msg = "nested deeper than 1000 levels"
  end
  error(M.JSONDecodeError("json.decode: " .. msg, text, pos), 2)
end

return M
