package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Scenario names.
const (
	scenarioLatency    = "latency"
	scenarioThroughput = "throughput"
	scenarioIdle       = "idle"
)

// Publish paths for the latency scenario.
const (
	viaSQL  = "sql"
	viaHTTP = "http"
	viaWS   = "ws"
)

// config contains every setting of one benchmark invocation.
type config struct {
	Scenario string
	Runs     int
	JSON     bool
	Timeout  time.Duration // bounds the whole invocation, set-up included

	// Target. With none of DatabaseURL, WSURL and HTTPURL the benchmark
	// starts its own Postgres and sidecar. With DatabaseURL alone it
	// starts a sidecar on that database. With WSURL or HTTPURL it drives
	// a sidecar that is already running, and DatabaseURL must name that
	// sidecar's database.
	DatabaseURL string
	WSURL       string
	HTTPURL     string
	JWTSecret   string
	APIKey      string
	SidecarBin  string   // empty: go build ./cmd/sidecar into a temporary directory
	SidecarArgs []string // appended to the started sidecar's command line

	// Both scenarios.
	Subscribers  int // 0: the scenario's default
	PayloadBytes int
	DrainTimeout time.Duration // how long deliveries may trail the last publish

	// Latency scenario.
	Events   int
	Interval time.Duration
	Via      string

	// SlowSubscribers stop reading after they subscribe, and count in no
	// latency or delivery figure.
	SlowSubscribers int

	// CPUProfile is the file for a CPU profile of the benchmark process
	// itself during the runs, or empty.
	CPUProfile string

	// Throughput scenario.
	Writers  int
	Duration time.Duration
	Batch    int

	// Idle scenario. SidecarPID names the process of a running sidecar,
	// whose memory use the scenario reads from /proc.
	Connections int
	SidecarPID  int
	// IdleHold keeps the idle connections open this long after the
	// memory reading, so that the sidecar can be inspected meanwhile.
	IdleHold time.Duration
}

// Defaults of the scenario-specific subscriber counts.
const (
	defaultLatencySubscribers    = 100
	defaultThroughputSubscribers = 1
)

// Upper bounds that keep a mistyped flag from running for hours or
// exhausting the machine.
const (
	maxRuns         = 100
	maxSubscribers  = 10_000
	maxEvents       = 1_000_000
	maxWriters      = 256
	maxBatch        = 10_000
	maxPayloadBytes = 1 << 20
	maxDuration     = 10 * time.Minute

	// maxConnections is the sidecar's default --max-connections.
	maxConnections = 50_000
)

// Environment variables that supply the secrets when their flags are not
// given, so that they stay out of the process list and shell history.
const (
	envJWTSecret = "SIDECAR_JWT_SECRET"
	envAPIKey    = "SIDECAR_API_KEY"
)

