package listen

import "sync/atomic"

// outbox hands events to the consumer without ever blocking. When the
// buffer is full, the notification is dropped and counted, and a Resync is
// owed. Every later notification first tries to deliver the owed Resync, and
// is dropped as well while that fails, so the consumer always receives a Resync
// between a gap and the next notification it receives.
//
// Only the Run goroutine calls resync, flush and notify. dropped may be read
// from any goroutine.
type outbox struct {
	events chan Event

	owed       bool   // a Resync must be delivered before the next notification
	generation uint64 // generation that the owed Resync carries

	dropped atomic.Uint64
}

func newOutbox(size int) *outbox {
	return &outbox{events: make(chan Event, size)}
}

// resync owes a Resync for generation and tries to deliver it at once.
func (o *outbox) resync(generation uint64) {
	o.owed = true
	o.generation = generation
	o.flush()
}

// flush tries to deliver an owed Resync and reports whether none is owed
// afterwards.
func (o *outbox) flush() bool {
	if !o.owed {
		return true
	}

	select {
	case o.events <- Event{Kind: Resync, Generation: o.generation}:
		o.owed = false
		return true
	default:
		return false
	}
}

// notify delivers ev, or drops it and owes a Resync. It reports whether ev
// was delivered.
func (o *outbox) notify(ev Event) bool {
	if !o.flush() {
		o.dropped.Add(1)
		return false
	}

	select {
	case o.events <- ev:
		return true
	default:
		o.dropped.Add(1)
		o.owed = true
		o.generation = ev.Generation
		return false
	}
}
