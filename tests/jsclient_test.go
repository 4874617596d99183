package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	osexec "os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// jsTestTimeout bounds the whole run of the JavaScript client's tests.
const jsTestTimeout = 5 * time.Minute

// TestJSClient runs the JavaScript client's Node tests (js/test) against a
// real sidecar. The sidecar listens on a fixed loopback address so that the
// control server can stop it and start a new one on the same address, as a
// restart would. The control server also runs SQL on the sidecar's database
// and calls a connected client through the sidecar's HTTP API. The Node
// tests find everything through environment variables:
//
//	SIDECAR_WS_URL       ws://127.0.0.1:PORT/v1/ws
//	SIDECAR_HTTP_URL     http://127.0.0.1:PORT
//	SIDECAR_CONTROL_URL  the control server's base URL
//	SIDECAR_JWT_SECRET   the HS256 secret the tests sign tokens with
//	SIDECAR_API_KEY      the application's API key
func TestJSClient(t *testing.T) {
	jsDir, err := filepath.Abs("../js")
	if err != nil {
		t.Fatal(err)
	}
	// In CI a missing tool fails the test, as a missing Postgres does.
	skip := t.Skip
	if os.Getenv("CI") == "true" {
		skip = t.Fatal
	}
	node, err := osexec.LookPath("node")
	if err != nil {
		skip("node is not on PATH: install Node 20 or later (apt-get install nodejs npm), then run npm ci --prefix js")
	}
	if _, err := os.Stat(filepath.Join(jsDir, "node_modules")); err != nil {
		skip("js/node_modules is missing: run npm ci --prefix js")
	}
	files, err := filepath.Glob(filepath.Join(jsDir, "test", "*.test.js"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files in %s/test (err %v)", jsDir, err)
	}

	db := pgtest.NewDatabase(t)
	rs := &restartableSidecar{t: t, addr: freeAddr(t), dbURL: db}
	if err := rs.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rs.stop)

	control := httptest.NewServer(rs.controlHandler())
	t.Cleanup(control.Close)

	ctx, cancel := context.WithTimeout(t.Context(), jsTestTimeout)
	defer cancel()
	args := append([]string{"--test", "--test-concurrency=1", "--test-reporter=spec"}, files...)
	cmd := osexec.CommandContext(ctx, node, args...)
	cmd.Dir = jsDir
	cmd.Env = append(os.Environ(),
		"SIDECAR_WS_URL=ws://"+rs.addr+"/v1/ws",
		"SIDECAR_HTTP_URL=http://"+rs.addr,
		"SIDECAR_CONTROL_URL="+control.URL,
		"SIDECAR_JWT_SECRET="+testSecret,
		"SIDECAR_API_KEY="+testAPIKey,
	)
	// Ending the context kills node; WaitDelay then bounds the wait for
	// the output pipes that its children may still hold.
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("node --test did not finish within %s:\n%s", jsTestTimeout, out)
	}
	if err != nil {
		t.Fatalf("node --test failed (%v):\n%s", err, out)
	}
	t.Logf("node --test:\n%s", out)
}

// restartableSidecar is an in-process sidecar on a fixed address that can be
// stopped and started again. Its in-process application implements app.add
// and app.whoami (see embeddedMethods).
type restartableSidecar struct {
	t     *testing.T
	addr  string
	dbURL string

	mu      sync.Mutex
	running func() // stops the running server; nil while stopped
}

