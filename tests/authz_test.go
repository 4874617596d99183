package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/pgsidecar/sidecar/auth"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// rpcConn is a raw websocket client that numbers its requests and keeps
// the events that arrive while it waits for a response, so that a test
// sees every event the sidecar sends, including events for subscriptions
// that the client library would drop as unknown.
type rpcConn struct {
	*rawConn
	lastID    int
	events    []map[string]any
	responses map[int]map[string]any // responses read while waiting for another
}

func dialRPC(t testing.TB, sc *sidecar, tok string) *rpcConn {
	t.Helper()
	var header http.Header
	if tok != "" {
		header = authHeader(tok)
	}
	return &rpcConn{rawConn: dialRaw(t, sc, header)}
}

// request sends method with params and returns the response to it.
func (c *rpcConn) request(method string, params any) map[string]any {
	c.t.Helper()
	id := c.send(method, params)
	return c.response(id)
}

// send sends a request without waiting for its response and returns its id.
func (c *rpcConn) send(method string, params any) int {
	c.t.Helper()
	c.lastID++
	msg, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": c.lastID, "method": method, "params": params})
	if err != nil {
		c.t.Fatal(err)
	}
	c.rawConn.send(websocket.MessageText, string(msg))
	return c.lastID
}

// response reads until the response with id arrives. Responses to
// concurrent requests may arrive in any order.
func (c *rpcConn) response(id int) map[string]any {
	c.t.Helper()
	if msg, ok := c.responses[id]; ok {
		delete(c.responses, id)
		return msg
	}
	for {
		msg := c.read()
		if msg["method"] == "event" {
			c.events = append(c.events, msg)
			continue
		}
		other, ok := msg["id"].(float64)
		if !ok || other < 1 || int(other) > c.lastID {
			c.t.Fatalf("message %v while waiting for the response to request %d", msg, id)
		}
		if int(other) == id {
			return msg
		}
		if c.responses == nil {
			c.responses = map[int]map[string]any{}
		}
		c.responses[int(other)] = msg
	}
}

// subscribe subscribes to patterns and returns the subscription id,
// failing the test on an error response.
func (c *rpcConn) subscribe(patterns ...string) string {
	c.t.Helper()
	return c.subscribeWith(map[string]any{"topics": patterns})
}

// subscribeWith subscribes with params and returns the subscription id,
// failing the test on an error response.
func (c *rpcConn) subscribeWith(params map[string]any) string {
	c.t.Helper()
	msg := c.request("subscribe", params)
	res, _ := msg["result"].(map[string]any)
	id, _ := res["subscription"].(string)
	if id == "" {
		c.t.Fatalf("subscribe %v = %v, want a subscription id", params, msg)
	}
	return id
}

// subscribeCode subscribes to patterns and returns the error code of the
// response, 0 when it is a result.
func (c *rpcConn) subscribeCode(params map[string]any) int {
	c.t.Helper()
	return errorCode(c.request("subscribe", params))
}

// wireEvent is the params of one event notification.
type wireEvent struct {
	Subscription string          `json:"subscription"`
	Topic        string          `json:"topic"`
	ID           int64           `json:"id"`
	Data         json.RawMessage `json:"data"`
}

// event returns the next event notification.
func (c *rpcConn) event() wireEvent {
	c.t.Helper()
	var msg map[string]any
	if len(c.events) > 0 {
		msg, c.events = c.events[0], c.events[1:]
	} else {
		msg = c.read()
	}
	if msg["method"] != "event" {
		c.t.Fatalf("message %v, want an event notification", msg)
	}
	raw, _ := json.Marshal(msg["params"])
	var ev wireEvent
	if err := json.Unmarshal(raw, &ev); err != nil {
		c.t.Fatalf("event params %s: %v", raw, err)
	}
	return ev
}

// expectEvents reads one event per entry of want, each "subscription topic".
func (c *rpcConn) expectEvents(want ...string) []wireEvent {
	c.t.Helper()
	got := make([]wireEvent, len(want))
	for i, w := range want {
		got[i] = c.event()
		if s := got[i].Subscription + " " + got[i].Topic; s != w {
			c.t.Fatalf("event %d = %s (data %s), want %s", i, s, got[i].Data, w)
		}
	}
	return got
}

