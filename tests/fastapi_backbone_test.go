package tests

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/server"
	"github.com/pgsidecar/sidecar/tests/pgtest"
)

const backboneChannel = "EventNotifier"

func withBackbone(c *server.Config) { c.FastAPIBackboneChannel = backboneChannel }

// backboneListener LISTENs on the backbone channel like a Python server.
func backboneListener(t *testing.T, db string) *pgx.Conn {
	t.Helper()
	conn := connect(t, db)
	exec(t, conn, `LISTEN "`+backboneChannel+`"`)
	return conn
}

type backboneMsg struct {
	NotifierID string          `json:"notifier_id"`
	Topics     []string        `json:"topics"`
	Data       json.RawMessage `json:"data"`
}

// nextBackbone returns the next message on the channel within d, or false.
func nextBackbone(t *testing.T, conn *pgx.Conn, d time.Duration) (backboneMsg, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	n, err := conn.WaitForNotification(ctx)
	if err != nil {
		return backboneMsg{}, false
	}
	var m backboneMsg
	if err := json.Unmarshal([]byte(n.Payload), &m); err != nil {
		t.Fatalf("backbone message %s: %v", n.Payload, err)
	}
	return m, true
}

// A message that a Python server puts on the backbone reaches the
// sidecar's /pubsub and /v1/ws subscribers.
func TestBackboneMessageReachesSidecarClients(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, withBackbone)

	py := dialPy(t, sc, "/pubsub", pyToken(t, "py"))
	py.call("subscribe", `{"topics": ["from-python"]}`, "s1")
	py.response("s1", nil)
	ws := dial(t, sc)
	sub := subscribe(t, ws, []string{"from-python"})

	pg := connect(t, db)
	exec(t, pg, `SELECT pg_notify('`+backboneChannel+`', '{"notifier_id": "0f3c9a1e2b4d4c5e8f6a7b8c9d0e1f2a", "topics": ["from-python"], "data": {"n": 1}}')`)

	if a := notifyOf(t, py.nextNotify()); a.Subscription.Topic != "from-python" || !sameJSON(a.Data, `{"n":1}`) {
		t.Errorf("/pubsub notify = %+v, want topic from-python with {\"n\":1}", a)
	}
	ev := next(t, sub)
	if ev.Topic != "from-python" || string(ev.Data) != `{"n": 1}` && string(ev.Data) != `{"n":1}` || ev.ID != 0 {
		t.Errorf("/v1/ws event = %+v, want an ephemeral event on from-python", ev)
	}

	// Messages in the sidecars' own name, and reserved topics, are not
	// delivered.
	exec(t, pg, `SELECT pg_notify('`+backboneChannel+`', '{"notifier_id": "pgsidecar-fleet", "topics": ["from-python"], "data": 2}')`)
	exec(t, pg, `SELECT pg_notify('`+backboneChannel+`', '{"notifier_id": "py", "topics": ["db.public.users"], "data": 3}')`)
	exec(t, pg, `SELECT pg_notify('`+backboneChannel+`', '{"notifier_id": "py", "topics": ["from-python"], "data": "end"}')`)
	if ev := next(t, sub); string(ev.Data) != `"end"` {
		t.Errorf("next event = %s, want the end marker: the fleet's own message must be skipped", ev.Data)
	}
}

