'use strict';
// Serves the files of one directory over plain HTTP (a page and the scripts it
// loads, e.g. the Socket.IO and SockJS browser bundles) and reports each request.
//
//   node static-server.js --root DIR [--port 0]
//
// GET /anything/NAME answers DIR/NAME (the last path segment), 404 when missing.
const fs = require('fs');
const http = require('http');
const path = require('path');
const { emit, onCommands, parseArgs } = require('./lib');

const args = parseArgs(process.argv.slice(2));
const root = String(args.root);
const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };

const server = http.createServer((req, res) => {
  emit('request', { method: req.method, url: req.url, host: req.headers.host });
  const name = path.basename(new URL(req.url, 'http://x').pathname);
  fs.readFile(path.join(root, name), (err, body) => {
    if (err) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found\n');
      return;
    }
    res.writeHead(200, { 'content-type': types[path.extname(name)] || 'application/octet-stream' });
    res.end(body);
  });
});

onCommands(() => {});
server.listen(Number(args.port || 0), '127.0.0.1', () => {
  emit('listening', { port: server.address().port });
});
