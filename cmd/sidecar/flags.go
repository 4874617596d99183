package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pgsidecar/sidecar/server"
)

// envFlags binds flags to environment variables: a flag given on the
// command line wins over its variable.
type envFlags struct {
	fs  *flag.FlagSet
	env map[string]string // flag name to variable name
}

func newEnvFlags(name string) *envFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return &envFlags{fs: fs, env: map[string]string{}}
}

func (f *envFlags) bind(name, env string) {
	f.env[name] = env
	fl := f.fs.Lookup(name)
	fl.Usage += " (env " + env + ")"
}

// parse parses args, then fills every flag not given from its variable.
// For -h or -help it writes the full usage to the flag set's output and
// returns flag.ErrHelp. It writes nothing else. The error for an invalid
// value names the flag or variable, the value, shown as (secret) for a
// secret, and the form expected. A mistake in args is a commandLineError.
func (f *envFlags) parse(args []string, getenv func(string) string) error {
	if err := f.parseArgs(args); err != nil {
		return err
	}
	given := map[string]bool{}
	f.fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })

	for _, name := range slices.Sorted(maps.Keys(f.env)) {
		env := f.env[name]
		v := getenv(env)
		if given[name] || v == "" {
			continue
		}
		if err := f.fs.Set(name, v); err != nil {
			return invalidValueError(f.fs.Lookup(name).Value, v, "environment variable "+env, err)
		}
	}
	return nil
}

// parseArgs parses args with the flag set. flag.FlagSet.Parse reports an
// invalid value as "parse error" and then prints the whole usage. So while
// it runs, its output is discarded, its usage does nothing, and each
// flag's Value is wrapped to keep the first failure with its flag. The
// original values are back in place when parseArgs returns.
func (f *envFlags) parseArgs(args []string) error {
	output, usage := f.fs.Output(), f.fs.Usage
	values := map[string]flag.Value{}
	var invalid error
	f.fs.VisitAll(func(fl *flag.Flag) {
		values[fl.Name] = fl.Value
		fl.Value = checkedValue{Value: fl.Value, name: fl.Name, invalid: &invalid}
	})
	f.fs.SetOutput(io.Discard)
	f.fs.Usage = func() {}

	err := f.fs.Parse(args)

	f.fs.VisitAll(func(fl *flag.Flag) { fl.Value = values[fl.Name] })
	f.fs.SetOutput(output)
	f.fs.Usage = usage

	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		f.fs.Usage()
		return err
	case invalid != nil:
		return commandLineError{invalid}
	}
	return commandLineError{err}
}

// checkedValue is a flag's Value while parseArgs runs. Set stores the
// first failure in invalid, with the flag's name and the expected form.
type checkedValue struct {
	flag.Value
	name    string
	invalid *error
}

func (v checkedValue) Set(s string) error {
	err := v.Value.Set(s)
	if err != nil && *v.invalid == nil {
		*v.invalid = invalidValueError(v.Value, s, "--"+v.name, err)
	}
	return err
}

