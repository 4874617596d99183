// Tests of the websocket mode against a real sidecar.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  Collector, TEST_TIMEOUT_MS, control, fullToken, newClient, once, publishSQL, signToken, sql, uniqueTopic,
} from './helpers.js';

const opts = { timeout: TEST_TIMEOUT_MS };

/** Subscribes and resolves once the sidecar confirmed the subscription. */
async function subscribed(client, patterns, handler, options) {
  const confirmed = once(client, 'subscribed');
  const unsubscribe = client.subscribe(patterns, handler, options);
  const result = await confirmed;
  return { unsubscribe, result };
}

test('subscribe receives events published with SQL and with publish', opts, async (t) => {
  const client = newClient(t);
  const topic = uniqueTopic('recv');
  const events = new Collector();

  const { result } = await subscribed(client, topic, events.push);
  assert.equal(typeof result.head, 'number');
  assert.equal(typeof result.epoch, 'string');

  await publishSQL(topic, { n: 1 });
  const published = await client.publish(topic, { n: 2 });
  await events.count(2);

  assert.deepEqual(events.items.map((e) => e.data), [{ n: 1 }, { n: 2 }]);
  assert.deepEqual(events.items.map((e) => e.topic), [topic, topic]);
  assert.equal(events.items[1].id, published.id);
  assert.ok(events.items[0].id < events.items[1].id, 'ids increase');
  assert.equal(typeof events.items[0].ts, 'string');
  assert.equal(events.items[0].subscription, undefined, 'the subscription id is not part of the event');
});

test('subscribe before open is sent once the connection opens', opts, async (t) => {
  const client = newClient(t);
  const topic = uniqueTopic('queued');
  const events = new Collector();
  const confirmed = once(client, 'subscribed');

  client.subscribe([topic], events.push);
  assert.notEqual(client.state, 'open', 'the subscription was made before the welcome');
  await confirmed;
  await client.publish(topic, 'hello');
  await events.count(1);

  assert.equal(events.items[0].data, 'hello');
});

test('welcome gives the client id and the state turns open', opts, async (t) => {
  const client = newClient(t);
  const states = new Collector();
  client.on('state', states.push);
  const welcome = once(client, 'welcome');

  await client.ready();
  const w = await welcome;

  assert.match(w.client_id, /^[A-Za-z0-9_-]+$/);
  assert.equal(client.clientId, w.client_id);
  assert.deepEqual(states.items.map((s) => s.state), ['connecting', 'open']);
});

test('token in the query parameter authenticates', opts, async (t) => {
  const client = newClient(t, { tokenIn: 'query', token: signToken('query-user', { publish: ['q.>'] }) });
  await client.ready();

  const ok = await client.publish('q.allowed', 1, { durable: false });
  assert.deepEqual(ok, {});
  await assert.rejects(client.publish('other.topic', 1), (err) => err.code === -32003);
});

test('token function is called on connect and auth message authenticates', opts, async (t) => {
  let calls = 0;
  const client = newClient(t, {
    token: async () => {
      calls++;
      return signToken('fn-user', { publish: ['fn.>'] });
    },
  });
  await client.ready();

  assert.equal(calls, 1);
  const result = await client.publish('fn.x', { a: 1 });
  assert.equal(typeof result.id, 'number');
  await assert.rejects(client.publish('nope.x', 1), (err) => err.code === -32003);
});

test('without a token, requests that need one fail with -32001', opts, async (t) => {
  const client = newClient(t, { token: undefined });
  await client.ready();

  await assert.rejects(client.publish('anon.x', 1), (err) => err.code === -32001);
});

test('publish durable returns an id and ephemeral returns an empty object', opts, async (t) => {
  const client = newClient(t);
  const topic = uniqueTopic('pub');
  const events = new Collector();
  await subscribed(client, topic, events.push);

  const durable = await client.publish(topic, { d: true });
  const ephemeral = await client.publish(topic, { d: false }, { durable: false });
  await events.count(2);

  assert.equal(typeof durable.id, 'number');
  assert.deepEqual(ephemeral, {});
  assert.equal(events.items[1].id, undefined, 'ephemeral events have no id');
  await assert.rejects(client.publish('bad topic', 1), (err) => err.code === -32602);
});

test('call reaches the application and JSON-RPC errors keep their code', opts, async (t) => {
  const client = newClient(t);

  assert.equal(await client.call('app.add', [2, 3]), 5);
  assert.equal(await client.call('app.whoami'), 'js-tester');
  await assert.rejects(client.call('app.add', [1]), (err) => err.code === -32602 && /two integers/.test(err.message));
  await assert.rejects(client.call('app.missing', {}), (err) => err.code === -32601);
});

test('call that the token does not allow is forbidden', opts, async (t) => {
  const client = newClient(t, { token: signToken('no-calls', { subscribe: ['>'] }) });

  await assert.rejects(client.call('app.add', [1, 1]), (err) => err.code === -32003);
});

