package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/coder/websocket"
)

var (
	// ErrHistoryExpired reports that a Stream could not resume because the
	// sidecar refused its resume point with CodeHistoryExpired. The
	// application must reload its state from its own source.
	ErrHistoryExpired = errors.New("event history expired: reload the state from the application")

	// ErrNotConnected is returned by Client.Call and Client.Publish while
	// the Client has no open connection.
	ErrNotConnected = errors.New("not connected to the sidecar")
)

// Defaults for the zero values in ReconnectOptions.
const (
	DefaultMinBackoff = 100 * time.Millisecond
	DefaultMaxBackoff = 10 * time.Second
)

const (
	// backoffResetAfter is how long a connection must stay open before the
	// next reconnect starts again from MinBackoff.
	backoffResetAfter = 10 * time.Second

	// dialTimeout bounds one connection attempt: the upgrade, the welcome
	// notification and, with Options.AuthMessage, the auth request.
	dialTimeout = 10 * time.Second
)

// ReconnectOptions configures Connect.
type ReconnectOptions struct {
	// Options is passed to every Dial. Its Handlers are therefore
	// registered on every connection, and its EventBuffer is the default
	// capacity of each Stream's Events channel.
	Options

	// MinBackoff and MaxBackoff bound the wait between connection
	// attempts. The wait doubles after each failure from MinBackoff, is
	// multiplied by a random factor between 0.5 and 1.5, and never exceeds
	// MaxBackoff. It starts from MinBackoff again after a connection has
	// stayed open for 10 seconds. After the sidecar closed the connection
	// with code 1012 (draining), the first attempt comes at once, after a
	// random delay of at most MinBackoff/2. Zero means DefaultMinBackoff and
	// DefaultMaxBackoff.
	MinBackoff, MaxBackoff time.Duration

	// OnState, when set, is called on every change of the connection's
	// state, from the Client's connection goroutine and in order. It must
	// return quickly and must not call Client.Close.
	OnState func(State)
}

// StateKind says what a State reports.
type StateKind int

// The kinds of State, in the order a connection goes through them.
const (
	Connecting   StateKind = iota + 1 // an attempt to connect begins
	Connected                         // the welcome notification arrived
	Disconnected                      // an attempt failed or the connection ended
)

// String returns the kind's name in lower case.
func (k StateKind) String() string {
	switch k {
	case Connecting:
		return "connecting"
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	}
	return fmt.Sprintf("StateKind(%d)", int(k))
}

// State is a change of a Client's connection state.
type State struct {
	Kind StateKind

	// Welcome is the new connection's welcome notification, set when Kind
	// is Connected.
	Welcome Welcome

	// Err is why the attempt failed or the connection ended, set when Kind
	// is Disconnected. CloseStatus extracts the sidecar's close code.
	Err error

	// Retry is the wait before the next attempt, set when Kind is
	// Disconnected.
	Retry time.Duration
}

// Client is a connection to the sidecar that reconnects by itself and
// restores its Streams on every new connection. All its methods are safe
// for concurrent use.
//
// A Client owns a goroutine that connects and one goroutine per Stream.
// They stop when the context given to Connect ends or Close is called.
type Client struct {
	url  string
	opts ReconnectOptions
	log  *slog.Logger

	ctx    context.Context // ends when the Client stops
	cancel context.CancelFunc
	done   chan struct{} // closed when every goroutine of the Client has stopped

	mu       sync.Mutex
	conn     *Conn         // the open connection, nil between connections
	changed  chan struct{} // closed and replaced whenever conn changes
	stopping bool          // set once no new Stream may start
	streams  sync.WaitGroup
}

// Connect returns a Client that connects to rawURL, for example
// ws://127.0.0.1:7070/v1/ws, in the background. It returns at once and
// keeps reconnecting, with the backoff described on ReconnectOptions, until
// ctx ends or Close is called. Invalid token options in opts.Options are
// reported through OnState on every attempt.
func Connect(ctx context.Context, rawURL string, opts ReconnectOptions) *Client {
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = DefaultMinBackoff
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = DefaultMaxBackoff
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = opts.MinBackoff
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	lifetime, cancel := context.WithCancel(ctx)
	c := &Client{
		url:     rawURL,
		opts:    opts,
		log:     log,
		ctx:     lifetime,
		cancel:  cancel,
		done:    make(chan struct{}),
		changed: make(chan struct{}),
	}
	go c.run()
	return c
}

// Close stops reconnecting, closes the current connection with code 1000
// and closes every Stream's Events channel. It waits for the Client's
// goroutines and always returns nil. Calling Close again has no effect.
func (c *Client) Close() error {
	c.cancel()
	<-c.done
	return nil
}