// parseConfig parses the command line, taking the secrets from getenv when
// their flags are not given. It returns flag.ErrHelp after printing the
// usage for -h.
func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}

	fs.StringVar(&cfg.Scenario, "scenario", scenarioLatency, "scenario to run: latency, throughput or idle")
	fs.IntVar(&cfg.Runs, "runs", 3, "how many times to repeat the scenario")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write a CPU profile of the load generator during the runs to this file")
	fs.BoolVar(&cfg.JSON, "json", false, "print the results as JSON on stdout instead of a table")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "limit for the whole invocation, set-up included")

	fs.StringVar(&cfg.DatabaseURL, "database-url", "", "Postgres URL on this machine; empty starts a throwaway cluster")
	fs.StringVar(&cfg.WSURL, "ws-url", "", "websocket URL of a running sidecar, such as ws://127.0.0.1:7070/v1/ws; empty starts a sidecar process")
	fs.StringVar(&cfg.HTTPURL, "http-url", "", "base URL of a running sidecar, such as http://127.0.0.1:7070; derived from --ws-url when empty")
	fs.StringVar(&cfg.JWTSecret, "jwt-secret", "", "HS256 secret of the running sidecar, to sign client tokens (env "+envJWTSecret+")")
	fs.StringVar(&cfg.APIKey, "api-key", "", "API key of the running sidecar, for --via http (env "+envAPIKey+")")
	fs.StringVar(&cfg.SidecarBin, "sidecar-bin", "", "sidecar binary to start; empty builds ./cmd/sidecar with go build")
	fs.Func("sidecar-flag", "one flag for the started sidecar, such as --sidecar-flag=--slow-client-grace=1s; repeat it for more", func(s string) error {
		cfg.SidecarArgs = append(cfg.SidecarArgs, s)
		return nil
	})

	fs.IntVar(&cfg.Subscribers, "subscribers", 0, fmt.Sprintf("websocket subscribers, one connection each (default %d for latency, %d for throughput)", defaultLatencySubscribers, defaultThroughputSubscribers))
	fs.IntVar(&cfg.PayloadBytes, "payload-bytes", 100, "approximate size of each event's JSON data in bytes")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 15*time.Second, "how long to wait for deliveries after the last publish")

	fs.IntVar(&cfg.Events, "events", 200, "latency: events to publish per run")
	fs.DurationVar(&cfg.Interval, "interval", 20*time.Millisecond, "latency: time between the starts of two publishes")
	fs.StringVar(&cfg.Via, "via", viaSQL, "latency: publish with sql (SELECT realtime.publish), http (POST /v1/publish) or ws (a websocket publish request)")
	fs.IntVar(&cfg.SlowSubscribers, "slow-subscribers", 0, "latency: extra subscribers on the same topic that stop reading, to see how they affect the others")

	fs.IntVar(&cfg.Writers, "writers", 4, "throughput: concurrent writers, one Postgres connection each")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "throughput: how long the writers publish per run")
	fs.IntVar(&cfg.Batch, "batch", 1, "throughput: events per transaction")

	fs.IntVar(&cfg.Connections, "connections", 10_000, "idle: websocket connections to open and hold, each with a subscription to a topic of its own")
	fs.DurationVar(&cfg.IdleHold, "idle-hold", 0, "idle: keep the connections open this long after the memory reading, to profile the sidecar meanwhile (at most 10m)")
	fs.IntVar(&cfg.SidecarPID, "sidecar-pid", 0, "idle: process id of the running sidecar named by --ws-url, to read its memory use; without it memory is reported as unknown")

	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q: every setting is a flag", fs.Arg(0))
	}

	// Read here rather than as flag defaults, which -h would print.
	if cfg.JWTSecret == "" {
		cfg.JWTSecret = getenv(envJWTSecret)
	}
	if cfg.APIKey == "" {
		cfg.APIKey = getenv(envAPIKey)
	}
	if cfg.Subscribers == 0 {
		cfg.Subscribers = defaultLatencySubscribers
		if cfg.Scenario == scenarioThroughput {
			cfg.Subscribers = defaultThroughputSubscribers
		}
	}
	if err := cfg.deriveURLs(); err != nil {
		return config{}, err
	}
	if err := cfg.validate(); err != nil {
		return config{}, err
	}
	return cfg, nil
}

const usage = `bench measures the sidecar's delivery latency and throughput, and the cost
of idle connections, on this machine.

By default it starts a throwaway Postgres cluster (default durability
settings) and a sidecar as a separate process, both on 127.0.0.1, and
removes them when done. Give --ws-url, --database-url and --jwt-secret to
drive a sidecar that is already running on this machine instead.

Usage:
  go run ./cmd/bench [flags]

Flags:
`

// external reports whether the benchmark drives an already running
// sidecar instead of starting one.
func (cfg *config) external() bool {
	return cfg.WSURL != "" || cfg.HTTPURL != ""
}

