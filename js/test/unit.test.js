// Tests of the client against a scripted WebSocket, for behaviour that a
// real sidecar cannot be made to show on demand: missed heartbeats,
// frames that arrive together, and the exact resubscribe messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { SidecarClient, deriveSSEUrl, reconnectDelay, refreshDelay } from '../src/index.js';

const WAIT_MS = 5000;

/** A WebSocket whose server side the test plays. */
class FakeWebSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closedWith = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    FakeWebSocket.instances.push(this);
  }

  send(data) {
    this.sent.push(JSON.parse(data));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
  }

  /** Delivers messages from the server, all within one task. */
  deliver(...messages) {
    for (const m of messages) this.onmessage?.({ data: JSON.stringify(m) });
  }

  serverClose(code, reason = '') {
    this.onclose?.({ code, reason });
  }

  /** The last request the client sent with method, or undefined. */
  lastRequest(method) {
    return this.sent.filter((m) => m.method === method).at(-1);
  }

  welcome(extra = {}) {
    this.deliver({ jsonrpc: '2.0', method: 'welcome', params: { client_id: 'c1', epoch: 'e1', heartbeat_s: 25, ...extra } });
  }

  respond(request, result) {
    this.deliver({ jsonrpc: '2.0', id: request.id, result });
  }
}

