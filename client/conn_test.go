package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/go-cmp/cmp"

	"github.com/pgsidecar/sidecar/client"
)

func TestDialWaitsForWelcome(t *testing.T) {
	f := newFakeSidecar(t, withoutWelcome())
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()

	type dialed struct {
		conn *client.Conn
		err  error
	}
	result := async(func() dialed {
		conn, err := client.Dial(ctx, f.url(), client.Options{})
		return dialed{conn, err}
	})
	fc := f.accept()

	select {
	case d := <-result:
		t.Fatalf("Dial returned before the welcome notification: conn %v, err %v", d.conn, d.err)
	default:
	}

	fc.send(defaultWelcome)
	d := await(t, result, "Dial")
	if d.err != nil {
		t.Fatalf("Dial: %v", d.err)
	}
	defer d.conn.CloseNow()

	want := client.Welcome{ClientID: "c-1", Epoch: "ep-1", Version: "v-test", Heartbeat: 25 * time.Second}
	if diff := cmp.Diff(d.conn.Welcome(), want); diff != "" {
		t.Errorf("Welcome() (-got +want):\n%s", diff)
	}
	if err := d.conn.Err(); err != nil {
		t.Errorf("Err() on an open connection = %v, want nil", err)
	}
}

func TestDialWithoutWelcomeTimesOut(t *testing.T) {
	f := newFakeSidecar(t, withoutWelcome())
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()

	conn, err := client.Dial(ctx, f.url(), client.Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial = %v, %v; want an error wrapping context.DeadlineExceeded", conn, err)
	}
}

func TestDialClosedBeforeWelcome(t *testing.T) {
	f := newFakeSidecar(t, withoutWelcome())
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()

	result := async(func() error {
		_, err := client.Dial(ctx, f.url(), client.Options{})
		return err
	})
	f.accept().closeWith(websocket.StatusPolicyViolation, "authentication timed out")

	err := await(t, result, "Dial")
	if !errors.Is(err, client.ErrClosed) {
		t.Errorf("Dial error = %v, want one matching ErrClosed", err)
	}
	if got := client.CloseStatus(err); got != websocket.StatusPolicyViolation {
		t.Errorf("CloseStatus(Dial error) = %v, want %v", got, websocket.StatusPolicyViolation)
	}
}

func TestDialRejected(t *testing.T) {
	f := newFakeSidecar(t, rejecting(http.StatusUnauthorized, `{"error":{"code":"invalid_token","message":"the token has expired"}}`))
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()

	_, err := client.Dial(ctx, f.url(), client.Options{Token: "expired"})

	var hsErr *client.HandshakeError
	if !errors.As(err, &hsErr) {
		t.Fatalf("Dial error = %v, want a *HandshakeError", err)
	}
	want := client.HandshakeError{StatusCode: http.StatusUnauthorized, Code: "invalid_token", Message: "the token has expired"}
	if diff := cmp.Diff(*hsErr, want); diff != "" {
		t.Errorf("HandshakeError (-got +want):\n%s", diff)
	}
}

func TestDialRejectsConflictingOptions(t *testing.T) {
	tests := []struct {
		name string
		opts client.Options
	}{
		{"query and auth message", client.Options{Token: "t", TokenInQuery: true, AuthMessage: true}},
		{"query without token", client.Options{TokenInQuery: true}},
		{"auth message without token", client.Options{AuthMessage: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := client.Dial(t.Context(), "ws://127.0.0.1:1/v1/ws", tt.opts)
			if err == nil {
				conn.Close()
				t.Fatal("Dial succeeded, want an error about the options")
			}
		})
	}
}

