package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/client"
)

// timeout bounds every wait in these tests. It is generous because it only
// matters when a test fails.
const timeout = 10 * time.Second

const defaultWelcome = `{"jsonrpc":"2.0","method":"welcome","params":{"client_id":"c-1","epoch":"ep-1","version":"v-test","heartbeat_s":25}}`

// TestMain fails the run when a goroutine of this package outlives the
// tests, because every Conn must stop its goroutines in Close.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := waitForClientGoroutines(); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines of package client still run after the tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

func waitForClientGoroutines() string {
	deadline := time.Now().Add(timeout)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]

		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "sidecar/client.") && !strings.Contains(g, "waitForClientGoroutines") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond) // polling for goroutines to exit, not for readiness
	}
}

// fakeSidecar is an in-process websocket server that lets a test script
// the sidecar's side of the protocol.
type fakeSidecar struct {
	t     *testing.T
	srv   *httptest.Server
	conns chan *fakeConn

	// welcome is sent on every accepted connection unless empty, followed
	// by afterWelcome.
	welcome      string
	afterWelcome []string

	// reject, when set, writes the response to the upgrade request instead
	// of accepting it.
	reject func(w http.ResponseWriter)
}

type fakeOption func(*fakeSidecar)

func withoutWelcome() fakeOption {
	return func(f *fakeSidecar) { f.welcome = "" }
}

func thenSend(msgs ...string) fakeOption {
	return func(f *fakeSidecar) { f.afterWelcome = msgs }
}

func rejecting(status int, body string) fakeOption {
	return func(f *fakeSidecar) {
		f.reject = func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		}
	}
}

func newFakeSidecar(t *testing.T, opts ...fakeOption) *fakeSidecar {
	t.Helper()
	f := &fakeSidecar{t: t, conns: make(chan *fakeConn, 4), welcome: defaultWelcome}
	for _, opt := range opts {
		opt(f)
	}

	// The handler returns when the test ends, so the hijacked connection
	// stays owned by a live handler while the test uses it.
	testDone := make(chan struct{})
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.reject != nil {
			f.reject(w)
			return
		}
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		ws.SetReadLimit(16 << 20)
		fc := &fakeConn{t: t, ws: ws, header: r.Header.Clone(), query: r.URL.Query()}
		if f.welcome != "" {
			fc.send(f.welcome)
		}
		for _, msg := range f.afterWelcome {
			fc.send(msg)
		}
		f.conns <- fc
		<-testDone
		_ = ws.CloseNow()
	}))
	t.Cleanup(func() {
		close(testDone)
		f.srv.Close()
	})
	return f
}

// url returns the websocket URL of the fake sidecar.
func (f *fakeSidecar) url() string {
	return "ws" + strings.TrimPrefix(f.srv.URL, "http") + "/v1/ws"
}

// accept returns the server side of the next connection. It drops that
// connection when the test ends, before the client's cleanup closes the
// client, so that the client does not wait for a close handshake that no
// one reads.
func (f *fakeSidecar) accept() *fakeConn {
	f.t.Helper()
	select {
	case fc := <-f.conns:
		f.t.Cleanup(func() { _ = fc.ws.CloseNow() })
		return fc
	case <-time.After(timeout):
		f.t.Fatal("no connection arrived at the fake sidecar")
		return nil
	}
}

// dial connects a client with opts and returns both ends. It closes the
// client when the test ends.
func (f *fakeSidecar) dial(opts client.Options) (*client.Conn, *fakeConn) {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.t.Context(), timeout)
	defer cancel()

	conn, err := client.Dial(ctx, f.url(), opts)
	if err != nil {
		f.t.Fatalf("Dial: %v", err)
	}
	f.t.Cleanup(func() { _ = conn.Close() })
	return conn, f.accept()
}

// fakeConn is the sidecar's side of one connection.
type fakeConn struct {
	t      *testing.T
	ws     *websocket.Conn
	header http.Header
	query  map[string][]string
}

// request is a message received from the client.
type request struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
	Result  json.RawMessage `json:"result"`
	Error   json.RawMessage `json:"error"`
}

// send writes msg as one text message.
func (fc *fakeConn) send(msg string) {
	fc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := fc.ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		fc.t.Errorf("fake sidecar: write %s: %v", msg, err)
	}
}

// sendf formats and sends a message.
func (fc *fakeConn) sendf(format string, args ...any) {
	fc.t.Helper()
	fc.send(fmt.Sprintf(format, args...))
}

// reply sends a successful response to req.
func (fc *fakeConn) reply(req request, result string) {
	fc.t.Helper()
	fc.sendf(`{"jsonrpc":"2.0","id":%s,"result":%s}`, req.ID, result)
}

// receive reads the next message from the client.
func (fc *fakeConn) receive() request {
	fc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	typ, msg, err := fc.ws.Read(ctx)
	if err != nil {
		fc.t.Fatalf("fake sidecar: read: %v", err)
	}
	if typ != websocket.MessageText {
		fc.t.Fatalf("fake sidecar: message type = %v, want text", typ)
	}

	var req request
	if err := json.Unmarshal(msg, &req); err != nil {
		fc.t.Fatalf("fake sidecar: message %s is not JSON: %v", msg, err)
	}
	if req.JSONRPC != "2.0" {
		fc.t.Errorf("fake sidecar: message %s: jsonrpc = %q, want 2.0", msg, req.JSONRPC)
	}
	return req
}

// expect reads the next message and checks that it is a request for
// method.
func (fc *fakeConn) expect(method string) request {
	fc.t.Helper()
	req := fc.receive()
	if req.Method != method {
		fc.t.Fatalf("fake sidecar: method = %q, want %q", req.Method, method)
	}
	if req.ID == nil {
		fc.t.Fatalf("fake sidecar: %s request has no id", method)
	}
	return req
}

// closeWith closes the connection with code and reason, as the sidecar
// does for a slow client or when draining.
func (fc *fakeConn) closeWith(code websocket.StatusCode, reason string) {
	fc.t.Helper()
	if err := fc.ws.Close(code, reason); err != nil {
		fc.t.Logf("fake sidecar: close: %v", err)
	}
}

// async runs f on a new goroutine and returns a channel with its result.
func async[T any](f func() T) <-chan T {
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	return ch
}

// await returns the value from ch, failing the test after timeout.
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("%s did not finish within %s", what, timeout)
		var zero T
		return zero
	}
}

// nextEvent returns the next event of sub, failing when its channel closes.
func nextEvent(t *testing.T, sub *client.Subscription) client.Event {
	t.Helper()
	select {
	case ev, ok := <-sub.Events():
		if !ok {
			t.Fatalf("Events of %s closed: %v", sub.ID(), sub.Err())
		}
		return ev
	case <-time.After(timeout):
		t.Fatalf("no event for %s within %s", sub.ID(), timeout)
		return client.Event{}
	}
}

// waitClosed waits until the Events channel of sub is closed, discarding
// events still buffered.
func waitClosed(t *testing.T, sub *client.Subscription) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case _, ok := <-sub.Events():
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("Events of %s still open after %s", sub.ID(), timeout)
		}
	}
}

// waitDone waits until conn has ended.
func waitDone(t *testing.T, conn *client.Conn) {
	t.Helper()
	select {
	case <-conn.Done():
	case <-time.After(timeout):
		t.Fatalf("connection still open after %s", timeout)
	}
}
