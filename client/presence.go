package client

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Member is one client present on a topic, on any instance.
type Member struct {
	ClientID string          `json:"client_id"`
	Subject  string          `json:"sub"`
	Info     json.RawMessage `json:"info,omitempty"`
	JoinedAt time.Time       `json:"joined_at"`
}

// PresenceStats counts the clients and distinct token subjects present on
// a topic.
type PresenceStats struct {
	Clients  int `json:"clients"`
	Subjects int `json:"subjects"`
}

// JoinPresence marks this connection present on topic, with info, public
// data of at most 2 KiB that other members see, or nil. The token's
// presence patterns must allow topic. Subscribers of presence.<topic> get a
// join event. The connection leaves when it closes.
func (c *Conn) JoinPresence(ctx context.Context, topic string, info any) error {
	params := map[string]any{"topic": topic}
	if info != nil {
		params["info"] = info
	}
	return c.Call(ctx, "presence.join", params, nil)
}

// LeavePresence removes this connection from topic and reports whether it
// was present.
func (c *Conn) LeavePresence(ctx context.Context, topic string) (bool, error) {
	var r struct {
		Left bool `json:"left"`
	}
	err := c.Call(ctx, "presence.leave", map[string]string{"topic": topic}, &r)
	return r.Left, err
}

// Presence returns every client present on topic, on any instance, in the
// order they joined.
func (c *Conn) Presence(ctx context.Context, topic string) ([]Member, error) {
	var r struct {
		Members []Member `json:"members"`
	}
	err := c.Call(ctx, "presence.list", map[string]string{"topic": topic}, &r)
	return r.Members, err
}

// PresenceStats counts the clients present on topic.
func (c *Conn) PresenceStats(ctx context.Context, topic string) (PresenceStats, error) {
	var r PresenceStats
	err := c.Call(ctx, "presence.stats", map[string]string{"topic": topic}, &r)
	return r, err
}

// HistoryPage is one page of a topic's durable events, newest first.
type HistoryPage struct {
	Events []Event
	// NextBefore is the before of the next, older page, or 0 when this
	// page is the last.
	NextBefore int64
}

// History returns up to limit (1 to 1,000) of the newest durable events of
// topic, one topic and not a pattern, with ids below before, or the newest
// when before is 0. The token must allow subscribing to topic.
func (c *Conn) History(ctx context.Context, topic string, limit int, before int64) (HistoryPage, error) {
	params := map[string]any{"topic": topic, "limit": limit}
	if before > 0 {
		params["before"] = before
	}
	var r struct {
		Events []struct {
			Topic string          `json:"topic"`
			Data  json.RawMessage `json:"data"`
			ID    int64           `json:"id"`
			TS    string          `json:"ts"`
		} `json:"events"`
		Next int64 `json:"next_before"`
	}
	if err := c.Call(ctx, "history", params, &r); err != nil {
		return HistoryPage{}, err
	}

	page := HistoryPage{Events: make([]Event, len(r.Events)), NextBefore: r.Next}
	for i, ev := range r.Events {
		ts, err := time.Parse(time.RFC3339Nano, ev.TS)
		if err != nil {
			return HistoryPage{}, fmt.Errorf("history of %s: event %d has an invalid ts %q", topic, ev.ID, ev.TS)
		}
		page.Events[i] = Event{Topic: ev.Topic, Data: ev.Data, ID: ev.ID, TS: ts}
	}
	return page, nil
}
