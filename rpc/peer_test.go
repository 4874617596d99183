package rpc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pgsidecar/sidecar/rpc"
)

type echoParams struct {
	N int `json:"n"`
}

func registerEcho(p *rpc.Peer) {
	rpc.Register(p, "echo", func(_ context.Context, params echoParams) (int, error) {
		return params.N, nil
	})
}

func TestPeerConcurrentCalls(t *testing.T) {
	const calls = 1000
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})
	registerEcho(p.b)

	errs := make(chan error, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Go(func() {
			var got int
			if err := p.a.Call(t.Context(), "echo", echoParams{N: i}, &got); err != nil {
				errs <- err
				return
			}
			if got != i {
				errs <- fmt.Errorf("echo(%d) = %d", i, got)
			}
		})
	}
	wg.Wait()
	close(errs)

	for err := range errs {
		t.Error(err)
	}
}

func TestPeerShortCallOvertakesLongCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})
		rpc.Register(p.b, "sleep", func(ctx context.Context, params struct{ MS int }) (int, error) {
			select {
			case <-time.After(time.Duration(params.MS) * time.Millisecond):
				return params.MS, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		})

		long := make(chan error, 1)
		go func() {
			long <- p.a.Call(t.Context(), "sleep", map[string]int{"ms": 2000}, nil)
		}()
		synctest.Wait() // the 2 s request is sent and its handler sleeps

		if err := p.a.Call(t.Context(), "sleep", map[string]int{"ms": 1}, nil); err != nil {
			t.Fatalf("1 ms call: %v", err)
		}
		select {
		case err := <-long:
			t.Fatalf("2 s call returned (%v) before the 1 ms call", err)
		default:
		}

		if err := <-long; err != nil {
			t.Errorf("2 s call: %v", err)
		}
	})
}

func TestPeerNestedCalls(t *testing.T) {
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})

	// A calls B's outer, which calls A's inner, which calls B's leaf.
	rpc.Register(p.b, "outer", func(ctx context.Context, _ struct{}) (string, error) {
		var inner string
		err := p.b.Call(ctx, "inner", nil, &inner)
		return "outer(" + inner + ")", err
	})
	rpc.Register(p.a, "inner", func(ctx context.Context, _ struct{}) (string, error) {
		var leaf string
		err := p.a.Call(ctx, "leaf", nil, &leaf)
		return "inner(" + leaf + ")", err
	})
	rpc.Register(p.b, "leaf", func(context.Context, struct{}) (string, error) {
		return "leaf", nil
	})

	var got string
	if err := p.a.Call(t.Context(), "outer", nil, &got); err != nil {
		t.Fatalf("Call(outer): %v", err)
	}
	if want := "outer(inner(leaf))"; got != want {
		t.Errorf("Call(outer) = %q, want %q", got, want)
	}
}

func TestPeerDeepNestedCalls(t *testing.T) {
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})

	// countdown(n) on one side calls countdown(n-1) on the other, so each
	// side holds up to n/2 handlers that wait for each other's responses.
	registerCountdown := func(self *rpc.Peer) {
		rpc.Register(self, "countdown", func(ctx context.Context, params echoParams) (int, error) {
			if params.N == 0 {
				return 0, nil
			}
			var below int
			err := self.Call(ctx, "countdown", echoParams{N: params.N - 1}, &below)
			return below + 1, err
		})
	}
	registerCountdown(p.a)
	registerCountdown(p.b)

	const depth = 64
	var got int
	if err := p.a.Call(t.Context(), "countdown", echoParams{N: depth}, &got); err != nil {
		t.Fatalf("Call(countdown, %d): %v", depth, err)
	}
	if got != depth {
		t.Errorf("Call(countdown, %d) = %d, want %d", depth, got, depth)
	}
}