/** Resolves when cond() holds, polling each macrotask; rejects after WAIT_MS. */
async function until(what, cond) {
  const deadline = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

function newFakeClient(t, options = {}) {
  FakeWebSocket.instances = [];
  const client = new SidecarClient({
    url: 'ws://sidecar.test/v1/ws',
    WebSocket: FakeWebSocket,
    backoff: { initialMs: 1, maxMs: 2 },
    ...options,
  });
  t.after(() => client.close());
  return client;
}

const socket = (n) => FakeWebSocket.instances[n];

test('reconnectDelay stays within the jitter caps', () => {
  const backoff = { initialMs: 100, maxMs: 1000 };
  const cases = [
    { attempt: 0, code: 1006, max: 100 },
    { attempt: 1, code: 1006, max: 200 },
    { attempt: 3, code: 1006, max: 800 },
    { attempt: 20, code: 1006, max: 1000 },
    { attempt: 20, code: 1012, max: 100 },
  ];
  for (const { attempt, code, max } of cases) {
    for (let i = 0; i < 50; i++) {
      const d = reconnectDelay(backoff, attempt, code);
      assert.ok(d >= 0, `reconnectDelay(attempt ${attempt}, code ${code}) = ${d}, want at least 0`);
      assert.ok(d < max, `reconnectDelay(attempt ${attempt}, code ${code}) = ${d}, want below ${max}`);
    }
  }
});

test('deriveSSEUrl maps the websocket URL to the event stream', () => {
  const cases = [
    ['ws://127.0.0.1:7070/v1/ws', 'http://127.0.0.1:7070/v1/events'],
    ['wss://rt.example.com/v1/ws', 'https://rt.example.com/v1/events'],
    ['wss://example.com/realtime/v1/ws', 'https://example.com/realtime/v1/events'],
    ['ws://h/v1/ws?access_token=x', 'http://h/v1/events'],
  ];
  for (const [input, want] of cases) assert.equal(deriveSSEUrl(input), want, `deriveSSEUrl(${input})`);
});

test('auth message carries the token before the state turns open', async (t) => {
  const client = newFakeClient(t, { token: 'tok-1' });
  await until('a websocket', () => socket(0));
  socket(0).welcome();

  const auth = socket(0).lastRequest('auth');
  assert.deepEqual(auth.params, { token: 'tok-1' });
  assert.equal(client.state, 'connecting');
  socket(0).respond(auth, { sub: 'u', exp: Math.floor(Date.now() / 1000) + 3600 });
  await client.ready();
  assert.equal(socket(0).url, 'ws://sidecar.test/v1/ws');
});

test('query token goes in access_token', async (t) => {
  newFakeClient(t, { token: 'tok 2', tokenIn: 'query' });
  await until('a websocket', () => socket(0));

  assert.equal(socket(0).url, 'ws://sidecar.test/v1/ws?access_token=tok+2');
});

test('resubscribe sends since and epoch of the last event', async (t) => {
  const client = newFakeClient(t);
  const events = [];
  client.subscribe(['a.>'], (e) => events.push(e));
  await until('a websocket', () => socket(0));
  socket(0).welcome();
  const first = socket(0).lastRequest('subscribe');
  assert.deepEqual(first.params, { topics: ['a.>'] });

  // The result and a live event arrive in one task.
  socket(0).deliver(
    { jsonrpc: '2.0', id: first.id, result: { subscription: 's1', topics: ['a.>'], epoch: 'e1', head: 5 } },
    { jsonrpc: '2.0', method: 'event', params: { subscription: 's1', topic: 'a.b', data: 1, id: 7, ts: 't' } },
  );
  assert.deepEqual(events, [{ topic: 'a.b', data: 1, id: 7, ts: 't' }]);

  socket(0).serverClose(1012, 'restarting');
  await until('a second websocket', () => socket(1));
  socket(1).welcome();
  assert.deepEqual(socket(1).lastRequest('subscribe').params, { topics: ['a.>'], since: 7, epoch: 'e1' });
});

test('resubscribe without events resumes from the head', async (t) => {
  const client = newFakeClient(t);
  client.subscribe('a', () => {});
  await until('a websocket', () => socket(0));
  socket(0).welcome();
  socket(0).respond(socket(0).lastRequest('subscribe'), { subscription: 's1', topics: ['a'], epoch: 'e1', head: 42 });

  socket(0).serverClose(1006);
  await until('a second websocket', () => socket(1));
  socket(1).welcome();
  assert.deepEqual(socket(1).lastRequest('subscribe').params, { topics: ['a'], since: 42, epoch: 'e1' });
});

test('history expired emits reload and subscribes without since', async (t) => {
  const client = newFakeClient(t);
  const reloads = [];
  client.on('reload', (r) => reloads.push(r));
  client.subscribe('a', () => {}, { since: 3 });
  await until('a websocket', () => socket(0));
  socket(0).welcome();
  const first = socket(0).lastRequest('subscribe');
  assert.deepEqual(first.params, { topics: ['a'], since: 3 });

  socket(0).deliver({ jsonrpc: '2.0', id: first.id, error: { code: -32006, message: 'history expired after 3' } });

  assert.equal(reloads.length, 1);
  assert.deepEqual(reloads[0].patterns, ['a']);
  const second = socket(0).lastRequest('subscribe');
  assert.notEqual(second.id, first.id);
  assert.deepEqual(second.params, { topics: ['a'] });
});

test('missed heartbeat drops the connection and reconnects', async (t) => {
  const client = newFakeClient(t, { heartbeatGraceMs: 20 });
  const states = [];
  client.on('state', (s) => states.push(s));
  await until('a websocket', () => socket(0));
  socket(0).welcome({ heartbeat_s: 0.01 });

  await until('a second websocket', () => socket(1));
  assert.equal(socket(0).closedWith.code, 4000);
  assert.ok(states.some((s) => s.state === 'reconnecting' && s.code === 4000), JSON.stringify(states));
});

test('calls in flight reject when the connection closes', async (t) => {
  const client = newFakeClient(t);
  await until('a websocket', () => socket(0));
  socket(0).welcome();
  await client.ready();

  const pending = client.call('app.slow', {});
  await until('the request', () => socket(0).lastRequest('app.slow'));
  socket(0).serverClose(1012, 'restarting');

  await assert.rejects(pending, (err) => err.code === 'closed' && /code 1012/.test(err.message));
});

test('call rejects with the JSON-RPC code and data', async (t) => {
  const client = newFakeClient(t);
  await until('a websocket', () => socket(0));
  socket(0).welcome();

  const pending = client.call('app.x', [1]);
  await until('the request', () => socket(0).lastRequest('app.x'));
  const req = socket(0).lastRequest('app.x');
  socket(0).deliver({ jsonrpc: '2.0', id: req.id, error: { code: -32005, message: 'application failed', data: { why: 1 } } });

  await assert.rejects(pending, (err) => err.code === -32005 && err.data.why === 1);
});

test('call times out', async (t) => {
  const client = newFakeClient(t);
  await until('a websocket', () => socket(0));
  socket(0).welcome();

  await assert.rejects(client.call('app.never', {}, { timeout: 20 }), (err) => err.code === 'timeout');
});

test('expose answers results and errors', async (t) => {
  const client = newFakeClient(t);
  client.expose('double', (n) => n * 2);
  client.expose('boom', () => {
    throw Object.assign(new Error('no'), { code: 7, data: 'd' });
  });
  await until('a websocket', () => socket(0));
  socket(0).welcome();

  socket(0).deliver(
    { jsonrpc: '2.0', id: 'r1', method: 'double', params: 21 },
    { jsonrpc: '2.0', id: 'r2', method: 'boom' },
    { jsonrpc: '2.0', id: 'r3', method: 'absent' },
  );
  await until('three responses', () => socket(0).sent.filter((m) => m.id?.startsWith?.('r')).length === 3);

  const byId = Object.fromEntries(socket(0).sent.filter((m) => typeof m.id === 'string').map((m) => [m.id, m]));
  assert.equal(byId.r1.result, 42);
  assert.deepEqual(byId.r2.error, { code: 7, message: 'no', data: 'd' });
  assert.equal(byId.r3.error.code, -32601);
});

test('token function refreshes the token before it expires', async (t) => {
  let calls = 0;
  const client = newFakeClient(t, {
    token: () => {
      calls++;
      return `tok-${calls}`;
    },
  });
  await until('a websocket', () => socket(0));
  socket(0).welcome();
  // An exp 2 s away is refreshed at half the remaining time, but at least
  // after 1 s.
  socket(0).respond(socket(0).lastRequest('auth'), { sub: 'u', exp: Math.floor(Date.now() / 1000) + 2 });
  await client.ready();

  await until('a second auth', () => socket(0).lastRequest('auth').params.token === 'tok-2');
  assert.equal(FakeWebSocket.instances.length, 1, 'the refresh keeps the connection');
});

test('rate-limited subscribe is retried and reported once', async (t) => {
  const client = newFakeClient(t);
  const errors = [];
  client.on('error', (e) => errors.push(e));
  client.subscribe('a', () => {});
  await until('a websocket', () => socket(0));
  socket(0).welcome();

  for (let i = 0; i < 2; i++) {
    const req = socket(0).lastRequest('subscribe');
    socket(0).deliver({ jsonrpc: '2.0', id: req.id, error: { code: -32004, message: 'rate limited' } });
    await until('a retry', () => socket(0).lastRequest('subscribe').id !== req.id);
  }
  socket(0).respond(socket(0).lastRequest('subscribe'), { subscription: 's1', topics: ['a'], epoch: 'e1', head: 1 });

  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, -32004);
  assert.equal(socket(0).sent.filter((m) => m.method === 'subscribe').length, 3);
});

test('refreshDelay waits for the margin or half the lifetime, not a second', () => {
  const cases = [
    [3600_000, 3540_000], // an hour: a minute before exp
    [120_000, 60_000], // two minutes: a minute before exp, which is halfway
    [20_000, 10_000], // 20 s: halfway
    [1_500, 1_000], // nearly expired: at least a second
  ];
  for (const [remaining, want] of cases) assert.equal(refreshDelay(remaining), want, `refreshDelay(${remaining})`);
});

test('expose is refused in sse mode', () => {
  const client = new SidecarClient({ url: 'ws://sidecar.test/v1/ws', token: 't', mode: 'sse', EventSource: class {} });
  assert.throws(() => client.expose('m', () => 1), /unavailable in sse mode/);
  client.close();
});