// expectNoEvent fails when an event arrives within d. The read's deadline
// closes the websocket, so this is the connection's last step.
func (c *rpcConn) expectNoEvent(d time.Duration) {
	c.t.Helper()
	if len(c.events) > 0 {
		c.t.Fatalf("unexpected event %v", c.events[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		_, b, err := c.conn.Read(ctx)
		if err != nil {
			return
		}
		var msg map[string]any
		_ = json.Unmarshal(b, &msg)
		if msg["method"] != "heartbeat" {
			c.t.Fatalf("unexpected message within %s: %s", d, b)
		}
	}
}

// signAt signs a token for sub whose exp is the given time, which may be
// in the past, unlike auth.Sign.
func signAt(t testing.TB, sub string, subscribe []string, exp time.Time) string {
	t.Helper()
	claims := jwt.MapClaims{
		"sub":      sub,
		"iat":      time.Now().Add(-time.Hour).Unix(),
		"exp":      exp.Unix(),
		"realtime": auth.Realtime{Subscribe: subscribe},
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(testSecret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// openStream opens GET /v1/events for patterns with tok. The test ends
// the request.
func openStream(t testing.TB, sc *sidecar, tok string, patterns []string) *http.Response {
	t.Helper()
	query := url.Values{"topic": patterns}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, sc.base+"/v1/events?"+query.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /v1/events: %v", err)
	}
	return resp
}

// publishHTTP publishes one durable event through the HTTP API and returns
// its id.
func publishHTTP(t testing.TB, sc *sidecar, topic string, data any) int64 {
	t.Helper()
	code, body := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": topic, "data": data})
	id, _ := body["id"].(float64)
	if code != http.StatusOK || id == 0 {
		t.Fatalf("POST /v1/publish %s = %d %v, want 200 with an id", topic, code, body)
	}
	return int64(id)
}

func TestAuthzOrdersTokenNeverSeesUsers(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.ListenChannels = []string{"legacy"} })
	sql := connect(t, db)
	ordersOnly := token(t, "orders-reader", []string{"orders.*"}, nil)

	t.Run("live", func(t *testing.T) {
		rc := dialRPC(t, sc, ordersOnly)
		for _, pattern := range []string{"users.*", "users.1"} {
			if code := rc.subscribeCode(map[string]any{"topics": []string{pattern}}); code != -32003 {
				t.Fatalf("subscribe %s with an orders.* token = %d, want -32003", pattern, code)
			}
		}
		orders := rc.subscribe("orders.*")

		// A client allowed everything shows that the users events exist.
		control := subscribe(t, dial(t, sc), []string{"users.*"})
		publisher := dialRPC(t, sc, token(t, "writer", nil, []string{"users.*", "orders.*"}))
		wsPublish := func(topic string) {
			if msg := publisher.request("publish", map[string]any{"topic": topic, "data": topic}); msg["result"] == nil {
				t.Fatalf("websocket publish %s = %v, want a result", topic, msg)
			}
		}

		exec(t, sql, `SELECT realtime.publish('users.1', '"sql"')`)
		exec(t, sql, `SELECT realtime.publish('orders.1', '"sql"')`)
		publishHTTP(t, sc, "users.2", "http")
		publishHTTP(t, sc, "orders.2", "http")
		wsPublish("users.3")
		wsPublish("orders.3")
		exec(t, sql, `SELECT realtime.broadcast('users.4', '"ephemeral"')`)
		exec(t, sql, `SELECT realtime.publish('orders.4', '"sql"')`)

		for _, want := range []string{"users.1", "users.2", "users.3", "users.4"} {
			if ev := next(t, control); ev.Topic != want {
				t.Fatalf("control event = %s, want %s", ev.Topic, want)
			}
		}

		// Events arrive in commit order, so a users event that leaked
		// would come before the orders event published after it.
		rc.expectEvents(orders+" orders.1", orders+" orders.2", orders+" orders.3", orders+" orders.4")
		rc.expectNoEvent(300 * time.Millisecond)
	})

	t.Run("wildcard", func(t *testing.T) {
		rc := dialRPC(t, sc, ordersOnly)
		rejected := [][]string{
			{">"}, {"*.*"}, {"*.1"}, {"*.>"}, {"orders.>"}, {"orders.*.*"}, {"orders.1.>"}, {"Orders.*"}, {"users.>"},
			{"orders.*", "users.*"},
			{"orders.1", ">"},
		}
		for _, patterns := range rejected {
			if code := rc.subscribeCode(map[string]any{"topics": patterns}); code != -32003 {
				t.Fatalf("subscribe %v with an orders.* token = %d, want -32003", patterns, code)
			}
		}

		// A rejected request adds none of its patterns: a leftover orders.*
		// from the mixed request would deliver each event a second time.
		orders := rc.subscribe("orders.*")
		exec(t, sql, `SELECT realtime.publish('users.1', '1')`)
		exec(t, sql, `SELECT realtime.publish('orders.1', '1')`)
		exec(t, sql, `SELECT realtime.publish('orders.2', '2')`)
		rc.expectEvents(orders+" orders.1", orders+" orders.2")
		rc.expectNoEvent(300 * time.Millisecond)
	})

	t.Run("replay", func(t *testing.T) {
		since := publishHTTP(t, sc, "setup.mark", 0)
		for i := range 3 {
			exec(t, sql, `SELECT realtime.publish($1, $2)`, fmt.Sprintf("users.%d", i), i)
			exec(t, sql, `SELECT realtime.publish($1, $2)`, fmt.Sprintf("orders.%d", i), i)
		}

		rc := dialRPC(t, sc, ordersOnly)
		for _, patterns := range [][]string{{"users.*"}, {">"}, {"orders.*", "users.*"}} {
			if code := rc.subscribeCode(map[string]any{"topics": patterns, "since": since}); code != -32003 {
				t.Fatalf("subscribe %v since %d = %d, want -32003", patterns, since, code)
			}
		}
		orders := rc.subscribeWith(map[string]any{"topics": []string{"orders.*"}, "since": since})
		exec(t, sql, `SELECT realtime.publish('users.9', '9')`)
		exec(t, sql, `SELECT realtime.publish('orders.9', '9')`)

		got := rc.expectEvents(orders+" orders.0", orders+" orders.1", orders+" orders.2", orders+" orders.9")
		for i := 1; i < len(got); i++ {
			if got[i].ID <= got[i-1].ID {
				t.Fatalf("event ids %d then %d, want increasing", got[i-1].ID, got[i].ID)
			}
		}
		if got[0].ID <= since {
			t.Fatalf("first replayed id = %d, want above since %d", got[0].ID, since)
		}
		rc.expectNoEvent(300 * time.Millisecond)
	})

	t.Run("row change", func(t *testing.T) {
		exec(t, sql, `CREATE TABLE public.orders (id serial PRIMARY KEY, customer_id integer, item text)`)
		exec(t, sql, `CREATE TRIGGER orders_rt AFTER INSERT OR UPDATE OR DELETE ON public.orders
			FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic=orders.{customer_id}')`)
		exec(t, sql, `CREATE TABLE public.users (id integer PRIMARY KEY, name text)`)
		exec(t, sql, `CREATE TRIGGER users_rt AFTER INSERT OR UPDATE OR DELETE ON public.users
			FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes()`)
		exec(t, sql, `CREATE TRIGGER users_by_id_rt AFTER INSERT OR UPDATE OR DELETE ON public.users
			FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes('topic=users.{id}')`)

		rc := dialRPC(t, sc, token(t, "customer-7", []string{"orders.7"}, nil))
		for _, pattern := range []string{"orders.8", "orders.*", "users.7", "db.public.users", "db.>"} {
			if code := rc.subscribeCode(map[string]any{"topics": []string{pattern}}); code != -32003 {
				t.Fatalf("subscribe %s with an orders.7 token = %d, want -32003", pattern, code)
			}
		}
		mine := rc.subscribe("orders.7")
		control := subscribe(t, dial(t, sc), []string{"users.*", "db.public.users"})

		exec(t, sql, `INSERT INTO users VALUES (7, 'ann')`)
		exec(t, sql, `INSERT INTO orders (customer_id, item) VALUES (8, 'tea')`)
		exec(t, sql, `INSERT INTO orders (customer_id, item) VALUES (7, 'milk')`)
		exec(t, sql, `UPDATE users SET name = 'anna'`)
		exec(t, sql, `UPDATE orders SET item = 'green tea' WHERE customer_id = 8`)
		exec(t, sql, `UPDATE orders SET item = 'oat milk' WHERE customer_id = 7`)
		exec(t, sql, `DELETE FROM orders WHERE customer_id = 8`)
		exec(t, sql, `DELETE FROM users`)
		exec(t, sql, `DELETE FROM orders WHERE customer_id = 7`)

		// Each users statement fires both triggers, in name order:
		// users_by_id_rt before users_rt.
		for i := range 6 {
			want := []string{"users.7", "db.public.users"}[i%2]
			if ev := next(t, control); ev.Topic != want {
				t.Fatalf("control event %d = %s, want %s", i, ev.Topic, want)
			}
		}

		got := rc.expectEvents(mine+" orders.7", mine+" orders.7", mine+" orders.7")
		var ops []string
		for _, ev := range got {
			var rc rowChange
			if err := json.Unmarshal(ev.Data, &rc); err != nil {
				t.Fatalf("event data %s: %v", ev.Data, err)
			}
			if rc.Table != "orders" {
				t.Fatalf("row event of table %s, want orders", rc.Table)
			}
			ops = append(ops, rc.Op)
		}
		if want := []string{"INSERT", "UPDATE", "DELETE"}; !slices.Equal(ops, want) {
			t.Fatalf("customer 7's operations = %v, want %v", ops, want)
		}
		rc.expectNoEvent(300 * time.Millisecond)
	})

	t.Run("server-sent events", func(t *testing.T) {
		for _, patterns := range [][]string{{"users.*"}, {">"}, {"orders.>"}, {"orders.*", "users.*"}} {
			resp := openStream(t, sc, ordersOnly, patterns)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("GET /v1/events for %v with an orders.* token = %d, want 403", patterns, resp.StatusCode)
			}
		}

		resp := openStream(t, sc, ordersOnly, []string{"orders.*"})
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/events for orders.* = %d, want 200", resp.StatusCode)
		}
		lines := make(chan string, 64)
		go func() {
			defer close(lines)
			scanner := bufio.NewScanner(resp.Body)
			for scanner.Scan() {
				if data, ok := strings.CutPrefix(scanner.Text(), "data: "); ok {
					lines <- data
				}
			}
		}()

		// The stream may start after the request returns its headers, so
		// publish until the first orders event arrives, with a users event
		// before each one.
		var first string
		waitFor(t, "the first event on the stream", func() bool {
			exec(t, sql, `SELECT realtime.publish('users.1', '1'), realtime.publish('orders.1', '1')`)
			select {
			case first = <-lines:
				return true
			case <-time.After(100 * time.Millisecond):
				return false
			}
		})
		topicOf := func(data string) string {
			var ev wireEvent
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatalf("stream data %s: %v", data, err)
			}
			if !strings.HasPrefix(ev.Topic, "orders.") {
				t.Fatalf("stream event = %s, want orders events only", data)
			}
			return ev.Topic
		}
		topicOf(first)
		exec(t, sql, `SELECT realtime.publish('users.2', '2'), realtime.publish('orders.2', '2')`)
		for topic := ""; topic != "orders.2"; {
			topic = topicOf(nextLine(t, lines))
		}
	})

	t.Run("unsubscribe of a foreign id", func(t *testing.T) {
		victim := dialRPC(t, sc, ordersOnly)
		attacker := dialRPC(t, sc, ordersOnly)
		orders := victim.subscribe("orders.*")
		if msg := attacker.request("unsubscribe", map[string]any{"subscription": orders}); msg["result"] == nil {
			t.Fatalf("unsubscribe of an unknown id = %v, want a result", msg)
		}
		exec(t, sql, `SELECT realtime.publish('orders.5', '5')`)
		victim.expectEvents(orders + " orders.5")
		attacker.expectNoEvent(300 * time.Millisecond)
	})

	t.Run("reserved namespaces", func(t *testing.T) {
		exec(t, sql, `CREATE TABLE public.accounts (id integer PRIMARY KEY)`)
		exec(t, sql, `CREATE TRIGGER accounts_rt AFTER INSERT ON public.accounts
			FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes()`)

		everything := dialRPC(t, sc, token(t, "all-topics", []string{">"}, nil))
		for _, pattern := range []string{"db.>", "db.public.accounts", "pg.legacy", "sys.>", "presence.>"} {
			if code := everything.subscribeCode(map[string]any{"topics": []string{pattern}}); code != -32003 {
				t.Fatalf("subscribe %s with a > token = %d, want -32003", pattern, code)
			}
		}
		wide := everything.subscribe(">")
		everything.subscribe("*.public.accounts")

		starWide := dialRPC(t, sc, token(t, "star-wide", []string{"*.>"}, nil))
		if code := starWide.subscribeCode(map[string]any{"topics": []string{"db.public.accounts"}}); code != -32003 {
			t.Fatalf("subscribe db.public.accounts with a *.> token = %d, want -32003", code)
		}
		starSub := starWide.subscribe("*.>")

		literal := dialRPC(t, sc, token(t, "db-reader", []string{"db.>", "pg.>"}, nil))
		rows := literal.subscribe("db.public.accounts")
		legacy := literal.subscribe("pg.legacy")

		exec(t, sql, `INSERT INTO accounts VALUES (1)`)
		exec(t, sql, `SELECT pg_notify('legacy', '{"n": 1}')`)
		exec(t, sql, `SELECT realtime.publish('marker.1', '1')`)

		literal.expectEvents(rows+" db.public.accounts", legacy+" pg.legacy")
		everything.expectEvents(wide + " marker.1")
		starWide.expectEvents(starSub + " marker.1")
		everything.expectNoEvent(300 * time.Millisecond)
		starWide.expectNoEvent(300 * time.Millisecond)
	})
}

