'use strict';
// Shared plumbing for the Node peers: one JSON object per stdout line (events) and
// one JSON object per stdin line (commands), so a Rust test can drive and observe a
// real `ws` / Socket.IO / SockJS peer without parsing free text.
const crypto = require('crypto');
const readline = require('readline');

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields)) + '\n');
}

// Describes a message without flooding stdout: length and SHA-1 always, the content
// itself only when small.
function describe(data, isBinary) {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const out = {
    binary: !!isBinary,
    len: buf.length,
    sha1: crypto.createHash('sha1').update(buf).digest('hex'),
  };
  if (buf.length <= 4096) {
    if (isBinary) out.b64 = buf.toString('base64');
    else out.data = buf.toString('utf8');
  }
  return out;
}

// `onClose` runs when stdin closes (default: exit).
function onCommands(handler, onClose) {
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      emit('error', { message: `bad command: ${line}` });
      return;
    }
    try {
      handler(cmd);
    } catch (e) {
      emit('error', { message: String(e && e.message ? e.message : e) });
    }
  });
  // The test holds our stdin; when it goes away, so do we.
  rl.on('close', () => (onClose ? onClose() : process.exit(0)));
}

// `--key value`, repeated keys collect into arrays; bare `--flag` is true.
function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) {
      args._.push(a);
      continue;
    }
    const key = a.slice(2);
    const next = argv[i + 1];
    const value = next === undefined || next.startsWith('--') ? true : (i++, next);
    if (args[key] === undefined) args[key] = value;
    else args[key] = [].concat(args[key], value);
  }
  return args;
}

function list(v) {
  if (v === undefined || v === true) return [];
  return [].concat(v);
}

module.exports = { emit, describe, onCommands, parseArgs, list };
