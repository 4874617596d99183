package rpc

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Register sets h as p's handler of requests and notifications for method.
// The params are decoded into a new P with DecodeParams before the request
// counts against PeerConfig.MaxInFlight, so a params error gets its -32602
// response at once, naming the member at fault. h then runs on
// its own goroutine and its R is encoded as the result. For the errors h
// may return, see Peer.
//
// Register panics when method is empty, h is nil or method already has a
// handler. It may be called at any time, also while messages arrive.
func Register[P, R any](p *Peer, method string, h func(ctx context.Context, params P) (R, error)) {
	if h == nil {
		panic(fmt.Sprintf("rpc: nil handler for method %q", method))
	}

	p.handlers.add(method, handler{
		prepare: func(_ string, raw json.RawMessage) (work, *Error) {
			var params P
			if e := DecodeParams(raw, &params); e != nil {
				return nil, e
			}
			return func(ctx context.Context) (any, error) {
				return h(ctx, params)
			}, nil
		},
	})
}

// Handle sets h as p's handler of requests and notifications for method.
// h gets the params as sent: nil when absent, otherwise a JSON object
// or array (any other params get -32602 at once). It suits handlers that
// forward the params without decoding them. The result is encoded as JSON,
// and a json.RawMessage result is sent verbatim. h runs on its own
// goroutine, as with Register.
//
// Handle panics when method is empty, h is nil or method already has a
// handler.
func (p *Peer) Handle(method string, h func(ctx context.Context, params json.RawMessage) (any, error)) {
	if h == nil {
		panic(fmt.Sprintf("rpc: nil handler for method %q", method))
	}

	p.handlers.add(method, handler{
		prepare: func(_ string, raw json.RawMessage) (work, *Error) {
			if e := CheckParams(raw); e != nil {
				return nil, e
			}
			return func(ctx context.Context) (any, error) {
				return h(ctx, raw)
			}, nil
		},
	})
}

// HandlePrefix sets h as p's handler of every method that starts with
// prefix and has no handler of its own, such as all "app." methods that are forwarded
// elsewhere. h gets the full method name, and it should return
// MethodNotFound(method) for names it does not serve. When several prefixes
// match, the longest wins. Otherwise h behaves as a Handle handler.
//
// HandlePrefix panics when prefix is empty, h is nil or prefix already has
// a handler.
func (p *Peer) HandlePrefix(prefix string, h func(ctx context.Context, method string, params json.RawMessage) (any, error)) {
	if h == nil {
		panic(fmt.Sprintf("rpc: nil handler for prefix %q", prefix))
	}

	p.handlers.addPrefix(prefix, handler{
		prepare: func(method string, raw json.RawMessage) (work, *Error) {
			if e := CheckParams(raw); e != nil {
				return nil, e
			}
			return func(ctx context.Context) (any, error) {
				return h(ctx, method, raw)
			}, nil
		},
	})
}

// HandleNotification sets h as p's handler of notifications for method. h
// runs on the goroutine that calls Receive. Notifications of such a
// method are therefore handled one at a time in the order they arrived, which
// Register and Handle do not promise. They do not count against
// PeerConfig.MaxInFlight. A request for method, that is, one with an id,
// gets a -32600 error.
//
// h must return quickly, because no other message is read while it runs: it
// should hand slow work to another goroutine. It must not wait for a Call
// on the same Peer, whose response could only be read after h returns, so
// such a Call would fail with its timeout. A panic in h is recovered and
// logged. ctx is the ctx passed to Receive.
//
// HandleNotification panics when method is empty, h is nil or method
// already has a handler.
func (p *Peer) HandleNotification(method string, h func(ctx context.Context, params json.RawMessage)) {
	if h == nil {
		panic(fmt.Sprintf("rpc: nil handler for method %q", method))
	}
	p.handlers.add(method, handler{inline: h})
}

// work is a request's handler bound to its params.
type work func(ctx context.Context) (any, error)

// handler is a registered method. Exactly one field is set.
type handler struct {
	// prepare checks the params on the goroutine that calls Receive and
	// returns the work to run on the request's own goroutine.
	prepare func(method string, params json.RawMessage) (work, *Error)

	// inline handles a notification on the goroutine that calls Receive.
	inline func(ctx context.Context, params json.RawMessage)
}

type prefixHandler struct {
	prefix string
	h      handler
}

// handlerTable maps method names to handlers. It is safe for concurrent
// use.
type handlerTable struct {
	mu       sync.RWMutex
	exact    map[string]handler
	prefixes []prefixHandler // longest prefix first
}

func (t *handlerTable) add(method string, h handler) {
	if method == "" {
		panic("rpc: handler registered for an empty method name")
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if _, dup := t.exact[method]; dup {
		panic(fmt.Sprintf("rpc: method %q already has a handler", method))
	}
	if t.exact == nil {
		t.exact = make(map[string]handler)
	}
	t.exact[method] = h
}

func (t *handlerTable) addPrefix(prefix string, h handler) {
	if prefix == "" {
		panic("rpc: handler registered for an empty method prefix")
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ph := range t.prefixes {
		if ph.prefix == prefix {
			panic(fmt.Sprintf("rpc: prefix %q already has a handler", prefix))
		}
	}
	t.prefixes = append(t.prefixes, prefixHandler{prefix: prefix, h: h})
	slices.SortStableFunc(t.prefixes, func(a, b prefixHandler) int {
		return cmp.Compare(len(b.prefix), len(a.prefix))
	})
}

// lookup returns the handler for method: its own, or else the one of the
// longest matching prefix.
func (t *handlerTable) lookup(method string) (handler, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()

	if h, ok := t.exact[method]; ok {
		return h, true
	}
	for _, ph := range t.prefixes {
		if strings.HasPrefix(method, ph.prefix) {
			return ph.h, true
		}
	}
	return handler{}, false
}
