"""HTTP/2 clients from Python's `h2` library (h2c with prior knowledge), for wsgate's
HTTP/2 tests: WebSockets over extended CONNECT (RFC 8441) framed by websockets'
sans-I/O `Protocol` in the client role, and abusive clients that write raw frames
(hyperframe, hpack: h2's own layers) which a well-behaved library would refuse to.

    python h2_client.py HOST:PORT MODE [--path P] [--authority A] [--origin O]
                        [--header 'K: V']... [--text T] [--seconds S] [--streams N]
                        [--frames N] [--no-read] [--code C] [--reason R] [--wait]
                        [--end-stream]

Modes and their events (one JSON object per stdout line):
  websocket    one extended CONNECT on --path: settings {enable_connect_protocol,
               max_concurrent_streams}, response {status, headers, body}; on 200 it
               sends --text, reports the echo as message {…}, then Close 1000 and
               close {code, reason} (the server's answer), or stream-end {reset} when
               the stream ended without one.
  close        the close handshake on one extended CONNECT on --path: settings,
               response as in `websocket`; on 200 it sends --text and reports the echo
               as message {…}; then it sends Close --code/--reason, or with --wait it
               waits (up to --seconds) for the server's Close and answers it. Reports
               close {code, reason} (the server's Close), goaway {error,
               last_stream_id} if one comes (a graceful GOAWAY does not end the
               stream), then stream-end {reset, error?}: END_STREAM or RST_STREAM from
               the server. With --end-stream the client's Close carries END_STREAM,
               as Chromium's does (RFC 8441 §5: the orderly close of the stream).
  handshakes   `websocket` on a new connection again and again for --seconds:
               handshake {ok, ms, status?, error?} each, then summary {ok, failed,
               p50_ms, max_ms}.
  over-limit   --streams extended CONNECTs at once on one connection, ignoring the
               server's SETTINGS_MAX_CONCURRENT_STREAMS: stream {id, status} or
               stream {id, reset: ERROR_NAME} for each.
  rapid-reset  --frames HEADERS (GET /) each followed at once by RST_STREAM CANCEL.
  continuation-flood
               one HEADERS without END_HEADERS, then up to --frames CONTINUATION
               frames that never end the header block.
  ping-flood, settings-flood
               --frames PING (or SETTINGS) frames as fast as the socket takes them.
  The abuse modes write for at most --seconds and report result {written,
  write_secs, write_stopped, received: {FRAME: n}, goaway: {error, last_stream_id,
  debug} | null, closed, closed_after_secs}; with --no-read nothing is read until
  the writing ends (a client that never reads its PING/SETTINGS ACKs).
"""

import argparse
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from websockets.frames import Close, Opcode
from websockets.protocol import Protocol, Side, State

from peerlib import describe, emit

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def error_name(code):
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


class Client:
    """One h2c connection driven by the `h2` library."""

    def __init__(self, addr, timeout=10.0, after_goaway=False):
        self.after_goaway = after_goaway
        self.buf = b""
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.flush()
        self.settings = None
        self.pending = []

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def events(self):
        """The next batch of h2 events (blocks on the socket). With `after_goaway`
        the streams a graceful GOAWAY covers go on (RFC 9113 §6.8), which `h2`
        does not allow: it refuses every frame after a GOAWAY, so frames are fed
        one at a time and the connection reopened after each GOAWAY."""
        if self.pending:
            out, self.pending = self.pending, []
            return out
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        if self.after_goaway:
            events = []
            self.buf += data
            while len(self.buf) >= 9:
                size = 9 + int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < size:
                    break
                frame, self.buf = self.buf[:size], self.buf[size:]
                if self.conn.state_machine.state == ConnectionState.CLOSED:
                    self.conn.state_machine.state = ConnectionState.CLIENT_OPEN
                events += self.conn.receive_data(frame)
        else:
            events = self.conn.receive_data(data)
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if isinstance(ev, h2.events.RemoteSettingsChanged) and self.settings is None:
                s = self.conn.remote_settings
                self.settings = {
                    "enable_connect_protocol": bool(s.enable_connect_protocol),
                    "max_concurrent_streams": s.max_concurrent_streams,
                }
        self.flush()
        return events

    def wait_settings(self):
        while self.settings is None:
            self.pending.extend(self.events())
        return self.settings

    def connect(self, path, authority, extra):
        """Opens an extended CONNECT stream; returns its id."""
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path),
            ("sec-websocket-version", "13"),
        ] + extra
        self.conn.send_headers(sid, headers)
        self.flush()
        return sid


