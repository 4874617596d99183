package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/pgsidecar/sidecar/client"
)

func TestConcurrentCallsMatchedByID(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	const n = 50
	results := make([]<-chan string, n)
	for i := range n {
		results[i] = async(func() string {
			var got struct{ N int }
			if err := conn.Call(context.Background(), "app.echo", map[string]int{"n": i}, &got); err != nil {
				return err.Error()
			}
			if got.N != i {
				return fmt.Sprintf("call %d got the result for %d", i, got.N)
			}
			return ""
		})
	}

	// Read every request first, then reply in reverse order, so that
	// responses cannot match calls by arrival order.
	requests := make([]request, n)
	seen := make(map[string]bool)
	for i := range requests {
		requests[i] = fc.expect("app.echo")
		if seen[string(requests[i].ID)] {
			t.Errorf("request id %s used twice", requests[i].ID)
		}
		seen[string(requests[i].ID)] = true
	}
	for i := n - 1; i >= 0; i-- {
		fc.reply(requests[i], string(requests[i].Params))
	}

	for i, ch := range results {
		if problem := await(t, ch, "Call"); problem != "" {
			t.Errorf("call %d: %s", i, problem)
		}
	}
}

func TestCallErrorHasCode(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	result := async(func() error { return conn.Call(context.Background(), "app.missing", nil, nil) })
	req := fc.expect("app.missing")
	if req.Params != nil {
		t.Errorf("params = %s, want none", req.Params)
	}
	fc.sendf(`{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"method \"app.missing\" not found"}}`, req.ID)

	err := await(t, result, "Call")
	var rpcErr *client.RPCError
	if !errors.As(err, &rpcErr) {
		t.Fatalf("Call error = %v, want an *RPCError", err)
	}
	if rpcErr.Code != client.CodeMethodNotFound {
		t.Errorf("code = %d, want %d", rpcErr.Code, client.CodeMethodNotFound)
	}
	if rpcErr.Data != nil {
		t.Errorf("data = %s, want nil", rpcErr.Data)
	}
	if errors.Is(err, client.ErrClosed) {
		t.Errorf("Call error %v matches ErrClosed, but the connection is open", err)
	}
}

func TestCallContextCancelled(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	ctx, cancel := context.WithCancel(t.Context())
	result := async(func() error { return conn.Call(ctx, "app.slow", nil, nil) })
	req := fc.expect("app.slow")
	cancel()
	if err := await(t, result, "Call"); !errors.Is(err, context.Canceled) {
		t.Errorf("Call error = %v, want one wrapping context.Canceled", err)
	}

	// The late response is ignored and the connection stays usable.
	fc.reply(req, `"late"`)
	pinged := async(func() error { return conn.Ping(context.Background()) })
	fc.reply(fc.expect("ping"), `"pong"`)
	if err := await(t, pinged, "Ping"); err != nil {
		t.Errorf("Ping after a cancelled call: %v", err)
	}
}

func TestPublish(t *testing.T) {
	tests := []struct {
		name       string
		data       any
		durable    bool
		result     string
		wantParams string
		wantID     int64
	}{
		{"durable", map[string]string{"a": "<b>"}, true, `{"id":17}`, `{"topic":"orders.1","data":{"a":"<b>"},"durable":true}`, 17},
		{"ephemeral", json.RawMessage(`[1, 2]`), false, `{}`, `{"topic":"orders.1","data":[1,2],"durable":false}`, 0},
		{"null data", nil, true, `{"id":18}`, `{"topic":"orders.1","data":null,"durable":true}`, 18},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeSidecar(t)
			conn, fc := f.dial(client.Options{})

			type published struct {
				id  int64
				err error
			}
			result := async(func() published {
				id, err := conn.Publish(context.Background(), "orders.1", tt.data, tt.durable)
				return published{id, err}
			})
			req := fc.expect("publish")
			if got := string(req.Params); got != tt.wantParams {
				t.Errorf("publish params = %s, want %s", got, tt.wantParams)
			}
			fc.reply(req, tt.result)

			p := await(t, result, "Publish")
			if p.err != nil || p.id != tt.wantID {
				t.Errorf("Publish = %d, %v; want %d, nil", p.id, p.err, tt.wantID)
			}
		})
	}
}

func TestPublishUnencodableData(t *testing.T) {
	f := newFakeSidecar(t)
	conn, _ := f.dial(client.Options{})

	if _, err := conn.Publish(t.Context(), "a", make(chan int), true); err == nil {
		t.Error("Publish with a channel as data succeeded, want an encoding error")
	}
}

func TestNotify(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	if err := conn.Notify(t.Context(), "app.typing", map[string]bool{"on": true}); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	msg := fc.receive()
	if msg.Method != "app.typing" || msg.ID != nil || string(msg.Params) != `{"on":true}` {
		t.Errorf("notification = method %q, id %s, params %s; want app.typing, no id, {\"on\":true}", msg.Method, msg.ID, msg.Params)
	}
}