test('expose answers calls from the application', opts, async (t) => {
  const client = newClient(t);
  client.expose('greet', async (params) => `hello ${params.name}`);
  client.expose('fail', () => {
    const err = new Error('not today');
    err.code = 4242;
    err.data = { retry: false };
    throw err;
  });
  await client.ready();

  const ok = await control('/call', { client_id: client.clientId, method: 'greet', params: { name: 'ada' } });
  assert.equal(ok.status, 200);
  assert.deepEqual(ok.body, { result: 'hello ada' });

  const failed = await control('/call', { client_id: client.clientId, method: 'fail', params: {} });
  assert.equal(failed.status, 502);
  assert.equal(failed.body.error.code, 'client_error');
  assert.equal(failed.body.error.rpc.code, 4242);
  assert.equal(failed.body.error.rpc.message, 'not today');
  assert.deepEqual(failed.body.error.rpc.data, { retry: false });

  const unknown = await control('/call', { client_id: client.clientId, method: 'absent', params: {} });
  assert.equal(unknown.status, 502);
  assert.equal(unknown.body.error.rpc.code, -32601);
});

test('unsubscribe stops delivery', opts, async (t) => {
  const client = newClient(t);
  const topic = uniqueTopic('unsub');
  const stopped = new Collector();
  const kept = new Collector();

  const { unsubscribe } = await subscribed(client, topic, stopped.push);
  await subscribed(client, topic, kept.push);
  await client.publish(topic, 1);
  await kept.count(1);
  await stopped.count(1);

  unsubscribe();
  await client.publish(topic, 2);
  await kept.count(2);
  // The event that reached the kept subscription was sent after the
  // unsubscribe on the same connection, so the other one would have it by now.
  assert.equal(stopped.items.length, 1);
});

test('resume after a sidecar restart loses and repeats nothing', opts, async (t) => {
  const client = newClient(t);
  const topic = uniqueTopic('resume');
  const events = new Collector();
  const states = new Collector();
  client.on('state', states.push);
  await subscribed(client, topic, events.push);

  for (let n = 1; n <= 3; n++) await publishSQL(topic, { n });
  await events.count(3);

  await control('/stop');
  for (let n = 4; n <= 6; n++) await publishSQL(topic, { n });
  await control('/start');
  await events.count(6);
  await client.publish(topic, { n: 7 });
  await events.count(7);

  assert.deepEqual(events.items.map((e) => e.data.n), [1, 2, 3, 4, 5, 6, 7]);
  const ids = events.items.map((e) => e.id);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'ids are in order');
  assert.equal(new Set(ids).size, ids.length, 'no id is repeated');
  assert.ok(states.items.some((s) => s.state === 'reconnecting' && s.code === 1012), `a 1012 close was reported: ${JSON.stringify(states.items)}`);
  assert.equal(states.items.at(-1).state, 'open');
});

test('resume before any event starts from the head', opts, async (t) => {
  const client = newClient(t);
  const topic = uniqueTopic('head');
  const events = new Collector();
  await subscribed(client, topic, events.push);

  await control('/stop');
  await publishSQL(topic, { n: 1 });
  await control('/start');
  await events.count(1);

  assert.deepEqual(events.items.map((e) => e.data.n), [1]);
});

test('calls in flight reject when the connection closes', opts, async (t) => {
  const client = newClient(t);
  client.expose('block', () => new Promise(() => {}));
  await client.ready();
  const reconnected = new Collector();
  client.on('state', reconnected.push);

  // The application's call to this client blocks; while it is pending,
  // the client's own call to the application is made and the sidecar stops.
  const pending = client.call('app.add', [1, 2]).then(() => 'resolved', (err) => err);
  const stopped = control('/restart');
  const outcome = await pending;
  await stopped;

  // The call may have completed before the stop; if not, it must have
  // failed with a clear error instead of hanging.
  if (outcome !== 'resolved') {
    assert.equal(outcome.code, 'closed');
    assert.match(outcome.message, /connection closed/);
  }
  await reconnected.until('open again', (s) => s.some((x) => x.state === 'open'));
});

test('history expired on resubscribe emits reload and subscribes again', opts, async (t) => {
  const client = newClient(t);
  const topic = uniqueTopic('reload');
  const events = new Collector();
  const reloads = new Collector();
  client.on('reload', reloads.push);
  await subscribed(client, topic, events.push);

  await publishSQL(topic, { n: 1 });
  await events.count(1);

  await control('/stop');
  await publishSQL(topic, { n: 2 });
  await sql("SELECT realtime.purge(now() + interval '1 day', 100000)");
  const resubscribed = new Promise((resolve) => {
    const off = client.on('subscribed', (s) => {
      if (s.since === undefined) {
        off();
        resolve(s);
      }
    });
  });
  await control('/start');
  await reloads.count(1);
  await resubscribed;

  assert.deepEqual(reloads.items[0].patterns, [topic]);
  assert.match(reloads.items[0].message, /history expired|expired/i);

  await client.publish(topic, { n: 3 });
  await events.count(2);
  assert.deepEqual(events.items.map((e) => e.data.n), [1, 3], 'the purged event is not delivered; the next one is');
});