// start starts a sidecar on rs.addr and waits until it is ready. It does
// nothing when one is running.
func (rs *restartableSidecar) start() error {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.running != nil {
		return nil
	}

	cfg := server.Defaults()
	cfg.DatabaseURL = rs.dbURL
	cfg.JWTSecret = []byte(testSecret)
	cfg.APIKeys = []string{testAPIKey}
	cfg.DrainTimeout = 5 * time.Second
	cfg.Heartbeat = 5 * time.Second
	// Without leeway, a test can let a token expire within seconds.
	cfg.JWTLeeway = 0
	cfg.Logger = testLogger(rs.t)
	cfg.Application = applicationFunc(embeddedMethods)
	srv, err := server.New(cfg)
	if err != nil {
		return fmt.Errorf("server.New: %w", err)
	}

	// The previous server's socket may still be closing: retry the listen
	// for a bounded time.
	var ln net.Listener
	deadline := time.Now().Add(waitLong)
	for {
		ln, err = net.Listen("tcp", rs.addr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("listen on %s: %w", rs.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ctx, ln); err != nil {
			rs.t.Errorf("Serve: %v", err)
		}
	})
	rs.running = func() { cancel(); wg.Wait() }

	for {
		resp, err := http.Get("http://" + rs.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sidecar on %s not ready within %s", rs.addr, waitLong)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop drains the running sidecar, closing its websockets with 1012, and
// waits until it has stopped.
func (rs *restartableSidecar) stop() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.running != nil {
		rs.running()
		rs.running = nil
	}
}

// controlHandler serves the requests of the Node tests, each a POST with a
// JSON body:
//
//	/stop     stops the sidecar
//	/start    starts it again on the same address
//	/restart  both
//	/sql      {"sql": S} runs S on the sidecar's database and returns
//	          {"rows": [[...], ...]}
//	/call     {"client_id", "method", "params", "timeout_ms"} posts to the
//	          sidecar's /v1/clients/{client_id}/call and returns its status
//	          and body as {"status", "body"}
//
// Failures are 500 with the error as text.
func (rs *restartableSidecar) controlHandler() http.Handler {
	mux := http.NewServeMux()
	fail := func(w http.ResponseWriter, err error) {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
	reply := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}

	mux.HandleFunc("POST /stop", func(w http.ResponseWriter, r *http.Request) {
		rs.stop()
		reply(w, map[string]any{})
	})
	mux.HandleFunc("POST /start", func(w http.ResponseWriter, r *http.Request) {
		if err := rs.start(); err != nil {
			fail(w, err)
			return
		}
		reply(w, map[string]any{})
	})
	mux.HandleFunc("POST /restart", func(w http.ResponseWriter, r *http.Request) {
		rs.stop()
		if err := rs.start(); err != nil {
			fail(w, err)
			return
		}
		reply(w, map[string]any{})
	})
	mux.HandleFunc("POST /sql", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			SQL string `json:"sql"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.SQL == "" {
			http.Error(w, `body must be {"sql": "..."}`, http.StatusBadRequest)
			return
		}
		rows, err := rs.query(r.Context(), body.SQL)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, map[string]any{"rows": rows})
	})
	mux.HandleFunc("POST /call", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ClientID  string          `json:"client_id"`
			Method    string          `json:"method"`
			Params    json.RawMessage `json:"params"`
			TimeoutMS int             `json:"timeout_ms"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.ClientID == "" {
			http.Error(w, `body must be {"client_id", "method", "params", "timeout_ms"}`, http.StatusBadRequest)
			return
		}
		status, answer, err := rs.callClient(r.Context(), body.ClientID, body.Method, body.Params, body.TimeoutMS)
		if err != nil {
			fail(w, err)
			return
		}
		reply(w, map[string]any{"status": status, "body": answer})
	})
	return mux
}

// query runs sql on a new connection and returns every row's values.
func (rs *restartableSidecar) query(ctx context.Context, sql string) ([][]any, error) {
	ctx, cancel := context.WithTimeout(ctx, waitLong)
	defer cancel()
	conn, err := pgx.Connect(ctx, rs.dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())

	rows, err := conn.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("query %q: %w", sql, err)
	}
	defer rows.Close()
	out := [][]any{}
	for rows.Next() {
		values, err := rows.Values()
		if err != nil {
			return nil, fmt.Errorf("query %q: %w", sql, err)
		}
		out = append(out, values)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query %q: %w", sql, err)
	}
	return out, nil
}

// callClient posts a call to the sidecar's client-call endpoint.
func (rs *restartableSidecar) callClient(ctx context.Context, clientID, method string, params json.RawMessage, timeoutMS int) (int, json.RawMessage, error) {
	payload := map[string]any{"method": method}
	if len(params) > 0 {
		payload["params"] = params
	}
	if timeoutMS > 0 {
		payload["timeout_ms"] = timeoutMS
	}
	b, err := json.Marshal(payload)
	if err != nil {
		return 0, nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, waitLong+time.Duration(timeoutMS)*time.Millisecond)
	defer cancel()
	url := "http://" + rs.addr + "/v1/clients/" + clientID + "/call"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("POST %s: %w", url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("POST %s: read body: %w", url, err)
	}
	if !json.Valid(raw) {
		return 0, nil, errors.New("POST " + url + ": body is not JSON: " + string(raw))
	}
	return resp.StatusCode, raw, nil
}
