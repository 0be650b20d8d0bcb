"""peer.py: the Python peers of benchmarks 1-4, on asyncio or uvloop.

usage: python3 peer.py asyncio|uvloop gather|sleep0|queue|timers|timers1m [N]

Prints one line: RESULT <name> <seconds> <ops>, timed with perf_counter
inside the running loop (interpreter and loop start-up excluded).
"""
import asyncio
import sys
import time


async def bench_gather(n):
    async def noop():
        pass

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(noop()) for _ in range(n)]
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


async def bench_sleep0(n):
    sleep = asyncio.sleep
    t0 = time.perf_counter()
    for _ in range(n):
        await sleep(0)
    return time.perf_counter() - t0


async def bench_queue(n):
    q1, q2 = asyncio.Queue(), asyncio.Queue()

    async def pong():
        while True:
            x = await q1.get()
            if x is None:
                return
            await q2.put(x)

    t0 = time.perf_counter()
    p = asyncio.create_task(pong())
    for i in range(n):
        await q1.put(i)
        await q2.get()
    await q1.put(None)
    await p
    return time.perf_counter() - t0


async def bench_timers(n):
    # MINSTD, seeded alike in every implementation: delays 0..10 ms.
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = n

    def fire():
        nonlocal left
        left -= 1
        if left == 0:
            done.set_result(None)

    x = 42
    t0 = time.perf_counter()
    for _ in range(n):
        x = x * 48271 % 2147483647
        loop.call_later((x % 10000) / 1e6, fire)
    await done
    return time.perf_counter() - t0


async def bench_timers1m(n):
    # Many timers: n pending call_later handles (delays 0..100 ms, MINSTD),
    # half cancelled once all are scheduled, the rest fired.
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = n - n // 2

    def fire():
        nonlocal left
        left -= 1
        if left == 0:
            done.set_result(None)

    handles = []
    x = 42
    t0 = time.perf_counter()
    for _ in range(n):
        x = x * 48271 % 2147483647
        handles.append(loop.call_later((x % 100000) / 1e6, fire))
    for i in range(1, n, 2):
        handles[i].cancel()
    await done
    return time.perf_counter() - t0


DEFAULT_N = {"gather": 200000, "sleep0": 1000000, "queue": 200000,
             "timers": 200000, "timers1m": 1000000}


def main():
    loop_kind, name = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_N[name.removesuffix("_warm")]
    if loop_kind == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif loop_kind != "asyncio":
        sys.exit("loop must be asyncio or uvloop")
    # NAME_warm: run once untimed first, in the same loop (see ml_bench.lua).
    base = name[:-5] if name.endswith("_warm") else name
    fn = globals()["bench_" + base]

    async def warm(n):
        await fn(n)
        return await fn(n)

    dt = asyncio.run((warm if base != name else fn)(n))
    print(f"RESULT {name} {dt:.6f} {n}", flush=True)


if __name__ == "__main__":
    main()
