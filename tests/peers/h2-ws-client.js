'use strict';
// WebSockets over HTTP/2 (RFC 8441) from Node's built-in `http2` client: one HTTP/2
// connection, `--count` extended CONNECT streams (`:protocol websocket`) on it, and
// the `ws` package's own framing (client role: masked frames out) on each stream.
// Reports everything as JSON lines, like ws-client.js, with the tunnel's `id`.
//
//   node h2-ws-client.js URL [--count N] [--protocol P]... [--origin O]
//                            [--header 'K: V']... [--no-auto-pong] [--ca FILE]
//                            [--connect HOST:PORT] [--local-address IP]
//
// URL is http://… (h2c with prior knowledge) or https://… (ALPN h2). --connect
// dials HOST:PORT instead of URL's host (the URL still names :authority and SNI);
// --local-address binds the connection's source address (e.g. 127.0.0.2).
// Commands (stdin): {op: text, data, id?} | {op: binary, b64, id?} | {op: ping, data, id?}
//                   | {op: close, code?, reason?, id?, end?} (with `end` the stream's
//                     END_STREAM follows the Close frame at once, as Chromium sends
//                     it, instead of after the server's Close as `ws` does)
//                   | {op: open, path?} (one more stream, to URL's path or `path`)
//                   | {op: fragments, parts: [text…], id?} (one text message sent as
//                     one frame per part: a first frame and continuations)
//                   | {op: pause, id?} | {op: resume, id?} (stop/start reading the stream)
//                   | {op: latency, id, count, size} (`count` echo round trips, one at
//                     a time; reports latency {id, count, p50_ms, p99_ms, max_ms})
//                   | {op: get, path, headers?} (a plain HTTP/2 request on the
//                     session; reports http-response {status, headers, body})
// `id` defaults to every open tunnel. Events: session {remoteSettings},
// response {id, status, headers}, open {id, protocol}, message {id, …}, ping, pong,
// close {id, code, reason}, stream-close {id, rstCode} (the HTTP/2 stream closed:
// rstCode 0 for END_STREAM both ways or RST_STREAM NO_ERROR), goaway {code,
// lastStreamID}, session-close.
const http2 = require('http2');
const fs = require('fs');
const net = require('net');
const tls = require('tls');
const WebSocket = require('ws');
const { emit, describe, onCommands, parseArgs, list } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const url = new URL(args._[0]);
const count = Number(args.count || 1);
const headers = {};
for (const h of list(args.header)) {
  const i = h.indexOf(':');
  headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim();
}
const connectOptions = {};
if (args.ca) connectOptions.ca = fs.readFileSync(args.ca);
if (args.connect || args['local-address']) {
  const [host, port] = args.connect ? String(args.connect).split(':') : [url.hostname, url.port];
  const localAddress = args['local-address'] ? String(args['local-address']) : undefined;
  connectOptions.createConnection = () =>
    url.protocol === 'https:'
      ? tls.connect({ host, port: Number(port), localAddress, servername: url.hostname, ALPNProtocols: ['h2'], ca: connectOptions.ca })
      : net.connect({ host, port: Number(port), localAddress });
}

const session = http2.connect(url.origin, connectOptions);
const sockets = new Map();
const closedTunnels = new Set();
let nextId = 0;
let connectAllowed = null;
// Commands wait until every initial tunnel has answered (opened or refused).
let settled = 0;
const waiting = [];
function settle() {
  if (++settled === count) for (const cmd of waiting.splice(0)) run(cmd);
}

session.on('error', (e) => emit('session-error', { message: e.message }));
session.on('goaway', (code, lastStreamID) => emit('goaway', { code, lastStreamID }));
session.on('close', () => {
  emit('session-close', {});
  process.exit(0);
});
session.on('remoteSettings', (settings) => {
  if (connectAllowed !== null) return;
  connectAllowed = !!settings.enableConnectProtocol;
  emit('session', { enableConnectProtocol: connectAllowed, maxConcurrentStreams: settings.maxConcurrentStreams });
  for (let i = 0; i < count; i++) open();
  if (count === 0) for (const cmd of waiting.splice(0)) run(cmd);
});

