-- http: the HTTP module, a merge of its halves: the server (http.server:
-- serve, Router, Response, json, WebSocket) and the client.
local M = {}
for k, v in pairs(require "http.server") do M[k] = v end
return M
