package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/sidecar/client"
	"github.com/pgsidecar/sidecar/topic"
)

const (
	// subscribeTimeout bounds one subscribe request.
	subscribeTimeout = 10 * time.Second

	// subscriptionBuffer is the capacity of each subscription's Events
	// channel. It is small so that a subscriber that stops reading stalls
	// its connection soon.
	subscriptionBuffer = 256

	// maxReconnectBackoff is the longest pause between two connect
	// attempts of a subscriber.
	maxReconnectBackoff = 2 * time.Second

	// maxConnRecords bounds each subscriber's connection log.
	maxConnRecords = 2000
)

// subscriptionSpecs returns the subscriptions of subscriber i, each a list
// of patterns. The mix covers one pattern and several patterns per
// subscription, and two overlapping subscriptions on one connection,
// which each receive the events they match.
func subscriptionSpecs(i int) [][]string {
	switch i % 4 {
	case 0:
		return [][]string{{topicPrefix + ">"}}
	case 1:
		return [][]string{{topicPrefix + "sql.>"}, {topicPrefix + "*.a"}}
	case 2:
		return [][]string{{topicPrefix + "http.*", topicPrefix + "ws.>"}}
	default:
		return [][]string{{topicPrefix + "*.b", topicPrefix + "*.c"}}
	}
}

// subscriptionState is the record of one subscription's deliveries, kept
// across reconnects. Its methods are safe for concurrent use.
type subscriptionState struct {
	name     string // such as s1.0
	patterns []string
	matchers []topic.Pattern

	mu         sync.Mutex
	subscribed bool  // head is set
	resumable  bool  // last and epoch are a resume point
	head       int64 // head of the first subscribe: later ids are expected
	last       int64 // highest id received, the resume point
	epoch      string
	deliveries []delivery
	refusals   []string // resumes refused by the sidecar
	watch      recoveryWatch
}

// delivery is one event as received: its id and a hash of its topic and
// data (see eventHash).
type delivery struct {
	id   int64
	hash uint64
}

// recoveryWatch records when the first event published after a fault
// arrived, judged by the event's ts, the database clock when it was
// published. Postgres runs on this machine, so ts and time.Now read the
// same clock.
type recoveryWatch struct {
	armed    bool
	since    time.Time
	passedAt time.Time
}

func newSubscriptionState(name string, patterns []string) (*subscriptionState, error) {
	st := &subscriptionState{name: name, patterns: patterns}
	for _, p := range patterns {
		m, err := topic.Parse(p)
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", p, err)
		}
		st.matchers = append(st.matchers, m)
	}
	return st, nil
}

// matches reports whether the subscription's patterns match t.
func (st *subscriptionState) matches(t string) bool {
	for _, m := range st.matchers {
		if m.Match(t) {
			return true
		}
	}
	return false
}

// record stores one received event.
func (st *subscriptionState) record(ev client.Event, now time.Time) {
	h := eventHash(ev.Topic, ev.Data)

	st.mu.Lock()
	defer st.mu.Unlock()
	st.deliveries = append(st.deliveries, delivery{id: ev.ID, hash: h})
	st.last = max(st.last, ev.ID)
	if st.watch.armed && st.watch.passedAt.IsZero() && ev.TS.After(st.watch.since) {
		st.watch.passedAt = now
	}
}

// arm starts a recovery watch, which passes once an event published after
// since arrives.
func (st *subscriptionState) arm(since time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.watch = recoveryWatch{armed: true, since: since}
}

// passedAt returns when the armed watch passed, or the zero time.
func (st *subscriptionState) passedAt() time.Time {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.watch.passedAt
}

// highest returns the highest id received.
func (st *subscriptionState) highest() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.last
}

// firstHead returns the head of the first subscribe.
func (st *subscriptionState) firstHead() int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.head
}

// resumePoint returns the options for the next subscribe: none the first
// time, since and epoch after that.
func (st *subscriptionState) resumePoint() []client.SubscribeOption {
	st.mu.Lock()
	defer st.mu.Unlock()
	opts := []client.SubscribeOption{client.WithBuffer(subscriptionBuffer)}
	if st.resumable {
		opts = append(opts, client.WithSince(st.last), client.WithEpoch(st.epoch))
	}
	return opts
}