// IsBoolFlag reports whether the wrapped Value is a boolean flag, which
// flag.FlagSet.Parse lets stand without a value.
func (v checkedValue) IsBoolFlag() bool {
	b, ok := v.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// commandLineError is a mistake in a command's arguments, such as an
// unknown flag or an invalid flag value. The command's -h output lists the
// flags that it takes.
type commandLineError struct{ err error }

func (e commandLineError) Error() string { return e.err.Error() }
func (e commandLineError) Unwrap() error { return e.err }

// invalidValueError returns the error for value, which v's Set rejected
// with err, given as source (a flag such as --drain-timeout or an
// environment variable). A secret's value is shown as (secret).
func invalidValueError(v flag.Value, value, source string, err error) error {
	quoted := strconv.Quote(value)
	if isSecretValue(v) {
		quoted = "(secret)"
	}

	form := expectedForm(v)
	if form == "" {
		return fmt.Errorf("invalid value %s for %s: %w", quoted, source, err)
	}
	// The flag package's own values fail with the bare message
	// "parse error", which the expected form replaces. Other messages,
	// such as "value out of range", say more and are kept.
	if reason := err.Error(); reason != "parse error" {
		return fmt.Errorf("invalid value %s for %s: %s, expected %s", quoted, source, reason, form)
	}
	return fmt.Errorf("invalid value %s for %s: expected %s", quoted, source, form)
}

// expectedForm describes the values that v accepts, by the type of value
// that v holds, or returns "" for other types of value.
func expectedForm(v flag.Value) string {
	getter, ok := v.(flag.Getter)
	if !ok {
		return ""
	}
	switch getter.Get().(type) {
	case time.Duration:
		return "a duration such as 15s or 2m"
	case int, int64, uint, uint64:
		return "a whole number"
	case float64:
		return "a number such as 20 or 0.5"
	case bool:
		return "true or false"
	}
	return ""
}

// listValue is a comma-separated list flag.
type listValue struct{ list *[]string }

func (l listValue) String() string {
	if l.list == nil {
		return ""
	}
	return strings.Join(*l.list, ",")
}

func (l listValue) Set(s string) error {
	*l.list = nil
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			*l.list = append(*l.list, item)
		}
	}
	return nil
}

// secretValue is a flag whose value is never printed in help or errors.
type secretValue struct{ b *[]byte }

func (s secretValue) String() string { return "" }
func (s secretValue) Set(v string) error {
	*s.b = []byte(v)
	return nil
}

// secretString is a string flag whose value is never printed.
type secretString struct{ s *string }

func (s secretString) String() string { return "" }
func (s secretString) Set(v string) error {
	*s.s = v
	return nil
}

// isSecret reports whether the value of fl is a secret, which is never printed.
func isSecret(fl *flag.Flag) bool { return isSecretValue(fl.Value) }

// isSecretValue reports whether v is a secret, which is never printed.
func isSecretValue(v flag.Value) bool {
	switch v.(type) {
	case secretValue, secretString:
		return true
	}
	return false
}

