"""WebSocket clients for tests/e2e-node/run.sh, talking to wsgate pods.

    wsprobe.py echo URL              text and binary echo (Python websockets); prints "ok"
    wsprobe.py pings URL SECONDS     an idle client on a raw socket: counts the proxy's
                                     pings (answering each with a pong), then checks the
                                     tunnel still echoes; prints the count
    wsprobe.py deaf URL SECONDS      a client that never answers pings: prints the close code
                                     the proxy sends when it declares it dead (or "open")
    wsprobe.py hold URL N            opens N tunnels and keeps them idle; prints JSON lines
                                     {"event": "ready"} once all are open and
                                     {"event": "close", "i", "code", "t"} for each close
                                     (t: Unix time); exits when all are closed, on SIGTERM
                                     or after --max-seconds (default 300)

Exit status 1 (with a message on stderr) when the peer does not behave.
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def fail(msg):
    print(f"wsprobe: {msg}", file=sys.stderr)
    sys.exit(1)


def emit(**fields):
    print(json.dumps(fields), flush=True)


async def echo(url):
    async with connect(url, ping_interval=None, open_timeout=10, compression=None) as ws:
        await ws.send("hello through wsgate")
        got = await asyncio.wait_for(ws.recv(), 10)
        if got != "hello through wsgate":
            fail(f"text echo: got {got!r}")
        blob = bytes(range(256)) * 64 + os.urandom(1000)
        await ws.send(blob)
        got = await asyncio.wait_for(ws.recv(), 10)
        if got != blob:
            fail(f"binary echo: got {len(got)} bytes of type {type(got).__name__}, sent {len(blob)}")
    print("ok")


# ---- a raw client: websockets answers pings without telling anyone ----------

def raw_frame(opcode, payload):
    """A masked client frame (RFC 6455 5.2) with a payload under 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", read_exact(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", read_exact(sock, 8))[0]
    if b1 & 0x80:
        fail("server frame is masked")
    return b0 & 0x0F, read_exact(sock, length)


def raw_connect(url):
    u = urlsplit(url)
    sock = socket.create_connection((u.hostname, u.port or 80), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += read_exact(sock, 1)
    if not head.startswith(b"HTTP/1.1 101"):
        fail(f"upgrade refused: {head.splitlines()[0]!r}")
    return sock


def deaf(url, seconds):
    sock = raw_connect(url)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            opcode, payload = read_frame(sock)
        except (socket.timeout, EOFError):
            break
        if opcode == 0x8:
            print(struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005)
            return
    print("open")


def pings(url, seconds):
    sock = raw_connect(url)
    count, deadline = 0, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            opcode, payload = read_frame(sock)
        except socket.timeout:
            break
        if opcode == 0x9:
            count += 1
            sock.sendall(raw_frame(0xA, payload))
        elif opcode == 0x8:
            fail(f"closed while idle: {payload!r}")
    sock.settimeout(10)
    sock.sendall(raw_frame(0x1, b"still here"))
    while True:
        opcode, payload = read_frame(sock)
        if opcode == 0x9:
            sock.sendall(raw_frame(0xA, payload))
            continue
        if opcode != 0x1 or payload != b"still here":
            fail(f"echo after idling: opcode {opcode} {payload!r}")
        break
    sock.sendall(raw_frame(0x8, struct.pack("!H", 1000)))
    print(count)


async def hold(url, n, max_seconds):
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def one(i, ws):
        try:
            await ws.wait_closed()
        finally:
            emit(event="close", i=i, code=ws.close_code, t=time.time())

    conns = [
        await connect(url, ping_interval=None, open_timeout=10, compression=None, close_timeout=2)
        for _ in range(n)
    ]
    tasks = [asyncio.create_task(one(i, ws)) for i, ws in enumerate(conns)]
    emit(event="ready", n=n, t=time.time())
    done = asyncio.gather(*tasks)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([done, stopper], timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED)
    for ws in conns:
        if ws.close_code is None:
            await ws.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("echo").add_argument("url")
    sp = sub.add_parser("pings")
    sp.add_argument("url")
    sp.add_argument("seconds", type=float)
    sd = sub.add_parser("deaf")
    sd.add_argument("url")
    sd.add_argument("seconds", type=float)
    sh = sub.add_parser("hold")
    sh.add_argument("url")
    sh.add_argument("n", type=int)
    sh.add_argument("--max-seconds", type=float, default=300)
    a = p.parse_args()
    try:
        if a.cmd == "echo":
            asyncio.run(echo(a.url))
        elif a.cmd == "pings":
            pings(a.url, a.seconds)
        elif a.cmd == "deaf":
            deaf(a.url, a.seconds)
        else:
            asyncio.run(hold(a.url, a.n, a.max_seconds))
    except (OSError, EOFError, ConnectionClosed, asyncio.TimeoutError) as e:
        fail(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
