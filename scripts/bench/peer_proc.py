"""peer_proc.py: the Python peers of the process and thread benchmarks.

usage: python3 peer_proc.py asyncio|uvloop spawn|tothread|pipe64 [N]

Prints RESULT <name> <seconds> <ops> (see ml_proc.lua).
"""
import asyncio
import sys
import time


async def bench_spawn(n):
    t0 = time.perf_counter()
    for _ in range(n):
        p = await asyncio.create_subprocess_exec("/bin/true")
        await p.wait()
    return time.perf_counter() - t0, n


async def bench_tothread(n):
    def f(x):
        return x + 1
    await asyncio.to_thread(f, 0)
    t0 = time.perf_counter()
    for i in range(n):
        await asyncio.to_thread(f, i)
    return time.perf_counter() - t0, n


async def bench_pipe64(n):
    size = 64 * 1024 * 1024
    t0 = time.perf_counter()
    p = await asyncio.create_subprocess_exec("head", "-c", str(size), "/dev/zero",
                                             stdout=asyncio.subprocess.PIPE)
    got = 0
    while True:
        chunk = await p.stdout.read(1048576)
        if not chunk:
            break
        got += len(chunk)
    await p.wait()
    assert got == size
    return time.perf_counter() - t0, 64


DEFAULT_N = {"spawn": 500, "tothread": 5000, "pipe64": 1}


def main():
    loop_kind, name = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_N[name]
    if loop_kind == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    dt, ops = asyncio.run(globals()["bench_" + name](n))
    print(f"RESULT {name} {dt:.6f} {ops}", flush=True)


if __name__ == "__main__":
    main()
