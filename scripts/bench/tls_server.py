"""tls_server.py: the Python peer of tls_server.lua (asyncio or uvloop).

usage: python3 tls_server.py asyncio|uvloop PORT CERT KEY echo|bulk [BYTES]
"""
import asyncio
import ssl
import sys


def main():
    kind, port, cert, key, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    nbytes = int(sys.argv[6]) if len(sys.argv) > 6 else 64 * 1024 * 1024
    if kind == "uvloop":
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    chunk = b"x" * (256 * 1024)

    async def echo(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        writer.close()

    async def bulk(reader, writer):
        try:
            left = nbytes
            while left > 0:
                n = min(left, len(chunk))
                writer.write(chunk if n == len(chunk) else chunk[:n])
                await writer.drain()
                left -= n
        except (OSError, ssl.SSLError):
            pass
        writer.close()

    async def serve():
        server = await asyncio.start_server(echo if mode == "echo" else bulk, "127.0.0.1", port, ssl=ctx)
        await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
