package appcall

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/pgsidecar/sidecar/rpc"
)

const testToken = "s3cret-token"

// app is a fake application: an HTTP server that records each request and
// counts the TCP connections it accepts.
type app struct {
	*httptest.Server

	conns atomic.Int64

	mu       sync.Mutex
	requests []received
}

// received is one request as the application saw it.
type received struct {
	method string
	header http.Header
	body   []byte
}

// newApp starts an application that records each request and then calls
// handle. The server is closed when the test ends.
func newApp(t *testing.T, handle http.HandlerFunc) *app {
	t.Helper()

	a := &app{}
	a.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("application: read request body: %v", err)
		}
		a.mu.Lock()
		a.requests = append(a.requests, received{method: r.Method, header: r.Header.Clone(), body: body})
		a.mu.Unlock()

		r.Body = io.NopCloser(bytes.NewReader(body))
		handle(w, r)
	}))
	a.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			a.conns.Add(1)
		}
	}
	a.Start()
	t.Cleanup(a.Close)
	return a
}

// only returns the single request the application received.
func (a *app) only(t *testing.T) received {
	t.Helper()

	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.requests) != 1 {
		t.Fatalf("application received %d requests, want 1", len(a.requests))
	}
	return a.requests[0]
}

// respondWith returns a handler that writes body with status 200.
func respondWith(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}
}

// adder is an application method "add" that sums its params and echoes the
// request's id.
func adder(w http.ResponseWriter, r *http.Request) {
	var req struct {
		ID     json.RawMessage `json:"id"`
		Params []int           `json:"params"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_, _ = fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"sum" : %d}}`, req.ID, sum(req.Params))
}

func sum(values []int) int {
	total := 0
	for _, v := range values {
		total += v
	}
	return total
}

// newForwarder returns a Forwarder closed when the test ends.
func newForwarder(t *testing.T, cfg Config) *Forwarder {
	t.Helper()

	f, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v) error = %v", cfg, err)
	}
	t.Cleanup(f.Close)
	return f
}

// logBuffer collects log records for checks.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogger() (*slog.Logger, *logBuffer) {
	var buf logBuffer
	return slog.New(slog.NewTextHandler(&buf, nil)), &buf
}

func addCall() Call {
	return Call{
		ClientID: "c-123",
		Subject:  "user-42",
		Method:   "add",
		ID:       json.RawMessage(`7`),
		Params:   json.RawMessage(`[2, 3]`),
	}
}

// wantFailure checks that rerr is a -32005 error whose message contains
// want and not the token.
func wantFailure(t *testing.T, result json.RawMessage, rerr *rpc.Error, want string) {
	t.Helper()

	if rerr == nil {
		t.Fatalf("Forward = %s, nil, want a -32005 error containing %q", result, want)
	}
	if result != nil {
		t.Errorf("Forward result = %s, want nil with an error", result)
	}
	if rerr.Code != rpc.CodeAppCallFailed {
		t.Errorf("Forward error code = %d, want %d (message %q)", rerr.Code, rpc.CodeAppCallFailed, rerr.Message)
	}
	if !strings.Contains(rerr.Message, want) {
		t.Errorf("Forward error message = %q, want it to contain %q", rerr.Message, want)
	}
	if strings.Contains(rerr.Message, testToken) {
		t.Errorf("Forward error message = %q, want it without the token", rerr.Message)
	}
}

func TestForwardResult(t *testing.T) {
	a := newApp(t, adder)
	f := newForwarder(t, Config{URL: a.URL + "/rpc", Token: testToken})

	result, rerr := f.Forward(t.Context(), addCall())
	if rerr != nil {
		t.Fatalf("Forward error = %v, want none", rerr)
	}
	if got, want := string(result), `{"sum" : 5}`; got != want {
		t.Errorf("Forward result = %s, want %s", got, want)
	}

	req := a.only(t)
	if req.method != http.MethodPost {
		t.Errorf("request method = %s, want POST", req.method)
	}
	wantHeaders := map[string]string{
		"Content-Type":        "application/json",
		"X-Sidecar-Client-Id": "c-123",
		"X-Sidecar-Subject":   "user-42",
		"Authorization":       "Bearer " + testToken,
	}
	for name, want := range wantHeaders {
		if got := req.header.Get(name); got != want {
			t.Errorf("request header %s = %q, want %q", name, got, want)
		}
	}

	var body map[string]json.RawMessage
	if err := json.Unmarshal(req.body, &body); err != nil {
		t.Fatalf("request body %s is not a JSON object: %v", req.body, err)
	}
	wantBody := map[string]json.RawMessage{
		"jsonrpc": json.RawMessage(`"2.0"`),
		"id":      json.RawMessage(`7`),
		"method":  json.RawMessage(`"add"`),
		"params":  json.RawMessage(`[2, 3]`),
	}
	if diff := cmp.Diff(body, wantBody); diff != "" {
		t.Errorf("request body (-got +want):\n%s", diff)
	}
}

