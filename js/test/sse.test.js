// Tests of the SSE mode (GET /v1/events) against a real sidecar.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Collector, TEST_TIMEOUT_MS, control, newClient, newSSEClient, once, publishSQL, signToken, sql, uniqueTopic,
} from './helpers.js';

const opts = { timeout: TEST_TIMEOUT_MS };

/**
 * Returns the newest durable id, read from a websocket subscription's
 * head. An SSE stream opened with since set to it misses nothing that is
 * published after this returns, even if the stream's subscription is made
 * after the publish.
 */
async function currentHead(t) {
  const client = newClient(t);
  const confirmed = once(client, 'subscribed');
  client.subscribe(uniqueTopic('head'), () => {});
  const { head } = await confirmed;
  client.close();
  return head;
}

test('sse subscribe receives events', opts, async (t) => {
  const since = await currentHead(t);
  const client = newSSEClient(t);
  const topic = uniqueTopic('sse');
  const events = new Collector();

  client.subscribe(topic, events.push, { since });
  await publishSQL(topic, { n: 1 });
  await publishSQL(topic, { n: 2 });
  await events.count(2);

  assert.deepEqual(events.items.map((e) => e.data), [{ n: 1 }, { n: 2 }]);
  assert.equal(events.items[0].topic, topic);
  assert.ok(events.items[0].id < events.items[1].id);
});

test('sse mode rejects publish and call', opts, async (t) => {
  const client = newSSEClient(t);

  await client.ready();
  await assert.rejects(client.publish('x', 1), (err) => err.code === 'unavailable');
  await assert.rejects(client.call('app.add', [1, 2]), (err) => err.code === 'unavailable');
});

test('sse resumes after a sidecar restart without loss or repeats', opts, async (t) => {
  const since = await currentHead(t);
  const client = newSSEClient(t);
  const topic = uniqueTopic('sse-resume');
  const events = new Collector();
  const states = new Collector();
  client.on('state', states.push);

  client.subscribe(topic, events.push, { since });
  await publishSQL(topic, { n: 1 });
  await events.count(1);

  await control('/stop');
  await publishSQL(topic, { n: 2 });
  await publishSQL(topic, { n: 3 });
  await control('/start');
  await events.count(3, 30000);
  await publishSQL(topic, { n: 4 });
  await events.count(4);

  assert.deepEqual(events.items.map((e) => e.data.n), [1, 2, 3, 4]);
  const ids = events.items.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, 'no id is repeated');
  assert.ok(states.items.some((s) => s.state === 'reconnecting'), `a reconnect was reported: ${JSON.stringify(states.items)}`);
});

test('sse reopened after token expiry sends Last-Event-ID and resumes', opts, async (t) => {
  const since = await currentHead(t);
  const topic = uniqueTopic('sse-header');
  const headers = new Collector();
  let tokens = 0;
  const client = newSSEClient(t, {
    // The first token expires within seconds, so the sidecar ends the
    // stream with 1008. Before the second token is handed out, an event is
    // published, so only a resume can deliver it.
    token: async () => {
      tokens++;
      if (tokens === 1) return signToken('sse-expiring', { subscribe: ['>'] }, 2);
      await publishSQL(topic, { n: 2 });
      return signToken('sse-expiring', { subscribe: ['>'] });
    },
    eventSourceInit: (h) => {
      headers.push(h);
      return {
        fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...h } }),
      };
    },
  });
  const events = new Collector();
  const states = new Collector();
  client.on('state', states.push);

  client.subscribe(topic, events.push, { since });
  await publishSQL(topic, { n: 1 });
  await events.count(1);
  await states.until('the stream ended with 1008', (s) => s.some((x) => x.code === 1008));
  await events.count(2);
  await publishSQL(topic, { n: 3 });
  await events.count(3);

  assert.deepEqual(events.items.map((e) => e.data.n), [1, 2, 3]);
  assert.deepEqual(headers.items[0], {}, 'the first request has no resume header');
  assert.match(headers.items[1]['Last-Event-ID'] ?? '', new RegExp(`^[^:]+:${events.items[0].id}$`), 'the reopened stream resumes after the last event');
});

test('sse history expired emits reload and reopens without since', opts, async (t) => {
  const client = newSSEClient(t);
  const topic = uniqueTopic('sse-reload');
  const reloads = new Collector();
  const events = new Collector();
  client.on('reload', reloads.push);
  await publishSQL(topic, { n: 1 });
  await sql("SELECT realtime.purge(now() + interval '1 day', 100000)");

  client.subscribe(topic, events.push, { since: 1 });
  await reloads.count(1);
  const reopened = await once(client, 'subscribed');

  assert.deepEqual(reloads.items[0].patterns, [topic]);
  assert.equal(reopened.since, undefined);
});

test('sse token goes in the access_token parameter', opts, async (t) => {
  const client = newSSEClient(t, { token: signToken('sse-narrow', { subscribe: ['mine.>'] }) });
  const errors = new Collector();
  client.on('error', errors.push);

  client.subscribe('theirs.x', () => {});
  await errors.count(1);
  assert.equal(errors.items[0].code, 403);

  const allowed = new Collector();
  client.subscribe('mine.x', () => {});
  client.on('subscribed', allowed.push);
  await allowed.count(1);
  assert.deepEqual(allowed.items[0].patterns, ['mine.x']);
});
