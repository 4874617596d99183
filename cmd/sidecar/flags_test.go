package main

import (
	"bytes"
	"errors"
	"flag"
	"io"
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
	if want := `invalid value "soon" for environment variable SIDECAR_HEARTBEAT: expected a duration such as 15s or 2m`; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if errors.As(err, new(commandLineError)) {
		t.Errorf("error %q is a commandLineError, want it to blame the variable only", err)
	}
	if output.Len() != 0 {
		t.Errorf("parse wrote %q, want nothing", output.String())
	}
}

func TestParseFlagsInvalidValues(t *testing.T) {
	const pointer = `run "sidecar serve -h" to list the flags` + "\n"
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{
			name: "duration variable",
			env:  map[string]string{"SIDECAR_DRAIN_TIMEOUT": "15"},
			want: `sidecar: invalid value "15" for environment variable SIDECAR_DRAIN_TIMEOUT: expected a duration such as 15s or 2m` + "\n",
		},
		{
			name: "duration flag",
			args: []string{"--drain-timeout", "15"},
			want: `sidecar: invalid value "15" for --drain-timeout: expected a duration such as 15s or 2m` + "\n" + pointer,
		},
		{
			name: "integer flag",
			args: []string{"--max-connections=many"},
			want: `sidecar: invalid value "many" for --max-connections: expected a whole number` + "\n" + pointer,
		},
		{
			name: "integer out of range",
			args: []string{"--max-connections=99999999999999999999999"},
			want: `sidecar: invalid value "99999999999999999999999" for --max-connections: value out of range, expected a whole number` + "\n" + pointer,
		},
		{
			name: "float variable",
			env:  map[string]string{"SIDECAR_MESSAGE_RATE": "fast"},
			want: `sidecar: invalid value "fast" for environment variable SIDECAR_MESSAGE_RATE: expected a number such as 20 or 0.5` + "\n",
		},
		{
			name: "boolean flag",
			args: []string{"--migrate=maybe"},
			want: `sidecar: invalid value "maybe" for --migrate: expected true or false` + "\n" + pointer,
		},
		{
			name: "boolean variable",
			env:  map[string]string{"SIDECAR_MIGRATE": "yes"},
			want: `sidecar: invalid value "yes" for environment variable SIDECAR_MIGRATE: expected true or false` + "\n",
		},
		{
			name: "unknown flag",
			args: []string{"--drain-timout=15s"},
			want: "sidecar: flag provided but not defined: -drain-timout\n" + pointer,
		},
		{
			name: "missing value",
			args: []string{"--drain-timeout"},
			want: "sidecar: flag needs an argument: -drain-timeout\n" + pointer,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := server.Defaults()
			f, _ := newServeFlags(&cfg)
			var stderr bytes.Buffer

			err := parseFlags(f, tt.args, func(k string) string { return tt.env[k] }, &stderr)
			if want := exitError(2); !errors.Is(err, want) {
				t.Errorf("parseFlags = %v, want %v", err, want)
			}
			if stderr.String() != tt.want {
				t.Errorf("stderr = %q, want %q", stderr.String(), tt.want)
			}
		})
	}
}

func TestParseFlagsHelp(t *testing.T) {
	cfg := server.Defaults()
	f, _ := newServeFlags(&cfg)
	var stderr bytes.Buffer

	err := parseFlags(f, []string{"-h"}, func(string) string { return "" }, &stderr)
	if want := exitError(0); !errors.Is(err, want) {
		t.Errorf("parseFlags -h = %v, want %v", err, want)
	}
	// The flag types and defaults come from the flags' own values, so they
	// show that parsing left no wrapper behind.
	for _, want := range []string{"Usage of sidecar serve:\n", "  -drain-timeout duration\n", `(default 15s)`, "  -max-connections int\n", "  -migrate\n"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("-h output lacks %q:\n%s", want, stderr.String())
		}
	}
}

func TestParseFlagsRestoresValues(t *testing.T) {
	cfg := server.Defaults()
	f, _ := newServeFlags(&cfg)

	err := parseFlags(f, []string{"--drain-timeout=20s", "--heartbeat=soon"}, func(string) string { return "" }, io.Discard)
	if err == nil {
		t.Fatal("parseFlags with --heartbeat=soon succeeded, want an error")
	}
	f.fs.VisitAll(func(fl *flag.Flag) {
		if _, ok := fl.Value.(checkedValue); ok {
			t.Errorf("--%s still has the value wrapper after parsing", fl.Name)
		}
	})
	if cfg.DrainTimeout != 20*time.Second {
		t.Errorf("DrainTimeout = %s, want 20s from the flag before the invalid one", cfg.DrainTimeout)
	}
}

func TestInvalidValueErrorHidesSecret(t *testing.T) {
	var token string
	err := invalidValueError(secretString{&token}, "hunter2", "environment variable SIDECAR_APP_RPC_TOKEN", errors.New("too short"))

	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error = %q, want it without the secret", err)
	}
	if want := "invalid value (secret) for environment variable SIDECAR_APP_RPC_TOKEN: too short"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
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
