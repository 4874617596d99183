package client

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"
)

// Event is one event delivered to a subscription.
type Event struct {
	Topic string          `json:"topic"`
	Data  json.RawMessage `json:"data"`

	// ID is the durable event's id, increasing in commit order, or 0 for
	// an ephemeral event.
	ID int64 `json:"id,omitempty"`

	// TS is when the event was published, by the database's clock. It is
	// the zero time if the sidecar sent a timestamp that does not parse.
	TS time.Time `json:"ts"`

	// Subscription is the id of the subscription the event was sent for.
	Subscription string `json:"subscription"`

	// Raw is the notification's params object as received, for callers
	// that print or forward events unchanged.
	Raw json.RawMessage `json:"-"`
}

// SubscribeOption configures one Subscribe call.
type SubscribeOption func(*subscribeConfig)

type subscribeConfig struct {
	since  *int64
	epoch  string
	buffer int
}

// WithSince resumes after the durable event id, which the sidecar then
// replays before live events, with no gap and no duplicate. If the history
// after id is gone, Subscribe fails with CodeHistoryExpired and the caller
// must reload its state from the application.
func WithSince(id int64) SubscribeOption {
	return func(cfg *subscribeConfig) { cfg.since = &id }
}

// WithEpoch names the epoch that the WithSince id belongs to. If the
// sidecar's epoch differs, Subscribe fails with CodeHistoryExpired instead
// of replaying from an id in another id space.
func WithEpoch(epoch string) SubscribeOption {
	return func(cfg *subscribeConfig) { cfg.epoch = epoch }
}

// WithBuffer sets the capacity of this subscription's Events channel,
// overriding Options.EventBuffer. Values below 1 are ignored.
func WithBuffer(n int) SubscribeOption {
	return func(cfg *subscribeConfig) {
		if n > 0 {
			cfg.buffer = n
		}
	}
}

// Subscription is a set of patterns that the sidecar streams events for.
// Its methods are safe for concurrent use.
type Subscription struct {
	conn   *Conn
	id     string
	topics []string
	epoch  string
	head   int64

	events chan Event

	// stop is closed when the subscription ends, so that a reader blocked
	// on a full events channel gives up. sendMu keeps events from being
	// closed while the reader sends on it, which may take long, so err has
	// a mutex of its own.
	stop    chan struct{}
	endOnce sync.Once
	sendMu  sync.Mutex
	ended   bool // under sendMu

	errMu sync.Mutex
	err   error
}

// Subscribe subscribes to events whose topic matches any of patterns. It
// returns once the sidecar has confirmed the subscription. Later events,
// replayed ones first, arrive on the Events channel.
//
// All patterns are added or none: an invalid or forbidden pattern fails
// the whole call with an *RPCError.
//
// If ctx ends before the confirmation arrives, Subscribe returns ctx's
// error, and the client unsubscribes again when the confirmation arrives.
func (c *Conn) Subscribe(ctx context.Context, patterns []string, opts ...SubscribeOption) (*Subscription, error) {
	cfg := subscribeConfig{buffer: c.buffer}
	for _, opt := range opts {
		opt(&cfg)
	}

	params := struct {
		Topics []string `json:"topics"`
		Since  *int64   `json:"since,omitempty"`
		Epoch  string   `json:"epoch,omitempty"`
	}{patterns, cfg.since, cfg.epoch}

	var sub *Subscription
	register := func(raw json.RawMessage) error {
		s, err := c.newSubscription(raw, cfg.buffer)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.subs[s.id] = s
		c.mu.Unlock()
		sub = s
		return nil
	}
	unsubscribeLate := func(raw json.RawMessage) {
		s, err := c.newSubscription(raw, 1)
		if err != nil {
			return
		}
		c.handlerWG.Go(func() {
			if err := s.unsubscribeRemote(c.ctx); err != nil {
				c.log.Debug("could not remove a subscription whose caller gave up", "subscription", s.id, "error", err)
			}
		})
	}

	if _, err := c.call(ctx, "subscribe", params, register, unsubscribeLate); err != nil {
		return nil, err
	}
	return sub, nil
}

func (c *Conn) newSubscription(raw json.RawMessage, buffer int) (*Subscription, error) {
	var result struct {
		Subscription string   `json:"subscription"`
		Topics       []string `json:"topics"`
		Epoch        string   `json:"epoch"`
		Head         int64    `json:"head"`
	}
	if err := json.Unmarshal(raw, &result); err != nil {
		return nil, fmt.Errorf("decode result: %w", err)
	}
	if result.Subscription == "" {
		return nil, fmt.Errorf("decode result: the subscription id is missing")
	}

	return &Subscription{
		conn:   c,
		id:     result.Subscription,
		topics: result.Topics,
		epoch:  result.Epoch,
		head:   result.Head,
		events: make(chan Event, buffer),
		stop:   make(chan struct{}),
	}, nil
}

