"""http_client.py: N GETs at concurrency C through one aiohttp ClientSession
(the peer of http_client.lua in make bench's HTTP client row).
    python3 http_client.py URL [N] [C]
Prints RESULT httpclient <seconds> <requests>."""
import asyncio, sys, time
import aiohttp

async def main(url, n, conc):
    left = [n]
    errors = [0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as s:
        async with s.get(url) as r:
            await r.read()
        async def worker():
            while left[0] > 0:
                left[0] -= 1
                async with s.get(url) as r:
                    body = await r.read()
                    if r.status != 200 or not body:
                        errors[0] += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        dt = time.perf_counter() - t0
    if errors[0]:
        sys.exit(f"{errors[0]} requests failed")
    print(f"RESULT httpclient {dt:.6f} {n}", flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20000,
                 int(sys.argv[3]) if len(sys.argv) > 3 else 50))
