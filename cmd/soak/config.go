package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// config contains every setting of one soak run.
type config struct {
	Duration   time.Duration // how long publishers publish and faults are injected
	Seed       uint64        // 0: derived from the clock, and reported
	Sidecars   int           // sidecar processes on the one database: 1 or 2
	SidecarBin string        // empty: go build ./cmd/sidecar into the work directory
	JSON       bool
	Keep       bool // keep the work directory with the logs even when the run passes

	// Load.
	Rate           float64 // events per second, all publishers together
	SQLPublishers  int
	HTTPPublishers int
	WSPublishers   int
	Subscribers    int
	LargeFraction  float64 // share of events too large for one NOTIFY

	// Faults.
	Faults          []faultKind
	FaultMin        time.Duration // minimum pause between two faults
	FaultMax        time.Duration // maximum pause between two faults
	CutDuration     time.Duration // how long listen-cut stops forwarding
	StallDuration   time.Duration // how long slow-subscriber stops reading
	RecoveryTimeout time.Duration // how long a fault may take until events flow again
	SettleTimeout   time.Duration // how long deliveries may trail the end of publishing
}

// Upper bounds that keep a mistyped flag from running for days or
// exhausting the machine.
const (
	maxDuration    = 24 * time.Hour
	maxRate        = 5000
	maxPublishers  = 32
	maxSubscribers = 64
)

// parseConfig parses the command line. It returns flag.ErrHelp after
// printing the usage for -h.
func parseConfig(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}

	fs.DurationVar(&cfg.Duration, "duration", 10*time.Minute, "how long to publish and inject faults")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed of the fault schedule, the fault targets and the publishers' choices; 0 picks one from the clock")
	fs.IntVar(&cfg.Sidecars, "sidecars", 2, "sidecar processes on the one database: 1 or 2")
	fs.StringVar(&cfg.SidecarBin, "sidecar-bin", "", "sidecar binary to start; empty builds ./cmd/sidecar with go build")
	fs.BoolVar(&cfg.JSON, "json", false, "print the report as JSON on stdout instead of text")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the work directory with the sidecar and Postgres logs; it is always kept when the run fails")

	fs.Float64Var(&cfg.Rate, "rate", 200, "events per second published by all publishers together")
	fs.IntVar(&cfg.SQLPublishers, "sql-publishers", 2, "publishers that call realtime.publish over their own Postgres connection")
	fs.IntVar(&cfg.HTTPPublishers, "http-publishers", 1, "publishers that POST /v1/publish")
	fs.IntVar(&cfg.WSPublishers, "ws-publishers", 1, "publishers that send publish requests over a websocket")
	fs.IntVar(&cfg.Subscribers, "subscribers", 4, "websocket subscribers, one connection each with one or two subscriptions")
	fs.Float64Var(&cfg.LargeFraction, "large-fraction", 0.02, "share of events with about 10 KB of data, which travel by reference because they exceed one NOTIFY")

	faults := fs.String("faults", "all", "comma-separated fault kinds to inject, all, or none: "+joinKinds(allFaults))
	fs.DurationVar(&cfg.FaultMin, "fault-min", 20*time.Second, "shortest pause between two faults")
	fs.DurationVar(&cfg.FaultMax, "fault-max", 40*time.Second, "longest pause between two faults")
	fs.DurationVar(&cfg.CutDuration, "cut", 10*time.Second, "how long listen-cut stops forwarding a LISTEN connection")
	fs.DurationVar(&cfg.StallDuration, "stall", 30*time.Second, "how long slow-subscriber stops reading")
	fs.DurationVar(&cfg.RecoveryTimeout, "recovery-timeout", 2*time.Minute, "how long events may take to flow again after a fault before it is reported as not recovered")
	fs.DurationVar(&cfg.SettleTimeout, "settle-timeout", time.Minute, "how long to wait for deliveries after publishing stops")

	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q: every setting is a flag", fs.Arg(0))
	}

	kinds, err := parseFaultKinds(*faults)
	if err != nil {
		return config{}, err
	}
	cfg.Faults = kinds

	if err := cfg.validate(); err != nil {
		return config{}, err
	}
	return cfg, nil
}

