// Type definitions of @pgsidecar/client.

/** JSON-RPC code of "history expired". */
export declare const HISTORY_EXPIRED: -32006;

/** Close codes that the sidecar sends. */
export declare const CloseCodes: Readonly<{
  POLICY: 1008;
  TOO_BIG: 1009;
  DRAINING: 1012;
  TOO_SLOW: 1013;
}>;

/** A token, or a function that returns one; called on every (re)connect and before the token expires. */
export type TokenSource = string | undefined | (() => string | undefined | Promise<string | undefined>);

export interface BackoffOptions {
  /** Cap of the first reconnect delay, in ms. Default 250. */
  initialMs?: number;
  /** Largest cap of a reconnect delay, in ms. Default 10000. */
  maxMs?: number;
}

export interface SidecarClientOptions {
  /** Websocket URL, such as ws://127.0.0.1:7070/v1/ws. Required unless mode is 'sse' and sseUrl is given. */
  url?: string;
  /** Event stream URL for SSE mode. Default: derived from url (http(s)://host/v1/events). */
  sseUrl?: string;
  token?: TokenSource;
  /** 'auth' sends the token in the first message (default); 'query' puts it in the access_token parameter. */
  tokenIn?: 'auth' | 'query';
  /** 'websocket' (default), or 'sse' for subscriptions over GET /v1/events only. */
  mode?: 'websocket' | 'sse';
  /** WebSocket constructor. Default globalThis.WebSocket. */
  WebSocket?: new (url: string) => WebSocketLike;
  /** EventSource constructor. Default globalThis.EventSource. */
  EventSource?: new (url: string, init?: any) => EventSourceLike;
  /**
   * Builds the EventSource's second constructor argument from the request
   * headers the client wants to send (Last-Event-ID when it reopens a
   * stream). Give it only when the EventSource can send headers, such as
   * the `eventsource` package with a custom fetch. Without it, a reopened
   * stream resumes with the since parameter.
   */
  eventSourceInit?: (headers: Record<string, string>) => any;
  backoff?: BackoffOptions;
  /** Extra wait beyond heartbeat_s before a silent connection is dropped, in ms. Default 10000. */
  heartbeatGraceMs?: number;
}

export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: any }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}

export interface EventSourceLike {
  readonly readyState: number;
  close(): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: string; lastEventId: string }) => void) | null;
  addEventListener(type: 'error', listener: (ev: any) => void): void;
}

/** An event as delivered to a subscription handler. */
export interface SidecarEvent<T = unknown> {
  topic: string;
  data: T;
  /** Present for durable events only. */
  id?: number;
  /** Database time of the publish, RFC 3339 in UTC with microseconds. */
  ts: string;
}

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface StateChange {
  state: ConnectionState;
  /** Close code of the connection that ended (0 when no websocket close code applies). */
  code?: number;
  reason?: string;
  /** Number of reconnect attempts since the last open connection. */
  attempt?: number;
  /** SSE mode: the patterns of the stream whose state changed. */
  patterns?: string[];
}

export interface Welcome {
  client_id: string;
  epoch: string;
  version?: string;
  heartbeat_s?: number;
}

export interface Reload {
  /** Patterns of the subscription whose history expired. */
  patterns: string[];
  message: string;
}

export interface Subscribed {
  patterns: string[];
  /** Websocket mode: the sidecar's name of the subscription on this connection. */
  subscription?: string;
  epoch?: string;
  head?: number;
  /** The resume point the subscription was made with, if any. */
  since?: number;
}

export interface SidecarClientEvents {
  state: StateChange;
  welcome: Welcome;
  subscribed: Subscribed;
  reload: Reload;
  error: Error;
}

/** Error of a request: a JSON-RPC error (numeric code), or 'timeout', 'closed', 'unavailable'. */
export declare class SidecarError extends Error {
  constructor(message: string, code: number | string, data?: unknown);
  code: number | string;
  data?: unknown;
}

export declare class SidecarClient {
  constructor(options: SidecarClientOptions);

  /** Client id from the current connection's welcome. */
  readonly clientId: string | undefined;
  /** Epoch from the current connection's welcome. */
  readonly epoch: string | undefined;
  readonly state: ConnectionState;

  on<K extends keyof SidecarClientEvents>(name: K, listener: (value: SidecarClientEvents[K]) => void): () => void;
  off<K extends keyof SidecarClientEvents>(name: K, listener: (value: SidecarClientEvents[K]) => void): void;

  /** Resolves when the connection is open and authenticated (at once in SSE mode). */
  ready(): Promise<void>;

  /** Subscribes; works before open. Returns a function that ends the subscription. */
  subscribe<T = unknown>(
    patterns: string | string[],
    handler: (event: SidecarEvent<T>) => void,
    options?: { since?: number },
  ): () => void;

  /** Resolves {id} for durable events once committed, {} for ephemeral ones. */
  publish(topic: string, data: unknown, options?: { durable?: boolean; timeout?: number }): Promise<{ id?: number }>;

  /** Calls app.<name> on the application; rejects with a SidecarError. */
  call<R = unknown>(method: string, params?: unknown, options?: { timeout?: number }): Promise<R>;
  /** Marks this client present on topic, with optional public info; it rejoins after each reconnect until leavePresence. */
  joinPresence(topic: string, info?: unknown, options?: { timeout?: number }): Promise<unknown>;
  /** Removes this connection from topic; resolves to whether it was present. */
  leavePresence(topic: string, options?: { timeout?: number }): Promise<boolean>;
  /** Lists every client present on topic, on any instance. */
  presence(topic: string, options?: { timeout?: number }): Promise<PresenceMember[]>;
  /** Counts the clients and distinct subjects present on topic. */
  presenceStats(topic: string, options?: { timeout?: number }): Promise<{ clients: number; subjects: number }>;
  /** Reads one topic's durable events, newest first; nextBefore is 0 on the last page. */
  history(topic: string, options?: { limit?: number; before?: number; timeout?: number }): Promise<{ events: HistoryEvent[]; nextBefore: number }>;

  /**
   * Registers handler for the application's calls of method name to this
   * client. Returns a function that removes the handler. Throws in sse mode.
   */
  expose(name: string, handler: (params: any) => unknown | Promise<unknown>): () => void;

  /** Closes the connection and every stream for good. */
  close(): void;
}

/** Returns how long to wait before refreshing a token that expires in remainingMs. */
export declare function refreshDelay(remainingMs: number): number;

/** Returns the reconnect delay for an attempt (0 first): full jitter, at most initialMs after 1012. */
export declare function reconnectDelay(backoff: Required<BackoffOptions>, attempt: number, code?: number): number;

/** Derives the event stream URL from the websocket URL. */
export declare function deriveSSEUrl(wsUrl: string): string;

/** One client present on a topic. */
export interface PresenceMember {
  client_id: string;
  sub: string;
  info?: unknown;
  joined_at: string;
}

/** One durable event of history. */
export interface HistoryEvent {
  topic: string;
  data: unknown;
  id: number;
  ts: string;
}
