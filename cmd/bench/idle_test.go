package main

import (
	"context"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestParseVmRSS(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		want    int64
		wantErr bool
	}{
		{"tab and spaces", "Name:\tsidecar\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nRssAnon:\t 100 kB\n", 12345, false},
		{"last line without newline", "Name:\tsidecar\nVmRSS:\t7 kB", 7, false},
		{"zero", "VmRSS:\t0 kB\n", 0, false},
		{"missing line", "Name:\tkthreadd\nState:\tS (sleeping)\n", 0, true},
		{"other unit", "VmRSS:\t12 MB\n", 0, true},
		{"not a number", "VmRSS:\tmany kB\n", 0, true},
		{"negative", "VmRSS:\t-5 kB\n", 0, true},
		{"no unit", "VmRSS:\t12\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseVmRSS(tt.status)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("parseVmRSS() error = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseVmRSS() = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestCheckFileLimit(t *testing.T) {
	tests := []struct {
		connections int
		limit       uint64
		wantOK      bool
	}{
		{10_000, 20_000, true},
		{20_000 - fileReserve, 20_000, true},
		{20_000 - fileReserve + 1, 20_000, false},
		{1, 100, false},
	}
	for _, tt := range tests {
		err := checkFileLimit(tt.connections, tt.limit)
		if gotOK := err == nil; gotOK != tt.wantOK {
			t.Errorf("checkFileLimit(%d, %d) = %v, want ok %v", tt.connections, tt.limit, err, tt.wantOK)
		}
	}
}

func TestParseConfigIdle(t *testing.T) {
	args := []string{"--scenario", "idle", "--connections", "50"}
	cfg, err := parseConfig(args, noEnv, io.Discard)
	if err != nil {
		t.Fatalf("parseConfig(%q): %v", args, err)
	}
	if cfg.Connections != 50 {
		t.Errorf("Connections = %d, want 50", cfg.Connections)
	}

	rejected := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--scenario", "idle", "--connections", "0"}, "--connections 0"},
		{[]string{"--scenario", "idle", "--connections", "50001"}, "--connections 50001"},
		{[]string{"--scenario", "idle", "--sidecar-pid", "1"}, "--sidecar-pid is set, but the benchmark starts its own sidecar"},
		{[]string{"--scenario", "idle", "--sidecar-pid", "-1", "--ws-url", "ws://127.0.0.1:7070/v1/ws", "--database-url", "postgres://127.0.0.1/db", "--jwt-secret", "s"}, "--sidecar-pid -1"},
	}
	for _, tt := range rejected {
		_, err := parseConfig(tt.args, noEnv, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("parseConfig(%q) = %v, want an error containing %q", tt.args, err, tt.wantErr)
		}
	}
}

// serveIdleSidecar starts a fake sidecar that sends the welcome and one
// subscribe result per connection and then reads until the client closes. It
// counts the subscribed connections, and sends on closed when one ends.
func serveIdleSidecar(t *testing.T) (tgt *target, subscribed *atomic.Int64, closed <-chan struct{}) {
	subscribed = new(atomic.Int64)
	ended := make(chan struct{}, 64)
	tgt = serveFakeSidecar(t, 0, func(ws *websocket.Conn, _ <-chan struct{}) {
		subscribed.Add(1)
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		_, _, _ = ws.Read(ctx) // returns when the client closes
		ended <- struct{}{}
	})
	return tgt, subscribed, ended
}

// countEnds returns how many values closed delivers, up to want, within
// testTimeout.
func countEnds(closed <-chan struct{}, want int) int {
	timer := time.NewTimer(testTimeout)
	defer timer.Stop()
	for n := range want {
		select {
		case <-closed:
		case <-timer.C:
			return n
		}
	}
	return want
}

func TestRunIdleOpensAndClosesAll(t *testing.T) {
	tgt, subscribed, closed := serveIdleSidecar(t)
	tgt.SidecarPID = os.Getpid() // the fake sidecar runs in this process
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()

	x, err := runIdle(ctx, config{Connections: 50}, tgt, 1)
	if err != nil {
		t.Fatalf("runIdle: %v", err)
	}

	if x.Connections != 50 {
		t.Errorf("Connections = %d, want 50", x.Connections)
	}
	if got := subscribed.Load(); got != 50 {
		t.Errorf("subscribed connections = %d, want 50", got)
	}
	if x.OpenSeconds <= 0 {
		t.Errorf("OpenSeconds = %g, want > 0", x.OpenSeconds)
	}
	if x.RSSBeforeKiB == nil || x.RSSAfterKiB == nil || x.KiBPerConnection == nil {
		t.Fatalf("memory figures = %v, %v, %v, want all set", x.RSSBeforeKiB, x.RSSAfterKiB, x.KiBPerConnection)
	}
	if *x.RSSBeforeKiB <= 0 {
		t.Errorf("RSSBeforeKiB = %d, want > 0", *x.RSSBeforeKiB)
	}
	if got := countEnds(closed, 50); got != 50 {
		t.Errorf("closed connections = %d, want 50", got)
	}
}

func TestRunIdleUnknownPID(t *testing.T) {
	tgt, _, _ := serveIdleSidecar(t)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()

	x, err := runIdle(ctx, config{Connections: 3}, tgt, 1)
	if err != nil {
		t.Fatalf("runIdle: %v", err)
	}
	if x.KiBPerConnection != nil {
		t.Errorf("KiBPerConnection = %g, want nil for an unknown process id", *x.KiBPerConnection)
	}

	rep := &report{Scenario: scenarioIdle, idleRuns: []idleRun{x}}
	rep.summarize()
	if _, ok := rep.Summary["kib_per_connection"]; ok {
		t.Errorf("Summary has kib_per_connection, want it left out when memory is unknown")
	}
	var table strings.Builder
	if err := rep.writeTable(&table, config{Scenario: scenarioIdle, Connections: 3, Runs: 1}); err != nil {
		t.Fatalf("writeTable: %v", err)
	}
	if !strings.Contains(table.String(), "sidecar memory unknown") {
		t.Errorf("table =\n%s\nwant a line saying that memory is unknown", table.String())
	}
}

func TestParseGoMemory(t *testing.T) {
	profile := "heap profile: 1: 2 [3: 4] @ heap/1048576\n# runtime.MemStats\n# Alloc = 100\n# HeapInuse = 4096\n# Stack = 2048 / 2048\n# MSpan = 10 / 20\n"
	got, err := parseGoMemory(profile)
	if err != nil || got != 6144 {
		t.Errorf("parseGoMemory = %d, %v, want 6144 (heap in use plus stacks)", got, err)
	}

	if _, err := parseGoMemory("# Alloc = 100\n"); err == nil {
		t.Error("parseGoMemory without HeapInuse and Stack: want an error")
	}
}
