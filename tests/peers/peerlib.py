"""Shared plumbing for the Python peers: JSON events on stdout, JSON commands on stdin."""

import asyncio
import base64
import hashlib
import json
import sys


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def describe(data):
    """Length and SHA-1 of a message, and the message itself when small."""
    binary = isinstance(data, (bytes, bytearray))
    raw = bytes(data) if binary else data.encode()
    out = {"binary": binary, "len": len(raw), "sha1": hashlib.sha1(raw).hexdigest()}
    if len(raw) <= 4096:
        if binary:
            out["b64"] = base64.b64encode(raw).decode()
        else:
            out["data"] = data
    return out


async def commands():
    """Yields one parsed JSON command per stdin line until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        line = line.strip()
        if line:
            yield json.loads(line)
