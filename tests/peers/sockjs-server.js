'use strict';
// A SockJS server (prefix /echo) that answers every message with "<name>:<message>"
// and reports every HTTP request it receives.
//
//   node sockjs-server.js --name A [--port 0]
const http = require('http');
const sockjs = require('sockjs');
const { emit, onCommands, parseArgs } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const name = String(args.name || 'backend');

const echo = sockjs.createServer({ prefix: '/echo', log: () => {} });
echo.on('connection', (conn) => {
  emit('connection', { protocol: conn.protocol });
  conn.on('data', (msg) => conn.write(`${name}:${msg}`));
  conn.on('close', () => emit('close', {}));
});

const server = http.createServer();
echo.installHandlers(server);
// installHandlers replaces the server's listeners, so ours are prepended after it.
server.prependListener('request', (req) => emit('request', { method: req.method, url: req.url }));
server.prependListener('upgrade', (req) => emit('request', { method: 'UPGRADE', url: req.url }));

onCommands(() => {});
server.listen(Number(args.port || 0), '127.0.0.1', () => {
  emit('listening', { port: server.address().port, name });
});