// lifetimeLeeway is the clock skew allowed by the sidecar of the token
// lifetime tests, short so that a session outlives its token by one second.
const lifetimeLeeway = time.Second

// shortToken signs a token for sub that expires after ttl, rounded down to
// whole seconds, and returns the latest time its session may close.
func shortToken(t testing.TB, sub string, subscribe []string, ttl time.Duration) (tok string, closesBy time.Time) {
	t.Helper()
	tok, err := auth.Sign([]byte(testSecret), sub, auth.Realtime{Subscribe: subscribe}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok, time.Now().Add(ttl + lifetimeLeeway)
}

func TestAuthzTokenLifetime(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.JWTLeeway = lifetimeLeeway })
	sql := connect(t, db)

	t.Run("expiry of an auth token closes with 1008", func(t *testing.T) {
		tok, _ := shortToken(t, "ann", []string{"orders.*"}, 3*time.Second)
		rc := dialRPC(t, sc, "")
		if msg := rc.request("auth", map[string]any{"token": tok}); msg["result"] == nil {
			t.Fatalf("auth = %v, want a result", msg)
		}
		rc.subscribe("orders.*")
		if got := rc.closeCode(); got != websocket.StatusPolicyViolation {
			t.Fatalf("close code after the token expired = %v, want 1008", got)
		}
	})

	t.Run("expiry of an upgrade token closes with 1008", func(t *testing.T) {
		tok, _ := shortToken(t, "ann", []string{"orders.*"}, 3*time.Second)
		rc := dialRPC(t, sc, tok)
		rc.subscribe("orders.*")
		if got := rc.closeCode(); got != websocket.StatusPolicyViolation {
			t.Fatalf("close code after the token expired = %v, want 1008", got)
		}
	})

	t.Run("refresh keeps the session", func(t *testing.T) {
		tok, closesBy := shortToken(t, "ann", []string{"orders.*"}, 5*time.Second)
		rc := dialRPC(t, sc, tok)
		orders := rc.subscribe("orders.*")

		msg := rc.request("auth", map[string]any{"token": token(t, "ann", []string{"orders.*"}, nil)})
		res, _ := msg["result"].(map[string]any)
		if res["sub"] != "ann" || res["removed"] != nil {
			t.Fatalf("auth with a refreshed token = %v, want sub ann and nothing removed", msg)
		}
		if exp, _ := res["exp"].(float64); int64(exp) < time.Now().Add(30*time.Minute).Unix() {
			t.Fatalf("auth result exp = %v, want the refreshed token's exp about an hour ahead", res["exp"])
		}

		// Wait until the first token would have closed the session.
		waitFor(t, "the first token's expiry", func() bool { return time.Now().After(closesBy.Add(time.Second)) })
		exec(t, sql, `SELECT realtime.publish('orders.1', '1')`)
		rc.expectEvents(orders + " orders.1")
		if msg := rc.request("ping", nil); msg["result"] != "pong" {
			t.Fatalf("ping after the first token's expiry = %v, want pong", msg)
		}
	})

	t.Run("another subject is rejected", func(t *testing.T) {
		rc := dialRPC(t, sc, token(t, "ann", []string{"orders.*"}, nil))
		orders := rc.subscribe("orders.*")

		msg := rc.request("auth", map[string]any{"token": token(t, "bob", []string{">"}, []string{">"})})
		if errorCode(msg) != -32003 {
			t.Fatalf("auth with bob's token on ann's connection = %v, want -32003", msg)
		}
		for _, pattern := range []string{"users.*", ">"} {
			if code := rc.subscribeCode(map[string]any{"topics": []string{pattern}}); code != -32003 {
				t.Fatalf("subscribe %s after the rejected auth = %d, want -32003: the connection keeps ann's rights", pattern, code)
			}
		}
		if msg := rc.request("publish", map[string]any{"topic": "orders.1", "data": 1}); errorCode(msg) != -32003 {
			t.Fatalf("publish after the rejected auth = %v, want -32003: ann's token allows no publishing", msg)
		}

		// The rejected auth does not touch the subscriptions either.
		exec(t, sql, `SELECT realtime.publish('users.2', '2')`)
		exec(t, sql, `SELECT realtime.publish('orders.2', '2')`)
		rc.expectEvents(orders + " orders.2")
	})

	t.Run("invalid token is rejected", func(t *testing.T) {
		rc := dialRPC(t, sc, token(t, "ann", []string{"orders.*"}, nil))
		orders := rc.subscribe("orders.*")

		for name, tok := range map[string]string{
			"expired":      signAt(t, "ann", []string{">"}, time.Now().Add(-time.Hour)),
			"wrong secret": tokenWithSecret(t, "wrong"),
		} {
			if msg := rc.request("auth", map[string]any{"token": tok}); errorCode(msg) != -32001 {
				t.Fatalf("auth with an %s token = %v, want -32001", name, msg)
			}
		}
		if code := rc.subscribeCode(map[string]any{"topics": []string{"users.*"}}); code != -32003 {
			t.Fatalf("subscribe users.* after the rejected auth = %d, want -32003", code)
		}
		exec(t, sql, `SELECT realtime.publish('orders.3', '3')`)
		rc.expectEvents(orders + " orders.3")
	})

	t.Run("narrower token removes subscriptions", func(t *testing.T) {
		rc := dialRPC(t, sc, token(t, "ann", []string{"orders.*", "users.*"}, nil))
		orders := rc.subscribe("orders.*")
		users := rc.subscribe("users.*")
		both := rc.subscribe("orders.7", "users.7")

		msg := rc.request("auth", map[string]any{"token": token(t, "ann", []string{"orders.*"}, nil)})
		res, _ := msg["result"].(map[string]any)
		var removed []string
		ids, _ := res["removed"].([]any)
		for _, id := range ids {
			s, _ := id.(string)
			removed = append(removed, s)
		}
		want := []string{users, both}
		slices.Sort(want)
		if res["sub"] != "ann" || !slices.Equal(removed, want) {
			t.Fatalf("auth with a narrower token = %v, want removed %v", msg, want)
		}

		// A users event or a second copy of orders.7 for the removed
		// subscription would come before the next orders event.
		exec(t, sql, `SELECT realtime.publish('users.7', '1')`)
		exec(t, sql, `SELECT realtime.publish('orders.7', '2')`)
		exec(t, sql, `SELECT realtime.publish('orders.8', '3')`)
		rc.expectEvents(orders+" orders.7", orders+" orders.8")
		if code := rc.subscribeCode(map[string]any{"topics": []string{"users.*"}}); code != -32003 {
			t.Fatalf("subscribe users.* after the narrower token = %d, want -32003", code)
		}
		rc.expectNoEvent(300 * time.Millisecond)
	})

	t.Run("narrower token during a pending subscribe", func(t *testing.T) {
		rc := dialRPC(t, sc, token(t, "ann", []string{"orders.*", "users.*"}, nil))
		orders := rc.subscribe("orders.*")

		// A subscribe with since waits in Postgres while the settings
		// table is locked, so the auth below runs in the meantime.
		release := lockTable(t, db, "realtime.settings")
		pending := rc.send("subscribe", map[string]any{"topics": []string{"users.*"}, "since": 0})
		msg := rc.request("auth", map[string]any{"token": token(t, "ann", []string{"orders.*"}, nil)})
		if res, _ := msg["result"].(map[string]any); res["sub"] != "ann" {
			t.Fatalf("auth with a narrower token = %v, want a result", msg)
		}
		release()

		if msg := rc.response(pending); errorCode(msg) != -32003 {
			t.Fatalf("subscribe users.* that finished after the narrower token = %v, want -32003", msg)
		}
		exec(t, sql, `SELECT realtime.publish('users.1', '1')`)
		exec(t, sql, `SELECT realtime.publish('orders.1', '2')`)
		rc.expectEvents(orders + " orders.1")
	})
}

