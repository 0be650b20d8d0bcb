#!/usr/bin/env python3
"""fault_peer.py: a misbehaving peer for tests/scripts/test_faults.lua.

usage: fault_peer.py MODE HOST PORT [ARG]   (prints one result line)

  rst_after_send N   connect, send N bytes, reset (SO_LINGER 0)
  rst_after_read N   connect, send "go\\n", read N bytes, reset
  slowloris N        send a line of N bytes one byte at a time, print the echo
  halfclose A,B,..   send the lines A, B..., shut down writing, print what comes back
  stall_read SECS    ask for a flood, read nothing for SECS, read 4 MiB, reset
  many N             N concurrent connections each echo one line; print ok count
  flood N            N connects as fast as possible, each closed at once
Every mode is bounded in time (a 20 s alarm)."""
import asyncio, signal, socket, struct, sys, time

signal.alarm(20)
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
arg = sys.argv[4] if len(sys.argv) > 4 else None


def rst(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def connect():
    return socket.create_connection((host, port))


if mode == "rst_after_send":
    s = connect()
    s.sendall(b"x" * int(arg))
    time.sleep(0.05)
    rst(s)
    print("reset")
elif mode == "rst_after_read":
    s = connect()
    s.sendall(b"go\n")
    got, want = 0, int(arg)
    while got < want:
        b = s.recv(min(65536, want - got))
        if not b:
            break
        got += len(b)
    rst(s)
    print("reset after", got)
elif mode == "slowloris":
    s = connect()
    line = b"s" * int(arg) + b"\n"
    for i in range(len(line)):
        s.send(line[i:i + 1])
        time.sleep(0.002)
    buf = b""
    while not buf.endswith(b"\n"):
        b = s.recv(4096)
        if not b:
            break
        buf += b
    print("echo", len(buf))
    s.close()
elif mode == "halfclose":
    s = connect()
    s.sendall("".join(x + "\n" for x in arg.split(",")).encode())
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        buf += b
    print("back", buf.decode())
    s.close()
elif mode == "stall_read":
    s = connect()
    s.sendall(b"go\n")
    time.sleep(float(arg))
    total, want = 0, 4 << 20
    while total < want:
        b = s.recv(min(1 << 20, want - total))
        if not b:
            break
        total += len(b)
    rst(s)
    print("read", total)
elif mode == "many":
    async def one(i):
        r, w = await asyncio.open_connection(host, port)
        w.write(b"line %d\n" % i)
        ok = await r.readline() == b"line %d\n" % i
        w.close()
        await w.wait_closed()
        return ok

    async def main():
        n = int(arg)
        res = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        print("ok", sum(1 for r in res if r is True))

    asyncio.run(main())
elif mode == "flood":
    n = 0
    for _ in range(int(arg)):
        s = socket.socket()
        try:
            s.connect((host, port))
            n += 1
        finally:
            s.close()
    print("connected", n)
else:
    sys.exit("unknown mode " + mode)
