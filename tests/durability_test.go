package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/store"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// postIdempotent posts a publish body with an Idempotency-Key.
func postIdempotent(t testing.TB, sc *sidecar, key string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, sc.base+"/v1/publish", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("body %s: %v", raw, err)
	}
	return resp.StatusCode, out
}

func TestIdempotencyKeyPublishesOnce(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	sub := subscribe(t, dial(t, sc), []string{"idem.>"})
	body := map[string]any{"events": []any{
		map[string]any{"topic": "idem.a", "data": 1},
		map[string]any{"topic": "idem.b", "data": 2, "durable": false},
	}}

	// Concurrent retries of one request: one publishes, all get its ids.
	var wg sync.WaitGroup
	results := make([]string, 4)
	for i := range results {
		wg.Go(func() {
			code, out := postIdempotent(t, sc, "key-1", body)
			results[i] = fmt.Sprint(code, out["ids"])
		})
	}
	wg.Wait()
	for _, r := range results[1:] {
		if r != results[0] {
			t.Fatalf("retries answered differently: %q", results)
		}
	}
	if !strings.HasPrefix(results[0], "200 [") {
		t.Fatalf("publish = %s, want 200 with ids", results[0])
	}

	for _, want := range []string{"idem.a", "idem.b"} {
		if ev := next(t, sub); ev.Topic != want {
			t.Fatalf("event %s, want %s", ev.Topic, want)
		}
	}
	expectQuiet(t, sub, 500*time.Millisecond)

	var rows int
	if err := connect(t, db).QueryRow(context.Background(), `SELECT count(*) FROM realtime.events WHERE topic = 'idem.a'`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("idem.a stored %d times (err %v), want once", rows, err)
	}

	t.Run("same key with another body", func(t *testing.T) {
		code, out := postIdempotent(t, sc, "key-1", map[string]any{"topic": "idem.c", "data": 3})
		if e, _ := out["error"].(map[string]any); code != http.StatusUnprocessableEntity || e["code"] != "idempotency_key_reused" {
			t.Fatalf("reused key = %d %v, want 422 idempotency_key_reused", code, out)
		}
	})

	t.Run("invalid key", func(t *testing.T) {
		code, _ := postIdempotent(t, sc, strings.Repeat("k", 300), body)
		if code != http.StatusBadRequest {
			t.Fatalf("300-byte key = %d, want 400", code)
		}
	})
}

func TestEventSizeLimits(t *testing.T) {
	db := pgtest.NewDatabase(t)
	const limit = 64 << 10
	sc := startSidecar(t, db, func(c *server.Config) { c.MaxEventBytes = limit })
	conn := dial(t, sc)
	sub := subscribe(t, conn, []string{"size.>"})
	sql := connect(t, db)
	ctx := context.Background()

	// A JSON string of n bytes as Postgres stores it: n-2 characters and quotes.
	atLimit := strings.Repeat("a", limit-2)
	over := strings.Repeat("a", limit)

	t.Run("at the limit arrives whole on every path", func(t *testing.T) {
		exec(t, sql, `SELECT realtime.publish('size.sql', to_jsonb($1::text))`, atLimit)
		if _, err := conn.Publish(ctx, "size.ws", atLimit, true); err != nil {
			t.Fatalf("websocket publish at the limit: %v", err)
		}
		if code, out := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "size.http", "data": atLimit}); code != 200 {
			t.Fatalf("HTTP publish at the limit = %d %v", code, out)
		}
		for _, want := range []string{"size.sql", "size.ws", "size.http"} {
			ev := next(t, sub)
			var got string
			if err := json.Unmarshal(ev.Data, &got); err != nil || ev.Topic != want || got != atLimit {
				t.Fatalf("event %s: %d bytes (err %v), want %s whole", ev.Topic, len(got), err, want)
			}
		}
	})

	t.Run("over the limit fails naming it", func(t *testing.T) {
		limitText := fmt.Sprint(limit)
		_, err := sql.Exec(ctx, `SELECT realtime.publish('size.sql', to_jsonb($1::text))`, over)
		if err == nil || !strings.Contains(err.Error(), limitText) {
			t.Fatalf("SQL publish over the limit: %v, want an error naming %s", err, limitText)
		}
		_, err = conn.Publish(ctx, "size.ws", over, true)
		if rpcCode(err) != -32602 || !strings.Contains(err.Error(), limitText) {
			t.Fatalf("websocket publish over the limit: %v, want -32602 naming %s", err, limitText)
		}
		code, out := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "size.http", "data": over})
		if code != http.StatusRequestEntityTooLarge || !strings.Contains(fmt.Sprint(out), limitText) {
			t.Fatalf("HTTP publish over the limit = %d %v, want 413 naming %s", code, out, limitText)
		}
	})

	t.Run("ephemeral over one NOTIFY fails naming the limit", func(t *testing.T) {
		big := strings.Repeat("e", 8000)
		_, err := sql.Exec(ctx, `SELECT realtime.broadcast('size.e', to_jsonb($1::text))`, big)
		if err == nil || !strings.Contains(err.Error(), "7967") {
			t.Fatalf("SQL broadcast of 8000 bytes: %v, want an error naming 7967", err)
		}
		_, err = conn.Publish(ctx, "size.e", big, false)
		if rpcCode(err) != -32602 || !strings.Contains(err.Error(), "7967") {
			t.Fatalf("websocket ephemeral publish of 8000 bytes: %v, want -32602 naming 7967", err)
		}
		code, out := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "size.e", "data": big, "durable": false})
		if code != http.StatusRequestEntityTooLarge || !strings.Contains(fmt.Sprint(out), "7967") {
			t.Fatalf("HTTP ephemeral publish of 8000 bytes = %d %v, want 413 naming 7967", code, out)
		}
	})
	expectQuiet(t, sub, 300*time.Millisecond)
}