function open(path) {
  const id = nextId++;
  const req = {
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':scheme': url.protocol.replace(':', ''),
    ':authority': url.host,
    ':path': path || url.pathname + url.search,
    'sec-websocket-version': '13',
    ...headers,
  };
  if (args.origin) req.origin = args.origin;
  const protocols = list(args.protocol);
  if (protocols.length) req['sec-websocket-protocol'] = protocols.join(', ');
  let stream;
  try {
    stream = session.request(req);
  } catch (e) {
    emit('error', { id, message: e.message });
    return;
  }
  let answered = false;
  const answer = () => {
    if (!answered && id < count) settle();
    answered = true;
  };
  stream.on('error', (e) => {
    emit('stream-error', { id, message: e.message });
    answer();
  });
  stream.on('close', () => {
    if (sockets.has(id) || closedTunnels.has(id)) emit('stream-close', { id, rstCode: stream.rstCode });
    answer();
  });
  stream.on('response', (h) => {
    const status = h[':status'];
    emit('response', { id, status, headers: h });
    if (status !== 200) {
      answer();
      let body = '';
      stream.on('data', (d) => (body += d));
      stream.on('end', () => emit('body', { id, status, body }));
      return;
    }
    // ws's framing on the stream: `null` address makes a bare WebSocket, and the
    // client role (masking, expecting unmasked frames) is set before the socket.
    // `closeTimeout` too: a bare WebSocket gets no default, and an undefined timer
    // would destroy the stream at once after our Close, before the answer arrives.
    const ws = new WebSocket(null, undefined, { autoPong: !args['no-auto-pong'], closeTimeout: 30000 });
    ws._isServer = false;
    stream.setNoDelay = () => {};
    stream.setTimeout = stream.setTimeout || (() => {});
    ws._protocol = h['sec-websocket-protocol'] || '';
    ws.setSocket(stream, Buffer.alloc(0), { maxPayload: 1 << 30, skipUTF8Validation: false });
    sockets.set(id, ws);
    emit('open', { id, protocol: ws.protocol });
    ws.on('message', (data, isBinary) => {
      const hook = hooks.get(id);
      if (hook) hook(data);
      else emit('message', Object.assign({ id }, describe(data, isBinary)));
    });
    ws.on('ping', (data) => emit('ping', { id, data: data.toString() }));
    ws.on('pong', (data) => emit('pong', { id, data: data.toString() }));
    ws.on('close', (code, reason) => {
      sockets.delete(id);
      closedTunnels.add(id);
      emit('close', { id, code, reason: reason.toString() });
    });
    ws.on('error', (e) => emit('error', { id, message: e.message }));
    answer();
  });
}

// A tunnel whose messages feed a measurement instead of events.
const hooks = new Map();

function latency(id, ws, count, size) {
  const payload = 'x'.repeat(size);
  const samples = [];
  let sentAt = 0;
  const next = () => {
    if (samples.length === count) {
      hooks.delete(id);
      samples.sort((a, b) => a - b);
      const at = (q) => samples[Math.min(samples.length - 1, Math.ceil(q * samples.length) - 1)];
      emit('latency', { id, count, p50_ms: at(0.5), p99_ms: at(0.99), max_ms: samples[samples.length - 1] });
      return;
    }
    sentAt = performance.now();
    ws.send(payload);
  };
  hooks.set(id, () => {
    samples.push(performance.now() - sentAt);
    next();
  });
  next();
}

function get(cmd) {
  const req = session.request({ ':method': 'GET', ':authority': url.host, ':path': cmd.path, ...(cmd.headers || {}) });
  req.setEncoding('utf8');
  let status = 0;
  let headers = {};
  let body = '';
  req.on('response', (h) => {
    status = h[':status'];
    headers = h;
  });
  req.on('data', (d) => (body += d));
  req.on('end', () => emit('http-response', { status, headers, body }));
  req.on('error', (e) => emit('stream-error', { message: e.message }));
  req.end();
}

function targets(cmd) {
  if (cmd.id === undefined) return [...sockets.values()];
  const ws = sockets.get(cmd.id);
  return ws ? [ws] : [];
}

function run(cmd) {
  if (cmd.op === 'open') return open(cmd.path);
  if (cmd.op === 'get') return get(cmd);
  if (cmd.op === 'latency') return latency(cmd.id, sockets.get(cmd.id), cmd.count, cmd.size);
  for (const ws of targets(cmd)) {
    if (cmd.op === 'text') ws.send(cmd.data);
    else if (cmd.op === 'binary') ws.send(Buffer.from(cmd.b64, 'base64'), { binary: true });
    else if (cmd.op === 'ping') ws.ping(cmd.data || '');
    else if (cmd.op === 'close') {
      ws.close(cmd.code, cmd.reason);
      if (cmd.end) ws._socket.end();
    } else if (cmd.op === 'pause') ws.pause();
    else if (cmd.op === 'resume') ws.resume();
    else if (cmd.op === 'fragments') {
      cmd.parts.forEach((part, i) => ws.send(part, { fin: i === cmd.parts.length - 1 }));
    }
  }
}

onCommands((cmd) => {
  if (settled < count) waiting.push(cmd);
  else run(cmd);
});