// ID returns the id that names the subscription on its connection.
func (s *Subscription) ID() string { return s.id }

// Topics returns the patterns as the sidecar confirmed them. The caller
// must not modify the slice.
func (s *Subscription) Topics() []string { return s.topics }

// Epoch returns the sidecar's epoch when the subscription started. Store it
// with the last event id to resume later with WithSince and WithEpoch.
func (s *Subscription) Epoch() string { return s.epoch }

// Head returns the newest durable event id when the subscription started.
// A client that has seen nothing yet resumes from it.
func (s *Subscription) Head() int64 { return s.head }

// Events returns the channel of events, in the order the sidecar sent
// them. It is closed when the subscription ends: after Unsubscribe, when
// the sidecar removes it, or when the connection ends.
//
// The consumer must keep draining the channel. While it is full, the
// connection's reader waits, so no other subscription receives events and
// no call receives its response. The sidecar then closes the connection as
// too slow. A consumer that makes calls between events must therefore not
// let its channel fill up, or must give those calls a deadline.
func (s *Subscription) Events() <-chan Event { return s.events }

// Err returns nil while the subscription is active and after Unsubscribe.
// It returns ErrRemoved when the sidecar removed the subscription, and the
// connection's error when the connection ended.
func (s *Subscription) Err() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

// Unsubscribe ends the subscription: it closes the Events channel at once,
// dropping events still in transit. It then sends an unsubscribe request
// and waits for the sidecar's confirmation. Unsubscribing twice is not an error.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	s.conn.endSubscriptions([]string{s.id}, nil)
	s.end(nil)
	return s.unsubscribeRemote(ctx)
}

func (s *Subscription) unsubscribeRemote(ctx context.Context) error {
	params := map[string]string{"subscription": s.id}
	return s.conn.Call(ctx, "unsubscribe", params, nil)
}

// deliver sends ev to the consumer, waiting while the channel is full
// until the subscription ends or the connection is closing.
func (s *Subscription) deliver(ev Event) {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	if s.ended {
		return
	}

	select {
	case s.events <- ev:
	case <-s.stop:
	case <-s.conn.quit:
	}
}

// end closes the Events channel and records err as the reason. Only the
// first call has an effect.
func (s *Subscription) end(err error) {
	s.endOnce.Do(func() {
		s.errMu.Lock()
		s.err = err
		s.errMu.Unlock()

		close(s.stop) // releases a deliver that waits on a full channel

		s.sendMu.Lock()
		defer s.sendMu.Unlock()
		s.ended = true
		close(s.events)
	})
}

// endSubscriptions removes the subscriptions with ids from the connection
// and ends them with err.
func (c *Conn) endSubscriptions(ids []string, err error) {
	for _, id := range ids {
		c.mu.Lock()
		s, ok := c.subs[id]
		delete(c.subs, id)
		c.mu.Unlock()
		if ok {
			s.end(err)
		}
	}
}

// routeEvent delivers an event notification to the subscription it names.
// Events for unknown subscriptions, such as one just unsubscribed, are
// dropped.
func (c *Conn) routeEvent(params json.RawMessage) {
	var p struct {
		Topic        string          `json:"topic"`
		Data         json.RawMessage `json:"data"`
		ID           int64           `json:"id"`
		TS           string          `json:"ts"`
		Subscription string          `json:"subscription"`
	}
	if err := unmarshal(params, &p); err != nil {
		c.log.Warn("dropped an event notification with invalid params", "error", err)
		return
	}

	c.mu.Lock()
	sub, ok := c.subs[p.Subscription]
	c.mu.Unlock()
	if !ok {
		c.log.Debug("dropped an event for no active subscription", "subscription", p.Subscription, "topic", p.Topic)
		return
	}

	ts, err := time.Parse(time.RFC3339Nano, p.TS)
	if err != nil {
		c.log.Warn("received an event with an invalid timestamp", "subscription", p.Subscription, "topic", p.Topic, "ts", p.TS)
	}

	sub.deliver(Event{
		Topic:        p.Topic,
		Data:         p.Data,
		ID:           p.ID,
		TS:           ts,
		Subscription: p.Subscription,
		Raw:          params,
	})
}