// Done returns a channel that is closed when the Client has stopped, after
// Close or when the context given to Connect ended.
func (c *Client) Done() <-chan struct{} {
	return c.done
}

// Conn returns the open connection, or nil between connections. The
// connection may end at any moment, so the caller must not keep it or
// close it.
func (c *Client) Conn() *Conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn
}

// Call sends a request on the open connection, as Conn.Call does. Without
// one it returns an error that matches ErrNotConnected at once. A request
// in flight when the connection ends fails with an error that matches
// ErrClosed, and it may or may not have taken effect.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	conn := c.Conn()
	if conn == nil {
		return fmt.Errorf("%s: %w", method, ErrNotConnected)
	}
	return conn.Call(ctx, method, params, result)
}

// Publish publishes on the open connection, as Conn.Publish does, and fails
// as Call does when there is none.
func (c *Client) Publish(ctx context.Context, topic string, data any, durable bool) (int64, error) {
	conn := c.Conn()
	if conn == nil {
		return 0, fmt.Errorf("publish: %w", ErrNotConnected)
	}
	return conn.Publish(ctx, topic, data, durable)
}

// run connects and reconnects until the Client stops, then waits for the
// Streams and closes done.
func (c *Client) run() {
	defer close(c.done)
	defer c.waitStreams()

	b := newBackoff(c.opts.MinBackoff, c.opts.MaxBackoff, rand.Float64)
	var delay time.Duration
	for {
		if !c.sleep(delay) {
			return
		}

		c.emit(State{Kind: Connecting})
		dialCtx, cancel := context.WithTimeout(c.ctx, dialTimeout)
		conn, err := Dial(dialCtx, c.url, c.opts.Options)
		cancel()
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			delay = b.next()
			c.log.Warn("could not connect to the sidecar; retrying", "url", redactURL(c.url), "retry_in", delay, "error", err)
			c.emit(State{Kind: Disconnected, Err: err, Retry: delay})
			continue
		}

		opened := time.Now()
		c.log.Info("connected to the sidecar", "url", redactURL(c.url), "client_id", conn.Welcome().ClientID)
		c.emit(State{Kind: Connected, Welcome: conn.Welcome()})
		c.setConn(conn)

		select {
		case <-conn.Done():
		case <-c.ctx.Done():
		}
		c.setConn(nil)
		_ = conn.Close() // after the connection ended, this only releases its goroutines
		if c.ctx.Err() != nil {
			return
		}

		err = conn.Err()
		if time.Since(opened) >= backoffResetAfter {
			b.reset()
		}
		if CloseStatus(err) == websocket.StatusServiceRestart {
			delay = b.immediate()
		} else {
			delay = b.next()
		}
		c.log.Warn("connection to the sidecar ended; reconnecting", "url", redactURL(c.url), "close_code", int(CloseStatus(err)), "retry_in", delay, "error", err)
		c.emit(State{Kind: Disconnected, Err: err, Retry: delay})
	}
}

