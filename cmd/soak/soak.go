package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// statusInterval is the time between two progress lines about the load.
	statusInterval = time.Minute

	// warnInterval is the least time between two progress lines about one
	// publisher's errors.
	warnInterval = 10 * time.Second
)

// run parses args, sets up Postgres and the sidecars, runs the load and
// the faults until the duration has passed or stopEarly is closed, checks
// the deliveries and prints the report on stdout. Progress goes to
// stderr. It returns exitError(1) after the report when a check failed.
func run(ctx context.Context, stopEarly <-chan struct{}, args []string, stdout, stderr io.Writer) (err error) {
	cfg, err := parseConfig(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}

	var progressMu sync.Mutex
	progress := func(format string, a ...any) {
		progressMu.Lock()
		defer progressMu.Unlock()
		fmt.Fprintf(stderr, "soak: "+format+"\n", a...)
	}
	progress("seed %d", cfg.Seed)

	env, err := setUp(ctx, cfg, progress)
	keep := cfg.Keep
	defer func() {
		if env == nil {
			return
		}
		progress("stopping the sidecars and Postgres")
		if closeErr := env.Close(keep); closeErr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", closeErr))
		}
		if keep {
			progress("logs and data kept in %s", env.dir)
		}
	}()
	if err != nil {
		keep = true
		return err
	}

	s := &soak{cfg: cfg, env: env, progress: progress}
	rep, err := s.run(ctx, stopEarly)
	if err != nil {
		keep = true
		return err
	}
	rep.Command = "go run ./cmd/soak " + strings.Join(args, " ")
	if rep.failed() {
		keep = true
	}
	if keep {
		rep.WorkDir = env.dir
	}

	if cfg.JSON {
		err = rep.writeJSON(stdout)
	} else {
		err = rep.writeText(stdout)
	}
	if err != nil {
		return err
	}
	if rep.failed() {
		return exitError(1)
	}
	return nil
}

// soak is one run against a set-up environment.
type soak struct {
	cfg      config
	env      *environment
	progress func(string, ...any)

	subscribers []*subscriber
	publishers  []*publisher
	injector    *injector
	delivered   atomic.Int64
	published   atomic.Int64
	start       time.Time
}

// run drives the load and the faults, waits for the deliveries to settle
// and returns the report.
func (s *soak) run(ctx context.Context, stopEarly <-chan struct{}) (*report, error) {
	cfg := s.cfg

	// Every subscriber subscribes before the first publish, so that each
	// subscription expects every event.
	subCtx, stopSubscribers := context.WithCancel(ctx)
	defer stopSubscribers()
	sessions, err := s.connectSubscribers(subCtx)
	if err != nil {
		return nil, err
	}
	s.publishers, err = newPublishers(cfg, s.env, cfg.Seed, &s.published, newWarner(s.progress).warn)
	if err != nil {
		closeSessions(sessions)
		return nil, err
	}

	s.start = time.Now()
	deadline := s.start.Add(cfg.Duration)
	var subWG sync.WaitGroup
	defer subWG.Wait()
	maxConnects := int(cfg.Duration/(100*time.Millisecond)) + 1000
	for i, sub := range s.subscribers {
		sub.start = s.start
		sessions[i].opened = s.start
		subWG.Go(func() { sub.run(subCtx, sessions[i], maxConnects) })
	}

	pubCtx, stopPublishers := context.WithCancel(ctx)
	defer stopPublishers()
	var pubWG sync.WaitGroup
	for _, p := range s.publishers {
		pubWG.Go(func() { p.run(pubCtx) })
	}
	s.progress("publishing %g events/s with %d publishers to %d subscribers for %s", cfg.Rate, len(s.publishers), len(s.subscribers), cfg.Duration)

	// The injector stops at the deadline, but a fault in progress then
	// finishes and waits for recovery, while the publishers go on.
	runCtx, stopRun := context.WithDeadline(ctx, deadline)
	defer stopRun()
	var interrupted atomic.Bool
	go func() {
		select {
		case <-stopEarly:
			interrupted.Store(true)
			stopRun()
		case <-runCtx.Done():
		}
	}()
	s.injector = &injector{
		cfg:         cfg,
		env:         s.env,
		subscribers: s.subscribers,
		rng:         rand.New(rand.NewPCG(cfg.Seed, 1)),
		start:       s.start,
		progress:    s.progress,
		burst:       &ledger{publisher: "burst", path: "sql"},
	}
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		s.injector.run(runCtx, ctx, deadline)
	}()
	s.reportStatus(runCtx)
	<-faultsDone

	stopPublishers()
	pubWG.Wait()
	publishing := time.Since(s.start)
	if ctx.Err() != nil {
		return nil, fmt.Errorf("aborted: %w", ctx.Err())
	}
	s.progress("publishing stopped after %s; reading the committed events", publishing.Round(time.Second))

	events, err := readCommitted(ctx, s.env.dbURL)
	if err != nil {
		return nil, err
	}
	settled, settleTime := s.settle(ctx, events)
	stopSubscribers()
	subWG.Wait()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("aborted: %w", ctx.Err())
	}

	rep := s.buildReport(events, publishing, settled, settleTime)
	if interrupted.Load() {
		rep.Stopped = "interrupted"
	}
	return rep, nil
}

