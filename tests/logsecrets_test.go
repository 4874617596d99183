package tests

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLogsNeverContainSecrets(t *testing.T) {
	db := pgtest.NewDatabase(t)
	logs := &lockedBuffer{}
	sc := startSidecar(t, db, func(c *server.Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.AppRPCToken = "app-rpc-token-must-not-be-logged"
	})

	good := token(t, "logged-user", []string{"a.>"}, []string{"a.>"})
	bad := tokenWithSecret(t, "wrong")

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()

	// A websocket with the token in the query, one with a bad token, and
	// an auth message.
	conn, _, err := websocket.Dial(ctx, sc.ws+"?access_token="+good, nil)
	if err != nil {
		t.Fatalf("dial with access_token: %v", err)
	}
	conn.Close(websocket.StatusNormalClosure, "")
	if _, _, err := websocket.Dial(ctx, sc.ws+"?access_token="+bad, nil); err == nil {
		t.Fatal("dial with a bad token succeeded")
	}
	rc := dialRaw(t, sc, nil)
	rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "auth", "params": {"token": "`+bad+`"}}`)
	rc.read()
	rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 2, "method": "auth", "params": {"token": "`+good+`"}}`)
	rc.read()
	rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 3, "method": "publish", "params": {"topic": "a.b", "data": {"secret": "payload-must-not-be-logged"}}}`)
	rc.read()

	// Server-sent events with the token in the query, and HTTP calls with
	// the API key.
	for _, tok := range []string{good, bad} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sc.base+"/v1/events?topic=a.b&access_token="+tok, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET /v1/events: %v", err)
		}
		resp.Body.Close()
	}
	postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "a.c", "data": "payload-must-not-be-logged"})
	postJSON(t, sc, "/v1/publish", "wrong-api-key-must-not-be-logged", map[string]any{"topic": "a.c", "data": 1})

	// Lines about closed connections come a moment later; a short pause
	// lets them in, so that they are checked too.
	time.Sleep(200 * time.Millisecond)

	out := logs.String()
	if !strings.Contains(out, "logged-user") || !strings.Contains(out, "token rejected") {
		t.Fatalf("the logs lack the connections' lines, so the test would prove nothing:\n%s", out)
	}
	for name, secret := range map[string]string{
		"good token":           good,
		"good token signature": good[strings.LastIndexByte(good, '.')+1:],
		"bad token signature":  bad[strings.LastIndexByte(bad, '.')+1:],
		"API key":              testAPIKey,
		"wrong API key":        "wrong-api-key-must-not-be-logged",
		"app RPC token":        "app-rpc-token-must-not-be-logged",
		"event data":           "payload-must-not-be-logged",
		"JWT secret":           testSecret,
	} {
		if strings.Contains(out, secret) {
			t.Errorf("the logs contain the %s", name)
		}
	}
}
