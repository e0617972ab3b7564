'use strict';
// The chat back end of the e2e-node gateway-api scenario, run as pods from an
// image of this directory (tests/e2e-node/chat-app/image.sh): a Socket.IO server
// (long-polling, then the upgrade to WebSocket) and the page a browser loads.
//
// GET /          the page (it loads /socket.io/socket.io.js, which Socket.IO serves)
// /socket.io/    Socket.IO; clients emit "echo" with an ack, the ack carries
//                {name: this pod's name, msg, transport}
const http = require('http');
const { Server } = require('socket.io');

const name = process.env.HOSTNAME || 'chat';
const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>chat</title>
<script src="/socket.io/socket.io.js"></script></head>
<body><p>served by ${name}</p></body></html>
`;

const server = http.createServer((req, res) => {
  if (req.url === '/' || req.url.startsWith('/?')) {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page);
    return;
  }
  // Socket.IO answers its own path; anything else is not here.
  if (!req.url.startsWith('/socket.io/')) {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  }
});
const io = new Server(server, { transports: ['polling', 'websocket'] });
io.on('connection', (socket) => {
  socket.on('echo', (msg, ack) => ack({ name, msg, transport: socket.conn.transport.name }));
});
server.listen(3000, '0.0.0.0', () => console.log(`chat ${name} listening on :3000`));
process.on('SIGTERM', () => process.exit(0));