func TestRetentionDeletesAndExpiresResume(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	conn := dial(t, sc)
	sub := subscribe(t, conn, []string{"ret"})
	sql := connect(t, db)

	for i := range 30 {
		exec(t, sql, `SELECT realtime.publish('ret', $1)`, fmt.Sprint(i))
	}
	var ids []int64
	for range 30 {
		ids = append(ids, next(t, sub).ID)
	}
	// Age the first 20 transactions past any retention.
	exec(t, sql, `UPDATE realtime.transactions SET committed_at = now() - interval '2 days' WHERE last_id <= $1`, ids[19])

	// Several sidecars purge at once: each batch is its own transaction,
	// and the try-lock lets one of them work at a time.
	pool, err := pgxpool.New(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	st := store.New(pool)
	var wg sync.WaitGroup
	deleted := make([]int, 3)
	for i := range deleted {
		wg.Go(func() {
			n, err := st.Purge(context.Background(), time.Now().Add(-24*time.Hour), 7)
			if err != nil {
				t.Error(err)
			}
			deleted[i] = n
		})
	}
	wg.Wait()
	// A purge that lost the try-lock deletes nothing; run once more to be
	// sure all are gone whatever the interleaving.
	if _, err := st.Purge(context.Background(), time.Now().Add(-24*time.Hour), 7); err != nil {
		t.Fatal(err)
	}

	var left int
	if err := sql.QueryRow(context.Background(), `SELECT count(*) FROM realtime.events`).Scan(&left); err != nil || left != 10 {
		t.Fatalf("%d events left after the purge (err %v), want the 10 recent ones", left, err)
	}
	purged, err := st.PurgedThrough(context.Background())
	if err != nil || purged != ids[19] {
		t.Fatalf("purged_through = %d (err %v), want %d", purged, err, ids[19])
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := conn.Subscribe(ctx, []string{"ret"}, client.WithSince(ids[18])); rpcCode(err) != -32006 {
		t.Fatalf("resume below the retention point: %v, want -32006", err)
	}
	resumed := subscribe(t, conn, []string{"ret"}, client.WithSince(ids[19]))
	for _, want := range ids[20:] {
		if ev := next(t, resumed); ev.ID != want {
			t.Fatalf("resume at the retention point got id %d, want %d", ev.ID, want)
		}
	}
}

func TestListenChannelsRelayed(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.ListenChannels = []string{"Legacy.Jobs", "plain"} })
	sub := subscribe(t, dial(t, sc), []string{"pg.>"})
	sql := connect(t, db)

	exec(t, sql, `SELECT pg_notify('Legacy.Jobs', '{"job": 7}')`)
	exec(t, sql, `SELECT pg_notify('legacy.jobs', '{"job": 8}')`) // another channel: case is kept
	exec(t, sql, `SELECT pg_notify('plain', 'not json')`)

	if ev := next(t, sub); ev.Topic != "pg.Legacy_Jobs" || string(ev.Data) != `{"job": 7}` || ev.ID != 0 {
		t.Fatalf("first relayed event = %s %s id %d, want pg.Legacy_Jobs {\"job\": 7} without id", ev.Topic, ev.Data, ev.ID)
	}
	if ev := next(t, sub); ev.Topic != "pg.plain" || string(ev.Data) != `"not json"` {
		t.Fatalf("second relayed event = %s %s, want pg.plain \"not json\"", ev.Topic, ev.Data)
	}
	expectQuiet(t, sub, 300*time.Millisecond)

	if _, err := server.New(func() server.Config {
		c := server.Defaults()
		c.DatabaseURL = db
		c.ListenChannels = []string{strings.Repeat("c", 64)}
		return c
	}()); err == nil {
		t.Fatal("server.New accepted a 64-byte channel name, want an error")
	}
}

func TestStartupProbeKeepsUnreadyWhenListenHearsNothing(t *testing.T) {
	db := pgtest.NewDatabase(t)
	other := pgtest.NewDatabase(t)

	cfg := server.Defaults()
	cfg.DatabaseURL = db
	cfg.ListenDatabaseURL = other // LISTEN on another database hears nothing
	cfg.Logger = testLogger(t)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, srv)

	time.Sleep(3 * time.Second)
	resp, err := http.Get(ts + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	l, _ := body["listener"].(map[string]any)
	if resp.StatusCode != http.StatusServiceUnavailable || body["started"] != false || l["connected"] != true {
		t.Fatalf("/readyz = %d %v, want 503, not started, with the listener connected", resp.StatusCode, body)
	}
	if _, ok := body["notify_queue_usage"].(float64); !ok {
		t.Fatalf("/readyz body has no notify_queue_usage: %v", body)
	}
}
