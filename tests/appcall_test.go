package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// fakeApp is an application that answers the sidecar's JSON-RPC calls.
type fakeApp struct {
	calls atomic.Int64
	last  atomic.Pointer[http.Header]
}

func (a *fakeApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.calls.Add(1)
	h := r.Header.Clone()
	a.last.Store(&h)

	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params []int           `json:"params"`
	}
	_ = json.NewDecoder(r.Body).Decode(&req)
	reply := func(body string) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, body)
	}
	switch req.Method {
	case "add":
		reply(fmt.Sprintf(`{"jsonrpc": "2.0", "id": %s, "result": %d}`, req.ID, req.Params[0]+req.Params[1]))
	case "fail":
		reply(fmt.Sprintf(`{"jsonrpc": "2.0", "id": %s, "error": {"code": 4001, "message": "out of stock", "data": {"sku": "x"}}}`, req.ID))
	case "slow":
		time.Sleep(2 * time.Second)
		reply(fmt.Sprintf(`{"jsonrpc": "2.0", "id": %s, "result": null}`, req.ID))
	case "status":
		http.Error(w, "broken", http.StatusBadGateway)
	case "garbage":
		reply(`<html>not json-rpc</html>`)
	}
}

func TestAppCallsForwardedToApplication(t *testing.T) {
	app := &fakeApp{}
	appServer := httptest.NewServer(app)
	t.Cleanup(appServer.Close)

	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) {
		c.AppRPCURL = appServer.URL
		c.AppRPCToken = "app-secret"
		c.AppRPCTimeout = time.Second
	})
	tok, err := auth.Sign([]byte(testSecret), "caller", auth.Realtime{Call: []string{"app.add", "app.fail", "app.slow", "app.status", "app.garbage"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn := dialToken(t, sc, tok)
	ctx := context.Background()

	var sum int
	if err := conn.Call(ctx, "app.add", []int{2, 3}, &sum); err != nil || sum != 5 {
		t.Fatalf("app.add(2, 3) = %d, %v; want 5", sum, err)
	}
	h := *app.last.Load()
	if h.Get("Authorization") != "Bearer app-secret" || h.Get("X-Sidecar-Subject") != "caller" || h.Get("X-Sidecar-Client-Id") != conn.Welcome().ClientID {
		t.Fatalf("headers to the application = %v, want the token, subject and client id", h)
	}

	err = conn.Call(ctx, "app.fail", nil, nil)
	if rpcCode(err) != 4001 || !strings.Contains(err.Error(), "out of stock") {
		t.Fatalf("app.fail: %v, want the application's error 4001 unchanged", err)
	}

	messages := map[string]string{}
	for _, method := range []string{"app.slow", "app.status", "app.garbage"} {
		err := conn.Call(ctx, method, nil, nil)
		if rpcCode(err) != -32005 {
			t.Fatalf("%s: %v, want -32005", method, err)
		}
		messages[method] = err.Error()
	}
	if !strings.Contains(messages["app.slow"], "1s") || !strings.Contains(messages["app.status"], "502") || !strings.Contains(messages["app.garbage"], "not a JSON-RPC") {
		t.Fatalf("-32005 messages do not say which failure: %v", messages)
	}
	for _, m := range messages {
		if strings.Contains(m, appServer.URL) {
			t.Fatalf("a client error reveals the application's address: %s", m)
		}
	}

	t.Run("application down", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		down := "http://" + ln.Addr().String()
		ln.Close()
		sc2 := startSidecar(t, db, func(c *server.Config) { c.AppRPCURL = down })
		err = dialToken(t, sc2, tok).Call(ctx, "app.add", []int{1, 1}, nil)
		if rpcCode(err) != -32005 || !strings.Contains(err.Error(), "unreachable") {
			t.Fatalf("app.add with the application down: %v, want -32005 unreachable", err)
		}
	})

	t.Run("token without a call pattern", func(t *testing.T) {
		before := app.calls.Load()
		rc := dialRaw(t, sc, authHeader(token(t, "nocall", []string{">"}, nil)))
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "app.add", "params": [1, 2]}`)
		if msg := rc.read(); errorCode(msg) != -32003 {
			t.Fatalf("app.add without a call pattern = %v, want -32003", msg)
		}
		if app.calls.Load() != before {
			t.Fatal("the application was called for a forbidden call")
		}
	})
}
