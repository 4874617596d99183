package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// rawConn is a websocket client that sends exactly the frames a test
// gives it, for checking the reaction to each bad input.
type rawConn struct {
	t    testing.TB
	conn *websocket.Conn
}

func dialRaw(t testing.TB, sc *sidecar, header http.Header) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, sc.ws, &websocket.DialOptions{HTTPHeader: header})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	conn.SetReadLimit(64 << 20)
	t.Cleanup(func() { conn.CloseNow() })
	rc := &rawConn{t: t, conn: conn}
	if msg := rc.read(); msg["method"] != "welcome" {
		t.Fatalf("first message = %v, want the welcome notification", msg)
	}
	return rc
}

func authHeader(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}}
}

func (rc *rawConn) send(typ websocket.MessageType, msg string) {
	rc.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := rc.conn.Write(ctx, typ, []byte(msg)); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// read returns the next message that is not a heartbeat.
func (rc *rawConn) read() map[string]any {
	rc.t.Helper()
	for {
		msg, err := rc.readErr()
		if err != nil {
			rc.t.Fatalf("read: %v", err)
		}
		if msg["method"] != "heartbeat" {
			return msg
		}
	}
}

func (rc *rawConn) readErr() (map[string]any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	_, b, err := rc.conn.Read(ctx)
	if err != nil {
		return nil, err
	}
	var msg map[string]any
	if err := json.Unmarshal(b, &msg); err != nil {
		rc.t.Fatalf("message from the sidecar is not JSON: %s", b)
	}
	return msg, nil
}

// closeCode reads until the connection ends and returns its close code.
func (rc *rawConn) closeCode() websocket.StatusCode {
	rc.t.Helper()
	for {
		_, err := rc.readErr()
		if err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

func errorCode(msg map[string]any) int {
	e, _ := msg["error"].(map[string]any)
	code, _ := e["code"].(float64)
	return int(code)
}

func TestBadRequestsGetErrorsAndConnectionStays(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	rc := dialRaw(t, sc, authHeader(token(t, "u", []string{"ok.>"}, []string{"ok.>"})))

	cases := []struct {
		name   string
		frame  string
		code   int
		nullID bool
	}{
		{"malformed JSON", `{"jsonrpc": "2.0", "method": `, -32700, true},
		{"batch", `[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]`, -32600, true},
		{"not an object", `42`, -32600, true},
		{"wrong version", `{"jsonrpc": "1.0", "id": 2, "method": "ping"}`, -32600, false},
		{"unknown method", `{"jsonrpc": "2.0", "id": 3, "method": "nope"}`, -32601, false},
		{"params of the wrong type", `{"jsonrpc": "2.0", "id": 4, "method": "subscribe", "params": {"topics": "ok.a"}}`, -32602, false},
		{"invalid pattern", `{"jsonrpc": "2.0", "id": 5, "method": "subscribe", "params": {"topics": ["ok..a"]}}`, -32602, false},
		{"invalid topic", `{"jsonrpc": "2.0", "id": 6, "method": "publish", "params": {"topic": "ok.*", "data": 1}}`, -32602, false},
		{"subscribe outside the claims", `{"jsonrpc": "2.0", "id": 7, "method": "subscribe", "params": {"topics": ["other.>"]}}`, -32003, false},
		{"publish outside the claims", `{"jsonrpc": "2.0", "id": 8, "method": "publish", "params": {"topic": "other.a", "data": 1}}`, -32003, false},
		{"publish to a reserved namespace", `{"jsonrpc": "2.0", "id": 9, "method": "publish", "params": {"topic": "db.public.x", "data": 1}}`, -32003, false},
		{"all or nothing subscribe", `{"jsonrpc": "2.0", "id": 10, "method": "subscribe", "params": {"topics": ["ok.a", "other.b"]}}`, -32003, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc.send(websocket.MessageText, tc.frame)
			msg := rc.read()
			if got := errorCode(msg); got != tc.code {
				t.Fatalf("reply = %v, want error %d", msg, tc.code)
			}
			if id, ok := msg["id"]; tc.nullID && (!ok || id != nil) {
				t.Fatalf("reply id = %v, want null", msg["id"])
			}
			if e := msg["error"].(map[string]any); e["message"] == "" {
				t.Fatalf("error without a message: %v", msg)
			}
		})
	}

	// The connection still works, and the refused subscribe added nothing.
	rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": "p", "method": "ping"}`)
	if msg := rc.read(); msg["result"] != "pong" || msg["id"] != "p" {
		t.Fatalf("ping after bad input = %v, want pong", msg)
	}
	rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": "s", "method": "subscribe", "params": {"topics": ["ok.>"]}}`)
	if msg := rc.read(); msg["result"] == nil {
		t.Fatalf("subscribe = %v, want a result", msg)
	}
	exec(t, connect(t, db), `SELECT realtime.publish('other.b', '1'), realtime.publish('ok.b', '2')`)
	msg := rc.read()
	params, _ := msg["params"].(map[string]any)
	if msg["method"] != "event" || params["topic"] != "ok.b" {
		t.Fatalf("first event = %v, want ok.b only", msg)
	}
}

func TestBadFramesCloseWithContractCodes(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.MaxEventBytes = 4096 })
	tok := token(t, "u", []string{">"}, []string{">"})
	control := subscribe(t, dialToken(t, sc, tok), []string{"control"})
	sql := connect(t, db)

	cases := []struct {
		name string
		typ  websocket.MessageType
		msg  string
		want websocket.StatusCode
	}{
		{"binary frame", websocket.MessageBinary, `{"jsonrpc": "2.0", "id": 1, "method": "ping"}`, websocket.StatusUnsupportedData},
		{"invalid UTF-8", websocket.MessageText, "{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": \"\xff\xfe\"}", websocket.StatusInvalidFramePayloadData},
		{"frame over the read limit", websocket.MessageText, `"` + strings.Repeat("a", 4096+64<<10+10) + `"`, websocket.StatusMessageTooBig},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rc := dialRaw(t, sc, authHeader(tok))
			rc.send(tc.typ, tc.msg)
			if got := rc.closeCode(); got != tc.want {
				t.Fatalf("close code = %v, want %v", got, tc.want)
			}

			// The sidecar keeps serving everyone else.
			exec(t, sql, `SELECT realtime.publish('control', $1)`, i)
			if ev := next(t, control); ev.Topic != "control" {
				t.Fatalf("control connection got %s", ev.Topic)
			}
		})
	}
}

