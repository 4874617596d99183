package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
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
	lastID int
	events []map[string]any
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

// response reads until the response with id arrives.
func (c *rpcConn) response(id int) map[string]any {
	c.t.Helper()
	for {
		msg := c.read()
		if msg["method"] == "event" {
			c.events = append(c.events, msg)
			continue
		}
		if msg["id"] != float64(id) {
			c.t.Fatalf("message %v while waiting for the response to request %d", msg, id)
		}
		return msg
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
		refused := [][]string{
			{">"}, {"*.*"}, {"*.1"}, {"*.>"}, {"orders.>"}, {"orders.*.*"}, {"users.>"},
			{"orders.*", "users.*"},
			{"orders.1", ">"},
		}
		for _, patterns := range refused {
			if code := rc.subscribeCode(map[string]any{"topics": patterns}); code != -32003 {
				t.Fatalf("subscribe %v with an orders.* token = %d, want -32003", patterns, code)
			}
		}

		// A refused request adds none of its patterns: a leftover orders.*
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
