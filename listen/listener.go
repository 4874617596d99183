package listen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// Defaults for the zero values of Config fields.
const (
	DefaultBuffer         = 65536
	DefaultPingInterval   = 5 * time.Second
	DefaultPingTimeout    = 3 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultMinBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
)

const (
	// healthyAfter is how long a connection must last before the backoff
	// starts again at MinBackoff. A connection that dies sooner counts as
	// one more failure, so a connect-then-die cycle cannot spin at
	// MinBackoff.
	healthyAfter = 10 * time.Second

	// closeTimeout bounds closing a connection, which sends a Terminate
	// message and can block on a dead peer.
	closeTimeout = 2 * time.Second

	// logInterval is the minimum time between two log lines about repeated
	// connect failures or repeated drops.
	logInterval = 30 * time.Second

	// owedRetry is how long a wait may last while a Resync is owed but the
	// event buffer is full, so the consumer gets it soon after it catches
	// up even when no notification arrives.
	owedRetry = 100 * time.Millisecond
)

// ErrRunning is returned by Run when Run was already called on the Listener.
var ErrRunning = errors.New("listen: Run already called")

// Kind is the type of an Event.
type Kind int

const (
	// Notification is a NOTIFY received on one of the channels.
	Notification Kind = iota + 1

	// Resync means notifications may have been missed, because the
	// Listener (re)connected or dropped notifications on a full buffer.
	// The consumer should read what it missed from the database.
	Resync
)

func (k Kind) String() string {
	switch k {
	case Notification:
		return "notification"
	case Resync:
		return "resync"
	default:
		return fmt.Sprintf("Kind(%d)", int(k))
	}
}

// Event is a notification or a Resync. Channel and Payload are set only for
// notifications. Generation is the Status.Generation of the connection that
// received the notification or that the Resync announces.
type Event struct {
	Kind       Kind
	Channel    string
	Payload    string
	Generation uint64
}

// Config configures a Listener. Connect and Channels are required.
type Config struct {
	// Connect opens a new connection. It must return a dedicated
	// connection, not one borrowed from a pool, because LISTEN state stays
	// on the session: build it with pgx.ConnectConfig from a copy of the
	// pool's ConnConfig, or Hijack a pooled connection. Run calls Connect
	// from its own goroutine, takes ownership of the connection and closes
	// it. The config must leave OnNotification nil, because only then does
	// pgx buffer notifications for WaitForNotification.
	//
	// The connection must reach the primary directly. A hot standby rejects
	// LISTEN, and PgBouncer in transaction mode does not keep it.
	Connect func(ctx context.Context) (*pgx.Conn, error)

	// Channels are listened to on every connect. Each must pass
	// ValidateChannel, and none may repeat.
	Channels []string

	// Buffer is the capacity of the Events channel. Default DefaultBuffer.
	Buffer int

	// PingInterval is how long the connection may stay silent before the
	// Listener checks it with "select 1". Default DefaultPingInterval.
	PingInterval time.Duration

	// PingTimeout bounds that check. Default DefaultPingTimeout.
	PingTimeout time.Duration

	// ConnectTimeout bounds one Connect call plus the LISTEN statements.
	// Default DefaultConnectTimeout.
	ConnectTimeout time.Duration

	// MinBackoff and MaxBackoff bound the delay between connect attempts.
	// The delay starts at MinBackoff, doubles per failure, is multiplied by
	// a random factor between 0.5 and 1.5, and never exceeds MaxBackoff.
	// Defaults DefaultMinBackoff and DefaultMaxBackoff.
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// Logger receives connects, disconnects, repeated failures (at most one
	// line per 30 s) and drops. Nil discards the output.
	Logger *slog.Logger
}

// Listener keeps one dedicated Postgres connection listening on a fixed set
// of channels and turns what it receives into Events.
//
// Run owns the connection. Only the goroutine that calls Run touches it,
// and Run closes it before returning. Events, Ready and Status are safe to
// call from any goroutine at any time.
type Listener struct {
	cfg      Config
	log      *slog.Logger
	channels []string

	out    *outbox
	status tracker

	ready     chan struct{}
	readyOnce sync.Once
	running   atomic.Bool

	// rand returns a value in [0, 1) for the backoff jitter. Tests replace
	// it to make delays exact.
	rand func() float64
}

// New validates cfg, fills in defaults and returns a Listener that is not
// yet connected. Call Run to connect.
func New(cfg Config) (*Listener, error) {
	if cfg.Connect == nil {
		return nil, errors.New("listen: Config.Connect is missing")
	}
	if len(cfg.Channels) == 0 {
		return nil, errors.New("listen: Config.Channels is empty, want at least one channel")
	}

	for i, ch := range cfg.Channels {
		if err := ValidateChannel(ch); err != nil {
			return nil, fmt.Errorf("listen: Config.Channels[%d]: %w", i, err)
		}
		if slices.Contains(cfg.Channels[:i], ch) {
			return nil, fmt.Errorf("listen: Config.Channels[%d]: channel %q is listed twice", i, ch)
		}
	}

	if err := applyDefaults(&cfg); err != nil {
		return nil, err
	}

	l := &Listener{
		cfg:      cfg,
		log:      cfg.Logger,
		channels: slices.Clone(cfg.Channels),
		out:      newOutbox(cfg.Buffer),
		ready:    make(chan struct{}),
		rand:     rand.Float64,
	}
	l.status.s.Since = time.Now()
	return l, nil
}

func applyDefaults(cfg *Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}

	if cfg.Buffer < 0 {
		return fmt.Errorf("listen: Config.Buffer is negative: %d", cfg.Buffer)
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = DefaultBuffer
	}

	durations := []struct {
		name  string
		value *time.Duration
		def   time.Duration
	}{
		{"PingInterval", &cfg.PingInterval, DefaultPingInterval},
		{"PingTimeout", &cfg.PingTimeout, DefaultPingTimeout},
		{"ConnectTimeout", &cfg.ConnectTimeout, DefaultConnectTimeout},
		{"MinBackoff", &cfg.MinBackoff, DefaultMinBackoff},
		{"MaxBackoff", &cfg.MaxBackoff, DefaultMaxBackoff},
	}
	for _, d := range durations {
		if *d.value < 0 {
			return fmt.Errorf("listen: Config.%s is negative: %v", d.name, *d.value)
		}
		if *d.value == 0 {
			*d.value = d.def
		}
	}

	if cfg.MinBackoff > cfg.MaxBackoff {
		return fmt.Errorf("listen: Config.MinBackoff %v is greater than MaxBackoff %v", cfg.MinBackoff, cfg.MaxBackoff)
	}

	return nil
}

// Events returns the channel on which Run delivers events, in the order
// received. Each connection's events start with a Resync. Run never blocks
// on this channel: when it is full, notifications are dropped and a Resync
// precedes the next notification delivered. Run closes the channel when it
// returns.
func (l *Listener) Events() <-chan Event {
	return l.out.events
}

// Ready returns a channel that is closed once the first connection has
// listened to every channel. It stays closed after later disconnects, so
// use Status for the current state.
func (l *Listener) Ready() <-chan struct{} {
	return l.ready
}

// Status returns a snapshot of the connection state.
func (l *Listener) Status() Status {
	s := l.status.snapshot()
	s.Dropped = l.out.dropped.Load()
	return s
}
