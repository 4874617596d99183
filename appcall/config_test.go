package appcall

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no URL", Config{}, "--app-rpc-url is not set"},
		{"relative URL", Config{URL: "/rpc"}, `invalid --app-rpc-url "/rpc": the scheme must be http or https`},
		{"other scheme", Config{URL: "ftp://app/rpc"}, "the scheme must be http or https"},
		{"no host", Config{URL: "http:///rpc"}, "the URL has no host"},
		{"unparsable URL", Config{URL: "http://app:port/"}, "invalid --app-rpc-url"},
		{"token with newline", Config{URL: "http://app/rpc", Token: "abc\nX-Evil: 1"}, "invalid --app-rpc-token"},
		{"negative timeout", Config{URL: "http://app/rpc", Timeout: -time.Second}, "timeout -1s"},
		{"negative size", Config{URL: "http://app/rpc", MaxResponseBytes: -1}, "size -1 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil {
				t.Fatalf("New(%+v) error = nil, want one containing %q", tt.cfg, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("New(%+v) error = %q, want it to contain %q", tt.cfg, err, tt.want)
			}
		})
	}
}

func TestNewHidesSecrets(t *testing.T) {
	tests := []Config{
		{URL: "ftp://user:hunter2@app/rpc"},
		{URL: "http://user:hunter2@app:port/"},
		{URL: "http://app/rpc", Token: "hunter2\n"},
	}
	for _, cfg := range tests {
		_, err := New(cfg)
		if err == nil {
			t.Fatalf("New(%q) error = nil, want one", cfg.URL)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("New(%q) error = %q, want it without the secret", cfg.URL, err)
		}
	}
}

func TestNewDefaults(t *testing.T) {
	f, err := New(Config{URL: "https://app.internal:8443/rpc"})
	if err != nil {
		t.Fatalf("New error = %v, want none", err)
	}
	defer f.Close()

	if f.timeout != DefaultTimeout {
		t.Errorf("timeout = %s, want %s", f.timeout, DefaultTimeout)
	}
	if f.maxBytes != DefaultMaxResponseBytes {
		t.Errorf("maxBytes = %d, want %d", f.maxBytes, DefaultMaxResponseBytes)
	}
	if f.client == http.DefaultClient {
		t.Errorf("client is http.DefaultClient, want a client of the Forwarder's own")
	}
	transport, ok := f.client.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("client transport is %T, want *http.Transport", f.client.Transport)
	}
	if transport.MaxIdleConnsPerHost != defaultMaxIdleConnsPerHost {
		t.Errorf("MaxIdleConnsPerHost = %d, want %d", transport.MaxIdleConnsPerHost, defaultMaxIdleConnsPerHost)
	}
}

func TestFormatBytes(t *testing.T) {
	tests := []struct {
		n    int64
		want string
	}{
		{16 << 20, "16 MiB"},
		{1024, "1 KiB"},
		{1536, "1536 bytes"},
		{100, "100 bytes"},
	}
	for _, tt := range tests {
		if got := formatBytes(tt.n); got != tt.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tt.n, got, tt.want)
		}
	}
}
