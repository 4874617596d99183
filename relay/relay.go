// Package relay turns what the LISTEN connection receives into events for
// the hub: it decodes the realtime functions' notifications, gives durable
// events their ids when their transaction's commit notification arrives,
// reads events that were too large for a NOTIFY from the table, relays
// configured pg_notify channels as pg.<channel>, and catches up from the
// table after every gap in the LISTEN connection.
//
// Durable events reach Deliver in id order, each exactly once, whether they
// arrived by NOTIFY or by catch-up.
package relay

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/pgsidecar/sidecar/listen"
	"github.com/pgsidecar/sidecar/store"
	"github.com/pgsidecar/sidecar/topic"
)

// CatchUpPage is how many events one catch-up query reads.
const CatchUpPage = 1000

// Reader is the part of the store the relay reads from.
type Reader interface {
	Segment(ctx context.Context, segment int64, ords []int32) ([]store.Event, error)
	After(ctx context.Context, after int64, limit int) ([]store.Event, error)
	Head(ctx context.Context) (int64, error)
}

// Config configures a Relay.
type Config struct {
	Store Reader
	// Deliver receives every event, on the goroutine that runs Run. It must
	// not block for long: the hub's Publish never does.
	Deliver func(store.Event)
	// Last is the newest durable id already delivered or not wanted, such
	// as the database's head at start-up. Catch-up begins after it.
	Last int64
	// Intercept, if set, sees every notification of a channel other than
	// the realtime channel first; when it returns true, the notification
	// is not relayed as a pg.<channel> event. It must not block.
	Intercept func(channel, payload string) bool
	// Probe, if set, receives the token of every probe notification: the
	// sidecar sends one through its query pool at start to check that the
	// LISTEN connection hears that database.
	Probe func(token string)
	// NewIDSpace, if set, is called on the goroutine that runs Run when
	// commits start to come from another events table (the schema was
	// recreated or the database restored), before the first event of the
	// new table is delivered. Ids start again there, so the caller resets
	// whatever compares ids, such as the hub's watermark.
	NewIDSpace func(lastBefore int64)
	// Open, if set, checks the authenticator of every notification, before
	// Intercept sees it, and returns the payload without it. It returns
	// channels that carry no authenticator unchanged. A rejected
	// notification is dropped, counted and logged at most every 10 s,
	// because any role that can connect may NOTIFY.
	Open func(channel, payload string) (string, bool)
	// Logger receives catch-up and decoding problems; nil discards them.
	Logger *slog.Logger
	// Now stamps pg_notify events, which carry no database time; nil means
	// time.Now.
	Now func() time.Time
}

// Relay is the state between the LISTEN connection and the hub. It is used
// by one goroutine, the one that calls Run.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	last    int64
	pending map[int64][]pendingEvent
	table   int64 // OID of the events table the last commit came from

	// caughtUp and rejected are read by other goroutines, for metrics.
	caughtUp atomic.Int64

	// pendingXact is the transaction whose segment is pending. Postgres
	// delivers one transaction's notifications together, so pending
	// events of another transaction were replayed, never to be committed.
	pendingXact int64

	rejected     atomic.Int64 // notifications Open rejected
	rejectLogged time.Time    // when a rejection was last logged
}

type pendingEvent struct {
	ord   int32
	event store.Event
	ref   bool
	// ephemeral marks a broadcast made in the same transaction as the
	// segment: it waits for the commit too, to keep the order of calls.
	ephemeral bool
}

// notification is the payload the realtime functions send. k is the kind:
// e (a durable event), r (a durable event too large to carry: read it from
// the table), c (a segment committed with ids f to f+n-1), b (ephemeral) or
// p (a sidecar's probe).
type notification struct {
	Kind    string          `json:"k"`
	Xact    int64           `json:"x"` // the publishing transaction; 0 when none or unknown
	Segment int64           `json:"s"`
	Ord     int32           `json:"o"`
	Topic   string          `json:"t"`
	Micros  int64           `json:"u"` // ts in microseconds since 1970
	Data    json.RawMessage `json:"d"`
	First   int64           `json:"f"`
	Count   int64           `json:"n"`
	Table   int64           `json:"e"`
	Probe   string          `json:"p"`
}

// New returns a Relay.
func New(cfg Config) *Relay {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Relay{cfg: cfg, log: cfg.Logger, last: cfg.Last, pending: map[int64][]pendingEvent{}}
}

// Last returns the newest durable id delivered so far. Only the goroutine
// that runs Run may call it.
func (r *Relay) Last() int64 { return r.last }

// CaughtUp returns how many events catch-up has delivered in all. It is
// safe to call from any goroutine.
func (r *Relay) CaughtUp() int64 { return r.caughtUp.Load() }