// sleep waits for d and reports whether the Client is still running.
func (c *Client) sleep(d time.Duration) bool {
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

func (c *Client) emit(s State) {
	if c.opts.OnState != nil {
		c.opts.OnState(s)
	}
}

// setConn replaces the open connection and wakes the Streams waiting for
// one.
func (c *Client) setConn(conn *Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn = conn
	close(c.changed)
	c.changed = make(chan struct{})
}

// nextConn waits for an open connection other than prev, until ctx ends.
func (c *Client) nextConn(ctx context.Context, prev *Conn) (*Conn, error) {
	for {
		c.mu.Lock()
		conn, changed := c.conn, c.changed
		c.mu.Unlock()
		if conn != nil && conn != prev {
			return conn, nil
		}

		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// startStream registers a Stream goroutine, unless the Client is stopping.
func (c *Client) startStream() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopping || c.ctx.Err() != nil {
		return false
	}
	c.streams.Add(1)
	return true
}

func (c *Client) waitStreams() {
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	c.streams.Wait()
}

// backoff computes the waits between connection attempts. It is not safe
// for concurrent use.
type backoff struct {
	min, max time.Duration
	failures int
	random   func() float64 // uniform in [0, 1)
}

func newBackoff(minDelay, maxDelay time.Duration, random func() float64) *backoff {
	return &backoff{min: minDelay, max: maxDelay, random: random}
}

// next returns the wait after one more failure: min doubled per earlier
// failure, times a random factor in [0.5, 1.5), at most max.
func (b *backoff) next() time.Duration {
	base := b.max
	if b.failures < 62 && b.min<<b.failures > 0 && b.min<<b.failures < b.max {
		base = b.min << b.failures
		b.failures++
	}
	return min(time.Duration(float64(base)*(0.5+b.random())), b.max)
}

// immediate returns a short random wait, below min/2, for a retry that
// should come at once but not at the same moment as every other client's.
// It counts as no failure.
func (b *backoff) immediate() time.Duration {
	return time.Duration(float64(b.min/2) * b.random())
}

// reset makes the next wait start from min again.
func (b *backoff) reset() {
	b.failures = 0
}

// Stream is a subscription that a Client restores on every new connection.
// Its methods are safe for concurrent use.
//
// After a reconnect, the Stream subscribes again with WithSince set to the
// id of the last durable event it delivered, or to the head of its first
// subscription when it has delivered none, and WithEpoch set to the epoch
// it saw. It therefore delivers every durable event once, in id order,
// across reconnects. Ephemeral events are delivered only while connected.
type Stream struct {
	client   *Client
	patterns []string
	buffer   int

	events chan Event
	reload chan error

	ctx    context.Context // ends on Unsubscribe or when the Client stops
	cancel context.CancelFunc
	done   chan struct{} // closed when run has returned and events is closed

	mu     sync.Mutex
	since  *int64 // resume point for the next subscribe, nil for live only
	epoch  string // epoch of since, empty when unknown
	lastID int64  // last durable id delivered since the start or the last reload
	sub    *Subscription
}

// Subscribe starts a Stream of events whose topic matches any of patterns.
// It waits until a connection is open and the sidecar has confirmed the
// subscription on it, or until ctx ends. WithSince and WithEpoch set where
// the first subscription resumes, and WithBuffer sets the capacity of the
// Events channel.
//
// A rejected first subscription, such as an invalid or forbidden pattern,
// is returned as an error that wraps *RPCError. A refused WithSince is
// returned as an error that also matches ErrHistoryExpired, and no Stream
// starts.
func (c *Client) Subscribe(ctx context.Context, patterns []string, opts ...SubscribeOption) (*Stream, error) {
	cfg := subscribeConfig{buffer: c.opts.EventBuffer}
	if cfg.buffer <= 0 {
		cfg.buffer = DefaultEventBuffer
	}
	for _, opt := range opts {
		opt(&cfg)
	}

	if !c.startStream() {
		return nil, fmt.Errorf("subscribe: the client is closed: %w", ErrClosed)
	}
	streamCtx, cancel := context.WithCancel(c.ctx)
	s := &Stream{
		client:   c,
		patterns: append([]string(nil), patterns...),
		buffer:   cfg.buffer,
		events:   make(chan Event, cfg.buffer),
		reload:   make(chan error, 1),
		ctx:      streamCtx,
		cancel:   cancel,
		done:     make(chan struct{}),
		since:    cfg.since,
		epoch:    cfg.epoch,
	}

	first := make(chan error, 1)
	go func() {
		defer c.streams.Done()
		s.run(first)
	}()

	select {
	case err := <-first:
		if err != nil {
			s.cancel()
			<-s.done
			return nil, err
		}
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("subscribe: the client is closed: %w", ErrClosed)
	case <-ctx.Done():
		// The sidecar may have confirmed the subscription meanwhile.
		cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), dialTimeout)
		defer cancel()
		_ = s.Unsubscribe(cleanup)
		return nil, fmt.Errorf("subscribe: %w", ctx.Err())
	}
}

// Events returns the channel of events, in the order the sidecar sent
// them. It stays open across reconnects and is closed after Unsubscribe or
// when the Client stops. The consumer must keep draining it, as described
// on Subscription.Events.
func (s *Stream) Events() <-chan Event { return s.events }

// Reload returns a channel that receives an error matching
// ErrHistoryExpired when the Stream could not resume after a reconnect. The
// events in between are lost to this Stream, so the application must
// reload its state. The Stream continues with live events from the new
// head of the sidecar, which it receives after the error is sent. The
// channel holds one error, and a further one is dropped while it is full.
func (s *Stream) Reload() <-chan error { return s.reload }

// LastID returns the id of the last durable event that the Stream
// delivered, or 0 if it has delivered none since it started or since its
// last reload.
func (s *Stream) LastID() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastID
}

// Epoch returns the epoch of the Stream's current subscription.
func (s *Stream) Epoch() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.epoch
}