// connectSubscribers creates the subscribers and opens the first session
// of each.
func (s *soak) connectSubscribers(ctx context.Context) ([]*session, error) {
	token, err := s.env.signToken("soak-subscriber", tokenTTL(s.cfg))
	if err != nil {
		return nil, err
	}

	var sessions []*session
	for i := range s.cfg.Subscribers {
		sub, err := newSubscriber(i, s.env, token, rand.New(rand.NewPCG(s.cfg.Seed, uint64(i)+100)), &s.delivered)
		if err != nil {
			closeSessions(sessions)
			return nil, err
		}
		ses, err := sub.open(ctx)
		if err != nil {
			closeSessions(sessions)
			return nil, fmt.Errorf("subscriber %s: %w", sub.name, err)
		}
		s.subscribers = append(s.subscribers, sub)
		sessions = append(sessions, ses)
	}
	return sessions, nil
}

// closeSessions closes sessions that no subscriber runs yet.
func closeSessions(sessions []*session) {
	for _, ses := range sessions {
		_ = ses.conn.CloseNow()
		ses.readers.Wait()
	}
}

// reportStatus prints a progress line every statusInterval until ctx ends.
func (s *soak) reportStatus(ctx context.Context) {
	ticker := time.NewTicker(statusInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			s.progress("%s: %d events acknowledged, %d deliveries", formatOffset(time.Since(s.start)), s.published.Load(), s.delivered.Load())
		case <-ctx.Done():
			return
		}
	}
}

// settle waits until every subscription has received the newest committed
// event it expects, or the settle timeout passes. It reports whether all
// did, and how long it waited.
func (s *soak) settle(ctx context.Context, events []committedEvent) (bool, time.Duration) {
	begin := time.Now()
	type target struct {
		st   *subscriptionState
		want int64
	}
	var targets []target
	for _, sub := range s.subscribers {
		for _, st := range sub.subs {
			want := newestExpected(events, st)
			targets = append(targets, target{st, want})
		}
	}

	deadline := begin.Add(s.cfg.SettleTimeout)
	for {
		done := true
		for _, t := range targets {
			if t.st.highest() < t.want {
				done = false
				break
			}
		}
		if done {
			return true, time.Since(begin)
		}
		if time.Now().After(deadline) || !sleepUntil(ctx, time.Now().Add(100*time.Millisecond)) {
			return false, time.Since(begin)
		}
	}
}

// newestExpected returns the highest id among events that st expects, or
// 0 when it expects none. events are sorted by id.
func newestExpected(events []committedEvent, st *subscriptionState) int64 {
	head := st.firstHead()
	for i := len(events) - 1; i >= 0; i-- {
		if events[i].id <= head {
			return 0
		}
		if st.matches(events[i].topic) {
			return events[i].id
		}
	}
	return 0
}

