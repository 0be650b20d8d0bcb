// idle_server.js: Node's peer of the idle-connections benchmark.
//
// usage: node --expose-gc idle_server.js PORT N
//
// net.createServer with a readline interface per connection waiting for a
// line; once N connections wait, prints RESULT idle <RSS bytes per
// connection> <N> (growth of RSS from the 100th connection to the Nth,
// after a full collection at both points) and exits.
'use strict';
const net = require('net');
const readline = require('readline');

const port = Number(process.argv[2]), n = Number(process.argv[3]);
const rss = () => { if (global.gc) global.gc(); return process.memoryUsage.rss(); };
let waiting = 0, rss0 = null;
const server = net.createServer((sock) => {
  waiting++;
  if (waiting === 100 && rss0 === null) rss0 = rss();
  if (waiting === n) {
    const rss1 = rss();
    process.stdout.write(`RESULT idle ${((rss1 - rss0) / (n - 100)).toFixed(1)} ${n}\n`, () => process.exit(0));
  }
  const rl = readline.createInterface({ input: sock });
  rl.once('line', () => sock.end());
  sock.on('error', () => sock.destroy());
  sock.on('close', () => { waiting--; });
});
server.listen({ port, host: '127.0.0.1', backlog: 1024 });
