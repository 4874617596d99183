// Client for the sidecar's websocket protocol (JSON-RPC 2.0 over GET /v1/ws)
// and its server-sent events endpoint (GET /v1/events). It runs in current
// browsers and in Node 18 and later. Where the runtime has no WebSocket or
// EventSource, the caller passes a constructor, such as the one of the `ws`
// or `eventsource` package.

/** JSON-RPC code of "history expired": the resume point can no longer be replayed. */
export const HISTORY_EXPIRED = -32006;

// JSON-RPC code of "rate limited", also sent when a connection has too many
// subscriptions or requests in flight.
const RATE_LIMITED = -32004;

/** Close codes that the sidecar sends, as documented in its protocol. */
export const CloseCodes = Object.freeze({
  POLICY: 1008, // authentication timed out or token expired
  TOO_BIG: 1009, // a frame over the read limit
  DRAINING: 1012, // the sidecar is shutting down: reconnect
  TOO_SLOW: 1013, // the client did not read fast enough
});

// Close code the client uses when it drops a connection that sent no frame
// within the heartbeat interval plus the grace period. 4000 to 4999 are
// reserved for applications.
const CLOSE_HEARTBEAT_MISSED = 4000;

const DEFAULT_BACKOFF = { initialMs: 250, maxMs: 10000 };
const DEFAULT_HEARTBEAT_GRACE_MS = 10000;
const DEFAULT_CALL_TIMEOUT_MS = 10000;
// The token is replaced this long before its exp, or at half its remaining
// lifetime when that is shorter.
const TOKEN_REFRESH_MARGIN_MS = 60000;

/**
 * Error of a request: a JSON-RPC error from the sidecar or the application
 * (code and data as received), a timeout, or a connection that closed first.
 */
export class SidecarError extends Error {
  /**
   * @param {string} message
   * @param {number|string} code JSON-RPC error code, or 'timeout', 'closed', 'unavailable'
   * @param {unknown} [data]
   */
  constructor(message, code, data) {
    super(message);
    this.name = 'SidecarError';
    this.code = code;
    this.data = data;
  }
}

/**
 * Minimal event emitter: on() returns a function that removes the listener.
 * A listener that throws does not stop the others; the exception is reported
 * as an 'error' event (or rethrown asynchronously from an 'error' listener).
 */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
  }

  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    this.listeners.get(name)?.delete(fn);
  }

  emit(name, value) {
    const fns = this.listeners.get(name);
    if (!fns || fns.size === 0) return false;
    for (const fn of [...fns]) {
      try {
        fn(value);
      } catch (err) {
        if (name === 'error') setTimeout(() => { throw err; });
        else this.emit('error', err);
      }
    }
    return true;
  }
}

/**
 * Client of one sidecar. In 'websocket' mode it keeps one connection open,
 * reconnecting with jittered backoff, and resubscribes every subscription
 * from its own resume point. In 'sse' mode each subscription is one
 * EventSource stream and publish, call and expose are not available.
 *
 * Listeners: 'state', 'welcome', 'subscribed', 'reload', 'error'. See
 * index.d.ts.
 */
