package listen

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func note(payload string, generation uint64) Event {
	return Event{Kind: Notification, Channel: "c", Payload: payload, Generation: generation}
}

func resyncEvent(generation uint64) Event {
	return Event{Kind: Resync, Generation: generation}
}

func drain(o *outbox) []Event {
	var got []Event
	for {
		select {
		case ev := <-o.events:
			got = append(got, ev)
		default:
			return got
		}
	}
}

func TestOutboxDeliversResyncFirst(t *testing.T) {
	o := newOutbox(8)

	o.resync(1)
	o.notify(note("a", 1))
	o.notify(note("b", 1))

	want := []Event{resyncEvent(1), note("a", 1), note("b", 1)}
	if diff := cmp.Diff(drain(o), want); diff != "" {
		t.Errorf("events (-got +want):\n%s", diff)
	}
	if got := o.dropped.Load(); got != 0 {
		t.Errorf("dropped = %d, want 0", got)
	}
}

func TestOutboxDropThenResync(t *testing.T) {
	o := newOutbox(3)
	o.resync(1)
	o.notify(note("a", 1))
	o.notify(note("b", 1)) // buffer full

	if o.notify(note("c", 1)) {
		t.Fatal("notify(c) on a full buffer = true, want false")
	}
	if o.notify(note("d", 1)) {
		t.Fatal("notify(d) on a full buffer = true, want false")
	}

	// The consumer reads one event. Then only the owed Resync fits, so the
	// next notification is dropped too, which owes another Resync.
	<-o.events
	if o.notify(note("e", 1)) {
		t.Fatal("notify(e) with room for only the Resync = true, want false")
	}

	want := []Event{note("a", 1), note("b", 1), resyncEvent(1)}
	if diff := cmp.Diff(drain(o), want); diff != "" {
		t.Errorf("events (-got +want):\n%s", diff)
	}

	if !o.notify(note("f", 1)) {
		t.Fatal("notify(f) on an empty buffer = false, want true")
	}
	if diff := cmp.Diff(drain(o), []Event{resyncEvent(1), note("f", 1)}); diff != "" {
		t.Errorf("events after catching up (-got +want):\n%s", diff)
	}
	if got := o.dropped.Load(); got != 3 {
		t.Errorf("dropped = %d, want 3", got)
	}
}

func TestOutboxFlushDeliversOwedResync(t *testing.T) {
	o := newOutbox(1)
	o.resync(1)
	o.notify(note("a", 1)) // dropped: the Resync fills the buffer

	if o.flush() {
		t.Fatal("flush() on a full buffer = true, want false")
	}
	<-o.events

	if !o.flush() {
		t.Fatal("flush() on an empty buffer = false, want true")
	}
	if diff := cmp.Diff(drain(o), []Event{resyncEvent(1)}); diff != "" {
		t.Errorf("events (-got +want):\n%s", diff)
	}
}

func TestOutboxNewGenerationReplacesOwedResync(t *testing.T) {
	o := newOutbox(2)
	o.resync(1)
	o.notify(note("a", 1))
	o.notify(note("b", 1)) // dropped, Resync 1 owed

	o.resync(2) // reconnect while the buffer is still full
	drain(o)
	o.notify(note("c", 2))

	// One Resync with the new generation, not a stale one for generation 1.
	want := []Event{resyncEvent(2), note("c", 2)}
	if diff := cmp.Diff(drain(o), want); diff != "" {
		t.Errorf("events (-got +want):\n%s", diff)
	}
}