// A sidecar's event is put on the backbone in their format, once, by one
// sidecar of the fleet, and every client of either sidecar gets each event
// once.
func TestBackboneTwoSidecarsDeliverOnce(t *testing.T) {
	db := pgtest.NewDatabase(t)
	a := startSidecar(t, db, withBackbone)
	b := startSidecar(t, db, withBackbone)
	listener := backboneListener(t, db)

	onA := dial(t, a)
	subA := subscribe(t, onA, []string{"fleet.>"})
	onB := dialPy(t, b, "/pubsub", pyToken(t, "py-b"))
	onB.call("subscribe", `{"topics": ["fleet.x", "fleet.py"]}`, "s1")
	onB.response("s1", nil)

	// One sidecar becomes the forwarder; wait until the fleet's messages
	// appear by publishing until one is seen.
	pg := connect(t, db)
	deadline := time.Now().Add(waitLong)
	var warm int
	for {
		exec(t, pg, `SELECT realtime.publish('fleet.warm', '0')`)
		warm++
		if m, ok := nextBackbone(t, listener, time.Second); ok && len(m.Topics) == 1 && m.Topics[0] == "fleet.warm" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no sidecar forwarded an event to the backbone")
		}
	}
	for range warm {
		next(t, subA)
	}
	// Drain the forwards of the other warm-up events.
	for {
		if _, ok := nextBackbone(t, listener, time.Second); !ok {
			break
		}
	}

	// A sidecar publish: once on the backbone, in their format, and once
	// to each client.
	exec(t, pg, `SELECT realtime.publish('fleet.x', '{"n": 1}')`)
	m, ok := nextBackbone(t, listener, waitLong)
	if !ok || m.NotifierID != "pgsidecar-fleet" || len(m.Topics) != 1 || m.Topics[0] != "fleet.x" || string(m.Data) != `{"n":1}` && string(m.Data) != `{"n": 1}` {
		t.Errorf("backbone message = %+v, %v, want the event in their format with the fleet's notifier_id", m, ok)
	}
	if extra, ok := nextBackbone(t, listener, 2*time.Second); ok {
		t.Errorf("a second backbone message for one event: %+v; one sidecar forwards at a time", extra)
	}

	// A Python server's message: once to each client.
	exec(t, pg, `SELECT pg_notify('`+backboneChannel+`', '{"notifier_id": "python-1", "topics": ["fleet.py"], "data": 2}')`)
	exec(t, pg, `SELECT realtime.publish('fleet.end', '"end"')`)

	var gotA []string
	for len(gotA) < 3 {
		gotA = append(gotA, next(t, subA).Topic)
	}
	if gotA[0] != "fleet.x" || gotA[1] != "fleet.py" || gotA[2] != "fleet.end" {
		t.Errorf("the /v1/ws client on one sidecar got %v, want fleet.x, fleet.py, fleet.end once each", gotA)
	}
	var gotB []string
	for len(gotB) < 2 {
		gotB = append(gotB, notifyOf(t, onB.nextNotify()).Subscription.Topic)
	}
	if gotB[0] != "fleet.x" || gotB[1] != "fleet.py" {
		t.Errorf("the /pubsub client on the other sidecar got %v, want fleet.x then fleet.py, once each", gotB)
	}
	onB.call("_ping_", "{}", "p-end")
	var late []frame
	onB.response("p-end", &late)
	if len(late) > 0 {
		t.Errorf("the /pubsub client got more notifies: %s", late[0].raw)
	}
}

// An event too large for one NOTIFY cannot reach the Python servers: the
// forwarder counts it and goes on with the next.
func TestBackboneSkipsEventsTooLargeForNotify(t *testing.T) {
	db := pgtest.NewDatabase(t)
	sc := startSidecar(t, db, withBackbone)
	listener := backboneListener(t, db)
	pg := connect(t, db)

	deadline := time.Now().Add(waitLong)
	for {
		exec(t, pg, `SELECT realtime.publish('big.warm', '0')`)
		if _, ok := nextBackbone(t, listener, time.Second); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar never forwarded an event to the backbone")
		}
	}
	for {
		if _, ok := nextBackbone(t, listener, time.Second); !ok {
			break
		}
	}

	exec(t, pg, `SELECT realtime.publish('big.one', to_jsonb(repeat('x', 9000)))`)
	exec(t, pg, `SELECT realtime.publish('big.after', '1')`)
	m, ok := nextBackbone(t, listener, waitLong)
	if !ok || len(m.Topics) != 1 || m.Topics[0] != "big.after" {
		t.Errorf("first backbone message after the large event = %+v, %v, want big.after", m, ok)
	}
	waitFor(t, "the large event to be counted", func() bool {
		return scrape(t, sc.base+"/metrics", "")[`sidecar_refused_total{reason="too_large_for_backbone"}`] >= 1
	})
}
