package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"

	"github.com/pgsidecar/sidecar/client"
)

// connectClient starts a Client for f that reports its states on the
// returned channel, and closes it when the test ends.
func connectClient(t *testing.T, f *fakeSidecar, opts client.ReconnectOptions) (*client.Client, <-chan client.State) {
	t.Helper()
	states := make(chan client.State, 256)
	opts.OnState = func(s client.State) {
		select {
		case states <- s:
		default:
			t.Errorf("state %v dropped: the test reads too few states", s.Kind)
		}
	}
	c := client.Connect(t.Context(), f.url(), opts)
	t.Cleanup(func() { _ = c.Close() })
	return c, states
}

// nextState returns the next state of the client with the given kind,
// skipping others.
func nextState(t *testing.T, states <-chan client.State, kind client.StateKind) client.State {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case s := <-states:
			if s.Kind == kind {
				return s
			}
		case <-deadline:
			t.Fatalf("no %v state within %s", kind, timeout)
			return client.State{}
		}
	}
}

// expectSubscribe reads a subscribe request, compares its params with want
// and replies with result.
func expectSubscribe(t *testing.T, fc *fakeConn, want map[string]any, result string) {
	t.Helper()
	req := fc.expect("subscribe")
	var params map[string]any
	if err := json.Unmarshal(req.Params, &params); err != nil {
		t.Fatalf("subscribe params %s: %v", req.Params, err)
	}
	if diff := cmp.Diff(params, want); diff != "" {
		t.Errorf("subscribe params (-got +want):\n%s", diff)
	}
	fc.reply(req, result)
}

// startStream subscribes c to patterns while fc replies with result.
func startStream(t *testing.T, c *client.Client, fc *fakeConn, result string, patterns ...string) *client.Stream {
	t.Helper()
	type subscribed struct {
		stream *client.Stream
		err    error
	}
	done := async(func() subscribed {
		s, err := c.Subscribe(t.Context(), patterns)
		return subscribed{s, err}
	})

	topics := make([]any, len(patterns))
	for i, p := range patterns {
		topics[i] = p
	}
	expectSubscribe(t, fc, map[string]any{"topics": topics}, result)

	got := await(t, done, "Subscribe")
	if got.err != nil {
		t.Fatalf("Subscribe(%q): %v", patterns, got.err)
	}
	return got.stream
}

func nextStreamEvent(t *testing.T, s *client.Stream) client.Event {
	t.Helper()
	select {
	case ev, ok := <-s.Events():
		if !ok {
			t.Fatal("Events of the stream closed")
		}
		return ev
	case <-time.After(timeout):
		t.Fatalf("no event on the stream within %s", timeout)
		return client.Event{}
	}
}

func TestReconnectResumesAfterLastID(t *testing.T) {
	f := newFakeSidecar(t)
	minBackoff := time.Second
	c, states := connectClient(t, f, client.ReconnectOptions{MinBackoff: minBackoff})
	fc1 := f.accept()
	nextState(t, states, client.Connected)

	stream := startStream(t, c, fc1, `{"subscription":"s1","topics":["t"],"epoch":"ep-1","head":5}`, "t")
	fc1.send(`{"jsonrpc":"2.0","method":"event","params":{"subscription":"s1","topic":"t","data":6,"id":6,"ts":"2026-01-02T03:04:05Z"}}`)
	fc1.send(`{"jsonrpc":"2.0","method":"event","params":{"subscription":"s1","topic":"t","data":"typing","ts":"2026-01-02T03:04:05Z"}}`)
	fc1.send(`{"jsonrpc":"2.0","method":"event","params":{"subscription":"s1","topic":"t","data":7,"id":7,"ts":"2026-01-02T03:04:05Z"}}`)
	for _, want := range []int64{6, 0, 7} {
		if got := nextStreamEvent(t, stream).ID; got != want {
			t.Fatalf("event id = %d, want %d", got, want)
		}
	}

	fc1.closeWith(websocket.StatusServiceRestart, "draining")
	down := nextState(t, states, client.Disconnected)
	if got := client.CloseStatus(down.Err); got != websocket.StatusServiceRestart {
		t.Errorf("CloseStatus(Disconnected.Err) = %v, want 1012 (error %v)", got, down.Err)
	}
	if down.Retry >= minBackoff/2 {
		t.Errorf("Retry after close code 1012 = %s, want below %s", down.Retry, minBackoff/2)
	}

	fc2 := f.accept()
	expectSubscribe(t, fc2, map[string]any{"topics": []any{"t"}, "since": 7.0, "epoch": "ep-1"},
		`{"subscription":"s2","topics":["t"],"epoch":"ep-1","head":9}`)
	fc2.send(`{"jsonrpc":"2.0","method":"event","params":{"subscription":"s2","topic":"t","data":7,"id":7,"ts":"2026-01-02T03:04:05Z"}}`)
	fc2.send(`{"jsonrpc":"2.0","method":"event","params":{"subscription":"s2","topic":"t","data":8,"id":8,"ts":"2026-01-02T03:04:05Z"}}`)

	if got := nextStreamEvent(t, stream).ID; got != 8 {
		t.Errorf("first event after the reconnect has id %d, want 8 (7 is a duplicate)", got)
	}
	if got := stream.LastID(); got != 8 {
		t.Errorf("LastID() = %d, want 8", got)
	}
}