export class SidecarClient extends Emitter {
  /** @param {import('./index.js').SidecarClientOptions} options */
  constructor(options = {}) {
    super();
    const mode = options.mode ?? 'websocket';
    if (mode !== 'websocket' && mode !== 'sse') {
      throw new TypeError(`mode is ${JSON.stringify(mode)}: use 'websocket' or 'sse'`);
    }
    const tokenIn = options.tokenIn ?? 'auth';
    if (tokenIn !== 'auth' && tokenIn !== 'query') {
      throw new TypeError(`tokenIn is ${JSON.stringify(tokenIn)}: use 'auth' or 'query'`);
    }
    if (!options.url && !(mode === 'sse' && options.sseUrl)) {
      throw new TypeError('url is missing: give the websocket URL, such as ws://127.0.0.1:7070/v1/ws');
    }

    this.mode = mode;
    this.url = options.url;
    this.sseUrl = options.sseUrl ?? (options.url ? deriveSSEUrl(options.url) : undefined);
    this.token = options.token;
    this.tokenIn = tokenIn;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.EventSource = options.EventSource ?? globalThis.EventSource;
    this.eventSourceInit = options.eventSourceInit;
    this.backoff = { ...DEFAULT_BACKOFF, ...(options.backoff ?? {}) };
    this.heartbeatGraceMs = options.heartbeatGraceMs ?? DEFAULT_HEARTBEAT_GRACE_MS;

    /** Client id from the current connection's welcome, or undefined. */
    this.clientId = undefined;
    /** Epoch from the current connection's welcome, or undefined. */
    this.epoch = undefined;
    /** @type {'connecting'|'open'|'reconnecting'|'closed'} */
    this.state = 'connecting';

    this.closed = false;
    this.attempt = 0;
    this.nextRequestId = 1;
    /** @type {Map<number, {done: Function, timer: any, method: string}>} */
    this.pending = new Map();
    /** @type {Set<Subscription>} */
    this.subscriptions = new Set();
    this.presenceJoins = new Map(); // topic to the params of presence.join, rejoined on reconnect
    /** @type {Map<string, Subscription>} subscriptions by the sidecar's id on this connection */
    this.byServerId = new Map();
    /** @type {Map<string, Function>} */
    this.exposed = new Map();
    /** @type {Array<{resolve: Function, reject: Function}>} */
    this.readyWaiters = [];

    this.ws = null;
    this.connection = 0; // increases with every connection, so stale callbacks can tell
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.refreshTimer = null;
    this.heartbeatMs = 0;

    if (mode === 'websocket') {
      if (typeof this.WebSocket !== 'function') {
        throw new TypeError('no WebSocket constructor: pass one as the WebSocket option (in Node 20, the `ws` package)');
      }
      // Start after the constructor returns, so listeners added right after
      // it see the first 'connecting' state.
      queueMicrotask(() => this.connect());
    } else {
      if (typeof this.EventSource !== 'function') {
        throw new TypeError('no EventSource constructor: pass one as the EventSource option (in Node, the `eventsource` package)');
      }
      this.state = 'open';
    }
  }

  /**
   * Resolves once the connection is open and authenticated; at once in SSE
   * mode. Rejects when the client is closed first.
   * @returns {Promise<void>}
   */
  ready() {
    if (this.state === 'open') return Promise.resolve();
    if (this.closed) return Promise.reject(new SidecarError('the client is closed', 'closed'));
    return new Promise((resolve, reject) => this.readyWaiters.push({ resolve, reject }));
  }

  /**
   * Subscribes to one pattern or several. Works before the connection is
   * open: the subscription is sent once it is. The handler gets every event
   * as {topic, data, id, ts} (id only for durable events).
   * @param {string|string[]} patterns
   * @param {(event: {topic: string, data: unknown, id?: number, ts: string}) => void} handler
   * @param {{since?: number}} [options] since resumes after that durable id
   * @returns {() => void} a function that ends the subscription
   */
  subscribe(patterns, handler, options = {}) {
    const list = Array.isArray(patterns) ? [...patterns] : [patterns];
    if (list.length === 0 || list.some((p) => typeof p !== 'string' || p === '')) {
      throw new TypeError('patterns must be a non-empty string or a non-empty array of non-empty strings');
    }
    if (typeof handler !== 'function') throw new TypeError('handler must be a function');

    const sub = new Subscription(list, handler, options.since);
    this.subscriptions.add(sub);
    if (this.mode === 'sse') this.openStream(sub);
    else if (this.state === 'open') this.sendSubscribe(sub, this.connection);

    return () => this.endSubscription(sub);
  }

  /**
   * Publishes an event. Waits for the connection to be open.
   * @param {string} topic
   * @param {unknown} data
   * @param {{durable?: boolean, timeout?: number}} [options]
   * @returns {Promise<{id?: number}>} {id} once committed for durable events, {} for ephemeral ones
   */
  publish(topic, data, options = {}) {
    const durable = options.durable ?? true;
    return this.request('publish', { topic, data, durable }, options.timeout ?? DEFAULT_CALL_TIMEOUT_MS);
  }

