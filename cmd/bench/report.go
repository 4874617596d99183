package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
)

// report is everything the benchmark prints: how it ran, each run, and
// the spread of the key figures over the runs.
type report struct {
	Scenario   string            `json:"scenario"`
	Command    string            `json:"command"`
	Parameters map[string]any    `json:"parameters"`
	Setup      setup             `json:"setup"`
	Runs       any               `json:"runs"` // []latencyRun, []throughputRun or []idleRun
	Summary    map[string]spread `json:"summary"`

	latencyRuns    []latencyRun
	throughputRuns []throughputRun
	idleRuns       []idleRun
}

func newReport(cfg config, args []string, s setup) *report {
	params := map[string]any{
		"runs":          cfg.Runs,
		"subscribers":   cfg.Subscribers,
		"payload_bytes": cfg.PayloadBytes,
	}
	switch cfg.Scenario {
	case scenarioIdle:
		params = map[string]any{
			"runs":             cfg.Runs,
			"connections":      cfg.Connections,
			"dial_concurrency": idleDialConcurrency,
			"settle_s":         idleSettle.Seconds(),
		}
	case scenarioLatency:
		params["events"] = cfg.Events
		params["interval_ms"] = millis(cfg.Interval)
		params["via"] = cfg.Via
		params["slow_subscribers"] = cfg.SlowSubscribers
	default:
		params["writers"] = cfg.Writers
		params["duration_s"] = cfg.Duration.Seconds()
		params["batch"] = cfg.Batch
	}
	if len(cfg.SidecarArgs) > 0 {
		params["sidecar_flags"] = cfg.SidecarArgs
	}
	return &report{
		Scenario:   cfg.Scenario,
		Command:    commandLine(args),
		Parameters: params,
		Setup:      s,
	}
}

// secretFlags are the flags whose values commandLine hides.
var secretFlags = map[string]bool{"jwt-secret": true, "api-key": true}

// commandLine returns args as a command that reruns this benchmark from
// the repository, with arguments quoted where the shell needs it. The
// values of secretFlags and the password of --database-url are replaced
// with "REDACTED".
func commandLine(args []string) string {
	parts := []string{"go", "run", "./cmd/bench"}
	hideNext := false
	for _, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case hideNext:
			a = "REDACTED"
		case strings.HasPrefix(a, "-") && secretFlags[name] && hasValue:
			a = a[:len(a)-len(value)] + "REDACTED"
		case strings.HasPrefix(a, "-") && name == "database-url" && hasValue:
			a = a[:len(a)-len(value)] + redactPassword(value)
		case strings.Contains(a, "://"):
			a = redactPassword(a)
		}
		hideNext = strings.HasPrefix(a, "-") && secretFlags[name] && !hasValue

		if strings.ContainsAny(a, " \t'\"$\\*?&;|<>()") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

// redactPassword replaces the password of a URL with "REDACTED". A value
// that does not parse as a URL is returned unchanged.
func redactPassword(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); !ok {
		return raw
	}
	u.User = url.UserPassword(u.User.Username(), "REDACTED")
	return u.String()
}

// summarize fills Runs and Summary from the recorded runs.
func (r *report) summarize() {
	if r.Scenario == scenarioIdle {
		r.summarizeIdle()
		return
	}
	if r.Scenario == scenarioLatency {
		r.Runs = r.latencyRuns
		r.Summary = map[string]spread{
			"p50_ms":         spreadOf(r.latencyRuns, func(x latencyRun) float64 { return x.P50 }),
			"p90_ms":         spreadOf(r.latencyRuns, func(x latencyRun) float64 { return x.P90 }),
			"p99_ms":         spreadOf(r.latencyRuns, func(x latencyRun) float64 { return x.P99 }),
			"max_ms":         spreadOf(r.latencyRuns, func(x latencyRun) float64 { return x.Max }),
			"publish_p50_ms": spreadOf(r.latencyRuns, func(x latencyRun) float64 { return x.PublishP50 }),
		}
		return
	}
	r.Runs = r.throughputRuns
	r.Summary = map[string]spread{
		"committed_events_per_sec":     spreadOf(r.throughputRuns, func(x throughputRun) float64 { return x.CommittedPerSec }),
		"delivered_events_per_sec_min": spreadOf(r.throughputRuns, func(x throughputRun) float64 { return x.DeliveredPerSecMin }),
		"latency_p50_ms":               spreadOf(r.throughputRuns, func(x throughputRun) float64 { return x.LatencyP50 }),
		"latency_p99_ms":               spreadOf(r.throughputRuns, func(x throughputRun) float64 { return x.LatencyP99 }),
		"transaction_p99_ms":           spreadOf(r.throughputRuns, func(x throughputRun) float64 { return x.TxP99 }),
	}
}

