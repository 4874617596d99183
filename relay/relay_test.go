package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/pgsidecar/sidecar/listen"
	"github.com/pgsidecar/sidecar/store"
)

// fakeLog is an in-memory events table: committed events by id.
type fakeLog struct {
	events []store.Event // in id order
	first  map[int64]int64
	reads  int
}

func (f *fakeLog) Segment(_ context.Context, segment int64, ords []int32) ([]store.Event, error) {
	f.reads++
	first := f.first[segment]
	var out []store.Event
	for _, ev := range f.events {
		ord := int32(ev.ID - first)
		if ev.ID >= first && ord < 1000 && (len(ords) == 0 || slices.Contains(ords, ord)) {
			out = append(out, ev)
		}
	}
	return out, nil
}

func (f *fakeLog) Head(context.Context) (int64, error) {
	if len(f.events) == 0 {
		return 0, nil
	}
	return f.events[len(f.events)-1].ID, nil
}

func (f *fakeLog) After(_ context.Context, after int64, limit int) ([]store.Event, error) {
	f.reads++
	var out []store.Event
	for _, ev := range f.events {
		if ev.ID > after && len(out) < limit {
			out = append(out, ev)
		}
	}
	return out, nil
}

type recorder struct{ got []string }

func (r *recorder) deliver(ev store.Event) {
	r.got = append(r.got, fmt.Sprintf("%d %s %s", ev.ID, ev.Topic, ev.Data))
}

func newRelay(log *fakeLog, last int64) (*Relay, *recorder) {
	rec := &recorder{}
	r := New(Config{Store: log, Deliver: rec.deliver, Last: last,
		Now: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC) }})
	return r, rec
}

func note(t *testing.T, fields map[string]any) listen.Event {
	t.Helper()
	b, err := json.Marshal(fields)
	if err != nil {
		t.Fatal(err)
	}
	return listen.Event{Kind: listen.Notification, Channel: store.Channel, Payload: string(b)}
}

func handle(t *testing.T, r *Relay, evs ...listen.Event) {
	t.Helper()
	for _, ev := range evs {
		if err := r.Handle(context.Background(), ev); err != nil {
			t.Fatalf("Handle(%+v): %v", ev, err)
		}
	}
}

func TestCommitGivesIDsInOrder(t *testing.T) {
	r, rec := newRelay(&fakeLog{}, 0)
	handle(t, r,
		note(t, map[string]any{"k": "e", "s": 7, "o": 0, "t": "a", "d": 1}),
		note(t, map[string]any{"k": "e", "s": 7, "o": 1, "t": "b", "d": 2}),
		note(t, map[string]any{"k": "c", "s": 7, "f": 10, "n": 2}),
	)
	if diff := cmp.Diff(rec.got, []string{"10 a 1", "11 b 2"}); diff != "" {
		t.Fatalf("delivered (-got +want):\n%s", diff)
	}
	if r.Last() != 11 {
		t.Fatalf("Last() = %d, want 11", r.Last())
	}
}

func TestReferenceReadFromTable(t *testing.T) {
	log := &fakeLog{
		events: []store.Event{{ID: 20, Topic: "a", Data: json.RawMessage(`"small"`)}, {ID: 21, Topic: "big", Data: json.RawMessage(`"large"`)}},
		first:  map[int64]int64{3: 20},
	}
	r, rec := newRelay(log, 0)
	handle(t, r,
		note(t, map[string]any{"k": "e", "s": 3, "o": 0, "t": "a", "d": "small"}),
		note(t, map[string]any{"k": "r", "s": 3, "o": 1, "t": "big"}),
		note(t, map[string]any{"k": "c", "s": 3, "f": 20, "n": 2}),
	)
	if diff := cmp.Diff(rec.got, []string{`20 a "small"`, `21 big "large"`}); diff != "" {
		t.Fatalf("delivered (-got +want):\n%s", diff)
	}
}