  /**
   * Calls a method of the application (app.<name>) through the sidecar.
   * Rejects with a SidecarError carrying the JSON-RPC code and data, a
   * timeout, or the closing of the connection before the response.
   * @param {string} method
   * @param {unknown} [params]
   * @param {{timeout?: number}} [options] timeout in ms, default 10000
   */
  call(method, params, options = {}) {
    return this.request(method, params, options.timeout ?? DEFAULT_CALL_TIMEOUT_MS);
  }

  /**
   * Marks this client present on topic, with optional public info. The
   * client joins again after each reconnect, as it resubscribes, until
   * leavePresence.
   */
  async joinPresence(topic, info, options = {}) {
    const params = info === undefined ? { topic } : { topic, info };
    const result = await this.call('presence.join', params, options);
    this.presenceJoins.set(topic, params);
    return result;
  }

  /** Removes this client from topic; resolves to whether it was present. */
  async leavePresence(topic, options = {}) {
    this.presenceJoins.delete(topic);
    const r = await this.call('presence.leave', { topic }, options);
    return Boolean(r && r.left);
  }

  /** Lists every client present on topic, on any instance: [{client_id, sub, info, joined_at}]. */
  async presence(topic, options = {}) {
    const r = await this.call('presence.list', { topic }, options);
    return r.members;
  }

  /** Counts the clients and distinct subjects present on topic: {clients, subjects}. */
  async presenceStats(topic, options = {}) {
    const r = await this.call('presence.stats', { topic }, options);
    return { clients: r.clients, subjects: r.subjects };
  }

  /**
   * Reads one topic's durable events, newest first: {events, nextBefore},
   * where nextBefore is the before of the next, older page, or 0.
   */
  async history(topic, { limit = 50, before, timeout } = {}) {
    const params = before === undefined || before === null ? { topic, limit } : { topic, limit, before };
    const r = await this.call('history', params, { timeout });
    return { events: r.events, nextBefore: r.next_before };
  }

  /**
   * Registers the handler of the requests named name that the application
   * sends to this client (POST /v1/clients/{id}/call). The handler's return
   * value, or the value its promise resolves to, is the result. A thrown error becomes a
   * JSON-RPC error with its numeric .code (default -32000), .message and
   * .data. Returns a function that removes the handler.
   * @param {string} name
   * @param {(params: unknown) => unknown} handler
   */
  expose(name, handler) {
    if (typeof handler !== 'function') throw new TypeError('handler must be a function');
    if (this.mode === 'sse') {
      throw new SidecarError('expose is unavailable in sse mode: the application can call only clients connected over a websocket', 'unavailable');
    }
    this.exposed.set(name, handler);
    return () => {
      if (this.exposed.get(name) === handler) this.exposed.delete(name);
    };
  }