func spreadOf[T any](runs []T, figure func(T) float64) spread {
	values := make([]float64, len(runs))
	for i, run := range runs {
		values[i] = figure(run)
	}
	return newSpread(values)
}

// shortfalls returns one line per run that lost, duplicated or reordered
// deliveries, or whose subscribers ended early.
func (r *report) shortfalls() []string {
	var out []string
	add := func(run int, delivered, expected, outOfOrder int64, errs []string) {
		if delivered != expected {
			out = append(out, fmt.Sprintf("run %d: delivered %d of %d expected events", run, delivered, expected))
		}
		if outOfOrder > 0 {
			out = append(out, fmt.Sprintf("run %d: %d events arrived with an id not above the previous one", run, outOfOrder))
		}
		for _, e := range errs {
			out = append(out, fmt.Sprintf("run %d: subscriber: %s", run, e))
		}
	}
	for _, x := range r.latencyRuns {
		add(x.Run, x.Delivered, x.Expected, x.OutOfOrder, x.SubscriberErrors)
	}
	for _, x := range r.throughputRuns {
		add(x.Run, x.Delivered, x.Expected, x.OutOfOrder, x.SubscriberErrors)
	}
	return out
}

// writeJSON writes the report as one indented JSON document.
func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("write JSON report: %w", err)
	}
	return nil
}

