// Helpers shared by the Node tests. The Go test TestJSClient (tests/
// jsclient_test.go) starts the sidecar and a control server and passes
// their addresses in environment variables.
import { createHmac } from 'node:crypto';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';

import { SidecarClient } from '../src/index.js';

export const env = {
  wsUrl: required('SIDECAR_WS_URL'),
  httpUrl: required('SIDECAR_HTTP_URL'),
  controlUrl: required('SIDECAR_CONTROL_URL'),
  jwtSecret: required('SIDECAR_JWT_SECRET'),
  apiKey: required('SIDECAR_API_KEY'),
};

// WAIT_MS bounds every wait for something that should happen. It is
// generous because the machines that run the tests are shared.
export const WAIT_MS = 20000;

// TEST_TIMEOUT_MS bounds one test, which may wait for a sidecar restart.
export const TEST_TIMEOUT_MS = 90000;

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through go test ./tests/ -run JSClient`);
  }
  return value;
}

/** Signs an HS256 token for sub with the given realtime claim. */
export function signToken(sub, realtime, ttlSeconds = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: 'HS256', typ: 'JWT' };
  const payload = { sub, iat: now, exp: now + ttlSeconds, realtime };
  const encode = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${encode(header)}.${encode(payload)}`;
  const signature = createHmac('sha256', env.jwtSecret).update(input).digest('base64url');
  return `${input}.${signature}`;
}

/** A token that may subscribe and publish anywhere and call every app method. */
export function fullToken(sub = 'js-tester') {
  return signToken(sub, { subscribe: ['>'], publish: ['>'], call: ['app.*'] });
}

/** Posts body to the control server and returns its JSON response. */
export async function control(path, body = {}) {
  const resp = await fetch(env.controlUrl + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60000),
  });
  const text = await resp.text();
  if (!resp.ok) throw new Error(`control ${path}: status ${resp.status}: ${text}`);
  return JSON.parse(text);
}

/** Runs one SQL statement on the sidecar's database. */
export function sql(statement) {
  return control('/sql', { sql: statement });
}

/** Publishes a durable event with SQL. */
export function publishSQL(topic, data) {
  const literal = (s) => `'${s.replace(/'/g, "''")}'`;
  return sql(`SELECT realtime.publish(${literal(topic)}, ${literal(JSON.stringify(data))}::jsonb)`);
}

/** Returns a topic that no other test uses. */
let topicCount = 0;
export function uniqueTopic(prefix) {
  topicCount++;
  return `${prefix}.${process.pid}-${Date.now()}-${topicCount}`;
}

/** Creates a websocket client with the `ws` package, closed by t's cleanup. */
export function newClient(t, options = {}) {
  const client = new SidecarClient({
    url: env.wsUrl,
    token: fullToken(),
    WebSocket,
    backoff: { initialMs: 50, maxMs: 1000 },
    ...options,
  });
  t.after(() => client.close());
  return client;
}

/** Creates an SSE client with the `eventsource` package, closed by t's cleanup. */
export function newSSEClient(t, options = {}) {
  const client = new SidecarClient({
    url: env.wsUrl,
    mode: 'sse',
    token: fullToken(),
    EventSource,
    backoff: { initialMs: 50, maxMs: 1000 },
    ...options,
  });
  t.after(() => client.close());
  return client;
}

/**
 * Collects values (events, state changes) and waits for a condition on them.
 */
export class Collector {
  constructor() {
    this.items = [];
    this.waiters = [];
    this.push = this.push.bind(this);
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) {
      if (w.cond(this.items)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(this.items);
      }
    }
  }

  /** Resolves when cond(items) holds; rejects after WAIT_MS naming what. */
  until(what, cond, ms = WAIT_MS) {
    if (cond(this.items)) return Promise.resolve(this.items);
    return new Promise((resolve, reject) => {
      const w = { cond, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}; got ${JSON.stringify(this.items)}`));
      }, ms);
      this.waiters.push(w);
    });
  }

  /** Resolves when at least n items arrived. */
  count(n, ms) {
    return this.until(`${n} items`, (items) => items.length >= n, ms);
  }
}

/** Resolves with the first value that emitter emits for name, or rejects after ms. */
export function once(client, name, ms = WAIT_MS) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no '${name}' within ${ms} ms`));
    }, ms);
    const off = client.on(name, (value) => {
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}
