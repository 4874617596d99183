package server

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Config holds every setting of a sidecar server. The command line fills it
// from flags and environment variables; Defaults gives the documented
// defaults.
type Config struct {
	DatabaseURL       string
	ListenDatabaseURL string // empty means DatabaseURL
	Addr              string

	APIKeys   []string
	JWTSecret []byte
	// JWTPublicKeyFile and JWKSFile hold the keys of RS256 and ES256
	// tokens; both files are reread every JWTKeyReload.
	JWTPublicKeyFile string
	JWKSFile         string
	JWTKeyReload     time.Duration
	// JWTAudience and JWTIssuer, when set, must match the tokens' "aud"
	// and "iss".
	JWTAudience string
	JWTIssuer   string
	// JWTLeeway is the clock skew allowed on "exp" and "nbf".
	JWTLeeway          time.Duration
	AnonymousSubscribe []string
	AnonymousPublish   []string
	AllowedOrigins     []string
	ListenChannels     []string
	// FastAPIBackboneChannel, when set, is the Postgres channel on which
	// Python servers of fastapi_websocket_pubsub broadcast (EventNotifier
	// in their default setup). The sidecars deliver its messages to their
	// clients and forward their own events to it.
	FastAPIBackboneChannel string

	// Application handles app.<name> calls in-process; it takes precedence
	// over AppRPCURL. Programs that embed the server set it.
	Application Application
	// AppRPCURL is the URL that app.<name> calls are posted to; empty
	// disables them.
	AppRPCURL     string
	AppRPCToken   string
	AppRPCTimeout time.Duration

	Retention     time.Duration
	MaxEventBytes int
	ReplayLimit   int
	MaxInFlight   int
	// MessageRate and MessageBurst bound the requests of one connection
	// per second, as a token bucket.
	MessageRate  float64
	MessageBurst int
	// MaxConnections and MaxConnectionsPerSubject bound the websockets of
	// this instance, in all and per token subject.
	MaxConnections           int
	MaxConnectionsPerSubject int
	// MaxSubscriptions bounds the subscriptions of one connection.
	MaxSubscriptions int

	Heartbeat    time.Duration
	AuthTimeout  time.Duration
	UnreadyAfter time.Duration
	DrainTimeout time.Duration
	// DrainSpread is the window over which a draining server closes its
	// websockets with 1012, each at a random moment, so that clients do
	// not all reconnect to the other instances at once. At most half of
	// DrainTimeout is used, so that the closing handshakes fit in the rest.
	DrainSpread time.Duration

	// MetricsAddr, when set, serves /metrics on a listener of its own
	// instead of the main address. MetricsToken, when set, is the bearer
	// token that scrapes must present.
	MetricsAddr  string
	MetricsToken string

	QueueBytes    int
	MaxQueueBytes int
	SlowGrace     time.Duration
	WriteTimeout  time.Duration

	// NotifyQueueWarn is the fill level of Postgres' notification queue
	// (0 to 1) above which the sidecar logs a warning.
	NotifyQueueWarn float64

	// Migrate applies the embedded migrations at start.
	Migrate bool

	Version string
	Logger  *slog.Logger
}

// Defaults returns the documented default configuration.
func Defaults() Config {
	return Config{
		Addr:                     ":7070",
		AppRPCTimeout:            10 * time.Second,
		JWTKeyReload:             10 * time.Second,
		JWTLeeway:                30 * time.Second,
		Retention:                24 * time.Hour,
		MaxEventBytes:            1 << 20,
		ReplayLimit:              10000,
		MaxInFlight:              1024,
		MaxSubscriptions:         1000,
		MaxConnections:           50000,
		MaxConnectionsPerSubject: 100,
		MessageRate:              100,
		MessageBurst:             1024,
		Heartbeat:                25 * time.Second,
		AuthTimeout:              10 * time.Second,
		UnreadyAfter:             30 * time.Second,
		DrainTimeout:             15 * time.Second,
		DrainSpread:              7 * time.Second,
		QueueBytes:               4 << 20,
		MaxQueueBytes:            256 << 20,
		SlowGrace:                5 * time.Second,
		WriteTimeout:             10 * time.Second,
		NotifyQueueWarn:          0.1,
		Migrate:                  true,
		Version:                  "dev",
	}
}

