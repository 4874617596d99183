package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/pgsidecar/sidecar/client"
)

// subscribe subscribes conn to patterns, replying as the sidecar with
// subscription id subID, and returns the subscription.
func subscribe(t *testing.T, conn *client.Conn, fc *fakeConn, subID string, patterns ...string) *client.Subscription {
	t.Helper()
	type subscribed struct {
		sub *client.Subscription
		err error
	}
	result := async(func() subscribed {
		sub, err := conn.Subscribe(context.Background(), patterns)
		return subscribed{sub, err}
	})

	req := fc.expect("subscribe")
	topics, _ := json.Marshal(patterns)
	fc.reply(req, fmt.Sprintf(`{"subscription":%q,"topics":%s,"epoch":"ep-1","head":0}`, subID, topics))

	s := await(t, result, "Subscribe")
	if s.err != nil {
		t.Fatalf("Subscribe(%q): %v", patterns, s.err)
	}
	return s.sub
}

func TestSubscribeResult(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	type subscribed struct {
		sub *client.Subscription
		err error
	}
	result := async(func() subscribed {
		sub, err := conn.Subscribe(t.Context(), []string{"orders.*", "db.public.todos"}, client.WithSince(0), client.WithEpoch("ep-0"))
		return subscribed{sub, err}
	})

	req := fc.expect("subscribe")
	var params map[string]any
	if err := json.Unmarshal(req.Params, &params); err != nil {
		t.Fatalf("subscribe params %s: %v", req.Params, err)
	}
	wantParams := map[string]any{"topics": []any{"orders.*", "db.public.todos"}, "since": 0.0, "epoch": "ep-0"}
	if diff := cmp.Diff(params, wantParams); diff != "" {
		t.Errorf("subscribe params (-got +want):\n%s", diff)
	}

	fc.reply(req, `{"subscription":"s7","topics":["orders.*","db.public.todos"],"epoch":"ep-0","head":42}`)
	s := await(t, result, "Subscribe")
	if s.err != nil {
		t.Fatalf("Subscribe: %v", s.err)
	}

	if got, want := s.sub.ID(), "s7"; got != want {
		t.Errorf("ID() = %q, want %q", got, want)
	}
	if got, want := s.sub.Head(), int64(42); got != want {
		t.Errorf("Head() = %d, want %d", got, want)
	}
	if got, want := s.sub.Epoch(), "ep-0"; got != want {
		t.Errorf("Epoch() = %q, want %q", got, want)
	}
	if diff := cmp.Diff(s.sub.Topics(), []string{"orders.*", "db.public.todos"}); diff != "" {
		t.Errorf("Topics() (-got +want):\n%s", diff)
	}
}

func TestSubscribeWithoutSinceOmitsIt(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	go func() { _, _ = conn.Subscribe(context.Background(), []string{"a"}) }()
	req := fc.expect("subscribe")

	if got, want := string(req.Params), `{"topics":["a"]}`; got != want {
		t.Errorf("subscribe params = %s, want %s", got, want)
	}
	fc.reply(req, `{"subscription":"s1","topics":["a"],"epoch":"ep-1","head":0}`)
}

func TestSubscribeError(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	result := async(func() error {
		_, err := conn.Subscribe(t.Context(), []string{"orders.*"}, client.WithSince(3))
		return err
	})
	req := fc.expect("subscribe")
	fc.sendf(`{"jsonrpc":"2.0","id":%s,"error":{"code":-32006,"message":"history expired: reload your state","data":{"head":90}}}`, req.ID)

	err := await(t, result, "Subscribe")
	var rpcErr *client.RPCError
	if !errors.As(err, &rpcErr) {
		t.Fatalf("Subscribe error = %v, want an *RPCError", err)
	}
	want := client.RPCError{Code: client.CodeHistoryExpired, Message: "history expired: reload your state", Data: json.RawMessage(`{"head":90}`)}
	if diff := cmp.Diff(*rpcErr, want); diff != "" {
		t.Errorf("RPCError (-got +want):\n%s", diff)
	}
}