func TestDialToken(t *testing.T) {
	t.Run("header", func(t *testing.T) {
		f := newFakeSidecar(t)
		_, fc := f.dial(client.Options{Token: "tok-1"})

		if got, want := fc.header.Get("Authorization"), "Bearer tok-1"; got != want {
			t.Errorf("Authorization = %q, want %q", got, want)
		}
		if got := fc.query["access_token"]; got != nil {
			t.Errorf("access_token = %q, want none", got)
		}
	})

	t.Run("query", func(t *testing.T) {
		f := newFakeSidecar(t)
		_, fc := f.dial(client.Options{Token: "tok-2", TokenInQuery: true})

		if got := fc.header.Get("Authorization"); got != "" {
			t.Errorf("Authorization = %q, want none", got)
		}
		if diff := cmp.Diff(fc.query["access_token"], []string{"tok-2"}); diff != "" {
			t.Errorf("access_token (-got +want):\n%s", diff)
		}
	})

	t.Run("auth message", func(t *testing.T) {
		f := newFakeSidecar(t)
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()

		result := async(func() error {
			conn, err := client.Dial(ctx, f.url(), client.Options{Token: "tok-3", AuthMessage: true})
			if err == nil {
				t.Cleanup(func() { conn.CloseNow() })
			}
			return err
		})
		fc := f.accept()

		req := fc.expect("auth")
		if diff := cmp.Diff(string(req.Params), `{"token":"tok-3"}`); diff != "" {
			t.Errorf("auth params (-got +want):\n%s", diff)
		}
		if got := fc.header.Get("Authorization"); got != "" {
			t.Errorf("Authorization = %q, want none", got)
		}
		if got := fc.query["access_token"]; got != nil {
			t.Errorf("access_token = %q, want none", got)
		}

		select {
		case err := <-result:
			t.Fatalf("Dial returned before the auth result: %v", err)
		default:
		}
		fc.reply(req, `{"sub":"user-1","exp":1900000000}`)
		if err := await(t, result, "Dial"); err != nil {
			t.Errorf("Dial: %v", err)
		}
	})

	t.Run("auth message rejected", func(t *testing.T) {
		f := newFakeSidecar(t)
		ctx, cancel := context.WithTimeout(t.Context(), timeout)
		defer cancel()

		result := async(func() error {
			_, err := client.Dial(ctx, f.url(), client.Options{Token: "bad", AuthMessage: true})
			return err
		})
		fc := f.accept()
		req := fc.expect("auth")
		fc.sendf(`{"jsonrpc":"2.0","id":%s,"error":{"code":-32001,"message":"the token signature is invalid"}}`, req.ID)

		err := await(t, result, "Dial")
		var rpcErr *client.RPCError
		if !errors.As(err, &rpcErr) {
			t.Fatalf("Dial error = %v, want an *RPCError", err)
		}
		if rpcErr.Code != client.CodeNotAuthenticated {
			t.Errorf("code = %d, want %d", rpcErr.Code, client.CodeNotAuthenticated)
		}
	})
}

func TestCloseSendsNormalClosure(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	serverRead := async(func() error {
		_, _, err := fc.ws.Read(context.Background())
		return err
	})
	if err := conn.Close(); err != nil {
		t.Errorf("Close() = %v, want nil", err)
	}

	if got := websocket.CloseStatus(await(t, serverRead, "server read")); got != websocket.StatusNormalClosure {
		t.Errorf("close code seen by the sidecar = %v, want %v", got, websocket.StatusNormalClosure)
	}
	if err := conn.Err(); err != client.ErrClosed {
		t.Errorf("Err() after Close = %v, want ErrClosed", err)
	}
	if err := conn.Ping(t.Context()); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Ping after Close = %v, want an error matching ErrClosed", err)
	}
	if err := conn.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
}

func TestServerCloseCodeInErr(t *testing.T) {
	codes := []websocket.StatusCode{
		websocket.StatusPolicyViolation, // token expired
		websocket.StatusServiceRestart,  // sidecar draining
		websocket.StatusTryAgainLater,   // client too slow
	}
	for _, code := range codes {
		t.Run(code.String(), func(t *testing.T) {
			f := newFakeSidecar(t)
			conn, fc := f.dial(client.Options{})

			fc.closeWith(code, "bye")
			waitDone(t, conn)

			err := conn.Err()
			if !errors.Is(err, client.ErrClosed) {
				t.Errorf("Err() = %v, want an error matching ErrClosed", err)
			}
			if got := client.CloseStatus(err); got != code {
				t.Errorf("CloseStatus(Err()) = %v, want %v", got, code)
			}
		})
	}
}

