// http_client.js: N GETs at concurrency C with Node's fetch (the peer of
// http_client.lua in make bench's HTTP client row; fetch keeps its
// connections alive in undici's global pool).
//   node http_client.js URL [N] [C]
// Prints RESULT httpclient <seconds> <requests>.
const [url, n = 20000, conc = 50] = [process.argv[2], +process.argv[3] || 20000, +process.argv[4] || 50];

async function main() {
  let left = n, errors = 0;
  await (await fetch(url)).text();
  async function worker() {
    while (left > 0) {
      left--;
      const r = await fetch(url);
      const body = await r.text();
      if (r.status !== 200 || body.length === 0) errors++;
    }
  }
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: conc }, worker));
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  if (errors) { console.error(`${errors} requests failed`); process.exit(1); }
  console.log(`RESULT httpclient ${dt.toFixed(6)} ${n}`);
}
main();
