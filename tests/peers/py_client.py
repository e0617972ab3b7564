"""A client built on Python `websockets` that reports everything it sees as JSON lines.

    python py_client.py URL [--no-compression] [--origin O] [--subprotocol P]...

Commands (stdin): {op: text, data} | {op: binary, b64} | {op: close, code, reason}.
"""

import argparse
import asyncio
import base64

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from peerlib import commands, describe, emit


async def pump(ws):
    try:
        async for message in ws:
            emit("message", **describe(message))
    except ConnectionClosed:
        pass
    await ws.wait_closed()
    emit("close", code=ws.close_code, reason=ws.close_reason)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--no-compression", action="store_true")
    parser.add_argument("--origin")
    parser.add_argument("--subprotocol", action="append")
    args = parser.parse_args()
    try:
        ws = await connect(
            args.url,
            compression=None if args.no_compression else "deflate",
            origin=args.origin,
            subprotocols=args.subprotocol,
            max_size=None,
            ping_interval=None,
            open_timeout=10,
        )
    except InvalidStatus as e:
        emit("unexpected-response", status=e.response.status_code)
        return
    emit(
        "open",
        extensions=ws.response.headers.get("Sec-WebSocket-Extensions"),
        subprotocol=ws.subprotocol,
        headers={k.lower(): v for k, v in ws.response.headers.raw_items()},
    )
    reader = asyncio.create_task(pump(ws))
    async for cmd in commands():
        op = cmd["op"]
        try:
            if op == "text":
                await ws.send(cmd["data"])
            elif op == "binary":
                await ws.send(base64.b64decode(cmd["b64"]))
            elif op == "close":
                await ws.close(cmd.get("code", 1000), cmd.get("reason", ""))
        except ConnectionClosed:
            pass
    await ws.close()
    await reader


asyncio.run(main())