func TestAuthentication(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.AuthTimeout = 500 * time.Millisecond })

	t.Run("invalid token refused with 401", func(t *testing.T) {
		for _, h := range []http.Header{
			authHeader("not-a-jwt"),
			authHeader(tokenWithSecret(t, "wrong-secret")),
		} {
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			_, resp, err := websocket.Dial(ctx, sc.ws, &websocket.DialOptions{HTTPHeader: h})
			cancel()
			if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("dial with a bad token: err %v, response %v; want HTTP 401", err, resp)
			}
		}
	})

	t.Run("token in the query parameter", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		conn, _, err := websocket.Dial(ctx, sc.ws+"?access_token="+token(t, "q", []string{"a"}, nil), nil)
		if err != nil {
			t.Fatalf("dial with access_token: %v", err)
		}
		conn.CloseNow()
	})

	t.Run("no token: -32001, then closed with 1008", func(t *testing.T) {
		rc := dialRaw(t, sc, nil)
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"topics": ["a"]}}`)
		if msg := rc.read(); errorCode(msg) != -32001 {
			t.Fatalf("subscribe without a token = %v, want -32001", msg)
		}
		if got := rc.closeCode(); got != websocket.StatusPolicyViolation {
			t.Fatalf("close code = %v, want 1008", got)
		}
	})

	t.Run("auth message authenticates", func(t *testing.T) {
		rc := dialRaw(t, sc, nil)
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "auth", "params": {"token": "`+token(t, "late", []string{"a"}, nil)+`"}}`)
		msg := rc.read()
		res, _ := msg["result"].(map[string]any)
		if res["sub"] != "late" {
			t.Fatalf("auth = %v, want sub late", msg)
		}
		time.Sleep(time.Second) // past the authentication timeout
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 2, "method": "ping"}`)
		if msg := rc.read(); msg["result"] != "pong" {
			t.Fatalf("ping after auth = %v, want pong", msg)
		}
	})

	t.Run("anonymous patterns when configured", func(t *testing.T) {
		anon := startSidecar(t, db, func(c *server.Config) { c.AnonymousSubscribe = []string{"public.>"} })
		rc := dialRaw(t, anon, nil)
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"topics": ["public.news"]}}`)
		if msg := rc.read(); msg["result"] == nil {
			t.Fatalf("anonymous subscribe = %v, want a result", msg)
		}
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 2, "method": "subscribe", "params": {"topics": ["private"]}}`)
		if msg := rc.read(); errorCode(msg) != -32003 {
			t.Fatalf("anonymous subscribe outside the patterns = %v, want -32003", msg)
		}
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 3, "method": "publish", "params": {"topic": "public.news", "data": 1}}`)
		if msg := rc.read(); errorCode(msg) != -32003 {
			t.Fatalf("anonymous publish without publish patterns = %v, want -32003", msg)
		}
	})
}

