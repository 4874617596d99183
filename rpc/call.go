package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// pendingCall is an outgoing request waiting for its response. The
// goroutine that removes it from Peer.pending finishes it: Receive with the
// response, Close with the close error, or Call itself when the caller
// gives up.
type pendingCall struct {
	done   chan struct{}
	result json.RawMessage
	err    error
}

func (pc *pendingCall) finish(result json.RawMessage, err error) {
	pc.result = result
	pc.err = err
	close(pc.done)
}

// Call sends a request to the remote side and waits for its response. The
// request ids are integers from a counter of this Peer. params may be nil,
// which omits them, or any value that encoding/json encodes as an object or
// an array. A successful result is decoded into result with
// json.Unmarshal, unless result is nil; a *json.RawMessage receives the
// result as sent.
//
// The error of a failed Call starts with the method name and wraps:
//   - the remote's *Error when it responded with an error, so that
//     errors.As gives its code, message and data;
//   - context.DeadlineExceeded, with the text "timed out after" and the
//     time waited, when ctx's deadline passed first. A ctx without a
//     deadline gets PeerConfig.CallTimeout;
//   - context.Canceled when ctx was cancelled first;
//   - ErrClosed and the cause given to Close when the Peer closed first,
//     or was already closed;
//   - the error of PeerConfig.Send when the request could not be sent.
//
// A Call that ends before its response does not stop the remote handler,
// and the late response is dropped.
func (p *Peer) Call(ctx context.Context, method string, params any, result any) error {
	raw, err := p.call(ctx, method, params)
	if err != nil {
		return fmt.Errorf("call %q: %w", method, err)
	}

	if result == nil {
		return nil
	}
	if err := json.Unmarshal(raw, result); err != nil {
		return fmt.Errorf("call %q: decode result: %w", method, err)
	}
	return nil
}

// call sends a request and returns the raw result.
func (p *Peer) call(ctx context.Context, method string, params any) (json.RawMessage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	start := time.Now()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.callTimeout)
		defer cancel()
	}

	pc, id, err := p.sendRequest(method, params)
	if err != nil {
		return nil, err
	}

	select {
	case <-pc.done:
		return pc.result, pc.err
	case <-ctx.Done():
	}

	if !p.abandon(id) {
		// The response or Close came at the same moment as ctx's end and
		// has finished the call, so Call returns that outcome.
		<-pc.done
		return pc.result, pc.err
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("timed out after %s: %w", time.Since(start).Round(time.Millisecond), ctx.Err())
	}
	return nil, ctx.Err()
}

// sendRequest registers a pending call and sends its request.
func (p *Peer) sendRequest(method string, params any) (*pendingCall, int64, error) {
	pc := &pendingCall{done: make(chan struct{})}

	p.mu.Lock()
	if p.closed {
		err := p.closeErr
		p.mu.Unlock()
		return nil, 0, err
	}
	p.nextID++
	id := p.nextID
	p.pending[id] = pc
	p.mu.Unlock()

	msg := EncodeRequest(strconv.AppendInt(nil, id, 10), method, params)
	if msg == nil {
		p.abandon(id)
		return nil, 0, paramsEncodingError(params)
	}

	// The call is pending before its request leaves, because the response
	// may arrive before Send returns.
	if err := p.send(msg); err != nil {
		p.abandon(id)
		return nil, 0, fmt.Errorf("send request: %w", err)
	}
	return pc, id, nil
}

// abandon removes a pending call that its caller gave up. It returns false
// when a response or Close has already taken the call.
func (p *Peer) abandon(id int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()

	if _, ok := p.pending[id]; !ok {
		return false
	}
	delete(p.pending, id)
	return true
}

// complete finishes the pending call whose id the response carries.
func (p *Peer) complete(m Message) {
	var pc *pendingCall
	if id, err := strconv.ParseInt(string(m.ID), 10, 64); err == nil {
		p.mu.Lock()
		pc = p.pending[id]
		delete(p.pending, id)
		p.mu.Unlock()
	}

	if pc == nil {
		attrs := []any{"id", idString(m.ID)}
		if m.Error != nil {
			attrs = append(attrs, "error", m.Error)
		}
		p.log.Debug("rpc response dropped: no call is waiting for its id", attrs...)
		return
	}

	if m.Error != nil {
		pc.finish(nil, m.Error)
		return
	}
	pc.finish(m.Result, nil)
}

// Notify sends a notification, a request without an id that gets no
// response. params are as for Call. Notify returns once PeerConfig.Send
// has returned. Its error wraps ErrClosed after Close, or the error of
// Send.
func (p *Peer) Notify(method string, params any) error {
	p.mu.Lock()
	closeErr := p.closeErr
	p.mu.Unlock()
	if closeErr != nil {
		return fmt.Errorf("notify %q: %w", method, closeErr)
	}

	msg := EncodeNotification(method, params)
	if msg == nil {
		return fmt.Errorf("notify %q: %w", method, paramsEncodingError(params))
	}
	if err := p.send(msg); err != nil {
		return fmt.Errorf("notify %q: send: %w", method, err)
	}
	return nil
}

// paramsEncodingError explains why the Encode functions returned nil for
// params.
func paramsEncodingError(params any) error {
	_, err := json.Marshal(params)
	if err == nil {
		err = errors.New("not valid JSON")
	}
	return fmt.Errorf("encode params: %w", err)
}
