// Command bench measures the sidecar's delivery latency and throughput,
// and the cost of idle connections, over loopback, with the load generator, the sidecar and Postgres on one
// machine. Run "go run ./cmd/bench -h" for its flags. docs/benchmarks.md
// explains the scenarios and records measured figures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	if err == nil {
		return
	}
	var exit exitError
	if errors.As(err, &exit) {
		os.Exit(int(exit))
	}
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// exitError ends the program with its code and no further message.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// run parses args, sets up the target, runs the scenario cfg.Runs times
// and prints the report on stdout. getenv supplies the secrets that args
// do not give. Progress and warnings go to stderr. It returns
// exitError(1) after the report when a run lost deliveries.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	progress := func(format string, a ...any) {
		fmt.Fprintf(stderr, "bench: "+format+"\n", a...)
	}

	// Before the sidecar starts, so that it inherits the raised limit.
	var fileLimit uint64
	if cfg.Scenario == scenarioIdle {
		if fileLimit, err = raiseFileLimit(); err != nil {
			return err
		}
		if err := checkFileLimit(cfg.Connections, fileLimit); err != nil {
			return err
		}
	}

	t, err := setUpTarget(ctx, cfg, progress)
	defer func() {
		if closeErr := t.Close(); closeErr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", closeErr))
		}
	}()
	if err != nil {
		return err
	}

	if cfg.CPUProfile != "" {
		stopProfile, err := startCPUProfile(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer stopProfile()
	}

	rep := newReport(cfg, args, t.Setup)
	if cfg.Scenario == scenarioIdle {
		rep.Parameters["open_files_limit"] = fileLimit
	}
	for i := 1; i <= cfg.Runs; i++ {
		progress("%s run %d of %d", cfg.Scenario, i, cfg.Runs)
		if err := runScenario(ctx, cfg, t, i, rep); err != nil {
			return fmt.Errorf("%s run %d: %w", cfg.Scenario, i, err)
		}
	}
	rep.summarize()

	if cfg.JSON {
		err = rep.writeJSON(stdout)
	} else {
		err = rep.writeTable(stdout, cfg)
	}
	if err != nil {
		return err
	}

	if lines := rep.shortfalls(); len(lines) > 0 {
		fmt.Fprintf(stderr, "bench: %s\n", strings.Join(lines, "\nbench: "))
		return exitError(1)
	}
	return nil
}

// runScenario runs cfg.Scenario once and appends the run to rep.
func runScenario(ctx context.Context, cfg config, t *target, run int, rep *report) error {
	switch cfg.Scenario {
	case scenarioLatency:
		x, err := runLatency(ctx, cfg, t, run)
		if err != nil {
			return err
		}
		rep.latencyRuns = append(rep.latencyRuns, x)
	case scenarioThroughput:
		x, err := runThroughput(ctx, cfg, t, run)
		if err != nil {
			return err
		}
		rep.throughputRuns = append(rep.throughputRuns, x)
	case scenarioIdle:
		x, err := runIdle(ctx, cfg, t, run)
		if err != nil {
			return err
		}
		rep.idleRuns = append(rep.idleRuns, x)
	}
	return nil
}

// startCPUProfile starts profiling this process into path. The returned
// function stops the profile and closes the file.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
