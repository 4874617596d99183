package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/server"
)

func TestEnvFlagsPrecedence(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want time.Duration
	}{
		{name: "default", want: 25 * time.Second},
		{name: "variable", env: map[string]string{"SIDECAR_HEARTBEAT": "40s"}, want: 40 * time.Second},
		{name: "flag wins over variable", args: []string{"--heartbeat=50s"}, env: map[string]string{"SIDECAR_HEARTBEAT": "40s"}, want: 50 * time.Second},
		{name: "empty variable is unset", env: map[string]string{"SIDECAR_HEARTBEAT": ""}, want: 25 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := server.Defaults()
			f, _ := newServeFlags(&cfg)
			f.fs.SetOutput(&bytes.Buffer{})
			if err := f.parse(tt.args, func(k string) string { return tt.env[k] }); err != nil {
				t.Fatalf("parse: %v", err)
			}
			if cfg.Heartbeat != tt.want {
				t.Errorf("Heartbeat = %s, want %s", cfg.Heartbeat, tt.want)
			}
		})
	}
}

func TestEnvFlagsListVariable(t *testing.T) {
	cfg := server.Defaults()
	f, _ := newServeFlags(&cfg)
	env := map[string]string{"SIDECAR_API_KEYS": " key1, ,key2 "}
	if err := f.parse(nil, func(k string) string { return env[k] }); err != nil {
		t.Fatalf("parse: %v", err)
	}
	if got := strings.Join(cfg.APIKeys, "|"); got != "key1|key2" {
		t.Errorf("APIKeys = %q, want key1|key2", got)
	}
}

func TestEnvFlagsInvalidVariable(t *testing.T) {
	cfg := server.Defaults()
	f, _ := newServeFlags(&cfg)
	var output bytes.Buffer
	f.fs.SetOutput(&output)

	err := f.parse(nil, func(k string) string {
		if k == "SIDECAR_HEARTBEAT" {
			return "soon"
		}
		return ""
	})
	if err == nil {
		t.Fatal("parse with SIDECAR_HEARTBEAT=soon succeeded, want an error")
	}
	if want := `invalid value "soon" for environment variable SIDECAR_HEARTBEAT`; !strings.Contains(output.String(), want) {
		t.Errorf("output = %q, want it to contain %q", output.String(), want)
	}
}

func TestServeFlagsDebugAddr(t *testing.T) {
	cfg := server.Defaults()
	f, flags := newServeFlags(&cfg)
	env := map[string]string{"SIDECAR_DEBUG_ADDR": "127.0.0.1:6060"}
	if err := f.parse(nil, func(k string) string { return env[k] }); err != nil {
		t.Fatalf("parse: %v", err)
	}
	if *flags.debugAddr != "127.0.0.1:6060" {
		t.Errorf("debug address = %q, want 127.0.0.1:6060", *flags.debugAddr)
	}
}