func TestReconnectResumesFromHead(t *testing.T) {
	f := newFakeSidecar(t)
	minBackoff := 20 * time.Millisecond
	c, states := connectClient(t, f, client.ReconnectOptions{MinBackoff: minBackoff})
	fc1 := f.accept()
	nextState(t, states, client.Connected)

	stream := startStream(t, c, fc1, `{"subscription":"s1","topics":["t"],"epoch":"ep-1","head":5}`, "t")
	fc1.closeWith(websocket.StatusGoingAway, "bye")

	down := nextState(t, states, client.Disconnected)
	if down.Retry < minBackoff/2 {
		t.Errorf("Retry after close code 1001 = %s, want at least %s", down.Retry, minBackoff/2)
	}

	fc2 := f.accept()
	expectSubscribe(t, fc2, map[string]any{"topics": []any{"t"}, "since": 5.0, "epoch": "ep-1"},
		`{"subscription":"s2","topics":["t"],"epoch":"ep-1","head":5}`)
	fc2.send(`{"jsonrpc":"2.0","method":"event","params":{"subscription":"s2","topic":"t","data":6,"id":6,"ts":"2026-01-02T03:04:05Z"}}`)
	if got := nextStreamEvent(t, stream).ID; got != 6 {
		t.Errorf("event id = %d, want 6", got)
	}
}

func TestReconnectHistoryExpiredReloads(t *testing.T) {
	f := newFakeSidecar(t)
	c, states := connectClient(t, f, client.ReconnectOptions{MinBackoff: time.Millisecond})
	fc1 := f.accept()
	nextState(t, states, client.Connected)

	stream := startStream(t, c, fc1, `{"subscription":"s1","topics":["t"],"epoch":"ep-1","head":5}`, "t")
	fc1.send(`{"jsonrpc":"2.0","method":"event","params":{"subscription":"s1","topic":"t","data":6,"id":6,"ts":"2026-01-02T03:04:05Z"}}`)
	nextStreamEvent(t, stream)
	fc1.closeWith(websocket.StatusServiceRestart, "draining")

	fc2 := f.accept()
	req := fc2.expect("subscribe")
	fc2.sendf(`{"jsonrpc":"2.0","id":%s,"error":{"code":-32006,"message":"history expired"}}`, req.ID)
	expectSubscribe(t, fc2, map[string]any{"topics": []any{"t"}},
		`{"subscription":"s2","topics":["t"],"epoch":"ep-2","head":100}`)
	fc2.send(`{"jsonrpc":"2.0","method":"event","params":{"subscription":"s2","topic":"t","data":101,"id":101,"ts":"2026-01-02T03:04:05Z"}}`)

	err := await(t, stream.Reload(), "Reload")
	if !errors.Is(err, client.ErrHistoryExpired) {
		t.Errorf("Reload error = %v, want one matching ErrHistoryExpired", err)
	}
	var rpcErr *client.RPCError
	if !errors.As(err, &rpcErr) || rpcErr.Code != client.CodeHistoryExpired {
		t.Errorf("Reload error = %v, want one wrapping an *RPCError with code %d", err, client.CodeHistoryExpired)
	}
	if got := nextStreamEvent(t, stream).ID; got != 101 {
		t.Errorf("event id after the reload = %d, want 101", got)
	}
	if got := stream.Epoch(); got != "ep-2" {
		t.Errorf("Epoch() = %q, want ep-2", got)
	}
}

func TestReconnectFirstSubscribeRejected(t *testing.T) {
	f := newFakeSidecar(t)
	c, states := connectClient(t, f, client.ReconnectOptions{})
	fc := f.accept()
	nextState(t, states, client.Connected)

	done := async(func() error {
		_, err := c.Subscribe(t.Context(), []string{"secret"})
		return err
	})
	req := fc.expect("subscribe")
	fc.sendf(`{"jsonrpc":"2.0","id":%s,"error":{"code":-32003,"message":"forbidden"}}`, req.ID)

	err := await(t, done, "Subscribe")
	var rpcErr *client.RPCError
	if !errors.As(err, &rpcErr) || rpcErr.Code != client.CodeForbidden {
		t.Errorf("Subscribe error = %v, want an *RPCError with code %d", err, client.CodeForbidden)
	}
}

