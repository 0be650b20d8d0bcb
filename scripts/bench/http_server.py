# http_server.py: the Python peers of make bench's HTTP server rows (see
# http_server.lua): uvloop with httptools' parser on a Protocol (the
# fastest Python stack), and aiohttp's web server on asyncio's own loop,
# as aiohttp runs by default.
#   python3 http_server.py uvloop|aiohttp PORT
import asyncio, json, sys
from email.utils import formatdate

impl, port = sys.argv[1], int(sys.argv[2])
HELLO = b"hello, world\n"

def payload():
    return json.dumps({"message": "hello, world", "id": 1, "ok": True}).encode()

if impl == "uvloop":
    import httptools, uvloop

    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.p = httptools.HttpRequestParser(self)
            self.url = None

        def data_received(self, data):
            try:
                self.p.feed_data(data)
            except httptools.HttpParserError:
                self.t.close()

        def on_url(self, url):
            self.url = url

        def on_message_complete(self):
            if self.url == b"/json":
                body, ctype = payload(), b"application/json"
            else:
                body, ctype = HELLO, b"text/plain"
            keep = self.p.should_keep_alive()
            self.t.write(b"HTTP/1.1 200 OK\r\nDate: " + formatdate(usegmt=True).encode() +
                         b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: " +
                         str(len(body)).encode() + b"\r\n\r\n" + body)
            if not keep:
                self.t.close()

    async def main():
        srv = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port)
        await srv.serve_forever()
    uvloop.install()
    asyncio.run(main())
else:
    from aiohttp import web

    async def hello(request):
        return web.Response(body=HELLO, content_type="text/plain")

    async def js(request):
        return web.Response(body=payload(), content_type="application/json")

    app = web.Application()
    app.add_routes([web.get("/", hello), web.get("/json", js)])
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