def websocket(args, quiet=False):
    """One tunnel: CONNECT, echo one text message, Close 1000. Returns the status."""
    c = Client(args.addr)
    settings = c.wait_settings()
    if not quiet:
        emit("settings", **settings)
    sid = c.connect(args.path, args.authority, args.extra)
    ws = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    status, body, sent_close = None, b"", False
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            for ev in c.events():
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    headers = dict(ev.headers)
                    status = int(headers[":status"])
                    if not quiet:
                        emit("response", status=status, headers=headers)
                    if status != 200:
                        continue
                    ws.send_text(args.text.encode())
                    c.conn.send_data(sid, b"".join(ws.data_to_send()))
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    if status != 200:
                        body += ev.data
                        continue
                    ws.receive_data(ev.data)
                    for frame in ws.events_received():
                        if frame.opcode in (Opcode.TEXT, Opcode.BINARY) and not sent_close:
                            data = frame.data.decode() if frame.opcode == Opcode.TEXT else frame.data
                            if not quiet:
                                emit("message", **describe(data))
                            ws.send_close(1000, "done")
                            sent_close = True
                        elif frame.opcode == Opcode.CLOSE:
                            close = Close.parse(frame.data)
                            if not quiet:
                                emit("close", code=close.code, reason=close.reason)
                            return status
                    out = b"".join(ws.data_to_send())
                    if out:
                        c.conn.send_data(sid, out)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    if ev.stream_id == sid:
                        if status != 200 and not quiet:
                            emit("body", status=status, body=body.decode(errors="replace"))
                        elif not quiet:
                            emit("stream-end", reset=isinstance(ev, h2.events.StreamReset))
                        if isinstance(ev, h2.events.StreamReset) and not quiet:
                            emit("reset", error=error_name(ev.error_code))
                        return status
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    if not quiet:
                        emit("goaway", error=error_name(ev.error_code))
                    return status
            c.flush()
        raise TimeoutError("no answer within 10 s")
    finally:
        c.sock.close()


def close_handshake(args):
    """Mode `close`: one tunnel's close handshake, and how its stream ends."""
    c = Client(args.addr, after_goaway=True)
    emit("settings", **c.wait_settings())
    sid = c.connect(args.path, args.authority, args.extra)
    ws = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)
    status, close_out, ended = None, False, False

    def send():
        """Sends what the protocol wrote; END_STREAM with our Close if asked."""
        nonlocal ended
        out = b"".join(ws.data_to_send())
        end = args.end_stream and close_out and not ended
        if (out or end) and not ended:
            c.conn.send_data(sid, out, end_stream=end)
            ended = end

    deadline = time.monotonic() + args.seconds
    c.sock.settimeout(args.seconds)
    while time.monotonic() < deadline:
        for ev in c.events():
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                status = int(dict(ev.headers)[":status"])
                emit("response", status=status, headers=dict(ev.headers))
                if status != 200:
                    return
                ws.send_text(args.text.encode())
                send()
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                ws.receive_data(ev.data)
                for frame in ws.events_received():
                    if frame.opcode == Opcode.TEXT:
                        emit("message", **describe(frame.data.decode()))
                        if not args.wait and not close_out:
                            ws.send_close(args.code, args.reason)
                            close_out = True
                    elif frame.opcode == Opcode.CLOSE:
                        close = Close.parse(frame.data)
                        emit("close", code=close.code, reason=close.reason)
                        # websockets answers the server's Close by itself.
                        close_out = True
                send()
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                emit("stream-end", reset=False)
                return
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                emit("stream-end", reset=True, error=error_name(ev.error_code))
                return
            elif isinstance(ev, h2.events.ConnectionTerminated):
                emit("goaway", error=error_name(ev.error_code), last_stream_id=ev.last_stream_id)
                if ev.error_code != ErrorCodes.NO_ERROR or ev.last_stream_id < sid:
                    return
        c.flush()
    raise TimeoutError(f"the stream did not end within {args.seconds} s")