func tokenWithSecret(t testing.TB, secret string) string {
	t.Helper()
	tok := token(t, "x", []string{">"}, nil)
	parts := strings.Split(tok, ".")
	return parts[0] + "." + parts[1] + "." + strings.Repeat("A", len(parts[2]))
}

func TestHTTPPublishAPI(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.MaxEventBytes = 2048 })
	sub := subscribe(t, dial(t, sc), []string{"api.>"})

	if code, body := postJSON(t, sc, "/v1/publish", "", map[string]any{"topic": "api.a", "data": 1}); code != http.StatusUnauthorized {
		t.Fatalf("publish without a key = %d %v, want 401", code, body)
	}
	if code, body := postJSON(t, sc, "/v1/publish", "wrong", map[string]any{"topic": "api.a", "data": 1}); code != http.StatusUnauthorized {
		t.Fatalf("publish with a wrong key = %d %v, want 401", code, body)
	}
	if code, body := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "api.*", "data": 1}); code != http.StatusBadRequest {
		t.Fatalf("publish to a pattern = %d %v, want 400", code, body)
	}
	code, body := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "api.big", "data": strings.Repeat("b", 4096)})
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body["error"].(map[string]any)["message"].(string), "2048") {
		t.Fatalf("publish over the maximum = %d %v, want 413 naming the limit 2048", code, body)
	}

	code, body = postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"events": []any{
		map[string]any{"topic": "api.one", "data": 1},
		map[string]any{"topic": "api.two", "data": 2, "durable": false},
		map[string]any{"topic": "api.three", "data": 3},
	}})
	ids, _ := body["ids"].([]any)
	if code != http.StatusOK || len(ids) != 3 || ids[0] == nil || ids[1] != nil || ids[2] == nil {
		t.Fatalf("batch publish = %d %v, want 200 with ids [N, null, M]", code, body)
	}
	for _, want := range []string{"api.one", "api.two", "api.three"} {
		if ev := next(t, sub); ev.Topic != want {
			t.Fatalf("batch event = %s, want %s", ev.Topic, want)
		}
	}

	code, body = postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"events": []any{
		map[string]any{"topic": "api.ok", "data": 1},
		map[string]any{"topic": "bad topic", "data": 2},
	}})
	if code != http.StatusBadRequest || !strings.Contains(body["error"].(map[string]any)["message"].(string), "events[1]") {
		t.Fatalf("batch with a bad entry = %d %v, want 400 naming events[1]", code, body)
	}
	expectQuiet(t, sub, 300*time.Millisecond)
}

var _ = errors.New

func TestInFlightLimitAndReadingContinue(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.MaxInFlight = 1 })
	rc := dialRaw(t, sc, authHeader(token(t, "u", []string{">"}, []string{">"})))

	// Hold a lock that makes the next publish wait inside Postgres.
	ctx := context.Background()
	blocker := connect(t, db)
	tx, err := blocker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE realtime.events IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}

	rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "publish", "params": {"topic": "a", "data": 1}}`)
	rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 2, "method": "publish", "params": {"topic": "a", "data": 2}}`)
	if msg := rc.read(); errorCode(msg) != -32004 || msg["id"] != float64(2) {
		t.Fatalf("second publish over the in-flight limit = %v, want -32004 for id 2", msg)
	}
	rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 3, "method": "ping"}`)
	if msg := rc.read(); msg["result"] != "pong" {
		t.Fatalf("ping while a publish waits = %v, want pong: the connection must still be read", msg)
	}

	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	msg := rc.read()
	res, _ := msg["result"].(map[string]any)
	if msg["id"] != float64(1) || res["id"] == nil {
		t.Fatalf("first publish = %v, want its id once the lock is gone", msg)
	}
}

func TestPublishBodyShapeErrors(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)

	cases := []struct {
		name string
		body any
		code string
	}{
		{"events beside a top-level event", map[string]any{"topic": "a", "data": 1, "events": []any{map[string]any{"topic": "b", "data": 2}}}, "invalid_body"},
		{"missing data", map[string]any{"topic": "a"}, "invalid_data"},
		{"topic of the wrong type", map[string]any{"topic": 5, "data": 1}, "invalid_json"},
		{"empty events", map[string]any{"events": []any{}}, "invalid_events"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := postJSON(t, sc, "/v1/publish", testAPIKey, tc.body)
			e, _ := body["error"].(map[string]any)
			if status != http.StatusBadRequest || e["code"] != tc.code {
				t.Fatalf("POST /v1/publish %v = %d %v, want 400 %s", tc.body, status, body, tc.code)
			}
		})
	}
}

func TestUpgradeRefusals(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.AllowedOrigins = []string{"https://*.example.com"} })
	tok := token(t, "u", []string{"a"}, nil)

	dialStatus := func(url string, h http.Header) int {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h})
		if err == nil {
			conn.CloseNow()
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("dial %s: %v", url, err)
		}
		return resp.StatusCode
	}

	if got := dialStatus(sc.ws, http.Header{"Authorization": {"Bearer " + tok}, "Origin": {"https://evil.test"}}); got != http.StatusForbidden {
		t.Fatalf("upgrade from a foreign origin = %d, want 403", got)
	}
	if got := dialStatus(sc.ws, http.Header{"Authorization": {"Bearer " + tok}, "Origin": {"https://app.example.com"}}); got != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade from an allowed origin = %d, want 101", got)
	}
	if got := dialStatus(sc.ws+"?access_token="+tok, authHeader(tok)); got != http.StatusUnauthorized {
		t.Fatalf("upgrade with a token in both places = %d, want 401", got)
	}
}

func TestSubscriptionLimitPerConnection(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.MaxSubscriptions = 2 })
	rc := dialRaw(t, sc, authHeader(token(t, "u", []string{">"}, nil)))
	for i := range 3 {
		rc.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"topics": ["a"]}}`)
		msg := rc.read()
		if i < 2 && msg["result"] == nil {
			t.Fatalf("subscribe %d = %v, want a result", i, msg)
		}
		if i == 2 && errorCode(msg) != -32004 {
			t.Fatalf("subscribe over the limit = %v, want -32004", msg)
		}
	}
}

