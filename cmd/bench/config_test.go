package main

import (
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func noEnv(string) string { return "" }

func TestParseConfigSlowSubscribers(t *testing.T) {
	args := []string{
		"--slow-subscribers", "10",
		"--sidecar-flag=--slow-client-grace=1s",
		"--sidecar-flag", "-write-timeout=2s",
	}
	cfg, err := parseConfig(args, noEnv, io.Discard)
	if err != nil {
		t.Fatalf("parseConfig(%q): %v", args, err)
	}

	if cfg.SlowSubscribers != 10 {
		t.Errorf("SlowSubscribers = %d, want 10", cfg.SlowSubscribers)
	}
	want := []string{"--slow-client-grace=1s", "-write-timeout=2s"}
	if diff := cmp.Diff(want, cfg.SidecarArgs); diff != "" {
		t.Errorf("SidecarArgs mismatch (-want +got):\n%s", diff)
	}
}

func TestParseConfigRejects(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{
			"negative slow subscribers",
			[]string{"--slow-subscribers", "-1"},
			"--slow-subscribers -1",
		},
		{
			"slow subscribers in throughput",
			[]string{"--scenario", "throughput", "--slow-subscribers", "1"},
			"only the latency scenario",
		},
		{
			"sidecar flag for a running sidecar",
			[]string{"--ws-url", "ws://127.0.0.1:7070/v1/ws", "--database-url", "postgres://127.0.0.1/db", "--jwt-secret", "s", "--sidecar-flag=--write-timeout=1s"},
			"--sidecar-flag is set, but --ws-url",
		},
		{
			"sidecar flag without dash",
			[]string{"--sidecar-flag=1s"},
			`--sidecar-flag "1s"`,
		},
		{
			"sidecar flag set by the benchmark",
			[]string{"--sidecar-flag=--addr=127.0.0.1:1"},
			`--sidecar-flag "--addr=127.0.0.1:1"`,
		},
		{
			"sidecar flag with a password",
			[]string{"--sidecar-flag", "-listen-database-url=postgres://u:pw@127.0.0.1/db"},
			"cannot be passed to the sidecar",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseConfig(tt.args, noEnv, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseConfig(%q) = %v, want an error containing %q", tt.args, err, tt.wantErr)
			}
		})
	}
}

func TestCheckSidecarArg(t *testing.T) {
	tests := []struct {
		arg    string
		wantOK bool
	}{
		{"--slow-client-grace=1s", true},
		{"-client-queue-bytes=65536", true},
		{"--migrate", true},
		{"1s", false},
		{"-", false},
		{"--", false},
		{"---x=1", false},
		{"--=1", false},
		{"--jwt-secret=x", false},
		{"-api-keys=k", false},
		{"--database-url=postgres://127.0.0.1/db", false},
	}
	for _, tt := range tests {
		err := checkSidecarArg(tt.arg)
		if gotOK := err == nil; gotOK != tt.wantOK {
			t.Errorf("checkSidecarArg(%q) = %v, want ok %v", tt.arg, err, tt.wantOK)
		}
	}
}