def handshakes(args):
    oks, failed = [], 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            status = websocket(args, quiet=True)
            ms = (time.monotonic() - start) * 1000
            if status == 200:
                oks.append(ms)
                emit("handshake", ok=True, ms=round(ms, 2))
            else:
                failed += 1
                emit("handshake", ok=False, ms=round(ms, 2), status=status)
        except Exception as e:  # a failed handshake is what this mode reports
            failed += 1
            emit("handshake", ok=False, error=f"{type(e).__name__}: {e}")
        time.sleep(0.02)
    oks.sort()
    emit(
        "summary",
        ok=len(oks),
        failed=failed,
        p50_ms=round(oks[len(oks) // 2], 2) if oks else None,
        max_ms=round(oks[-1], 2) if oks else None,
    )


def idle(args):
    """A connection that makes one GET and then stays idle for `--seconds`: each
    PING from the server is reported (and answered, as `h2` does), then whether
    the connection is still open. With `--no-read` nothing is read, so nothing is
    answered, and the moment the server closes the connection is reported."""
    start = time.monotonic()
    get = [(":method", "GET"), (":scheme", "http"), (":authority", args.authority), (":path", args.path)]
    if args.no_read:
        sock = socket.create_connection(args.addr, timeout=args.seconds)
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, get, end_stream=True)
        sock.sendall(conn.data_to_send())
        # Bytes are taken off the socket (so its window never fills) but never
        # parsed: no PING is answered.
        try:
            while sock.recv(65536):
                pass
            emit("closed", after=time.monotonic() - start)
        except socket.timeout:
            emit("open", after=time.monotonic() - start)
        except OSError as e:
            emit("closed", after=time.monotonic() - start, error=str(e))
        return
    c = Client(args.addr, timeout=args.seconds)
    c.conn.send_headers(1, get, end_stream=True)
    c.flush()
    c.sock.settimeout(1.0)
    while time.monotonic() - start < args.seconds:
        try:
            events = c.events()
        except socket.timeout:
            continue
        except (ConnectionError, OSError) as e:
            emit("closed", after=time.monotonic() - start, error=str(e))
            return
        for ev in events:
            if isinstance(ev, h2.events.PingReceived):
                emit("ping", after=time.monotonic() - start)
            elif isinstance(ev, h2.events.ResponseReceived):
                emit("response", status=int(dict(ev.headers)[":status"]))
    emit("open", after=time.monotonic() - start)


def over_limit(args):
    c = Client(args.addr)
    emit("settings", **c.wait_settings())
    # Pretend the server allowed more: a client that ignores the SETTING.
    key = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
    c.conn.remote_settings[key] = 1 << 20
    c.conn.remote_settings.acknowledge()
    ids = [c.connect(args.path, args.authority, args.extra) for _ in range(args.streams)]
    seen = {}
    deadline = time.monotonic() + 10
    while len(seen) < len(ids) and time.monotonic() < deadline:
        for ev in c.events():
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id not in seen:
                seen[ev.stream_id] = True
                emit("stream", id=ev.stream_id, status=int(dict(ev.headers)[":status"]))
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id not in seen:
                seen[ev.stream_id] = True
                emit("stream", id=ev.stream_id, reset=error_name(ev.error_code))
    emit("done", answered=len(seen))


class Reader(threading.Thread):
    """Reads raw frames from the server until it closes, counting them by type; stops
    after a quiet spell once the writing is over."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.buf = sock, b""
        self.writing_done = threading.Event()
        self.received, self.goaway, self.closed_at = {}, None, None

    def recv_exact(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                if self.writing_done.is_set():
                    raise
                continue
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def run(self):
        try:
            while True:
                frame, length = Frame.parse_frame_header(memoryview(self.recv_exact(9)))
                frame.parse_body(memoryview(self.recv_exact(length)))
                name = type(frame).__name__.replace("Frame", "").upper()
                self.received[name] = self.received.get(name, 0) + 1
                if isinstance(frame, GoAwayFrame) and self.goaway is None:
                    self.goaway = {
                        "error": error_name(frame.error_code),
                        "last_stream_id": frame.last_stream_id,
                        "debug": frame.additional_data.decode(errors="replace"),
                    }
        except TimeoutError:
            pass  # quiet after the writing: the connection is still open
        except (OSError, ConnectionError, ValueError):
            self.closed_at = time.monotonic()


def abuse_frames(args):
    """The abusive frames, lazily, as bytes."""
    enc = Encoder()
    if args.mode == "rapid-reset":
        for i in range(args.frames):
            sid = 1 + 2 * i
            block = enc.encode(
                [(":method", "GET"), (":scheme", "http"), (":authority", args.authority), (":path", "/")]
            )
            yield HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            yield RstStreamFrame(sid, error_code=ErrorCodes.CANCEL).serialize()
    elif args.mode == "continuation-flood":
        block = enc.encode(
            [(":method", "GET"), (":scheme", "http"), (":authority", args.authority), (":path", "/")]
        )
        yield HeadersFrame(1, data=block, flags=["END_STREAM"]).serialize()
        # Literal header fields without indexing (RFC 7541 §6.2.2), new names.
        for i in range(args.frames):
            name, value = f"x-flood-{i}".encode(), b"v" * 64
            field = b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
            yield ContinuationFrame(1, data=field).serialize()
    elif args.mode == "ping-flood":
        for i in range(args.frames):
            yield PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize()
    elif args.mode == "settings-flood":
        for i in range(args.frames):
            yield SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: 4096 + i % 2}).serialize()


def abuse(args):
    sock = socket.create_connection(args.addr, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(PREFACE + SettingsFrame(0).serialize())
    start = time.monotonic()
    reader = Reader(sock)
    if not args.no_read:
        reader.start()
    sock.settimeout(2.0)
    written, stopped = 0, "all written"
    batch, deadline = [], start + args.seconds
    frames = abuse_frames(args)
    try:
        while True:
            for frame in frames:
                batch.append(frame)
                if len(batch) == 256:
                    break
            if not batch:
                break
            sock.sendall(b"".join(batch))
            written += len(batch)
            batch = []
            if time.monotonic() > deadline:
                stopped = "time up"
                break
    except socket.timeout:
        stopped = "the server stopped reading"
    except OSError as e:
        stopped = f"{type(e).__name__}: {e}"
    write_secs = time.monotonic() - start
    if args.no_read:
        reader.start()
    # The reader stops after 3 s without a frame (or at the server's close).
    sock.settimeout(3.0)
    reader.writing_done.set()
    reader.join(timeout=60.0)
    emit(
        "result",
        written=written,
        write_secs=round(write_secs, 3),
        write_stopped=stopped,
        received=reader.received,
        goaway=reader.goaway,
        closed=reader.closed_at is not None,
        closed_after_secs=round(reader.closed_at - start, 3) if reader.closed_at else None,
    )
    sock.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("mode")
    p.add_argument("--path", default="/")
    p.add_argument("--authority")
    p.add_argument("--origin")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--text", default="hello over h2")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--streams", type=int, default=6)
    p.add_argument("--frames", type=int, default=10000)
    p.add_argument("--no-read", action="store_true")
    p.add_argument("--code", type=int, default=1000)
    p.add_argument("--reason", default="")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--end-stream", action="store_true")
    args = p.parse_args()
    host, port = args.addr.rsplit(":", 1)
    args.authority = args.authority or args.addr
    args.addr = (host, int(port))
    args.extra = [(k.strip().lower(), v.strip()) for k, v in (h.split(":", 1) for h in args.header)]
    if args.origin:
        args.extra.append(("origin", args.origin))
    modes = {
        "websocket": websocket,
        "close": close_handshake,
        "handshakes": handshakes,
        "over-limit": over_limit,
        "idle": idle,
    }
    if args.mode in modes:
        modes[args.mode](args)
    else:
        abuse(args)


if __name__ == "__main__":
    main()
