// Browser tests of the built-in UI, against `ieum demo` in headless Chromium.
//
// Each test answers, from the rendered pages only, one question an operator asks:
// how long has each instance of `orders` been up; what happened to `stock` in the last
// minutes (one of its instances is killed with SIGKILL during the test); which breakers are
// blocked; what changed in the last configuration apply; who publishes and who consumes
// each topic (orders → shipping through the server-hosted `memory` PubSub, as the real
// sidecars report it); which APIs the gateway publishes, and who may call them. Screenshots of every page go to docs/screenshots/
// (IEUM_SCREENSHOTS overrides).
//
// Run: IEUM_BIN=target/debug/ieum node --test tests/ui/demo.test.mjs
// (needs /usr/bin/chromium and playwright-core; .ci/run installs both).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const root = path.resolve(import.meta.dirname, '../..');
const bin = process.env.IEUM_BIN ?? path.join(root, 'target/debug/ieum');
const shots = process.env.IEUM_SCREENSHOTS ?? path.join(root, 'docs/screenshots');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

let demo, output = '', base, browser, page, dataDir;
const pageErrors = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (which may reload the page) until it returns a truthy value. */
async function eventually(what, check, { timeoutMs = 30_000, everyMs = 1_000 } = {}) {
  const until = Date.now() + timeoutMs;
  let last;
  while (Date.now() < until) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await sleep(everyMs);
  }
  assert.fail(`gave up after ${timeoutMs / 1000} s waiting for ${what}${last ? `: ${last}` : ''}`);
}

