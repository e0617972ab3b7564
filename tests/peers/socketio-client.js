'use strict';
// A socket.io-client that starts on HTTP long-polling, upgrades to WebSocket, then
// emits "echo" and reports the ack. withCredentials turns on the client's cookie jar
// in Node, as a browser would keep the proxy's affinity cookie.
//
//   node socketio-client.js URL
const { io } = require('socket.io-client');
const { emit, parseArgs } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const socket = io(args._[0], {
  transports: ['polling', 'websocket'],
  upgrade: true,
  withCredentials: true,
  reconnection: false,
  timeout: 10000,
});

// The Engine.IO handshake (always over polling here) opens the manager; the
// upgrade to WebSocket may finish before or after the namespace connects, so the
// echo waits for both.
let upgraded = false;
let connected = false;
let sent = false;
socket.io.on('open', () => {
  const engine = socket.io.engine;
  emit('engine-open', { transport: engine.transport.name });
  engine.on('upgrade', (transport) => {
    emit('upgrade', { transport: transport.name });
    upgraded = true;
    echo();
  });
});
socket.on('connect', () => {
  emit('connect', { transport: socket.io.engine.transport.name });
  connected = true;
  echo();
});

function echo() {
  if (!upgraded || !connected || sent) return;
  sent = true;
  socket.timeout(5000).emit('echo', 'hello through wsgate', (err, reply) => {
    if (err) {
      emit('error', { message: String(err) });
      process.exit(1);
    }
    emit('ack', reply);
    socket.close();
    process.exit(0);
  });
}
socket.on('connect_error', (e) => {
  emit('error', { message: e.message });
  process.exit(1);
});
socket.on('disconnect', (reason) => emit('disconnect', { reason }));
