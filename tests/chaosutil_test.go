package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/sidecar/client"
)

// tableEvent is one committed durable event as realtime.events stores it.
// Data is compacted JSON, so that it compares equal to what a client
// receives.
type tableEvent struct {
	ID    int64
	Topic string
	Data  string
}

// committedEvents reads every committed event whose topic starts with
// prefix, in id order. The table is the reference for every chaos test:
// what the publisher believes it sent may differ after a crash. It retries
// for waitLong while Postgres does not accept connections yet.
func committedEvents(t testing.TB, dbURL, prefix string) []tableEvent {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		events, err := readCommittedEvents(dbURL, prefix)
		if err == nil {
			return events
		}
		if time.Now().After(deadline) {
			t.Fatalf("read committed events: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readCommittedEvents(dbURL, prefix string) ([]tableEvent, error) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())

	rows, err := conn.Query(ctx, `
		SELECT t.first_id + e.ord, e.topic, e.data::text
		  FROM realtime.transactions t
		  JOIN realtime.events e USING (segment)
		 WHERE t.first_id IS NOT NULL AND starts_with(e.topic, $1)
		 ORDER BY 1`, prefix)
	if err != nil {
		return nil, err
	}
	var events []tableEvent
	for rows.Next() {
		var ev tableEvent
		if err := rows.Scan(&ev.ID, &ev.Topic, &ev.Data); err != nil {
			return nil, err
		}
		ev.Data = compactJSON(ev.Data)
		events = append(events, ev)
	}
	return events, rows.Err()
}

func compactJSON(s string) string {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		return s
	}
	return b.String()
}

// eventsAfter returns the events with ids above id.
func eventsAfter(events []tableEvent, id int64) []tableEvent {
	for i, ev := range events {
		if ev.ID > id {
			return events[i:]
		}
	}
	return nil
}

// publisher commits durable events from several connections at a steady
// rate until Stop. Transactions carry 1 to 9 events. Errors are expected
// while Postgres is down or restarting: a worker then reconnects and
// carries on. Tests never use what it believes it sent; they compare with
// the table.
type publisher struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	commits  atomic.Int64
	failures atomic.Int64
}

const (
	publisherWorkers = 4
	// publisherMeanBatch is the mean number of events of one transaction:
	// batches cycle through 1 to 9.
	publisherMeanBatch = 5
)

// startPublisher publishes about eventsPerSecond events on topics
// prefix.w0 to prefix.w3. The test's cleanup stops it.
func startPublisher(t testing.TB, dbURL, prefix string, eventsPerSecond int) *publisher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &publisher{cancel: cancel}
	interval := time.Second * publisherWorkers * publisherMeanBatch / time.Duration(eventsPerSecond)
	for w := range publisherWorkers {
		p.wg.Go(func() { p.work(ctx, dbURL, fmt.Sprintf("%s.w%d", prefix, w), interval) })
	}
	t.Cleanup(p.Stop)
	return p
}

func (p *publisher) work(ctx context.Context, dbURL, topic string, interval time.Duration) {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()

	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for tx := 0; ; tx++ {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}

		if conn == nil {
			connectCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
			c, err := pgx.Connect(connectCtx, dbURL)
			cancel()
			if err != nil {
				p.failures.Add(1)
				continue
			}
			conn = c
		}

		// Not derived from ctx: Stop must not cancel a commit in flight,
		// which could still become visible after the test has read the
		// committed events.
		execCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := conn.Exec(execCtx,
			`SELECT realtime.publish($1, to_jsonb($2 || '-' || i)) FROM generate_series(1, $3::int) i`,
			topic, fmt.Sprintf("%s-%d", topic, tx), 1+tx%9)
		cancel()
		if err != nil {
			p.failures.Add(1)
			conn.Close(context.Background())
			conn = nil
			continue
		}
		p.commits.Add(1)
	}
}

