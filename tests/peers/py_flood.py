"""A Python `websockets` client that sends as fast as the connection takes, for the
rate-limit tests.

    python py_flood.py URL --size BYTES --seconds S

Sends "flood" first (so the backend can tell this tunnel from others), then messages
of SIZE bytes until S seconds pass or the tunnel closes; `websockets` waits for its
write buffer to drain, so a proxy that stops reading holds it back (TCP
backpressure). Events: open, then close {code, reason, sent} when the tunnel was
closed, or done {sent} when the time ran out (the process then exits at once: a
held-back client would wait long for its Close to get through).
"""

import argparse
import asyncio
import os

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from peerlib import emit


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    ws = await connect(args.url, compression=None, ping_interval=None, open_timeout=10)
    emit("open")
    await ws.send("flood")
    payload = b"x" * args.size
    sent = 0
    try:
        async with asyncio.timeout(args.seconds):
            while True:
                await ws.send(payload)
                sent += 1
                if sent % 64 == 0:
                    # send() returns without yielding while the socket takes the
                    # bytes; yield so incoming frames (a Close) are handled.
                    await asyncio.sleep(0)
    except ConnectionClosed:
        await ws.wait_closed()
        emit("close", code=ws.close_code, reason=ws.close_reason, sent=sent)
        return
    except TimeoutError:
        pass
    emit("done", sent=sent)
    os._exit(0)


asyncio.run(main())
