"""A backend built on Python `websockets`: echoes every message and reports what it sees.

    python py_server.py --name A [--port 0] [--no-compression]
                        [--tls-cert F --tls-key F [--tls-client-ca F]]

With --tls-cert/--tls-key it serves wss; with --tls-client-ca it also requires a
client certificate signed by that CA (mTLS) and reports its subject's CN.

Special text messages: "__name__" is answered with the name, "__headers__" with
the upgrade request's headers as JSON. Commands (stdin): {op: close, code, reason}.
"""

import argparse
import asyncio
import json
import os
import ssl

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from peerlib import commands, describe, emit

sockets = {}


async def handler(ws, name, counter):
    counter[0] += 1
    cid = counter[0]
    sockets[cid] = ws
    headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
    emit(
        "connection",
        id=cid,
        path=ws.request.path,
        headers=headers,
        response_extensions=ws.response.headers.get("Sec-WebSocket-Extensions"),
        subprotocol=ws.subprotocol,
        client_cert=client_cn(ws),
    )
    try:
        async for message in ws:
            emit("message", id=cid, **describe(message))
            if message == "__name__":
                await ws.send(name)
            elif message == "__headers__":
                await ws.send(json.dumps(headers))
            else:
                await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        sockets.pop(cid, None)
        await ws.wait_closed()
        emit("close", id=cid, code=ws.close_code, reason=ws.close_reason)


def client_cn(ws):
    sslobj = ws.transport.get_extra_info("ssl_object")
    cert = sslobj.getpeercert() if sslobj else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def tls_context(args):
    if not args.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        ctx.load_verify_locations(args.tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="backend")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-compression", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca")
    args = parser.parse_args()
    counter = [0]
    compression = None if args.no_compression else "deflate"
    async with serve(
        lambda ws: handler(ws, args.name, counter),
        "127.0.0.1",
        args.port,
        compression=compression,
        max_size=None,
        ping_interval=None,
        ssl=tls_context(args),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        emit("listening", port=port, name=args.name, pid=os.getpid())
        async for cmd in commands():
            targets = [sockets[cmd["id"]]] if "id" in cmd else list(sockets.values())
            for ws in targets:
                if cmd["op"] == "close":
                    await ws.close(cmd.get("code", 1000), cmd.get("reason", ""))


asyncio.run(main())