func TestEventsRoutedPerSubscriptionInOrder(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})
	orders := subscribe(t, conn, fc, "s1", "orders.>")

	// The events for s2 follow its subscribe result at once, so they only
	// arrive if the subscription exists before the reader reads on. With
	// one processor, the reader usually handles them before the Subscribe
	// caller resumes, which exposes a subscription registered too late.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	result := async(func() *client.Subscription {
		sub, err := conn.Subscribe(context.Background(), []string{"chat.*"})
		if err != nil {
			t.Errorf("Subscribe: %v", err)
		}
		return sub
	})
	req := fc.expect("subscribe")
	fc.reply(req, `{"subscription":"s2","topics":["chat.*"],"epoch":"ep-1","head":7}`)

	const n = 20
	for i := range n {
		fc.sendf(`{"jsonrpc":"2.0","method":"event","params":{"topic":"orders.%d","data":{"n":%d},"id":%d,"ts":"2026-12-04T10:00:00.123456Z","subscription":"s1"}}`, i, i, 100+i)
		fc.sendf(`{"jsonrpc":"2.0","method":"event","params":{"topic":"chat.room","data":%d,"ts":"2026-12-04T10:00:01.000001Z","subscription":"s2"}}`, i)
	}
	chat := await(t, result, "Subscribe")

	ts := time.Date(2026, 12, 4, 10, 0, 0, 123456000, time.UTC)
	for i := range n {
		got := nextEvent(t, orders)
		want := client.Event{
			Topic:        fmt.Sprintf("orders.%d", i),
			Data:         json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)),
			ID:           int64(100 + i),
			TS:           ts,
			Subscription: "s1",
		}
		if diff := cmp.Diff(got, want, cmpopts.IgnoreFields(client.Event{}, "Raw")); diff != "" {
			t.Fatalf("event %d of s1 (-got +want):\n%s", i, diff)
		}
	}

	for i := range n {
		got := nextEvent(t, chat)
		if string(got.Data) != fmt.Sprint(i) || got.Subscription != "s2" {
			t.Fatalf("event %d of s2 = data %s for %s, want data %d for s2", i, got.Data, got.Subscription, i)
		}
		if got.ID != 0 {
			t.Errorf("ephemeral event %d: ID = %d, want 0", i, got.ID)
		}
	}
}

func TestEventRawIsParams(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})
	sub := subscribe(t, conn, fc, "s1", "a")

	params := `{"topic":"a","data":[1, 2],"id":5,"ts":"2026-12-04T10:00:00Z","subscription":"s1"}`
	fc.sendf(`{"jsonrpc":"2.0","method":"event","params":%s}`, params)

	if got := string(nextEvent(t, sub).Raw); got != params {
		t.Errorf("Raw = %s, want %s", got, params)
	}
}

func TestUnsubscribe(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})
	sub := subscribe(t, conn, fc, "s1", "a")

	result := async(func() error { return sub.Unsubscribe(t.Context()) })
	req := fc.expect("unsubscribe")
	if got, want := string(req.Params), `{"subscription":"s1"}`; got != want {
		t.Errorf("unsubscribe params = %s, want %s", got, want)
	}

	// Events still in transit are dropped once Unsubscribe has begun.
	fc.send(`{"jsonrpc":"2.0","method":"event","params":{"topic":"a","data":1,"subscription":"s1"}}`)
	fc.reply(req, `{}`)
	if err := await(t, result, "Unsubscribe"); err != nil {
		t.Errorf("Unsubscribe: %v", err)
	}

	if _, ok := <-sub.Events(); ok {
		t.Error("Events() delivered an event after Unsubscribe, want it closed")
	}
	if err := sub.Err(); err != nil {
		t.Errorf("Err() after Unsubscribe = %v, want nil", err)
	}
}