// lockTable holds an ACCESS EXCLUSIVE lock on table until the returned
// function is called or the test ends.
func lockTable(t testing.TB, dbURL, table string) (release func()) {
	t.Helper()
	ctx := context.Background()
	tx, err := connect(t, dbURL).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	var released bool
	release = func() {
		if !released {
			released = true
			_ = tx.Rollback(ctx)
		}
	}
	t.Cleanup(release)
	return release
}

func TestAuthzAnonymousThenToken(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.AnonymousSubscribe = []string{"public.>"} })
	sql := connect(t, db)

	rc := dialRPC(t, sc, "")
	public := rc.subscribe("public.news")
	if code := rc.subscribeCode(map[string]any{"topics": []string{"orders.*"}}); code != -32003 {
		t.Fatalf("anonymous subscribe orders.* = %d, want -32003", code)
	}

	// The token's rights replace the anonymous ones, which it lacks.
	msg := rc.request("auth", map[string]any{"token": token(t, "ann", []string{"orders.*"}, nil)})
	res, _ := msg["result"].(map[string]any)
	removed, _ := res["removed"].([]any)
	if res["sub"] != "ann" || len(removed) != 1 || removed[0] != public {
		t.Fatalf("auth after anonymous use = %v, want sub ann and removed [%s]", msg, public)
	}
	orders := rc.subscribe("orders.*")

	exec(t, sql, `SELECT realtime.publish('public.news', '1')`)
	exec(t, sql, `SELECT realtime.publish('orders.1', '2')`)
	rc.expectEvents(orders + " orders.1")
	rc.expectNoEvent(300 * time.Millisecond)
}