func TestIncompleteSegmentReadWhole(t *testing.T) {
	log := &fakeLog{
		events: []store.Event{{ID: 5, Topic: "x", Data: json.RawMessage(`0`)}, {ID: 6, Topic: "x", Data: json.RawMessage(`1`)}},
		first:  map[int64]int64{9: 5},
	}
	r, rec := newRelay(log, 0)
	// The notification of ordinal 0 was lost (dropped by the listener).
	handle(t, r,
		note(t, map[string]any{"k": "e", "s": 9, "o": 1, "t": "x", "d": 1}),
		note(t, map[string]any{"k": "c", "s": 9, "f": 5, "n": 2}),
	)
	if diff := cmp.Diff(rec.got, []string{"5 x 0", "6 x 1"}); diff != "" {
		t.Fatalf("delivered (-got +want):\n%s", diff)
	}
}

func TestResyncCatchesUpWithoutDuplicates(t *testing.T) {
	log := &fakeLog{}
	for id := int64(1); id <= 2500; id++ {
		log.events = append(log.events, store.Event{ID: id, Topic: "t", Data: json.RawMessage(fmt.Sprint(id))})
	}
	r, rec := newRelay(log, 2000)

	handle(t, r, listen.Event{Kind: listen.Resync})
	if len(rec.got) != 500 || rec.got[0] != "2001 t 2001" || rec.got[499] != "2500 t 2500" {
		t.Fatalf("catch-up delivered %d events (%v ... ), want ids 2001 to 2500", len(rec.got), rec.got[:min(2, len(rec.got))])
	}

	// The new connection then receives a segment the catch-up already read.
	handle(t, r,
		note(t, map[string]any{"k": "e", "s": 1, "o": 0, "t": "t", "d": 2500}),
		note(t, map[string]any{"k": "c", "s": 1, "f": 2500, "n": 1}),
		note(t, map[string]any{"k": "e", "s": 2, "o": 0, "t": "t", "d": 2501}),
		note(t, map[string]any{"k": "c", "s": 2, "f": 2501, "n": 1}),
	)
	if len(rec.got) != 501 || rec.got[500] != "2501 t 2501" {
		t.Fatalf("after catch-up got %d events ending %q, want 501 ending with id 2501", len(rec.got), rec.got[len(rec.got)-1])
	}
}

func TestEphemeralAndChannelEvents(t *testing.T) {
	r, rec := newRelay(&fakeLog{}, 0)
	handle(t, r,
		note(t, map[string]any{"k": "b", "n": 0, "t": "typing", "d": map[string]int{"x": 1}}),
		listen.Event{Kind: listen.Notification, Channel: "Legacy.Jobs", Payload: `{"job": 1}`},
		listen.Event{Kind: listen.Notification, Channel: "plain", Payload: `not json`},
		listen.Event{Kind: listen.Notification, Channel: store.Channel, Payload: `{garbage`},
	)
	want := []string{`0 typing {"x":1}`, `0 pg.Legacy_Jobs {"job": 1}`, `0 pg.plain "not json"`}
	if diff := cmp.Diff(rec.got, want); diff != "" {
		t.Fatalf("delivered (-got +want):\n%s", diff)
	}
}

func TestBroadcastWaitsForItsTransaction(t *testing.T) {
	r, rec := newRelay(&fakeLog{}, 0)
	handle(t, r,
		note(t, map[string]any{"k": "e", "s": 4, "o": 0, "t": "one", "d": 1}),
		note(t, map[string]any{"k": "b", "n": 0, "t": "two", "d": 2}),
		note(t, map[string]any{"k": "e", "s": 4, "o": 1, "t": "three", "d": 3}),
		note(t, map[string]any{"k": "c", "s": 4, "f": 30, "n": 2}),
	)
	if diff := cmp.Diff(rec.got, []string{"30 one 1", "0 two 2", "31 three 3"}); diff != "" {
		t.Fatalf("delivered (-got +want):\n%s", diff)
	}
}

