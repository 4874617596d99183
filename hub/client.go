package hub

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// writeBufKeepCap is the largest message buffer that a writer keeps between
// messages. A larger one, left by a large event, is released so that idle
// clients do not each keep one.
const writeBufKeepCap = 64 << 10

// Client is one registered connection: its subscriptions, its outbound
// queue and the writer goroutine that drains the queue into its Sink. All
// methods are safe for concurrent use.
type Client struct {
	hub  *Hub
	sink Sink
	log  *slog.Logger

	// ctx is passed to Sink.Write. It is cancelled only after the sink has
	// been closed.
	ctx    context.Context
	cancel context.CancelFunc

	wake       chan struct{} // capacity 1, signalled when the queue stops being empty
	stop       chan struct{} // closed when the client starts closing
	writerDone chan struct{} // closed when the writer goroutine returns
	done       chan struct{} // closed when the sink is closed and the writer has returned

	// writeStart is hub.now() when the current Sink.Write began, or 0
	// between writes. writeTimer reads it to tell a blocked write from one
	// that ended just as the timer fired.
	writeStart atomic.Int64
	writeTimer *time.Timer // owned by the writer goroutine
	buf        []byte      // owned by the writer goroutine

	mu        sync.Mutex
	closed    bool
	queue     ring
	queued    int // bytes in queue
	heldBytes int // bytes held for subscriptions that have not started
	subs      map[string]*Subscription
	nextSub   int
	// overSince is when queued last rose above QueueBytes, or zero while it
	// is at or below.
	overSince  time.Time
	graceTimer *time.Timer
	graceArmed bool
}

func newClient(h *Hub, sink Sink, log *slog.Logger) *Client {
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{
		hub:        h,
		sink:       sink,
		log:        log,
		ctx:        ctx,
		cancel:     cancel,
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		writerDone: make(chan struct{}),
		done:       make(chan struct{}),
		subs:       make(map[string]*Subscription),
	}
}

// Send queues msg, one complete message such as an RPC response, behind the
// messages already queued. The hub keeps msg until it is written, so the
// caller must not modify it. Send returns false once the client is closed,
// including when msg itself pushed the client over MaxQueueBytes.
func (c *Client) Send(msg []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.closed {
		return false
	}
	c.enqueueLocked(item{msg: msg})
	return !c.closed
}

// Close starts closing the client with code and reason. The reason must fit
// in a close frame, which allows at most 123 bytes. Close stops the writer
// after the current write, discards the queue, removes the subscriptions,
// and closes the sink in the background. Only the first call has an
// effect. Done reports when closing has finished.
func (c *Client) Close(code int, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()

	c.closeLocked(closeRequest{code: code, reason: reason, handshake: true})
}

// Done returns a channel that is closed when the writer has returned and the
// sink's Close or CloseNow has returned.
func (c *Client) Done() <-chan struct{} {
	return c.done
}