func TestPeerCallTimeout(t *testing.T) {
	tests := []struct {
		name        string
		callTimeout time.Duration // PeerConfig.CallTimeout of the caller
		ctxTimeout  time.Duration // deadline of the caller's ctx; 0 for none
		want        time.Duration
	}{
		{name: "default timeout", callTimeout: 0, want: 30 * time.Second},
		{name: "configured timeout", callTimeout: 2 * time.Second, want: 2 * time.Second},
		{name: "ctx deadline shorter", callTimeout: 2 * time.Second, ctxTimeout: 500 * time.Millisecond, want: 500 * time.Millisecond},
		{name: "ctx deadline longer", callTimeout: 2 * time.Second, ctxTimeout: 5 * time.Second, want: 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newPipe(t, rpc.PeerConfig{CallTimeout: tt.callTimeout}, rpc.PeerConfig{})
				p.b.Handle("hang", func(ctx context.Context, _ json.RawMessage) (any, error) {
					<-ctx.Done()
					return nil, ctx.Err()
				})

				ctx := t.Context()
				if tt.ctxTimeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, tt.ctxTimeout)
					defer cancel()
				}

				start := time.Now()
				done := make(chan error, 1)
				go func() { done <- p.a.Call(ctx, "hang", nil, nil) }()

				time.Sleep(tt.want - time.Nanosecond)
				synctest.Wait()
				select {
				case err := <-done:
					t.Fatalf("Call returned %v after %s, before its deadline", err, time.Since(start))
				default:
				}

				err := <-done
				if elapsed := time.Since(start); elapsed != tt.want {
					t.Errorf("Call returned after %s, want %s", elapsed, tt.want)
				}
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Call error = %v, want one that wraps context.DeadlineExceeded", err)
				}
				if want := fmt.Sprintf("timed out after %s", tt.want); err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Call error = %v, want one that says %q", err, want)
				}
			})
		})
	}
}

func TestPeerLateResponseDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		logger, logs := newLogger()
		p := newPipe(t, rpc.PeerConfig{CallTimeout: time.Second, Logger: logger}, rpc.PeerConfig{})
		p.b.Handle("slow", func(context.Context, json.RawMessage) (any, error) {
			time.Sleep(3 * time.Second)
			return "late", nil
		})

		err := p.a.Call(t.Context(), "slow", nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Call(slow) error = %v, want a timeout", err)
		}

		time.Sleep(3 * time.Second)
		synctest.Wait()
		if want := "no call is waiting for its id"; !strings.Contains(logs.String(), want) {
			t.Errorf("log after a late response = %q, want it to contain %q", logs.String(), want)
		}
	})
}

func TestPeerCancelledCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})
		p.b.Handle("hang", func(ctx context.Context, _ json.RawMessage) (any, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		})

		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- p.a.Call(ctx, "hang", nil, nil) }()
		synctest.Wait()
		cancel()

		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Call error after cancel = %v, want one that wraps context.Canceled", err)
		}
	})
}

func TestPeerCallWithEndedContext(t *testing.T) {
	sent := make(chan []byte, 1)
	p := rpc.NewPeer(rpc.PeerConfig{Send: func(msg []byte) error { sent <- msg; return nil }})

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := p.Call(ctx, "echo", nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Call with a cancelled ctx = %v, want one that wraps context.Canceled", err)
	}
	if len(sent) != 0 {
		t.Errorf("Call with a cancelled ctx sent %s, want nothing sent", <-sent)
	}
}

func TestPeerCloseFailsPendingCalls(t *testing.T) {
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})

	// Each side holds the other's call until release is closed, after the
	// calls have failed, so Close cannot have waited for the handlers.
	release := make(chan struct{})
	defer close(release) // also when the test fails, so the cleanup's Wait returns
	started := make(chan struct{}, 2)
	causes := make(chan error, 2)
	hold := func(ctx context.Context, _ json.RawMessage) (any, error) {
		started <- struct{}{}
		<-ctx.Done()
		causes <- context.Cause(ctx)
		<-release
		return nil, ctx.Err()
	}
	p.a.Handle("hold", hold)
	p.b.Handle("hold", hold)

	errs := make(chan error, 2)
	go func() { errs <- p.a.Call(t.Context(), "hold", nil, nil) }()
	go func() { errs <- p.b.Call(t.Context(), "hold", nil, nil) }()
	receiveWithin(t, started, "start of the first handler")
	receiveWithin(t, started, "start of the second handler")

	cause := errors.New("connection reset")
	p.cut(cause)

	for range 2 {
		err := receiveWithin(t, errs, "failed call")
		if !errors.Is(err, rpc.ErrClosed) {
			t.Errorf("pending call error = %v, want one that wraps rpc.ErrClosed", err)
		}
		if !errors.Is(err, cause) {
			t.Errorf("pending call error = %v, want one that wraps the close cause %v", err, cause)
		}
	}
	for range 2 {
		if got := receiveWithin(t, causes, "cancelled handler context"); !errors.Is(got, rpc.ErrClosed) {
			t.Errorf("context.Cause of a handler's context after Close = %v, want one that wraps rpc.ErrClosed", got)
		}
	}
}

