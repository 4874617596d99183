package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
// Each request or notification runs h on a goroutine of its own, so
// handlers run concurrently and in no particular order. A request that
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

// serveRequest responds to a request from the sidecar on a new goroutine,
// so that a slow handler never blocks the reader.
func (c *Conn) serveRequest(m inbound) {
	h := c.handler(m.Method)
	c.handlerWG.Go(func() {
		var msg []byte
		if h == nil {
			msg = encodeResponse(m.ID, nil, &RPCError{Code: CodeMethodNotFound, Message: fmt.Sprintf("method %q not found", m.Method)})
		} else {
			result, err := h(c.ctx, m.Params)
			msg = encodeResponse(m.ID, result, asRPCError(err))
		}

		if err := c.write(msg); err != nil {
			c.log.Debug("could not send a response to the sidecar", "method", m.Method, "id", string(m.ID), "error", err)
		}
	})
}

// serveNotification runs the handler for a notification, if there is one.
func (c *Conn) serveNotification(m inbound) {
	h := c.handler(m.Method)
	if h == nil {
		c.log.Debug("ignored a notification with no handler", "method", m.Method)
		return
	}
	c.handlerWG.Go(func() {
		if _, err := h(c.ctx, m.Params); err != nil {
			c.log.Debug("notification handler failed", "method", m.Method, "error", err)
		}
	})
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

// response is a JSON-RPC response. Result is a pointer so that a null
// result is still written.
type response struct {
	JSONRPC string           `json:"jsonrpc"`
	ID      json.RawMessage  `json:"id"`
	Result  *json.RawMessage `json:"result,omitempty"`
	Error   *RPCError        `json:"error,omitempty"`
}

// encodeResponse encodes a response with id, which is the request's id as
// received. A result that cannot be encoded becomes an internal error.
func encodeResponse(id json.RawMessage, result any, rpcErr *RPCError) []byte {
	r := response{JSONRPC: "2.0", ID: id}
	if rpcErr == nil {
		raw, err := marshal(result)
		if err != nil {
			rpcErr = &RPCError{Code: CodeInternal, Message: fmt.Sprintf("the result cannot be encoded as JSON: %v", err)}
		} else {
			r.Result = (*json.RawMessage)(&raw)
		}
	}
	r.Error = rpcErr

	msg, err := marshal(r)
	if err != nil {
		// Only invalid RPCError.Data can fail here.
		r.Error = &RPCError{Code: rpcErr.Code, Message: rpcErr.Message}
		msg, _ = marshal(r)
	}
	return msg
}
