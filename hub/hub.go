package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/sidecar/topic"
)

// Event is one event as delivered to subscribers.
type Event struct {
	Topic string
	// Data is the event's JSON value. It must be valid JSON because the
	// hub copies it into notifications unchecked. Empty Data is sent as null.
	Data json.RawMessage
	// ID is the durable event's id, or 0 for an ephemeral event.
	ID int64
	// TS is the publish time, already formatted in UTC with microseconds
	// ("2006-01-02T15:04:05.000000Z").
	TS string
	// Published is the publish time for Config.DeliveryLatency, or zero to
	// leave the event out of it.
	Published time.Time
}

// Close codes and reasons that the hub sends.
const (
	// CloseTooSlow closes a client that does not read its messages fast
	// enough.
	CloseTooSlow = 1013

	reasonTooSlow = "client too slow"
)

// Sink is one client connection as the hub writes to it.
type Sink interface {
	// Write writes one complete text message. The hub calls it from one
	// goroutine per client, and the sink must not keep msg after Write
	// returns. The hub never cancels ctx while a Write can still succeed,
	// because cancelling a websocket write drops the connection without a
	// close frame. It cancels ctx only after Close or CloseNow has returned.
	Write(ctx context.Context, msg []byte) error
	// Close sends a close frame with code and reason and waits for the
	// peer's (the closing handshake). It may block for seconds, and it may
	// be called while a Write is in progress.
	Close(code int, reason string) error
	// CloseNow drops the connection without the closing handshake. It may be
	// called while Write or Close is in progress and must make them return.
	CloseNow() error
}

// Config sets the limits of a Hub. The zero value of each field selects its
// default.
type Config struct {
	// QueueBytes is the number of bytes that may wait in a client's
	// outbound queue without counting against SlowGrace. Default 4 MiB.
	QueueBytes int
	// MaxQueueBytes is the hard cap on a client's buffered bytes: its queue
	// plus the live events held for subscriptions that have not started. A
	// client over it is closed at once as too slow. Default 256 MiB, and
	// never below QueueBytes.
	MaxQueueBytes int
	// SlowGrace is how long a client's queue may stay above QueueBytes
	// before the client is closed as too slow. Default 5 s.
	SlowGrace time.Duration
	// WriteTimeout is the longest time one Sink.Write may block before the
	// client is closed as too slow. Default 10 s.
	WriteTimeout time.Duration
	// Heartbeat is the idle time after which a client's writer sends
	// HeartbeatMsg. Zero, or an empty HeartbeatMsg, disables heartbeats.
	Heartbeat    time.Duration
	HeartbeatMsg []byte
	// DeliveryLatency, when set, is called by a client's writer after each
	// live event notification it wrote, with the time from the event's
	// Published to the end of the write. Replayed events are left out. It
	// must be fast and safe for concurrent use.
	DeliveryLatency func(time.Duration)
	// Logger receives the hub's log lines. Nil discards them.
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultQueueBytes    = 4 << 20
	DefaultMaxQueueBytes = 256 << 20
	DefaultSlowGrace     = 5 * time.Second
	DefaultWriteTimeout  = 10 * time.Second
)

