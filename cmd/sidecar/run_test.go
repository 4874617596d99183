package main

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestPubWithoutAPIKeySendsNothing(t *testing.T) {
	var requests atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
	}))
	defer srv.Close()

	noEnv := func(string) string { return "" }
	err := run(t.Context(), []string{"pub", "--url", srv.URL, "chat.room1", `{"text":"hi"}`}, noEnv, io.Discard, io.Discard)
	if err == nil {
		t.Fatal("sidecar pub without an API key succeeded, want an error")
	}
	if errors.As(err, new(exitError)) {
		t.Errorf("sidecar pub = %v, want an error message for main to print", err)
	}
	if want := "--api-key (SIDECAR_API_KEY) is not set, and neither is SIDECAR_API_KEYS: give one of the keys that the sidecar's --api-keys lists"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("sidecar pub sent %d requests, want 0", n)
	}
}

func TestPubUsesFirstOfAPIKeys(t *testing.T) {
	var authorization atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		authorization.Store(r.Header.Get("Authorization"))
		_, _ = io.WriteString(w, `{"id":1}`)
	}))
	defer srv.Close()

	env := map[string]string{"SIDECAR_API_KEYS": " , key1,key2"}
	var stdout strings.Builder
	err := run(t.Context(), []string{"pub", "--url", srv.URL, "chat.room1", `{"text":"hi"}`}, func(k string) string { return env[k] }, &stdout, io.Discard)
	if err != nil {
		t.Fatalf("sidecar pub: %v", err)
	}
	if got, want := authorization.Load(), "Bearer key1"; got != want {
		t.Errorf("Authorization = %q, want %q", got, want)
	}
	if got, want := stdout.String(), "{\"id\":1}\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}

// The failures of sidecar health are errors, not exit codes, so that main
// prints them with the "sidecar:" prefix as it does for other commands.
func TestHealthNotReady(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"ready":false}`, http.StatusServiceUnavailable)
	}))
	defer srv.Close()

	err := run(t.Context(), []string{"health", srv.URL}, nil, io.Discard, io.Discard)
	if want := `not ready: 503 Service Unavailable {"ready":false}`; err == nil || err.Error() != want {
		t.Errorf("sidecar health = %v, want %q", err, want)
	}
	if errors.As(err, new(exitError)) {
		t.Errorf("sidecar health = %v, want an error message for main to print", err)
	}
}

func TestHealthUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close()

	err = run(t.Context(), []string{"health", url}, nil, io.Discard, io.Discard)
	if err == nil || !strings.HasPrefix(err.Error(), "not ready: ") {
		t.Errorf("sidecar health %s = %v, want an error starting with \"not ready: \"", url, err)
	}
	if errors.As(err, new(exitError)) {
		t.Errorf("sidecar health = %v, want an error message for main to print", err)
	}
}

func TestHealthReady(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, `{"ready":true}`)
	}))
	defer srv.Close()

	var stdout strings.Builder
	if err := run(t.Context(), []string{"health", srv.URL}, nil, &stdout, io.Discard); err != nil {
		t.Fatalf("sidecar health: %v", err)
	}
	if got, want := stdout.String(), "ready\n"; got != want {
		t.Errorf("stdout = %q, want %q", got, want)
	}
}