// Unsubscribe ends the Stream: it closes the Events channel, dropping
// events still in transit, and sends an unsubscribe request when a
// connection is open. It waits for the sidecar's confirmation unless ctx
// ends first. Unsubscribing twice is not an error.
func (s *Stream) Unsubscribe(ctx context.Context) error {
	s.cancel()
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("unsubscribe: %w", ctx.Err())
	}

	s.mu.Lock()
	sub := s.sub
	s.sub = nil
	s.mu.Unlock()
	if sub == nil {
		return nil
	}
	if err := sub.Unsubscribe(ctx); err != nil && !errors.Is(err, ErrClosed) {
		return err
	}
	return nil
}

// run subscribes on every new connection and forwards events until the
// Stream ends. It reports the outcome of the first subscription on first.
func (s *Stream) run(first chan<- error) {
	defer close(s.done)
	defer close(s.events)

	var prev *Conn
	for {
		conn, err := s.client.nextConn(s.ctx, prev)
		if err != nil {
			return
		}
		prev = conn

		sub, err := s.subscribe(conn, first != nil)
		if err != nil {
			if first != nil && s.ctx.Err() == nil && !errors.Is(err, ErrClosed) {
				first <- err
				return
			}
			continue // the Stream ended, or the next connection gets another try
		}
		if first != nil {
			first <- nil
			first = nil
		}

		s.forward(sub)
		if s.ctx.Err() != nil {
			return
		}
	}
}

// subscribe subscribes on conn from the Stream's resume point. When the
// sidecar refuses that point after a reconnect, it sends the refusal on
// Reload and subscribes for live events. Other refusals are retried on the
// same connection after a backoff, because the same patterns were allowed
// before. On the first subscription it returns every refusal instead.
func (s *Stream) subscribe(conn *Conn, isFirst bool) (*Subscription, error) {
	b := newBackoff(s.client.opts.MinBackoff, s.client.opts.MaxBackoff, rand.Float64)
	for {
		s.mu.Lock()
		opts := []SubscribeOption{WithBuffer(s.buffer)}
		since := s.since
		if since != nil {
			opts = append(opts, WithSince(*since))
			if s.epoch != "" {
				opts = append(opts, WithEpoch(s.epoch))
			}
		}
		s.mu.Unlock()

		sub, err := conn.Subscribe(s.ctx, s.patterns, opts...)
		if err == nil {
			s.mu.Lock()
			s.sub = sub
			s.epoch = sub.Epoch()
			if s.since == nil {
				head := sub.Head()
				s.since = &head
			}
			s.mu.Unlock()
			return sub, nil
		}

		var rpcErr *RPCError
		switch {
		case !errors.As(err, &rpcErr):
			return nil, err // the connection or the Stream ended
		case rpcErr.Code == CodeHistoryExpired:
			err = fmt.Errorf("resume %v after id %d: %w: %w", s.patterns, *since, ErrHistoryExpired, err)
			if isFirst {
				return nil, err
			}
			s.client.log.Warn("could not resume a stream; the application must reload its state", "patterns", s.patterns, "since", *since, "error", err)
			s.resetResumePoint()
			select {
			case s.reload <- err:
			default:
			}
			continue
		case isFirst:
			return nil, err
		}

		delay := b.next()
		s.client.log.Warn("the sidecar rejected a resubscription; retrying", "patterns", s.patterns, "retry_in", delay, "error", err)
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-conn.Done():
			timer.Stop()
			return nil, conn.Err()
		case <-s.ctx.Done():
			timer.Stop()
			return nil, s.ctx.Err()
		}
	}
}

// resetResumePoint makes the next subscription start with live events.
func (s *Stream) resetResumePoint() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.since = nil
	s.epoch = ""
	s.lastID = 0
}

// forward sends the events of sub to the consumer until sub ends, which
// happens when its connection ends, or until the Stream ends. A durable
// event at or below the last delivered id is dropped: a resumed
// subscription never sends one, so this only guards against a sidecar
// that does.
func (s *Stream) forward(sub *Subscription) {
	for {
		var ev Event
		var ok bool
		select {
		case ev, ok = <-sub.Events():
			if !ok {
				return
			}
		case <-s.ctx.Done():
			return
		}

		if ev.ID != 0 && !s.advance(ev.ID) {
			s.client.log.Debug("dropped a durable event delivered before", "topic", ev.Topic, "id", ev.ID)
			continue
		}

		select {
		case s.events <- ev:
		case <-s.ctx.Done():
			return
		}
	}
}

// advance records id as delivered and reports whether it is new.
func (s *Stream) advance(id int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastID != 0 && id <= s.lastID {
		return false
	}
	s.lastID = id
	s.since = &id
	return true
}
