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

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

func TestRowChangesReachSubscriber(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.MaxEventBytes = 200 << 10 })
	sql := connect(t, db)
	exec(t, sql, `CREATE TABLE public.todos (id serial PRIMARY KEY, title text, done boolean DEFAULT false)`)
	exec(t, sql, `CREATE TRIGGER todos_rt AFTER INSERT OR UPDATE OR DELETE ON public.todos
		FOR EACH ROW EXECUTE FUNCTION realtime.notify_changes()`)

	sub := subscribe(t, dial(t, sc), []string{"db.public.todos"})

	exec(t, sql, `INSERT INTO todos (title) VALUES ('milk')`)
	ev := next(t, sub)
	rc := decodeRow(t, ev)
	if ev.Topic != "db.public.todos" || rc.Op != "INSERT" || rc.New["title"] != "milk" || rc.Old != nil {
		t.Fatalf("insert event = %s %s, want db.public.todos INSERT with new.title milk and no old", ev.Topic, ev.Data)
	}
	if ev.ID == 0 {
		t.Fatalf("insert event has no id: %s", ev.Data)
	}

	exec(t, sql, `UPDATE todos SET done = true WHERE title = 'milk'`)
	rc = decodeRow(t, next(t, sub))
	if rc.Op != "UPDATE" || rc.New["done"] != true || rc.Old["done"] != false {
		t.Fatalf("update event = %+v, want UPDATE with new.done true, old.done false", rc)
	}

	exec(t, sql, `DELETE FROM todos WHERE title = 'milk'`)
	rc = decodeRow(t, next(t, sub))
	if rc.Op != "DELETE" || rc.New != nil || rc.Old["title"] != "milk" {
		t.Fatalf("delete event = %+v, want DELETE with old.title milk and no new", rc)
	}

	t.Run("rolled back transaction delivers nothing", func(t *testing.T) {
		ctx := context.Background()
		tx, err := sql.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO todos (title) VALUES ('never')`); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		exec(t, sql, `INSERT INTO todos (title) VALUES ('after rollback')`)
		if rc := decodeRow(t, next(t, sub)); rc.New["title"] != "after rollback" {
			t.Fatalf("next event after a rollback = %+v, want the row inserted after it", rc)
		}
	})

	t.Run("100 KB row arrives whole", func(t *testing.T) {
		big := strings.Repeat("x", 100<<10)
		exec(t, sql, `INSERT INTO todos (title) VALUES ($1)`, big)
		rc := decodeRow(t, next(t, sub))
		if rc.Truncated || rc.New["title"] != big {
			t.Fatalf("100 KB row: truncated=%v, title length %d, want the whole row", rc.Truncated, len(fmt.Sprint(rc.New["title"])))
		}
	})

	t.Run("row over the maximum is truncated and its insert succeeds", func(t *testing.T) {
		huge := strings.Repeat("y", 300<<10)
		exec(t, sql, `INSERT INTO todos (title) VALUES ($1)`, huge)
		rc := decodeRow(t, next(t, sub))
		if !rc.Truncated || rc.Op != "INSERT" || rc.New["id"] == nil || rc.New["title"] != nil {
			t.Fatalf("oversized row event = %+v, want truncated INSERT with only the primary key", rc)
		}
		var n int
		if err := sql.QueryRow(context.Background(), `SELECT count(*) FROM todos WHERE title = $1`, huge).Scan(&n); err != nil || n != 1 {
			t.Fatalf("oversized row stored %d times (err %v), want 1", n, err)
		}
	})
}

func TestPublishReachesOtherInstance(t *testing.T) {
	db := pgtest.NewDatabase(t)
	a := startSidecar(t, db)
	b := startSidecar(t, db)

	publisher := dial(t, a)
	own := subscribe(t, publisher, []string{"chat.>"})
	remote := subscribe(t, dial(t, b), []string{"chat.>"})
	sql := connect(t, db)

	ctx := context.Background()
	if _, err := publisher.Publish(ctx, "chat.ws", map[string]string{"via": "websocket"}, true); err != nil {
		t.Fatalf("websocket publish: %v", err)
	}
	if code, body := postJSON(t, a, "/v1/publish", testAPIKey, map[string]any{"topic": "chat.http", "data": map[string]string{"via": "http"}}); code != http.StatusOK {
		t.Fatalf("POST /v1/publish = %d %v, want 200", code, body)
	}
	exec(t, sql, `SELECT realtime.publish('chat.sql', '{"via": "sql"}')`)

	want := []string{"chat.ws", "chat.http", "chat.sql"}
	for name, sub := range map[string]*client.Subscription{"instance B": remote, "publisher's own": own} {
		for _, topic := range want {
			if ev := next(t, sub); ev.Topic != topic {
				t.Fatalf("%s subscription got %s, want %s", name, ev.Topic, topic)
			}
		}
		expectQuiet(t, sub, 300*time.Millisecond)
	}
}

func TestWildcardSubscriptionEndToEnd(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	conn := dial(t, sc)
	star := subscribe(t, conn, []string{"orders.*"})
	tail := subscribe(t, conn, []string{"orders.>"})
	all := subscribe(t, conn, []string{">"})

	sql := connect(t, db)
	exec(t, sql, `SELECT realtime.publish('orders.42', '1')`)
	exec(t, sql, `SELECT realtime.publish('orders.42.lines', '2')`)
	exec(t, sql, `SELECT realtime.publish_event('db.public.secret', '3')`)
	exec(t, sql, `SELECT realtime.publish('done', '4')`)

	if ev := next(t, star); ev.Topic != "orders.42" {
		t.Fatalf("orders.* got %s first, want orders.42", ev.Topic)
	}
	expectQuiet(t, star, 200*time.Millisecond)
	for _, want := range []string{"orders.42", "orders.42.lines"} {
		if ev := next(t, tail); ev.Topic != want {
			t.Fatalf("orders.> got %s, want %s", ev.Topic, want)
		}
	}
	for _, want := range []string{"orders.42", "orders.42.lines", "done"} {
		if ev := next(t, all); ev.Topic != want {
			t.Fatalf("> got %s, want %s (reserved db.* must be skipped)", ev.Topic, want)
		}
	}
}

func TestResumeSinceReplaysThenLive(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	sql := connect(t, db)
	ctx := context.Background()

	first := dial(t, sc)
	sub := subscribe(t, first, []string{"feed"})
	for i := 1; i <= 3; i++ {
		exec(t, sql, `SELECT realtime.publish('feed', $1)`, fmt.Sprint(i))
	}
	seen := next(t, sub)
	first.Close()

	// Published while the client was away.
	for i := 4; i <= 6; i++ {
		exec(t, sql, `SELECT realtime.publish('feed', $1)`, fmt.Sprint(i))
	}

	again := dial(t, sc)
	resumed := subscribe(t, again, []string{"feed"}, client.WithSince(seen.ID), client.WithEpoch(sub.Epoch()))
	exec(t, sql, `SELECT realtime.publish('feed', '7')`)

	prev := seen.ID
	for want := 2; want <= 7; want++ {
		ev := next(t, resumed)
		if string(ev.Data) != fmt.Sprint(want) || ev.ID <= prev {
			t.Fatalf("resumed event = %s (id %d after %d), want data %d with a higher id", ev.Data, ev.ID, prev, want)
		}
		prev = ev.ID
	}
	expectQuiet(t, resumed, 300*time.Millisecond)

	t.Run("transactions delivered and replayed in commit order", func(t *testing.T) {
		live := subscribe(t, again, []string{"race"})
		before := live.Head()

		early, err := sql.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		other := connect(t, db)
		late, err := other.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// early publishes first but commits last.
		if _, err := early.Exec(ctx, `SELECT realtime.publish('race', '"published first"')`); err != nil {
			t.Fatal(err)
		}
		if _, err := late.Exec(ctx, `SELECT realtime.publish('race', '"published second"')`); err != nil {
			t.Fatal(err)
		}
		if err := late.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := early.Commit(ctx); err != nil {
			t.Fatal(err)
		}

		a, b := next(t, live), next(t, live)
		if string(a.Data) != `"published second"` || string(b.Data) != `"published first"` || a.ID >= b.ID {
			t.Fatalf("live order = %s (id %d), %s (id %d); want commit order: second then first, ids increasing", a.Data, a.ID, b.Data, b.ID)
		}

		replay := subscribe(t, dial(t, sc), []string{"race"}, client.WithSince(before))
		c, d := next(t, replay), next(t, replay)
		if c.ID != a.ID || d.ID != b.ID {
			t.Fatalf("replay ids = %d, %d; want %d, %d as delivered live", c.ID, d.ID, a.ID, b.ID)
		}
	})
}

func TestResumeErrors(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.ReplayLimit = 5 })
	sql := connect(t, db)
	conn := dial(t, sc)
	base := subscribe(t, conn, []string{"x"})
	for i := 0; i < 8; i++ {
		exec(t, sql, `SELECT realtime.publish('x', '1')`)
	}
	var last int64
	for i := 0; i < 8; i++ {
		last = next(t, base).ID
	}

	cases := []struct {
		name string
		opts []client.SubscribeOption
	}{
		{"above the newest id", []client.SubscribeOption{client.WithSince(last + 1000)}},
		{"another epoch", []client.SubscribeOption{client.WithSince(last), client.WithEpoch("not-this-one")}},
		{"over the replay limit", []client.SubscribeOption{client.WithSince(base.Head())}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			_, err := conn.Subscribe(ctx, []string{"x"}, tc.opts...)
			if code := rpcCode(err); code != -32006 {
				t.Fatalf("Subscribe error = %v, want code -32006", err)
			}
		})
	}

	t.Run("retention point", func(t *testing.T) {
		exec(t, sql, `UPDATE realtime.settings SET purged_through = $1`, last-2)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if _, err := conn.Subscribe(ctx, []string{"x"}, client.WithSince(last-3)); rpcCode(err) != -32006 {
			t.Fatalf("Subscribe below the retention point: error %v, want -32006", err)
		}
		sub, err := conn.Subscribe(ctx, []string{"x"}, client.WithSince(last-2))
		if err != nil {
			t.Fatalf("Subscribe at the retention point: %v", err)
		}
		for _, want := range []int64{last - 1, last} {
			if ev := next(t, sub); ev.ID != want {
				t.Fatalf("replay id = %d, want %d", ev.ID, want)
			}
		}
	})
}

func rpcCode(err error) int {
	var e *client.RPCError
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestBurstInOneTransactionReachesHealthyReader(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	sub := subscribe(t, dial(t, sc), []string{"burst"})

	sql := connect(t, db)
	exec(t, sql, `SELECT realtime.publish('burst', to_jsonb(repeat('z', 4096) || i)) FROM generate_series(1, 2000) i`)

	prev := int64(0)
	for i := 1; i <= 2000; i++ {
		ev := next(t, sub)
		var s string
		if err := json.Unmarshal(ev.Data, &s); err != nil || !strings.HasSuffix(s, fmt.Sprint(i)) || ev.ID <= prev {
			t.Fatalf("event %d: id %d after %d, data suffix wrong (err %v)", i, ev.ID, prev, err)
		}
		prev = ev.ID
	}
}