  /** Closes the connection and every stream for good, and rejects what is pending. */
  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    this.stopTimers();
    const ws = this.ws;
    this.ws = null;
    this.connection++;
    if (ws) {
      detach(ws);
      try {
        ws.close(1000, 'client closed');
      } catch {
        // already closing
      }
    }
    for (const sub of this.subscriptions) sub.closeStream();
    this.subscriptions.clear();
    this.byServerId.clear();
    this.rejectPending('the client was closed before the response arrived');
    for (const w of this.readyWaiters.splice(0)) w.reject(new SidecarError('the client was closed before it was ready', 'closed'));
    this.setState('closed', { code: 1000, reason: 'client closed' });
  }

  // ---- websocket mode: connection lifecycle ----

  async connect() {
    if (this.closed) return;
    const connection = ++this.connection;
    if (this.attempt === 0) this.setState('connecting', { attempt: 0 });

    let token;
    try {
      token = await this.resolveToken();
    } catch (err) {
      this.emit('error', wrapError('the token function failed', err));
      this.scheduleReconnect(connection, { code: 0, reason: 'token function failed' });
      return;
    }
    if (connection !== this.connection || this.closed) return;

    let url = this.url;
    if (token && this.tokenIn === 'query') url = withParams(url, [['access_token', token]]);

    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this.emit('error', wrapError(`cannot open a websocket to ${this.url}`, err));
      this.scheduleReconnect(connection, { code: 0, reason: 'websocket constructor failed' });
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    this.connectToken = token;

    ws.onmessage = (ev) => this.onFrame(connection, ev.data);
    ws.onerror = () => {
      // The close event that follows carries the code; browsers give the
      // error event no detail.
    };
    ws.onclose = (ev) => this.onClose(connection, ev.code, ev.reason);
    this.armHeartbeat(connection);
  }

  async resolveToken() {
    if (typeof this.token === 'function') return await this.token();
    return this.token;
  }

  onFrame(connection, raw) {
    if (connection !== this.connection) return;
    this.armHeartbeat(connection);

    let msg;
    try {
      msg = JSON.parse(typeof raw === 'string' ? raw : String(raw));
    } catch (err) {
      this.emit('error', wrapError('the sidecar sent a frame that is not JSON', err));
      return;
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) return;

    if (typeof msg.method === 'string') {
      if (msg.id !== undefined && msg.id !== null) this.onRequest(connection, msg);
      else this.onNotification(connection, msg.method, msg.params);
      return;
    }
    this.onResponse(msg);
  }

  onNotification(connection, method, params) {
    switch (method) {
      case 'welcome':
        this.onWelcome(connection, params ?? {});
        return;
      case 'event': {
        const sub = this.byServerId.get(params?.subscription);
        if (!sub) return;
        const { subscription, ...event } = params;
        sub.deliver(event, this);
        return;
      }
      default:
        // heartbeat, and notifications of later versions: the frame already
        // re-armed the heartbeat timer.
    }
  }

  async onWelcome(connection, params) {
    if (this.welcomed) return;
    this.welcomed = true;
    this.clientId = params.client_id;
    this.epoch = params.epoch;
    this.heartbeatMs = Number(params.heartbeat_s) > 0 ? Number(params.heartbeat_s) * 1000 : 0;
    this.armHeartbeat(connection);
    this.emit('welcome', { client_id: params.client_id, epoch: params.epoch, version: params.version, heartbeat_s: params.heartbeat_s });

    const token = this.tokenIn === 'auth' ? this.connectToken : undefined;
    if (token) {
      try {
        const result = await this.send(connection, 'auth', { token }, DEFAULT_CALL_TIMEOUT_MS);
        if (connection !== this.connection) return;
        this.scheduleRefresh(connection, result?.exp);
      } catch (err) {
        if (connection !== this.connection) return;
        this.emit('error', wrapError('authentication failed', err));
        this.dropConnection(connection, 4001, 'authentication failed');
        return;
      }
    } else if (this.connectToken) {
      // The token went in the URL, so its exp comes from its payload.
      this.scheduleRefresh(connection, tokenExp(this.connectToken));
    }

    this.attempt = 0;
    this.setState('open', {});
    for (const w of this.readyWaiters.splice(0)) w.resolve();
    for (const sub of this.subscriptions) this.sendSubscribe(sub, connection);
    for (const params of this.presenceJoins.values()) {
      this.send(connection, 'presence.join', params, DEFAULT_CALL_TIMEOUT_MS).catch((err) => {
        if (connection === this.connection) this.emit('error', wrapError(`rejoining presence of ${params.topic} failed`, err));
      });
    }
  }

  scheduleRefresh(connection, exp) {
    clearTimeout(this.refreshTimer);
    if (typeof this.token !== 'function' || typeof exp !== 'number') return;
    const remaining = exp * 1000 - Date.now();
    this.refreshTimer = setTimeout(() => this.refreshToken(connection), refreshDelay(remaining));
  }

  async refreshToken(connection) {
    if (connection !== this.connection || this.closed) return;
    try {
      const token = await this.resolveToken();
      const result = await this.send(connection, 'auth', { token }, DEFAULT_CALL_TIMEOUT_MS);
      if (connection !== this.connection) return;
      if (Array.isArray(result?.removed) && result.removed.length > 0) {
        this.emit('error', new SidecarError(`the new token no longer allows subscriptions ${result.removed.join(', ')}`, 'removed', result.removed));
        for (const id of result.removed) {
          const sub = this.byServerId.get(id);
          if (sub) this.forgetSubscription(sub);
        }
      }
      this.scheduleRefresh(connection, result?.exp);
    } catch (err) {
      if (connection !== this.connection) return;
      // The sidecar closes the connection with 1008 at expiry, and the
      // reconnect then calls the token function again.
      this.emit('error', wrapError('replacing the token before it expires failed', err));
    }
  }

  onClose(connection, code, reason) {
    if (connection !== this.connection) return;
    this.ws = null;
    this.scheduleReconnect(connection, { code, reason });
  }

  /** Ends the connection at once without waiting for its closing handshake. */
  dropConnection(connection, code, reason) {
    if (connection !== this.connection) return;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      detach(ws);
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    this.scheduleReconnect(connection, { code, reason });
  }

  scheduleReconnect(connection, { code, reason }) {
    if (connection !== this.connection || this.closed) return;
    this.connection++; // responses and events of the old connection are now stale
    this.stopTimers();
    this.byServerId.clear();
    for (const sub of this.subscriptions) sub.serverId = undefined;
    this.rejectPending(`the connection closed (code ${code}${reason ? `: ${reason}` : ''}) before the response arrived`);
    this.clientId = undefined;

    const delay = reconnectDelay(this.backoff, this.attempt, code);
    this.attempt++;
    this.setState('reconnecting', { code, reason, attempt: this.attempt });
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  armHeartbeat(connection) {
    clearTimeout(this.heartbeatTimer);
    // Before the welcome, the heartbeat interval is unknown: wait for the
    // grace period plus the sidecar's default heartbeat of 25 s.
    const interval = this.heartbeatMs || 25000;
    this.heartbeatTimer = setTimeout(() => {
      this.dropConnection(connection, CLOSE_HEARTBEAT_MISSED, 'no frame within the heartbeat interval');
    }, interval + this.heartbeatGraceMs);
  }

  stopTimers() {
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.refreshTimer);
    this.heartbeatTimer = null;
    this.refreshTimer = null;
  }

  // ---- websocket mode: requests ----

  async request(method, params, timeoutMs) {
    if (this.mode === 'sse') {
      throw new SidecarError(`${method} needs the websocket: SSE mode only subscribes`, 'unavailable');
    }
    const deadline = Date.now() + timeoutMs;
    await withTimeout(this.ready(), timeoutMs, `${method} timed out after ${timeoutMs} ms waiting for the connection`);
    return this.send(this.connection, method, params, Math.max(1, deadline - Date.now()));
  }

  /** Sends one request on connection and resolves with its result. */
  send(connection, method, params, timeoutMs) {
    return new Promise((resolve, reject) => {
      this.sendRequest(connection, method, params, timeoutMs, (err, result) => (err ? reject(err) : resolve(result)));
    });
  }

  /**
   * Sends one request on connection and calls done(err, result) when its
   * response arrives, synchronously within the handling of that frame. So
   * done runs before the next frame is handled, which a promise would not
   * guarantee: `ws` may deliver several frames in one task.
   */
  sendRequest(connection, method, params, timeoutMs, done) {
    if (connection !== this.connection || !this.ws) {
      done(new SidecarError(`${method} was not sent: the connection closed`, 'closed'));
      return;
    }
    const id = this.nextRequestId++;
    const message = { jsonrpc: '2.0', id, method };
    if (params !== undefined) message.params = params;

    const timer = setTimeout(() => {
      this.pending.delete(id);
      done(new SidecarError(`${method} timed out after ${timeoutMs} ms`, 'timeout'));
    }, timeoutMs);
    this.pending.set(id, { done, timer, method });
    try {
      this.ws.send(JSON.stringify(message));
    } catch (err) {
      clearTimeout(timer);
      this.pending.delete(id);
      done(wrapError(`${method} could not be sent`, err));
    }
  }

  onResponse(msg) {
    const entry = this.pending.get(msg.id);
    if (!entry) return;
    this.pending.delete(msg.id);
    clearTimeout(entry.timer);
    if (msg.error) {
      const e = msg.error;
      entry.done(new SidecarError(`${entry.method}: ${e.message ?? 'error'} (code ${e.code})`, e.code, e.data));
    } else {
      entry.done(null, msg.result);
    }
  }

  rejectPending(message) {
    for (const [id, entry] of this.pending) {
      clearTimeout(entry.timer);
      this.pending.delete(id);
      entry.done(new SidecarError(`${entry.method}: ${message}`, 'closed'));
    }
  }

  async onRequest(connection, msg) {
    const reply = (body) => {
      if (connection !== this.connection || !this.ws) return;
      try {
        this.ws.send(JSON.stringify({ jsonrpc: '2.0', id: msg.id, ...body }));
      } catch (err) {
        this.emit('error', wrapError(`the response to ${msg.method} could not be sent`, err));
      }
    };

    const handler = this.exposed.get(msg.method);
    if (!handler) {
      reply({ error: { code: -32601, message: `method ${msg.method} is not exposed by this client` } });
      return;
    }
    try {
      const result = await handler(msg.params);
      reply({ result: result === undefined ? null : result });
    } catch (err) {
      const error = {
        code: Number.isInteger(err?.code) ? err.code : -32000,
        message: err?.message ? String(err.message) : String(err),
      };
      if (err?.data !== undefined) error.data = err.data;
      reply({ error });
    }
  }

  // ---- websocket mode: subscriptions ----

  sendSubscribe(sub, connection) {
    if (sub.ended || sub.sending === connection) return;
    sub.sending = connection;

    const params = { topics: sub.patterns };
    const since = sub.lastId;
    if (since !== undefined) {
      params.since = since;
      if (sub.epoch !== undefined) params.epoch = sub.epoch;
    }

    // The result must be handled before the next frame, which may already
    // be the first replayed event of this subscription.
    this.sendRequest(connection, 'subscribe', params, DEFAULT_CALL_TIMEOUT_MS, (err, result) => {
      sub.sending = undefined;
      if (err) this.onSubscribeError(sub, connection, err);
      else this.onSubscribed(sub, connection, since, result);
    });
  }

  onSubscribed(sub, connection, since, result) {
    if (connection !== this.connection) return;
    sub.retries = 0;
    if (sub.ended) {
      this.send(connection, 'unsubscribe', { subscription: result.subscription }, DEFAULT_CALL_TIMEOUT_MS).catch(() => {});
      return;
    }

    sub.serverId = result.subscription;
    sub.epoch = result.epoch;
    // Without since, nothing is replayed: the head is where this
    // subscription starts. With since, replayed events advance lastId.
    if (since === undefined) sub.lastId = result.head;
    this.byServerId.set(result.subscription, sub);
    this.emit('subscribed', { patterns: [...sub.patterns], subscription: result.subscription, epoch: result.epoch, head: result.head, since });
  }

  onSubscribeError(sub, connection, err) {
    if (sub.ended || connection !== this.connection) return;
    if (err.code === HISTORY_EXPIRED) {
      sub.lastId = undefined;
      sub.epoch = undefined;
      this.emit('reload', { patterns: [...sub.patterns], message: err.message });
      this.sendSubscribe(sub, connection);
      return;
    }
    if (err.code === 'timeout') {
      // Drop the connection rather than leave the subscription half made;
      // the reconnect subscribes again.
      this.dropConnection(connection, 4002, 'subscribe timed out');
      return;
    }
    if (err.code === 'closed') return; // the reconnect subscribes again
    if (err.code === RATE_LIMITED) {
      // Too many requests at once, as after a reconnect with many
      // subscriptions, or too many subscriptions: retry with backoff.
      if (sub.retries === 0) this.emit('error', wrapError(`subscribing to ${sub.patterns.join(', ')} was rate limited, retrying`, err));
      const delay = reconnectDelay(this.backoff, sub.retries++, 0);
      sub.retryTimer = setTimeout(() => this.sendSubscribe(sub, connection), delay);
      return;
    }

    this.subscriptions.delete(sub);
    sub.ended = true;
    this.emit('error', wrapError(`subscribing to ${sub.patterns.join(', ')} failed`, err));
  }

  endSubscription(sub) {
    if (sub.ended) return;
    this.forgetSubscription(sub);
    if (sub.serverId !== undefined && this.state === 'open') {
      this.send(this.connection, 'unsubscribe', { subscription: sub.serverId }, DEFAULT_CALL_TIMEOUT_MS).catch(() => {});
    }
  }

  forgetSubscription(sub) {
    sub.ended = true;
    this.subscriptions.delete(sub);
    if (sub.serverId !== undefined) this.byServerId.delete(sub.serverId);
    sub.closeStream();
  }

  // ---- SSE mode ----

  async openStream(sub) {
    if (sub.ended || this.closed) return;
    const generation = ++sub.streamGeneration;
    this.setState(sub.streamAttempt === 0 ? 'connecting' : 'reconnecting', { attempt: sub.streamAttempt, patterns: sub.patterns });

    let token;
    try {
      token = await this.resolveToken();
    } catch (err) {
      this.emit('error', wrapError('the token function failed', err));
      this.reopenStream(sub, generation, { code: 0, reason: 'token function failed' });
      return;
    }
    if (sub.ended || generation !== sub.streamGeneration) return;

    const params = sub.patterns.map((p) => ['topic', p]);
    if (token) params.push(['access_token', token]);
    const headers = {};
    if (sub.lastEventId !== undefined && this.eventSourceInit) {
      headers['Last-Event-ID'] = sub.lastEventId;
    } else if (sub.lastId !== undefined) {
      params.push(['since', String(sub.lastId)]);
    }
    const url = withParams(this.sseUrl, params);

    let es;
    try {
      es = this.eventSourceInit ? new this.EventSource(url, this.eventSourceInit(headers)) : new this.EventSource(url);
    } catch (err) {
      this.emit('error', wrapError(`cannot open an event stream to ${this.sseUrl}`, err));
      this.reopenStream(sub, generation, { code: 0, reason: 'EventSource constructor failed' });
      return;
    }
    sub.stream = es;

    es.onopen = () => {
      if (generation !== sub.streamGeneration) return;
      sub.streamAttempt = 0;
      this.setState('open', { patterns: sub.patterns });
      this.emit('subscribed', { patterns: [...sub.patterns], since: sub.lastId });
    };
    es.onmessage = (ev) => {
      if (generation !== sub.streamGeneration) return;
      let event;
      try {
        event = JSON.parse(ev.data);
      } catch (err) {
        this.emit('error', wrapError('the sidecar sent an event that is not JSON', err));
        return;
      }
      if (ev.lastEventId) sub.lastEventId = ev.lastEventId;
      sub.deliver(event, this);
    };
    es.addEventListener('error', (ev) => {
      if (generation !== sub.streamGeneration) return;
      if (typeof ev.data === 'string') {
        this.onStreamError(sub, generation, ev.data);
        return;
      }
      // A network failure leaves the EventSource reconnecting by itself,
      // with the Last-Event-ID it keeps (which includes the resume point
      // the stream opens with). A refused request closes it for good.
      if (es.readyState === 2) {
        // The `eventsource` package gives the HTTP status as code; browsers
        // give no detail.
        const status = typeof ev.code === 'number' ? ev.code : 0;
        const reason = ev.message ?? 'the event stream request failed';
        this.emit('error', new SidecarError(`event stream for ${sub.patterns.join(', ')}: ${reason}`, status));
        if (status === 400 || status === 403) {
          // An invalid or forbidden pattern stays so: drop the
          // subscription, as the websocket mode does.
          this.forgetSubscription(sub);
          return;
        }
        this.reopenStream(sub, generation, { code: status, reason });
      } else {
        this.setState('reconnecting', { code: 0, reason: 'the event stream was interrupted', attempt: sub.streamAttempt, patterns: sub.patterns });
      }
    });
  }

  /** Handles an "event: error" block, after which the sidecar ends the stream. */
  onStreamError(sub, generation, data) {
    let body = {};
    try {
      body = JSON.parse(data);
    } catch {
      // keep the empty body: the code is unknown
    }
    const { code, message } = body;
    if (code === HISTORY_EXPIRED) {
      sub.lastId = undefined;
      sub.lastEventId = undefined;
      sub.closeStream();
      this.emit('reload', { patterns: [...sub.patterns], message });
      sub.streamAttempt = 0;
      this.openStream(sub);
      return;
    }
    if (code === CloseCodes.DRAINING || code === CloseCodes.TOO_SLOW) {
      // Let the EventSource reconnect with its own Last-Event-ID; if the
      // request is refused, the 'error' handler reopens the stream.
      this.setState('reconnecting', { code, reason: message, attempt: sub.streamAttempt, patterns: sub.patterns });
      return;
    }
    // 1008 (token expired) and internal errors: reopen with a new token.
    this.reopenStream(sub, generation, { code, reason: message });
  }

  reopenStream(sub, generation, { code, reason }) {
    if (sub.ended || this.closed || generation !== sub.streamGeneration) return;
    sub.closeStream();
    const delay = reconnectDelay(this.backoff, sub.streamAttempt, code);
    sub.streamAttempt++;
    this.setState('reconnecting', { code, reason, attempt: sub.streamAttempt, patterns: sub.patterns });
    sub.reopenTimer = setTimeout(() => this.openStream(sub), delay);
  }

  setState(state, details) {
    if (this.mode === 'websocket' || state === 'closed') this.state = state;
    this.emit('state', { state, ...details });
  }
}