func TestPeerAfterClose(t *testing.T) {
	sent := make(chan []byte, 1)
	p := rpc.NewPeer(rpc.PeerConfig{Send: func(msg []byte) error { sent <- msg; return nil }})
	registerEcho(p)
	cause := errors.New("server draining")
	p.Close(cause)
	p.Close(errors.New("second close")) // does nothing

	errs := map[string]error{
		"Call":   p.Call(t.Context(), "echo", nil, nil),
		"Notify": p.Notify("echo", nil),
	}
	for name, err := range errs {
		if !errors.Is(err, rpc.ErrClosed) {
			t.Errorf("%s after Close = %v, want one that wraps rpc.ErrClosed", name, err)
		}
		if !errors.Is(err, cause) {
			t.Errorf("%s after Close = %v, want one that wraps the close cause %v", name, err, cause)
		}
	}

	p.Receive(t.Context(), []byte(`{"jsonrpc":"2.0","id":1,"method":"echo"}`))
	p.Wait()
	if len(sent) != 0 {
		t.Errorf("Receive after Close sent %s, want nothing sent", <-sent)
	}
}

func TestPeerHandlerPanic(t *testing.T) {
	logger, logs := newLogger()
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{Logger: logger})
	p.b.Handle("boom", func(context.Context, json.RawMessage) (any, error) {
		panic("index out of range in the boom handler")
	})
	registerEcho(p.b)

	err := p.a.Call(t.Context(), "boom", nil, nil)
	rerr := rpcError(t, err)
	if rerr.Code != rpc.CodeInternal {
		t.Errorf("Call(boom) code = %d, want %d", rerr.Code, rpc.CodeInternal)
	}
	if want := `method "boom" failed with an internal error`; rerr.Message != want {
		t.Errorf("Call(boom) message = %q, want %q", rerr.Message, want)
	}

	for _, want := range []string{"index out of range in the boom handler", "runtime/debug.Stack"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log after a panic = %q, want it to contain %q", logs.String(), want)
		}
	}

	var got int
	if err := p.a.Call(t.Context(), "echo", echoParams{N: 7}, &got); err != nil || got != 7 {
		t.Errorf("Call(echo, 7) after a panic = %d, %v, want 7, nil", got, err)
	}
}

func TestPeerHandlerErrors(t *testing.T) {
	logger, logs := newLogger()
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{Logger: logger})
	p.b.Handle("rpc-error", func(context.Context, json.RawMessage) (any, error) {
		return nil, &rpc.Error{Code: rpc.CodeAppCallFailed, Message: "the application is down", Data: map[string]int{"retry_ms": 100}}
	})
	p.b.Handle("wrapped", func(context.Context, json.RawMessage) (any, error) {
		return nil, fmt.Errorf("check claim: %w", rpc.Errorf(rpc.CodeForbidden, `topic "orders.1" is not allowed`))
	})
	p.b.Handle("plain", func(context.Context, json.RawMessage) (any, error) {
		return nil, errors.New("dial tcp 10.0.0.5:5432: connection refused")
	})

	tests := []struct {
		method string
		want   *rpc.Error
	}{
		{"rpc-error", &rpc.Error{Code: rpc.CodeAppCallFailed, Message: "the application is down", Data: json.RawMessage(`{"retry_ms":100}`)}},
		{"wrapped", &rpc.Error{Code: rpc.CodeForbidden, Message: `topic "orders.1" is not allowed`}},
		{"plain", &rpc.Error{Code: rpc.CodeInternal, Message: `method "plain" failed with an internal error`}},
	}
	for _, tt := range tests {
		err := p.a.Call(t.Context(), tt.method, nil, nil)
		if diff := cmp.Diff(rpcError(t, err), tt.want); diff != "" {
			t.Errorf("Call(%s) error mismatch (-got +want):\n%s", tt.method, diff)
		}
	}

	if want := "10.0.0.5:5432: connection refused"; !strings.Contains(logs.String(), want) {
		t.Errorf("log after an internal error = %q, want it to contain %q", logs.String(), want)
	}
}