func TestServerRequests(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	conn.Handle("app.greet", func(ctx context.Context, params json.RawMessage) (any, error) {
		var p struct{ Name string }
		if err := json.Unmarshal(params, &p); err != nil {
			return nil, &client.RPCError{Code: client.CodeInvalidParams, Message: "name is missing"}
		}
		return "hello " + p.Name, nil
	})
	conn.Handle("app.fail", func(ctx context.Context, params json.RawMessage) (any, error) {
		return nil, errors.New("disk full")
	})
	conn.Handle("app.nothing", func(ctx context.Context, params json.RawMessage) (any, error) {
		return nil, nil
	})
	conn.Handle("app.removed", func(ctx context.Context, params json.RawMessage) (any, error) { return 1, nil })
	conn.Handle("app.removed", nil)

	requests := map[string]string{
		`"r1"`: `{"jsonrpc":"2.0","id":"r1","method":"app.greet","params":{"name":"Ada"}}`,
		`"r2"`: `{"jsonrpc":"2.0","id":"r2","method":"app.greet"}`,
		`7`:    `{"jsonrpc":"2.0","id":7,"method":"app.fail"}`,
		`8`:    `{"jsonrpc":"2.0","id":8,"method":"app.unknown"}`,
		`9`:    `{"jsonrpc":"2.0","id":9,"method":"app.nothing"}`,
		`10`:   `{"jsonrpc":"2.0","id":10,"method":"app.removed"}`,
	}
	want := map[string]string{
		`"r1"`: `{"jsonrpc":"2.0","id":"r1","result":"hello Ada"}`,
		`"r2"`: `{"jsonrpc":"2.0","id":"r2","error":{"code":-32602,"message":"name is missing"}}`,
		`7`:    `{"jsonrpc":"2.0","id":7,"error":{"code":-32603,"message":"disk full"}}`,
		`8`:    `{"jsonrpc":"2.0","id":8,"error":{"code":-32601,"message":"method \"app.unknown\" not found"}}`,
		`9`:    `{"jsonrpc":"2.0","id":9,"result":null}`,
		`10`:   `{"jsonrpc":"2.0","id":10,"error":{"code":-32601,"message":"method \"app.removed\" not found"}}`,
	}
	for _, msg := range requests {
		fc.send(msg)
	}

	// Handlers run concurrently, so responses may come in any order.
	got := make(map[string]string)
	for range requests {
		_, msg, err := fc.ws.Read(t.Context())
		if err != nil {
			t.Fatalf("fake sidecar: read: %v", err)
		}
		var resp struct{ ID json.RawMessage }
		if err := json.Unmarshal(msg, &resp); err != nil {
			t.Fatalf("response %s: %v", msg, err)
		}
		got[string(resp.ID)] = string(msg)
	}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("responses by id (-got +want):\n%s", diff)
	}
}

func TestHandlerContextCancelledOnClose(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	started := make(chan struct{})
	conn.Handle("app.wait", func(ctx context.Context, params json.RawMessage) (any, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	})
	fc.send(`{"jsonrpc":"2.0","id":1,"method":"app.wait"}`)
	await(t, async(func() struct{} { <-started; return struct{}{} }), "handler start")

	go func() { _, _, _ = fc.ws.Read(context.Background()) }()
	if err := await(t, async(conn.Close), "Close"); err != nil {
		t.Errorf("Close() = %v, want nil", err)
	}
}

func TestNotificationHandler(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	got := make(chan string, 1)
	conn.Handle("app.news", func(ctx context.Context, params json.RawMessage) (any, error) {
		got <- string(params)
		return nil, nil
	})
	fc.send(`{"jsonrpc":"2.0","method":"app.news","params":{"n":1}}`)

	if params := await(t, got, "notification handler"); params != `{"n":1}` {
		t.Errorf("params = %s, want {\"n\":1}", params)
	}
}

func TestOptionsHandlersAnswerFirstRequest(t *testing.T) {
	f := newFakeSidecar(t, thenSend(`{"jsonrpc":"2.0","id":1,"method":"app.hello"}`))
	_, fc := f.dial(client.Options{Handlers: map[string]client.Handler{
		"app.hello": func(ctx context.Context, params json.RawMessage) (any, error) { return "hi", nil },
	}})

	_, msg, err := fc.ws.Read(t.Context())
	if err != nil {
		t.Fatalf("fake sidecar: read: %v", err)
	}
	if got, want := string(msg), `{"jsonrpc":"2.0","id":1,"result":"hi"}`; got != want {
		t.Errorf("response = %s, want %s", got, want)
	}
}
