#!/usr/bin/env python3
"""Writes the checked-in seed corpus of the `frames` target (fuzz/corpus/frames/seed-*).

Each seed: a flags byte (bit 0: from the client, bits 1-2: none / permessage-deflate /
unknown extension, bit 3: a message limit of (byte 1 + 1) x 8), the limit byte, a count
of read sizes, the read sizes (each + 1), then the frames.
"""
import os
import struct

def frame(opcode, payload=b"", fin=True, mask=None, rsv=0, length=None):
    n = len(payload) if length is None else length
    out = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    m = 0x80 if mask else 0
    if n < 126:
        out += bytes([m | n])
    elif n <= 0xFFFF:
        out += bytes([m | 126]) + struct.pack(">H", n)
    else:
        out += bytes([m | 127]) + struct.pack(">Q", n)
    if mask:
        out += bytes(mask)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return out + payload

def close(code, reason=b""):
    return struct.pack(">H", code) + reason

K = [0x37, 0xFA, 0x21, 0x3D]
def seed(flags, limit, sizes, frames):
    return bytes([flags, limit, len(sizes)]) + bytes(s - 1 for s in sizes) + b"".join(frames)

SEEDS = {
    "client-conversation": seed(1, 0, [], [
        frame(1, b"hello", mask=K), frame(2, bytes(300), mask=K),
        frame(1, b"frag-", fin=False, mask=K), frame(9, b"ping", mask=K),
        frame(0, b"ment", mask=K), frame(10, b"\0wsgate12345678", mask=K),
        frame(8, close(1000, "bye".encode()), mask=K)]),
    "backend-conversation": seed(0, 0, [3, 7, 64], [
        frame(1, b"hello back"), frame(2, bytes(300)),
        frame(9, b"app ping"), frame(8, close(4001, "ça va".encode()))]),
    "deflate": seed(2, 0, [5, 1], [
        frame(1, b"\xf2\x48\xcd\xc9\xc9\x07\x00", rsv=4), frame(2, b"x", fin=False, rsv=4),
        frame(0, b"y"), frame(0, b"z", rsv=4)]),
    "unknown-extension": seed(4 | 1, 0, [2], [frame(1, b"rsv", mask=K, rsv=7)]),
    "unmasked-client": seed(1, 0, [4], [frame(1, b"ok", mask=K), frame(1, b"plain")]),
    "masked-backend": seed(0, 0, [9], [frame(1, b"ok"), frame(2, b"masked", mask=K)]),
    "rsv2": seed(1, 0, [], [frame(1, b"x", mask=K, rsv=2)]),
    "close-one-byte": seed(1, 0, [1], [frame(8, b"\x03", mask=K)]),
    "close-999": seed(0, 0, [2], [frame(8, close(999))]),
    "close-bad-utf8": seed(1, 0, [6], [frame(8, close(1000, b"ok\xc3"), mask=K)]),
    "reserved-opcode": seed(0, 0, [1], [frame(1, b"a"), frame(3, b"")]),
    "long-control": seed(1, 0, [100], [frame(9, bytes(126), mask=K)]),
    "fragmented-control": seed(0, 0, [], [frame(10, b"p", fin=False)]),
    "orphan-continuation": seed(0, 0, [], [frame(0, b"c")]),
    "limit": seed(8 | 1, 7, [13], [frame(1, bytes(40), fin=False, mask=K), frame(0, bytes(40), mask=K)]),
    "huge-length": seed(0, 0, [3], [frame(2, b"partial", length=1 << 40)]),
    "top-bit-length": seed(0, 0, [], [frame(2, b"", length=1 << 63)]),
}

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "frames")
os.makedirs(here, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(here, "seed-" + name), "wb") as f:
        f.write(data)
print(f"{len(SEEDS)} seeds in {here}")