func TestMessageRateLimitPerConnection(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) {
		c.MessageRate = 1
		c.MessageBurst = 5
	})
	rc := dialRaw(t, sc, authHeader(token(t, "u", []string{"a"}, nil)))
	for i := range 20 {
		rc.send(websocket.MessageText, fmt.Sprintf(`{"jsonrpc": "2.0", "id": %d, "method": "ping"}`, i))
	}
	pongs, limited := 0, 0
	for range 20 {
		msg := rc.read()
		switch {
		case msg["result"] == "pong":
			pongs++
		case errorCode(msg) == -32004:
			limited++
		default:
			t.Fatalf("reply = %v, want pong or -32004", msg)
		}
	}
	if pongs < 5 || limited == 0 {
		t.Fatalf("20 pings at once with a burst of 5: %d pongs, %d refused; want at least 5 pongs and some -32004", pongs, limited)
	}

	// Other connections are not affected.
	other := dialRaw(t, sc, authHeader(token(t, "v", []string{"a"}, nil)))
	other.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "ping"}`)
	if msg := other.read(); msg["result"] != "pong" {
		t.Fatalf("ping on another connection = %v, want pong", msg)
	}
}

func TestConnectionLimits(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) {
		c.MaxConnections = 3
		c.MaxConnectionsPerSubject = 2
	})
	dialStatus := func(tok string) int {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		conn, resp, err := websocket.Dial(ctx, sc.ws, &websocket.DialOptions{HTTPHeader: authHeader(tok)})
		if err == nil {
			t.Cleanup(func() { conn.CloseNow() })
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		return resp.StatusCode
	}

	alice := token(t, "alice", []string{"a"}, nil)
	for i := range 2 {
		if got := dialStatus(alice); got != http.StatusSwitchingProtocols {
			t.Fatalf("alice's connection %d = %d, want 101", i+1, got)
		}
	}
	if got := dialStatus(alice); got != http.StatusTooManyRequests {
		t.Fatalf("alice's third connection = %d, want 429", got)
	}
	if got := dialStatus(token(t, "bob", []string{"a"}, nil)); got != http.StatusSwitchingProtocols {
		t.Fatalf("bob's connection = %d, want 101", got)
	}
	if got := dialStatus(token(t, "carol", []string{"a"}, nil)); got != http.StatusServiceUnavailable {
		t.Fatalf("a fourth connection = %d, want 503", got)
	}
	if code, _ := sc.readyz(t); code != http.StatusOK {
		t.Fatalf("/readyz = %d at the connection limit, want 200", code)
	}
}

func TestCORSOnHTTPAPI(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.AllowedOrigins = []string{"https://*.example.com"} })

	preflight := func(origin string) *http.Response {
		req, _ := http.NewRequest(http.MethodOptions, sc.base+"/v1/publish", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		req.Header.Set("Access-Control-Request-Headers", "authorization,content-type")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}

	resp := preflight("https://app.example.com")
	if resp.Header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("preflight from an allowed origin: status %d, headers %v; want Access-Control-Allow-Origin", resp.StatusCode, resp.Header)
	}
	if resp := preflight("https://evil.test"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight from another origin got Access-Control-Allow-Origin %q, want none", resp.Header.Get("Access-Control-Allow-Origin"))
	}
}