// enqueueLocked queues it and applies the slow-client limits.
// It does nothing once the client is closed.
func (c *Client) enqueueLocked(it item) {
	if c.closed {
		return
	}
	cfg := &c.hub.cfg

	wasEmpty := c.queue.len() == 0
	c.queue.push(it)
	c.queued += it.size()

	if c.queued+c.heldBytes > cfg.MaxQueueBytes {
		c.closeSlowLocked(fmt.Sprintf("buffered messages exceed %d bytes", cfg.MaxQueueBytes))
		return
	}
	if c.queued > cfg.QueueBytes && c.overSince.IsZero() {
		c.overSince = time.Now()
		c.armGraceLocked(cfg.SlowGrace)
	}
	if wasEmpty {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// holdLocked counts size bytes held for a subscription that has not started.
func (c *Client) holdLocked(size int) {
	c.heldBytes += size
	if c.queued+c.heldBytes > c.hub.cfg.MaxQueueBytes {
		c.closeSlowLocked(fmt.Sprintf("buffered messages exceed %d bytes", c.hub.cfg.MaxQueueBytes))
	}
}

func (c *Client) armGraceLocked(d time.Duration) {
	if c.graceArmed {
		return
	}
	c.graceArmed = true
	if c.graceTimer == nil {
		c.graceTimer = time.AfterFunc(d, c.checkGrace)
		return
	}
	c.graceTimer.Reset(d)
}

// checkGrace closes the client if its queue has stayed above QueueBytes for
// SlowGrace, and otherwise rearms for the rest of the grace period.
func (c *Client) checkGrace() {
	c.mu.Lock()
	defer c.mu.Unlock()

	c.graceArmed = false
	if c.closed || c.overSince.IsZero() {
		return
	}

	grace := c.hub.cfg.SlowGrace
	over := time.Since(c.overSince)
	if over >= grace {
		c.closeSlowLocked(fmt.Sprintf("queue above %d bytes for %s", c.hub.cfg.QueueBytes, grace))
		return
	}
	c.armGraceLocked(grace - over)
}

// checkWriteTimeout closes the client if the current write has lasted
// WriteTimeout. It runs on writeTimer.
func (c *Client) checkWriteTimeout() {
	start := c.writeStart.Load()
	timeout := c.hub.cfg.WriteTimeout
	if start == 0 || time.Duration(c.hub.now()-start) < timeout {
		return
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	c.closeSlowLocked(fmt.Sprintf("write blocked for %s", timeout))
}

func (c *Client) closeSlowLocked(cause string) {
	if c.closed {
		return
	}

	c.hub.slowCloses.Add(1)
	c.closeLocked(closeRequest{
		code:      CloseTooSlow,
		reason:    reasonTooSlow,
		handshake: true,
		logMsg:    "closing slow client",
		logLevel:  slog.LevelWarn,
		logAttrs:  []any{"cause", cause, "queued_bytes", c.queued, "held_bytes", c.heldBytes},
	})
}

// closeRequest describes how a client closes, and the line that finish
// logs about it. The line is logged by finish rather than at the point of
// decision, which may hold the hub's lock.
type closeRequest struct {
	code      int
	reason    string
	handshake bool // false: the connection is gone, so use CloseNow
	logMsg    string
	logLevel  slog.Level
	logAttrs  []any
}

// closeLocked discards everything buffered, stops the writer, and starts
// the goroutine that closes the sink. It does nothing if the client is
// already closing.
func (c *Client) closeLocked(req closeRequest) {
	if c.closed {
		return
	}
	c.closed = true

	dropped := c.queue.len()
	c.queue.reset()
	c.queued = 0
	for _, s := range c.subs {
		dropped += len(s.heldEvents)
		s.dropHeldLocked()
	}
	c.heldBytes = 0
	c.hub.dropped.Add(int64(dropped))

	if c.graceTimer != nil {
		c.graceTimer.Stop()
	}
	close(c.stop)
	go c.finish(req)
}

// finish removes the client's subscriptions, closes the sink, waits for the
// writer, and then closes done.
func (c *Client) finish(req closeRequest) {
	if req.logMsg != "" {
		c.log.Log(context.Background(), req.logLevel, req.logMsg, req.logAttrs...)
	}
	c.hub.removeSubscriptions(c)

	var err error
	if req.handshake {
		err = c.sink.Close(req.code, req.reason)
	} else {
		err = c.sink.CloseNow()
	}
	if err != nil {
		c.log.Debug("close connection", "code", req.code, "error", err)
	}
	c.cancel()

	<-c.writerDone
	c.hub.forget(c)
	close(c.done)
}

// waitOrDrop waits until the client is done. If ctx ends first, it drops
// the connection with CloseNow, waits again, and returns true.
func (c *Client) waitOrDrop(ctx context.Context) bool {
	select {
	case <-c.done:
		return false
	default:
	}

	select {
	case <-c.done:
		return false
	case <-ctx.Done():
	}

	if err := c.sink.CloseNow(); err != nil {
		c.log.Debug("drop connection", "error", err)
	}
	<-c.done
	return true
}

// writeLoop is the client's writer goroutine. It writes queued messages in
// order, and a heartbeat when nothing was written for Config.Heartbeat,
// until the client closes or a write fails.
func (c *Client) writeLoop() {
	defer close(c.writerDone)

	cfg := &c.hub.cfg
	c.writeTimer = time.AfterFunc(cfg.WriteTimeout, c.checkWriteTimeout)
	c.writeTimer.Stop()
	defer c.writeTimer.Stop()

	var heartbeat <-chan time.Time
	var heartbeatTimer *time.Timer
	if cfg.Heartbeat > 0 {
		heartbeatTimer = time.NewTimer(cfg.Heartbeat)
		defer heartbeatTimer.Stop()
		heartbeat = heartbeatTimer.C
	}

	for {
		msg, ok, stopped := c.next()
		if stopped {
			return
		}
		if !ok {
			select {
			case <-c.wake:
				continue
			case <-c.stop:
				return
			case <-heartbeat:
				msg = cfg.HeartbeatMsg
			}
		}

		if err := c.write(msg); err != nil {
			c.writeFailed(err)
			return
		}
		if heartbeatTimer != nil {
			heartbeatTimer.Reset(cfg.Heartbeat)
		}
	}
}

// next pops the next message. ok is false when the queue is empty, stopped
// is true once the client is closing. The returned slice is valid until the
// next call.
func (c *Client) next() (msg []byte, ok, stopped bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, false, true
	}
	it, ok := c.queue.pop()
	if ok {
		c.queued -= it.size()
		if c.queued <= c.hub.cfg.QueueBytes {
			c.overSince = time.Time{}
		}
	}
	c.mu.Unlock()

	if !ok {
		return nil, false, false
	}
	if it.sub == "" {
		return it.msg, true, false
	}
	if cap(c.buf) > writeBufKeepCap {
		c.buf = nil
	}
	c.buf = it.appendTo(c.buf[:0])
	return c.buf, true, false
}

// write writes msg with writeTimer armed. The timer closes the client
// instead of cancelling the write, so the close frame can still go out.
func (c *Client) write(msg []byte) error {
	c.writeStart.Store(c.hub.now())
	c.writeTimer.Reset(c.hub.cfg.WriteTimeout)

	err := c.sink.Write(c.ctx, msg)

	c.writeStart.Store(0)
	c.writeTimer.Stop()
	return err
}

// writeFailed drops the client after a failed write: the connection is
// gone, so there is no closing handshake to attempt.
func (c *Client) writeFailed(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.closed {
		// The write failed because the client was already closing.
		return
	}
	c.hub.writeErrors.Add(1)
	c.closeLocked(closeRequest{
		logMsg:   "write failed, dropping connection",
		logLevel: slog.LevelInfo,
		logAttrs: []any{"error", err},
	})
}