/** One subscription of the client, with its own resume point. */
class Subscription {
  constructor(patterns, handler, since) {
    this.patterns = patterns;
    this.handler = handler;
    /** Last durable id seen, or the head of the subscribe result. */
    this.lastId = since;
    /** Epoch the subscription saw in its subscribe result. */
    this.epoch = undefined;
    this.serverId = undefined;
    this.sending = undefined;
    this.ended = false;
    // SSE mode
    this.stream = null;
    this.lastEventId = undefined;
    this.streamGeneration = 0;
    this.streamAttempt = 0;
    this.reopenTimer = null;
    // websocket mode: subscribe attempts rejected with -32004 in a row
    this.retries = 0;
    this.retryTimer = null;
  }

  deliver(event, client) {
    if (this.ended) return;
    if (typeof event.id === 'number') this.lastId = event.id;
    try {
      this.handler(event);
    } catch (err) {
      client.emit('error', err);
    }
  }

  closeStream() {
    clearTimeout(this.reopenTimer);
    clearTimeout(this.retryTimer);
    this.streamGeneration++;
    if (this.stream) {
      this.stream.close();
      this.stream = null;
    }
  }
}

/**
 * Returns how long to wait before refreshing a token that expires in
 * remainingMs: until TOKEN_REFRESH_MARGIN_MS before its exp, or halfway
 * there for a token that lives shorter than twice the margin, and never
 * less than a second.
 * @param {number} remainingMs
 * @returns {number}
 */
