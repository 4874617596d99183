package server

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgsidecar/sidecar/fastapiws"
	"github.com/pgsidecar/sidecar/hub"
	"github.com/pgsidecar/sidecar/store"
	"github.com/pgsidecar/sidecar/topic"
)

// The fastapi backbone joins the sidecars to a fleet of Python servers of
// fastapi_websocket_pubsub that broadcast over one Postgres channel
// (Config.FastAPIBackboneChannel, EventNotifier in their default setup).
//
//   - Every sidecar LISTENs on the channel and delivers the messages of the
//     Python servers to its own clients as ephemeral events. Each client is
//     connected to one sidecar, so it gets each message once.
//   - One sidecar of the fleet at a time, the holder of an advisory lock,
//     puts every event that reaches the sidecars through Postgres (from SQL,
//     the HTTP API or a websocket) on the channel in their format. Each
//     topic gets one message with the fleet's notifier id. Python servers
//     deliver those to their clients, and sidecars ignore them, because
//     their clients have the events already.

// fleetNotifierID is the notifier_id of every message that sidecars put on
// the backbone. Python servers skip only messages with their own id.
const fleetNotifierID = "pgsidecar-fleet"

// backboneLockKey is the advisory lock of the sidecar that forwards events
// to the backbone ("rt-fapi!").
const backboneLockKey int64 = 8247266746436952353

// maxBackboneMessage is the longest message Postgres' NOTIFY takes (under
// 8000 bytes).
const maxBackboneMessage = 7999

// backboneQueue bounds the events waiting to be forwarded; more are
// dropped, counted and logged.
const backboneQueue = 8192

type backbone struct {
	s       *Server
	channel string

	leader  atomic.Bool
	forward chan hub.Event

	lastLog atomic.Int64 // unix nanos of the last rate-limited warning
}

func newBackbone(s *Server, channel string) *backbone {
	return &backbone{s: s, channel: channel, forward: make(chan hub.Event, backboneQueue)}
}

// receive delivers a message of the backbone to this sidecar's clients.
func (b *backbone) receive(payload string) {
	s := b.s
	var m fastapiws.BackboneMessage
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		b.s.metrics.refused.WithLabelValues("backbone_invalid").Inc()
		b.warn("ignored a message on the fastapi backbone that is not of their format", "err", err)
		return
	}
	if m.NotifierID == fleetNotifierID {
		return
	}
	data := m.Data
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	ts := time.Now().UTC()
	for _, t := range m.Topics {
		if err := topic.Validate(t); err != nil {
			s.metrics.refused.WithLabelValues("backbone_topic").Inc()
			b.warn("ignored a topic of the fastapi backbone that the sidecar cannot deliver", "topic", t, "err", err)
			continue
		}
		if t == fastapiws.AllTopics {
			s.metrics.refused.WithLabelValues("backbone_topic").Inc()
			b.warn("ignored the all-topics string as the topic of a backbone message")
			continue
		}
		if topic.IsReserved(t) {
			s.metrics.refused.WithLabelValues("backbone_topic").Inc()
			b.warn("ignored a topic of the fastapi backbone in a namespace reserved for the sidecar's own events", "topic", t)
			continue
		}
		s.metrics.eventsIn.WithLabelValues(sourceBackbone).Inc()
		s.hub.Publish(hub.Event{Topic: t, Data: data, TS: ts.Format(store.TimeLayout), Published: ts})
	}
}

// offer queues a relayed event for the backbone while this sidecar is the
// forwarder. It never blocks: when the queue is full, the event is dropped
// and counted.
func (b *backbone) offer(ev hub.Event) {
	if !b.leader.Load() || topic.IsReserved(ev.Topic) && !isRowChange(ev.Topic) {
		return
	}
	select {
	case b.forward <- ev:
	default:
		b.s.metrics.refused.WithLabelValues("backbone_full").Inc()
		b.warn("the fastapi backbone is behind; an event was not forwarded", "topic", ev.Topic, "queue", backboneQueue)
	}
}

// isRowChange reports whether t is a row-change topic, which the backbone
// carries like any other event; pg.* relays are not forwarded.
func isRowChange(t string) bool {
	return len(t) > 3 && t[:3] == "db."
}

// run holds the forwarder's advisory lock when it can, and forwards the
// queued events while it holds it, until ctx ends.
func (b *backbone) run(ctx context.Context) {
	log := b.s.log.With("component", "fastapi_backbone")
	for ctx.Err() == nil {
		held, err := b.holdLock(ctx, log)
		if err != nil && ctx.Err() == nil {
			log.Warn("the fastapi backbone lock was lost, retrying", "err", err)
		}
		if !held {
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}
}

// holdLock tries the lock on a connection of its own. When it gets it, it
// forwards until the connection fails or ctx ends, and returns true.
func (b *backbone) holdLock(ctx context.Context, log interface {
	Info(string, ...any)
}) (bool, error) {
	pooled, err := b.s.pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	// The lock belongs to the session, so the connection leaves the pool.
	conn := pooled.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))

	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", backboneLockKey).Scan(&got); err != nil || !got {
		return false, err
	}

	b.leader.Store(true)
	defer b.leader.Store(false)
	log.Info("forwarding events to the fastapi backbone", "channel", b.channel)

	ping := time.NewTicker(5 * time.Second)
	defer ping.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case <-ping.C:
			if err := conn.Ping(ctx); err != nil {
				return true, err
			}
		case ev := <-b.forward:
			b.send(ctx, b.s.pool, ev)
		}
	}
}

// send puts one event on the backbone in their format.
func (b *backbone) send(ctx context.Context, pool *pgxpool.Pool, ev hub.Event) {
	msg := fastapiws.EncodeBackbone(fleetNotifierID, ev.Topic, ev.Data)
	if len(msg) > maxBackboneMessage {
		b.s.metrics.refused.WithLabelValues("too_large_for_backbone").Inc()
		b.warn("an event is too large for the fastapi backbone (NOTIFY takes under 8000 bytes); Python servers do not get it", "topic", ev.Topic, "bytes", len(msg))
		return
	}
	if _, err := pool.Exec(ctx, "SELECT pg_notify($1, $2)", b.channel, string(msg)); err != nil && !errors.Is(err, context.Canceled) {
		b.warn("forwarding an event to the fastapi backbone failed", "topic", ev.Topic, "err", err)
	}
}

// warn logs at most one line every 10 s.
func (b *backbone) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := b.lastLog.Load()
	if now-last < int64(10*time.Second) || !b.lastLog.CompareAndSwap(last, now) {
		return
	}
	b.s.log.Warn(msg, append(args, "component", "fastapi_backbone")...)
}