// confirm records the result of a subscribe. The first one sets the head
// above which every matching event is expected. A subscribe without a
// resume point sets the resume point.
func (st *subscriptionState) confirm(sub *client.Subscription) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !st.subscribed {
		st.subscribed = true
		st.head = sub.Head()
	}
	if !st.resumable {
		st.resumable = true
		st.last = max(st.last, sub.Head())
		st.epoch = sub.Epoch()
	}
}

// restart clears the resume point after the sidecar refused it, so that
// the next subscribe starts from the current head. The events in between
// then count as missing, because the expected events stay those above
// the first head.
func (st *subscriptionState) restart(reason string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.resumable = false
	st.refusals = append(st.refusals, reason)
}

// connRecord is one connection of a subscriber. Times are offsets from the
// start of publishing.
type connRecord struct {
	Sidecar   int
	Opened    time.Duration
	Ended     time.Duration
	CloseCode int // -1 when no close frame arrived
	Reason    string
}

// stallRequest is a request to a subscriber to stop reading for d. The
// subscriber closes begun when it stops, and done once it reads again.
type stallRequest struct {
	d       time.Duration
	started time.Time // set by the subscriber before begun is closed
	begun   chan struct{}
	done    chan struct{}
}

// subscriber is one websocket connection with one or two subscriptions.
// On a dropped connection it reconnects to any instance and resumes each
// subscription after the last id it received. Its goroutines are run and
// the readers of its current session.
type subscriber struct {
	name      string
	subs      []*subscriptionState
	sidecars  []*sidecarSlot
	token     string
	rng       *rand.Rand    // used by run only
	start     time.Time     // start of publishing, the origin of connRecord times
	delivered *atomic.Int64 // deliveries of all subscribers, for progress lines
	stalls    chan *stallRequest
	sidecar   atomic.Int32 // index of the instance it is connected to, or -1

	mu         sync.Mutex
	resume     chan struct{} // non-nil during a stall, closed when it ends
	conns      []connRecord
	dialErrors int
	lastErr    string
}

// newSubscriber prepares subscriber i.
func newSubscriber(i int, e *environment, token string, rng *rand.Rand, delivered *atomic.Int64) (*subscriber, error) {
	s := &subscriber{
		name:      fmt.Sprintf("s%d", i),
		sidecars:  e.sidecars,
		token:     token,
		rng:       rng,
		delivered: delivered,
		stalls:    make(chan *stallRequest, 1),
	}
	s.sidecar.Store(-1)
	for j, patterns := range subscriptionSpecs(i) {
		st, err := newSubscriptionState(fmt.Sprintf("%s.%d", s.name, j), patterns)
		if err != nil {
			return nil, err
		}
		s.subs = append(s.subs, st)
	}
	return s, nil
}

// session is one connection of a subscriber, with a goroutine per
// subscription that records its events.
type session struct {
	conn    *client.Conn
	sidecar int // index of the instance
	opened  time.Time
	readers sync.WaitGroup
}

// open connects to a random instance and subscribes every subscription,
// resuming where each left off. Each subscription is read from as soon as
// it is confirmed: a replay fills its channel at once, and the connection's
// reader, stalled on that channel, would leave the next subscribe without
// a response. The readers stop when the connection ends or ctx ends.
func (s *subscriber) open(ctx context.Context) (*session, error) {
	conn, inst, err := dialAny(ctx, s.sidecars, s.rng, client.Options{Token: s.token})
	if err != nil {
		return nil, err
	}

	ses := &session{conn: conn, sidecar: inst, opened: time.Now()}
	for _, st := range s.subs {
		sub, err := s.subscribe(ctx, conn, st)
		if err != nil {
			_ = conn.CloseNow()
			ses.readers.Wait()
			return nil, fmt.Errorf("%s: %w", st.name, err)
		}
		ses.readers.Go(func() { s.read(ctx, conn, st, sub) })
	}
	return ses, nil
}

// subscribe subscribes st on conn. When the sidecar refuses the resume
// point as history expired, it records that and subscribes from the head.
func (s *subscriber) subscribe(ctx context.Context, conn *client.Conn, st *subscriptionState) (*client.Subscription, error) {
	for attempt := 1; ; attempt++ {
		subCtx, cancel := context.WithTimeout(ctx, subscribeTimeout)
		sub, err := conn.Subscribe(subCtx, st.patterns, st.resumePoint()...)
		cancel()

		var rpcErr *client.RPCError
		if attempt == 1 && errors.As(err, &rpcErr) && rpcErr.Code == client.CodeHistoryExpired {
			st.restart(rpcErr.Error())
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("subscribe %v: %w", st.patterns, err)
		}
		st.confirm(sub)
		return sub, nil
	}
}