func TestPeerMaxInFlight(t *testing.T) {
	logger, logs := newLogger()
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{MaxInFlight: 1, Logger: logger})
	registerEcho(p.b)
	rpc.Register(p.a, "ping", func(context.Context, struct{}) (string, error) { return "pong", nil })

	started := make(chan struct{})
	release := make(chan struct{})
	p.b.Handle("block", func(ctx context.Context, _ json.RawMessage) (any, error) {
		close(started)
		select {
		case <-release:
			return "released", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})

	blocked := make(chan error, 1)
	go func() { blocked <- p.a.Call(t.Context(), "block", nil, nil) }()
	receiveWithin(t, started, "start of the blocking handler")

	err := p.a.Call(t.Context(), "echo", echoParams{N: 1}, nil)
	if rerr := rpcError(t, err); rerr.Code != rpc.CodeRateLimited {
		t.Errorf("Call(echo) with the only slot taken: code %d, want %d", rerr.Code, rpc.CodeRateLimited)
	}

	if err := p.a.Notify("echo", echoParams{N: 2}); err != nil {
		t.Fatalf("Notify(echo): %v", err)
	}

	var pong string
	if err := p.b.Call(t.Context(), "ping", nil, &pong); err != nil || pong != "pong" {
		t.Errorf("Call(ping) in the other direction = %q, %v, want pong, nil", pong, err)
	}
	if want := "rpc notification dropped"; !strings.Contains(logs.String(), want) {
		t.Errorf("log after a notification over the limit = %q, want it to contain %q", logs.String(), want)
	}

	close(release)
	if err := receiveWithin(t, blocked, "response to the blocked call"); err != nil {
		t.Fatalf("Call(block): %v", err)
	}

	var got int
	if err := p.a.Call(t.Context(), "echo", echoParams{N: 3}, &got); err != nil || got != 3 {
		t.Errorf("Call(echo, 3) once the slot is free = %d, %v, want 3, nil", got, err)
	}
}

