package tests

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgsidecar/sidecar/db/migrations"
	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

// listenerConnected reads the listener's state from /readyz's body.
func listenerConnected(t testing.TB, sc *sidecar) (bool, int) {
	code, body := sc.readyz(t)
	l, _ := body["listener"].(map[string]any)
	connected, _ := l["connected"].(bool)
	return connected, code
}

func TestPostgresRestartUnderRunningSidecar(t *testing.T) {
	cluster := pgtest.NewCluster(t)
	px := startProxy(t, fmt.Sprintf("127.0.0.1:%d", cluster.Port()))
	listenURL := withHost(t, cluster.URL, px.Addr())

	sc := startSidecar(t, cluster.URL, func(c *server.Config) {
		c.ListenDatabaseURL = listenURL
		c.UnreadyAfter = time.Hour
	})
	sub := subscribe(t, dial(t, sc), []string{"r.>"})

	t.Run("Postgres stopped and started again", func(t *testing.T) {
		ctx := context.Background()
		if err := cluster.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "readyz to report the listener down", func() bool {
			connected, code := listenerConnected(t, sc)
			return !connected && code == 200
		})
		if err := cluster.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "readyz to report the listener up", func() bool {
			connected, _ := listenerConnected(t, sc)
			return connected
		})

		exec(t, connect(t, cluster.URL), `SELECT realtime.publish('r.after_restart', '1')`)
		if ev := next(t, sub); ev.Topic != "r.after_restart" {
			t.Fatalf("first event after the restart = %s, want r.after_restart", ev.Topic)
		}
	})

	t.Run("events committed while the listener was away", func(t *testing.T) {
		px.Cut()
		waitFor(t, "readyz to report the listener down", func() bool {
			connected, _ := listenerConnected(t, sc)
			return !connected
		})

		sql := connect(t, cluster.URL)
		for i := 1; i <= 5; i++ {
			exec(t, sql, `SELECT realtime.publish('r.missed', $1)`, fmt.Sprint(i))
		}
		px.Restore()
		waitFor(t, "readyz to report the listener up", func() bool {
			connected, _ := listenerConnected(t, sc)
			return connected
		})
		exec(t, sql, `SELECT realtime.publish('r.live', '6')`)

		prev := int64(0)
		for want := 1; want <= 6; want++ {
			ev := next(t, sub)
			if string(ev.Data) != fmt.Sprint(want) || ev.ID <= prev {
				t.Fatalf("event %d = %s %s (id %d after %d), want the missed events in order, then the live one", want, ev.Topic, ev.Data, ev.ID, prev)
			}
			prev = ev.ID
		}
		expectQuiet(t, sub, 300*time.Millisecond)
	})
}

func withHost(t testing.TB, raw, host string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = host
	return u.String()
}

func TestSlowClientClosedOthersKeepReceiving(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) {
		c.QueueBytes = 64 << 10
		c.MaxQueueBytes = 64<<10 + c.MaxEventBytes
		c.SlowGrace = 500 * time.Millisecond
		c.WriteTimeout = 2 * time.Second
	})
	tok := token(t, "u", []string{">"}, []string{">"})

	slow := dialRaw(t, sc, authHeader(tok))
	slow.send(websocket.MessageText, `{"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"topics": ["firehose"]}}`)
	if msg := slow.read(); msg["result"] == nil {
		t.Fatalf("subscribe = %v", msg)
	}
	healthy := subscribe(t, dialToken(t, sc, tok), []string{"firehose"})

	// The slow client now reads nothing. Publish until the sidecar closes
	// it, while the healthy subscriber drains everything.
	sql := connect(t, db)
	sent := 0
	received := make(chan int, 1)
	go func() {
		n := 0
		for ev := range healthy.Events() {
			_ = ev
			n++
			if n == -1 {
				break
			}
			select {
			case <-received:
			default:
			}
			received <- n
		}
	}()
	for round := 0; sc.srv.Hub().Stats().SlowCloses == 0; round++ {
		if round == 200 {
			t.Fatalf("the slow client was not closed after %d events", sent)
		}
		exec(t, sql, `SELECT realtime.publish('firehose', to_jsonb(repeat('s', 1024))) FROM generate_series(1, 100)`)
		sent += 100
		time.Sleep(20 * time.Millisecond)
	}

	waitFor(t, fmt.Sprintf("the healthy subscriber to receive all %d events", sent), func() bool {
		select {
		case n := <-received:
			received <- n
			return n == sent
		default:
			return false
		}
	})

	if got := slow.closeCode(); got != websocket.StatusTryAgainLater {
		t.Fatalf("slow client close code = %v, want 1013", got)
	}
}

func TestRecreatedSchemaStartsNewIDSpace(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db)
	conn := dial(t, sc)
	sub := subscribe(t, conn, []string{"n"})
	sql := connect(t, db)

	for range 5 {
		exec(t, sql, `SELECT realtime.publish('n', '"old"')`)
	}
	for range 5 {
		next(t, sub)
	}
	_, oldEpoch := sub.Head(), sub.Epoch()

	exec(t, sql, `DROP SCHEMA realtime CASCADE`)
	if err := migrations.Up(context.Background(), db, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	exec(t, sql, `SELECT realtime.publish('n', '"new"')`)
	if ev := next(t, sub); string(ev.Data) != `"new"` || ev.ID != 1 {
		t.Fatalf("first event of the new table = %s id %d, want \"new\" with id 1", ev.Data, ev.ID)
	}

	waitFor(t, "a new epoch for new subscriptions", func() bool {
		return subscribe(t, conn, []string{"m"}).Epoch() != oldEpoch
	})
}

func TestDrainReportsUnreadyWhileClosing(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, func(c *server.Config) { c.DrainTimeout = 3 * time.Second })
	// A client that never reads keeps the closing handshake waiting, so
	// the drain lasts until its deadline.
	dialRaw(t, sc, authHeader(token(t, "u", []string{"a"}, nil)))

	stopped := make(chan struct{})
	go func() { sc.stop(); close(stopped) }()

	waitFor(t, "/readyz to turn 503 during the drain", func() bool {
		code, body := sc.readyz(t)
		return code == 503 && body["draining"] == true
	})
	if code, _ := postJSON(t, sc, "/v1/publish", testAPIKey, map[string]any{"topic": "a", "data": 1}); code != 503 {
		t.Fatalf("publish during the drain = %d, want 503", code)
	}
	select {
	case <-stopped:
	case <-time.After(waitLong):
		t.Fatal("the drain did not end")
	}
}
