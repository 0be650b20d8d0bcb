// echo_server.js: Node's peer of the echo benchmarks (5, 6).
//
// usage: node echo_server.js PORT
//
// net.createServer; every 'data' chunk is written straight back.  Listens
// on 127.0.0.1 until killed.
'use strict';
const net = require('net');

const port = Number(process.argv[2]);
const server = net.createServer((sock) => {
  sock.setNoDelay(true);
  sock.on('data', (data) => sock.write(data));
  sock.on('error', () => sock.destroy());
});
server.listen(port, '127.0.0.1');
