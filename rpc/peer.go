package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

// Defaults of PeerConfig.
const (
	DefaultMaxInFlight = 1024
	DefaultCallTimeout = 30 * time.Second
)

// ErrClosed is wrapped by the errors of calls that Peer.Close ended, and of
// Call and Notify after Close.
var ErrClosed = errors.New("rpc: connection closed")

// PeerConfig configures a Peer. Send is required, and the zero value of
// every other field selects its default.
type PeerConfig struct {
	// Send writes one complete JSON-RPC message to the connection. The Peer
	// calls it from several goroutines at once, so the owner must serialise
	// the writes, for example with a queue drained by one writer goroutine.
	// Receive calls Send for the error responses that it sends at once, so
	// Send should not block for long. The Peer never modifies msg after passing it, so
	// Send may keep it. An error from Send is returned by Call and Notify,
	// and logged for responses. The Peer does not close itself on such an
	// error: the owner's read loop sees the broken connection and calls
	// Close.
	Send func(msg []byte) error

	// MaxInFlight bounds the handlers that run at once for incoming
	// requests and notifications, counting those registered with Register,
	// Handle and HandlePrefix. A request over the limit gets a -32004 error
	// at once, and a notification over it is dropped. Zero or less means
	// DefaultMaxInFlight.
	MaxInFlight int

	// CallTimeout bounds a Call whose ctx has no deadline. Zero or less
	// means DefaultCallTimeout.
	CallTimeout time.Duration

	// Logger receives handler errors and panics at level Error, and faults
	// of the remote side, such as invalid messages, at level Debug, because
	// the remote controls their rate. Nil discards. Add the connection's
	// attributes with Logger.With.
	Logger *slog.Logger
}

// Peer is one end of a JSON-RPC 2.0 connection on which both sides may send
// requests. It frames nothing and owns no goroutine of the connection: the
// owner runs one read loop that passes each incoming message to Receive,
// and supplies PeerConfig.Send for outgoing ones.
//
// Incoming requests and notifications go to the handlers registered with
// Register, Handle, HandlePrefix and HandleNotification. An error returned
// by a handler is sent as follows:
//   - an *Error, or an error that wraps one (such as the error of a Call
//     to another peer), is sent as that *Error, with its code, message and
//     data;
//   - any other error is logged with the method and id, and the remote
//     gets the -32603 error `method "name" failed with an internal error`,
//     because the text of internal errors may expose details of the
//     system.
//
// A panic in a handler is recovered and logged with its stack, and the
// remote gets the same -32603 error as for an internal error. The Peer
// keeps working.
//
// Handlers get a context derived from the ctx passed to Receive. It is
// cancelled with that ctx, when the handler returns, and when the Peer is
// closed, in which case context.Cause gives the close error. The remote cannot cancel a request:
// JSON-RPC 2.0 has no message for that.
//
// All methods are safe for concurrent use. A Peer cannot be reopened after
// Close.
type Peer struct {
	send        func(msg []byte) error
	maxInFlight int
	callTimeout time.Duration
	log         *slog.Logger

	handlers handlerTable
	preparer Preparer // takes what no handler takes; nil means -32601

	// closing is cancelled by Close with the close error as its cause.
	// Handler contexts follow it.
	closing       context.Context
	cancelClosing context.CancelCauseFunc

	// handlerWG counts the goroutines of running handlers. Add is only
	// called under mu while the Peer is open, so that Wait after Close
	// includes every handler.
	handlerWG sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	closeErr error                  // set by Close
	running  int                    // handlers running, at most maxInFlight
	nextID   int64                  // id of the latest outgoing call
	pending  map[int64]*pendingCall // outgoing calls by id; nil once closed
}

