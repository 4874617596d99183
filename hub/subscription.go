package hub

import (
	"slices"
	"strconv"

	"github.com/pgsidecar/sidecar/topic"
)

// Subscription is one subscribe request of a client: a set of patterns that
// it receives events for, in the order of Publish, once per event even when
// several of its patterns match.
type Subscription struct {
	id       string
	client   *Client
	patterns []topic.Pattern // distinct, in the order given
	// multi is true when several patterns could match one topic, so
	// Publish must check seen.
	multi bool
	// seen is the pubSeq of the last Publish that reached this
	// subscription. It is guarded by Hub.pubMu.
	seen uint64

	// The fields below are guarded by client.mu.
	removed bool
	// held is true until Start. Live events are then kept in heldEvents.
	held       bool
	heldEvents []heldEvent
	heldBytes  int
	// floor is the highest durable id that the client has already seen for
	// this subscription. Durable events at or below it are not delivered.
	floor int64
}

// heldEvent is an encoded event waiting for Start.
type heldEvent struct {
	prefix    []byte
	id        int64
	published int64
}

// outcome is the result of deliver for one event.
type outcome int8

const (
	outcomeSkipped outcome = iota
	outcomeHeld
	outcomeDelivered
	outcomeDuplicate
)

// ID returns the subscription's name on its connection: "s1", "s2", and so
// on, in the order of Subscribe.
func (s *Subscription) ID() string {
	return s.id
}

// Subscribe adds a subscription for patterns in the held state and returns
// it with the hub's watermark, read atomically with the add: every durable
// event with an id above the watermark reaches the subscription live.
//
// The caller then sends the subscribe result with Send, reads the stored
// events with ids in (after, watermark], and calls Start with them. Until
// Start, nothing is sent for the subscription. Durable events with an id at
// or below after are never delivered to it, so after may be a resume point
// above the watermark, seen on another server.
//
// Subscribe on a closed client returns a subscription that never receives
// anything.
func (c *Client) Subscribe(patterns []topic.Pattern, after int64) (sub *Subscription, watermark int64) {
	h := c.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()

	c.nextSub++
	s := &Subscription{
		id:       "s" + strconv.Itoa(c.nextSub),
		client:   c,
		patterns: distinctPatterns(patterns),
		held:     true,
		floor:    after,
	}
	s.multi = len(s.patterns) > 1
	watermark = h.watermark.Load()

	if c.closed {
		s.removed = true
		return s, watermark
	}
	c.subs[s.id] = s
	h.index(s)
	h.subscriptions++
	return s, watermark
}

func distinctPatterns(patterns []topic.Pattern) []topic.Pattern {
	out := make([]topic.Pattern, 0, len(patterns))
	seen := make(map[string]bool, len(patterns))
	for _, p := range patterns {
		key := p.String()
		if key == "" || seen[key] {
			// The zero Pattern is invalid, and a repeated pattern adds
			// nothing.
			continue
		}
		seen[key] = true
		out = append(out, p)
	}
	return out
}

// Unsubscribe removes the client's subscription named id and reports whether
// it existed. No event is queued for it afterwards. Events queued before the
// call are still written, ahead of anything sent after it.
func (c *Client) Unsubscribe(id string) bool {
	h := c.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()

	s, ok := c.subs[id]
	if !ok {
		return false
	}
	delete(c.subs, id)
	h.unindex(s)
	h.subscriptions--

	s.removed = true
	c.heldBytes -= s.heldBytes
	s.dropHeldLocked()
	return true
}

