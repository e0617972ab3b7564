"""Many Python `websockets` clients that reconnect whenever their tunnel closes, as
applications do after Close 1012 (Service Restart), for the rebalance tests.

    python py_reconnect.py URL --clients N

Each client connects, asks the echo backend for its name ("__name__") and reports
{event: open, client, backend}; when the tunnel closes it reports {event: close,
client, code} and connects again. Runs until stdin closes.
"""

import argparse
import asyncio
import os

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from peerlib import commands, emit


async def client(i, url):
    while True:
        try:
            async with connect(url, compression=None, ping_interval=None, open_timeout=10) as ws:
                await ws.send("__name__")
                emit("open", client=i, backend=await ws.recv())
                try:
                    async for _ in ws:
                        pass
                except ConnectionClosed:
                    pass
                await ws.wait_closed()
                emit("close", client=i, code=ws.close_code)
        except (OSError, ConnectionClosed, asyncio.TimeoutError) as e:
            emit("error", client=i, message=repr(e))
            await asyncio.sleep(0.2)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=1)
    args = parser.parse_args()
    for i in range(args.clients):
        asyncio.create_task(client(i, args.url))
    async for _ in commands():
        pass
    os._exit(0)


asyncio.run(main())