func (cfg Config) withDefaults() Config {
	if cfg.QueueBytes <= 0 {
		cfg.QueueBytes = DefaultQueueBytes
	}
	if cfg.MaxQueueBytes <= 0 {
		cfg.MaxQueueBytes = DefaultMaxQueueBytes
	}
	cfg.MaxQueueBytes = max(cfg.MaxQueueBytes, cfg.QueueBytes)
	if cfg.SlowGrace <= 0 {
		cfg.SlowGrace = DefaultSlowGrace
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if len(cfg.HeartbeatMsg) == 0 {
		cfg.Heartbeat = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

// Hub routes published events to the subscriptions of registered clients.
// All methods are safe for concurrent use. Each client has a writer
// goroutine while it has messages to write, and Shutdown waits for all of
// them.
type Hub struct {
	cfg Config
	log *slog.Logger
	// epoch is the origin of the monotonic times that clients store in
	// atomics.
	epoch time.Time

	// pubMu serializes Publish. It guards pubSeq and Subscription.seen.
	pubMu  sync.Mutex
	pubSeq uint64

	// mu guards the fields below. Publish holds it for reading while it
	// delivers, and subscription changes hold it for writing, so that each
	// Publish runs entirely before or entirely after a subscription is
	// added. Lock order: mu, then Client.mu.
	mu    sync.RWMutex
	exact map[string][]*Subscription
	// wild holds the wildcard groups by literal prefix: the segments before
	// the pattern's first wildcard, without the trailing dot, so "" for a
	// pattern that starts with one. Publish looks up each prefix of the
	// topic that ends before a dot, so the number of distinct patterns
	// costs nothing unless they share the topic's prefix.
	wild          map[string][]*wildGroup
	wildByPattern map[string]*wildGroup
	subscriptions int
	clients       map[*Client]struct{}
	closing       bool
	closeCode     int
	closeReason   string

	// watermark is written under mu held for reading by the only Publish
	// in progress, and read atomically under mu held for writing by
	// Subscribe.
	watermark atomic.Int64

	published   atomic.Int64
	delivered   atomic.Int64
	duplicates  atomic.Int64
	slowCloses  atomic.Int64
	writeErrors atomic.Int64
	dropped     atomic.Int64
}

// wildGroup is the list of subscriptions that share one wildcard pattern,
// so that Publish matches each distinct pattern once.
type wildGroup struct {
	pattern topic.Pattern
	prefix  string // key in Hub.wild
	subs    []*Subscription
}

// literalPrefix returns the segments of the wildcard pattern p before its
// first wildcard, without the dot that follows them.
func literalPrefix(p topic.Pattern) string {
	s := p.String()
	for i := 0; i < len(s); i++ {
		if (s[i] == '*' || s[i] == '>') && (i == 0 || s[i-1] == '.') {
			return strings.TrimSuffix(s[:i], ".")
		}
	}
	return s
}

// New returns a hub with cfg's defaults filled in.
func New(cfg Config) *Hub {
	cfg = cfg.withDefaults()
	return &Hub{
		cfg:           cfg,
		log:           cfg.Logger,
		epoch:         time.Now(),
		exact:         make(map[string][]*Subscription),
		wild:          make(map[string][]*wildGroup),
		wildByPattern: make(map[string]*wildGroup),
		clients:       make(map[*Client]struct{}),
	}
}

// Stats is a snapshot of the hub's counters. Counts of events and messages
// are totals since New.
type Stats struct {
	// Clients is the number of registered clients whose connection has not
	// finished closing.
	Clients int
	// Subscriptions is the number of subscriptions of those clients.
	Subscriptions int
	// Published is the number of events given to Publish.
	Published int64
	// Delivered is the number of event notifications queued for clients,
	// live and replayed.
	Delivered int64
	// Duplicates is the number of durable events not delivered to a
	// subscription because its client had them already: replayed, or at or
	// below the resume point.
	Duplicates int64
	// SlowCloses is the number of clients closed as too slow.
	SlowCloses int64
	// WriteErrors is the number of clients dropped because a write failed.
	WriteErrors int64
	// Dropped is the number of queued or held messages discarded because
	// their client was closed.
	Dropped int64
}

// Stats returns the current counters.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	clients, subscriptions := len(h.clients), h.subscriptions
	h.mu.RUnlock()

	return Stats{
		Clients:       clients,
		Subscriptions: subscriptions,
		Published:     h.published.Load(),
		Delivered:     h.delivered.Load(),
		Duplicates:    h.duplicates.Load(),
		SlowCloses:    h.slowCloses.Load(),
		WriteErrors:   h.writeErrors.Load(),
		Dropped:       h.dropped.Load(),
	}
}

// Watermark returns the id of the newest durable event given to Publish, or
// the id set by SetWatermark if that is newer.
func (h *Hub) Watermark() int64 {
	return h.watermark.Load()
}

// SetWatermark sets the watermark to id, normally the newest event id in the
// database at start-up. It may lower the watermark.
func (h *Hub) SetWatermark(id int64) {
	h.mu.Lock()
	defer h.mu.Unlock()

	h.watermark.Store(id)
}

// Publish queues ev for every subscription whose patterns match ev.Topic,
// once per subscription, and raises the watermark to ev.ID for a durable
// event. It never waits for a Sink: a client that falls too far behind is
// closed instead. The relay calls Publish from one goroutine, in commit
// order. Concurrent calls are serialized, in no defined order.
func (h *Hub) Publish(ev Event) {
	prefix := encodePrefix(ev)

	h.pubMu.Lock()
	defer h.pubMu.Unlock()
	h.pubSeq++
	seq := h.pubSeq

	h.mu.RLock()
	defer h.mu.RUnlock()

	if ev.ID > h.watermark.Load() {
		h.watermark.Store(ev.ID)
	}

	published := int64(0)
	if !ev.Published.IsZero() {
		published = ev.Published.UnixNano()
	}

	var delivered, duplicates int64
	count := func(o outcome) {
		switch o {
		case outcomeDelivered:
			delivered++
		case outcomeDuplicate:
			duplicates++
		}
	}
	for _, s := range h.exact[ev.Topic] {
		count(s.deliver(seq, prefix, ev.ID, published))
	}
	matchGroups := func(groups []*wildGroup) {
		for _, g := range groups {
			if !g.pattern.Match(ev.Topic) {
				continue
			}
			for _, s := range g.subs {
				count(s.deliver(seq, prefix, ev.ID, published))
			}
		}
	}
	if len(h.wild) > 0 {
		matchGroups(h.wild[""])
		for i := 0; i < len(ev.Topic); i++ {
			if ev.Topic[i] == '.' {
				matchGroups(h.wild[ev.Topic[:i]])
			}
		}
	}

	h.published.Add(1)
	h.delivered.Add(delivered)
	h.duplicates.Add(duplicates)
}

// Register adds a client that writes to sink. The Client starts a writer
// goroutine whenever messages wait for it, and owns it until Close. attrs are added to
// every log line about the client, such as its id and subject. After
// Shutdown has begun, Register returns a client that is already closing
// with the shutdown's code.
func (h *Hub) Register(sink Sink, attrs ...slog.Attr) *Client {
	args := make([]any, len(attrs))
	for i, a := range attrs {
		args[i] = a
	}
	c := newClient(h, sink, h.log.With(args...))

	h.mu.Lock()
	h.clients[c] = struct{}{}
	closing, code, reason := h.closing, h.closeCode, h.closeReason
	h.mu.Unlock()

	if closing {
		c.Close(code, reason)
	}
	return c
}

// Shutdown closes every client with code and reason (1012 when the server
// is draining) in parallel, and waits until each connection has finished
// its closing handshake. When ctx ends first, it calls CloseNow on the
// remaining connections, waits for their writers, and returns an error
// wrapping ctx's cause. Clients registered during Shutdown are closed and
// waited for too.
func (h *Hub) Shutdown(ctx context.Context, code int, reason string) error {
	return h.ShutdownSpread(ctx, 0, code, reason)
}

// ShutdownSpread is Shutdown with the closes spread over spread: each
// client registered when it begins is closed at a random moment within
// that window, so that clients asked to reconnect elsewhere do not all
// arrive at the other servers at once. Clients registered later are closed
// at once. ctx bounds the whole shutdown, spread included.
func (h *Hub) ShutdownSpread(ctx context.Context, spread time.Duration, code int, reason string) error {
	h.mu.Lock()
	h.closing, h.closeCode, h.closeReason = true, code, reason
	h.mu.Unlock()

	forced := 0
	first := true
	for {
		clients := h.snapshotClients()
		if len(clients) == 0 {
			break
		}

		var timers []*time.Timer
		for _, c := range clients {
			if !first || spread <= 0 {
				c.Close(code, reason)
				continue
			}
			delay := rand.N(spread)
			timers = append(timers, time.AfterFunc(delay, func() { c.Close(code, reason) }))
		}
		first = false
		for _, c := range clients {
			if c.waitOrDrop(ctx) {
				forced++
			}
		}
		for _, t := range timers {
			t.Stop()
		}
	}

	if forced > 0 {
		h.log.Warn("shutdown dropped connections without the closing handshake", "count", forced)
		return fmt.Errorf("shutdown: %d connections dropped without the closing handshake: %w", forced, context.Cause(ctx))
	}
	return nil
}

func (h *Hub) snapshotClients() []*Client {
	h.mu.RLock()
	defer h.mu.RUnlock()

	clients := make([]*Client, 0, len(h.clients))
	for c := range h.clients {
		clients = append(clients, c)
	}
	return clients
}

// forget removes a client whose connection has finished closing.
func (h *Hub) forget(c *Client) {
	h.mu.Lock()
	defer h.mu.Unlock()

	delete(h.clients, c)
}

// now returns the monotonic time since the hub was created, plus one so that
// zero can mean "not set".
func (h *Hub) now() int64 {
	return int64(time.Since(h.epoch)) + 1
}
