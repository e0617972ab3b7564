'use strict';
// A backend built on the `ws` package: echoes every message, answers plain HTTP
// requests, and reports what it sees (request headers, messages, pings, closes) as
// JSON lines.
//
//   node ws-server.js --name A [--port 0] [--deflate] [--reject-status 403]
//                     [--no-auto-pong] [--tls-cert F --tls-key F [--tls-client-ca F]]
//
// --no-auto-pong leaves pings unanswered (a backend that hangs: the proxy's
// keepalive gives up on it).
//
// With --tls-cert/--tls-key it serves https and wss; with --tls-client-ca it also
// requires a client certificate signed by that CA (mTLS) and reports its subject.
//
// Special text messages: "__name__" is answered with the backend's name,
// "__headers__" with the upgrade request's headers as JSON.
// Plain HTTP: any path answers 200 with {name, method, url, headers}; /stream
// answers a chunked body "chunk-1\n", then after ?delay=MS "chunk-2\n".
// Commands (stdin): {op: send|ping|close|terminate, id?, data?, code?, reason?}
//                   | {op: flood, id?, size} (binary messages of `size` bytes as fast
//                     as the connection takes them, keeping at most 1 MiB queued in
//                     `ws`; reports flood {id, sent_bytes} every 500 ms: bytes the
//                     kernel accepted) | {op: unflood, id?} (stops it).
const fs = require('fs');
const http = require('http');
const https = require('https');
const { WebSocketServer } = require('ws');
const { emit, describe, onCommands, parseArgs } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const name = String(args.name || 'backend');
const rejectStatus = args['reject-status'] ? Number(args['reject-status']) : 0;

const tlsOptions = args['tls-cert']
  ? Object.assign(
      { cert: fs.readFileSync(String(args['tls-cert'])), key: fs.readFileSync(String(args['tls-key'])) },
      args['tls-client-ca']
        ? { ca: fs.readFileSync(String(args['tls-client-ca'])), requestCert: true, rejectUnauthorized: true }
        : {},
    )
  : null;

function peerCertificate(req) {
  const c = req.socket.getPeerCertificate ? req.socket.getPeerCertificate() : null;
  return c && c.subject ? c.subject.CN : null;
}

const onRequest = (req, res) => {
  emit('http', { method: req.method, url: req.url, version: req.httpVersion, headers: req.headers });
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/echo') {
    // The request body streamed back as it arrives; what arrived is reported.
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'x-backend': name });
    let bytes = 0;
    req.on('data', (d) => (bytes += d.length));
    req.on('end', () => emit('http-body', { bytes, chunked: req.headers['transfer-encoding'] === 'chunked' }));
    req.pipe(res);
    return;
  }
  if (url.pathname === '/stream') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.write('chunk-1\n');
    setTimeout(() => res.end('chunk-2\n'), Number(url.searchParams.get('delay') || 1000));
    return;
  }
  const body = JSON.stringify({ name, method: req.method, url: req.url, headers: req.headers });
  res.writeHead(200, { 'content-type': 'application/json', 'x-backend': name });
  res.end(body);
};
const server = tlsOptions ? https.createServer(tlsOptions, onRequest) : http.createServer(onRequest);
if (tlsOptions) {
  server.on('tlsClientError', (e) => emit('tls_error', { message: e.message, code: e.code }));
}

const wss = new WebSocketServer({
  server,
  perMessageDeflate: !!args.deflate,
  maxPayload: 1 << 30,
  autoPong: !args['no-auto-pong'],
  verifyClient: rejectStatus ? (info, cb) => cb(false, rejectStatus, 'rejected by backend') : undefined,
});

const sockets = new Map();
let nextId = 1;

wss.on('connection', (ws, req) => {
  const id = nextId++;
  sockets.set(id, ws);
  emit('connection', {
    id,
    url: req.url,
    headers: req.headers,
    protocol: ws.protocol,
    extensions: ws.extensions,
    client_cert: peerCertificate(req),
  });
  ws.on('message', (data, isBinary) => {
    emit('message', Object.assign({ id }, describe(data, isBinary)));
    if (!isBinary && data.length < 64) {
      const text = data.toString();
      if (text === '__name__') return ws.send(name);
      if (text === '__headers__') return ws.send(JSON.stringify(req.headers));
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('ping', (data) => emit('ping', { id, data: data.toString() }));
  ws.on('pong', (data) => emit('pong', { id, data: data.toString() }));
  ws.on('close', (code, reason) => {
    sockets.delete(id);
    emit('close', { id, code, reason: reason.toString() });
  });
  ws.on('error', (e) => emit('error', { id, message: e.message }));
});

const floods = new Map();

function flood(id, ws, size) {
  const chunk = Buffer.alloc(size, 0x61);
  const state = { stop: false, sent: 0 };
  floods.set(ws, state);
  const pump = () => {
    while (!state.stop && ws.readyState === ws.OPEN && ws.bufferedAmount < 1 << 20) {
      ws.send(chunk, { binary: true }, (err) => {
        if (!err) state.sent += size;
      });
    }
    if (!state.stop && ws.readyState === ws.OPEN) setTimeout(pump, 5);
  };
  const report = setInterval(() => {
    emit('flood', { id, sent_bytes: state.sent });
    if (state.stop || ws.readyState !== ws.OPEN) clearInterval(report);
  }, 500);
  pump();
}

function target(cmd) {
  if (cmd.id !== undefined) return [sockets.get(cmd.id)].filter(Boolean);
  return [...sockets.values()];
}

onCommands((cmd) => {
  for (const ws of target(cmd)) {
    if (cmd.op === 'send') ws.send(cmd.b64 !== undefined ? Buffer.from(cmd.b64, 'base64') : cmd.data);
    else if (cmd.op === 'ping') ws.ping(cmd.data || '');
    else if (cmd.op === 'close') ws.close(cmd.code, cmd.reason);
    else if (cmd.op === 'terminate') ws.terminate();
    else if (cmd.op === 'flood') flood([...sockets].find(([, w]) => w === ws)[0], ws, cmd.size || 65536);
    else if (cmd.op === 'unflood' && floods.has(ws)) floods.get(ws).stop = true;
  }
});

server.listen(Number(args.port || 0), '127.0.0.1', () => {
  emit('listening', { port: server.address().port, name });
});