// Stop stops every worker and waits for them. It may be called twice.
func (p *publisher) Stop() {
	p.cancel()
	p.wg.Wait()
}

// collector gathers the events of one client across its subscriptions in
// arrival order, as an application does that resumes after a reconnect.
type collector struct {
	head  int64  // the first subscription's head: events after it are expected
	epoch string // the first subscription's epoch

	mu     sync.Mutex
	events []client.Event
	ended  chan struct{} // closed when the followed subscription ends
}

// newCollector follows sub, the client's first subscription.
func newCollector(sub *client.Subscription) *collector {
	c := &collector{head: sub.Head(), epoch: sub.Epoch()}
	c.follow(sub)
	return c
}

// follow drains sub into the collector until the subscription ends. The
// previous subscription must have ended.
func (c *collector) follow(sub *client.Subscription) {
	ended := make(chan struct{})
	c.mu.Lock()
	c.ended = ended
	c.mu.Unlock()

	go func() {
		defer close(ended)
		for ev := range sub.Events() {
			c.mu.Lock()
			c.events = append(c.events, ev)
			c.mu.Unlock()
		}
	}()
}

// waitEnded waits until the followed subscription has ended, so that no
// event of it arrives later.
func (c *collector) waitEnded(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	ended := c.ended
	c.mu.Unlock()
	select {
	case <-ended:
	case <-time.After(waitLong):
		t.Fatalf("the subscription did not end within %s", waitLong)
	}
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.events)
}

// resumePoint returns the id to resume after: the newest id received, or
// the first subscription's head when nothing has arrived.
func (c *collector) resumePoint() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) == 0 {
		return c.head
	}
	return c.events[len(c.events)-1].ID
}

func (c *collector) received() []client.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]client.Event(nil), c.events...)
}

// waitForMore waits until n more events have arrived than when it was
// called.
func (c *collector) waitForMore(t testing.TB, n int) {
	t.Helper()
	target := c.count() + n
	waitFor(t, fmt.Sprintf("%d more events", n), func() bool { return c.count() >= target })
}

// delivery counts how a client's events compare with the table.
type delivery struct {
	Missing    int // committed after the head, never received
	Duplicates int // received more than once
	Unexpected int // received, but not committed after the head
	OutOfOrder int // received after an event with an equal or larger id
	WrongData  int // received with a topic or data unlike the table's
}

func (d delivery) String() string {
	return fmt.Sprintf("%d missing, %d duplicated, %d unexpected, %d out of order, %d with other data",
		d.Missing, d.Duplicates, d.Unexpected, d.OutOfOrder, d.WrongData)
}

// compareDelivery compares what a client received with the events it
// should have received, and describes the first differences.
func compareDelivery(got []client.Event, want []tableEvent) (delivery, []string) {
	var d delivery
	var notes []string
	note := func(format string, args ...any) {
		if len(notes) < 10 {
			notes = append(notes, fmt.Sprintf(format, args...))
		}
	}

	byID := make(map[int64]tableEvent, len(want))
	for _, ev := range want {
		byID[ev.ID] = ev
	}
	seen := make(map[int64]bool, len(got))
	var prev int64
	for i, ev := range got {
		if i > 0 && ev.ID <= prev {
			d.OutOfOrder++
			note("event %d has id %d after id %d", i, ev.ID, prev)
		}
		prev = ev.ID

		if seen[ev.ID] {
			d.Duplicates++
			note("id %d received again", ev.ID)
			continue
		}
		seen[ev.ID] = true

		w, ok := byID[ev.ID]
		switch {
		case !ok:
			d.Unexpected++
			note("id %d (%s %s) is not a committed event after the head", ev.ID, ev.Topic, ev.Data)
		case w.Topic != ev.Topic || w.Data != compactJSON(string(ev.Data)):
			d.WrongData++
			note("id %d received as %s %s, committed as %s %s", ev.ID, ev.Topic, ev.Data, w.Topic, w.Data)
		}
	}
	for _, ev := range want {
		if !seen[ev.ID] {
			d.Missing++
			note("id %d (%s %s) never received", ev.ID, ev.Topic, ev.Data)
		}
	}
	return d, notes
}