func TestPeerTypedParamsErrors(t *testing.T) {
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})
	type searchParams struct {
		Topics []string `json:"topics"`
		Limit  int      `json:"limit"`
	}
	rpc.Register(p.b, "search", func(_ context.Context, params searchParams) (int, error) {
		return len(params.Topics), nil
	})

	tests := []struct {
		name   string
		params any
		want   string
	}{
		{"wrong member type", json.RawMessage(`{"topics":"orders.*"}`), `invalid params: "topics" must be an array of strings`},
		{"wrong element type", json.RawMessage(`{"topics":["a",2]}`), `invalid params: "topics" must be an array of strings`},
		{"integer out of range", json.RawMessage(`{"limit":1e30}`), `invalid params: "limit" must be an integer from -9223372036854775808 to 9223372036854775807`},
		{"array for an object", []int{1}, `invalid params: params must be an object, not an array`},
		{"number params", json.RawMessage(`5`), `invalid params: params must be an object or an array, not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.a.Call(t.Context(), "search", tt.params, nil)
			rerr := rpcError(t, err)
			if rerr.Code != rpc.CodeInvalidParams {
				t.Errorf("code = %d, want %d", rerr.Code, rpc.CodeInvalidParams)
			}
			if rerr.Message != tt.want {
				t.Errorf("message = %q, want %q", rerr.Message, tt.want)
			}
		})
	}
}

func TestPeerReceiveInvalidInput(t *testing.T) {
	sent := make(chan []byte, 1)
	p := rpc.NewPeer(rpc.PeerConfig{Send: func(msg []byte) error { sent <- msg; return nil }})
	registerEcho(p)
	p.Handle("raw", func(context.Context, json.RawMessage) (any, error) { return nil, nil })
	p.HandleNotification("event", func(context.Context, json.RawMessage) {})
	t.Cleanup(func() {
		p.Close(errTestOver)
		p.Wait()
	})

	// Receive sends each error response before it returns, or sends none.
	tests := []struct {
		name     string
		in       string
		wantID   string // "" when no response is sent
		wantCode int
	}{
		{"not JSON", `{"jsonrpc":`, "null", rpc.CodeParseError},
		{"batch", `[{"jsonrpc":"2.0","id":1,"method":"echo"}]`, "null", rpc.CodeInvalidRequest},
		{"wrong version", `{"jsonrpc":"1.0","id":3,"method":"echo"}`, "3", rpc.CodeInvalidRequest},
		{"unknown method", `{"jsonrpc":"2.0","id":4,"method":"nope"}`, "4", rpc.CodeMethodNotFound},
		{"unknown method in a notification", `{"jsonrpc":"2.0","method":"nope"}`, "", 0},
		{"typed params of the wrong type", `{"jsonrpc":"2.0","id":"a","method":"echo","params":{"n":"x"}}`, `"a"`, rpc.CodeInvalidParams},
		{"untyped params not a container", `{"jsonrpc":"2.0","id":"b","method":"raw","params":true}`, `"b"`, rpc.CodeInvalidParams},
		{"invalid params in a notification", `{"jsonrpc":"2.0","method":"raw","params":1}`, "", 0},
		{"request for a notification method", `{"jsonrpc":"2.0","id":5,"method":"event"}`, "5", rpc.CodeInvalidRequest},
		{"response to no call", `{"jsonrpc":"2.0","id":99,"result":1}`, "", 0},
		{"error response to no call", `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}`, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.Receive(t.Context(), []byte(tt.in))

			var reply []byte
			select {
			case reply = <-sent:
			default:
			}
			if tt.wantID == "" {
				if reply != nil {
					t.Errorf("Receive(%s) sent %s, want no response", tt.in, reply)
				}
				return
			}
			if reply == nil {
				t.Fatalf("Receive(%s) sent nothing, want an error response", tt.in)
			}

			m, rerr := rpc.Decode(reply)
			if rerr != nil || m.Kind != rpc.KindResponse || m.Error == nil {
				t.Fatalf("Receive(%s) sent %s, want an error response", tt.in, reply)
			}
			if string(m.ID) != tt.wantID {
				t.Errorf("response id = %s, want %s", m.ID, tt.wantID)
			}
			if m.Error.Code != tt.wantCode {
				t.Errorf("response code = %d, want %d (message %q)", m.Error.Code, tt.wantCode, m.Error.Message)
			}
		})
	}
}

func TestPeerNotifications(t *testing.T) {
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})

	const count = 200
	events := make(chan int, count)
	p.b.HandleNotification("event", func(_ context.Context, params json.RawMessage) {
		var seq []int
		if err := json.Unmarshal(params, &seq); err != nil || len(seq) != 1 {
			t.Errorf("event params = %s, want [n]", params)
			return
		}
		events <- seq[0]
	})

	noted := make(chan string, 1)
	rpc.Register(p.b, "note", func(_ context.Context, params struct{ Text string }) (struct{}, error) {
		noted <- params.Text
		return struct{}{}, nil
	})

	for i := range count {
		if err := p.a.Notify("event", []int{i}); err != nil {
			t.Fatalf("Notify(event, [%d]): %v", i, err)
		}
	}
	for i := range count {
		if got := receiveWithin(t, events, "event notification"); got != i {
			t.Fatalf("notification %d handled with params [%d], want the order sent", i, got)
		}
	}

	if err := p.a.Notify("note", map[string]string{"text": "hello"}); err != nil {
		t.Fatalf("Notify(note): %v", err)
	}
	if got := receiveWithin(t, noted, "note notification"); got != "hello" {
		t.Errorf("note handler got %q, want hello", got)
	}
}

func TestPeerHandlePrefix(t *testing.T) {
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})
	p.b.HandlePrefix("app.", func(_ context.Context, method string, _ json.RawMessage) (any, error) {
		if method == "app.missing" {
			return nil, rpc.MethodNotFound(method)
		}
		return "forwarded " + method, nil
	})
	p.b.HandlePrefix("app.admin.", func(_ context.Context, method string, _ json.RawMessage) (any, error) {
		return "admin " + method, nil
	})
	p.b.Handle("app.local", func(context.Context, json.RawMessage) (any, error) {
		return "local", nil
	})

	tests := []struct {
		method string
		want   string
	}{
		{"app.orders.list", "forwarded app.orders.list"},
		{"app.admin.reset", "admin app.admin.reset"},
		{"app.local", "local"},
	}
	for _, tt := range tests {
		var got string
		if err := p.a.Call(t.Context(), tt.method, nil, &got); err != nil || got != tt.want {
			t.Errorf("Call(%s) = %q, %v, want %q, nil", tt.method, got, err, tt.want)
		}
	}

	for _, method := range []string{"app.missing", "other"} {
		err := p.a.Call(t.Context(), method, nil, nil)
		if rerr := rpcError(t, err); rerr.Code != rpc.CodeMethodNotFound {
			t.Errorf("Call(%s) code = %d, want %d", method, rerr.Code, rpc.CodeMethodNotFound)
		}
	}
}

func TestPeerCallResult(t *testing.T) {
	p := newPipe(t, rpc.PeerConfig{}, rpc.PeerConfig{})
	p.b.Handle("object", func(context.Context, json.RawMessage) (any, error) {
		return json.RawMessage(`{"id": 42}`), nil
	})

	if err := p.a.Call(t.Context(), "object", nil, nil); err != nil {
		t.Errorf("Call(object) with a nil result: %v", err)
	}

	var raw json.RawMessage
	if err := p.a.Call(t.Context(), "object", nil, &raw); err != nil || string(raw) != `{"id": 42}` {
		t.Errorf("Call(object) into a json.RawMessage = %s, %v, want {\"id\": 42}, nil", raw, err)
	}

	var s string
	err := p.a.Call(t.Context(), "object", nil, &s)
	var typeErr *json.UnmarshalTypeError
	if !errors.As(err, &typeErr) {
		t.Errorf("Call(object) into a string = %v, want one that wraps *json.UnmarshalTypeError", err)
	}
}

func TestPeerSendError(t *testing.T) {
	errWrite := errors.New("write: broken pipe")
	p := rpc.NewPeer(rpc.PeerConfig{Send: func([]byte) error { return errWrite }})

	if err := p.Call(t.Context(), "echo", nil, nil); !errors.Is(err, errWrite) {
		t.Errorf("Call with a failing Send = %v, want one that wraps %v", err, errWrite)
	}
	if err := p.Notify("echo", nil); !errors.Is(err, errWrite) {
		t.Errorf("Notify with a failing Send = %v, want one that wraps %v", err, errWrite)
	}
}

func TestPeerParamsNotEncodable(t *testing.T) {
	p := rpc.NewPeer(rpc.PeerConfig{Send: func([]byte) error {
		t.Error("Send called for params that cannot be encoded")
		return nil
	}})

	for _, params := range []any{make(chan int), json.RawMessage(`{"a":`)} {
		if err := p.Call(t.Context(), "echo", params, nil); err == nil || !strings.Contains(err.Error(), "encode params") {
			t.Errorf("Call with params %T = %v, want an encode params error", params, err)
		}
		if err := p.Notify("echo", params); err == nil || !strings.Contains(err.Error(), "encode params") {
			t.Errorf("Notify with params %T = %v, want an encode params error", params, err)
		}
	}
}

func TestRegisterPanics(t *testing.T) {
	p := rpc.NewPeer(rpc.PeerConfig{Send: func([]byte) error { return nil }})
	registerEcho(p)
	p.HandlePrefix("app.", func(context.Context, string, json.RawMessage) (any, error) { return nil, nil })

	tests := []struct {
		name     string
		register func()
	}{
		{"duplicate method", func() { registerEcho(p) }},
		{"duplicate across kinds", func() { p.HandleNotification("echo", func(context.Context, json.RawMessage) {}) }},
		{"duplicate prefix", func() {
			p.HandlePrefix("app.", func(context.Context, string, json.RawMessage) (any, error) { return nil, nil })
		}},
		{"empty method", func() { p.Handle("", func(context.Context, json.RawMessage) (any, error) { return nil, nil }) }},
		{"empty prefix", func() {
			p.HandlePrefix("", func(context.Context, string, json.RawMessage) (any, error) { return nil, nil })
		}},
		{"nil handler", func() { p.Handle("other", nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("registration did not panic")
				}
			}()
			tt.register()
		})
	}
}
