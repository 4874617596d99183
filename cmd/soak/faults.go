package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// faultKind names one kind of injected fault.
type faultKind string

// The fault kinds. Every fault ends with the system whole again: what it
// stopped is started again, so the next fault starts from a working
// system.
const (
	faultPostgresCrash   faultKind = "postgres-crash"   // SIGKILL to Postgres and its backends, then a restart with crash recovery
	faultPostgresStop    faultKind = "postgres-stop"    // fast shutdown, then a restart
	faultTerminateListen faultKind = "terminate-listen" // pg_terminate_backend on every sidecar's LISTEN session
	faultSidecarKill     faultKind = "sidecar-kill"     // SIGKILL to one sidecar, then a restart
	faultSidecarTerm     faultKind = "sidecar-term"     // SIGTERM (drain) to one sidecar, then a restart
	faultSlowSubscriber  faultKind = "slow-subscriber"  // one subscriber stops reading for --stall
	faultListenCut       faultKind = "listen-cut"       // one sidecar's LISTEN connection silently stops for --cut
)

var allFaults = []faultKind{
	faultPostgresCrash,
	faultPostgresStop,
	faultTerminateListen,
	faultSidecarKill,
	faultSidecarTerm,
	faultSlowSubscriber,
	faultListenCut,
}

const (
	// maxDowntime is the longest pause between stopping a process and
	// starting it again. The pause is random, from 0 up to this.
	maxDowntime = 2 * time.Second

	// restartAttempts is how often a sidecar start is tried before the
	// fault is reported as failed.
	restartAttempts = 3

	// minTail is the least time left before the end of publishing for a
	// new fault to start.
	minTail = 10 * time.Second

	// recoveryPoll is how often the injector checks whether events flow
	// again.
	recoveryPoll = 50 * time.Millisecond

	// burstEvents large events, about 10 MB, are published in one
	// transaction while a subscriber stops reading. The kernel's socket
	// buffers on both ends and the client's channel take less than that:
	// Linux grows a loopback send buffer up to the maximum in
	// net.ipv4.tcp_wmem, 4 MiB where this was measured (docs/soak.md).
	// So the sidecar's queue for the stalled subscriber grows, and the
	// sidecar closes it as too slow. The steady load alone would take
	// minutes to fill those buffers.
	burstEvents = 1000

	// burstTimeout bounds the burst's transaction.
	burstTimeout = time.Minute
)

// faultRecord is one injected fault in the fault log. Times are offsets
// from the start of publishing, or durations.
type faultRecord struct {
	Kind   faultKind
	Target string
	At     time.Duration // when the fault took effect
	// Action is how long the fault's own steps took from At: the outage
	// and the restart, the stall, or the cut.
	Action time.Duration
	// Recovery is the time from At until every affected subscription had
	// received an event published after At. For slow-subscriber, it
	// counts from the end of the stall instead.
	Recovery  time.Duration
	Recovered bool
	Note      string
	Err       string
}

// injector injects faults one at a time and measures how long events take
// to flow again after each.
type injector struct {
	cfg         config
	env         *environment
	subscribers []*subscriber
	rng         *rand.Rand
	start       time.Time // start of publishing
	progress    func(string, ...any)

	queue []faultKind
	log   []faultRecord // owned by run until it returns
	burst *ledger       // the bursts of slow-subscriber, owned by run until it returns
}

// next returns the next fault kind. Kinds come in rounds, each a random
// order of all enabled kinds, so that every kind occurs once per round.
func (in *injector) next() faultKind {
	if len(in.queue) == 0 {
		in.queue = slices.Clone(in.cfg.Faults)
		in.rng.Shuffle(len(in.queue), func(i, j int) { in.queue[i], in.queue[j] = in.queue[j], in.queue[i] })
	}
	k := in.queue[0]
	in.queue = in.queue[1:]
	return k
}

// run injects faults at random intervals until ctx ends or less than
// minTail is left before deadline. A fault in progress when ctx ends is
// finished, including the wait for recovery, unless hard ends. After a
// fault that could not restore the system, run stops injecting.
func (in *injector) run(ctx, hard context.Context, deadline time.Time) {
	if len(in.cfg.Faults) == 0 {
		return
	}
	maxFaults := int(in.cfg.Duration/in.cfg.FaultMin) + 1
	for range maxFaults {
		spread := in.cfg.FaultMax - in.cfg.FaultMin
		wait := in.cfg.FaultMin + time.Duration(in.rng.Int64N(int64(spread)+1))
		at := time.Now().Add(wait)
		if deadline.Sub(at) < minTail {
			return
		}
		if !sleepUntil(ctx, at) {
			return
		}

		rec := in.inject(hard, in.next())
		in.log = append(in.log, rec)
		in.progress("%s", rec.line())
		if rec.Err != "" {
			in.progress("stopping fault injection after the failed %s", rec.Kind)
			return
		}
	}
}