func TestForwardWithoutTokenOrParams(t *testing.T) {
	a := newApp(t, respondWith(`{"jsonrpc":"2.0","id":"r1","result":"pong"}`))
	f := newForwarder(t, Config{URL: a.URL})

	call := Call{ClientID: "c-1", Method: "ping", ID: json.RawMessage(`"r1"`)}
	result, rerr := f.Forward(t.Context(), call)
	if rerr != nil {
		t.Fatalf("Forward error = %v, want none", rerr)
	}
	if got, want := string(result), `"pong"`; got != want {
		t.Errorf("Forward result = %s, want %s", got, want)
	}

	req := a.only(t)
	if got, ok := req.header["Authorization"]; ok {
		t.Errorf("request header Authorization = %q, want none without a token", got)
	}
	if got, ok := req.header["X-Sidecar-Subject"]; !ok || len(got) != 1 || got[0] != "" {
		t.Errorf("request header X-Sidecar-Subject = %q (present %v), want one empty value", got, ok)
	}
	if got, want := string(req.body), `{"jsonrpc":"2.0","id":"r1","method":"ping"}`; got != want {
		t.Errorf("request body = %s, want %s", got, want)
	}
}

func TestForwardApplicationError(t *testing.T) {
	a := newApp(t, respondWith(`{"jsonrpc":"2.0","id":7,"error":{"code":-32005,"message":"Out of stock","data":{"sku": "A-1", "left": [0]}}}`))
	f := newForwarder(t, Config{URL: a.URL})

	result, rerr := f.Forward(t.Context(), addCall())
	if result != nil {
		t.Errorf("Forward result = %s, want nil", result)
	}
	want := &rpc.Error{Code: -32005, Message: "Out of stock", Data: json.RawMessage(`{"sku": "A-1", "left": [0]}`)}
	if diff := cmp.Diff(rerr, want); diff != "" {
		t.Errorf("Forward error (-got +want):\n%s", diff)
	}
}

func TestForwardUnreachable(t *testing.T) {
	// A port that was just listened on and closed refuses connections.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/rpc"
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}

	logger, logs := newLogger()
	f := newForwarder(t, Config{URL: url, Token: testToken, Logger: logger})

	result, rerr := f.Forward(t.Context(), addCall())
	wantFailure(t, result, rerr, "application unreachable: connection refused")
	if strings.Contains(rerr.Message, ln.Addr().String()) {
		t.Errorf("message = %q, want it without the application's address", rerr.Message)
	}

	if got := logs.String(); !strings.Contains(got, "application call failed") || !strings.Contains(got, "client_id=c-123") {
		t.Errorf("log = %q, want a failure record with the client id", got)
	}
	if strings.Contains(logs.String(), testToken) {
		t.Errorf("log = %q, want it without the token", logs.String())
	}
}

func TestForwardUnreachableHidesURL(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}

	logger, logs := newLogger()
	f := newForwarder(t, Config{URL: "http://sidecar:" + testToken + "@" + addr + "/rpc?key=query-secret", Logger: logger})

	result, rerr := f.Forward(t.Context(), addCall())
	wantFailure(t, result, rerr, "application unreachable: connection refused")
	for _, secret := range []string{testToken, "query-secret", "sidecar:", addr} {
		if strings.Contains(rerr.Message, secret) {
			t.Errorf("message to the client = %q, want it without %q", rerr.Message, secret)
		}
	}
	for _, secret := range []string{testToken, "query-secret"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("log = %q, want it without %q", logs.String(), secret)
		}
	}
	if !strings.Contains(logs.String(), "http://"+addr+"/rpc") {
		t.Errorf("log = %q, want the URL without its user and query", logs.String())
	}
}

func TestForwardTimeout(t *testing.T) {
	release := make(chan struct{})
	a := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) }) // runs before the server closes

	f := newForwarder(t, Config{URL: a.URL, Timeout: 100 * time.Millisecond})

	result, rerr := f.Forward(t.Context(), addCall())
	wantFailure(t, result, rerr, "application did not answer within 100ms")
}