// NewPeer returns an open Peer. It panics when cfg.Send is nil.
func NewPeer(cfg PeerConfig) *Peer {
	if cfg.Send == nil {
		panic("rpc: PeerConfig.Send is nil")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	closing, cancel := context.WithCancelCause(context.Background())
	return &Peer{
		send:          cfg.Send,
		maxInFlight:   cfg.MaxInFlight,
		callTimeout:   cfg.CallTimeout,
		log:           cfg.Logger,
		closing:       closing,
		cancelClosing: cancel,
		pending:       make(map[int64]*pendingCall),
	}
}

// Receive handles one incoming message. The owner's read loop calls it for
// each message, in the order received. Receive does not keep msg.
//
// Receive does not wait for handlers or calls, so the loop keeps reading
// and nested calls in both directions cannot deadlock:
//   - a response completes the pending Call with its id. A response whose
//     id matches no pending call, such as a late one after a timeout, is
//     logged and dropped;
//   - a request or notification for a Register, Handle or HandlePrefix
//     handler starts a goroutine for it, bounded by
//     PeerConfig.MaxInFlight;
//   - invalid input gets its error at once through PeerConfig.Send, in the
//     order parse error (-32700), invalid request (-32600), method not
//     found (-32601), invalid params (-32602), then too many requests in
//     flight (-32004). Notifications get no error response, as JSON-RPC
//     requires; their faults are logged.
//
// The exceptions are these calls to Send and the handlers registered with
// HandleNotification, which run before Receive returns.
//
// ctx is the parent of the handlers' contexts. After Close, Receive drops
// every message.
func (p *Peer) Receive(ctx context.Context, msg []byte) {
	if p.isClosed() {
		return
	}

	m, rerr := Decode(msg)
	if rerr != nil {
		p.log.Debug("rpc message is invalid", "id", idString(m.ID), "error", rerr)
		p.sendResponse(EncodeError(m.ID, rerr))
		return
	}

	if m.Kind == KindResponse {
		p.complete(m)
		return
	}
	p.dispatch(ctx, m)
}

// Close ends the Peer. Every pending Call fails at once with an error that
// wraps ErrClosed and cause (when not nil), and the contexts of running
// handlers are cancelled. Close waits for nothing: call Wait for the
// handlers to return. Close does not touch the connection, which the owner
// closes. Calls after the first do nothing.
func (p *Peer) Close(cause error) {
	err := ErrClosed
	if cause != nil {
		err = fmt.Errorf("%w: %w", ErrClosed, cause)
	}

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	p.closeErr = err
	pending := p.pending
	p.pending = nil
	p.mu.Unlock()

	p.cancelClosing(err)
	for _, pc := range pending {
		pc.finish(nil, err)
	}
}

// Wait blocks until every handler started by Receive has returned. Call it
// after Close, or once the read loop has stopped calling Receive.
func (p *Peer) Wait() {
	p.handlerWG.Wait()
}

func (p *Peer) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// dispatch handles a request or a notification.
func (p *Peer) dispatch(ctx context.Context, m Message) {
	h, ok := p.handlers.lookup(m.Method)
	if !ok && p.preparer != nil {
		p.dispatchPrepared(ctx, m)
		return
	}
	if !ok {
		p.reject(m, MethodNotFound(m.Method))
		return
	}

	if h.inline != nil {
		p.runInline(ctx, m, h.inline)
		return
	}

	run, rerr := h.prepare(m.Method, m.Params)
	if rerr != nil {
		p.reject(m, rerr)
		return
	}

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	if p.running >= p.maxInFlight {
		p.mu.Unlock()
		p.reject(m, Errorf(CodeRateLimited,
			"too many requests in flight on this connection (limit %d): wait for responses before sending more", p.maxInFlight))
		return
	}
	p.running++
	p.handlerWG.Add(1)
	p.mu.Unlock()

	go p.run(ctx, m, run)
}

// reject sends e as the response to a request. A notification gets no
// response, so e is only logged.
func (p *Peer) reject(m Message, e *Error) {
	if m.Kind == KindNotification {
		p.log.Debug("rpc notification dropped", "method", m.Method, "error", e)
		return
	}
	p.log.Debug("rpc request rejected", "method", m.Method, "id", idString(m.ID), "error", e)
	p.sendResponse(EncodeError(m.ID, e))
}

// runInline runs a HandleNotification handler on the caller's goroutine.
func (p *Peer) runInline(ctx context.Context, m Message, h func(context.Context, json.RawMessage)) {
	if m.Kind == KindRequest {
		p.reject(m, Errorf(CodeInvalidRequest, "method %q takes only notifications: send it without an id", m.Method))
		return
	}

	defer func() {
		if v := recover(); v != nil {
			p.log.Error("rpc notification handler panicked", "method", m.Method, "panic", v, "stack", string(debug.Stack()))
		}
	}()
	h(ctx, m.Params)
}

// run runs a request's handler on its own goroutine and sends the
// response.
func (p *Peer) run(ctx context.Context, m Message, w work) {
	defer p.handlerWG.Done()

	result, err := p.invoke(ctx, m, w)

	// The slot is freed before the response is sent, so the remote may
	// send its next request as soon as it has this response.
	p.mu.Lock()
	p.running--
	p.mu.Unlock()

	p.respond(m, result, err)
}

// respond sends the response to a request whose work returned result and
// err. A notification gets none.
func (p *Peer) respond(m Message, result any, err error) {
	var rerr *Error
	if err != nil {
		rerr = p.errorResponse(m, err)
	}

	if r, ok := result.(Replier); ok && rerr == nil {
		if m.Kind == KindRequest {
			p.sendResponse(EncodeResult(m.ID, r.ReplyValue()))
		}
		r.AfterReply()
		return
	}
	if m.Kind == KindNotification {
		return
	}
	if rerr != nil {
		p.sendResponse(EncodeError(m.ID, rerr))
		return
	}
	p.sendResponse(EncodeResult(m.ID, result))
}

// invoke calls w with a context that Close cancels, and turns a panic into
// an internal error.
func (p *Peer) invoke(ctx context.Context, m Message, w work) (result any, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(p.closing, func() { cancel(context.Cause(p.closing)) })
	defer stop()

	defer func() {
		if v := recover(); v != nil {
			p.log.Error("rpc handler panicked", "method", m.Method, "id", idString(m.ID), "panic", v, "stack", string(debug.Stack()))
			result, err = nil, internalError(m.Method)
		}
	}()
	return w(ctx)
}

// errorResponse returns the *Error to send for a handler's error, and logs
// errors that are not sent as they are.
func (p *Peer) errorResponse(m Message, err error) *Error {
	var rerr *Error
	if errors.As(err, &rerr) && rerr != nil {
		p.log.Debug("rpc handler returned an error", "method", m.Method, "id", idString(m.ID), "error", rerr)
		return rerr
	}

	p.log.Error("rpc handler failed", "method", m.Method, "id", idString(m.ID), "error", err)
	return internalError(m.Method)
}

// sendResponse sends a response. Its failure is only logged, because the
// owner learns of a broken connection from its read loop.
func (p *Peer) sendResponse(msg []byte) {
	if err := p.send(msg); err != nil {
		p.log.Debug("rpc response not sent", "error", err)
	}
}

func internalError(method string) *Error {
	return Errorf(CodeInternal, "method %q failed with an internal error", method)
}

// idString formats a raw id for logs.
func idString(id []byte) string {
	if id == nil {
		return "null"
	}
	return string(id)
}