// inject runs one fault and waits for recovery.
func (in *injector) inject(ctx context.Context, kind faultKind) faultRecord {
	rec := faultRecord{Kind: kind}
	watched := in.allSubscriptions()

	// at is when the fault took effect, and from when the recovery watch
	// started: the same, but for a stall, whose watch starts when it ends.
	var at, from time.Time
	var err error
	var stalled *subscriber
	switch kind {
	case faultPostgresCrash, faultPostgresStop:
		at, err = in.restartPostgres(ctx, kind, watched)
	case faultTerminateListen:
		at = in.arm(watched)
		var n int64
		n, err = terminateListenSessions(ctx, in.env.dbURL)
		rec.Note = fmt.Sprintf("%d sessions terminated", n)
	case faultSidecarKill, faultSidecarTerm:
		slot := in.pickSidecar()
		rec.Target = slot.name()
		at, err = in.restartSidecar(ctx, kind, slot, watched)
	case faultListenCut:
		slot := in.pickSidecar()
		rec.Target = slot.name()
		resume := slot.proxy.Cut()
		at = in.arm(watched)
		sleepUntil(ctx, at.Add(in.cfg.CutDuration))
		resume()
	case faultSlowSubscriber:
		stalled = in.subscribers[in.rng.IntN(len(in.subscribers))]
		rec.Target = stalled.name
		watched = stalled.subs
		at, from, rec.Note, err = in.stall(ctx, stalled)
	}

	if at.IsZero() {
		at = time.Now()
	}
	if from.IsZero() {
		from = at
	}
	rec.At = at.Sub(in.start)
	rec.Action = time.Since(at)
	if err != nil {
		rec.Err = err.Error()
		return rec
	}

	rec.Recovery, rec.Recovered = in.awaitRecovery(ctx, from, watched)
	if stalled != nil {
		rec.Note = in.stallNote(stalled, at, rec.Note)
	}
	return rec
}

// arm starts the recovery watch of every subscription in watched, and
// returns the time it refers to.
func (in *injector) arm(watched []*subscriptionState) time.Time {
	at := time.Now()
	for _, st := range watched {
		st.arm(at)
	}
	return at
}

func (in *injector) allSubscriptions() []*subscriptionState {
	var all []*subscriptionState
	for _, s := range in.subscribers {
		all = append(all, s.subs...)
	}
	return all
}

// pickSidecar returns a random sidecar among those that serve at least
// one subscriber, so that the fault has someone to affect, or a random
// one when no subscriber is connected.
func (in *injector) pickSidecar() *sidecarSlot {
	var candidates []*sidecarSlot
	for _, slot := range in.env.sidecars {
		for _, s := range in.subscribers {
			if int(s.sidecar.Load()) == slot.index {
				candidates = append(candidates, slot)
				break
			}
		}
	}
	if len(candidates) == 0 {
		candidates = in.env.sidecars
	}
	return candidates[in.rng.IntN(len(candidates))]
}

// downtime returns a random pause between a stop and the restart.
func (in *injector) downtime() time.Duration {
	return time.Duration(in.rng.Int64N(int64(maxDowntime) + 1))
}

// restartPostgres crashes or stops Postgres, waits a moment and starts it
// again. The watch starts once Postgres is down, so that events committed
// just before do not count as recovery.
func (in *injector) restartPostgres(ctx context.Context, kind faultKind, watched []*subscriptionState) (time.Time, error) {
	var err error
	if kind == faultPostgresCrash {
		err = in.env.cluster.Kill()
	} else {
		err = in.env.cluster.Stop(ctx)
	}
	at := in.arm(watched)
	if err != nil {
		return at, fmt.Errorf("%s: %w", kind, err)
	}

	sleepUntil(ctx, time.Now().Add(in.downtime()))
	if err := in.env.cluster.Restart(context.WithoutCancel(ctx)); err != nil {
		return at, fmt.Errorf("restart Postgres: %w", err)
	}
	return at, nil
}

// restartSidecar kills or terminates one sidecar, waits a moment and
// starts it again on the same address.
func (in *injector) restartSidecar(ctx context.Context, kind faultKind, slot *sidecarSlot, watched []*subscriptionState) (time.Time, error) {
	var at time.Time
	var err error
	if kind == faultSidecarKill {
		err = slot.kill()
		at = in.arm(watched)
	} else {
		// The drain takes effect at once and ends when the process exits.
		at = in.arm(watched)
		err = slot.terminate()
	}
	if err != nil {
		return at, err
	}

	sleepUntil(ctx, time.Now().Add(in.downtime()))
	for attempt := 1; ; attempt++ {
		err = slot.start(context.WithoutCancel(ctx))
		if err == nil || attempt == restartAttempts {
			return at, err
		}
		in.progress("restart of %s failed, trying again: %v", slot.name(), err)
	}
}

