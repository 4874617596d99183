package main

import (
	"fmt"
	"io"
)

// summarizeIdle fills Runs and Summary from the idle runs. The memory
// figure is left out when any run could not read the sidecar's memory.
func (r *report) summarizeIdle() {
	r.Runs = r.idleRuns
	r.Summary = map[string]spread{
		"open_s":  spreadOf(r.idleRuns, func(x idleRun) float64 { return x.OpenSeconds }),
		"close_s": spreadOf(r.idleRuns, func(x idleRun) float64 { return x.CloseSeconds }),
	}
	if idleMemoryKnown(r.idleRuns) {
		r.Summary["kib_per_connection"] = spreadOf(r.idleRuns, func(x idleRun) float64 { return *x.KiBPerConnection })
	}
	if idleGoMemoryKnown(r.idleRuns) {
		r.Summary["go_kib_per_connection"] = spreadOf(r.idleRuns, func(x idleRun) float64 { return *x.GoKiBPerConnection })
	}
}

// idleGoMemoryKnown reports whether every run read the sidecar's Go
// memory figures.
func idleGoMemoryKnown(runs []idleRun) bool {
	for _, x := range runs {
		if x.GoKiBPerConnection == nil {
			return false
		}
	}
	return len(runs) > 0
}

// idleMemoryKnown reports whether every run read the sidecar's memory.
func idleMemoryKnown(runs []idleRun) bool {
	for _, x := range runs {
		if x.KiBPerConnection == nil {
			return false
		}
	}
	return len(runs) > 0
}

// idleTable writes the idle runs, with the memory columns only when
// every run read the sidecar's memory.
func (r *report) idleTable(tw io.Writer) {
	memory := idleMemoryKnown(r.idleRuns)
	header := "run\tconnected/requested\topen s\tclose s\t"
	columns := []column[idleRun]{
		{"%.3f", func(x idleRun) float64 { return x.OpenSeconds }},
		{"%.3f", func(x idleRun) float64 { return x.CloseSeconds }},
	}
	if memory {
		header += "sidecar RSS before MiB\tafter MiB\tKiB per connection\t"
		columns = append(columns,
			column[idleRun]{"%.1f", func(x idleRun) float64 { return float64(*x.RSSBeforeKiB) / 1024 }},
			column[idleRun]{"%.1f", func(x idleRun) float64 { return float64(*x.RSSAfterKiB) / 1024 }},
			column[idleRun]{"%.2f", func(x idleRun) float64 { return *x.KiBPerConnection }},
		)
	}

	if idleGoMemoryKnown(r.idleRuns) {
		header += "Go heap+stacks KiB per connection\t"
		columns = append(columns, column[idleRun]{"%.2f", func(x idleRun) float64 { return *x.GoKiBPerConnection }})
	}

	fmt.Fprintln(tw, header)
	for _, x := range r.idleRuns {
		n := int64(x.Connections)
		writeRunRow(tw, x, x.Run, n, n, columns)
	}
	writeSummaryRows(tw, r.idleRuns, columns)
	if !memory {
		fmt.Fprintln(tw, "sidecar memory unknown: give --sidecar-pid with --ws-url to read it")
	}
	if limit, ok := r.Parameters["open_files_limit"]; ok {
		fmt.Fprintf(tw, "open files limit (RLIMIT_NOFILE, soft raised to hard) of the benchmark and of a sidecar it starts: %d\n", limit)
	}
}

// describeIdle describes the idle scenario for the report's first line.
func describeIdle(cfg config) string {
	sidecar := "a fresh sidecar process on a new port for each run"
	if cfg.external() {
		sidecar = "the running sidecar"
	}
	return fmt.Sprintf("idle (connections=%d, each subscribed to a topic of its own, opened %d at a time, memory read %s after the last subscribe, %s, runs=%d)",
		cfg.Connections, idleDialConcurrency, idleSettle, sidecar, cfg.Runs)
}