export function refreshDelay(remainingMs) {
  return Math.max(1000, remainingMs - TOKEN_REFRESH_MARGIN_MS, remainingMs / 2);
}

/**
 * Returns the wait before reconnect attempt number attempt (0 first): full
 * jitter, a random time up to min(maxMs, initialMs * 2^attempt). After 1012
 * (sidecar draining) the first attempt waits at most initialMs.
 */
export function reconnectDelay(backoff, attempt, code) {
  const n = code === CloseCodes.DRAINING ? 0 : attempt;
  const cap = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(n, 30));
  return Math.floor(Math.random() * cap);
}

/** Derives the event stream URL from the websocket URL: ws://h/v1/ws → http://h/v1/events. */
export function deriveSSEUrl(wsUrl) {
  const u = new URL(wsUrl);
  if (u.protocol === 'ws:') u.protocol = 'http:';
  else if (u.protocol === 'wss:') u.protocol = 'https:';
  u.pathname = u.pathname.replace(/\/ws$/, '/events');
  if (!u.pathname.endsWith('/events')) u.pathname = '/v1/events';
  u.search = '';
  return u.toString();
}

function withParams(url, pairs) {
  const u = new URL(url);
  for (const [k, v] of pairs) u.searchParams.append(k, v);
  return u.toString();
}

/** Reads exp (unix seconds) from a JWT without verifying it, or undefined. */
function tokenExp(token) {
  if (typeof token !== 'string') return undefined;
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const exp = JSON.parse(json).exp;
    return typeof exp === 'number' ? exp : undefined;
  } catch {
    return undefined;
  }
}

function detach(ws) {
  ws.onmessage = null;
  ws.onclose = null;
  // Some implementations report a late error for a socket closed while
  // connecting; swallow it.
  ws.onerror = () => {};
}

function wrapError(message, err) {
  const e = new SidecarError(`${message}: ${err?.message ?? err}`, err?.code ?? 'error', err?.data);
  e.cause = err;
  return e;
}

function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new SidecarError(message, 'timeout')), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