// stall makes s stop reading for --stall while a burst is published to
// it. It returns the start and the end of the stall. The watch starts at
// the end.
func (in *injector) stall(ctx context.Context, s *subscriber) (start, end time.Time, note string, err error) {
	req, err := s.requestStall(in.cfg.StallDuration)
	if err != nil {
		return start, end, "", err
	}

	// The subscriber takes the request when it is connected, which it
	// normally is. A reconnect in progress delays it.
	if err := waitClosed(ctx, req.begun, in.cfg.RecoveryTimeout); err != nil {
		return start, end, "", fmt.Errorf("%s did not stop reading: %w", s.name, err)
	}
	start = req.started

	topic := burstTopic(s.subs[0].patterns[0])
	burstErr := in.publishBurst(ctx, topic)

	if err := waitClosed(ctx, req.done, in.cfg.StallDuration+time.Minute); err != nil {
		return start, end, "", fmt.Errorf("%s did not read again: %w", s.name, err)
	}
	end = in.arm(s.subs)

	note = fmt.Sprintf("stopped reading for %s during a burst of %d events on %s", end.Sub(start).Round(time.Millisecond), burstEvents, topic)
	if burstErr != nil {
		note += fmt.Sprintf(" that failed: %v", burstErr)
	}
	return start, end, note, nil
}

// publishBurst publishes burstEvents large events on topic in one
// transaction.
func (in *injector) publishBurst(ctx context.Context, topic string) error {
	ctx, cancel := context.WithTimeout(ctx, burstTimeout)
	defer cancel()

	p := &sqlPath{url: in.env.dbURL + "&application_name=soak-burst"}
	defer p.close()
	if err := p.connect(ctx); err != nil {
		in.burst.fail(err)
		return err
	}
	if err := p.send(ctx, in.burst.newBurst(topic, burstEvents), in.burst); err != nil {
		in.burst.fail(err)
		return err
	}
	return nil
}

// burstTopic returns a topic that pattern matches: its wildcards replaced
// by the segment "burst".
func burstTopic(pattern string) string {
	segments := strings.Split(pattern, ".")
	for i, seg := range segments {
		if seg == "*" || seg == ">" {
			segments[i] = "burst"
		}
	}
	return strings.Join(segments, ".")
}

// waitClosed waits until ch is closed, ctx ends or timeout passes.
func waitClosed(ctx context.Context, ch <-chan struct{}, timeout time.Duration) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-ch:
		return nil
	case <-timer.C:
		return fmt.Errorf("timed out after %s", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stallNote adds to note whether the stalled subscriber's connection was
// closed with 1013, the close code for a client too slow, after start.
func (in *injector) stallNote(s *subscriber, start time.Time, note string) string {
	after, ok := s.closedWith(1013, start)
	if !ok {
		return note + "; not closed with 1013"
	}
	return fmt.Sprintf("%s; closed with 1013, seen %s after it stopped reading", note, after.Round(time.Millisecond))
}

// awaitRecovery waits until every subscription in watched has received an
// event published after at, or RecoveryTimeout has passed since at. It
// returns the time until the last one did.
func (in *injector) awaitRecovery(ctx context.Context, at time.Time, watched []*subscriptionState) (time.Duration, bool) {
	deadline := at.Add(in.cfg.RecoveryTimeout)
	for {
		var last time.Time
		all := true
		for _, st := range watched {
			passed := st.passedAt()
			if passed.IsZero() {
				all = false
				break
			}
			last = later(last, passed)
		}
		if all {
			return last.Sub(at), true
		}
		if time.Now().After(deadline) || !sleepUntil(ctx, time.Now().Add(recoveryPoll)) {
			return time.Since(at), false
		}
	}
}

// terminateListenSessions ends the LISTEN sessions of every sidecar with
// pg_terminate_backend and returns how many it ended.
func terminateListenSessions(ctx context.Context, dbURL string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, fmt.Errorf("connect to terminate LISTEN sessions: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var n int64
	err = conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE $1`, listenAppPrefix+"%").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("terminate LISTEN sessions: %w", err)
	}
	return n, nil
}

// line formats the record for a progress line.
func (r faultRecord) line() string {
	s := fmt.Sprintf("%s %s", formatOffset(r.At), r.Kind)
	if r.Target != "" {
		s += " " + r.Target
	}
	switch {
	case r.Err != "":
		s += ": failed: " + r.Err
	case r.Recovered:
		s += fmt.Sprintf(": events flowed again after %.2fs", r.Recovery.Seconds())
	default:
		s += fmt.Sprintf(": events did not flow again within %s", formatSeconds(r.Recovery))
	}
	if r.Note != "" {
		s += " (" + r.Note + ")"
	}
	return s
}
