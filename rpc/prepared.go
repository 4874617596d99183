package rpc

import (
	"context"
)

// Prepared is the work for one incoming request or notification, made by
// the Preparer on the read loop after every check that needs no waiting.
type Prepared struct {
	// Run computes the result. It runs on its own goroutine, counted
	// against PeerConfig.MaxInFlight, unless Inline is set.
	Run func(ctx context.Context) (any, error)
	// Inline runs Run on the read loop, before Receive returns, so that
	// the next message sees its effect (authentication, for example). Run
	// must then return quickly.
	Inline bool
	// Dropped, if set, is called instead of Run when the work is not run:
	// too many requests were in flight, or the Peer closed.
	Dropped func()
}

// Preparer checks an incoming request or notification that no registered
// handler takes, and returns its work, or the error to respond with.
type Preparer func(ctx context.Context, m Message) (Prepared, *Error)

// Replier is a result that needs a step after its response was sent: Peer
// sends ReplyValue as the result, then calls AfterReply. For a
// notification, Peer calls AfterReply alone. The sidecar starts a
// subscription's events this way, after the subscribe result.
type Replier interface {
	ReplyValue() any
	AfterReply()
}

// SetPreparer makes f take every request and notification that no handler
// registered with Register, Handle or HandlePrefix takes. Without it they
// get -32601. Call it before the first Receive.
func (p *Peer) SetPreparer(f Preparer) {
	p.preparer = f
}

// dispatchPrepared runs the Preparer's work for m.
func (p *Peer) dispatchPrepared(ctx context.Context, m Message) {
	prep, rerr := p.preparer(ctx, m)
	if rerr != nil {
		p.reject(m, rerr)
		return
	}

	if prep.Inline {
		result, err := p.invoke(ctx, m, prep.Run)
		p.respond(m, result, err)
		return
	}

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		if prep.Dropped != nil {
			prep.Dropped()
		}
		return
	}
	if p.running >= p.maxInFlight {
		p.mu.Unlock()
		if prep.Dropped != nil {
			prep.Dropped()
		}
		p.reject(m, Errorf(CodeRateLimited,
			"too many requests in flight on this connection (limit %d): wait for responses before sending more", p.maxInFlight))
		return
	}
	p.running++
	p.handlerWG.Add(1)
	p.mu.Unlock()

	go p.run(ctx, m, prep.Run)
}
