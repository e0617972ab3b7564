'use strict';
// A client built on the `ws` package that reports everything it sees as JSON lines.
//
//   node ws-client.js URL [--protocol P]... [--origin O] [--header 'K: V']... [--deflate]
//                         [--no-auto-pong]
//
// Commands (stdin): {op: text, data} | {op: binary, b64} | {op: ping|pong, data}
//                   | {op: close, code?, reason?} | {op: terminate}
const WebSocket = require('ws');
const { emit, describe, onCommands, parseArgs, list } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const url = args._[0];
const headers = {};
for (const h of list(args.header)) {
  const i = h.indexOf(':');
  headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
}
const options = {
  headers,
  perMessageDeflate: !!args.deflate,
  maxPayload: 1 << 30,
  autoPong: !args['no-auto-pong'],
  handshakeTimeout: 10000,
};
if (args.origin) options.origin = args.origin;

const ws = new WebSocket(url, list(args.protocol), options);

ws.on('upgrade', (res) => emit('upgrade', { status: res.statusCode, headers: res.headers }));
// Commands that arrive before the handshake finishes wait for it.
const pending = [];
ws.on('open', () => {
  emit('open', { protocol: ws.protocol, extensions: ws.extensions });
  for (const cmd of pending.splice(0)) run(cmd);
});
ws.on('unexpected-response', (req, res) => {
  emit('unexpected-response', { status: res.statusCode, headers: res.headers });
  req.destroy();
  process.exit(0);
});
ws.on('message', (data, isBinary) => emit('message', describe(data, isBinary)));
ws.on('ping', (data) => emit('ping', { data: data.toString() }));
ws.on('pong', (data) => emit('pong', { data: data.toString() }));
ws.on('close', (code, reason) => {
  emit('close', { code, reason: reason.toString() });
  process.exit(0);
});
ws.on('error', (e) => emit('error', { message: e.message }));

function run(cmd) {
  if (cmd.op === 'text') ws.send(cmd.data);
  else if (cmd.op === 'binary') ws.send(Buffer.from(cmd.b64, 'base64'), { binary: true });
  else if (cmd.op === 'ping') ws.ping(cmd.data || '');
  else if (cmd.op === 'pong') ws.pong(cmd.data || '');
  else if (cmd.op === 'close') ws.close(cmd.code, cmd.reason);
  else if (cmd.op === 'terminate') ws.terminate();
}

onCommands((cmd) => {
  if (ws.readyState === WebSocket.CONNECTING) pending.push(cmd);
  else run(cmd);
});
