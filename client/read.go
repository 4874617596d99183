package client

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"time"

	"github.com/coder/websocket"
	jsonv2 "github.com/go-json-experiment/json"

	"github.com/pgsidecar/sidecar/rpc"
)

// unmarshal decodes a message from the sidecar into v, a pointer. It tries
// the one-pass decoder first, which reads an event about three times as
// fast as encoding/json, and lets encoding/json decide anything the fast
// one refuses, from a zeroed v, so both accept the same messages.
func unmarshal(b []byte, v any) error {
	if jsonv2.Unmarshal(b, v, rpc.DecodeOptions) == nil {
		return nil
	}
	reflect.ValueOf(v).Elem().SetZero()
	return json.Unmarshal(b, v)
}

// inbound contains the members of one message from the sidecar. A member that
// is present, even as null, decodes to a non-nil RawMessage.
type inbound struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *RPCError       `json:"error"`
}

// readLoop is the connection's only reader. It runs until a read fails,
// which happens when either side closes the connection, and then tears the
// connection down.
func (c *Conn) readLoop() {
	for {
		c.idle.enterRead()
		typ, msg, err := c.ws.Read(c.ctx)
		c.idle.leaveRead()
		if err != nil {
			c.teardown(err)
			return
		}

		if typ != websocket.MessageText {
			c.log.Warn("ignored a binary message from the sidecar", "bytes", len(msg))
			continue
		}
		c.dispatch(msg)
	}
}

// dispatch handles one message. It may block while a subscription's
// Events channel is full.
func (c *Conn) dispatch(msg []byte) {
	var m inbound
	if err := unmarshal(msg, &m); err != nil {
		c.log.Warn("ignored a message from the sidecar that is not a JSON-RPC object", "error", err)
		return
	}

	switch {
	case m.Method != "" && m.ID != nil:
		c.peer.Receive(c.ctx, msg)
	case m.Method != "":
		c.handleNotification(m, msg)
	case m.ID != nil:
		c.handleResponse(m)
	default:
		c.log.Warn("ignored a message from the sidecar with neither method nor id")
	}
}

func (c *Conn) handleNotification(m inbound, msg []byte) {
	switch m.Method {
	case "event":
		c.routeEvent(m.Params)
	case "heartbeat":
		c.lastBeatNS.Store(time.Now().UnixNano())
	case "welcome":
		c.handleWelcome(m.Params)
	default:
		c.peer.Receive(c.ctx, msg)
	}
}

func (c *Conn) handleWelcome(params json.RawMessage) {
	select {
	case <-c.welcomed:
		c.log.Warn("ignored a second welcome notification")
		return
	default:
	}

	var p struct {
		ClientID   string `json:"client_id"`
		Epoch      string `json:"epoch"`
		Version    string `json:"version"`
		HeartbeatS int    `json:"heartbeat_s"`
	}
	if err := json.Unmarshal(params, &p); err != nil {
		// Dial would otherwise wait for its context to end.
		c.log.Warn("received a welcome notification with invalid params; using what could be read", "error", err)
	}

	c.welcome = Welcome{
		ClientID:  p.ClientID,
		Epoch:     p.Epoch,
		Version:   p.Version,
		Heartbeat: time.Duration(p.HeartbeatS) * time.Second,
	}
	close(c.welcomed)
}

// handleResponse completes the pending call with m's id. A call whose
// caller gave up still runs its abandon hook, so that, for example, an
// abandoned subscription is removed again.
func (c *Conn) handleResponse(m inbound) {
	id, err := strconv.ParseInt(string(m.ID), 10, 64)
	if err != nil {
		c.logUnmatched(m)
		return
	}

	c.mu.Lock()
	p, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !ok {
		c.logUnmatched(m)
		return
	}

	if m.Error != nil {
		p.complete(nil, m.Error)
		return
	}
	if m.Result == nil {
		p.complete(nil, &RPCError{Code: CodeInternal, Message: "the response has neither result nor error"})
		return
	}

	if p.abandoned {
		if p.onAbandon != nil {
			p.onAbandon(m.Result)
		}
		p.complete(m.Result, nil)
		return
	}
	if p.onResult != nil {
		if err := p.onResult(m.Result); err != nil {
			p.complete(nil, err)
			return
		}
	}
	p.complete(m.Result, nil)
}

func (c *Conn) logUnmatched(m inbound) {
	if bytes.Equal(m.ID, []byte("null")) && m.Error != nil {
		// The sidecar could not read a request's id, which means this
		// client sent something malformed.
		c.log.Warn("the sidecar rejected a message it could not parse", "code", m.Error.Code, "message", m.Error.Message)
		return
	}
	c.log.Debug("ignored a response to no pending call", "id", string(m.ID))
}

// teardown ends the connection after the reader's last read failed with
// readErr: it fails every pending call, closes every Events channel and
// finally closes done.
func (c *Conn) teardown(readErr error) {
	c.idle.stop()
	c.stopWaiting()
	_ = c.ws.CloseNow() // the read failed, so the connection is finished already

	c.mu.Lock()
	c.ended = true
	switch {
	case c.cause == ErrClosed:
		c.err = ErrClosed
	case c.cause != nil:
		c.err = &closedError{cause: c.cause}
	default:
		c.err = &closedError{cause: readErr}
	}
	err := c.err
	pending := c.pending
	subs := c.subs
	c.pending = nil
	c.subs = nil
	c.mu.Unlock()

	for _, p := range pending {
		p.complete(nil, err)
	}
	for _, sub := range subs {
		sub.end(err)
	}

	c.peer.Close(err)
	c.cancel()
	close(c.done)
}