// writeTable writes the report for people: the set-up, one row per run,
// then the median and the min–max range of each column.
func (r *report) writeTable(w io.Writer, cfg config) error {
	s := r.Setup
	fmt.Fprintf(w, "Scenario  %s\n", describeScenario(cfg))
	fmt.Fprintf(w, "Postgres  %s, %s; fsync=%s, synchronous_commit=%s\n", s.PostgresVersion, s.Postgres, s.Fsync, s.SynchronousCommit)
	fmt.Fprintf(w, "Sidecar   %s\n", s.Sidecar)
	fmt.Fprintf(w, "Machine   %d CPUs shared by the load generator, the sidecar and Postgres, all on 127.0.0.1; %s\n", s.CPUs, s.GoVersion)
	fmt.Fprintf(w, "Command   %s\n\n", r.Command)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	switch r.Scenario {
	case scenarioLatency:
		r.latencyTable(tw, cfg.SlowSubscribers > 0)
	case scenarioThroughput:
		r.throughputTable(tw)
	case scenarioIdle:
		r.idleTable(tw)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

func describeScenario(cfg config) string {
	if cfg.Scenario == scenarioIdle {
		return describeIdle(cfg)
	}
	if cfg.Scenario == scenarioLatency {
		var slow string
		if cfg.SlowSubscribers > 0 {
			slow = fmt.Sprintf(" and %d slow subscribers that stop reading", cfg.SlowSubscribers)
		}
		return fmt.Sprintf("latency (subscribers=%d%s on one topic, events=%d, interval=%s, via=%s, payload-bytes=%d, runs=%d)",
			cfg.Subscribers, slow, cfg.Events, cfg.Interval, cfg.Via, cfg.PayloadBytes, cfg.Runs)
	}
	return fmt.Sprintf("throughput (writers=%d, duration=%s, batch=%d events per transaction, subscribers=%d, payload-bytes=%d, runs=%d)",
		cfg.Writers, cfg.Duration, cfg.Batch, cfg.Subscribers, cfg.PayloadBytes, cfg.Runs)
}

// column is one figure of the run table with its print format.
type column[T any] struct {
	format string
	value  func(T) float64
}

// latencyTable writes the latency runs. With slow, a last column shows
// how the slow subscribers' connections ended.
func (r *report) latencyTable(tw io.Writer, slow bool) {
	header := "run\tdelivered/expected\tp50 ms\tp90 ms\tp99 ms\tmax ms\tpublish p50 ms\tpublish p99 ms\t"
	if slow {
		header += "slow subscribers ended\t"
	}
	fmt.Fprintln(tw, header)
	columns := []column[latencyRun]{
		{"%.2f", func(x latencyRun) float64 { return x.P50 }},
		{"%.2f", func(x latencyRun) float64 { return x.P90 }},
		{"%.2f", func(x latencyRun) float64 { return x.P99 }},
		{"%.2f", func(x latencyRun) float64 { return x.Max }},
		{"%.2f", func(x latencyRun) float64 { return x.PublishP50 }},
		{"%.2f", func(x latencyRun) float64 { return x.PublishP99 }},
	}
	for _, x := range r.latencyRuns {
		var extra []string
		if slow {
			extra = append(extra, formatSlowEnds(x.SlowEnds))
		}
		writeRunRow(tw, x, x.Run, x.Delivered, x.Expected, columns, extra...)
	}
	writeSummaryRows(tw, r.latencyRuns, columns)
}

func (r *report) throughputTable(tw io.Writer) {
	fmt.Fprintln(tw, "run\tdelivered/expected\tcommitted ev/s\tdelivered ev/s per subscriber (min)\tlatency p50 ms\tlatency p99 ms\ttx p50 ms\ttx p99 ms\t")
	columns := []column[throughputRun]{
		{"%.0f", func(x throughputRun) float64 { return x.CommittedPerSec }},
		{"%.0f", func(x throughputRun) float64 { return x.DeliveredPerSecMin }},
		{"%.2f", func(x throughputRun) float64 { return x.LatencyP50 }},
		{"%.2f", func(x throughputRun) float64 { return x.LatencyP99 }},
		{"%.2f", func(x throughputRun) float64 { return x.TxP50 }},
		{"%.2f", func(x throughputRun) float64 { return x.TxP99 }},
	}
	for _, x := range r.throughputRuns {
		writeRunRow(tw, x, x.Run, x.Delivered, x.Expected, columns)
	}
	writeSummaryRows(tw, r.throughputRuns, columns)
}

// writeRunRow writes one run: its number, delivered/expected, columns,
// then the cells of extra.
func writeRunRow[T any](tw io.Writer, x T, run int, delivered, expected int64, columns []column[T], extra ...string) {
	fmt.Fprintf(tw, "%d\t%d/%d\t", run, delivered, expected)
	for _, c := range columns {
		fmt.Fprintf(tw, c.format+"\t", c.value(x))
	}
	for _, cell := range extra {
		fmt.Fprint(tw, cell+"\t")
	}
	fmt.Fprintln(tw)
}

// writeSummaryRows writes a median row and a min–max row for columns,
// leaving the delivered/expected column empty.
func writeSummaryRows[T any](tw io.Writer, runs []T, columns []column[T]) {
	spreads := make([]spread, len(columns))
	for i, c := range columns {
		spreads[i] = spreadOf(runs, c.value)
	}

	fmt.Fprint(tw, "median\t\t")
	for i, s := range spreads {
		fmt.Fprintf(tw, columns[i].format+"\t", s.Median)
	}
	fmt.Fprint(tw, "\nmin-max\t\t")
	for i, s := range spreads {
		format := columns[i].format
		fmt.Fprintf(tw, format+"-"+format+"\t", s.Min, s.Max)
	}
	fmt.Fprintln(tw)
}