// upgradeAndKeep dials with tok and returns the HTTP status of the upgrade.
// A connection that opens stays open until the test ends.
func upgradeAndKeep(t testing.TB, sc *sidecar, tok string) int {
	t.Helper()
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

func TestAuthzConnectionLimitsKeepServing(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) {
		c.MaxConnections = 3
		c.MaxConnectionsPerSubject = 2
	})
	sql := connect(t, db)
	alice := token(t, "alice", []string{"news"}, nil)

	first := dialRPC(t, sc, alice)
	second := dialRPC(t, sc, alice)
	firstNews := first.subscribe("news")
	secondNews := second.subscribe("news")

	// A connection that authenticates with an auth request counts against
	// its subject's limit too.
	late := dialRPC(t, sc, "")
	if msg := late.request("auth", map[string]any{"token": alice}); errorCode(msg) != -32004 {
		t.Fatalf("auth as alice on her third connection = %v, want -32004", msg)
	}
	if code := late.subscribeCode(map[string]any{"topics": []string{"news"}}); code != -32001 {
		t.Fatalf("subscribe after the rejected auth = %d, want -32001: the connection is not authenticated", code)
	}
	if msg := late.request("auth", map[string]any{"token": token(t, "bob", []string{"news"}, nil)}); msg["result"] == nil {
		t.Fatalf("auth as bob = %v, want a result", msg)
	}
	lateNews := late.subscribe("news")

	if got := upgradeAndKeep(t, sc, token(t, "carol", []string{"news"}, nil)); got != http.StatusServiceUnavailable {
		t.Fatalf("a fourth connection = %d, want 503", got)
	}

	// The connections inside the limits are still served.
	exec(t, sql, `SELECT realtime.publish('news', '1')`)
	first.expectEvents(firstNews + " news")
	second.expectEvents(secondNews + " news")
	late.expectEvents(lateNews + " news")

	// Closing a connection frees its place under both limits.
	if err := first.conn.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close: %v", err)
	}
	waitFor(t, "a new connection for alice", func() bool {
		return upgradeAndKeep(t, sc, alice) == http.StatusSwitchingProtocols
	})
}