async function shot(name) {
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

async function open(p) {
  const resp = await page.goto(base + p, { waitUntil: 'domcontentloaded' });
  assert.equal(resp.status(), 200, `GET ${p} answered ${resp.status()}`);
}

before(async () => {
  const port = await freePort();
  dataDir = mkdtempSync(path.join(tmpdir(), 'ieum-ui-test-'));
  demo = spawn(bin, ['demo', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--rate', '8'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  demo.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((r) => demo.once('exit', r));
  const ready = (async () => {
    while (!output.includes('Ctrl-C stops everything')) await sleep(100);
  })();
  const outcome = await Promise.race([
    ready.then(() => 'ready'),
    exited.then((code) => `exited with ${code}`),
    sleep(120_000).then(() => 'timed out'),
  ]);
  assert.equal(outcome, 'ready', `ieum demo did not start:\n${output}`);
  const m = output.match(/UI\s+(http:\/\/\S+)\/ui/);
  assert.ok(m, `the demo's banner names the UI:\n${output}`);
  base = m[1];
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
  page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
});

after(async () => {
  await browser?.close();
  if (demo && demo.exitCode === null) {
    const exited = new Promise((r) => demo.once('exit', (code, signal) => r({ code, signal })));
    demo.kill('SIGTERM');
    const end = await Promise.race([exited, sleep(40_000).then(() => null)]);
    if (!end) demo.kill('SIGKILL');
    // Ctrl-C (here SIGTERM) stops every instance, then the server, and exits 0.
    assert.deepEqual(end, { code: 0, signal: null }, `the demo did not stop cleanly:\n${output.slice(-2000)}`);
    assert.match(output, /\nstopped\n/);
  }
  rmSync(dataDir, { recursive: true, force: true });
});

test('the services page lists the shop, each service linking to its page', async () => {
  await open('/ui');
  for (const name of ['frontend', 'orders', 'stock', 'payments', 'shopper']) {
    await eventually(`a link to ${name}`, async () =>
      (await page.locator(`a[href="/ui/services/${name}"]`).count()) > 0);
  }
  // Golden signals arrive with the sidecars' reports (every 5 s in the demo).
  await eventually('requests per second of orders on the services page', async () => {
    await open('/ui');
    const headers = await page.locator('table[data-testid="services"] thead th').allInnerTexts();
    const col = headers.findIndex((h) => h.trim() === 'req/s');
    assert.ok(col >= 0, `a req/s column among ${headers}`);
    const cell = await page.locator('tr[data-service="orders"] > td').nth(col).innerText();
    return Number.parseFloat(cell) > 0;
  });
  await shot('services');
});

test('each instance of orders shows how long it has been up', async () => {
  await open('/ui/services/orders');
  const rows = page.locator('[data-testid="instance-row"]');
  assert.equal(await rows.count(), 2, 'orders runs two instances');
  for (let i = 0; i < 2; i++) {
    const uptime = (await rows.nth(i).locator('[data-testid="uptime"]').innerText()).trim();
    assert.match(uptime, /^\d+(s|m|h|d)( \d+(s|m|h))?$/, `instance ${i} uptime reads "${uptime}"`);
  }
  const text = await page.locator('body').innerText();
  assert.match(text, /zone-a/);
  assert.match(text, /zone-b/);
  assert.match(text, /POST\s+\/orders/, 'the OpenAPI operations are rendered');
  await shot('service');
});

test('who publishes and who consumes orders.placed: the Topics page, from the sidecars\' reports', async () => {
  // orders publishes orders.placed for each order through its sidecar to shop-events (a
  // memory PubSub the server hosts); shipping's sidecar delivers it to /events/order-placed.
  // Both report every 5 s; nothing here is fed by a test hook.
  const topic = 'tr[data-testid="topic"][data-pubsub="shop-events"][data-topic="orders.placed"]';
  await eventually('orders.placed listed with orders publishing and shipping consuming', async () => {
    await open('/ui/topics');
    const row = page.locator(topic);
    if ((await row.count()) !== 1) return false;
    const cells = await row.locator('td').allInnerTexts();
    return /\borders\b/.test(cells[1]) && /\bshipping\b/.test(cells[2]);
  }, { timeoutMs: 60_000, everyMs: 2_000 });
  await shot('topics');
  await page.locator(`${topic} a[href*="orders.placed"]`).first().click();
  await page.waitForURL(/\/ui\/topics\/shop-events\/orders\.placed$/);
  const count = async (row, cell) => {
    const text = await page.locator(`${row} [data-testid="${cell}"]`).innerText();
    return Number.parseInt(text.replace(/\D/g, ''), 10) || 0;
  };
  const consumer = 'tr[data-testid="consumer"][data-service="shipping"]';
  const publisher = 'tr[data-testid="publisher"][data-service="orders"]';
  // Shipping answers RETRY to about one first delivery in eight: retries show too.
  await eventually('events published by orders, delivered to and retried by shipping', async () => {
    await open('/ui/topics/shop-events/orders.placed');
    if ((await page.locator(consumer).count()) !== 1 || (await page.locator(publisher).count()) !== 1) {
      return false;
    }
    return (await count(publisher, 'published')) > 0 && (await count(consumer, 'delivered')) > 0
      && (await count(consumer, 'retried')) > 0;
  }, { timeoutMs: 60_000, everyMs: 2_000 });
  assert.equal(await count(consumer, 'dead-lettered'), 0, 'a retried event succeeds on its second try');
  await shot('topic');
});

test('what changed in the last configuration apply: its diff and author', async () => {
  // The demo applies one change 20 s after start: payments' backend timeout 500ms → 800ms.
  await eventually('the diff of the demo\'s change', async () => {
    await open('/ui/config');
    const rows = await page.locator('[data-testid="diff"]').allInnerTexts();
    return rows.some((r) => r.includes('backendRequest') && r.includes('500ms') && r.includes('800ms'));
  }, { timeoutMs: 60_000 });
  assert.match(await page.locator('body').innerText(), /local/, 'the author is shown');
  await shot('config');
});

test('what happened to stock: a killed instance leaves a live down event with its exit code', async () => {
  await open('/ui/services/stock');
  await sleep(1_000); // the live stream connects
  const before = await page.locator('[data-testid="event"]').count();
  // The app process (not its sidecar): `…/ieum demo-app stock --port N`.
  const pids = execFileSync('pgrep', ['-f', '^[^ ]* demo-app stock '], { encoding: 'utf8' })
    .trim().split('\n').filter(Boolean);
  assert.ok(pids.length >= 1, 'a stock app process runs');
  process.kill(Number(pids[0]), 'SIGKILL');
  // No reload: the timeline updates over the event stream.
  const down = await eventually('a down event with exit code 137 on the stock timeline', async () => {
    const events = await page.locator('[data-testid="event"]').allInnerTexts();
    return events.length > before && events.find((e) => /down/.test(e) && /137/.test(e));
  }, { timeoutMs: 30_000, everyMs: 500 });
  assert.match(down, /down/);
  await shot('timeline');
});

test('which breakers are blocked: an open breaker during the payments outage', async () => {
  // Payments' provider fails for 20 s starting 40 s after the demo starts; orders' sidecars
  // open their breakers to it.
  const where = await eventually('an open breaker on the orders or payments page', async () => {
    for (const p of ['/ui/services/orders', '/ui/services/payments', '/ui']) {
      await open(p);
      const rows = await page.locator('[data-testid="breaker"]').allInnerTexts();
      if (rows.some((r) => /\b(open|blocked)\b/i.test(r) && /payments/.test(r))) return p;
    }
    return null;
  }, { timeoutMs: 150_000, everyMs: 2_000 });
  assert.ok(where);
  await shot('breakers');
});

test('the checkout saga: executions by state, and a compensated one in reverse order', async () => {
  // Shipping finds no courier for about one order in seven: that execution compensates the
  // charge, then the reservation. (A payments outage can also fail the charge step; such
  // executions compensate only the reservation and are passed over here.)
  const found = await eventually('a checkout compensated after shipping answered 409', async () => {
    await open('/ui/sagas?saga=checkout&state=compensated');
    const links = await page.locator('#executions a[href^="/ui/sagas/executions/"]')
      .evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    for (const href of links.slice(0, 20)) {
      await open(href);
      const text = await page.locator('main').innerText();
      if (/action ship[\s\S]*answered 409/.test(text)) return { href, text };
    }
    return null;
  }, { timeoutMs: 150_000, everyMs: 3_000 });
  const { text } = found;
  assert.match(text, /compensated/);
  // Compensations run charge before reserve (reverse order of the completed steps).
  const refund = text.indexOf('/refund');
  const release = text.indexOf('/release');
  assert.ok(refund >= 0 && release >= 0, 'both compensations are on the timeline');
  assert.ok(refund < release, 'the charge is refunded before the stock is released');
  await shot('saga');
  await open('/ui/sagas');
  assert.match(await page.locator('#sagas').innerText(), /checkout/);
  await shot('sagas');
});

test('topology and events pages render the shop', async () => {
  await open('/ui/topology');
  const topo = await page.locator('body').innerText();
  for (const name of ['shopper', 'frontend', 'orders', 'stock', 'payments']) {
    assert.ok(topo.includes(name), `topology shows ${name}`);
  }
  await shot('topology');
  await open('/ui/events');
  assert.ok((await page.locator('[data-testid="event"]').count()) > 5, 'events are listed');
  await shot('events');
  const missing = await page.goto(`${base}/ui/services/no-such-service`);
  assert.equal(missing.status(), 404);
  assert.match(await page.locator('body').innerText(), /no-such-service/);
});

test('the API catalogue: shop-public, its operation under /shop and its consumer', async () => {
  // The demo applies the Api shop-public (orders' GET /orders/{id} under /shop) and the
  // ApiConsumer newcomer, whose key the banner prints.
  const row = 'tr[data-testid="api-row"][data-api="shop-public"]';
  await eventually('shop-public in the API catalogue', async () => {
    await open('/ui/apis');
    return (await page.locator(row).count()) === 1;
  });
  const cells = await page.locator(row).innerText();
  assert.match(cells, /\/shop\b/, 'its base path');
  assert.match(cells, /\borders\b/, 'its backend');
  assert.match(cells, /\bnewcomer\b/, 'its consumer');
  await shot('apis');
  await open('/ui/apis?q=no-such-api');
  assert.equal(await page.locator(row).count(), 0, 'the search hides what does not match');
  await open('/ui/apis?q=order');
  await page.locator(`${row} a[href="/ui/apis/shop-public"]`).click();
  await page.waitForURL(/\/ui\/apis\/shop-public$/);
  const operations = await page.locator('[data-testid="operation"]').allInnerTexts();
  assert.ok(operations.some((o) => /GET\s+\/shop\/orders\/\{id\}/.test(o)),
    `GET /shop/orders/{id} among the operations: ${operations}`);
  assert.ok(operations.some((o) => /curl .*x-api-key.*\/shop\/orders\/\{id\}/.test(o)), 'a curl line to try it');
  const consumers = await page.locator('[data-testid="consumer"]').allInnerTexts();
  assert.ok(consumers.some((c) => /\bnewcomer\b/.test(c)), `newcomer among the consumers: ${consumers}`);
  await shot('api');
});

test('pages ran their scripts without errors', () => {
  assert.deepEqual(pageErrors, []);
});