// buildReport compares the ledgers and the deliveries with the committed
// events.
func (s *soak) buildReport(events []committedEvent, publishing time.Duration, settled bool, settleTime time.Duration) *report {
	rep := &report{
		Seed:       s.cfg.Seed,
		Duration:   s.cfg.Duration.Seconds(),
		Publishing: seconds(publishing),
		Sidecars:   s.cfg.Sidecars,
		Rate:       s.cfg.Rate,
		Postgres:   s.env.postgres,
		Committed:  len(events),
		Settled:    settled,
		SettleTime: seconds(settleTime),
		Failures:   []string{},
	}

	var ledgers []*ledger
	for _, p := range s.publishers {
		ledgers = append(ledgers, p.ledger)
	}
	if len(s.injector.burst.events) > 0 {
		ledgers = append(ledgers, s.injector.burst)
	}
	counts, in := checkLedgers(events, ledgers)
	rep.Integrity = in
	for _, l := range ledgers {
		c := counts[l.publisher]
		rep.Publishers = append(rep.Publishers, publisherReport{Name: l.publisher, publishCounts: c})
		rep.Published.add(c)
	}

	byID := make(map[int64]*committedEvent, len(events))
	for i := range events {
		byID[events[i].id] = &events[i]
	}
	for _, sub := range s.subscribers {
		sr := sub.report(events, byID)
		rep.Subscribers = append(rep.Subscribers, sr)
		rep.Delivery.add(sr.deliveryResult)
		for _, st := range sr.Subscriptions {
			for _, id := range st.MissingIDs {
				if len(rep.MissingEvents) < maxSamples {
					rep.MissingEvents = append(rep.MissingEvents, s.describeMissing(sub, st.Name, byID[id]))
				}
			}
		}
	}

	rep.summarizeFaults(s.injector.log)
	rep.judge()
	if !settled {
		rep.Failures = append(rep.Failures, "deliveries did not settle within "+s.cfg.SettleTimeout.String())
	}
	return rep
}

// report compares what the subscriber's subscriptions received with the
// committed events. It must be called after run has returned.
func (s *subscriber) report(events []committedEvent, byID map[int64]*committedEvent) subscriberReport {
	sr := subscriberReport{Name: s.name, CloseCodes: make(map[string]int), DialErrors: s.dialErrors, LastError: s.lastErr}
	for _, st := range s.subs {
		d := compareDeliveries(events, byID, st.head, st.matches, st.deliveries)
		sr.Subscriptions = append(sr.Subscriptions, subscriptionReport{
			Name: st.name, Patterns: st.patterns, Head: st.head, Refusals: st.refusals, deliveryResult: d,
		})
		sr.add(d)
	}
	sr.Connections = len(s.conns)
	for _, c := range s.conns {
		sr.ConnLog = append(sr.ConnLog, connReport{
			Sidecar: c.Sidecar, Opened: seconds(c.Opened), Ended: seconds(c.Ended), CloseCode: c.CloseCode, Reason: c.Reason,
		})
		code := strconv.Itoa(c.CloseCode)
		if c.CloseCode < 0 {
			code = "none"
		}
		sr.CloseCodes[code]++
	}
	return sr
}

// describeMissing explains one missing event: what it is, who published
// it and when, which sidecar the subscriber was connected to then, and
// the last fault before it.
func (s *soak) describeMissing(sub *subscriber, subscription string, ev *committedEvent) string {
	at := ev.ts.Sub(s.start)
	desc := fmt.Sprintf("%s missed id %d on %s from %s transaction %d, published at %s", subscription, ev.id, ev.topic, ev.marker.Publisher, ev.marker.Tx, formatOffset(at))

	for _, c := range sub.conns {
		if c.Opened <= at && at <= c.Ended {
			desc += fmt.Sprintf(", connected to sidecar-%d from %s to %s", c.Sidecar, formatOffset(c.Opened), formatOffset(c.Ended))
			break
		}
	}

	log := s.injector.log
	i := sort.Search(len(log), func(i int) bool { return log[i].At > at })
	if i > 0 {
		f := log[i-1]
		desc += fmt.Sprintf(", %s after %s", formatSeconds(at-f.At), f.Kind)
		if f.Target != "" {
			desc += " of " + f.Target
		}
		desc += " at " + formatOffset(f.At)
	}
	if i < len(log) {
		desc += fmt.Sprintf(", %s before %s at %s", formatSeconds(log[i].At-at), log[i].Kind, formatOffset(log[i].At))
	}
	return desc
}

// warner prints publish errors, at most one line per publisher per
// warnInterval. It is safe for concurrent use.
type warner struct {
	progress func(string, ...any)
	mu       sync.Mutex
	last     map[string]time.Time
	skipped  map[string]int
}

func newWarner(progress func(string, ...any)) *warner {
	return &warner{progress: progress, last: make(map[string]time.Time), skipped: make(map[string]int)}
}

func (w *warner) warn(publisher string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if time.Since(w.last[publisher]) < warnInterval {
		w.skipped[publisher]++
		return
	}
	w.last[publisher] = time.Now()
	if n := w.skipped[publisher]; n > 0 {
		w.progress("%s: %v (and %d more errors since the last line)", publisher, err, n)
	} else {
		w.progress("%s: %v", publisher, err)
	}
	w.skipped[publisher] = 0
}
