'use strict';
// Drives headless Chromium over the DevTools protocol on a pipe
// (--remote-debugging-pipe: Chromium exits when this program does, even when it is
// killed): opens PAGE_URL, evaluates SCRIPT there (an expression whose promise
// resolves to a JSON value) and prints {"event": "result", "value": ...} as one JSON
// line.
//
//   node browser.js CHROMIUM PAGE_URL SCRIPT [--hold] [CHROMIUM_FLAG...]
//
// --hold keeps the page (and its connections) open after the result until stdin
// closes, so a test can look at wsgate meanwhile; each stdin line
// {"op": "eval", "expression": E} evaluates E in the same page and prints its
// result the same way (e.g. a promise of close events the first script set up).
// Other arguments are Chromium flags, e.g. --host-resolver-rules=... or
// --ignore-certificate-errors-spki-list=...
//
// Used by tests/auth.rs (a page's `new WebSocket(url, protocols)` cannot set
// headers, so tokens travel in the subprotocol list or a cookie, as in real
// browsers) and tests/browser_h2.rs (WebSockets over HTTP/2).
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { emit, onCommands } = require('./lib');

const [chromium, pageUrl, script, ...rest] = process.argv.slice(2);
const hold = rest.includes('--hold');
const flags = rest.filter((a) => a !== '--hold');
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-chromium-'));
const browser = spawn(chromium, [
  '--headless=new',
  '--remote-debugging-pipe',
  `--user-data-dir=${profile}`,
  // Tests run as root in CI; Chromium's sandbox refuses root.
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--no-default-browser-check',
  ...flags,
  'about:blank',
], { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
let stderr = '';
browser.stderr.on('data', (d) => { stderr += d; });

function finish(code) {
  browser.kill('SIGKILL');
  try { fs.rmSync(profile, { recursive: true, force: true }); } catch (_) { /* best effort */ }
  process.exit(code);
}
const timer = setTimeout(() => { emit('error', { message: 'timed out', stderr: stderr.slice(-2000) }); finish(1); }, 40000);

// The pipe carries JSON messages, each ended by a NUL byte: commands on fd 3,
// answers and events on fd 4.
let next = 1;
const pending = new Map();
let buffered = '';
browser.stdio[4].on('data', (d) => {
  buffered += d.toString('utf8');
  let end;
  while ((end = buffered.indexOf('\0')) >= 0) {
    const m = JSON.parse(buffered.slice(0, end));
    buffered = buffered.slice(end + 1);
    if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
  }
});
browser.on('exit', (code) => { emit('error', { message: `chromium exited (${code})`, stderr: stderr.slice(-2000) }); finish(1); });
const call = (method, params, sessionId) => new Promise((resolve) => {
  const id = next++;
  pending.set(id, resolve);
  browser.stdio[3].write(JSON.stringify({ id, method, params, sessionId }) + '\0');
});

async function main() {
  const created = await call('Target.createTarget', { url: 'about:blank' });
  if (created.error) throw new Error(JSON.stringify(created.error));
  const attached = await call('Target.attachToTarget', { targetId: created.result.targetId, flatten: true });
  const session = attached.result.sessionId;
  const page = (method, params) => call(method, params, session);
  await page('Page.enable', {});
  await page('Page.navigate', { url: pageUrl });
  for (let i = 0; i < 100; i++) {
    const r = await page('Runtime.evaluate', { expression: 'location.href + " " + document.readyState', returnByValue: true });
    if (r.result && r.result.result.value === `${pageUrl} complete`) break;
    await new Promise((r2) => setTimeout(r2, 100));
  }
  const evaluate = async (expression) => {
    const r = await page('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true });
    if (r.error || r.result.exceptionDetails) {
      emit('error', { message: JSON.stringify(r.error || r.result.exceptionDetails) });
      finish(1);
    }
    emit('result', { value: r.result.result.value });
  };
  await evaluate(script);
  if (!hold) finish(0);
  clearTimeout(timer);
  // Commands run one at a time, in order; stdin's end closes the browser.
  let queue = Promise.resolve();
  onCommands((cmd) => {
    if (cmd.op === 'eval') queue = queue.then(() => evaluate(cmd.expression));
    else emit('error', { message: `unknown command ${JSON.stringify(cmd)}` });
  }, () => finish(0));
}

main().catch((e) => { emit('error', { message: String(e) }); finish(1); });
