'use strict';
// WebSockets over HTTP/2 (RFC 8441) from Node's built-in `http2` client: one HTTP/2
// connection, `--count` extended CONNECT streams (`:protocol websocket`) on it, and
// the `ws` package's own framing (client role: masked frames out) on each stream.
// Reports everything as JSON lines, like ws-client.js, with the tunnel's `id`.
//
//   node h2-ws-client.js URL [--count N] [--protocol P]... [--origin O]
//                            [--header 'K: V']... [--no-auto-pong] [--ca FILE]
//
// URL is http://… (h2c with prior knowledge) or https://… (ALPN h2).
// Commands (stdin): {op: text, data, id?} | {op: binary, b64, id?} | {op: ping, data, id?}
//                   | {op: close, code?, reason?, id?} | {op: open} (one more stream)
// `id` defaults to every open tunnel. Events: session {remoteSettings},
// response {id, status, headers}, open {id, protocol}, message {id, …}, ping, pong,
// close {id, code, reason}, goaway {code}, session-close.
const http2 = require('http2');
const fs = require('fs');
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

const session = http2.connect(url.origin, connectOptions);
const sockets = new Map();
let nextId = 0;
let connectAllowed = null;
// Commands wait until every initial tunnel has answered (opened or refused).
let settled = 0;
const waiting = [];
function settle() {
  if (++settled === count) for (const cmd of waiting.splice(0)) run(cmd);
}

session.on('error', (e) => emit('session-error', { message: e.message }));
session.on('goaway', (code) => emit('goaway', { code }));
session.on('close', () => {
  emit('session-close', {});
  process.exit(0);
});
session.on('remoteSettings', (settings) => {
  if (connectAllowed !== null) return;
  connectAllowed = !!settings.enableConnectProtocol;
  emit('session', { enableConnectProtocol: connectAllowed, maxConcurrentStreams: settings.maxConcurrentStreams });
  for (let i = 0; i < count; i++) open();
});

function open() {
  const id = nextId++;
  const req = {
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':scheme': url.protocol.replace(':', ''),
    ':authority': url.host,
    ':path': url.pathname + url.search,
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
  stream.on('close', () => answer());
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
    const ws = new WebSocket(null, undefined, { autoPong: !args['no-auto-pong'] });
    ws._isServer = false;
    stream.setNoDelay = () => {};
    stream.setTimeout = stream.setTimeout || (() => {});
    ws._protocol = h['sec-websocket-protocol'] || '';
    ws.setSocket(stream, Buffer.alloc(0), { maxPayload: 1 << 30, skipUTF8Validation: false });
    sockets.set(id, ws);
    emit('open', { id, protocol: ws.protocol });
    ws.on('message', (data, isBinary) => emit('message', Object.assign({ id }, describe(data, isBinary))));
    ws.on('ping', (data) => emit('ping', { id, data: data.toString() }));
    ws.on('pong', (data) => emit('pong', { id, data: data.toString() }));
    ws.on('close', (code, reason) => {
      sockets.delete(id);
      emit('close', { id, code, reason: reason.toString() });
    });
    ws.on('error', (e) => emit('error', { id, message: e.message }));
    answer();
  });
}

function targets(cmd) {
  if (cmd.id === undefined) return [...sockets.values()];
  const ws = sockets.get(cmd.id);
  return ws ? [ws] : [];
}

function run(cmd) {
  if (cmd.op === 'open') return open();
  for (const ws of targets(cmd)) {
    if (cmd.op === 'text') ws.send(cmd.data);
    else if (cmd.op === 'binary') ws.send(Buffer.from(cmd.b64, 'base64'), { binary: true });
    else if (cmd.op === 'ping') ws.ping(cmd.data || '');
    else if (cmd.op === 'close') ws.close(cmd.code, cmd.reason);
  }
}

onCommands((cmd) => {
  if (settled < count) waiting.push(cmd);
  else run(cmd);
});
