package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// committed builds committed events with the given ids on topic t.
func committed(t string, ids ...int64) []committedEvent {
	var events []committedEvent
	for _, id := range ids {
		events = append(events, committedEvent{id: id, topic: t, hash: eventHash(t, []byte(`{}`))})
	}
	return events
}

func index(events []committedEvent) map[int64]*committedEvent {
	byID := make(map[int64]*committedEvent)
	for i := range events {
		byID[events[i].id] = &events[i]
	}
	return byID
}

func received(t string, ids ...int64) []delivery {
	var ds []delivery
	for _, id := range ids {
		ds = append(ds, delivery{id: id, hash: eventHash(t, []byte(`{}`))})
	}
	return ds
}

func TestCompareDeliveries(t *testing.T) {
	const topic = "soak.sql.a"
	all := func(string) bool { return true }
	tests := []struct {
		name       string
		head       int64
		deliveries []delivery
		want       deliveryResult
	}{
		{
			name:       "every event once in order",
			deliveries: received(topic, 1, 2, 3, 4),
			want:       deliveryResult{Committed: 4, Delivered: 4},
		},
		{
			name:       "gap",
			deliveries: received(topic, 1, 2, 4),
			want:       deliveryResult{Committed: 4, Delivered: 3, Missing: 1, MissingIDs: []int64{3}},
		},
		{
			name:       "replayed twice after a reconnect",
			deliveries: received(topic, 1, 2, 3, 2, 3, 4),
			want:       deliveryResult{Committed: 4, Delivered: 6, Duplicated: 2, OutOfOrder: 1, DuplicatedIDs: []int64{2, 3}},
		},
		{
			name:       "swapped",
			deliveries: received(topic, 1, 3, 2, 4),
			want:       deliveryResult{Committed: 4, Delivered: 4, OutOfOrder: 1},
		},
		{
			name:       "events at or below the head are not expected",
			head:       2,
			deliveries: received(topic, 2, 3, 4),
			want:       deliveryResult{Committed: 2, Delivered: 3, Unexpected: 1, UnexpectedIDs: []int64{2}},
		},
		{
			name:       "id not in the table",
			deliveries: received(topic, 1, 2, 3, 4, 9),
			want:       deliveryResult{Committed: 4, Delivered: 5, Unexpected: 1, UnexpectedIDs: []int64{9}},
		},
		{
			name:       "other data under the same id",
			deliveries: append(received(topic, 1, 2, 3), delivery{id: 4, hash: eventHash(topic, []byte(`{"n":1}`))}),
			want:       deliveryResult{Committed: 4, Delivered: 4, Mismatched: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events := committed(topic, 1, 2, 3, 4)
			got := compareDeliveries(events, index(events), tt.head, all, tt.deliveries)
			if diff := cmp.Diff(got, tt.want); diff != "" {
				t.Errorf("compareDeliveries() mismatch (-got +want):\n%s", diff)
			}
		})
	}
}

func TestCompareDeliveriesPatterns(t *testing.T) {
	events := append(committed("soak.sql.a", 1, 3), committed("soak.http.b", 2, 4)...)
	events[1], events[2] = events[2], events[1] // ids 1, 2, 3, 4
	st, err := newSubscriptionState("s", []string{"soak.sql.>"})
	if err != nil {
		t.Fatal(err)
	}

	got := compareDeliveries(events, index(events), 0, st.matches, append(received("soak.sql.a", 1), received("soak.http.b", 2)...))

	want := deliveryResult{Committed: 2, Delivered: 2, Missing: 1, Unexpected: 1, MissingIDs: []int64{3}, UnexpectedIDs: []int64{2}}
	if diff := cmp.Diff(got, want); diff != "" {
		t.Errorf("compareDeliveries(soak.sql.>) mismatch (-got +want):\n%s", diff)
	}
}

func TestEventHashCanonical(t *testing.T) {
	a := eventHash("soak.ws.a", []byte(`{"p":"ws-1","n":7,"t":3}`))
	b := eventHash("soak.ws.a", []byte(`{"n": 7, "p": "ws-1", "t": 3}`))
	if a != b {
		t.Errorf("eventHash of the same object spaced and ordered differently: %x and %x, want equal", a, b)
	}
	if c := eventHash("soak.ws.b", []byte(`{"p":"ws-1","n":7,"t":3}`)); c == a {
		t.Errorf("eventHash on another topic = %x, want a different hash", c)
	}
	if d := eventHash("soak.ws.a", []byte(`{"p":"ws-1","n":8,"t":3}`)); d == a {
		t.Errorf("eventHash of other data = %x, want a different hash", d)
	}
}

