package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pgsidecar/sidecar/client"
)

const (
	// dialConcurrency is how many subscribers connect at once.
	dialConcurrency = 16

	// warmupEvents are published, and awaited by every subscriber, before
	// a run is measured, so that connections, caches and prepared
	// statements are warm. They count in no figure.
	warmupEvents = 5

	// warmupTimeout bounds the wait for the warm-up events.
	warmupTimeout = 30 * time.Second
)

// receiver is one subscriber: a websocket connection with one
// subscription, and what it recorded. Its fields are written only by the
// goroutine that runs collect, and read after collect has returned.
type receiver struct {
	conn *client.Conn
	sub  *client.Subscription

	latencies  []time.Duration // receive time minus the event's ts
	received   int64
	outOfOrder int64     // events whose id was not above the previous one
	lastID     int64     // highest id seen
	lastAt     time.Time // when the last event arrived
	err        error     // cause of an early end of the subscription, or nil
}

// dialReceivers connects n subscribers to topic, each on its own
// websocket, with an events buffer of buffer. httpClient performs the
// upgrade requests, and nil means http.DefaultClient. On error it closes
// the ones it opened.
func dialReceivers(ctx context.Context, t *target, n int, topic string, buffer int, httpClient *http.Client) ([]*receiver, error) {
	// One subject per subscriber, as in production: the sidecar limits the
	// connections of one subject (--max-connections-per-subject).
	tokens := make([]string, n)
	for i := range tokens {
		token, err := signToken(t, fmt.Sprintf("bench-subscriber-%d", i))
		if err != nil {
			return nil, err
		}
		tokens[i] = token
	}

	receivers := make([]*receiver, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(dialConcurrency)
	for i := range receivers {
		g.Go(func() error {
			conn, err := client.Dial(gctx, t.WSURL, client.Options{Token: tokens[i], HTTPClient: httpClient})
			if err != nil {
				return fmt.Errorf("subscriber %d: %w", i, err)
			}
			receivers[i] = &receiver{conn: conn} // closed by closeReceivers, also on error

			sub, err := conn.Subscribe(gctx, []string{topic}, client.WithBuffer(buffer))
			if err != nil {
				return fmt.Errorf("subscriber %d: subscribe to %s: %w", i, topic, err)
			}
			receivers[i].sub = sub
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		closeReceivers(receivers)
		return nil, err
	}
	return receivers, nil
}

// closeReceivers closes every connection of receivers; nil entries are
// skipped.
func closeReceivers(receivers []*receiver) {
	var wg sync.WaitGroup
	for _, r := range receivers {
		if r != nil {
			wg.Go(func() { _ = r.conn.CloseNow() })
		}
	}
	wg.Wait()
}

// warmUp publishes warmupEvents events on topic and waits until every
// receiver has received them.
func warmUp(ctx context.Context, receivers []*receiver, pub publisher, topic string) error {
	ctx, cancel := context.WithTimeout(ctx, warmupTimeout)
	defer cancel()

	for i := range warmupEvents {
		if err := pub.publish(ctx, topic, makePayload(-1-i, 20)); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	for i, r := range receivers {
		for range warmupEvents {
			select {
			case ev, ok := <-r.sub.Events():
				if !ok {
					return fmt.Errorf("warm-up: subscriber %d: subscription ended: %w", i, r.sub.Err())
				}
				r.lastID = max(r.lastID, ev.ID)
			case <-ctx.Done():
				return fmt.Errorf("warm-up: subscriber %d did not receive %d events within %s: %w", i, warmupEvents, warmupTimeout, ctx.Err())
			}
		}
	}
	return nil
}

// goal is the number of events each receiver waits for. It is unknown
// while the writers run and set once when they have finished.
type goal struct {
	ready chan struct{} // closed by set
	n     int64         // written before ready is closed
}

func newGoal() *goal { return &goal{ready: make(chan struct{})} }

func (g *goal) set(n int64) {
	g.n = n
	close(g.ready)
}

// collect records events until the receiver has received the goal's
// number of events, the subscription ends, or ctx ends.
func (r *receiver) collect(ctx context.Context, g *goal) {
	events := r.sub.Events()
	ready := g.ready
	want := int64(-1)
	for want < 0 || r.received < want {
		select {
		case ev, ok := <-events:
			if !ok {
				r.err = fmt.Errorf("subscription ended: %w", r.sub.Err())
				return
			}
			r.record(ev, time.Now())
		case <-ready:
			want = g.n
			ready = nil
		case <-ctx.Done():
			return
		}
	}
}

// record counts one event received at now.
func (r *receiver) record(ev client.Event, now time.Time) {
	r.received++
	r.lastAt = now
	if ev.ID <= r.lastID {
		r.outOfOrder++
	}
	r.lastID = max(r.lastID, ev.ID)

	// ts is the database clock, and the database runs on this machine,
	// so both clocks are the same system clock.
	if !ev.TS.IsZero() {
		r.latencies = append(r.latencies, now.Sub(ev.TS))
	}
}

// collectAll runs collect on every receiver, calls publish, sets the goal
// to the events it published, and waits for the receivers to finish, at
// most drainTimeout after publish has returned. It returns publish's
// result and error.
func collectAll(ctx context.Context, receivers []*receiver, drainTimeout time.Duration, publish func() (int64, error)) (int64, error) {
	collectCtx, stop := context.WithCancel(ctx)
	defer stop()

	g := newGoal()
	var wg sync.WaitGroup
	for _, r := range receivers {
		wg.Go(func() { r.collect(collectCtx, g) })
	}

	published, err := publish()
	if err != nil {
		stop()
		wg.Wait()
		return 0, err
	}
	g.set(published)

	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	timer := time.NewTimer(drainTimeout)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
		stop()
		<-done
	}
	return published, nil
}

// deliveryTotals adds up what receivers recorded.
type deliveryTotals struct {
	delivered  int64
	outOfOrder int64
	errors     []error
	latencies  []time.Duration
}

func totals(receivers []*receiver) deliveryTotals {
	var d deliveryTotals
	for _, r := range receivers {
		d.delivered += r.received
		d.outOfOrder += r.outOfOrder
		d.latencies = append(d.latencies, r.latencies...)
		if r.err != nil {
			d.errors = append(d.errors, r.err)
		}
	}
	return d
}