// Start ends the held state. It queues replay, the stored events that the
// caller read for (after, watermark], then the live events held since
// Subscribe, and then lets live events through. All of this happens under
// the client's lock, so no live event overtakes the replay. Held durable
// events at or below the highest replayed id (or after, if higher) are
// dropped as duplicates. Later calls, and calls on a removed subscription,
// do nothing.
func (s *Subscription) Start(replay []Event) {
	// Encode before locking, because Publish waits for this lock.
	encoded := make([][]byte, len(replay))
	for i, ev := range replay {
		encoded[i] = encodePrefix(ev)
	}

	c := s.client
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.closed || s.removed || !s.held {
		return
	}

	var delivered, duplicates int64
	defer func() {
		c.hub.delivered.Add(delivered)
		c.hub.duplicates.Add(duplicates)
	}()

	floor := s.floor
	for i, prefix := range encoded {
		c.enqueueLocked(item{msg: prefix, sub: s.id})
		if c.closed {
			// The replay pushed the client over MaxQueueBytes.
			return
		}
		delivered++
		floor = max(floor, replay[i].ID)
	}

	held := s.heldEvents
	c.heldBytes -= s.heldBytes
	s.heldEvents, s.heldBytes = nil, 0
	s.held = false
	s.floor = floor

	for _, e := range held {
		if e.id > 0 && e.id <= floor {
			duplicates++
			continue
		}
		c.enqueueLocked(item{msg: e.prefix, sub: s.id, published: e.published})
		if c.closed {
			return
		}
		delivered++
	}
}

// deliver queues or holds one published event for s. seq identifies the
// Publish call, and published is the event's time for the latency hook.
func (s *Subscription) deliver(seq uint64, prefix []byte, id, published int64) outcome {
	if s.multi {
		if s.seen == seq {
			return outcomeSkipped
		}
		s.seen = seq
	}

	c := s.client
	c.mu.Lock()
	defer c.mu.Unlock()

	if c.closed || s.removed {
		return outcomeSkipped
	}
	if id > 0 && id <= s.floor {
		return outcomeDuplicate
	}

	if s.held {
		size := item{msg: prefix, sub: s.id}.size()
		s.heldEvents = append(s.heldEvents, heldEvent{prefix: prefix, id: id, published: published})
		s.heldBytes += size
		c.holdLocked(size)
		return outcomeHeld
	}
	c.enqueueLocked(item{msg: prefix, sub: s.id, published: published})
	return outcomeDelivered
}

// dropHeldLocked discards the held events. The caller adjusts
// client.heldBytes.
func (s *Subscription) dropHeldLocked() {
	s.heldEvents = nil
	s.heldBytes = 0
}

// index adds s to the hub's index. The caller holds h.mu for writing.
func (h *Hub) index(s *Subscription) {
	for _, p := range s.patterns {
		key := p.String()
		if p.IsLiteral() {
			h.exact[key] = append(h.exact[key], s)
			continue
		}

		g := h.wildByPattern[key]
		if g == nil {
			g = &wildGroup{pattern: p, prefix: literalPrefix(p)}
			h.wildByPattern[key] = g
			h.wild[g.prefix] = append(h.wild[g.prefix], g)
		}
		g.subs = append(g.subs, s)
	}
}

// unindex removes s from the hub's index. The caller holds h.mu for
// writing.
func (h *Hub) unindex(s *Subscription) {
	for _, p := range s.patterns {
		key := p.String()
		if p.IsLiteral() {
			subs := removeSubscription(h.exact[key], s)
			if len(subs) == 0 {
				delete(h.exact, key)
			} else {
				h.exact[key] = subs
			}
			continue
		}

		g := h.wildByPattern[key]
		if g == nil {
			continue
		}
		g.subs = removeSubscription(g.subs, s)
		if len(g.subs) == 0 {
			delete(h.wildByPattern, key)
			if groups := removeGroup(h.wild[g.prefix], g); len(groups) > 0 {
				h.wild[g.prefix] = groups
			} else {
				delete(h.wild, g.prefix)
			}
		}
	}
}

// removeSubscriptions removes all of c's subscriptions from the hub. It runs
// once c is closed, so no new ones can be added.
func (h *Hub) removeSubscriptions(c *Client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()

	for id, s := range c.subs {
		h.unindex(s)
		s.removed = true
		delete(c.subs, id)
		h.subscriptions--
	}
}

// removeSubscription removes s from list without keeping the order, which
// only matters within one subscription.
func removeSubscription(list []*Subscription, s *Subscription) []*Subscription {
	i := slices.Index(list, s)
	if i < 0 {
		return list
	}
	last := len(list) - 1
	list[i] = list[last]
	list[last] = nil
	return list[:last]
}

func removeGroup(list []*wildGroup, g *wildGroup) []*wildGroup {
	i := slices.Index(list, g)
	if i < 0 {
		return list
	}
	last := len(list) - 1
	list[i] = list[last]
	list[last] = nil
	return list[:last]
}