func TestNewEventsTableStartsNewIDSpace(t *testing.T) {
	var reset []int64
	rec := &recorder{}
	r := New(Config{Store: &fakeLog{}, Deliver: rec.deliver, NewIDSpace: func(last int64) { reset = append(reset, last) }})
	handle(t, r,
		note(t, map[string]any{"k": "e", "s": 1, "o": 0, "t": "a", "d": 1}),
		note(t, map[string]any{"k": "c", "s": 1, "f": 500, "n": 1, "e": 16384}),
		// The schema was recreated: a new table, and ids from 1 again.
		note(t, map[string]any{"k": "e", "s": 1, "o": 0, "t": "b", "d": 2}),
		note(t, map[string]any{"k": "c", "s": 1, "f": 1, "n": 1, "e": 16999}),
	)
	if diff := cmp.Diff(rec.got, []string{"500 a 1", "1 b 2"}); diff != "" {
		t.Fatalf("delivered (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(reset, []int64{0}); diff != "" {
		t.Fatalf("NewIDSpace calls (-got +want):\n%s", diff)
	}
}

func TestTimestampFromMicroseconds(t *testing.T) {
	var got []store.Event
	r := New(Config{Store: &fakeLog{}, Deliver: func(ev store.Event) { got = append(got, ev) }})
	handle(t, r, note(t, map[string]any{"k": "b", "n": 0, "t": "x", "u": 1796418449123456, "d": 1}))
	if len(got) != 1 || got[0].TS != "2026-12-04T21:07:29.123456Z" {
		t.Fatalf("ts = %+v, want 2026-12-04T21:07:29.123456Z", got)
	}
}

func TestResyncNoticesHeadBelowLast(t *testing.T) {
	log := &fakeLog{events: []store.Event{{ID: 1, Topic: "t", Data: json.RawMessage(`"after failover"`)}}}
	var reset []int64
	rec := &recorder{}
	r := New(Config{Store: log, Deliver: rec.deliver, Last: 900, NewIDSpace: func(last int64) { reset = append(reset, last) }})

	handle(t, r, listen.Event{Kind: listen.Resync})
	handle(t, r,
		note(t, map[string]any{"k": "e", "s": 5, "o": 0, "t": "t", "d": 2}),
		note(t, map[string]any{"k": "c", "s": 5, "f": 2, "n": 1}),
	)
	if diff := cmp.Diff(reset, []int64{1}); diff != "" {
		t.Fatalf("NewIDSpace calls (-got +want):\n%s", diff)
	}
	if diff := cmp.Diff(rec.got, []string{"2 t 2"}); diff != "" {
		t.Fatalf("delivered (-got +want):\n%s", diff)
	}
}

// A notification sent again after its transaction committed leaves an
// event that no commit will claim. It must not hold the broadcasts or the
// events of the transactions after it.
func TestReplayedEventDoesNotHoldLaterTransactions(t *testing.T) {
	log := &fakeLog{
		events: []store.Event{{ID: 31, Topic: "late", Data: json.RawMessage(`3`)}},
		first:  map[int64]int64{9: 31},
	}
	r, rec := newRelay(log, 30)
	handle(t, r,
		// The replay: an event of transaction 100, whose commit came long ago.
		note(t, map[string]any{"k": "e", "x": 100, "s": 4, "o": 0, "t": "old", "d": 0}),
		// A broadcast of a transaction without writes.
		note(t, map[string]any{"k": "b", "x": 0, "n": 0, "t": "typing", "d": 1}),
		// Another transaction that publishes and broadcasts.
		note(t, map[string]any{"k": "e", "x": 101, "s": 9, "o": 0, "t": "late", "d": 3}),
		note(t, map[string]any{"k": "b", "x": 101, "n": 0, "t": "after", "d": 4}),
		note(t, map[string]any{"k": "c", "x": 101, "s": 9, "f": 31, "n": 1}),
	)
	if diff := cmp.Diff(rec.got, []string{"0 typing 1", "31 late 3", "0 after 4"}); diff != "" {
		t.Fatalf("delivered (-got +want):\n%s", diff)
	}
}
