// peer.js: the Node peers of benchmarks 1-4.
//
// usage: node peer.js gather|sleep0|queue|timers|timers1m [N]
//
// Prints one line: RESULT <name> <seconds> <ops>, timed with hrtime.
// Node's counterparts: a task is a call of an async function (a promise),
// gather is Promise.all, sleep(0) is a setImmediate round through the event
// loop (asyncio.sleep(0) also yields to the loop, not just to microtasks),
// a Queue is the small promise queue below, call_later is setTimeout (whole
// milliseconds).
'use strict';

const now = () => Number(process.hrtime.bigint()) / 1e9;

async function benchGather(n) {
  async function noop() {}
  const t0 = now();
  const tasks = new Array(n);
  for (let i = 0; i < n; i++) tasks[i] = noop();
  await Promise.all(tasks);
  return now() - t0;
}

async function benchSleep0(n) {
  const tick = (resolve) => setImmediate(resolve);
  const t0 = now();
  for (let i = 0; i < n; i++) await new Promise(tick);
  return now() - t0;
}

// An unbounded FIFO whose get() waits for a put(), like asyncio.Queue().
class Queue {
  constructor() { this.items = []; this.head = 0; this.getters = []; }
  put(x) {
    if (this.getters.length > 0) this.getters.shift()(x);
    else this.items.push(x);
  }
  get() {
    if (this.head < this.items.length) {
      const x = this.items[this.head++];
      if (this.head === this.items.length) { this.items = []; this.head = 0; }
      return Promise.resolve(x);
    }
    return new Promise((resolve) => this.getters.push(resolve));
  }
}

async function benchQueue(n) {
  const q1 = new Queue(), q2 = new Queue();
  async function pong() {
    for (;;) {
      const x = await q1.get();
      if (x === null) return;
      q2.put(x);
    }
  }
  const t0 = now();
  const p = pong();
  for (let i = 0; i < n; i++) {
    q1.put(i);
    await q2.get();
  }
  q1.put(null);
  await p;
  return now() - t0;
}

async function benchTimers(n) {
  // MINSTD, seeded alike in every implementation: delays 0..10 ms.
  let left = n, x = 42, done;
  const finished = new Promise((resolve) => { done = resolve; });
  const fire = () => { if (--left === 0) done(); };
  const t0 = now();
  for (let i = 0; i < n; i++) {
    x = (x * 48271) % 2147483647;
    setTimeout(fire, (x % 10000) / 1000);
  }
  await finished;
  return now() - t0;
}

async function benchTimers1m(n) {
  // Many timers: n pending setTimeout handles (delays 0..100 ms, MINSTD),
  // half cleared once all are scheduled, the rest fired.
  let left = n - Math.floor(n / 2), x = 42, done;
  const finished = new Promise((resolve) => { done = resolve; });
  const fire = () => { if (--left === 0) done(); };
  const handles = new Array(n);
  const t0 = now();
  for (let i = 0; i < n; i++) {
    x = (x * 48271) % 2147483647;
    handles[i] = setTimeout(fire, (x % 100000) / 1000);
  }
  for (let i = 1; i < n; i += 2) clearTimeout(handles[i]);
  await finished;
  return now() - t0;
}

const DEFAULT_N = { gather: 200000, sleep0: 1000000, queue: 200000, timers: 200000, timers1m: 1000000 };
const benches = { gather: benchGather, sleep0: benchSleep0, queue: benchQueue, timers: benchTimers,
                  timers1m: benchTimers1m };

// NAME_warm: run once untimed first, in the same process (see ml_bench.lua).
let name = process.argv[2];
const base = name && name.endsWith('_warm') ? name.slice(0, -5) : null;
if (base && base in benches) {
  benches[name] = async (n) => { await benches[base](n); return benches[base](n); };
  DEFAULT_N[name] = DEFAULT_N[base];
}
if (!(name in benches)) {
  console.error('usage: node peer.js gather|sleep0|queue|timers|timers1m [N]');
  process.exit(2);
}
const n = Number(process.argv[3]) || DEFAULT_N[name];
benches[name](n).then((dt) => console.log(`RESULT ${name} ${dt.toFixed(6)} ${n}`));
