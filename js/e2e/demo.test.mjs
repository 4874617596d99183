// Browser test of the todo page that `sidecar dev` serves. tests/demo_test.go
// runs it with `node --test` and these variables:
//
//   DEMO_URL          the page, for example http://127.0.0.1:7070/
//   DEMO_CONTROL_URL  the Go test's control server: POST /sql runs its body
//                     as SQL, POST /stop and POST /start stop and start the
//                     sidecar on the same address
//   DEMO_CHROMIUM     the Chromium binary (default /usr/bin/chromium)
//   DEMO_SCREENSHOT   where to save a screenshot of the page, if set
//
// The tests run in order and share two pages of one headless browser.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const pageURL = requireEnv('DEMO_URL');
const controlURL = requireEnv('DEMO_CONTROL_URL');
const chromiumPath = process.env.DEMO_CHROMIUM || '/usr/bin/chromium';

// Generous, because the machines that run the tests are shared and the
// client's reconnect backoff grows to 10 s while the sidecar is down.
const WAIT_MS = 30000;

let browser;
/** @type {import('playwright-core').Page[]} */
let pages = [];

function requireEnv(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this script through go test ./tests/ -run Demo`);
  return value;
}

/** Sends a request to the Go test's control server and fails on a non-2xx status. */
async function control(path, body) {
  const res = await fetch(controlURL + path, { method: 'POST', body });
  if (!res.ok) throw new Error(`POST ${path} failed with HTTP ${res.status}: ${await res.text()}`);
}

function badge(page) {
  return page.locator('#state');
}

function item(page, title) {
  return page.locator('#todos li[data-id]', { hasText: title });
}

async function waitForState(page, state) {
  await page.locator(`#state[data-state="${state}"]`).waitFor({ timeout: WAIT_MS });
}

before(async () => {
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // Chromium's sandbox does not start as root, which CI runs as.
    args: ['--no-sandbox'],
  });
  for (const name of ['A', 'B']) {
    const context = await browser.newContext({ viewport: { width: 720, height: 640 } });
    const page = await context.newPage();
    page.on('pageerror', (err) => console.error(`page ${name}: uncaught ${err.message}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error') console.error(`page ${name}: console: ${msg.text()}`);
    });
    await page.goto(pageURL);
    pages.push(page);
  }
});

after(async () => {
  await browser?.close();
});

test('both pages connect and load the list', async () => {
  for (const page of pages) {
    await waitForState(page, 'open');
    await page.locator('#todos[data-loaded="true"]').waitFor({ state: 'attached', timeout: WAIT_MS });
    assert.equal(await badge(page).textContent(), 'open');
  }
});

test('a row inserted with SQL shows in both pages', async () => {
  await control('/sql', "INSERT INTO todos (title) VALUES ('inserted with psql')");

  for (const page of pages) {
    await item(page, 'inserted with psql').waitFor({ timeout: WAIT_MS });
  }
});

test('an item added in one page shows in the other', async () => {
  const [a, b] = pages;
  await a.fill('#title', 'added in page A');
  await a.click('#add button[type="submit"]');

  await item(b, 'added in page A').waitFor({ timeout: WAIT_MS });
  await item(a, 'added in page A').waitFor({ timeout: WAIT_MS });
  // The page clears the input when the call returns, which may come after
  // the row's event.
  await a.waitForFunction(() => document.getElementById('title').value === '', null, { timeout: WAIT_MS });
});

test('ticking an item in one page ticks it in the other', async () => {
  const [a, b] = pages;
  await item(b, 'added in page A').locator('input[type="checkbox"]').check();

  const inA = item(a, 'added in page A');
  await a.locator('#todos li[data-done="true"]', { hasText: 'added in page A' }).waitFor({ timeout: WAIT_MS });
  assert.equal(await inA.locator('input[type="checkbox"]').isChecked(), true);
});

test('a row inserted while the sidecar is down shows after its restart', async () => {
  await control('/stop');
  for (const page of pages) await waitForState(page, 'reconnecting');

  await control('/sql', "INSERT INTO todos (title) VALUES ('inserted while the sidecar was down')");
  await control('/start');

  for (const page of pages) {
    await waitForState(page, 'open');
    await item(page, 'inserted while the sidecar was down').waitFor({ timeout: WAIT_MS });
  }
  for (const page of pages) {
    const titles = await page.locator('#todos li .title').allTextContents();
    assert.deepEqual(titles, ['inserted with psql', 'added in page A', 'inserted while the sidecar was down']);
  }
});

test('a page whose resume point expired reloads the list', async () => {
  await control('/stop');
  for (const page of pages) await waitForState(page, 'reconnecting');

  // Retention marks every event so far as possibly deleted, so the pages
  // cannot resume and must read the list again.
  await control('/sql', `
    INSERT INTO todos (title) VALUES ('inserted before the history expired');
    UPDATE realtime.settings SET purged_through = (SELECT max(last_id) FROM realtime.transactions);`);
  await control('/start');

  for (const page of pages) {
    await waitForState(page, 'open');
    await item(page, 'inserted before the history expired').waitFor({ timeout: WAIT_MS });
  }
});

test('the page stays in sync after the restart', async () => {
  const [a, b] = pages;
  await b.fill('#title', 'added in page B after the restart');
  await b.press('#title', 'Enter');

  await item(a, 'added in page B after the restart').waitFor({ timeout: WAIT_MS });

  if (process.env.DEMO_SCREENSHOT) {
    // 'disabled' runs the highlight of the new item to its end state.
    await a.screenshot({ path: process.env.DEMO_SCREENSHOT, animations: 'disabled' });
  }
});
