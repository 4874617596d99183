package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestWriteVersion(t *testing.T) {
	full := &debug.BuildInfo{
		GoVersion: "go1.26.0",
		Main:      debug.Module{Path: "github.com/pgsidecar/sidecar", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{
			{Key: "-trimpath", Value: "true"},
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name    string
		version string
		info    *debug.BuildInfo
		want    string
	}{
		{
			name:    "no build information",
			version: "v1.2.3",
			info:    nil,
			want:    "sidecar v1.2.3\n",
		},
		{
			name:    "full build information",
			version: "v1.2.3",
			info:    full,
			want: "sidecar v1.2.3\n" +
				"go:       go1.26.0\n" +
				"module:   github.com/pgsidecar/sidecar v1.2.3\n" +
				"vcs:      git\n" +
				"revision: 0123456789abcdef0123456789abcdef01234567\n" +
				"time:     2026-01-02T03:04:05Z\n" +
				"modified: true\n",
		},
		{
			name:    "without version control",
			version: "dev",
			info: &debug.BuildInfo{
				GoVersion: "go1.26.0",
				Main:      debug.Module{Path: "github.com/pgsidecar/sidecar", Version: "(devel)"},
			},
			want: "sidecar dev\n" +
				"go:       go1.26.0\n" +
				"module:   github.com/pgsidecar/sidecar (devel)\n",
		},
		{
			name:    "module without version",
			version: "dev",
			info:    &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "example.com/m"}},
			want: "sidecar dev\n" +
				"go:       go1.26.0\n" +
				"module:   example.com/m\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := writeVersion(&out, tt.version, tt.info); err != nil {
				t.Fatalf("writeVersion: %v", err)
			}
			if got := out.String(); got != tt.want {
				t.Errorf("writeVersion output =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestRunVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"version"}, func(string) string { return "" }, &stdout, &stderr); err != nil {
		t.Fatalf("run version: %v (stderr %q)", err, stderr.String())
	}
	lines := strings.Split(stdout.String(), "\n")

	if want := "sidecar " + version; lines[0] != want {
		t.Errorf("first line = %q, want %q", lines[0], want)
	}
	if want := "go:       " + runtime.Version(); !strings.Contains(stdout.String(), want+"\n") {
		t.Errorf("output = %q, want a line %q", stdout.String(), want)
	}
}

// TestVersionOfBuiltBinary builds the command with -ldflags
// "-X main.version=...", as release builds set the version, and runs
// "sidecar version".
func TestVersionOfBuiltBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}

	binary := filepath.Join(t.TempDir(), "sidecar")
	build := exec.Command(goTool, "build", "-buildvcs=auto", "-ldflags", "-X main.version=v9.8.7-test", "-o", binary, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(binary, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("sidecar version: %v\n%s", err, out)
	}
	text := string(out)

	if first, _, _ := strings.Cut(text, "\n"); first != "sidecar v9.8.7-test" {
		t.Errorf("first line = %q, want %q", first, "sidecar v9.8.7-test")
	}
	if !regexp.MustCompile(`(?m)^go: +go\S+$`).MatchString(text) {
		t.Errorf("output = %q, want a go line", text)
	}
	if !regexp.MustCompile(`(?m)^module: +github\.com/pgsidecar/sidecar\b`).MatchString(text) {
		t.Errorf("output = %q, want the module line", text)
	}
	// The version control lines appear only when git is available and the
	// source is a checkout, so each is checked only when present.
	if strings.Contains(text, "\nrevision:") && !regexp.MustCompile(`(?m)^revision: +[0-9a-f]{40}$`).MatchString(text) {
		t.Errorf("output = %q, want a 40-digit revision", text)
	}
	if strings.Contains(text, "\nmodified:") && !regexp.MustCompile(`(?m)^modified: +(true|false)$`).MatchString(text) {
		t.Errorf("output = %q, want modified true or false", text)
	}
}
