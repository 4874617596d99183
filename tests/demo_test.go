package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/cmd/sidecar/demo"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// chromiumPath is where Debian's chromium package installs the browser
// that the page test drives.
const chromiumPath = "/usr/bin/chromium"

// browserTestTimeout bounds the whole browser script, restart included.
const browserTestTimeout = 4 * time.Minute

// TestDemoPageInBrowser runs js/e2e/demo.test.mjs against the todo page of
// "sidecar dev": two headless Chromium pages stay in sync through SQL
// inserts, the page's own input, and a restart of the sidecar on the same
// address. The script drives this test's control server to run SQL and to
// stop and start the sidecar.
//
// It skips without node, js/e2e/node_modules or /usr/bin/chromium (run
// "npm ci --prefix js/e2e" and "apt-get install chromium"), and fails
// instead with CI=true. With SIDECAR_DEMO_SCREENSHOT=path (relative to the
// repository's root) the script saves a screenshot of the page there, as
// docs/demo.png was made.
func TestDemoPageInBrowser(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	requireBrowserTools(t, root)

	db := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(context.Background(), db)
	if err != nil {
		t.Fatalf("open a pool on the test database: %v", err)
	}
	t.Cleanup(pool.Close)

	addr := freeLoopbackAddr(t)
	dev := &demoSidecar{t: t, addr: addr, dbURL: db}
	if err := dev.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.stop)

	control := serveDemoControl(t, dev, pool)

	screenshot := os.Getenv("SIDECAR_DEMO_SCREENSHOT")
	if screenshot == "" {
		screenshot = filepath.Join(t.TempDir(), "demo.png")
	} else if !filepath.IsAbs(screenshot) {
		screenshot = filepath.Join(root, screenshot)
	}

	ctx, cancel := context.WithTimeout(context.Background(), browserTestTimeout)
	defer cancel()
	cmd := osexec.CommandContext(ctx, "node", "--test", "--test-reporter=spec", "js/e2e/demo.test.mjs")
	cmd.Dir = root
	cmd.Env = append(os.Environ(),
		"DEMO_URL=http://"+addr+"/",
		"DEMO_CONTROL_URL="+control,
		"DEMO_CHROMIUM="+chromiumPath,
		"DEMO_SCREENSHOT="+screenshot,
	)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test js/e2e/demo.test.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("the browser test failed: %v (its output is above)", err)
	}
	if _, err := os.Stat(screenshot); err != nil {
		t.Errorf("screenshot %s was not written: %v", screenshot, err)
	}
}

// requireBrowserTools skips the test, or fails it with CI=true, when node,
// the e2e script's packages or Chromium are missing.
func requireBrowserTools(t *testing.T, root string) {
	t.Helper()
	var missing []string
	if _, err := osexec.LookPath("node"); err != nil {
		missing = append(missing, "node (apt-get install nodejs)")
	}
	if _, err := os.Stat(filepath.Join(root, "js", "e2e", "node_modules", "playwright-core")); err != nil {
		missing = append(missing, "js/e2e/node_modules (npm ci --prefix js/e2e)")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		missing = append(missing, chromiumPath+" (apt-get install chromium)")
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the browser test needs %v", missing)
	}
	t.Skipf("skipping the browser test: missing %v", missing)
}

// freeLoopbackAddr returns a loopback address whose port was free a moment
// ago. The sidecar listens on it again after each restart, so the pages
// reconnect to the same URL.
func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// demoSidecar is the dev server with the demo, which the control server
// stops and starts on the same address. Its methods are safe for
// concurrent use.
type demoSidecar struct {
	t     *testing.T
	addr  string
	dbURL string

	mu      sync.Mutex
	cancel  context.CancelFunc // nil while stopped
	stopped chan struct{}
}

