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
// queue and the writer that drains the queue into its Sink. The writer is a
// goroutine that runs only while the queue has messages, so an idle client
// holds no goroutine of the hub. All methods are safe for concurrent use.
type Client struct {
	hub  *Hub
	sink Sink
	log  *slog.Logger

	// ctx is passed to Sink.Write. It is cancelled only after the sink has
	// been closed.
	ctx    context.Context
	cancel context.CancelFunc

	writers sync.WaitGroup // the running writer goroutine, if any
	done    chan struct{}  // closed when the sink is closed and the writer has returned

	// writeStart is hub.now() when the current Sink.Write began, or 0
	// between writes; lastWrite is hub.now() when the last write ended.
	// The write-timeout and heartbeat timers read them, so that a write
	// costs two atomic stores instead of a timer reset.
	writeStart atomic.Int64
	lastWrite  atomic.Int64
	// writeTimerArmed is true while writeTimer is pending or running. Only
	// the party that sets it from false to true resets the timer.
	writeTimerArmed atomic.Bool
	writeTimer      *time.Timer
	heartbeatTimer  *time.Timer // nil without heartbeats
	buf             []byte      // owned by the running writer

	mu        sync.Mutex
	closed    bool
	closeCode int  // the code the hub closed with, 0 for a dropped connection
	writing   bool // a writer goroutine is running
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
	c := &Client{
		hub:    h,
		sink:   sink,
		log:    log,
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
		subs:   make(map[string]*Subscription),
	}
	c.lastWrite.Store(h.now())

	// Each timer is stored before it is armed, because its function reads
	// the field.
	c.writeTimer = stoppedTimer(c.checkWriteTimeout)
	if h.cfg.Heartbeat > 0 {
		c.heartbeatTimer = stoppedTimer(c.beat)
		c.heartbeatTimer.Reset(h.cfg.Heartbeat)
	}
	return c
}

// stoppedTimer returns a timer that calls f once it is reset.
func stoppedTimer(f func()) *time.Timer {
	t := time.AfterFunc(time.Hour, f)
	t.Stop()
	return t
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

// ClosedWith returns the close code that the hub closed the client with,
// through Close, as too slow or at shutdown, and false while the client is
// open or when its connection was dropped without a close frame.
func (c *Client) ClosedWith() (code int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()

	return c.closeCode, c.closeCode != 0
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
	if wasEmpty && !c.writing {
		c.writing = true
		c.writers.Add(1)
		go c.drain()
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

// checkWriteTimeout runs on writeTimer. It closes the client if the
// current write has lasted WriteTimeout, rearms the timer for the rest of
// the timeout if a write is in progress, and otherwise disarms it.
func (c *Client) checkWriteTimeout() {
	timeout := c.hub.cfg.WriteTimeout
	start := c.writeStart.Load()
	if start == 0 {
		c.writeTimerArmed.Store(false)
		// A write that began after the Load saw the timer armed and left
		// it to this call.
		if c.writeStart.Load() != 0 && c.writeTimerArmed.CompareAndSwap(false, true) {
			c.writeTimer.Reset(timeout)
		}
		return
	}

	elapsed := time.Duration(c.hub.now() - start)
	if elapsed < timeout {
		c.writeTimer.Reset(timeout - elapsed)
		return
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	c.closeSlowLocked(fmt.Sprintf("write blocked for %s", timeout))
}

// beat runs on heartbeatTimer. It queues HeartbeatMsg when nothing has
// been written or queued for Heartbeat, and rearms the timer for the next
// moment a heartbeat could be due.
func (c *Client) beat() {
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.closed {
		return
	}
	every := c.hub.cfg.Heartbeat
	if c.queue.len() > 0 || c.writeStart.Load() != 0 {
		c.heartbeatTimer.Reset(every)
		return
	}
	if idle := time.Duration(c.hub.now() - c.lastWrite.Load()); idle < every {
		c.heartbeatTimer.Reset(every - idle)
		return
	}
	c.enqueueLocked(item{msg: c.hub.cfg.HeartbeatMsg})
	c.heartbeatTimer.Reset(every)
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
	if req.handshake {
		c.closeCode = req.code
	}

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
	if c.heartbeatTimer != nil {
		c.heartbeatTimer.Stop()
	}
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

	c.writers.Wait()
	c.writeTimer.Stop()
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

// drain is the client's writer goroutine. It writes queued messages in
// order until the queue is empty, the client closes or a write fails.
// enqueueLocked starts it when a message arrives and none is running.
func (c *Client) drain() {
	defer c.writers.Done()

	latency := c.hub.cfg.DeliveryLatency
	for {
		msg, published, ok := c.next()
		if !ok {
			return
		}
		if err := c.write(msg); err != nil {
			c.writeFailed(err)
			return
		}
		if latency != nil && published != 0 {
			latency(time.Duration(time.Now().UnixNano() - published))
		}
	}
}

// next pops the next message and its publish time for the latency hook.
// When the queue is empty or the client is
// closing, it returns false, and a writer that gets false must return at
// once: another may already have started. The returned slice is valid
// until the next call.
func (c *Client) next() (msg []byte, published int64, ok bool) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, 0, false
	}
	it, ok := c.queue.pop()
	if !ok {
		c.writing = false
		if cap(c.buf) > writeBufKeepCap {
			c.buf = nil
		}
		c.mu.Unlock()
		return nil, 0, false
	}
	c.queued -= it.size()
	if c.queued <= c.hub.cfg.QueueBytes {
		c.overSince = time.Time{}
	}
	c.mu.Unlock()

	if it.sub == "" {
		return it.msg, 0, true
	}
	c.buf = it.appendTo(c.buf[:0])
	return c.buf, it.published, true
}

// write writes msg. writeTimer closes the client if the write blocks for
// WriteTimeout: it is armed by the first write after it last found no
// write in progress, and rearms itself while writes go on, so a write does
// not touch it otherwise. The timer closes the client instead of
// cancelling the write, so the close frame can still go out.
func (c *Client) write(msg []byte) error {
	c.writeStart.Store(c.hub.now())
	if c.writeTimerArmed.CompareAndSwap(false, true) {
		c.writeTimer.Reset(c.hub.cfg.WriteTimeout)
	}

	err := c.sink.Write(c.ctx, msg)

	c.lastWrite.Store(c.hub.now())
	c.writeStart.Store(0)
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
