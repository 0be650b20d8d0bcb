// http_server.js: Node's http for make bench's HTTP server rows (see
// http_server.lua).   node http_server.js PORT
'use strict';
const http = require('http');
const port = +process.argv[2] || 8080;
http.createServer((req, res) => {
  if (req.url === '/json') {
    const body = JSON.stringify({ message: 'hello, world', id: 1, ok: true });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  } else {
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 13 });
    res.end('hello, world\n');
  }
}).listen(port, '127.0.0.1');