const usage = `soak runs publishers, subscribers and injected faults against the sidecar
for a while, then checks that every committed event reached every matching
subscription exactly once and in order.

It starts a throwaway durable Postgres cluster and one or two sidecar
processes, all on 127.0.0.1, and removes them when done. The exit status
is 1 when an event is missing or duplicated, or another check fails.

Usage:
  go run ./cmd/soak [flags]

Flags:
`

// validate checks the ranges of the settings.
func (cfg *config) validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}

	check(cfg.Duration > 0 && cfg.Duration <= maxDuration, "--duration %s: use a positive duration up to %s", cfg.Duration, maxDuration)
	check(cfg.Sidecars == 1 || cfg.Sidecars == 2, "--sidecars %d: use 1 or 2", cfg.Sidecars)
	check(cfg.Rate > 0 && cfg.Rate <= maxRate, "--rate %g: use more than 0 and at most %d events per second", cfg.Rate, maxRate)
	check(cfg.SQLPublishers >= 0 && cfg.SQLPublishers <= maxPublishers, "--sql-publishers %d: use 0 to %d", cfg.SQLPublishers, maxPublishers)
	check(cfg.HTTPPublishers >= 0 && cfg.HTTPPublishers <= maxPublishers, "--http-publishers %d: use 0 to %d", cfg.HTTPPublishers, maxPublishers)
	check(cfg.WSPublishers >= 0 && cfg.WSPublishers <= maxPublishers, "--ws-publishers %d: use 0 to %d", cfg.WSPublishers, maxPublishers)
	check(cfg.SQLPublishers+cfg.HTTPPublishers+cfg.WSPublishers > 0, "no publishers: set --sql-publishers, --http-publishers or --ws-publishers above 0")
	check(cfg.Subscribers >= 1 && cfg.Subscribers <= maxSubscribers, "--subscribers %d: use 1 to %d", cfg.Subscribers, maxSubscribers)
	check(cfg.LargeFraction >= 0 && cfg.LargeFraction <= 1, "--large-fraction %g: use 0 to 1", cfg.LargeFraction)
	check(cfg.FaultMin > 0 && cfg.FaultMin <= cfg.FaultMax, "--fault-min %s and --fault-max %s: use 0 < min <= max", cfg.FaultMin, cfg.FaultMax)
	check(cfg.FaultMax <= maxDuration, "--fault-max %s: use at most %s", cfg.FaultMax, maxDuration)
	check(cfg.CutDuration > 0 && cfg.CutDuration <= 10*time.Minute, "--cut %s: use a positive duration up to 10m", cfg.CutDuration)
	check(cfg.StallDuration > 0 && cfg.StallDuration <= 10*time.Minute, "--stall %s: use a positive duration up to 10m", cfg.StallDuration)
	check(cfg.RecoveryTimeout > 0 && cfg.RecoveryTimeout <= time.Hour, "--recovery-timeout %s: use a positive duration up to 1h", cfg.RecoveryTimeout)
	check(cfg.SettleTimeout > 0 && cfg.SettleTimeout <= time.Hour, "--settle-timeout %s: use a positive duration up to 1h", cfg.SettleTimeout)
	return errors.Join(errs...)
}

// parseFaultKinds parses the --faults list: "all", "none", or fault kind
// names separated by commas.
func parseFaultKinds(s string) ([]faultKind, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "all":
		return slices.Clone(allFaults), nil
	case "none", "":
		return nil, nil
	}

	var kinds []faultKind
	for name := range strings.SplitSeq(s, ",") {
		k := faultKind(strings.TrimSpace(name))
		if !slices.Contains(allFaults, k) {
			return nil, fmt.Errorf("--faults: unknown fault kind %q: use all, none, or some of %s", k, joinKinds(allFaults))
		}
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	return kinds, nil
}

func joinKinds(kinds []faultKind) string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}
