"""echo_server.py: the Python peers of the echo benchmarks (5, 6).

usage: python3 echo_server.py asyncio|uvloop streams|protocols PORT

streams: asyncio.start_server with a read/write/drain loop per client.
protocols: loop.create_server with a Protocol whose data_received writes
the data back.  Listens on 127.0.0.1 until killed.
"""
import asyncio
import sys


async def handle(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def serve(api, port):
    loop = asyncio.get_running_loop()
    if api == "streams":
        server = await asyncio.start_server(handle, "127.0.0.1", port)
    elif api == "protocols":
        server = await loop.create_server(Echo, "127.0.0.1", port)
    else:
        sys.exit("api must be streams or protocols")
    async with server:
        await server.serve_forever()


def main():
    loop_kind, api, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if loop_kind == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif loop_kind != "asyncio":
        sys.exit("loop must be asyncio or uvloop")
    asyncio.run(serve(api, port))


if __name__ == "__main__":
    main()