// read records the events of sub until its channel closes or ctx ends,
// pausing while the subscriber stalls. A subscription ends without its
// connection only when the sidecar removed it. read then closes the
// connection, so that the subscriber reconnects and subscribes again.
func (s *subscriber) read(ctx context.Context, conn *client.Conn, st *subscriptionState, sub *client.Subscription) {
	for {
		if !s.waitUnstalled(ctx) {
			return
		}
		select {
		case ev, ok := <-sub.Events():
			if !ok {
				_ = conn.CloseNow()
				return
			}
			st.record(ev, time.Now())
			s.delivered.Add(1)
		case <-ctx.Done():
			return
		}
	}
}

// run keeps the subscriber connected until ctx ends, starting with ses,
// which open returned. maxConnects bounds the connections it opens.
func (s *subscriber) run(ctx context.Context, ses *session, maxConnects int) {
	var backoff time.Duration
	for range maxConnects {
		if ses == nil {
			var err error
			ses, err = s.open(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				s.noteDialError(err)
				backoff = min(max(2*backoff, 100*time.Millisecond), maxReconnectBackoff)
				if !sleepUntil(ctx, time.Now().Add(backoff)) {
					return
				}
				continue
			}
			backoff = 0
		}

		s.sidecar.Store(int32(ses.sidecar))
		s.serve(ctx, ses)
		s.sidecar.Store(-1)
		_ = ses.conn.CloseNow()
		ses.readers.Wait()
		s.noteClosed(ses, ctx.Err() != nil)
		ses = nil
		if ctx.Err() != nil {
			return
		}
	}
}

// serve waits until the session's connection ends or ctx ends, and runs
// the stalls requested meanwhile.
func (s *subscriber) serve(ctx context.Context, ses *session) {
	for {
		select {
		case req := <-s.stalls:
			s.stall(ctx, req)
		case <-ses.conn.Done():
			return
		case <-ctx.Done():
			return
		}
	}
}

// stall stops the readers for req.d, or until ctx ends.
func (s *subscriber) stall(ctx context.Context, req *stallRequest) {
	resume := make(chan struct{})
	s.mu.Lock()
	s.resume = resume
	s.mu.Unlock()

	req.started = time.Now()
	close(req.begun)
	sleepUntil(ctx, req.started.Add(req.d))

	s.mu.Lock()
	s.resume = nil
	s.mu.Unlock()
	close(resume)
	close(req.done)
}

// waitUnstalled blocks while a stall lasts. It returns false when ctx
// ends first.
func (s *subscriber) waitUnstalled(ctx context.Context) bool {
	s.mu.Lock()
	resume := s.resume
	s.mu.Unlock()
	if resume == nil {
		return true
	}
	select {
	case <-resume:
		return true
	case <-ctx.Done():
		return false
	}
}

// requestStall sends the subscriber a request to stop reading for d and
// returns it. The request waits while
// the subscriber is between connections.
func (s *subscriber) requestStall(d time.Duration) (*stallRequest, error) {
	req := &stallRequest{d: d, begun: make(chan struct{}), done: make(chan struct{})}
	select {
	case s.stalls <- req:
		return req, nil
	default:
		return nil, fmt.Errorf("%s already has a stall pending", s.name)
	}
}

func (s *subscriber) noteDialError(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dialErrors++
	s.lastErr = err.Error()
}

func (s *subscriber) noteClosed(ses *session, stopping bool) {
	err := ses.conn.Err()
	rec := connRecord{
		Sidecar:   ses.sidecar,
		Opened:    ses.opened.Sub(s.start),
		Ended:     time.Since(s.start),
		CloseCode: int(client.CloseStatus(err)),
	}
	if stopping {
		rec.Reason = "soak ended"
	} else if err != nil {
		rec.Reason = err.Error()
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) < maxConnRecords {
		s.conns = append(s.conns, rec)
	}
}

// closedWith reports whether a connection of s ended with code after t.
func (s *subscriber) closedWith(code int, after time.Time) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		at := s.start.Add(c.Ended)
		if c.CloseCode == code && at.After(after) {
			return at.Sub(after), true
		}
	}
	return 0, false
}
