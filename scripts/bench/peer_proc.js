// peer_proc.js: Node's side of the process benchmarks (no to_thread peer:
// Node has no function-shipping thread pool).
// usage: node peer_proc.js spawn|pipe64 [N]
'use strict';
const { spawn } = require('child_process');
const now = () => Number(process.hrtime.bigint()) / 1e9;

function once(cmd, args, onData) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', onData ? 'pipe' : 'ignore', 'ignore'] });
    if (onData) p.stdout.on('data', onData);
    p.on('error', reject);
    p.on('close', resolve);
  });
}

async function benchSpawn(n) {
  const t0 = now();
  for (let i = 0; i < n; i++) await once('/bin/true', []);
  return [now() - t0, n];
}

async function benchPipe64() {
  const size = 64 * 1024 * 1024;
  let got = 0;
  const t0 = now();
  await once('head', ['-c', String(size), '/dev/zero'], (b) => { got += b.length; });
  if (got !== size) throw new Error('read ' + got);
  return [now() - t0, 64];
}

const benches = { spawn: benchSpawn, pipe64: benchPipe64 };
const DEFAULT_N = { spawn: 500, pipe64: 1 };
const name = process.argv[2];
if (!(name in benches)) { console.error('usage: node peer_proc.js spawn|pipe64 [N]'); process.exit(2); }
benches[name](Number(process.argv[3]) || DEFAULT_N[name]).then(([dt, ops]) =>
  console.log(`RESULT ${name} ${dt.toFixed(6)} ${ops}`));
