"""idle_server.py: the Python peers of the idle-connections benchmark.

usage: python3 idle_server.py asyncio|uvloop PORT N

asyncio.start_server whose handler waits in reader.readline(); once N
connections wait, prints RESULT idle <RSS bytes per connection> <N>
(growth of RSS from the 100th waiting connection to the Nth, after a
full collection at both points) and exits.  Same program as
idle_streams.lua.
"""
import asyncio
import gc
import os
import sys


def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def serve(port, n):
    state = {"waiting": 0, "rss0": None}
    done = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        state["waiting"] += 1
        if state["waiting"] == 100 and state["rss0"] is None:
            state["rss0"] = rss()
        if state["waiting"] == n and not done.done():
            done.set_result(rss())
        try:
            await reader.readline()
        except ConnectionError:
            pass
        state["waiting"] -= 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    rss1 = await done
    print("RESULT idle %.1f %d" % ((rss1 - state["rss0"]) / (n - 100), n), flush=True)
    os._exit(0)


def main():
    loop_kind, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if loop_kind == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(port, n))


if __name__ == "__main__":
    main()
