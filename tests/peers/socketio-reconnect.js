'use strict';
// Many socket.io-client sockets, each on its own connection (forceNew), over
// WebSocket only, reconnecting on their own after a disconnect, for the rebalance
// tests. Each reports {event: open, client, backend} after an "echo" ack names the
// backend, and {event: close, client, reason} on disconnect.
//
//   node socketio-reconnect.js URL --clients N
const { io } = require('socket.io-client');
const { emit, onCommands, parseArgs } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const url = args._[0];
const n = Number(args.clients || 1);

for (let i = 0; i < n; i++) {
  const socket = io(url, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: true,
    reconnectionDelay: 100,
    reconnectionDelayMax: 300,
    timeout: 10000,
  });
  socket.on('connect', () => {
    socket.timeout(5000).emit('echo', 'which backend', (err, reply) => {
      if (err) emit('error', { client: i, message: String(err) });
      else emit('open', { client: i, backend: reply.name });
    });
  });
  socket.on('disconnect', (reason) => emit('close', { client: i, reason }));
  socket.on('connect_error', (e) => emit('error', { client: i, message: e.message }));
}

onCommands(() => {});