// deriveURLs fills whichever of WSURL and HTTPURL is missing from the
// other, because the sidecar serves both on one address.
func (cfg *config) deriveURLs() error {
	switch {
	case cfg.WSURL != "" && cfg.HTTPURL == "":
		u, err := url.Parse(cfg.WSURL)
		if err != nil {
			return fmt.Errorf("--ws-url %q: %w", cfg.WSURL, err)
		}
		scheme := map[string]string{"ws": "http", "wss": "https"}[u.Scheme]
		if scheme == "" {
			return fmt.Errorf("--ws-url %q: the scheme must be ws or wss", cfg.WSURL)
		}
		cfg.HTTPURL = (&url.URL{Scheme: scheme, Host: u.Host}).String()
	case cfg.HTTPURL != "" && cfg.WSURL == "":
		u, err := url.Parse(cfg.HTTPURL)
		if err != nil {
			return fmt.Errorf("--http-url %q: %w", cfg.HTTPURL, err)
		}
		scheme := map[string]string{"http": "ws", "https": "wss"}[u.Scheme]
		if scheme == "" {
			return fmt.Errorf("--http-url %q: the scheme must be http or https", cfg.HTTPURL)
		}
		cfg.WSURL = (&url.URL{Scheme: scheme, Host: u.Host, Path: "/v1/ws"}).String()
	}
	cfg.HTTPURL = strings.TrimSuffix(cfg.HTTPURL, "/")
	return nil
}

// validate checks the ranges of the settings and that every address is on
// this machine.
func (cfg *config) validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}

	check(cfg.Scenario == scenarioLatency || cfg.Scenario == scenarioThroughput || cfg.Scenario == scenarioIdle, "--scenario %q: use latency, throughput or idle", cfg.Scenario)
	check(cfg.Runs >= 1 && cfg.Runs <= maxRuns, "--runs %d: use 1 to %d", cfg.Runs, maxRuns)
	check(cfg.Timeout > 0, "--timeout %s: must be positive", cfg.Timeout)
	check(cfg.Subscribers >= 1 && cfg.Subscribers <= maxSubscribers, "--subscribers %d: use 1 to %d", cfg.Subscribers, maxSubscribers)
	check(cfg.PayloadBytes >= 0 && cfg.PayloadBytes <= maxPayloadBytes, "--payload-bytes %d: use 0 to %d", cfg.PayloadBytes, maxPayloadBytes)
	check(cfg.DrainTimeout > 0 && cfg.DrainTimeout <= maxDuration, "--drain-timeout %s: use a positive duration up to %s", cfg.DrainTimeout, maxDuration)
	check(cfg.Events >= 1 && cfg.Events <= maxEvents, "--events %d: use 1 to %d", cfg.Events, maxEvents)
	check(cfg.Interval >= 0 && cfg.Interval <= time.Minute, "--interval %s: use 0 to 1m", cfg.Interval)
	check(cfg.Via == viaSQL || cfg.Via == viaHTTP || cfg.Via == viaWS, "--via %q: use sql, http or ws", cfg.Via)
	check(cfg.SlowSubscribers >= 0 && cfg.SlowSubscribers <= maxSubscribers, "--slow-subscribers %d: use 0 to %d", cfg.SlowSubscribers, maxSubscribers)
	check(cfg.SlowSubscribers == 0 || cfg.Scenario == scenarioLatency, "--slow-subscribers is set, but only the latency scenario has slow subscribers")
	check(cfg.Writers >= 1 && cfg.Writers <= maxWriters, "--writers %d: use 1 to %d", cfg.Writers, maxWriters)
	check(cfg.Duration > 0 && cfg.Duration <= maxDuration, "--duration %s: use a positive duration up to %s", cfg.Duration, maxDuration)
	check(cfg.IdleHold >= 0 && cfg.IdleHold <= maxDuration, "--idle-hold %s: use a duration from 0 to %s", cfg.IdleHold, maxDuration)
	check(cfg.Batch >= 1 && cfg.Batch <= maxBatch, "--batch %d: use 1 to %d", cfg.Batch, maxBatch)
	check(cfg.Connections >= 1 && cfg.Connections <= maxConnections, "--connections %d: use 1 to %d", cfg.Connections, maxConnections)
	check(cfg.SidecarPID >= 0, "--sidecar-pid %d: must be a process id", cfg.SidecarPID)
	check(cfg.SidecarPID == 0 || cfg.external(), "--sidecar-pid is set, but the benchmark starts its own sidecar and knows its process id: give it only with --ws-url or --http-url")

	if cfg.external() {
		check(cfg.DatabaseURL != "", "--database-url is missing: a running sidecar is given, so name its database")
		check(cfg.JWTSecret != "", "--jwt-secret is missing: it signs the subscribers' tokens for the running sidecar")
		check(cfg.Via != viaHTTP || cfg.APIKey != "", "--api-key is missing: --via http needs the running sidecar's API key")
		check(cfg.SidecarBin == "", "--sidecar-bin is set, but --ws-url or --http-url names a running sidecar: give one or the other")
		check(len(cfg.SidecarArgs) == 0, "--sidecar-flag is set, but --ws-url or --http-url names a running sidecar, which the benchmark does not start")
		errs = append(errs, checkLoopbackURL("--ws-url", cfg.WSURL), checkLoopbackURL("--http-url", cfg.HTTPURL))
	}
	if cfg.DatabaseURL != "" {
		errs = append(errs, checkLoopbackDatabase(cfg.DatabaseURL))
	}
	for _, arg := range cfg.SidecarArgs {
		errs = append(errs, checkSidecarArg(arg))
	}
	return errors.Join(errs...)
}

