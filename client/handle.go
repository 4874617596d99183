package client

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/pgsidecar/sidecar/rpc"
)

// Handler computes the response to a request that the sidecar forwards to
// this client from the application. params is the request's params member, nil when
// absent. The result is encoded as JSON. An error that wraps *RPCError is
// sent as that error. Any other error is sent as an internal error
// (CodeInternal) whose message is err.Error(), so it must not contain
// secrets.
//
// ctx is cancelled when the connection ends.
type Handler func(ctx context.Context, params json.RawMessage) (result any, err error)

// Handle registers h for requests and notifications with the given method,
// replacing any earlier handler. A nil h removes the handler. A request for
// a method without a handler gets a CodeMethodNotFound error. Notifications
// for one are ignored, and a notification's result or error is discarded.
//
// Each request or notification runs h on a goroutine of its own, through
// an rpc.Peer, so handlers run concurrently and in no particular order, at
// most rpc.DefaultMaxInFlight at once. A handler that panics is recovered,
// logged, and answered with an internal error. A request that
// arrives before its handler is registered gets CodeMethodNotFound, so use
// Options.Handlers for handlers that must be there from the start.
//
// Close waits for running handlers, so a handler must not call Close
// itself, but it may start Close on another goroutine.
func (c *Conn) Handle(method string, h Handler) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h == nil {
		delete(c.handlers, method)
		return
	}
	c.handlers[method] = h
}

func (c *Conn) handler(method string) Handler {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.handlers[method]
}

// prepareIncoming is the rpc.Preparer of the connection's peer: it finds
// the Handler for a request or notification from the sidecar. The peer runs
// each on a goroutine of its own, recovers a panicking handler as an
// internal error, and bounds how many run at once.
func (c *Conn) prepareIncoming(_ context.Context, m rpc.Message) (rpc.Prepared, *rpc.Error) {
	h := c.handler(m.Method)
	if h == nil {
		if m.Kind == rpc.KindNotification {
			c.log.Debug("ignored a notification with no handler", "method", m.Method)
		}
		return rpc.Prepared{}, rpc.MethodNotFound(m.Method)
	}

	return rpc.Prepared{Run: func(ctx context.Context) (any, error) {
		result, err := h(ctx, m.Params)
		if err != nil {
			e := asRPCError(err)
			out := &rpc.Error{Code: e.Code, Message: e.Message}
			if len(e.Data) > 0 {
				out.Data = e.Data
			}
			return nil, out
		}
		return result, nil
	}}, nil
}

// asRPCError returns the *RPCError in err's chain, or wraps any other error
// as an internal error. It returns nil for a nil err.
func asRPCError(err error) *RPCError {
	if err == nil {
		return nil
	}
	var rpcErr *RPCError
	if errors.As(err, &rpcErr) {
		return rpcErr
	}
	return &RPCError{Code: CodeInternal, Message: err.Error()}
}
