// http_hello.js: Node's side of the workers benchmark (run.sh, "HTTP
// hello, N workers"): node:cluster with N workers, each an http server
// answering "hello, world\n"; says "ready" on stderr once all listen.
//   node http_hello.js PORT N
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');
const port = Number(process.argv[2]);
const n = Number(process.argv[3] || 1);

if (cluster.isPrimary) {
  let listening = 0;
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('listening', () => { if (++listening === n) console.error('ready'); });
  process.on('SIGTERM', () => { for (const id in cluster.workers) cluster.workers[id].kill(); process.exit(0); });
} else {
  http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('hello, world\n');
  }).listen(port, '127.0.0.1');
}
