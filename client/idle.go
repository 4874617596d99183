package client

import (
	"sync"
	"sync/atomic"
	"time"
)

// idleWatch closes a connection on which the reader has waited in Read for
// longer than the timeout. Only time spent in Read counts, so a consumer
// that is slow to drain its events does not make the connection look dead.
type idleWatch struct {
	readSinceNS atomic.Int64 // when the current Read began, 0 outside Read

	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

func (w *idleWatch) enterRead() {
	w.readSinceNS.Store(time.Now().UnixNano())
}

func (w *idleWatch) leaveRead() {
	w.readSinceNS.Store(0)
}

// start begins watching c. A zero timeout means twice the heartbeat
// interval. A negative timeout, or a zero one without a heartbeat
// interval, disables the watch.
func (w *idleWatch) start(c *Conn, timeout, heartbeat time.Duration) {
	if timeout == 0 {
		timeout = 2 * heartbeat
	}
	if timeout <= 0 {
		return
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	w.timer = time.AfterFunc(timeout, func() { w.check(c, timeout) })
}

// check runs on the timer. It closes c when the current Read has lasted
// the whole timeout, and otherwise sets the timer for the rest of it.
func (w *idleWatch) check(c *Conn, timeout time.Duration) {
	next := timeout
	if since := w.readSinceNS.Load(); since != 0 {
		waited := time.Since(time.Unix(0, since))
		if waited >= timeout {
			c.log.Warn("closing the connection: no message from the sidecar", "waited", waited, "idle_timeout", timeout)
			c.setCause(ErrIdleTimeout)
			c.stopWaiting()
			_ = c.ws.CloseNow() // the reader's Read fails and tears down
			return
		}
		next = timeout - waited
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.timer.Reset(next)
	}
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	if w.timer != nil {
		w.timer.Stop()
	}
}