func TestReconnectBackoffGrowsAndCaps(t *testing.T) {
	f := newFakeSidecar(t, rejecting(http.StatusServiceUnavailable, `{"error":{"code":"draining","message":"the sidecar is draining"}}`))
	minBackoff, maxBackoff := time.Millisecond, 8*time.Millisecond
	c, states := connectClient(t, f, client.ReconnectOptions{MinBackoff: minBackoff, MaxBackoff: maxBackoff})

	base := minBackoff
	for attempt := 1; attempt <= 7; attempt++ {
		down := nextState(t, states, client.Disconnected)
		var handshakeErr *client.HandshakeError
		if !errors.As(down.Err, &handshakeErr) || handshakeErr.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("attempt %d: Err = %v, want a *HandshakeError with status 503", attempt, down.Err)
		}
		if low, high := base/2, min(base*3/2, maxBackoff); down.Retry < low || down.Retry > high {
			t.Errorf("attempt %d: Retry = %s, want between %s and %s", attempt, down.Retry, low, high)
		}
		base = min(2*base, maxBackoff)
	}

	if err := c.Call(t.Context(), "ping", nil, nil); !errors.Is(err, client.ErrNotConnected) {
		t.Errorf("Call without a connection = %v, want ErrNotConnected", err)
	}
	if _, err := c.Publish(t.Context(), "t", 1, true); !errors.Is(err, client.ErrNotConnected) {
		t.Errorf("Publish without a connection = %v, want ErrNotConnected", err)
	}
}

func TestReconnectUnsubscribe(t *testing.T) {
	f := newFakeSidecar(t)
	c, states := connectClient(t, f, client.ReconnectOptions{})
	fc := f.accept()
	nextState(t, states, client.Connected)
	stream := startStream(t, c, fc, `{"subscription":"s1","topics":["t"],"epoch":"ep-1","head":0}`, "t")

	done := async(func() error { return stream.Unsubscribe(t.Context()) })
	req := fc.expect("unsubscribe")
	if got, want := string(req.Params), `{"subscription":"s1"}`; got != want {
		t.Errorf("unsubscribe params = %s, want %s", got, want)
	}
	fc.reply(req, `{}`)
	if err := await(t, done, "Unsubscribe"); err != nil {
		t.Errorf("Unsubscribe: %v", err)
	}
	if _, ok := <-stream.Events(); ok {
		t.Error("Events still open after Unsubscribe")
	}
}

func TestReconnectHandlersOnEveryConnection(t *testing.T) {
	f := newFakeSidecar(t)
	handlers := map[string]client.Handler{
		"greet": func(context.Context, json.RawMessage) (any, error) { return "hello", nil },
	}
	_, states := connectClient(t, f, client.ReconnectOptions{Options: client.Options{Handlers: handlers}, MinBackoff: time.Millisecond})

	for i := range 2 {
		fc := f.accept()
		nextState(t, states, client.Connected)
		fc.send(`{"jsonrpc":"2.0","id":1,"method":"greet"}`)
		resp := fc.receive()
		if got, want := string(resp.Result), `"hello"`; got != want {
			t.Errorf("connection %d: result of greet = %s, want %s", i+1, got, want)
		}
		fc.closeWith(websocket.StatusGoingAway, "bye")
	}
}

func TestReconnectCloseEndsStreams(t *testing.T) {
	f := newFakeSidecar(t)
	c, states := connectClient(t, f, client.ReconnectOptions{})
	fc := f.accept()
	nextState(t, states, client.Connected)
	stream := startStream(t, c, fc, `{"subscription":"s1","topics":["t"],"epoch":"ep-1","head":0}`, "t")

	closed := async(func() error { return c.Close() })
	// Reading lets the fake sidecar answer the client's close frame.
	_, _, err := fc.ws.Read(t.Context())
	if got := websocket.CloseStatus(err); got != websocket.StatusNormalClosure {
		t.Errorf("close code sent by Close = %v, want 1000 (error %v)", got, err)
	}
	if err := await(t, closed, "Close"); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, ok := <-stream.Events(); ok {
		t.Error("Events still open after Close")
	}
	if _, err := c.Subscribe(t.Context(), []string{"t"}); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
}

// This example follows all orders across sidecar restarts. The Stream
// resumes after the last event it delivered, and Reload reports when the
// application must load its state again.
func ExampleConnect() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c := client.Connect(ctx, "ws://127.0.0.1:7070/v1/ws", client.ReconnectOptions{
		OnState: func(s client.State) {
			if s.Kind == client.Disconnected {
				log.Printf("disconnected (%v); retrying in %s", s.Err, s.Retry)
			}
		},
	})
	defer c.Close()

	stream, err := c.Subscribe(ctx, []string{"orders.>"})
	if err != nil {
		log.Fatal(err)
	}

	for {
		select {
		case ev, ok := <-stream.Events():
			if !ok {
				return
			}
			fmt.Printf("%s #%d: %s\n", ev.Topic, ev.ID, ev.Data)
		case err := <-stream.Reload():
			log.Printf("reload the orders from the application: %v", err)
		}
	}
}