// checkDelivery waits until the collector has received the table's newest
// event after its head, then fails the test unless it received every such
// event exactly once, in id order, and nothing else. It returns the counts
// for the test's log.
func checkDelivery(t testing.TB, subscriber string, c *collector, table []tableEvent) delivery {
	t.Helper()
	want := eventsAfter(table, c.head)
	if len(want) > 0 {
		newest := want[len(want)-1].ID
		deadline := time.Now().Add(waitLong)
		for c.resumePoint() < newest && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	// A duplicate or stray event sent after the newest one shows up here.
	time.Sleep(200 * time.Millisecond)

	d, notes := compareDelivery(c.received(), want)
	if d != (delivery{}) {
		t.Errorf("%s received %d events for %d committed after head %d: %s\n%s",
			subscriber, c.count(), len(want), c.head, d, strings.Join(notes, "\n"))
	}
	return d
}

// listenerStatus reads the listener part of /readyz's body: whether the
// LISTEN connection is up, and when that last changed.
func listenerStatus(t testing.TB, sc *sidecar) (connected bool, since time.Time) {
	t.Helper()
	_, body := sc.readyz(t)
	l, _ := body["listener"].(map[string]any)
	connected, _ = l["connected"].(bool)
	s, _ := l["since"].(string)
	since, _ = time.Parse(time.RFC3339Nano, s)
	return connected, since
}

// waitWithin is waitFor with its own bound, for waits that are expected
// to take longer than waitLong allows.
func waitWithin(t testing.TB, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// withQuery returns raw with the query parameter key set to value.
func withQuery(t testing.TB, raw, key, value string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set(key, value)
	u.RawQuery = q.Encode()
	return u.String()
}

// queryFloat runs a query that returns one number.
func queryFloat(ctx context.Context, conn *pgx.Conn, sql string) (float64, error) {
	var v float64
	err := conn.QueryRow(ctx, sql).Scan(&v)
	return v, err
}

func TestCompareDelivery(t *testing.T) {
	want := []tableEvent{{1, "a", `1`}, {2, "a", `{"k":2}`}, {4, "b", `4`}}
	ev := func(id int64, topic, data string) client.Event {
		return client.Event{ID: id, Topic: topic, Data: json.RawMessage(data)}
	}
	tests := []struct {
		name string
		got  []client.Event
		want delivery
	}{
		{"exact", []client.Event{ev(1, "a", `1`), ev(2, "a", `{"k": 2}`), ev(4, "b", `4`)}, delivery{}},
		{"missing", []client.Event{ev(1, "a", `1`), ev(4, "b", `4`)}, delivery{Missing: 1}},
		{"duplicate", []client.Event{ev(1, "a", `1`), ev(2, "a", `{"k":2}`), ev(2, "a", `{"k":2}`), ev(4, "b", `4`)},
			delivery{Duplicates: 1, OutOfOrder: 1}},
		{"reordered", []client.Event{ev(2, "a", `{"k":2}`), ev(1, "a", `1`), ev(4, "b", `4`)}, delivery{OutOfOrder: 1}},
		{"unexpected", []client.Event{ev(1, "a", `1`), ev(2, "a", `{"k":2}`), ev(3, "a", `3`), ev(4, "b", `4`)},
			delivery{Unexpected: 1}},
		{"other data", []client.Event{ev(1, "a", `1`), ev(2, "a", `{"k":3}`), ev(4, "c", `4`)}, delivery{WrongData: 2}},
	}
	for _, tt := range tests {
		if got, notes := compareDelivery(tt.got, want); got != tt.want {
			t.Errorf("%s: compareDelivery = %s, want %s\n%s", tt.name, got, tt.want, strings.Join(notes, "\n"))
		}
	}
}
