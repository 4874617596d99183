package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// pendingCall is a request waiting for its response. The reader completes
// it, or teardown fails it.
type pendingCall struct {
	done   chan struct{}
	result json.RawMessage
	err    error

	// onResult runs on the reader goroutine before the caller sees a
	// successful result, so that state it sets up, such as a subscription,
	// exists before the reader handles the next message. An error it
	// returns becomes the call's error.
	onResult func(result json.RawMessage) error

	// onAbandon runs on the reader goroutine instead of onResult when the
	// caller gave up before a successful result arrived.
	onAbandon func(result json.RawMessage)

	abandoned bool // set under Conn.mu
}

func (p *pendingCall) complete(result json.RawMessage, err error) {
	p.result = result
	p.err = err
	close(p.done)
}

// Call sends a request and waits for its response. It decodes a successful
// result into result unless result is nil. params may be nil, which omits
// them, or any value that encoding/json accepts.
//
// An error response is returned as an error that wraps *RPCError, so
// errors.As gives its code. When the connection ends first, the error
// matches ErrClosed and wraps the close reason.
//
// ctx bounds the wait for the response. If ctx ends first, Call returns
// ctx's error, but the request may still take effect on the sidecar. A
// write in progress is not interrupted, because cancelling a websocket
// write closes the connection.
func (c *Conn) Call(ctx context.Context, method string, params, result any) error {
	raw, err := c.call(ctx, method, params, nil, nil)
	if err != nil {
		return err
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(raw, result); err != nil {
		return fmt.Errorf("%s: decode result: %w", method, err)
	}
	return nil
}

// call sends a request with hooks that run on its result (see pendingCall).
func (c *Conn) call(ctx context.Context, method string, params any, onResult func(json.RawMessage) error, onAbandon func(json.RawMessage)) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", method, err)
	}

	id := c.nextID.Add(1)
	msg, err := encodeRequest(id, method, params)
	if err != nil {
		return nil, fmt.Errorf("%s: encode params: %w", method, err)
	}

	p := &pendingCall{done: make(chan struct{}), onResult: onResult, onAbandon: onAbandon}
	c.mu.Lock()
	if c.ended {
		err := c.err
		c.mu.Unlock()
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	c.pending[id] = p
	c.mu.Unlock()

	if err := c.write(msg); err != nil {
		c.forget(id)
		return nil, fmt.Errorf("%s: send request: %w", method, c.errOr(err))
	}

	select {
	case <-p.done:
	case <-ctx.Done():
		if c.abandon(id) {
			return nil, fmt.Errorf("%s: %w", method, ctx.Err())
		}
		<-p.done // the reader is completing the call right now
	}
	if p.err != nil {
		return nil, fmt.Errorf("%s: %w", method, p.err)
	}
	return p.result, nil
}

// abandon marks the call with id as given up and reports whether it was
// still waiting. A call without an abandon hook is forgotten at once.
func (c *Conn) abandon(id int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()

	p, ok := c.pending[id]
	if !ok {
		return false
	}
	if p.onAbandon == nil {
		delete(c.pending, id)
	} else {
		p.abandoned = true
	}
	return true
}

func (c *Conn) forget(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pending, id)
}

// errOr returns the connection's error if it has ended, and err otherwise.
func (c *Conn) errOr(err error) error {
	select {
	case <-c.done:
		return c.Err()
	default:
		return err
	}
}

// Notify sends a notification, a request without an id that gets no
// response, for example to an app.<name> method. It returns once the
// message is written. ctx is checked before writing only, for the reason
// given on Call.
func (c *Conn) Notify(ctx context.Context, method string, params any) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	if err := c.Err(); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}

	msg, err := encodeMessage(outbound{Method: method, Params: params})
	if err != nil {
		return fmt.Errorf("%s: encode params: %w", method, err)
	}
	if err := c.write(msg); err != nil {
		return fmt.Errorf("%s: send notification: %w", method, c.errOr(err))
	}
	return nil
}

// Ping sends a ping request and waits for the sidecar's "pong".
func (c *Conn) Ping(ctx context.Context) error {
	return c.Call(ctx, "ping", nil, nil)
}

// Publish publishes data on topic and returns the event's id. A durable
// event is stored and committed when Publish returns. An ephemeral one
// (durable false) is only broadcast, and its id is 0. data may be any value
// that encoding/json accepts, including a json.RawMessage.
func (c *Conn) Publish(ctx context.Context, topic string, data any, durable bool) (int64, error) {
	params := struct {
		Topic   string `json:"topic"`
		Data    any    `json:"data"`
		Durable bool   `json:"durable"`
	}{topic, data, durable}

	var result struct {
		ID int64 `json:"id"`
	}
	if err := c.Call(ctx, "publish", params, &result); err != nil {
		return 0, err
	}
	return result.ID, nil
}

// AuthResult is the result of an auth request.
type AuthResult struct {
	// Subject is the token's sub claim.
	Subject string

	// Expires is when the token expires. The sidecar then closes the
	// connection with code 1008, unless Auth has been called again with a
	// newer token.
	Expires time.Time

	// Removed lists the subscriptions that the new token no longer allows.
	// The sidecar has removed them, and their Events channels are closed.
	Removed []string
}

// Auth authenticates a connection that opened without a token, or replaces
// the token before it expires. A replacement must have the same subject.
// Subscriptions that the new token does not allow are removed, and their
// Err becomes ErrRemoved.
func (c *Conn) Auth(ctx context.Context, token string) (AuthResult, error) {
	var result AuthResult
	onResult := func(raw json.RawMessage) error {
		var err error
		result, err = c.applyAuthResult(raw)
		return err
	}
	onAbandon := func(raw json.RawMessage) {
		_, _ = c.applyAuthResult(raw)
	}

	params := map[string]string{"token": token}
	if _, err := c.call(ctx, "auth", params, onResult, onAbandon); err != nil {
		return AuthResult{}, err
	}
	return result, nil
}

// applyAuthResult decodes an auth result and ends the subscriptions it
// lists as removed.
func (c *Conn) applyAuthResult(raw json.RawMessage) (AuthResult, error) {
	var result struct {
		Sub     string   `json:"sub"`
		Exp     int64    `json:"exp"`
		Removed []string `json:"removed"`
	}
	if err := json.Unmarshal(raw, &result); err != nil {
		return AuthResult{}, fmt.Errorf("decode result: %w", err)
	}

	c.endSubscriptions(result.Removed, ErrRemoved)
	return AuthResult{Subject: result.Sub, Expires: time.Unix(result.Exp, 0), Removed: result.Removed}, nil
}

// outbound is a request or notification sent by the client. A
// notification has a nil ID.
type outbound struct {
	JSONRPC string `json:"jsonrpc"`
	ID      any    `json:"id,omitempty"`
	Method  string `json:"method"`
	Params  any    `json:"params,omitempty"`
}

func encodeRequest(id int64, method string, params any) ([]byte, error) {
	return encodeMessage(outbound{ID: id, Method: method, Params: params})
}

func encodeMessage(m outbound) ([]byte, error) {
	m.JSONRPC = "2.0"
	if raw, ok := m.Params.(json.RawMessage); ok && raw == nil {
		m.Params = nil
	}
	return marshal(m)
}

// marshal encodes v without HTML escaping, so that data reaches the sidecar
// as written.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