func TestForwardTimeoutWhileReadingBody(t *testing.T) {
	release := make(chan struct{})
	a := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":7,`)
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	t.Cleanup(func() { close(release) })

	f := newForwarder(t, Config{URL: a.URL, Timeout: 100 * time.Millisecond})

	result, rerr := f.Forward(t.Context(), addCall())
	wantFailure(t, result, rerr, "application did not answer within 100ms")
}

func TestForwardCanceled(t *testing.T) {
	started := make(chan struct{})
	aborted := make(chan struct{})
	a := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(aborted)
	})

	logger, logs := newLogger()
	f := newForwarder(t, Config{URL: a.URL, Timeout: time.Minute, Logger: logger})

	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-started
		cancel()
	}()

	result, rerr := f.Forward(ctx, addCall())
	wantFailure(t, result, rerr, "application call canceled: context canceled")

	select {
	case <-aborted:
	case <-time.After(10 * time.Second):
		t.Fatal("application's request context was not canceled, want the HTTP request aborted")
	}

	if got := logs.String(); got != "" {
		t.Errorf("log = %q, want nothing for a call whose caller went away", got)
	}
}

func TestForwardStatus(t *testing.T) {
	// A valid JSON-RPC body does not make up for the status.
	body := `{"jsonrpc":"2.0","id":7,"result":5}`
	tests := []struct {
		status int
		want   string
	}{
		{http.StatusInternalServerError, "application answered HTTP 500 Internal Server Error"},
		{http.StatusBadGateway, "application answered HTTP 502 Bad Gateway"},
		{http.StatusUnauthorized, "application answered HTTP 401 Unauthorized"},
		{http.StatusFound, "application answered HTTP 302 Found"},
		{599, "application answered HTTP 599"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			a := newApp(t, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Location", "/elsewhere")
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, body)
			})
			f := newForwarder(t, Config{URL: a.URL, Token: testToken})

			result, rerr := f.Forward(t.Context(), addCall())
			wantFailure(t, result, rerr, tt.want)
			a.only(t) // a redirect is not followed
		})
	}
}

func TestForwardNotJSONRPC(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string
	}{
		{"garbage", "<html>Welcome</html>", "application's answer is not a JSON-RPC response: parse error"},
		{"empty", "", "application's answer is not a JSON-RPC response: the body is empty"},
		{"plain JSON", `{"sum": 5}`, "application's answer is not a JSON-RPC response: "},
		{"mismatched id", `{"jsonrpc":"2.0","id":8,"result":5}`, "its id 8 does not match the request's id 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApp(t, respondWith(tt.body))
			f := newForwarder(t, Config{URL: a.URL})

			result, rerr := f.Forward(t.Context(), addCall())
			wantFailure(t, result, rerr, tt.want)
		})
	}
}

func TestForwardTooLarge(t *testing.T) {
	large := `{"jsonrpc":"2.0","id":7,"result":"` + strings.Repeat("x", 2000) + `"}`
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"with length", respondWith(large)},
		{"streamed", func(w http.ResponseWriter, _ *http.Request) {
			// Flushing first makes the response chunked, without a length.
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, large)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApp(t, tt.handler)
			f := newForwarder(t, Config{URL: a.URL, MaxResponseBytes: 1024})

			result, rerr := f.Forward(t.Context(), addCall())
			wantFailure(t, result, rerr, "application's answer is too large: the limit is 1 KiB")
		})
	}
}

func TestForwardAtSizeLimit(t *testing.T) {
	body := `{"jsonrpc":"2.0","id":7,"result":"` + strings.Repeat("x", 1024) + `"}`
	a := newApp(t, respondWith(body))
	f := newForwarder(t, Config{URL: a.URL, MaxResponseBytes: int64(len(body))})

	result, rerr := f.Forward(t.Context(), addCall())
	if rerr != nil {
		t.Fatalf("Forward error = %v, want none for a body of exactly the limit", rerr)
	}
	if len(result) != 1026 {
		t.Errorf("Forward result has %d bytes, want 1026", len(result))
	}
}

func TestForwardNotification(t *testing.T) {
	// The response body is ignored, even when it is not JSON-RPC.
	a := newApp(t, respondWith("ok"))
	f := newForwarder(t, Config{URL: a.URL, Token: testToken})

	call := Call{ClientID: "c-9", Subject: "user-1", Method: "typing", Params: json.RawMessage(`{"room":"r1"}`)}
	result, rerr := f.Forward(t.Context(), call)
	if result != nil || rerr != nil {
		t.Fatalf("Forward(notification) = %s, %v, want nil, nil", result, rerr)
	}

	req := a.only(t)
	if got, want := string(req.body), `{"jsonrpc":"2.0","method":"typing","params":{"room":"r1"}}`; got != want {
		t.Errorf("request body = %s, want %s", got, want)
	}
	if got, want := req.header.Get("X-Sidecar-Client-Id"), "c-9"; got != want {
		t.Errorf("request header X-Sidecar-Client-Id = %q, want %q", got, want)
	}
	if got, want := req.header.Get("Authorization"), "Bearer "+testToken; got != want {
		t.Errorf("request header Authorization = %q, want %q", got, want)
	}
}

