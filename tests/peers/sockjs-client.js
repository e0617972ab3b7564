'use strict';
// A sockjs-client on one forced transport that sends three messages and reports the
// replies. sockjs-client's Node XHR driver keeps no cookies, so this wraps
// http.request with a small cookie jar, as a browser would keep the proxy's affinity
// cookie.
//
//   node sockjs-client.js URL --transport xhr-polling|xhr-streaming|websocket
const http = require('http');
const { emit, parseArgs } = require('./lib');

const jar = new Map();
const request = http.request;
http.request = function (options, callback) {
  options = Object.assign({}, options);
  options.headers = Object.assign({}, options.headers);
  if (jar.size) options.headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  return request.call(http, options, (res) => {
    for (const c of res.headers['set-cookie'] || []) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
      emit('set-cookie', { cookie: pair });
    }
    if (callback) callback(res);
  });
};

const SockJS = require('sockjs-client');
const args = parseArgs(process.argv.slice(2));
const sock = new SockJS(args._[0], null, { transports: [String(args.transport)], timeout: 10000 });
const replies = [];
sock.onopen = () => {
  emit('open', { transport: sock.transport });
  for (const m of ['one', 'two', 'three']) sock.send(m);
};
sock.onmessage = (e) => {
  replies.push(e.data);
  emit('message', { data: e.data });
  if (replies.length === 3) sock.close();
};
sock.onclose = (e) => {
  emit('close', { code: e.code, reason: e.reason, replies });
  process.exit(0);
};
setTimeout(() => {
  emit('error', { message: 'timed out' });
  process.exit(1);
}, 20000).unref();
