package listen

import (
	"sync"
	"time"
)

// Status is a snapshot of a Listener's connection state, for readiness
// checks and logs.
type Status struct {
	// Connected is true while the Listener holds a connection on which
	// every channel is listened to.
	Connected bool

	// Since is when Connected last changed, or when New returned if it
	// never did.
	Since time.Time

	// BackendPID is the server process id of the current connection, or 0
	// while disconnected.
	BackendPID uint32

	// LastError is the most recent connect, LISTEN, wait or ping error,
	// with passwords masked. It is kept after a later successful connect
	// and is empty if no error happened yet.
	LastError string

	// Reconnects counts connect attempts after the first one, failed or
	// not.
	Reconnects uint64

	// Dropped counts notifications dropped because the event buffer was
	// full.
	Dropped uint64

	// Generation counts successful connects. It is the Generation of the
	// Resync emitted for the current or most recent connection.
	Generation uint64
}

// tracker stores the Status fields that the Run goroutine updates. Dropped
// comes from the outbox. A tracker is safe for concurrent use.
type tracker struct {
	mu sync.Mutex
	s  Status
}

func (t *tracker) snapshot() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.s
}

// connected records a new connection and returns its generation.
func (t *tracker) connected(now time.Time, pid uint32) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()

	t.s.Connected = true
	t.s.Since = now
	t.s.BackendPID = pid
	t.s.Generation++
	return t.s.Generation
}

// failed records an error. It also marks the Listener disconnected, because
// every error the Run loop records ends the current connection.
func (t *tracker) failed(now time.Time, msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()

	if t.s.Connected {
		t.s.Connected = false
		t.s.Since = now
		t.s.BackendPID = 0
	}
	t.s.LastError = msg
}

func (t *tracker) disconnected(now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()

	if t.s.Connected {
		t.s.Connected = false
		t.s.Since = now
		t.s.BackendPID = 0
	}
}

func (t *tracker) reconnecting() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.s.Reconnects++
}
