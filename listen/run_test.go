package listen

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// logRecorder is a slog.Handler that keeps every record's message and
// attributes as text.
type logRecorder struct {
	mu      sync.Mutex
	records []loggedRecord
}

type loggedRecord struct {
	msg   string
	attrs map[string]string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	rec := loggedRecord{msg: r.Message, attrs: map[string]string{}}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})

	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, rec)
	return nil
}

func (h *logRecorder) withMessage(msg string) []loggedRecord {
	h.mu.Lock()
	defer h.mu.Unlock()

	var out []loggedRecord
	for _, r := range h.records {
		if r.msg == msg {
			out = append(out, r)
		}
	}
	return out
}

func (h *logRecorder) contains(s string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()

	for _, r := range h.records {
		if strings.Contains(fmt.Sprint(r), s) {
			return true
		}
	}
	return false
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	connect := func(context.Context) (*pgx.Conn, error) { return nil, errors.New("unused") }

	tests := []struct {
		name string
		cfg  Config
	}{
		{"no Connect", Config{Channels: []string{"c"}}},
		{"no channels", Config{Connect: connect}},
		{"empty channel", Config{Connect: connect, Channels: []string{"c", ""}}},
		{"long channel", Config{Connect: connect, Channels: []string{strings.Repeat("x", 64)}}},
		{"repeated channel", Config{Connect: connect, Channels: []string{"a", "b", "a"}}},
		{"negative buffer", Config{Connect: connect, Channels: []string{"c"}, Buffer: -1}},
		{"negative ping interval", Config{Connect: connect, Channels: []string{"c"}, PingInterval: -time.Second}},
		{"min over max backoff", Config{Connect: connect, Channels: []string{"c"}, MinBackoff: time.Minute, MaxBackoff: time.Second}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.cfg); err == nil {
				t.Errorf("New(%+v) = nil error, want an error", tt.cfg)
			}
		})
	}
}

func TestNewAcceptsCaseVariants(t *testing.T) {
	connect := func(context.Context) (*pgx.Conn, error) { return nil, errors.New("unused") }

	if _, err := New(Config{Connect: connect, Channels: []string{"orders", "Orders"}}); err != nil {
		t.Errorf("New with channels orders and Orders = %v, want nil: they are different channels", err)
	}
}

func TestNewAppliesDefaults(t *testing.T) {
	connect := func(context.Context) (*pgx.Conn, error) { return nil, errors.New("unused") }

	l, err := New(Config{Connect: connect, Channels: []string{"c"}})
	if err != nil {
		t.Fatalf("New = %v, want nil", err)
	}

	checks := []struct {
		name      string
		got, want any
	}{
		{"Events capacity", cap(l.Events()), DefaultBuffer},
		{"PingInterval", l.cfg.PingInterval, DefaultPingInterval},
		{"PingTimeout", l.cfg.PingTimeout, DefaultPingTimeout},
		{"ConnectTimeout", l.cfg.ConnectTimeout, DefaultConnectTimeout},
		{"MinBackoff", l.cfg.MinBackoff, DefaultMinBackoff},
		{"MaxBackoff", l.cfg.MaxBackoff, DefaultMaxBackoff},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestRunRetriesFailingConnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		connectErr := errors.New("dial postgres://bob:s3cret@db/app: connection refused")
		var attempts []time.Time
		logs := &logRecorder{}

		l, err := New(Config{
			Connect: func(context.Context) (*pgx.Conn, error) {
				attempts = append(attempts, time.Now())
				return nil, connectErr
			},
			Channels: []string{"c"},
			Logger:   slog.New(logs),
		})
		if err != nil {
			t.Fatalf("New = %v", err)
		}
		l.rand = fixedRand(0.5) // no jitter

		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()

		time.Sleep(5 * time.Minute)
		synctest.Wait()

		select {
		case <-l.Ready():
			t.Error("Ready() is closed, want open while every connect fails")
		default:
		}

		s := l.Status()
		if s.Connected || s.Generation != 0 {
			t.Errorf("Status() = %+v, want not connected, generation 0", s)
		}
		if !strings.Contains(s.LastError, "connection refused") || strings.Contains(s.LastError, "s3cret") {
			t.Errorf("Status().LastError = %q, want the connect error with the password masked", s.LastError)
		}

		// Cancelling during a backoff sleep ends Run at once.
		cancel()
		synctest.Wait()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil after cancel", err)
			}
		default:
			t.Fatal("Run still running after cancel, want it to return without sleeping on")
		}

		if _, ok := <-l.Events(); ok {
			t.Error("Events() delivered an event, want it closed after Run returned")
		}

		wantDelay := 100 * time.Millisecond
		for i := 1; i < len(attempts); i++ {
			if got := attempts[i].Sub(attempts[i-1]); got != wantDelay {
				t.Errorf("delay before attempt %d = %v, want %v", i+1, got, wantDelay)
			}
			wantDelay = min(wantDelay*2, 30*time.Second)
		}
		if n := len(attempts); n < 2 || attempts[n-1].Sub(attempts[n-2]) != 30*time.Second {
			t.Errorf("%d attempts in 5 minutes, want the last delay at the 30s cap", n)
		}
		if got := l.Status().Reconnects; got != uint64(len(attempts)-1) {
			t.Errorf("Status().Reconnects = %d, want %d", got, len(attempts)-1)
		}

		failures := logs.withMessage("listener connect failed")
		if len(failures) < 2 || len(failures) > 1+int(5*time.Minute/logInterval) {
			t.Errorf("logged %d connect failures for %d attempts in 5 minutes, want 2 to %d", len(failures), len(attempts), 1+int(5*time.Minute/logInterval))
		}
		if len(failures) > 1 && failures[1].attrs["failures_since_last_log"] == "1" {
			t.Errorf("second failure line counts 1 failure, want the suppressed failures counted: %v", failures[1].attrs)
		}
		if logs.contains("s3cret") {
			t.Error("logs contain the password, want it masked")
		}
	})
}

