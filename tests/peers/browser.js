'use strict';
// Drives headless Chromium over the DevTools protocol (with the `ws` package): opens
// PAGE_URL, evaluates SCRIPT there (an expression whose promise resolves to a JSON
// value) and prints {"event": "result", "value": ...} as one JSON line.
//
//   node browser.js CHROMIUM DEBUG_PORT PAGE_URL SCRIPT
//
// Used by tests/auth.rs: a page's `new WebSocket(url, protocols)` cannot set headers,
// so tokens travel in the subprotocol list or a cookie, as in real browsers.
const { spawn } = require('child_process');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const WebSocket = require('ws');
const { emit } = require('./lib');

const [chromium, port, pageUrl, script] = process.argv.slice(2);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-chromium-'));
const browser = spawn(chromium, [
  '--headless=new',
  `--remote-debugging-port=${port}`,
  '--remote-debugging-address=127.0.0.1',
  `--user-data-dir=${profile}`,
  // Tests run as root in CI; Chromium's sandbox refuses root.
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--no-default-browser-check',
  'about:blank',
], { stdio: ['ignore', 'ignore', 'pipe'] });
let stderr = '';
browser.stderr.on('data', (d) => { stderr += d; });

function finish(code) {
  browser.kill('SIGKILL');
  try { fs.rmSync(profile, { recursive: true, force: true }); } catch (_) { /* best effort */ }
  process.exit(code);
}
setTimeout(() => { emit('error', { message: 'timed out', stderr: stderr.slice(-2000) }); finish(1); }, 40000);

function getJson(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => { try { resolve(JSON.parse(body)); } catch (e) { reject(e); } });
    }).on('error', reject);
  });
}

async function pageTarget() {
  for (let i = 0; i < 200; i++) {
    try {
      const targets = await getJson(`http://127.0.0.1:${port}/json/list`);
      const page = targets.find((t) => t.type === 'page');
      if (page) return page.webSocketDebuggerUrl;
    } catch (_) { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('no page target: ' + stderr.slice(-2000));
}

async function main() {
  const cdp = new WebSocket(await pageTarget());
  await new Promise((r, j) => { cdp.once('open', r); cdp.once('error', j); });
  let next = 1;
  const pending = new Map();
  cdp.on('message', (data) => {
    const m = JSON.parse(data);
    if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
  });
  const call = (method, params) => new Promise((resolve) => {
    const id = next++;
    pending.set(id, resolve);
    cdp.send(JSON.stringify({ id, method, params }));
  });
  await call('Page.enable', {});
  await call('Page.navigate', { url: pageUrl });
  for (let i = 0; i < 100; i++) {
    const r = await call('Runtime.evaluate', { expression: 'location.href + " " + document.readyState', returnByValue: true });
    if (r.result && r.result.result.value === `${pageUrl} complete`) break;
    await new Promise((r2) => setTimeout(r2, 100));
  }
  const r = await call('Runtime.evaluate', { expression: script, awaitPromise: true, returnByValue: true });
  if (r.error || r.result.exceptionDetails) {
    emit('error', { message: JSON.stringify(r.error || r.result.exceptionDetails) });
    finish(1);
  }
  emit('result', { value: r.result.result.value });
  finish(0);
}

main().catch((e) => { emit('error', { message: String(e) }); finish(1); });
