'use strict';
// A socket.io-client that connects over WebSocket only (no polling: the upgrade is
// what fleet-wide caps count), with a token in the query, echoes once through the
// server and then holds its connection open until stdin closes.
//
//   node socketio-hold.js URL --token JWT
const { io } = require('socket.io-client');
const { emit, onCommands, parseArgs } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const socket = io(args._[0], {
  transports: ['websocket'],
  query: { access_token: String(args.token || '') },
  reconnection: false,
  timeout: 10000,
});

socket.on('connect', () => {
  socket.timeout(5000).emit('echo', 'held', (err, reply) => {
    if (err) emit('error', { message: String(err) });
    else emit('connect', { reply });
  });
});
socket.on('connect_error', (e) => emit('connect_error', { message: e.message }));
socket.on('disconnect', (reason) => emit('disconnect', { reason }));
onCommands(() => {}, () => {
  socket.close();
  process.exit(0);
});
