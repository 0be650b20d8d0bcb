--[==[ async function ]==] local s = [[await x]] .. "async function"
local async function m(...) return ... end