// Run handles events until ctx ends or events is closed. A failed catch-up
// is retried until it succeeds, because delivering later events first
// would break the id order.
func (r *Relay) Run(ctx context.Context, events <-chan listen.Event) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			if err := r.Handle(ctx, ev); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
	}
}

// Handle processes one listener event.
func (r *Relay) Handle(ctx context.Context, ev listen.Event) error {
	if ev.Kind == listen.Resync {
		return r.catchUp(ctx)
	}

	payload := ev.Payload
	if r.cfg.Open != nil {
		var ok bool
		if payload, ok = r.cfg.Open(ev.Channel, payload); !ok {
			r.reject(ev.Channel, len(ev.Payload))
			return nil
		}
	}

	switch {
	case ev.Channel == store.Channel:
		return r.handleRealtime(ctx, payload)
	case r.cfg.Intercept != nil && r.cfg.Intercept(ev.Channel, payload):
		return nil
	default:
		r.deliverChannel(ev.Channel, payload)
		return nil
	}
}

// dropStale drops pending events of a transaction other than xact. They
// came from a notification sent again after its transaction had committed;
// had they been real, their commit would read them from the table anyway.
func (r *Relay) dropStale(xact int64) {
	if len(r.pending) == 0 || xact == r.pendingXact {
		return
	}
	r.log.Warn("dropped pending events of a transaction whose commit never came: a notification was sent again",
		"transaction", r.pendingXact, "segments", len(r.pending))
	clear(r.pending)
}

// reject counts a notification whose authenticator is invalid, and logs
// the count at most every 10 s.
func (r *Relay) reject(channel string, size int) {
	r.rejected.Add(1)
	now := r.cfg.Now()
	if now.Sub(r.rejectLogged) < 10*time.Second {
		return
	}
	r.rejectLogged = now
	r.log.Warn("dropped a notification without a valid authenticator: a database role that is not a sidecar sends NOTIFY on this channel",
		"channel", channel, "bytes", size, "rejected_total", r.rejected.Load())
}

// Rejected returns the number of notifications dropped because their
// authenticator was invalid. It is safe to call from any goroutine.
func (r *Relay) Rejected() int64 { return r.rejected.Load() }

// catchUp reads every event committed after the last delivered one. It
// drops what the old connection left half-received: those segments are
// either committed, and read here, or were never committed.
func (r *Relay) catchUp(ctx context.Context) error {
	clear(r.pending)

	r.checkHead(ctx)
	total := 0
	for {
		page, err := retryRead(ctx, r.log.With("after_id", r.last), "catch-up read", func() ([]store.Event, error) {
			return r.cfg.Store.After(ctx, r.last, CatchUpPage)
		})
		if err != nil {
			return err
		}

		for _, ev := range page {
			r.deliverDurable(ev)
		}
		total += len(page)
		if len(page) < CatchUpPage {
			break
		}
	}

	r.caughtUp.Add(int64(total))
	r.log.Info("caught up after listener (re)connect", "events", total, "last_id", r.last)
	return nil
}

// checkHead notices a database whose newest id is below the last one
// delivered: a standby promoted after losing commits, or a restored backup.
// Its ids will be issued again, so they are a new id space.
func (r *Relay) checkHead(ctx context.Context) {
	head, err := r.cfg.Store.Head(ctx)
	if err != nil || head >= r.last {
		return
	}
	r.log.Warn("the database's newest id is below the last one delivered: ids start again from it", "head", head, "last_id", r.last)
	r.last = head
	if r.cfg.NewIDSpace != nil {
		r.cfg.NewIDSpace(head)
	}
}

func (r *Relay) handleRealtime(ctx context.Context, payload string) error {
	var n notification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		// It may have been a commit: read what was committed from the
		// table, so that no event is lost.
		r.log.Error("undecodable notification on the realtime channel: catching up from the table", "err", err, "bytes", len(payload))
		return r.catchUp(ctx)
	}

	switch n.Kind {
	case "e", "r":
		r.dropStale(n.Xact)
		r.pendingXact = n.Xact
		r.pending[n.Segment] = append(r.pending[n.Segment], pendingEvent{
			ord:   n.Ord,
			ref:   n.Kind == "r",
			event: store.Event{Topic: n.Topic, Data: n.Data, TS: formatMicros(n.Micros)},
		})
	case "c":
		return r.commit(ctx, n)
	case "p":
		if r.cfg.Probe != nil {
			r.cfg.Probe(n.Probe)
		}
	case "b":
		if err := topic.Validate(n.Topic); err != nil {
			r.log.Error("ephemeral event with an invalid topic, ignored", "err", err)
			return nil
		}
		ev := store.Event{Topic: n.Topic, Data: n.Data, TS: formatMicros(n.Micros)}
		// A transaction's notifications arrive together, so an open
		// segment of the same transaction holds this broadcast until its
		// commit, to keep the order of calls.
		r.dropStale(n.Xact)
		for seg, held := range r.pending {
			r.pending[seg] = append(held, pendingEvent{event: ev, ephemeral: true})
			return nil
		}
		r.cfg.Deliver(ev)
	default:
		r.log.Error("notification of unknown kind on the realtime channel, ignored", "kind", n.Kind)
	}
	return nil
}