func TestAuthzSubscriptionLimitUnderConcurrency(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.MaxSubscriptions = 1 })
	sql := connect(t, db)
	rc := dialRPC(t, sc, token(t, "u", []string{">"}, nil))

	// Subscribes with since wait in Postgres while the settings table is
	// locked, so all three have passed the first limit check when they
	// finish.
	release := lockTable(t, db, "realtime.settings")
	var pending []int
	for _, pattern := range []string{"a", "b", "c"} {
		pending = append(pending, rc.send("subscribe", map[string]any{"topics": []string{pattern}, "since": 0}))
	}
	release()

	admitted := map[string]string{} // topic to subscription id
	limited := 0
	for i, id := range pending {
		msg := rc.response(id)
		res, _ := msg["result"].(map[string]any)
		switch {
		case res != nil:
			sub, _ := res["subscription"].(string)
			admitted[[]string{"a", "b", "c"}[i]] = sub
		case errorCode(msg) == -32004:
			limited++
		default:
			t.Fatalf("subscribe %d = %v, want a result or -32004", i, msg)
		}
	}
	if len(admitted) != 1 || limited != 2 {
		t.Fatalf("three concurrent subscribes with a limit of 1: %d admitted, %d limited; want 1 and 2", len(admitted), limited)
	}

	// Only the admitted subscription delivers events.
	exec(t, sql, `SELECT realtime.publish('a', '1'), realtime.publish('b', '2'), realtime.publish('c', '3')`)
	for topic, sub := range admitted {
		rc.expectEvents(sub + " " + topic)

		// Unsubscribing frees the place.
		if msg := rc.request("unsubscribe", map[string]any{"subscription": sub}); msg["result"] == nil {
			t.Fatalf("unsubscribe = %v, want a result", msg)
		}
	}
	next := rc.subscribe("d")
	exec(t, sql, `SELECT realtime.publish('d', '4')`)
	rc.expectEvents(next + " d")
	rc.expectNoEvent(300 * time.Millisecond)
}
