'use strict';
// A Socket.IO server that reports every Engine.IO request it receives, so a test can
// tell which backend served which transport.
//
//   node socketio-server.js --name A [--port 0]
//
// Clients emit "echo" with an ack; the ack carries {name, msg, transport}.
const http = require('http');
const { Server } = require('socket.io');
const { emit, onCommands, parseArgs } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const name = String(args.name || 'backend');

const server = http.createServer();
const io = new Server(server, { transports: ['polling', 'websocket'] });
// Engine.IO replaces the server's listeners when it attaches, so ours are added after
// it and prepended: they run first and only observe.
server.prependListener('request', (req) => {
  const url = new URL(req.url, 'http://x');
  emit('request', { method: req.method, transport: url.searchParams.get('transport'), sid: url.searchParams.get('sid') });
});
server.prependListener('upgrade', (req) => {
  const url = new URL(req.url, 'http://x');
  emit('request', { method: 'UPGRADE', transport: url.searchParams.get('transport'), sid: url.searchParams.get('sid') });
});

io.on('connection', (socket) => {
  emit('connection', { id: socket.id, transport: socket.conn.transport.name });
  socket.conn.on('upgrade', (transport) => emit('upgrade', { id: socket.id, transport: transport.name }));
  socket.on('echo', (msg, ack) => ack({ name, msg, transport: socket.conn.transport.name }));
  socket.on('disconnect', (reason) => emit('disconnect', { id: socket.id, reason }));
});

onCommands(() => {});
server.listen(Number(args.port || 0), '127.0.0.1', () => {
  emit('listening', { port: server.address().port, name });
});