test('subscribe with since older than the retained history emits reload', opts, async (t) => {
  const client = newClient(t);
  const topic = uniqueTopic('since');
  const reloads = new Collector();
  client.on('reload', reloads.push);
  await publishSQL(topic, { n: 1 });
  await sql("SELECT realtime.purge(now() + interval '1 day', 100000)");

  client.subscribe(topic, () => {}, { since: 1 });
  await reloads.count(1);

  assert.deepEqual(reloads.items[0].patterns, [topic]);
});

test('subscribe that the token does not allow emits error', opts, async (t) => {
  const client = newClient(t, { token: signToken('narrow', { subscribe: ['mine.>'] }) });
  const errors = new Collector();
  client.on('error', errors.push);

  client.subscribe('theirs.x', () => {});
  await errors.count(1);

  assert.equal(errors.items[0].code, -32003);
});

test('close rejects ready and stops reconnecting', opts, async (t) => {
  const client = newClient(t, { token: fullToken() });
  await client.ready();
  const states = new Collector();
  client.on('state', states.push);

  client.close();

  assert.equal(client.state, 'closed');
  assert.deepEqual(states.items.map((s) => s.state), ['closed']);
  await assert.rejects(client.ready(), (err) => err.code === 'closed');
  await assert.rejects(client.publish('x', 1), (err) => err.code === 'closed');
});

test('token refresh with auth keeps the connection past the first exp', opts, async (t) => {
  const tokens = new Collector();
  // Each token lives 3 s, and the sidecar runs without leeway, so the
  // connection survives the wait for five tokens only if refreshes work.
  const client = newClient(t, {
    token: () => {
      const token = signToken('short-lived', { publish: ['short.>'] }, 3);
      tokens.push(token);
      return token;
    },
  });
  const states = new Collector();
  client.on('state', states.push);
  await client.ready();

  await tokens.count(5, 30000);
  const published = await client.publish('short.x', 1);

  assert.equal(typeof published.id, 'number');
  assert.deepEqual(states.items.map((s) => s.state), ['connecting', 'open'], 'the connection never closed');
});

test('presence and history through the client', opts, async (t) => {
  const room = uniqueTopic('room');
  const token = (sub) => signToken(sub, { subscribe: ['>'], publish: ['>'], presence: [room] });
  const alice = newClient(t, { token: token('alice') });
  const bob = newClient(t, { token: token('bob') });
  await Promise.all([once(alice, 'welcome'), once(bob, 'welcome')]);

  const joins = new Collector();
  await subscribed(bob, `presence.${room}`, joins.push);
  await alice.joinPresence(room, { color: 'red' });
  await bob.joinPresence(room);
  await joins.count(2);
  assert.deepEqual(joins.items.map((e) => e.data.event), ['join', 'join']);

  const members = await bob.presence(room);
  assert.deepEqual(members.map((m) => m.sub).sort(), ['alice', 'bob']);
  assert.deepEqual(members.find((m) => m.sub === 'alice').info, { color: 'red' });
  assert.deepEqual(await alice.presenceStats(room), { clients: 2, subjects: 2 });
  assert.equal(await alice.leavePresence(room), true);
  assert.equal(await alice.leavePresence(room), false);

  const topic = uniqueTopic('hist');
  for (let i = 0; i < 3; i++) await publishSQL(topic, { n: i });
  const first = await alice.history(topic, { limit: 2 });
  assert.deepEqual(first.events.map((e) => e.data.n), [2, 1]);
  const rest = await alice.history(topic, { limit: 2, before: first.nextBefore });
  assert.deepEqual(rest.events.map((e) => e.data.n), [0]);
  assert.equal(rest.nextBefore, 0);
});

test('presence is joined again after a sidecar restart', opts, async (t) => {
  const room = uniqueTopic('rejoin');
  const client = newClient(t, { token: signToken('rejoiner', { subscribe: ['>'], presence: [room] }) });
  await once(client, 'welcome');
  await client.joinPresence(room, { seat: 1 });

  await control('/stop');
  const welcomed = once(client, 'welcome');
  await control('/start');
  await welcomed;

  let members = [];
  for (let i = 0; i < 100 && members.length === 0; i++) {
    members = await client.presence(room);
    if (members.length === 0) await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(members.map((m) => [m.client_id, m.info]), [[client.clientId, { seat: 1 }]]);

  await assert.rejects(client.history(room, { before: 0 }), /before/);
});