// start serves the demo on d.addr and waits until the todos table exists.
// It does nothing while the sidecar runs.
func (d *demoSidecar) start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel != nil {
		return nil
	}

	cfg := server.Defaults()
	cfg.DatabaseURL = d.dbURL
	cfg.JWTSecret = []byte(testSecret)
	cfg.APIKeys = []string{testAPIKey}
	cfg.DrainTimeout = 5 * time.Second
	cfg.Logger = testLogger(d.t)

	ln, err := net.Listen("tcp", d.addr)
	if err != nil {
		return fmt.Errorf("listen on %s again: %w", d.addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	stopped := make(chan struct{})
	var runErr error
	go func() {
		defer close(stopped)
		runErr = demo.Run(ctx, cfg, ln, func() { close(ready) })
	}()

	select {
	case <-ready:
	case <-stopped:
		cancel()
		return fmt.Errorf("the demo server stopped before it was ready: %v", runErr)
	case <-time.After(waitLong):
		cancel()
		<-stopped
		return fmt.Errorf("the demo server was not ready within %s", waitLong)
	}
	d.cancel, d.stopped = cancel, stopped
	return nil
}

// stop drains the sidecar and waits until it has stopped. It does nothing
// while the sidecar is stopped.
func (d *demoSidecar) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel == nil {
		return
	}
	d.cancel()
	<-d.stopped
	d.cancel, d.stopped = nil, nil
}

// serveDemoControl serves the endpoints that the browser script uses and
// returns their base URL:
//
//	POST /sql    runs the request body as SQL on the demo's database
//	POST /stop   stops the sidecar (its websockets are closed with 1012)
//	POST /start  starts it again on the same address and waits until ready
//
// Each returns 204, or 500 with the error as text.
func serveDemoControl(t *testing.T, dev *demoSidecar, pool *pgxpool.Pool) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /sql", func(w http.ResponseWriter, r *http.Request) {
		sql, err := io.ReadAll(r.Body)
		if err == nil {
			_, err = pool.Exec(r.Context(), string(sql))
		}
		answerControl(w, err)
	})
	mux.HandleFunc("POST /stop", func(w http.ResponseWriter, r *http.Request) {
		dev.stop()
		answerControl(w, nil)
	})
	mux.HandleFunc("POST /start", func(w http.ResponseWriter, r *http.Request) {
		answerControl(w, dev.start())
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("control server: %v", err)
		}
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return "http://" + ln.Addr().String()
}