// reservedSidecarFlags are the sidecar flags that --sidecar-flag may not
// set. The benchmark sets the first four itself, and the report's command
// line would show the password of the last.
var reservedSidecarFlags = map[string]bool{
	"addr":                true,
	"database-url":        true,
	"jwt-secret":          true,
	"api-keys":            true,
	"listen-database-url": true,
}

// checkSidecarArg accepts one flag for the started sidecar in the form
// -name=value or -name, with one or two dashes.
func checkSidecarArg(arg string) error {
	name, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-"), "=")
	switch {
	case !strings.HasPrefix(arg, "-") || name == "" || strings.HasPrefix(name, "-"):
		return fmt.Errorf("--sidecar-flag %q: give one sidecar flag with its value, such as --sidecar-flag=--slow-client-grace=1s", arg)
	case reservedSidecarFlags[name]:
		return fmt.Errorf("--sidecar-flag %q: --addr, --database-url, --jwt-secret, --api-keys and --listen-database-url cannot be passed to the sidecar this way", arg)
	}
	return nil
}

// checkLoopbackURL rejects a URL whose host is not on this machine,
// because the benchmark sends its load to loopback addresses only.
func checkLoopbackURL(flagName, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s %q: %w", flagName, raw, err)
	}
	if !isLoopbackHost(u.Hostname()) {
		return fmt.Errorf("%s %q: the host must be 127.0.0.1, ::1 or localhost, because the benchmark only loads this machine", flagName, raw)
	}
	return nil
}

// checkLoopbackDatabase rejects a Postgres URL whose hosts are not on this
// machine. A Unix socket directory counts as local.
func checkLoopbackDatabase(raw string) error {
	pc, err := pgx.ParseConfig(raw)
	if err != nil {
		return fmt.Errorf("--database-url: %w", err)
	}
	hosts := []string{pc.Host}
	for _, fb := range pc.Fallbacks {
		hosts = append(hosts, fb.Host)
	}
	for _, h := range hosts {
		if !strings.HasPrefix(h, "/") && !isLoopbackHost(h) {
			return fmt.Errorf("--database-url: host %q must be 127.0.0.1, ::1, localhost or a socket directory, because the benchmark only loads this machine", h)
		}
	}
	return nil
}

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