func TestForwardNotificationFailureLogged(t *testing.T) {
	a := newApp(t, func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	logger, logs := newLogger()
	f := newForwarder(t, Config{URL: a.URL, Token: testToken, Logger: logger})

	call := Call{ClientID: "c-9", Method: "typing"}
	result, rerr := f.Forward(t.Context(), call)
	if result != nil || rerr != nil {
		t.Fatalf("Forward(notification) = %s, %v, want nil, nil even on failure", result, rerr)
	}

	got := logs.String()
	for _, want := range []string{"application call failed", "kind=notification", "method=typing", "client_id=c-9", "HTTP 503"} {
		if !strings.Contains(got, want) {
			t.Errorf("log = %q, want it to contain %q", got, want)
		}
	}
	if strings.Contains(got, testToken) {
		t.Errorf("log = %q, want it without the token", got)
	}
}

func TestForwardReusesConnection(t *testing.T) {
	a := newApp(t, adder)
	f := newForwarder(t, Config{URL: a.URL})

	for i := range 5 {
		call := addCall()
		call.ID = json.RawMessage(fmt.Sprint(i))
		call.Params = json.RawMessage(fmt.Sprintf("[%d, 1]", i))
		result, rerr := f.Forward(t.Context(), call)
		if rerr != nil {
			t.Fatalf("call %d: Forward error = %v", i, rerr)
		}
		if got, want := string(result), fmt.Sprintf(`{"sum" : %d}`, i+1); got != want {
			t.Errorf("call %d: Forward result = %s, want %s", i, got, want)
		}
	}
	notification := Call{ClientID: "c-1", Method: "typing"}
	if _, rerr := f.Forward(t.Context(), notification); rerr != nil {
		t.Fatalf("Forward(notification) error = %v", rerr)
	}

	if got := a.conns.Load(); got != 1 {
		t.Errorf("application accepted %d connections for 6 sequential calls, want 1", got)
	}
}

func TestForwardReusesConnectionAfterFailedStatus(t *testing.T) {
	var calls atomic.Int64
	a := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		adder(w, r)
	})
	f := newForwarder(t, Config{URL: a.URL})

	_, rerr := f.Forward(t.Context(), addCall())
	if rerr == nil {
		t.Fatal("first Forward error = nil, want HTTP 503")
	}
	if _, rerr := f.Forward(t.Context(), addCall()); rerr != nil {
		t.Fatalf("second Forward error = %v", rerr)
	}

	if got := a.conns.Load(); got != 1 {
		t.Errorf("application accepted %d connections, want 1", got)
	}
}

func TestForwardUsesGivenClient(t *testing.T) {
	a := newApp(t, adder)

	var roundTrips atomic.Int64
	client := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		roundTrips.Add(1)
		return a.Client().Transport.RoundTrip(r)
	})}
	f := newForwarder(t, Config{URL: a.URL, Client: client})

	if _, rerr := f.Forward(t.Context(), addCall()); rerr != nil {
		t.Fatalf("Forward error = %v", rerr)
	}
	if got := roundTrips.Load(); got != 1 {
		t.Errorf("given client made %d round trips, want 1", got)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestForwardRejectsHeaderInjection(t *testing.T) {
	a := newApp(t, adder)
	f := newForwarder(t, Config{URL: a.URL})

	call := addCall()
	call.Subject = "user\r\nX-Admin: yes"
	result, rerr := f.Forward(t.Context(), call)
	wantFailure(t, result, rerr, "contains control characters")
}

func TestForwardInvalidParams(t *testing.T) {
	a := newApp(t, adder)
	f := newForwarder(t, Config{URL: a.URL})

	call := addCall()
	call.Params = json.RawMessage(`[1,`)
	_, rerr := f.Forward(t.Context(), call)
	if rerr == nil {
		t.Fatalf("Forward error = nil, want code %d", rpc.CodeInvalidParams)
	}
	if rerr.Code != rpc.CodeInvalidParams {
		t.Errorf("Forward error = %v, want code %d", rerr, rpc.CodeInvalidParams)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.requests) != 0 {
		t.Errorf("application received %d requests, want none", len(a.requests))
	}
}
