// Package hub delivers events to the connected clients that subscribed to
// them.
//
// A Hub keeps an index of subscriptions: literal patterns in a map from
// topic, wildcard patterns grouped by pattern. The relay calls Publish for
// every event. Publish encodes the event notification once, then queues a
// reference to that encoding on every client with a matching subscription.
// Publish never waits for a client's connection.
//
// Each registered Client has at most one writer goroutine, the only caller
// of its Sink's Write. The writer runs while the client's queue, counted in
// bytes, has messages, and ends when it is empty, so idle clients cost no
// goroutine. Heartbeats and the write timeout run on timers that a write
// does not reset: it only stores two timestamps. A client
// whose queue stays above Config.QueueBytes for longer than
// Config.SlowGrace, whose queue grows past Config.MaxQueueBytes, or whose
// single write blocks longer than Config.WriteTimeout is closed with
// CloseTooSlow. Nobody else waits for it.
//
// A new subscription starts out held. Live events for it are buffered while
// the caller replays stored events, and Subscription.Start queues the
// replay, then the buffered events, so that the client sees every durable
// event once and in order.
//
// The hub does not know about websockets. The server adapts a connection to
// the Sink interface.
package hub
