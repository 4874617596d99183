package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/server"
)

const (
	testSecret = "test-secret-0123456789abcdef"
	testAPIKey = "test-api-key"
	// waitLong bounds every wait for something that should happen; it is
	// generous because the machines that run the tests are shared.
	waitLong = 20 * time.Second
)

// sidecar is one in-process sidecar server listening on loopback.
type sidecar struct {
	srv   *server.Server
	base  string // http://127.0.0.1:PORT
	ws    string // ws://127.0.0.1:PORT/v1/ws
	dbURL string
	stop  func()
}

// startSidecar starts a sidecar on dbURL and waits until /readyz is 200.
// The test's cleanup stops it.
func startSidecar(t testing.TB, dbURL string, opts ...func(*server.Config)) *sidecar {
	t.Helper()

	cfg := server.Defaults()
	cfg.DatabaseURL = dbURL
	cfg.JWTSecret = []byte(testSecret)
	cfg.APIKeys = []string{testAPIKey}
	cfg.DrainTimeout = 5 * time.Second
	cfg.Logger = testLogger(t)
	for _, o := range opts {
		o(&cfg)
	}

	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	sc := &sidecar{
		srv:   srv,
		base:  "http://" + ln.Addr().String(),
		ws:    "ws://" + ln.Addr().String() + "/v1/ws",
		dbURL: dbURL,
	}
	var once sync.Once
	sc.stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(sc.stop)

	waitFor(t, "sidecar ready", func() bool {
		code, _ := sc.readyz(t)
		return code == http.StatusOK
	})
	return sc
}

func (sc *sidecar) readyz(t testing.TB) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(sc.base + "/readyz")
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

// testLogger writes server logs to the test log when -v is given and
// SIDECAR_TEST_LOG is set; otherwise it discards them.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("SIDECAR_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// token signs a client token for sub with the given patterns.
func token(t testing.TB, sub string, subscribe, publish []string) string {
	t.Helper()
	tok, err := auth.Sign([]byte(testSecret), sub, auth.Realtime{Subscribe: subscribe, Publish: publish}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// dial connects a client with a token that allows everything.
func dial(t testing.TB, sc *sidecar) *client.Conn {
	t.Helper()
	return dialToken(t, sc, token(t, "tester", []string{">", "db.>", "pg.>"}, []string{">"}))
}

func dialToken(t testing.TB, sc *sidecar, tok string) *client.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	c, err := client.Dial(ctx, sc.ws, client.Options{Token: tok})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func subscribe(t testing.TB, c *client.Conn, patterns []string, opts ...client.SubscribeOption) *client.Subscription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	sub, err := c.Subscribe(ctx, patterns, opts...)
	if err != nil {
		t.Fatalf("Subscribe(%v): %v", patterns, err)
	}
	return sub
}

// next returns the subscription's next event, failing the test when none
// arrives within waitLong.
func next(t testing.TB, sub *client.Subscription) client.Event {
	t.Helper()
	select {
	case ev, ok := <-sub.Events():
		if !ok {
			t.Fatalf("subscription %s ended while an event was expected", sub.ID())
		}
		return ev
	case <-time.After(waitLong):
		t.Fatalf("no event on subscription %s within %s", sub.ID(), waitLong)
	}
	return client.Event{}
}

// expectQuiet fails when the subscription receives an event within d.
func expectQuiet(t testing.TB, sub *client.Subscription, d time.Duration) {
	t.Helper()
	select {
	case ev := <-sub.Events():
		t.Fatalf("unexpected event on %s: %s %s (id %d)", sub.ID(), ev.Topic, ev.Data, ev.ID)
	case <-time.After(d):
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", waitLong, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// postJSON sends body to path with the test API key and decodes the answer.
func postJSON(t testing.TB, sc *sidecar, path, key string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, sc.base+path, strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("POST %s: status %d, body not JSON: %s", path, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

// rowData decodes a row-change event's data.
type rowChange struct {
	Op        string         `json:"op"`
	Schema    string         `json:"schema"`
	Table     string         `json:"table"`
	New       map[string]any `json:"new"`
	Old       map[string]any `json:"old"`
	Truncated bool           `json:"truncated"`
}

func decodeRow(t testing.TB, ev client.Event) rowChange {
	t.Helper()
	var rc rowChange
	if err := json.Unmarshal(ev.Data, &rc); err != nil {
		t.Fatalf("event data %s: %v", ev.Data, err)
	}
	return rc
}

var _ = fmt.Sprint

// newTestServer serves srv on a loopback port until the test ends and
// returns its base URL. Unlike startSidecar it does not wait for readiness.
func newTestServer(t testing.TB, srv *server.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return "http://" + ln.Addr().String()
}