// serverFlags declares every server setting on f, with its variable.
func serverFlags(f *envFlags, cfg *server.Config) (logFormat, logLevel *string) {
	fs := f.fs
	str := func(p *string, name, env, usage string) {
		fs.StringVar(p, name, *p, usage)
		f.bind(name, env)
	}
	list := func(p *[]string, name, env, usage string) {
		fs.Var(listValue{p}, name, usage)
		f.bind(name, env)
	}
	dur := func(p *time.Duration, name, env, usage string) {
		fs.DurationVar(p, name, *p, usage)
		f.bind(name, env)
	}
	num := func(p *int, name, env, usage string) {
		fs.IntVar(p, name, *p, usage)
		f.bind(name, env)
	}

	str(&cfg.DatabaseURL, "database-url", "DATABASE_URL", "Postgres URL for queries and, unless --listen-database-url is set, for the LISTEN connection")
	str(&cfg.ListenDatabaseURL, "listen-database-url", "SIDECAR_LISTEN_DATABASE_URL", "direct Postgres URL for the LISTEN connection, when queries go through a transaction pooler")
	str(&cfg.Addr, "addr", "SIDECAR_ADDR", "HTTP listen address")
	list(&cfg.APIKeys, "api-keys", "SIDECAR_API_KEYS", "comma-separated keys for the application's HTTP API")
	fs.Var(secretValue{&cfg.JWTSecret}, "jwt-secret", "HS256 secret for client tokens")
	f.bind("jwt-secret", "SIDECAR_JWT_SECRET")
	str(&cfg.JWTPublicKeyFile, "jwt-public-key-file", "SIDECAR_JWT_PUBLIC_KEY_FILE", "PEM file of RSA or EC P-256 public keys for RS256 and ES256 client tokens")
	str(&cfg.JWKSFile, "jwks-file", "SIDECAR_JWKS_FILE", "JSON Web Key Set file for RS256 and ES256 client tokens; a token's kid selects its key")
	dur(&cfg.JWTKeyReload, "jwt-key-reload", "SIDECAR_JWT_KEY_RELOAD", "how often the key files are reread; an unknown kid also rereads them, at most once a second")
	str(&cfg.JWTAudience, "jwt-audience", "SIDECAR_JWT_AUDIENCE", "when set, client tokens must name it in aud")
	str(&cfg.JWTIssuer, "jwt-issuer", "SIDECAR_JWT_ISSUER", "when set, client tokens must have it as iss")
	dur(&cfg.JWTLeeway, "jwt-leeway", "SIDECAR_JWT_LEEWAY", "clock skew allowed when checking exp and nbf of client tokens")
	list(&cfg.AnonymousSubscribe, "anonymous-subscribe", "SIDECAR_ANONYMOUS_SUBSCRIBE", "patterns that clients without a token may subscribe to; empty means none")
	list(&cfg.AnonymousPublish, "anonymous-publish", "SIDECAR_ANONYMOUS_PUBLISH", "patterns that clients without a token may publish to; empty means none")
	list(&cfg.AllowedOrigins, "allowed-origins", "SIDECAR_ALLOWED_ORIGINS", "browser origins allowed to connect, such as https://app.example.com; empty means same-origin only")
	str(&cfg.AppRPCURL, "app-rpc-url", "SIDECAR_APP_RPC_URL", "where app.<name> calls of clients are sent, as JSON-RPC over HTTP POST; empty disables them")
	fs.Var(secretString{&cfg.AppRPCToken}, "app-rpc-token", "bearer token the sidecar presents to the application")
	f.bind("app-rpc-token", "SIDECAR_APP_RPC_TOKEN")
	dur(&cfg.AppRPCTimeout, "app-rpc-timeout", "SIDECAR_APP_RPC_TIMEOUT", "how long one app.<name> call may take")
	list(&cfg.ListenChannels, "listen-channels", "SIDECAR_LISTEN_CHANNELS", "extra Postgres channels to relay as pg.<channel> events")
	str(&cfg.FastAPIBackboneChannel, "fastapi-backbone-channel", "SIDECAR_FASTAPI_BACKBONE_CHANNEL", "Postgres channel on which Python servers of fastapi_websocket_pubsub broadcast, such as EventNotifier; the sidecars deliver its messages and forward their events to it; empty stays off it")
	dur(&cfg.Retention, "retention", "SIDECAR_RETENTION", "how long durable events are kept")
	num(&cfg.MaxEventBytes, "max-event-bytes", "SIDECAR_MAX_EVENT_BYTES", "largest event data in bytes; the websocket read limit is this plus 64 KiB")
	num(&cfg.ReplayLimit, "replay-limit", "SIDECAR_REPLAY_LIMIT", "most events one subscribe with since may replay")
	fs.Float64Var(&cfg.MessageRate, "message-rate", cfg.MessageRate, "requests per second one websocket may send on average; more get -32004, and a client over it for 10 s is closed with 1008")
	f.bind("message-rate", "SIDECAR_MESSAGE_RATE")
	num(&cfg.MessageBurst, "message-burst", "SIDECAR_MESSAGE_BURST", "requests one websocket may send at once above --message-rate")
	num(&cfg.MaxConnections, "max-connections", "SIDECAR_MAX_CONNECTIONS", "most websockets this instance accepts; more are refused with 503")
	num(&cfg.MaxConnectionsPerSubject, "max-connections-per-subject", "SIDECAR_MAX_CONNECTIONS_PER_SUBJECT", "most websockets of one token subject on this instance; more are refused with 429")
	num(&cfg.MaxSubscriptions, "max-subscriptions", "SIDECAR_MAX_SUBSCRIPTIONS", "most subscriptions one websocket may have")
	num(&cfg.MaxInFlight, "max-in-flight", "SIDECAR_MAX_IN_FLIGHT", "most requests one websocket may have in flight")
	dur(&cfg.Heartbeat, "heartbeat", "SIDECAR_HEARTBEAT", "idle time after which a heartbeat notification is sent (minimum 5s)")
	dur(&cfg.AuthTimeout, "auth-timeout", "SIDECAR_AUTH_TIMEOUT", "how long a connection without a token may take to authenticate")
	dur(&cfg.UnreadyAfter, "unready-after", "SIDECAR_UNREADY_AFTER", "how long the LISTEN connection may be down before /readyz turns 503")
	dur(&cfg.DrainTimeout, "drain-timeout", "SIDECAR_DRAIN_TIMEOUT", "how long a shutdown waits for websockets and event streams to close and calls to finish")
	dur(&cfg.DrainSpread, "drain-spread", "SIDECAR_DRAIN_SPREAD", "window over which a shutdown closes websockets and event streams with 1012, each at a random moment; at most half of --drain-timeout is used")
	str(&cfg.MetricsAddr, "metrics-addr", "SIDECAR_METRICS_ADDR", "serve /metrics on this address instead of --addr, such as :9090")
	fs.Var(secretString{&cfg.MetricsToken}, "metrics-token", "bearer token that /metrics requires; empty serves it without one")
	f.bind("metrics-token", "SIDECAR_METRICS_TOKEN")
	num(&cfg.QueueBytes, "client-queue-bytes", "SIDECAR_CLIENT_QUEUE_BYTES", "outbound bytes a client may have queued for longer than --slow-client-grace")
	num(&cfg.MaxQueueBytes, "client-max-queue-bytes", "SIDECAR_CLIENT_MAX_QUEUE_BYTES", "outbound bytes beyond which a client is closed as too slow at once")
	dur(&cfg.SlowGrace, "slow-client-grace", "SIDECAR_SLOW_CLIENT_GRACE", "how long a client's queue may stay above --client-queue-bytes")
	dur(&cfg.WriteTimeout, "write-timeout", "SIDECAR_WRITE_TIMEOUT", "longest one websocket write may block")
	fs.Float64Var(&cfg.NotifyQueueWarn, "notify-queue-warn", cfg.NotifyQueueWarn, "fill level of Postgres' notification queue (0 to 1) above which a warning is logged")
	f.bind("notify-queue-warn", "SIDECAR_NOTIFY_QUEUE_WARN")
	fs.BoolVar(&cfg.Migrate, "migrate", cfg.Migrate, "apply the embedded migrations at start")
	f.bind("migrate", "SIDECAR_MIGRATE")

	format, level := "text", "info"
	str(&format, "log-format", "SIDECAR_LOG_FORMAT", "log format: text or json")
	str(&level, "log-level", "SIDECAR_LOG_LEVEL", "log level: debug, info, warn or error")
	return &format, &level
}

// debugFlags declares --debug-addr on f. It is separate from serverFlags
// because only "sidecar serve" offers the profiling endpoints.
func debugFlags(f *envFlags) (debugAddr *string) {
	var addr string
	f.fs.StringVar(&addr, "debug-addr", "", "serve Go's profiling endpoints (/debug/pprof/) on this address, such as 127.0.0.1:6060; empty disables them")
	f.bind("debug-addr", "SIDECAR_DEBUG_ADDR")
	return &addr
}

// serveFlags contains the values of the "sidecar serve" flags that are not
// fields of server.Config.
type serveFlags struct {
	logFormat, logLevel, debugAddr *string
}

// newServeFlags declares every flag of "sidecar serve": the settings of
// serverFlags, which fill cfg, and --debug-addr.
func newServeFlags(cfg *server.Config) (*envFlags, serveFlags) {
	f := newEnvFlags("sidecar serve")
	var v serveFlags
	v.logFormat, v.logLevel = serverFlags(f, cfg)
	v.debugAddr = debugFlags(f)
	return f, v
}