// commit delivers a committed segment's events with their ids. Events that
// did not travel in the notification are read from the table.
func (r *Relay) commit(ctx context.Context, n notification) error {
	r.dropStale(n.Xact)
	held := r.pending[n.Segment]
	delete(r.pending, n.Segment)

	if n.Table != 0 && r.table != 0 && n.Table != r.table {
		r.log.Warn("events now come from a new realtime.events table: ids start again", "last_id", r.last, "first_id", n.First)
		r.last = n.First - 1
		if r.cfg.NewIDSpace != nil {
			r.cfg.NewIDSpace(r.last)
		}
	}
	if n.Table != 0 {
		r.table = n.Table
	}

	if n.First+n.Count-1 <= r.last {
		// Already delivered by a catch-up, which cannot know about the
		// broadcasts of the transaction.
		for _, p := range held {
			if p.ephemeral {
				r.cfg.Deliver(p.event)
			}
		}
		return nil
	}

	var missing []int32
	durable := 0
	for _, p := range held {
		if p.ref {
			missing = append(missing, p.ord)
		}
		if !p.ephemeral {
			durable++
		}
	}
	complete := int64(durable) == n.Count
	if !complete || len(missing) > 0 {
		if !complete {
			missing = nil // read the whole segment
		}
		fetched, err := r.readSegment(ctx, n.Segment, missing)
		if err != nil {
			return err
		}
		held = merge(held, fetched, n.First, complete)
	}

	for _, p := range held {
		if p.ephemeral {
			r.cfg.Deliver(p.event)
			continue
		}
		ev := p.event
		ev.ID = n.First + int64(p.ord)
		r.deliverDurable(ev)
	}
	if last := n.First + n.Count - 1; last > r.last {
		r.last = last
	}
	return nil
}

// readSegment retries until the read succeeds or ctx ends: skipping the
// segment would lose its events.
func (r *Relay) readSegment(ctx context.Context, segment int64, ords []int32) ([]store.Event, error) {
	return retryRead(ctx, r.log.With("segment", segment), "reading a committed segment", func() ([]store.Event, error) {
		return r.cfg.Store.Segment(ctx, segment, ords)
	})
}

// retryRead calls read until it succeeds or ctx ends, backing off from
// 100 ms to 5 s and logging each failure as what failed.
func retryRead(ctx context.Context, log *slog.Logger, what string, read func() ([]store.Event, error)) ([]store.Event, error) {
	delay := 100 * time.Millisecond
	for {
		events, err := read()
		if err == nil {
			return events, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn(what+" failed, retrying", "retry_in", delay, "err", err)
		if !sleep(ctx, delay) {
			return nil, ctx.Err()
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// merge fills the held events with those read from the table. When the
// notifications were incomplete, the table's copy of the segment replaces
// them.
func merge(held []pendingEvent, fetched []store.Event, first int64, complete bool) []pendingEvent {
	if !complete {
		out := make([]pendingEvent, 0, len(fetched))
		for _, ev := range fetched {
			out = append(out, pendingEvent{ord: int32(ev.ID - first), event: ev})
		}
		for _, p := range held {
			if p.ephemeral {
				out = append(out, p)
			}
		}
		return out
	}

	byOrd := make(map[int32]store.Event, len(fetched))
	for _, ev := range fetched {
		byOrd[int32(ev.ID-first)] = ev
	}
	for i, p := range held {
		if p.ref {
			held[i].event = byOrd[p.ord]
			held[i].ref = false
		}
	}
	return held
}

func (r *Relay) deliverDurable(ev store.Event) {
	if ev.ID <= r.last && ev.ID != 0 {
		return
	}
	if ev.Topic == "" {
		// A reference whose row was not found: it was deleted by
		// retention between commit and read.
		r.log.Warn("event not found in the table, skipped", "id", ev.ID)
		r.last = max(r.last, ev.ID)
		return
	}
	r.cfg.Deliver(ev)
	r.last = ev.ID
}

// deliverChannel relays a notification of a configured pg_notify channel
// as an ephemeral event on pg.<channel>.
func (r *Relay) deliverChannel(channel, payload string) {
	data := json.RawMessage(payload)
	if !json.Valid(data) {
		quoted, _ := json.Marshal(payload)
		data = quoted
	}
	r.cfg.Deliver(store.Event{
		Topic: "pg." + topic.Sanitize(channel),
		Data:  data,
		TS:    r.cfg.Now().UTC().Format(store.TimeLayout),
	})
}

func formatMicros(us int64) string {
	return time.UnixMicro(us).UTC().Format(store.TimeLayout)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