// tableEvent returns a committed event with id whose data carries m.
func tableEvent(id int64, m marker) committedEvent {
	data := makeData(m, false)
	ev := committedEvent{id: id, topic: "soak.sql.a", hash: eventHash("soak.sql.a", data)}
	ev.hasMarker = json.Unmarshal(data, &ev.marker) == nil
	return ev
}

func TestCheckLedgers(t *testing.T) {
	l := &ledger{publisher: "sql-1", path: "sql", txs: 5, events: []ledgerEntry{
		{outcome: outcomeAcked, tx: 1},                 // 1: in the table, fine
		{outcome: outcomeAcked, tx: 2, id: 20},         // 2: in the table with another id
		{outcome: outcomeAcked, tx: 3},                 // 3: lost
		{outcome: outcomeRolledBack, tx: 4},            // 4: in the table although rolled back
		{outcome: outcomeUncertain, tx: 5, err: "EOF"}, // 5 and 6: one transaction, committed in part
		{outcome: outcomeUncertain, tx: 5},             //
		{outcome: outcomeFailed, tx: 5},                // 7: not in the table, fine
		{outcome: outcomeAcked, tx: 5, id: 0},          // 8: in the table twice
		{outcome: outcomeRejected, tx: 5, id: 0},       // 9: not in the table, fine
		{outcome: outcomeUncertain, tx: 6, id: 0},      // 10: uncertain and absent, fine
	}}
	events := []committedEvent{
		tableEvent(1, marker{"sql-1", 1, 1}),
		tableEvent(2, marker{"sql-1", 2, 2}),
		tableEvent(4, marker{"sql-1", 4, 4}),
		tableEvent(5, marker{"sql-1", 5, 5}),
		tableEvent(8, marker{"sql-1", 8, 5}),
		tableEvent(9, marker{"sql-1", 8, 5}),
		tableEvent(11, marker{"http-9", 1, 1}),
	}

	counts, in := checkLedgers(events, []*ledger{l})

	wantCounts := publishCounts{
		Transactions: 5, Attempted: 10, Acked: 4, RolledBack: 1, Rejected: 1, Failed: 1, Uncertain: 3, UncertainCommitted: 1,
		CommittedWithError: []string{"sql-1 event 5 (transaction 5): committed with id 5, but the publish returned: EOF"},
	}
	if diff := cmp.Diff(counts["sql-1"], wantCounts); diff != "" {
		t.Errorf("checkLedgers() counts mismatch (-got +want):\n%s", diff)
	}
	in.Samples = nil
	want := integrity{AckedMissing: 1, NotCommittedPresent: 1, CommittedTwice: 1, IDMismatch: 1, PartialTransactions: 1, Unmarked: 1}
	if diff := cmp.Diff(in, want); diff != "" {
		t.Errorf("checkLedgers() integrity mismatch (-got +want):\n%s", diff)
	}
}

func TestNewBatchMarksEvents(t *testing.T) {
	l := &ledger{publisher: "sql-1", path: "sql"}
	rng := newTestRand()
	for range 200 {
		b := l.newBatch(rng, 0)
		for i, ev := range b.events {
			var m marker
			if err := json.Unmarshal(ev.data, &m); err != nil {
				t.Fatalf("event data %s: %v", ev.data, err)
			}
			if m != (marker{"sql-1", ev.seq, b.tx}) {
				t.Errorf("marker = %+v, want publisher sql-1, seq %d, tx %d", m, ev.seq, b.tx)
			}
			if !strings.HasPrefix(ev.topic, "soak.sql.") {
				t.Errorf("topic = %q, want soak.sql.*", ev.topic)
			}
			if ev.rolledBack != (b.mode == modeSavepoint && i == 1) {
				t.Errorf("event %d of a mode %d batch: rolledBack = %t", i, b.mode, ev.rolledBack)
			}
		}
	}
	if got := int64(len(l.events)); got < 200 {
		t.Errorf("ledger has %d events after 200 batches, want at least 200", got)
	}
}