func TestSlowSubscriptionReleasedByUnsubscribe(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{EventBuffer: 1})
	slow := subscribe(t, conn, fc, "s1", "slow")
	fast := subscribe(t, conn, fc, "s2", "fast")

	// s1's channel has room for one event, so the reader waits on the second and
	// the event for s2 stays unread until s1 ends.
	for range 3 {
		fc.send(`{"jsonrpc":"2.0","method":"event","params":{"topic":"slow","data":1,"subscription":"s1"}}`)
	}
	fc.send(`{"jsonrpc":"2.0","method":"event","params":{"topic":"fast","data":2,"subscription":"s2"}}`)

	// Err must not wait for the reader, which may be blocked on s1.
	if err := await(t, async(slow.Err), "Err of a full subscription"); err != nil {
		t.Errorf("Err() of an active subscription = %v, want nil", err)
	}

	result := async(func() error { return slow.Unsubscribe(context.Background()) })
	if got := nextEvent(t, fast); string(got.Data) != "2" {
		t.Errorf("event of s2: data = %s, want 2", got.Data)
	}

	fc.reply(fc.expect("unsubscribe"), `{}`)
	if err := await(t, result, "Unsubscribe"); err != nil {
		t.Errorf("Unsubscribe: %v", err)
	}
	waitClosed(t, slow)
}

func TestCloseWithUndrainedSubscription(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{EventBuffer: 1})
	sub := subscribe(t, conn, fc, "s1", "a")

	for range 3 {
		fc.send(`{"jsonrpc":"2.0","method":"event","params":{"topic":"a","data":1,"subscription":"s1"}}`)
	}

	// The sidecar side must read to complete the close handshake.
	go func() { _, _, _ = fc.ws.Read(context.Background()) }()
	closed := async(conn.Close)
	if err := await(t, closed, "Close"); err != nil {
		t.Errorf("Close() = %v, want nil", err)
	}

	waitClosed(t, sub)
	if err := sub.Err(); err != client.ErrClosed {
		t.Errorf("Err() after Close = %v, want ErrClosed", err)
	}
}

func TestSubscriptionEndsWithConnection(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})
	sub := subscribe(t, conn, fc, "s1", "a")

	fc.closeWith(websocket.StatusServiceRestart, "draining")

	waitClosed(t, sub)
	if got := client.CloseStatus(sub.Err()); got != websocket.StatusServiceRestart {
		t.Errorf("CloseStatus(sub.Err()) = %v, want %v (error %v)", got, websocket.StatusServiceRestart, sub.Err())
	}
}

func TestSubscribeAbandonedIsUndone(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	ctx, cancel := context.WithCancel(t.Context())
	result := async(func() error {
		_, err := conn.Subscribe(ctx, []string{"a"})
		return err
	})
	req := fc.expect("subscribe")
	cancel()
	if err := await(t, result, "Subscribe"); !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe error = %v, want one wrapping context.Canceled", err)
	}

	fc.reply(req, `{"subscription":"s9","topics":["a"],"epoch":"ep-1","head":0}`)
	unsub := fc.expect("unsubscribe")
	if got, want := string(unsub.Params), `{"subscription":"s9"}`; got != want {
		t.Errorf("unsubscribe params = %s, want %s", got, want)
	}
	fc.reply(unsub, `{}`)
}

func TestAuthRemovesSubscriptions(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})
	kept := subscribe(t, conn, fc, "s1", "a")
	removed := subscribe(t, conn, fc, "s2", "b")

	result := async(func() error {
		res, err := conn.Auth(context.Background(), "new-token")
		if err != nil {
			return err
		}
		want := client.AuthResult{Subject: "user-1", Expires: time.Unix(1900000000, 0), Removed: []string{"s2"}}
		if diff := cmp.Diff(res, want); diff != "" {
			t.Errorf("AuthResult (-got +want):\n%s", diff)
		}
		return nil
	})
	req := fc.expect("auth")
	if got, want := string(req.Params), `{"token":"new-token"}`; got != want {
		t.Errorf("auth params = %s, want %s", got, want)
	}
	fc.reply(req, `{"sub":"user-1","exp":1900000000,"removed":["s2"]}`)
	if err := await(t, result, "Auth"); err != nil {
		t.Fatalf("Auth: %v", err)
	}

	waitClosed(t, removed)
	if err := removed.Err(); !errors.Is(err, client.ErrRemoved) {
		t.Errorf("Err() of the removed subscription = %v, want ErrRemoved", err)
	}

	fc.send(`{"jsonrpc":"2.0","method":"event","params":{"topic":"a","data":1,"subscription":"s1"}}`)
	if got := nextEvent(t, kept); got.Topic != "a" {
		t.Errorf("event of the kept subscription: topic = %q, want a", got.Topic)
	}
}
