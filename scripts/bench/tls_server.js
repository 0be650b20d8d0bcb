// tls_server.js: Node's peer of tls_server.lua.
// usage: node tls_server.js PORT CERT KEY echo|bulk [BYTES]
'use strict';
const tls = require('tls');
const fs = require('fs');
const [port, cert, key, mode] = process.argv.slice(2);
const nbytes = Number(process.argv[6]) || 64 * 1024 * 1024;
const chunk = Buffer.alloc(256 * 1024, 'x');
const server = tls.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (s) => {
  s.on('error', () => {});
  if (mode === 'echo') { s.on('data', (d) => s.write(d)); s.on('end', () => s.end()); return; }
  let left = nbytes;
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, chunk.length);
      left -= n;
      if (!s.write(n === chunk.length ? chunk : chunk.subarray(0, n))) { s.once('drain', pump); return; }
    }
    s.end();
  };
  pump();
});
server.on('tlsClientError', () => {});
server.listen(Number(port), '127.0.0.1');