func answerControl(w http.ResponseWriter, err error) {
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// TestDemoMethods checks the demo's application methods, the rights of the
// page's token and the dev token endpoint, without a browser.
func TestDemoMethods(t *testing.T) {
	db := pgtest.NewDatabase(t)
	addr := freeLoopbackAddr(t)
	dev := &demoSidecar{t: t, addr: addr, dbURL: db}
	if err := dev.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.stop)
	sc := &sidecar{base: "http://" + addr, ws: "ws://" + addr + "/v1/ws", dbURL: db}

	pageToken := fetchDevToken(t, sc.base, "")
	conn := dialToken(t, sc, pageToken)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	var empty demo.List
	if err := conn.Call(ctx, "app.todos.list", struct{}{}, &empty); err != nil {
		t.Fatalf("app.todos.list: %v", err)
	}
	if len(empty.Todos) != 0 || empty.Epoch == "" {
		t.Fatalf("app.todos.list on an empty table = %+v, want no todos and an epoch", empty)
	}
	sub := subscribe(t, conn, []string{"db.public.todos"}, client.WithSince(empty.Head), client.WithEpoch(empty.Epoch))

	var added demo.Todo
	if err := conn.Call(ctx, "app.todos.add", map[string]any{"title": "  buy milk \n"}, &added); err != nil {
		t.Fatalf("app.todos.add: %v", err)
	}
	if added.Title != "buy milk" || added.Done || added.ID == 0 {
		t.Errorf("app.todos.add(\"  buy milk \\n\") = %+v, want a new row titled \"buy milk\", not done", added)
	}
	if rc := decodeRow(t, next(t, sub)); rc.Op != "INSERT" || rc.New["title"] != "buy milk" {
		t.Errorf("event after app.todos.add = %+v, want the INSERT of \"buy milk\"", rc)
	}

	var toggled demo.Todo
	if err := conn.Call(ctx, "app.todos.toggle", map[string]any{"id": added.ID}, &toggled); err != nil {
		t.Fatalf("app.todos.toggle: %v", err)
	}
	if !toggled.Done || toggled.ID != added.ID {
		t.Errorf("app.todos.toggle(%d) = %+v, want the row done", added.ID, toggled)
	}
	if rc := decodeRow(t, next(t, sub)); rc.Op != "UPDATE" || rc.New["done"] != true {
		t.Errorf("event after app.todos.toggle = %+v, want an UPDATE with done true", rc)
	}

	var listed demo.List
	if err := conn.Call(ctx, "app.todos.list", nil, &listed); err != nil {
		t.Fatalf("app.todos.list: %v", err)
	}
	if len(listed.Todos) != 1 || listed.Todos[0].ID != added.ID || !listed.Todos[0].Done {
		t.Errorf("app.todos.list = %+v, want the one row, done", listed.Todos)
	}
	if listed.Head <= empty.Head {
		t.Errorf("app.todos.list head = %d after two writes, want above %d", listed.Head, empty.Head)
	}

	for _, tc := range []struct {
		method string
		params any
		code   int
	}{
		{"app.todos.add", map[string]any{"title": "  "}, -32602},
		{"app.todos.add", map[string]any{"title": strings.Repeat("x", demo.MaxTitleBytes+1)}, -32602},
		{"app.todos.add", map[string]any{"title": "x", "done": true}, -32602},
		{"app.todos.add", []string{"x"}, -32602},
		{"app.todos.toggle", map[string]any{}, -32602},
		{"app.todos.toggle", map[string]any{"id": added.ID + 1000}, -32602},
		{"app.todos.remove", map[string]any{"id": added.ID}, -32601},
		{"app.other", nil, -32003},
	} {
		err := conn.Call(ctx, tc.method, tc.params, nil)
		if got := rpcCode(err); got != tc.code {
			t.Errorf("%s(%v) error code = %d (%v), want %d", tc.method, tc.params, got, err, tc.code)
		}
	}

	_, err := conn.Subscribe(ctx, []string{"chat.>"})
	if got := rpcCode(err); got != -32003 {
		t.Errorf("page token subscribing to chat.> error code = %d (%v), want -32003", got, err)
	}
}

// TestDemoTokenEndpointChecksHost checks that /dev/token serves loopback
// host names only, so another site whose name resolves to 127.0.0.1
// cannot fetch a token.
func TestDemoTokenEndpointChecksHost(t *testing.T) {
	db := pgtest.NewDatabase(t)
	addr := freeLoopbackAddr(t)
	dev := &demoSidecar{t: t, addr: addr, dbURL: db}
	if err := dev.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.stop)
	base := "http://" + addr

	for _, host := range []string{"", "localhost:7070", "[::1]:7070"} {
		if fetchDevToken(t, base, host) == "" {
			t.Errorf("GET /dev/token with Host %q returned no token", host)
		}
	}
	for _, host := range []string{"evil.example", "evil.example:7070", "127.0.0.1.evil.example"} {
		req, _ := http.NewRequest(http.MethodGet, base+"/dev/token", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET /dev/token: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("GET /dev/token with Host %q = %d, want 403", host, resp.StatusCode)
		}
	}
}

// fetchDevToken returns the token of GET /dev/token, sent with the given
// Host header unless it is empty.
func fetchDevToken(t *testing.T, base, host string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/dev/token", nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /dev/token: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /dev/token with Host %q = %d, want 200", host, resp.StatusCode)
	}
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("GET /dev/token: decode the body: %v", err)
	}
	return body.Token
}