func TestRunReturnsConfigError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		parseErr := pgconn.NewParseConfigError("postgres://bob:s3cret@db:port/app", "invalid port", nil)
		attempts := 0

		l, err := New(Config{
			Connect: func(context.Context) (*pgx.Conn, error) {
				attempts++
				return nil, fmt.Errorf("parse listener URL: %w", parseErr)
			},
			Channels: []string{"c"},
		})
		if err != nil {
			t.Fatalf("New = %v", err)
		}

		err = l.Run(t.Context())

		var target *pgconn.ParseConfigError
		if !errors.As(err, &target) {
			t.Errorf("Run = %v, want an error wrapping *pgconn.ParseConfigError", err)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Run error = %q, want the password masked", err)
		}
		if attempts != 1 {
			t.Errorf("Connect called %d times, want 1: a parse error cannot go away", attempts)
		}
	})
}

func TestRunTwiceReturnsErrRunning(t *testing.T) {
	connect := func(context.Context) (*pgx.Conn, error) { return nil, errors.New("refused") }
	l, err := New(Config{Connect: connect, Channels: []string{"c"}})
	if err != nil {
		t.Fatalf("New = %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := l.Run(ctx); err != nil {
		t.Errorf("Run with an ended ctx = %v, want nil", err)
	}

	if err := l.Run(t.Context()); !errors.Is(err, ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
}

func TestPasswordsMaskedInStatusAndRunError(t *testing.T) {
	const password = "s3cret-pw"

	t.Run("connect error", func(t *testing.T) {
		// Nothing listens on port 1, so pgx fails with a dial error.
		url := "postgres://bob:" + password + "@127.0.0.1:1/app?connect_timeout=5"
		l, err := New(Config{
			Connect:  func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
			Channels: []string{"c"},
		})
		if err != nil {
			t.Fatalf("New = %v", err)
		}

		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx) }()

		eventually(t, "Status().LastError is set", func() bool { return l.Status().LastError != "" })
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}

		if got := l.Status().LastError; strings.Contains(got, password) {
			t.Errorf("Status().LastError = %q, want no password", got)
		}
	})

	t.Run("unparsable URL", func(t *testing.T) {
		url := "postgres://bob:" + password + "@127.0.0.1:notaport/app"
		l, err := New(Config{
			Connect:  func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
			Channels: []string{"c"},
		})
		if err != nil {
			t.Fatalf("New = %v", err)
		}

		err = l.Run(t.Context())
		if err == nil {
			t.Fatal("Run = nil, want the parse error")
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("Run = %q, want no password", err)
		}
		if got := l.Status().LastError; got == "" || strings.Contains(got, password) {
			t.Errorf("Status().LastError = %q, want the parse error without the password", got)
		}
	})
}
