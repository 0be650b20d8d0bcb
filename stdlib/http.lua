-- http: the HTTP module, a merge of its halves: the server (http.server:
-- serve, Response, json, HTTPError; http.router: Router; WebSocket) and
-- the client (http.client: get, request, Session, ClientResponse, the
-- client's errors; libcurl is loaded by the first request, not here).
-- See docs/http.md.
local M = {}
for k, v in pairs(require "http.server") do M[k] = v end
M.Router = require("http.router").Router
local websocket = require "http.websocket"
M.websocket = websocket.connect
M.WebSocketError, M.ConnectionClosed = websocket.WebSocketError, websocket.ConnectionClosed
for k, v in pairs(require "http.client") do
  if type(k) == "string" and k:sub(1, 1) ~= "_" then M[k] = v end
end
return M
