package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

const (
	// publishTimeout bounds one transaction of a publisher, connect included.
	publishTimeout = 10 * time.Second

	// maxPublishBackoff is the longest pause after a failed publish.
	maxPublishBackoff = 2 * time.Second

	// maxLag is how far a publisher may fall behind its schedule, after an
	// outage for example, before it skips ahead instead of catching up
	// with a burst.
	maxLag = time.Second
)

// publishPath is one way of publishing: SQL, HTTP or websocket. It is
// used by one goroutine.
type publishPath interface {
	// connect makes sure the path can send, connecting when needed.
	connect(ctx context.Context) error
	// send publishes b and records each event's outcome in l. It returns
	// the error that made a publish fail, if one did.
	send(ctx context.Context, b batch, l *ledger) error
	close()
}

// publisher publishes transactions on one path at a steady rate until its
// context ends.
type publisher struct {
	path          publishPath
	ledger        *ledger
	rate          float64 // events per second
	rng           *rand.Rand
	largeFraction float64
	maxBatches    int // bounds the loop

	published *atomic.Int64 // events acknowledged, shared by all publishers for progress lines
	warn      func(publisher string, err error)
}

// run publishes until ctx ends or maxBatches transactions were sent. A
// transaction in progress when ctx ends is finished, within
// publishTimeout, so that few outcomes stay uncertain.
func (p *publisher) run(ctx context.Context) {
	defer p.path.close()

	next := time.Now()
	var backoff time.Duration
	for range p.maxBatches {
		if !sleepUntil(ctx, next) {
			return
		}

		callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
		err := p.path.connect(callCtx)
		var sent int
		if err == nil {
			b := p.ledger.newBatch(p.rng, p.largeFraction)
			sent = len(b.events)
			err = p.path.send(callCtx, b, p.ledger)
			p.countAcked(b)
		}
		cancel()

		now := time.Now()
		next = next.Add(time.Duration(float64(max(sent, 1)) / p.rate * float64(time.Second)))
		if err != nil {
			p.ledger.fail(err)
			p.warn(p.ledger.publisher, err)
			backoff = min(max(2*backoff, 100*time.Millisecond), maxPublishBackoff)
			next = later(next, now.Add(backoff))
		} else {
			backoff = 0
		}
		if now.Sub(next) > maxLag {
			next = now
		}
	}
}

// countAcked adds the acknowledged events of b to the shared counter.
func (p *publisher) countAcked(b batch) {
	var n int64
	for _, ev := range b.events {
		if p.ledger.events[ev.seq-1].outcome == outcomeAcked {
			n++
		}
	}
	p.published.Add(n)
}

// sleepUntil waits until t or until ctx ends, and reports whether t came
// first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// errNotSent reports a batch that no instance accepted a connection for.
var errNotSent = errors.New("no sidecar instance accepted the connection")

// newPublishers creates the publishers that cfg sets, each with its
// ledger. rate is split evenly between them.
func newPublishers(cfg config, e *environment, seed uint64, published *atomic.Int64, warn func(string, error)) ([]*publisher, error) {
	type pathCount struct {
		name  string
		count int
	}
	paths := []pathCount{{"sql", cfg.SQLPublishers}, {"http", cfg.HTTPPublishers}, {"ws", cfg.WSPublishers}}
	total := cfg.SQLPublishers + cfg.HTTPPublishers + cfg.WSPublishers
	rate := cfg.Rate / float64(total)

	var pubs []*publisher
	for _, pc := range paths {
		for i := 1; i <= pc.count; i++ {
			name := fmt.Sprintf("%s-%d", pc.name, i)
			rng := rand.New(rand.NewPCG(seed, uint64(len(pubs))+1000))

			var path publishPath
			switch pc.name {
			case "sql":
				path = &sqlPath{url: e.dbURL + "&application_name=soak-" + name}
			case "http":
				path = newHTTPPath(e, rng)
			case "ws":
				token, err := e.signToken("soak-"+name, tokenTTL(cfg))
				if err != nil {
					return nil, err
				}
				path = &wsPath{sidecars: e.sidecars, token: token, rng: rng}
			}

			pubs = append(pubs, &publisher{
				path:          path,
				ledger:        &ledger{publisher: name, path: pc.name},
				rate:          rate,
				rng:           rng,
				largeFraction: cfg.LargeFraction,
				maxBatches:    int(cfg.Duration.Seconds()*rate*2) + 1000,
				published:     published,
				warn:          warn,
			})
		}
	}
	return pubs, nil
}

// tokenTTL is the lifetime of the soak's client tokens: longer than the
// whole run, so that no connection is closed because its token expired.
func tokenTTL(cfg config) time.Duration {
	return cfg.Duration + cfg.SettleTimeout + 2*cfg.RecoveryTimeout + time.Hour
}