func TestPendingCallsFailWhenServerCloses(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	const calls = 3
	results := make([]<-chan error, calls)
	for i := range calls {
		results[i] = async(func() error {
			return conn.Call(context.Background(), "app.slow", nil, nil)
		})
	}
	for range calls {
		fc.expect("app.slow")
	}

	fc.closeWith(websocket.StatusTryAgainLater, "client too slow")

	for i, ch := range results {
		err := await(t, ch, "Call")
		if !errors.Is(err, client.ErrClosed) {
			t.Errorf("call %d: error = %v, want one matching ErrClosed", i, err)
		}
		if got := client.CloseStatus(err); got != websocket.StatusTryAgainLater {
			t.Errorf("call %d: CloseStatus = %v, want %v", i, got, websocket.StatusTryAgainLater)
		}
	}
}

func TestCallAfterServerCloseFails(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	fc.closeWith(websocket.StatusServiceRestart, "draining")
	waitDone(t, conn)

	err := conn.Call(t.Context(), "ping", nil, nil)
	if got := client.CloseStatus(err); got != websocket.StatusServiceRestart {
		t.Errorf("CloseStatus(Call error) = %v, want %v (error %v)", got, websocket.StatusServiceRestart, err)
	}
}

func TestHeartbeatRecorded(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	if got := conn.LastHeartbeat(); !got.IsZero() {
		t.Errorf("LastHeartbeat() before any heartbeat = %v, want zero", got)
	}

	before := time.Now()
	pinged := async(func() error { return conn.Ping(t.Context()) })
	req := fc.expect("ping")
	fc.send(`{"jsonrpc":"2.0","method":"heartbeat","params":{}}`)
	fc.reply(req, `"pong"`)
	if err := await(t, pinged, "Ping"); err != nil {
		t.Fatalf("Ping: %v", err)
	}

	// The reader handles messages in order, so the heartbeat sent before
	// the response has been recorded.
	if got := conn.LastHeartbeat(); got.Before(before) {
		t.Errorf("LastHeartbeat() = %v, want at or after %v", got, before)
	}
}

func TestIdleTimeoutClosesSilentConnection(t *testing.T) {
	f := newFakeSidecar(t)
	conn, _ := f.dial(client.Options{IdleTimeout: 100 * time.Millisecond})

	waitDone(t, conn)
	if err := conn.Err(); !errors.Is(err, client.ErrIdleTimeout) {
		t.Errorf("Err() = %v, want one wrapping ErrIdleTimeout", err)
	}
}

func TestUnexpectedMessagesIgnored(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{})

	pinged := async(func() error { return conn.Ping(t.Context()) })
	req := fc.expect("ping")

	fc.send(`not json`)
	fc.send(`[1,2]`)
	fc.send(`{"jsonrpc":"2.0","method":"presence.joined","params":{"who":"x"}}`)
	fc.send(`{"jsonrpc":"2.0","id":99999,"result":"late"}`)
	fc.send(`{"jsonrpc":"2.0","method":"event","params":{"topic":"a","data":1,"subscription":"unknown"}}`)
	fc.send(defaultWelcome)
	if err := fc.ws.Write(t.Context(), websocket.MessageBinary, []byte{1, 2}); err != nil {
		t.Fatalf("write binary message: %v", err)
	}
	fc.reply(req, `"pong"`)

	if err := await(t, pinged, "Ping"); err != nil {
		t.Errorf("Ping after unexpected messages: %v", err)
	}
}

func TestReadLimit(t *testing.T) {
	f := newFakeSidecar(t)
	conn, fc := f.dial(client.Options{ReadLimit: 1024})

	big, _ := json.Marshal(string(make([]byte, 2048)))
	fc.sendf(`{"jsonrpc":"2.0","method":"notice","params":%s}`, big)

	waitDone(t, conn)
	if err := conn.Err(); !errors.Is(err, websocket.ErrMessageTooBig) {
		t.Errorf("Err() = %v, want one wrapping ErrMessageTooBig", err)
	}
}
