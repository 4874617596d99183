package rpc_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/pgsidecar/sidecar/rpc"
)

// timeout bounds every wait on real time in these tests. It is generous
// because it only matters when a test fails.
const timeout = 10 * time.Second

var (
	errLinkDown = errors.New("link down")
	errTestOver = errors.New("test over")
)

// pipe joins two peers in memory, as the two ends of one connection. Each
// side has one read loop goroutine that passes its inbox to Receive, and
// Send puts a message into the other side's inbox.
type pipe struct {
	a, b *rpc.Peer

	down     chan struct{} // closed by cut
	downOnce sync.Once
	cause    error // set by cut before down is closed
}

// inboxSize is the capacity of each direction. Receive calls Send for the
// error responses that it sends at once, so with both inboxes full both
// read loops could block on each other. The tests stay far below this.
const inboxSize = 4096

// newPipe returns two connected peers. The read loops run with
// t.Context(). When the test ends, the pipe is cut and the cleanup waits
// for the read loops and for the handlers of both peers.
func newPipe(t testing.TB, cfgA, cfgB rpc.PeerConfig) *pipe {
	t.Helper()

	toA := make(chan []byte, inboxSize)
	toB := make(chan []byte, inboxSize)
	p := &pipe{down: make(chan struct{})}
	cfgA.Send = p.sender(toB)
	cfgB.Send = p.sender(toA)
	p.a = rpc.NewPeer(cfgA)
	p.b = rpc.NewPeer(cfgB)

	var loops sync.WaitGroup
	loops.Go(func() { p.readLoop(t.Context(), p.a, toA) })
	loops.Go(func() { p.readLoop(t.Context(), p.b, toB) })

	t.Cleanup(func() {
		p.cut(errTestOver)
		loops.Wait()
		p.a.Wait()
		p.b.Wait()
	})
	return p
}

func (p *pipe) sender(to chan<- []byte) func([]byte) error {
	return func(msg []byte) error {
		select {
		case to <- msg:
			return nil
		case <-p.down:
			return errLinkDown
		}
	}
}

// readLoop passes messages to peer until the pipe is cut, then closes the
// peer with the cause, as a websocket read loop does when the connection
// ends.
func (p *pipe) readLoop(ctx context.Context, peer *rpc.Peer, inbox <-chan []byte) {
	for {
		select {
		case msg := <-inbox:
			peer.Receive(ctx, msg)
		case <-p.down:
			peer.Close(p.cause)
			return
		}
	}
}

// cut breaks the connection. Both read loops close their peers with cause.
// Calls after the first do nothing.
func (p *pipe) cut(cause error) {
	p.downOnce.Do(func() {
		p.cause = cause
		close(p.down)
	})
}

// logBuffer collects log output from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newLogger returns a logger that writes every level to a logBuffer.
func newLogger() (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// rpcError returns the *rpc.Error that err wraps, or fails the test.
func rpcError(t *testing.T, err error) *rpc.Error {
	t.Helper()
	var rerr *rpc.Error
	if !errors.As(err, &rerr) {
		t.Fatalf("error = %v, want one that wraps *rpc.Error", err)
	}
	return rerr
}

// receiveWithin returns the next value from ch, or fails the test after
// timeout.
func receiveWithin[T any](t *testing.T, ch <-chan T, awaited string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(timeout):
		t.Fatalf("no %s within %s", awaited, timeout)
		var zero T
		return zero
	}
}