// Validate reports the first setting that cannot work, naming it.
func (c *Config) Validate() error {
	var errs []error
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("--database-url (DATABASE_URL) is not set: give the Postgres URL, for example postgres://user:pass@host:5432/db"))
	}
	if len(c.JWTSecret) > 0 && len(c.JWTSecret) < 16 {
		errs = append(errs, fmt.Errorf("--jwt-secret is %d bytes: use at least 16 random bytes, and 32 or more for HS256", len(c.JWTSecret)))
	}
	if c.JWTLeeway < 0 || c.JWTLeeway > 5*time.Minute {
		errs = append(errs, fmt.Errorf("--jwt-leeway is %s: it must be between 0s and 5m", c.JWTLeeway))
	}
	if err := checkOrigins(c.AllowedOrigins); err != nil {
		errs = append(errs, err)
	}
	if !(c.MessageRate > 0) || math.IsInf(c.MessageRate, 0) || c.MessageBurst < 1 {
		errs = append(errs, fmt.Errorf("--message-rate is %g and --message-burst %d: both must be positive", c.MessageRate, c.MessageBurst))
	}
	if c.MaxConnections < 1 || c.MaxConnectionsPerSubject < 1 {
		errs = append(errs, fmt.Errorf("--max-connections is %d and --max-connections-per-subject %d: both must be at least 1", c.MaxConnections, c.MaxConnectionsPerSubject))
	}
	if c.MaxSubscriptions < 1 {
		errs = append(errs, fmt.Errorf("--max-subscriptions is %d: it must be at least 1", c.MaxSubscriptions))
	}
	if c.NotifyQueueWarn <= 0 || c.NotifyQueueWarn > 1 {
		errs = append(errs, fmt.Errorf("--notify-queue-warn is %g: it must be above 0 and at most 1", c.NotifyQueueWarn))
	}
	if c.MaxEventBytes < 1024 {
		errs = append(errs, fmt.Errorf("--max-event-bytes is %d: it must be at least 1024", c.MaxEventBytes))
	}
	if c.Heartbeat < 5*time.Second {
		errs = append(errs, fmt.Errorf("--heartbeat is %s: it must be at least 5s", c.Heartbeat))
	}
	if c.Retention < time.Minute {
		errs = append(errs, fmt.Errorf("--retention is %s: it must be at least 1m", c.Retention))
	}
	if c.ReplayLimit < 1 {
		errs = append(errs, fmt.Errorf("--replay-limit is %d: it must be at least 1", c.ReplayLimit))
	}
	if c.MaxInFlight < 1 {
		errs = append(errs, fmt.Errorf("--max-in-flight is %d: it must be at least 1", c.MaxInFlight))
	}
	if c.QueueBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("--client-queue-bytes is %d: it must be at least 65536", c.QueueBytes))
	}
	if c.MaxQueueBytes < c.QueueBytes+c.MaxEventBytes {
		errs = append(errs, fmt.Errorf("--client-max-queue-bytes is %d: it must be at least --client-queue-bytes plus --max-event-bytes (%d)", c.MaxQueueBytes, c.QueueBytes+c.MaxEventBytes))
	}
	if c.DrainSpread < 0 {
		errs = append(errs, fmt.Errorf("--drain-spread is %s: it must be at least 0s", c.DrainSpread))
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{
		{"--app-rpc-timeout", c.AppRPCTimeout}, {"--auth-timeout", c.AuthTimeout}, {"--unready-after", c.UnreadyAfter}, {"--drain-timeout", c.DrainTimeout},
		{"--slow-client-grace", c.SlowGrace}, {"--write-timeout", c.WriteTimeout}, {"--jwt-key-reload", c.JWTKeyReload},
	} {
		if d.value <= 0 {
			errs = append(errs, fmt.Errorf("%s is %s: it must be positive", d.name, d.value))
		}
	}
	return errors.Join(errs...)
}

// drainSpread returns the spread that a drain uses: DrainSpread, cut to
// half of DrainTimeout.
func (c *Config) drainSpread() time.Duration {
	return min(c.DrainSpread, c.DrainTimeout/2)
}

// readLimit is the largest websocket message a client may send.
func (c *Config) readLimit() int64 {
	return int64(c.MaxEventBytes) + 64<<10
}
